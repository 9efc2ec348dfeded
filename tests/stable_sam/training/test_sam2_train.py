"""Training Stable-SAM on SAM 2.1 (random `sam2_tiny_random`, generated shapes): RTS moves only
the plugins (SAM 2 frozen, bit for bit), the decoder pass the trainer runs is SAM 2's
single-mask token with its prompts encoded as SAM2ImagePredictor encodes them, and the plugin
file it writes reloads into a SAM 2 model and predicts."""

import numpy as np
import pytest
import torch

from stable_sam.build import build_stable_sam
from stable_sam.checkpoint import load_plugins
from stable_sam.data.synthetic import make_synthetic_dataset
from stable_sam.families import predictor_for
from stable_sam.families.sam2 import StableSam2
from stable_sam.training import TrainConfig, train
from stable_sam.training.model import PromptedDecoder, build_model
from stable_sam.training.rng import seed_everything


@pytest.fixture(autouse=True)
def one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def _state(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def test_rts_trains_only_the_plugins_of_sam2_and_the_file_reloads(tmp_path):
    data = str(make_synthetic_dataset(tmp_path / "shapes", num_images=4, image_size=(96, 128),
                                      seed=3))
    config = TrainConfig(model_type="sam2_tiny_random", data=[data], steps=2, batch_size=2,
                         num_points=256, lr_drop_epochs=[], num_workers=0, ckpt_every=100,
                         log_every=100, out_dir=str(tmp_path / "run"))
    seed_everything(config.seed, 0)
    before = _state(build_model(config))
    result = train(config)
    model = result["model"]
    assert isinstance(model, StableSam2)
    after = _state(model)
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.startswith("plugins.") for k in changed)  # SAM 2 bit-identical
    assert not any(p.requires_grad for p in model.sam.parameters())

    fresh = build_stable_sam("sam2_tiny_random", plugin_checkpoint=result["weights"]).eval()
    assert all(torch.equal(v, after[k]) for k, v in fresh.state_dict().items())
    predictor = predictor_for(fresh)
    image = np.random.default_rng(0).integers(0, 255, (96, 128, 3), dtype=np.uint8)
    predictor.set_image(image)
    box = np.array([20.0, 10.0, 90.0, 70.0])
    masks, scores, logits = predictor.predict(box=box, multimask_output=False)
    plain = predictor.predict(box=box, multimask_output=False, use_plugins=False)
    assert masks.shape == (1, 96, 128) and scores.shape == (1,) and logits.shape == (1, 64, 64)
    assert not np.array_equal(logits, plain[2])  # the trained plugins act


@torch.no_grad()
def test_prompted_decoder_runs_sam2s_single_mask_token():
    """The trainer's decoder pass over SAM 2's encoding gives each image's decode of its
    single-mask token (no dynamic fallback) with a box as SAM2ImagePredictor encodes it."""
    model = build_stable_sam("sam2_tiny_random").eval()
    for p in model.plugins.parameters():
        p.add_(0.05 * torch.randn_like(p))
    gen = torch.Generator().manual_seed(0)
    images = torch.rand(2, 3, 256, 256, generator=gen) * 255
    features = model.image_encoder(model.preprocess(images))
    prompts = [{"point_coords": torch.tensor([[40.0, 50.0]]), "point_labels": torch.tensor([1]),
                "box": torch.tensor([10.0, 20.0, 120.0, 140.0]), "mask_input": None},
               {"point_coords": torch.tensor([[200.0, 90.0]]), "point_labels": torch.tensor([1]),
                "box": torch.tensor([150.0, 30.0, 250.0, 200.0]), "mask_input": None}]
    logits = PromptedDecoder(model, uses_plugins=True)(features, prompts)
    assert logits.shape == (2, 1, 64, 64)
    pe = model.prompt_encoder.get_dense_pe()
    for i, p in enumerate(prompts):
        points = torch.cat([p["box"].view(1, 2, 2), p["point_coords"][None]], dim=1)
        labels = torch.tensor([[2, 3, 1]], dtype=torch.int)
        sparse, dense = model.prompt_encoder(points=(points, labels), boxes=None, masks=None)
        high_res = [f[i:i + 1] for f in features["high_res_feats"]]
        expected, _ = model.decode(features["image_embed"][i:i + 1], pe, sparse, dense, False,
                                   high_res, dynamic_multimask=False)
        torch.testing.assert_close(logits[i:i + 1], expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("method, expected", [
    ("dt_sam", lambda k: k.startswith("sam.sam_mask_decoder.")),
    ("pt_sam", lambda k: k.startswith(("sam.sam_mask_decoder.mask_tokens.",
                                       "sam.sam_mask_decoder.output_hypernetworks_mlps.0."))),
])
def test_decoder_and_prompt_tuning_baselines_train_sam2s_decoder(tmp_path, method, expected):
    """DT-SAM and PT-SAM (paper Table 2) on SAM 2: exactly SAM 2's decoder, or its single-mask
    token and that token's hypernetwork MLP, move; the plugins do not."""
    from stable_sam.training.baselines import load_baseline_weights

    data = str(make_synthetic_dataset(tmp_path / "shapes", num_images=4, image_size=(96, 128),
                                      seed=3))
    config = TrainConfig(model_type="sam2_tiny_random", method=method, data=[data], steps=2,
                         batch_size=2, num_points=256, lr_drop_epochs=[], num_workers=0,
                         ckpt_every=100, log_every=100, out_dir=str(tmp_path / "run"))
    seed_everything(config.seed, 0)
    before = _state(build_model(config))
    result = train(config)
    after = _state(result["model"])
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(expected(k) for k in changed), sorted(changed)[:5]
    fresh = build_stable_sam("sam2_tiny_random")
    assert load_baseline_weights(fresh, result["weights"]) == method
    # SAM 2's weights come back (the plugins are unused by the baselines, random per build)
    assert all(torch.equal(v, after[k]) for k, v in fresh.state_dict().items()
               if k.startswith("sam."))
