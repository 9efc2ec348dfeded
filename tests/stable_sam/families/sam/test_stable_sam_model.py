"""StableSam: SAM equivalence, plugins, freezing, batching, extras."""

import warnings

import pytest
import torch

from stable_sam import build_stable_sam
from model_helpers import embedding, perturb_plugins, prompts, tiny_model


@pytest.fixture(scope="module")
def model():
    return tiny_model()


@pytest.fixture(scope="module")
def trained():
    return perturb_plugins(tiny_model(), seed=1)


def _sam(model, emb, sparse, dense, multimask):
    return model.sam.mask_decoder(
        emb, model.prompt_encoder.get_dense_pe(), sparse, dense, multimask
    )


def _decode(model, emb, sparse, dense, multimask, **kw):
    return model.decode(emb, model.prompt_encoder.get_dense_pe(), sparse, dense, multimask, **kw)


@pytest.mark.parametrize("multimask", [True, False])
@pytest.mark.parametrize("kind, n", [("box", 1), ("box", 4), ("points", 3)])
def test_without_plugins_is_sam(trained, multimask, kind, n):
    sparse, dense = prompts(trained, kind, n)
    emb = embedding(trained)
    with torch.no_grad():
        expected = _sam(trained, emb, sparse, dense, multimask)
        got = _decode(trained, emb, sparse, dense, multimask, use_plugins=False)
    assert got[0].shape == (n, 3 if multimask else 1, 64, 64)
    for e, g in zip(expected, got):
        torch.testing.assert_close(g, e, atol=1e-6, rtol=0)


@pytest.mark.parametrize("multimask", [True, False])
@pytest.mark.parametrize("kind", ["box", "points"])
def test_initial_plugins_give_sams_masks(model, multimask, kind):
    sparse, dense = prompts(model, kind, 2)
    emb = embedding(model)
    with torch.no_grad():
        expected = _sam(model, emb, sparse, dense, multimask)
        got = _decode(model, emb, sparse, dense, multimask)
    for e, g in zip(expected, got):
        torch.testing.assert_close(g, e, atol=1e-5, rtol=0)


def test_vit_b_decoder_at_init_is_sam():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # random SAM weights, on purpose
        model = build_stable_sam("vit_b")
    sparse, dense = model.prompt_encoder(
        points=None, boxes=torch.tensor([[100.0, 150, 600, 700]]), masks=None
    )
    emb = embedding(model)
    assert emb.shape == (1, 256, 64, 64)
    with torch.no_grad():
        expected = _sam(model, emb, sparse, dense, True)
        got = _decode(model, emb, sparse, dense, True, return_extras=True)
    assert got[0].shape == (1, 3, 256, 256) and got[1].shape == (1, 3)
    assert got[2]["sampling_locations"].shape == (1, 64, 64, 8, 2)
    for e, g in zip(expected, got[:2]):
        torch.testing.assert_close(g, e, atol=1e-5, rtol=0)


def test_trained_plugins_change_the_masks(trained):
    sparse, dense = prompts(trained, "box", 2)
    emb = embedding(trained)
    with torch.no_grad():
        sam = _sam(trained, emb, sparse, dense, False)
        stable = _decode(trained, emb, sparse, dense, False)
    assert (stable[0] - sam[0]).abs().max() > 1e-2


