"""stable_sam.families.sam.decoder: SAM's decoder re-expressed over its own submodules."""

import pytest
import torch

from stable_sam.families.sam import decoder
from stable_sam.plugins import two_way_site
from model_helpers import embedding, prompts, tiny_model


@pytest.fixture(scope="module")
def model():
    return tiny_model()


@pytest.mark.parametrize("kind, n", [("box", 1), ("box", 3), ("points", 2)])
def test_predict_masks_without_keys_fn_is_sams(model, kind, n):
    sparse, dense = prompts(model, kind, n)
    emb, pe = embedding(model), model.prompt_encoder.get_dense_pe()
    with torch.no_grad():
        expected = model.sam.mask_decoder.predict_masks(emb, pe, sparse, dense)
        got = decoder.predict_masks(model.sam.mask_decoder, emb, pe, sparse, dense)
    for e, g in zip(expected, got):
        torch.testing.assert_close(g, e, atol=1e-6, rtol=0)


def test_keys_fn_changes_only_the_plugin_site(model):
    """Zeroing the site's keys changes the output; the keys fn sees layer 0's keys and the tokens."""
    sparse, dense = prompts(model, "box", 2)
    emb, pe = embedding(model), model.prompt_encoder.get_dense_pe()
    seen = {}

    def zero_keys(x_p, queries):
        seen["x_p"], seen["queries"] = x_p, queries
        return torch.zeros_like(x_p)

    with torch.no_grad():
        base = decoder.predict_masks(model.sam.mask_decoder, emb, pe, sparse, dense)
        changed = decoder.predict_masks(
            model.sam.mask_decoder, emb, pe, sparse, dense, keys_fn=zero_keys
        )
        layer0 = model.sam.mask_decoder.transformer.layers[0]
        tokens = torch.cat(
            [model.sam.mask_decoder.iou_token.weight, model.sam.mask_decoder.mask_tokens.weight]
        ).expand(2, -1, -1)
        tokens = torch.cat([tokens, sparse], dim=1)
        src = (emb + dense).flatten(2).permute(0, 2, 1)
        _, keys0 = layer0(
            queries=tokens, keys=src, query_pe=tokens, key_pe=pe.flatten(2).permute(0, 2, 1)
        )
    torch.testing.assert_close(seen["x_p"], keys0)
    assert seen["queries"].shape == tokens.shape
    assert not torch.allclose(changed[0], base[0], atol=1e-3)


def test_attention_probs_reproduce_sams_attention(model):
    attn = model.sam.mask_decoder.transformer.layers[1].cross_attn_token_to_image
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, n, 256, generator=gen) for n in (7, 50, 50))
    with torch.no_grad():
        probs = two_way_site.attention_probs(attn, q, k)  # (2, heads, 7, 50)
        heads = attn.num_heads
        vh = attn.v_proj(v).view(2, 50, heads, -1).transpose(1, 2)
        rebuilt = attn.out_proj((probs @ vh).transpose(1, 2).reshape(2, 7, -1))
        expected = attn(q=q, k=k, v=v)
    torch.testing.assert_close(probs.sum(-1), torch.ones(2, heads, 7))
    torch.testing.assert_close(rebuilt, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("bad", ["embedding", "dense"])
def test_batch_mismatch_is_an_error(model, bad):
    sparse, dense = prompts(model, "box", 3)
    emb, pe = embedding(model, batch=2), model.prompt_encoder.get_dense_pe()
    if bad == "dense":
        emb, dense = embedding(model), dense[:2]
    name = "image_embeddings" if bad == "embedding" else "dense_prompt_embeddings"
    with pytest.raises(ValueError, match=f"{name} must be \\(1 or N, C, H, W\\) with N = 3"):
        decoder.predict_masks(model.sam.mask_decoder, emb, pe, sparse, dense)


def test_block_forward_matches_sams_block(model):
    """With fixed new keys K', the block's queries equal SAM's own block run on K' (queries see
    keys only through the token-to-image attention), and its keys equal SAM's image-to-token
    update of the regular-grid keys."""
    block = model.sam.mask_decoder.transformer.layers[1]
    gen = torch.Generator().manual_seed(1)
    queries, query_pe = torch.randn(2, 7, 256, generator=gen), torch.randn(2, 7, 256, generator=gen)
    keys, key_pe = torch.randn(2, 64, 256, generator=gen), torch.randn(1, 64, 256, generator=gen)
    new_keys = torch.randn(2, 64, 256, generator=gen)
    with torch.no_grad():
        got_q, got_k = two_way_site.block_forward(
            block, queries, keys, query_pe, key_pe, keys_fn=lambda x_p, q: new_keys
        )
        sam_q, _ = block(queries=queries, keys=new_keys, query_pe=query_pe, key_pe=key_pe)
        k = keys + key_pe
        q = sam_q + query_pe
        sam_k = block.norm4(keys + block.cross_attn_image_to_token(q=k, k=q, v=sam_q))
    torch.testing.assert_close(got_q, sam_q, atol=1e-6, rtol=0)
    torch.testing.assert_close(got_k, sam_k, atol=1e-6, rtol=0)
