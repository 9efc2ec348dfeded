import math

import pytest
import torch

from stable_sam import PluginConfig, StableSam, StableSamPlugins
from stable_sam.families.sam.build import SAM_BUILDERS
from stable_sam.plugins.drp import DynamicRoutingPlugin
from stable_sam.plugins.dsp import DeformableSamplingPlugin


class TestPluginConfig:
    def test_dict_and_json_round_trip(self):
        config = PluginConfig(
            num_groups=4, offset_scale=2.5, use_amplitude=False, routing_hidden_dim=32
        )
        assert PluginConfig.from_dict(config.to_dict()) == config
        assert PluginConfig.from_json(config.to_json()) == config
        assert PluginConfig.from_dict({"offset_scale": 3}).offset_scale == 3.0  # JSON ints are fine

    @pytest.mark.parametrize(
        "fields, error, match",
        [
            ({"num_groups": 7}, ValueError, "num_groups must divide"),
            ({"num_groups": 0}, ValueError, "num_groups"),
            ({"offset_scale": 0.0}, ValueError, "offset_scale"),
            ({"offset_scale": -1.0}, ValueError, "offset_scale"),
            ({"offset_scale": math.inf}, ValueError, "offset_scale"),
            ({"routing_hidden_dim": 0}, ValueError, "routing_hidden_dim"),
            ({"dwconv_kernel_size": 4}, ValueError, "dwconv_kernel_size"),
        ],
    )
    def test_bad_values(self, fields, error, match):
        with pytest.raises(error, match=match):
            PluginConfig(**fields)

    @pytest.mark.parametrize(
        "fields, error, match",
        [
            ({"groups": 8}, ValueError, "unknown fields \\['groups'\\]"),
            ({"num_groups": "8"}, TypeError, "num_groups must be int"),
            ({"use_routing": 1}, TypeError, "use_routing must be bool"),
            ({"offset_scale": True}, TypeError, "offset_scale must be float"),
        ],
    )
    def test_from_dict_rejects(self, fields, error, match):
        with pytest.raises(error, match=match):
            PluginConfig.from_dict(fields)


def _tokens(n=2, h=7, w=9, c=256, seed=0, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, h, w, c, generator=gen).to(dtype), torch.randn(n, c, generator=gen).to(
        dtype
    )


def test_dsp_identity_init():
    x_p, _ = _tokens()
    x_star, offset, amplitude = DeformableSamplingPlugin(256, 8)(x_p)
    assert torch.equal(x_star, x_p)
    assert offset.shape == (2, 7, 9, 8, 2) and not offset.any()
    assert amplitude.shape == (2, 7, 9, 8) and torch.equal(amplitude, torch.ones_like(amplitude))


def test_drp_alpha_is_scaled_softmax():
    drp = DynamicRoutingPlugin(256, 16)
    torch.nn.init.normal_(drp.out.weight)
    with torch.no_grad():
        drp.scale.fill_(1.7)
    _, t_o = _tokens()
    alpha = drp(t_o)
    assert alpha.shape == (2, 2)
    torch.testing.assert_close(alpha.sum(-1), torch.full((2,), 1.7))
    assert (alpha > 0).all() and not torch.allclose(alpha[:, 0], alpha[:, 1])


@pytest.mark.parametrize("use_routing", [True, False])
@pytest.mark.parametrize("use_amplitude", [True, False])
@pytest.mark.parametrize("num_groups", [1, 8])
def test_plugins_start_as_identity(use_routing, use_amplitude, num_groups):
    config = PluginConfig(
        num_groups=num_groups, use_routing=use_routing, use_amplitude=use_amplitude
    )
    plugins = StableSamPlugins(config)
    x_p, t_o = _tokens()
    keys, extras = plugins(x_p, t_o)
    torch.testing.assert_close(keys, x_p, atol=1e-6, rtol=1e-6)
    assert extras["alpha"].shape == (2, 2)
    expected_alpha = [0.5, 0.5] if use_routing else [1.0, 0.0]
    torch.testing.assert_close(extras["alpha"], torch.tensor([expected_alpha] * 2))
    assert extras["amplitude"].shape == (2, 7, 9, num_groups)


def test_plugins_compute_the_paper_blend():
    """A one-pixel shift in x for every group: keys = a1 * amp * x*[i, j+1] + a2 * x_p (0 past the edge)."""
    s_p = 4.0
    plugins = StableSamPlugins(PluginConfig(offset_scale=s_p)).double()
    with torch.no_grad():
        plugins.dsp.input_proj.weight.mul_(2.0)  # x* = 2 x_p, so x* and x_p differ
        plugins.dsp.offset_proj.bias.view(8, 2)[:, 0] = math.atanh(1.0 / s_p)
        plugins.dsp.amplitude_proj.bias.fill_(0.5)
        plugins.drp.out.bias.copy_(torch.tensor([1.0, 0.0], dtype=torch.float64))
        plugins.drp.scale.fill_(2.0)
    x_p, t_o = _tokens(dtype=torch.float64)
    keys, extras = plugins(x_p, t_o)
    a1, a2 = (2.0 * torch.softmax(torch.tensor([1.0, 0.0], dtype=torch.float64), 0)).tolist()
    shifted = torch.zeros_like(x_p)
    shifted[:, :, :-1] = 2.0 * x_p[:, :, 1:]
    torch.testing.assert_close(keys, a1 * 0.5 * shifted + a2 * x_p)
    torch.testing.assert_close(extras["alpha"], torch.tensor([[a1, a2]] * 2, dtype=torch.float64))
    locations = plugins.sampling_locations(extras["offset"])
    assert locations.shape == (2, 7, 9, 8, 2)
    torch.testing.assert_close(locations[0, 3, 4, 5], torch.tensor([5.0, 3.0], dtype=torch.float64))


def test_every_plugin_parameter_gets_gradient():
    plugins = StableSamPlugins()
    with torch.no_grad():
        for p in plugins.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    x_p, t_o = _tokens()
    keys, _ = plugins(x_p, t_o)
    (keys * torch.randn_like(keys)).sum().backward()
    for name, p in plugins.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
