"""The trainer against the paper's recipe, through the code a run executes: one real optimiser
step's loss and gradients equal BCE + dice on the sampled points computed here by hand;
`TrainingSamples` pastes occluders at the configured rate, in both relations, and draws prompt
kinds in the proportions of its weights; "without RTS" means high-quality prompts."""
import math
from collections import Counter

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from stable_sam.data.prompts import box_iou, gt_box
from stable_sam.data.synthetic import make_synthetic_dataset
from stable_sam.training import TrainConfig
from stable_sam.training import loop
from stable_sam.training.distributed import DistContext
from stable_sam.training.losses import sample_uncertain_points
from stable_sam.training.rng import step_generator
from stable_sam.training.samples import TrainingSamples, epoch_loader
from stable_sam.training.signals import StopRequest

SIZE = 64  # TrainingSamples' canvas for the sampling tests: small, so hundreds of draws are fast


class _Objects:
    """In-memory dataset: image i is a plain background with one ellipse of its own colour."""

    def __init__(self, count: int, name: str = "objects"):
        self.name, self.count = name, count

    def __len__(self):
        return self.count

    def __getitem__(self, i):
        rng = np.random.default_rng(i)
        h, w = 48, 64
        yy, xx = np.mgrid[:h, :w]
        cy, cx = rng.uniform(16, 32), rng.uniform(20, 44)
        ry, rx = rng.uniform(8, 14), rng.uniform(10, 18)
        mask = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
        image = np.empty((h, w, 3), np.uint8)
        image[:] = (10, 10, 10)
        image[mask] = (40 + 7 * i % 200, 255 - 5 * i % 200, 100 + 11 * i % 150)
        return {"image": image, "mask": mask, "name": f"object{i}"}


def _samples(method="stable_sam", count=40, **rts):
    config = TrainConfig(model_type="tiny", method=method, rts=rts, lsj_scale=[0.8, 1.25])
    return TrainingSamples([_Objects(count)], config, image_size=SIZE)


def _keys(count, epochs):
    return [(e, i) for e in range(epochs) for i in range(count)]


# ---------------------------------------------------------------------------- occlusion


def test_occluders_are_pasted_at_the_configured_rate_in_both_relations():
    count, epochs, rate = 40, 6, 0.5
    plain, occluded = _samples(occlusion_probability=0.0), _samples(occlusion_probability=rate)
    pasted = occludee = occluder = 0
    for key in _keys(count, epochs):
        a, b = plain[key], occluded[key]  # same jitter stream: only the occlusion differs
        image_changed = not torch.equal(a["image"], b["image"])
        mask_changed = not torch.equal(a["mask"], b["mask"])
        pasted += image_changed
        occludee += image_changed and mask_changed  # the target lost covered pixels
        occluder += image_changed and not mask_changed  # pasted behind: the target is whole
        assert b["mask"].any()
    n = count * epochs
    sd = math.sqrt(n * rate * (1 - rate))
    assert abs(pasted - n * rate) < 4 * sd, (pasted, n)
    # the paper's two relations, evenly
    assert abs(occludee - pasted / 2) < 4 * math.sqrt(pasted / 4), (occludee, occluder)
    assert occludee + occluder == pasted


def test_the_trainers_default_config_occludes():
    config = TrainConfig(model_type="tiny")
    samples = TrainingSamples([_Objects(40)], config, image_size=SIZE)
    plain = TrainingSamples([_Objects(40)], config.replace(rts={"occlusion_probability": 0.0}),
                            image_size=SIZE)
    keys = _keys(40, 5)
    pasted = sum(not torch.equal(samples[k]["image"], plain[k]["image"]) for k in keys)
    rate = config.rts["occlusion_probability"]
    assert abs(pasted - rate * len(keys)) < 4 * math.sqrt(len(keys) * rate * (1 - rate))


# ---------------------------------------------------------------------------- prompt mixture

# 0.999 quantiles of the chi-square distribution by degrees of freedom
_CHI2_999 = {1: 10.83, 2: 13.82, 6: 22.46}


def _chi_square(counts: Counter, weights: dict) -> float:
    n, total = sum(counts.values()), sum(weights.values())
    assert set(counts) <= set(weights)
    return sum((counts.get(k, 0) - n * w / total) ** 2 / (n * w / total)
               for k, w in weights.items())


@pytest.mark.parametrize("weights", [
    None,  # the defaults: every kind of the paper's RTS, equally often
    {"noisy_box": 3.0, "points1": 1.0, "coarse_mask": 1.0},
])
def test_rts_mixture_matches_its_weights(weights):
    rts = {"occlusion_probability": 0.0}
    if weights is not None:
        rts["weights"] = weights
    samples = _samples(count=60, **rts)
    counts = Counter(samples[k]["kind"] for k in _keys(60, 12))
    expected = samples.rts.weights
    if weights is None:
        assert expected == {k: 1.0 for k in ("box", "noisy_box", "points1", "points3",
                                             "points5", "points10", "coarse_mask")}
    assert _chi_square(counts, expected) < _CHI2_999[len(expected) - 1], counts


