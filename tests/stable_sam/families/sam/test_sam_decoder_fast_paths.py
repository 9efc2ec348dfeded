"""The decoder pass's re-expressions of SAM's modules (stable_sam.families.sam.decoder) against the
modules themselves: pixel-local output upscaling, attention with the (T, HW) score layout, one
image's projections shared by N prompts, and whole decodes on a shared vs repeated embedding."""
import copy

import pytest
import torch

from stable_sam.families.sam import decoder
from stable_sam.plugins import two_way_site
from model_helpers import embedding, perturb_plugins, prompts, tiny_model

TOL = {torch.float32: dict(atol=2e-5, rtol=1e-5), torch.float64: dict(atol=1e-12, rtol=1e-12)}


@pytest.fixture(scope="module")
def model():
    return perturb_plugins(tiny_model()).eval()


def _randomised(module, dtype, seed=0):
    """A copy in dtype with every parameter random (LayerNorm2d starts as ones and zeros)."""
    module = copy.deepcopy(module).to(dtype)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=dtype) * 0.1)
    return module


def _randn(*shape, dtype, seed):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("n, h, w", [(1, 4, 5), (3, 6, 6), (2, 1, 7)])
def test_upscaled_mask_logits_match_sams_upscaling(model, n, h, w, dtype):
    upscaling = _randomised(model.sam.mask_decoder.output_upscaling, dtype)
    tokens = _randn(n, h * w, 256, dtype=dtype, seed=1)
    hyper_in = _randn(n, 4, 32, dtype=dtype, seed=2)
    with torch.no_grad():
        upscaled = upscaling(tokens.transpose(1, 2).reshape(n, 256, h, w))
        expected = (hyper_in @ upscaled.flatten(2)).view(n, 4, 4 * h, 4 * w)
        got = decoder.upscaled_mask_logits(upscaling, tokens, h, w, hyper_in)
    torch.testing.assert_close(got, expected, **TOL[dtype])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("n, image_batch", [(1, 1), (3, 1), (3, 3)])
def test_image_to_token_attention_matches_sams_attention(model, n, image_batch, dtype):
    layer = model.sam.mask_decoder.transformer.layers[0]
    attn = _randomised(layer.cross_attn_image_to_token, dtype)
    image = _randn(image_batch, 30, 256, dtype=dtype, seed=3)
    k, v = _randn(n, 7, 256, dtype=dtype, seed=4), _randn(n, 7, 256, dtype=dtype, seed=5)
    with torch.no_grad():
        expected = attn(q=image.expand(n, -1, -1), k=k, v=v)
        got = two_way_site.image_to_token_attention(attn, image, k, v)
    torch.testing.assert_close(got, expected, **TOL[dtype])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("n", [1, 4])
def test_token_to_shared_image_attention_matches_sams_attention(model, n, dtype):
    layer = model.sam.mask_decoder.transformer.layers[0]
    attn = _randomised(layer.cross_attn_token_to_image, dtype)
    q = _randn(n, 7, 256, dtype=dtype, seed=6)
    k, v = _randn(1, 30, 256, dtype=dtype, seed=7), _randn(1, 30, 256, dtype=dtype, seed=8)
    with torch.no_grad():
        expected = attn(q=q, k=k.expand(n, -1, -1), v=v.expand(n, -1, -1))
        got = two_way_site.token_to_shared_image_attention(attn, q, k, v)
    torch.testing.assert_close(got, expected, **TOL[dtype])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("kind, n", [("box", 2), ("points", 3)])
def test_decode_on_one_shared_embedding_matches_the_per_prompt_path(model, kind, n, dtype):
    """N prompts on one embedding (the no-mask dense embedding expanded, layer 0's image side
    projected once) against the same embedding repeated per prompt with a materialised dense
    embedding (every projection per prompt, as SAM's decoder runs it), plugins on."""
    sparse, dense = prompts(model, kind, n)
    assert dense.stride(0) == 0  # the prompt encoder's no-mask embedding, expanded
    sparse, dense = sparse.to(dtype), dense[:1].to(dtype).expand(n, -1, -1, -1)
    emb, pe = embedding(model).to(dtype), model.prompt_encoder.get_dense_pe().to(dtype)
    model = copy.deepcopy(model).to(dtype)
    with torch.no_grad():
        shared = model.decode(emb, pe, sparse, dense, True, return_extras=True)
        repeated = model.decode(
            emb.repeat(n, 1, 1, 1), pe, sparse, dense.contiguous(), True, return_extras=True
        )
    for got, want in zip(shared[:2], repeated[:2]):
        torch.testing.assert_close(got, want, **TOL[dtype])
    for name in ("alpha", "sampling_locations", "attention"):
        torch.testing.assert_close(shared[2][name], repeated[2][name], **TOL[dtype], msg=name)
