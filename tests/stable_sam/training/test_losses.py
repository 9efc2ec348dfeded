"""Losses against hand-computed values, and the importance sampling of points."""
import math

import pytest
import torch

from stable_sam.training.losses import (
    dice_loss,
    full_mask_loss,
    mask_loss,
    point_mask_loss,
    point_sample,
    sample_uncertain_points,
    sigmoid_bce_loss,
)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_dice_of_identical_hard_masks_is_zero(dtype):
    target = (torch.rand(3, 1, 17, 23, generator=torch.Generator().manual_seed(0)) > 0.5).to(dtype)
    logits = (target * 2 - 1) * 50.0  # sigmoid saturates to exactly the target
    assert dice_loss(logits, target).item() == pytest.approx(0.0, abs=1e-6)


def test_dice_of_disjoint_masks_approaches_one():
    target = torch.zeros(1, 1, 8, 8)
    target[..., :4, :] = 1
    logits = torch.where(target > 0, -50.0, 50.0)  # predicts exactly the complement
    # 1 - (0 + 1) / (32 + 32 + 1) with the +1 smoothing
    assert dice_loss(logits, target).item() == pytest.approx(1 - 1 / 65, rel=1e-6)


def test_dice_hand_computed():
    # p = sigmoid(0) = 0.5 on two pixels, targets [1, 0]:
    # 1 - (2 * 0.5 + 1) / (0.5 + 0.5 + 1 + 1) = 1/3
    logits = torch.zeros(1, 1, 1, 2)
    target = torch.tensor([[[[1.0, 0.0]]]])
    assert dice_loss(logits, target).item() == pytest.approx(1 / 3, rel=1e-6)


def test_dice_averages_per_mask():
    logits = torch.stack([torch.full((1, 1, 2), 50.0), torch.zeros(1, 1, 2)])
    target = torch.stack([torch.ones(1, 1, 2), torch.tensor([[[1.0, 0.0]]])])
    assert dice_loss(logits, target).item() == pytest.approx((0.0 + 1 / 3) / 2, abs=1e-6)


@pytest.mark.parametrize("x", [-3.0, -0.5, 0.0, 1.25, 4.0])
def test_bce_known_values(x):
    logits = torch.tensor([[x, x]])
    target = torch.tensor([[1.0, 0.0]])
    # target 1: log(1 + e^-x); target 0: log(1 + e^x); averaged over the two
    expected = (math.log1p(math.exp(-x)) + math.log1p(math.exp(x))) / 2
    assert sigmoid_bce_loss(logits, target).item() == pytest.approx(expected, rel=1e-6)


def test_bce_of_zero_logits_is_log2_whatever_the_target():
    target = torch.rand(4, 1, 5, 5, generator=torch.Generator().manual_seed(1)).round()
    assert sigmoid_bce_loss(torch.zeros(4, 1, 5, 5), target).item() == pytest.approx(math.log(2))


def test_point_sample_reads_pixel_centres_across_resolutions():
    low = torch.arange(4.0).view(1, 1, 2, 2)  # [[0, 1], [2, 3]]
    high = low.repeat_interleave(4, 2).repeat_interleave(4, 3)  # same picture at 8x8
    # (x, y) at the centres of the four low-res pixels
    coords = torch.tensor([[[0.25, 0.25], [0.75, 0.25], [0.25, 0.75], [0.75, 0.75]]])
    assert point_sample(low, coords).flatten().tolist() == [0.0, 1.0, 2.0, 3.0]
    assert point_sample(high, coords).flatten().tolist() == [0.0, 1.0, 2.0, 3.0]


@pytest.mark.parametrize("n,num_points", [(1, 1), (3, 100), (2, 37)])
def test_uncertain_points_shape_range_and_reproducibility(n, num_points):
    logits = torch.randn(n, 1, 16, 12, generator=torch.Generator().manual_seed(2))
    a = sample_uncertain_points(logits, num_points, 3.0, 0.75, torch.Generator().manual_seed(5))
    b = sample_uncertain_points(logits, num_points, 3.0, 0.75, torch.Generator().manual_seed(5))
    assert a.shape == (n, num_points, 2)
    assert a.min() >= 0 and a.max() <= 1
    assert torch.equal(a, b)


def test_importance_share_lands_on_uncertain_region():
    # Logits are 0 (maximally uncertain) on the left half, +-20 elsewhere.
    logits = torch.full((2, 1, 32, 32), 20.0)
    logits[..., :16] = 0.0
    num_points = 4000
    coords = sample_uncertain_points(logits, num_points, 3.0, 0.75,
                                     torch.Generator().manual_seed(0))
    in_left = coords[..., 0] < 0.5
    num_uncertain = int(0.75 * num_points)
    # 3 x 4000 candidates put ~6000 in the left half: the 3000 most uncertain all lie there,
    # and the 1000 uniform points add about half of themselves.
    assert in_left[:, :num_uncertain].all()
    share = in_left.float().mean().item()
    assert 0.84 < share < 0.91
    uniform = sample_uncertain_points(logits, num_points, 3.0, 0.0, torch.Generator().manual_seed(0))
    assert 0.45 < (uniform[..., 0] < 0.5).float().mean().item() < 0.55


