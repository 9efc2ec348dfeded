"""The offset network (DSP), DRP and their composition with known non-zero weights against a
composition written out here, term by term, so a dropped activation, a wrong input, a wrong
order or a wrong channel layout fails; and the paper's exact parameter count."""
import math

import pytest
import torch

from stable_sam import PluginConfig, StableSam, StableSamPlugins
from stable_sam.families.sam.build import SAM_BUILDERS
from stable_sam_ops import deformable_sample_reference

D = torch.float64


def _fill(module, seed):
    """Every parameter to a distinct non-zero value, away from the identity initialisation."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(0.3 * torch.randn(p.shape, generator=gen, dtype=D) + 0.1)
    return module


def _layer_norm(x, weight, bias, eps=1e-5):
    mean = x.mean(-1, keepdim=True)
    var = ((x - mean) ** 2).mean(-1, keepdim=True)
    return (x - mean) / torch.sqrt(var + eps) * weight + bias


def _gelu(x):
    return 0.5 * x * (1 + torch.erf(x / math.sqrt(2)))


def _linear(x, layer):
    return torch.einsum("...i,oi->...o", x, layer.weight) + layer.bias


def _depthwise(x, conv):
    """(N, H, W, C) channels-last depthwise convolution with zero padding, as a sum of shifts."""
    k = conv.kernel_size[0]
    r = k // 2
    n, h, w, c = x.shape
    padded = torch.zeros(n, h + 2 * r, w + 2 * r, c, dtype=x.dtype)
    padded[:, r:r + h, r:r + w] = x
    out = conv.bias.expand(n, h, w, c).clone()
    for ky in range(k):
        for kx in range(k):
            out = out + padded[:, ky:ky + h, kx:kx + w] * conv.weight[:, 0, ky, kx]
    return out


def _hand_dsp(dsp, x_p, groups):
    x_star = _linear(x_p, dsp.input_proj)
    hidden = _gelu(_layer_norm(_depthwise(x_star, dsp.dwconv), dsp.norm.weight, dsp.norm.bias))
    flat = _linear(hidden, dsp.offset_proj)  # channel 2g is group g's x, 2g + 1 its y
    offset = torch.stack([flat[..., 0::2], flat[..., 1::2]], dim=-1)
    amplitude = _linear(hidden, dsp.amplitude_proj)
    return x_star, offset, amplitude


def _hand_drp(drp, t_o):
    hidden = _gelu(_layer_norm(_linear(t_o, drp.hidden), drp.norm.weight, drp.norm.bias))
    logits = _linear(hidden, drp.out)
    e = torch.exp(logits - logits.max(-1, keepdim=True).values)
    return e / e.sum(-1, keepdim=True) * drp.scale


def _inputs(n=2, h=6, w=7, c=32, seed=1):
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(n, h, w, c, generator=gen, dtype=D),
            torch.randn(n, c, generator=gen, dtype=D))


@pytest.mark.parametrize("groups,kernel", [(8, 5), (4, 3), (1, 5)])
def test_offset_network_is_the_written_out_composition(groups, kernel):
    config = PluginConfig(embed_dim=32, num_groups=groups, dwconv_kernel_size=kernel)
    plugins = _fill(StableSamPlugins(config).to(D), seed=groups)
    x_p, _ = _inputs()
    x_star, offset, amplitude = plugins.dsp(x_p)
    want = _hand_dsp(plugins.dsp, x_p, groups)
    for got, expected in zip((x_star, offset, amplitude), want):
        assert got.shape == expected.shape
        torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10)


def test_routing_mlp_is_the_written_out_composition():
    plugins = _fill(StableSamPlugins(PluginConfig(embed_dim=32)).to(D), seed=3)
    _, t_o = _inputs()
    alpha = plugins.drp(t_o)
    torch.testing.assert_close(alpha, _hand_drp(plugins.drp, t_o), rtol=1e-10, atol=1e-10)
    assert not torch.allclose(alpha[:, 0], alpha[:, 1])


@pytest.mark.parametrize("use_routing", [True, False])
def test_plugin_keys_are_the_papers_blend_of_the_written_out_parts(use_routing):
    config = PluginConfig(embed_dim=32, num_groups=4, offset_scale=2.5, use_routing=use_routing)
    plugins = _fill(StableSamPlugins(config, op_backend="reference").to(D), seed=5)
    x_p, t_o = _inputs()
    keys, extras = plugins(x_p, t_o)
    x_star, offset, amplitude = _hand_dsp(plugins.dsp, x_p, 4)
    if use_routing:  # eq. 6: alpha1 * deformed x* + alpha2 * x_p
        alpha = _hand_drp(plugins.drp, t_o)
        expected = deformable_sample_reference(x_star, offset, amplitude, x_p, alpha,
                                               offset_scale=2.5)
    else:  # the ablation: the deformed features alone
        alpha = torch.tensor([[1.0, 0.0]] * 2, dtype=D)
        expected = deformable_sample_reference(x_star, offset, amplitude, offset_scale=2.5)
    torch.testing.assert_close(keys, expected, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(extras["alpha"], alpha, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(extras["offset"], offset, rtol=1e-10, atol=1e-10)
    # the sampling points really move (tanh(offset) is not small) and the blend matters
    assert (2.5 * torch.tanh(offset)).abs().max() > 1.0
    assert not torch.allclose(keys, x_p) and not torch.allclose(keys, x_star)


def test_defaults_are_the_documented_design():
    c = PluginConfig()
    assert (c.num_groups, c.offset_scale) == (8, 4.0)
    assert (c.routing_hidden_dim, c.dwconv_kernel_size) == (16, 5)
    assert c.use_amplitude and c.use_routing and c.embed_dim == 256
    # s_p reaches the sampling: a saturated offset moves a point by exactly s_p grid pixels
    plugins = StableSamPlugins()
    offset = torch.zeros(1, 2, 3, 8, 2)
    offset[..., 0] = 50.0
    locations = plugins.sampling_locations(offset)
    torch.testing.assert_close(locations[0, 1, 2, 0], torch.tensor([2.0 + 4.0, 1.0]))


@pytest.mark.parametrize("model_type", ["vit_b", "vit_l", "vit_h"])
def test_parameter_count_is_exactly_83307(model_type):
    with torch.device("meta"):  # shapes only: no memory, no init time
        model = StableSam(SAM_BUILDERS[model_type]())
    dsp = sum(p.numel() for p in model.plugins.dsp.parameters())
    drp = sum(p.numel() for p in model.plugins.drp.parameters())
    # DSP: 1x1 in-proj 65,792 + 5x5 depthwise 6,656 + LayerNorm 512 + offsets 4,112
    #      + amplitudes 2,056; DRP: 4,112 + LayerNorm 32 + output 34 + scale 1
    assert (dsp, drp) == (79_128, 4_179)
    assert model.num_trainable_parameters() == 83_307