def test_training_noisy_boxes_keep_iou_at_least_half():
    samples = _samples(count=30, weights={"noisy_box": 1.0}, occlusion_probability=0.0)
    ious, size_changes = [], []
    for key in _keys(30, 4):
        item = samples[key]
        box, gt = item["prompt"]["box"].numpy(), gt_box(item["mask"][0].numpy())
        ious.append(box_iou(box, gt))
        size_changes.append(np.abs((box[2:] - box[:2]) / (gt[2:] - gt[:2]) - 1).max())
    assert min(ious) >= 0.5 and max(ious) < 1.0
    # scale 0.4: sizes change by up to 40% (a weaker noise could not pass 0.3)
    assert 0.3 < max(size_changes) <= 0.4 + 1e-3


@pytest.mark.parametrize("method", ["stable_sam_no_rts", "stable_sam_no_drp_no_rts",
                                    "dt_sam_no_rts", "pt_sam_no_rts"])
def test_without_rts_means_high_quality_prompts_and_no_occlusion(method):
    # the user's RTS settings do not leak into a "without RTS" training
    samples = _samples(method, count=30, occlusion_probability=1.0, weights={"noisy_box": 1.0})
    plain = _samples(method, count=30, occlusion_probability=0.0)
    counts = Counter()
    for key in _keys(30, 7):
        item = samples[key]
        counts[item["kind"]] += 1
        assert torch.equal(item["image"], plain[key]["image"])  # nothing pasted
        if item["kind"] == "box":  # the tight GT box, never a noisy one
            assert np.array_equal(item["prompt"]["box"].numpy(), gt_box(item["mask"][0].numpy()))
        if item["kind"] == "points10":
            assert len(item["prompt"]["point_coords"]) == 10
    assert set(counts) == {"box", "points10", "coarse_mask"}
    assert _chi_square(counts, dict.fromkeys(counts, 1.0)) < _CHI2_999[2], counts


# ---------------------------------------------------------------------------- the real step


@pytest.fixture
def one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    return str(make_synthetic_dataset(tmp_path_factory.mktemp("shapes"), num_images=4,
                                      image_size=(96, 128), seed=5))


def _hand_bce_dice(logits, targets, coords):
    """BCE and dice on the points, written out: grid_sample reads both maps at the same
    normalised points (align_corners=False: 0 and 1 are the outer pixel edges)."""
    grid = (coords * 2 - 1)[:, :, None, :]  # (N, P, 1, 2)
    x = F.grid_sample(logits, grid, align_corners=False).flatten(1)  # (N, P)
    t = F.grid_sample(targets.float(), grid, align_corners=False).flatten(1)
    bce = (torch.clamp(x, min=0) - x * t + torch.log1p(torch.exp(-x.abs()))).mean(1).mean()
    p = torch.sigmoid(x)
    dice = (1 - (2 * (p * t).sum(1) + 1) / (p.sum(1) + t.sum(1) + 1)).mean()
    return bce, dice


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("method", ["stable_sam", "pt_sam_no_rts"])
def test_a_training_step_optimises_bce_plus_dice_on_the_sampled_points(shapes, tmp_path, method):
    config = TrainConfig(model_type="tiny", data=[shapes], method=method, steps=1, batch_size=2,
                         num_points=300, num_workers=0, out_dir=str(tmp_path), seed=3)
    ctx = DistContext()
    run = loop._build_run(config, ctx)
    # Move the zero-initialised plugin outputs away from zero so every term has a gradient.
    with torch.no_grad():
        for p in run.model.parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn_like(p))
    batch = next(iter(epoch_loader(run.samples, 0, 1, run.steps_per_epoch, config, ctx, False)))
    params = [p for p in run.model.parameters() if p.requires_grad]

    images, targets = batch["image"].float(), batch["mask"]
    with torch.no_grad():
        embeddings = run.model.image_encoder(run.model.preprocess(images))
    logits = run.decoder(embeddings, batch["prompts"])
    coords = sample_uncertain_points(logits.detach(), config.num_points, config.oversample_ratio,
                                     config.importance_sample_ratio,
                                     generator=step_generator(config.seed, 0, 0, run.device))
    bce, dice = _hand_bce_dice(logits, targets, coords)
    expected_grads = torch.autograd.grad(bce + dice, params)

    with StopRequest() as stop:
        _, losses, _ = loop._run_step(run, batch, 0, stop)
    assert losses == pytest.approx([(bce + dice).item(), bce.item(), dice.item()], rel=1e-5)
    assert dice.item() > 0.05 and bce.item() > 0.05  # both terms carry weight here
    for p, g in zip(params, expected_grads):
        torch.testing.assert_close(p.grad, g, rtol=1e-4, atol=1e-7)
