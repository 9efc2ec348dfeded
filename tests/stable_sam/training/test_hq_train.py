"""Training Stable-SAM on HQ-SAM (random `hq_tiny`, generated shapes): only the plugins change,
the decoder pass the trainer runs is HQ-SAM's default output, and the plugin file it writes
loads back into an HQ model."""

import pytest
import torch

from stable_sam.build import build_stable_sam
from stable_sam.checkpoint import load_plugins
from stable_sam.data.synthetic import make_synthetic_dataset
from stable_sam.families.hq import StableHQSam
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


def test_training_changes_only_the_plugins_of_hq_sam(tmp_path):
    data = str(make_synthetic_dataset(tmp_path / "shapes", num_images=4, image_size=(96, 128),
                                      seed=3))
    config = TrainConfig(model_type="hq_tiny", data=[data], steps=2, batch_size=2,
                         num_points=256, lr_drop_epochs=[], num_workers=0, ckpt_every=100,
                         log_every=100, out_dir=str(tmp_path / "run"))
    seed_everything(config.seed, 0)
    before = _state(build_model(config))
    result = train(config)
    model = result["model"]
    assert isinstance(model, StableHQSam)
    after = _state(model)
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.startswith("plugins.") for k in changed)  # HQ-SAM bit-identical
    assert not any(p.requires_grad for p in model.sam.parameters())
    fresh = build_stable_sam("hq_tiny")
    load_plugins(fresh, result["weights"])
    assert all(torch.equal(v, after[k]) for k, v in fresh.state_dict().items())


@torch.no_grad()
def test_prompted_decoder_runs_hq_sams_default_output():
    """The trainer's decoder pass over HQ-SAM's encoder output (embeddings, interm list) gives
    each image's decode with hq_token_only off, SAM's mask + the HQ token's."""
    model = build_stable_sam("hq_tiny").eval()
    for p in model.plugins.parameters():
        p.add_(0.05 * torch.randn_like(p))
    gen = torch.Generator().manual_seed(0)
    images = torch.rand(2, 3, 256, 256, generator=gen) * 255
    features = model.image_encoder(model.preprocess(images))
    prompts = [{"point_coords": torch.tensor([[40.0, 50.0]]), "point_labels": torch.tensor([1]),
                "box": None, "mask_input": None},
               {"point_coords": torch.tensor([[200.0, 90.0]]), "point_labels": torch.tensor([1]),
                "box": None, "mask_input": None}]
    logits = PromptedDecoder(model, uses_plugins=True)(features, prompts)
    assert logits.shape == (2, 1, 64, 64)
    pe = model.prompt_encoder.get_dense_pe()
    for i, p in enumerate(prompts):
        sparse, dense = model.prompt_encoder(
            points=(p["point_coords"][None], p["point_labels"][None]), boxes=None, masks=None)
        expected, _ = model.decode(features[0][i:i + 1], pe, sparse, dense, False, False,
                                   [features[1][0][i:i + 1]])
        torch.testing.assert_close(logits[i:i + 1], expected, atol=1e-5, rtol=0)