def test_one_embedding_per_prompt(trained):
    """Batch-N embeddings pair embedding i with prompt i (not SAM's repeat_interleave)."""
    sparse, dense = prompts(trained, "box", 3)
    emb = embedding(trained, batch=3)
    with torch.no_grad():
        batched = _decode(trained, emb, sparse, dense, True, return_extras=True)
        for i in range(3):
            single = _decode(
                trained,
                emb[i : i + 1],
                sparse[i : i + 1],
                dense[i : i + 1],
                True,
                return_extras=True,
            )
            torch.testing.assert_close(batched[0][i], single[0][0], atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(batched[1][i], single[1][0], atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(
                batched[2]["alpha"][i], single[2]["alpha"][0], atol=1e-6, rtol=1e-6
            )


@pytest.mark.parametrize("use_plugins", [True, False])
def test_extras(trained, use_plugins):
    sparse, dense = prompts(trained, "points", 2)
    with torch.no_grad():
        *_, extras = _decode(
            trained,
            embedding(trained),
            sparse,
            dense,
            True,
            use_plugins=use_plugins,
            return_extras=True,
        )
    assert set(extras) == {"alpha", "sampling_locations", "amplitude", "attention"}
    assert extras["alpha"].shape == (2, 2)
    assert extras["sampling_locations"].shape == (2, 16, 16, 8, 2)
    assert extras["amplitude"].shape == (2, 16, 16, 8)
    torch.testing.assert_close(extras["attention"].sum(dim=(1, 2)), torch.ones(2))
    grid_x = torch.arange(16.0).view(1, 1, 16, 1).expand(2, 16, 16, 8)
    moved = (extras["sampling_locations"][..., 0] - grid_x).abs().max()
    if use_plugins:
        assert moved > 0.1  # deformed
        assert (
            extras["sampling_locations"][..., 0] - grid_x
        ).abs().max() <= 4.0 + 1e-5  # |dp| <= s_p
        torch.testing.assert_close(extras["alpha"].sum(-1), trained.plugins.drp.scale.expand(2))
    else:
        assert moved == 0
        torch.testing.assert_close(extras["alpha"], torch.tensor([[0.0, 1.0]] * 2))


def test_sam_is_frozen_and_only_plugins_train(trained):
    model = perturb_plugins(tiny_model(), seed=2)
    assert all(not p.requires_grad for p in model.sam.parameters())
    assert model.num_trainable_parameters() == sum(p.numel() for p in model.plugins.parameters())
    model.train()
    assert model.training and model.plugins.training
    assert not any(m.training for m in model.sam.modules())

    sam_before = {k: v.clone() for k, v in model.sam.state_dict().items()}
    plugins_before = {k: v.clone() for k, v in model.plugins.state_dict().items()}
    optimiser = torch.optim.Adam(model.plugin_parameters(), lr=1e-2)
    sparse, dense = prompts(model, "box", 2)
    masks, iou = _decode(model, embedding(model, batch=2), sparse, dense, False)
    (masks.sigmoid().mean() + iou.mean()).backward()
    optimiser.step()

    for k, v in model.sam.state_dict().items():
        assert torch.equal(v, sam_before[k]), k
    changed = [
        k for k, v in model.plugins.state_dict().items() if not torch.equal(v, plugins_before[k])
    ]
    assert len(changed) == len(plugins_before)


def test_forward_matches_sam_format(trained):
    gen = torch.Generator().manual_seed(0)
    image = torch.rand(3, 256, 192, generator=gen) * 255
    batched = [
        {
            "image": image,
            "original_size": (300, 225),
            "boxes": torch.tensor([[20.0, 30, 150, 200], [0, 0, 100, 100]]),
        },
        {
            "image": image,
            "original_size": (300, 225),
            "point_coords": torch.tensor([[[50.0, 60]]]),
            "point_labels": torch.tensor([[1]]),
        },
    ]
    with torch.no_grad():
        expected = trained.sam(batched, multimask_output=False)
        plain = trained(batched, multimask_output=False, use_plugins=False)
        stable = trained(batched, multimask_output=False)
    for e, p, s in zip(expected, plain, stable):
        assert set(p) == set(e) == set(s) == {"masks", "iou_predictions", "low_res_logits"}
        assert s["masks"].shape == e["masks"].shape and s["masks"].dtype == torch.bool
        assert e["masks"].shape[-2:] == (300, 225)
        torch.testing.assert_close(p["low_res_logits"], e["low_res_logits"], atol=1e-5, rtol=0)
        torch.testing.assert_close(p["iou_predictions"], e["iou_predictions"], atol=1e-5, rtol=0)
    assert not torch.allclose(stable[0]["low_res_logits"], expected[0]["low_res_logits"], atol=1e-3)


def test_config_must_fit_sam():
    from stable_sam import PluginConfig, StableSam

    with pytest.raises(
        ValueError, match="embed_dim \\(128\\) must equal SAM's decoder width \\(256\\)"
    ):
        StableSam(tiny_model().sam, PluginConfig(embed_dim=128))


@pytest.mark.parametrize("multimask", [False, True])
def test_routing_reads_the_output_mask_token_after_layer2_self_attention(trained, multimask):
    """t_o is mask token 0 (decoder token 1) for single- and multi-mask output alike: the
    routing weights are one pair per prompt, shared by every output token, and the DRP is
    trained on token 0 (the training loss sees the single mask)."""
    sparse, dense = prompts(trained, "box", 2)
    emb, pe = embedding(trained), trained.prompt_encoder.get_dense_pe()
    dec = trained.sam.mask_decoder
    with torch.no_grad():
        *_, extras = _decode(trained, emb, sparse, dense, multimask, return_extras=True)
        tokens = torch.cat([dec.iou_token.weight, dec.mask_tokens.weight]).expand(2, -1, -1)
        tokens = torch.cat([tokens, sparse], dim=1)
        image = (emb + dense).flatten(2).permute(0, 2, 1)
        layers = dec.transformer.layers
        queries, _ = layers[0](
            queries=tokens, keys=image, query_pe=tokens, key_pe=pe.flatten(2).permute(0, 2, 1)
        )
        q = queries + tokens
        queries = layers[1].norm1(queries + layers[1].self_attn(q=q, k=q, v=queries))
        expected = trained.plugins.drp(queries[:, 1])
    torch.testing.assert_close(extras["alpha"], expected, atol=1e-6, rtol=1e-6)
    for other in (0, 2, 3, 4):  # the IoU token and mask tokens 1-3 would route differently
        assert not torch.allclose(expected, trained.plugins.drp(queries[:, other]), atol=1e-4)