@pytest.mark.parametrize("bad", [dict(num_points=0), dict(oversample_ratio=0.5),
                                 dict(importance_sample_ratio=1.5)])
def test_uncertain_points_bad_arguments(bad):
    args = dict(num_points=10, oversample_ratio=3.0, importance_sample_ratio=0.75)
    args.update(bad)
    with pytest.raises(ValueError, match=next(iter(bad))):
        sample_uncertain_points(torch.zeros(1, 1, 4, 4), **args)


def test_point_loss_of_a_perfect_prediction_is_near_zero_and_of_a_wrong_one_is_large():
    target = torch.zeros(2, 1, 64, 64)
    target[:, :, 10:40, 20:50] = 1
    good = torch.nn.functional.interpolate(target, size=(16, 16), mode="area") * 40 - 20
    bce, dice = point_mask_loss(good, target, num_points=500,
                                generator=torch.Generator().manual_seed(0))
    # boundary pixels of the 16x16 map are blurred, hence not exactly 0
    assert bce.item() < 1.0 and dice.item() < 0.15
    bce_bad, dice_bad = point_mask_loss(-good, target, num_points=500,
                                        generator=torch.Generator().manual_seed(0))
    assert bce_bad.item() > 5.0 and dice_bad.item() > 0.85


def test_point_loss_gradient_flows_to_logits_only_at_sampled_points():
    logits = torch.zeros(1, 1, 32, 32, requires_grad=True)
    target = torch.ones(1, 1, 128, 128)
    bce, dice = point_mask_loss(logits, target, num_points=8,
                                generator=torch.Generator().manual_seed(0))
    (bce + dice).backward()
    touched = (logits.grad != 0).sum().item()
    assert 0 < touched <= 8 * 4  # bilinear reads touch at most 4 pixels per point


def test_full_loss_upsamples_logits_to_target_size():
    target = torch.zeros(1, 1, 32, 32)
    target[..., 8:24, 8:24] = 1
    logits = torch.nn.functional.interpolate(target, size=(8, 8), mode="area") * 60 - 30
    bce, dice = full_mask_loss(logits, target)
    assert bce.item() < 3.0 and dice.item() < 0.1
    # exact hand value when the logits are already at the target's size
    bce0, dice0 = full_mask_loss(torch.zeros(1, 1, 32, 32), target)
    assert bce0.item() == pytest.approx(math.log(2))
    assert dice0.item() == pytest.approx(1 - (2 * 0.5 * 256 + 1) / (0.5 * 1024 + 256 + 1))


def test_mask_loss_dispatch_and_errors():
    logits, target = torch.zeros(1, 1, 8, 8), torch.ones(1, 1, 8, 8)
    assert torch.equal(torch.stack(mask_loss("full", logits, target)),
                       torch.stack(full_mask_loss(logits, target)))
    g = torch.Generator().manual_seed(3)
    pts = mask_loss("points", logits, target, num_points=10, generator=g)
    assert all(torch.isfinite(t) for t in pts)
    with pytest.raises(ValueError, match="loss must be 'points' or 'full'"):
        mask_loss("pixels", logits, target)
    with pytest.raises(ValueError, match=r"logits must be \(N, 1, h, w\)"):
        full_mask_loss(torch.zeros(1, 2, 8, 8), target)
    with pytest.raises(ValueError, match="targets must be"):
        point_mask_loss(logits, torch.ones(2, 1, 8, 8))


@pytest.mark.parametrize("shape", [(2, 1, 7, 5), (1, 3, 16, 16), (3, 1, 1, 9)])
def test_point_sample_matches_grid_sample_with_zero_padding(shape):
    g = torch.Generator().manual_seed(sum(shape))
    masks = torch.randn(*shape, generator=g, dtype=torch.float64)
    coords = torch.rand(shape[0], 50, 2, generator=g, dtype=torch.float64)
    coords[:, :4] = torch.tensor([[0.0, 0.0], [1.0, 1.0], [0.0, 1.0], [0.999, 0.001]],
                                 dtype=torch.float64)  # edges read half zero padding
    expected = torch.nn.functional.grid_sample(
        masks, coords.unsqueeze(2) * 2 - 1, mode="bilinear", align_corners=False
    ).squeeze(3)
    torch.testing.assert_close(point_sample(masks, coords), expected, rtol=1e-12, atol=1e-12)


def test_point_sample_gradient_matches_grid_sample():
    g = torch.Generator().manual_seed(0)
    masks = torch.randn(2, 1, 6, 8, generator=g, dtype=torch.float64, requires_grad=True)
    coords = torch.rand(2, 30, 2, generator=g, dtype=torch.float64)
    weights = torch.randn(2, 1, 30, generator=g, dtype=torch.float64)
    (point_sample(masks, coords) * weights).sum().backward()
    ours = masks.grad.clone()
    masks.grad = None
    ref = torch.nn.functional.grid_sample(masks, coords.unsqueeze(2) * 2 - 1,
                                          align_corners=False).squeeze(3)
    (ref * weights).sum().backward()
    torch.testing.assert_close(ours, masks.grad, rtol=1e-12, atol=1e-12)
