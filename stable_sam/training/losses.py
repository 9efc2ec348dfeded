"""Mask losses for training: sigmoid BCE + dice, on importance-sampled points or on full masks.

The point variant follows the recipe HQ-SAM trains with (itself from PointRend / Mask2Former):
draw `oversample_ratio * num_points` uniform points, keep the `importance_sample_ratio` share
whose predicted logits are closest to 0 (most uncertain), fill the rest with fresh uniform points,
and evaluate both losses on those points only. Written from the description, not copied.
"""
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "point_sample",
    "sample_uncertain_points",
    "sigmoid_bce_loss",
    "dice_loss",
    "point_mask_loss",
    "full_mask_loss",
    "mask_loss",
]


def point_sample(masks: Tensor, coords: Tensor) -> Tensor:
    """Bilinearly reads `masks` at normalised points, zero outside (grid_sample's
    align_corners=False, padding "zeros" semantics).

    Written with gathers rather than grid_sample: the backward is then a scatter-add, which
    has a deterministic CUDA implementation (grid_sample's backward does not), so resumed GPU
    runs can be bit-exact under `torch.use_deterministic_algorithms`.

    Arguments:
      masks (Tensor[N, C, H, W]): maps to read (logits or {0, 1} targets).
      coords (Tensor[N, P, 2]): (x, y) in [0, 1] over the whole map, pixel-area convention
        (0 and 1 are the outer edges), so maps of different sizes line up.
    Returns:
      Tensor[N, C, P].
    """
    if (masks.dim() != 4 or coords.dim() != 3 or coords.shape[-1] != 2
            or coords.shape[0] != masks.shape[0]):
        raise ValueError(
            f"point_sample expects masks (N, C, H, W) and coords (N, P, 2), got "
            f"{tuple(masks.shape)} and {tuple(coords.shape)}"
        )
    n, c, h, w = masks.shape
    p = coords.shape[1]
    coords = coords.to(masks.dtype)
    x = coords[..., 0] * w - 0.5  # (N, P) in pixel-centre units
    y = coords[..., 1] * h - 0.5
    x0, y0 = x.floor(), y.floor()
    fx, fy = x - x0, y - y0  # weights of the far corners
    flat = masks.reshape(n, c, h * w)
    out = masks.new_zeros(n, c, p)
    for dy, wy in ((0, 1 - fy), (1, fy)):
        for dx, wx in ((0, 1 - fx), (1, fx)):
            xi, yi = x0 + dx, y0 + dy
            inside = (xi >= 0) & (xi <= w - 1) & (yi >= 0) & (yi <= h - 1)
            index = (yi.clamp(0, h - 1) * w + xi.clamp(0, w - 1)).long()  # (N, P)
            values = flat.gather(2, index.unsqueeze(1).expand(n, c, p))  # (N, C, P)
            out = out + values * (wy * wx * inside).unsqueeze(1)
    return out


@torch.no_grad()
def sample_uncertain_points(
    logits: Tensor,
    num_points: int,
    oversample_ratio: float = 3.0,
    importance_sample_ratio: float = 0.75,
    generator: Optional[torch.Generator] = None,
) -> Tensor:
    """Points where the prediction is least certain, mixed with uniform ones.

    Arguments:
      logits (Tensor[N, 1, H, W]): predicted mask logits; uncertainty = -|logit|.
      num_points (int): P, points per mask.
      oversample_ratio (float >= 1): candidates drawn = P * oversample_ratio.
      importance_sample_ratio (float in [0, 1]): share of the P points taken from the most
        uncertain candidates; the rest are uniform.
      generator: makes the draw reproducible (the trainer seeds one per step and rank).
    Returns:
      Tensor[N, P, 2] of (x, y) in [0, 1].
    """
    if num_points < 1:
        raise ValueError(f"num_points must be >= 1, got {num_points}")
    if oversample_ratio < 1:
        raise ValueError(f"oversample_ratio must be >= 1, got {oversample_ratio}")
    if not 0.0 <= importance_sample_ratio <= 1.0:
        raise ValueError(f"importance_sample_ratio must be in [0, 1], got {importance_sample_ratio}")
    n = logits.shape[0]
    device = logits.device
    num_candidates = int(num_points * oversample_ratio)
    candidates = torch.rand(n, num_candidates, 2, generator=generator, device=device)
    uncertainty = -point_sample(logits.float(), candidates).abs()[:, 0]  # (N, num_candidates)
    num_uncertain = int(importance_sample_ratio * num_points)
    num_random = num_points - num_uncertain
    top = uncertainty.topk(num_uncertain, dim=1).indices  # (N, num_uncertain)
    picked = torch.gather(candidates, 1, top.unsqueeze(-1).expand(-1, -1, 2))
    uniform = torch.rand(n, num_random, 2, generator=generator, device=device)
    return torch.cat([picked, uniform], dim=1)


def sigmoid_bce_loss(logits: Tensor, targets: Tensor) -> Tensor:
    """Binary cross-entropy on logits, averaged over each mask's elements, then over masks.

    logits, targets: Tensor[N, ...] of the same shape; targets in [0, 1]. Returns a scalar.
    """
    per_element = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    return per_element.flatten(1).mean(1).mean()


def dice_loss(logits: Tensor, targets: Tensor, smooth: float = 1.0) -> Tensor:
    """1 - soft dice of sigmoid(logits) against targets, per mask, averaged over masks.

    The +1 smoothing keeps an empty prediction of an empty mask at loss 0 instead of 0/0.
    """
    probs = logits.sigmoid().flatten(1)
    targets = targets.flatten(1)
    numerator = 2.0 * (probs * targets).sum(1) + smooth
    denominator = probs.sum(1) + targets.sum(1) + smooth
    return (1.0 - numerator / denominator).mean()


def _check_pair(logits: Tensor, targets: Tensor) -> None:
    if logits.dim() != 4 or logits.shape[1] != 1:
        raise ValueError(f"logits must be (N, 1, h, w), got {tuple(logits.shape)}")
    if targets.dim() != 4 or targets.shape[:2] != logits.shape[:2]:
        raise ValueError(
            f"targets must be (N, 1, H, W) with N = {logits.shape[0]}, got {tuple(targets.shape)}"
        )


def point_mask_loss(
    logits: Tensor,
    targets: Tensor,
    num_points: int = 112 * 112,
    oversample_ratio: float = 3.0,
    importance_sample_ratio: float = 0.75,
    generator: Optional[torch.Generator] = None,
) -> Tuple[Tensor, Tensor]:
    """(BCE, dice) on points sampled by `sample_uncertain_points`.

    logits (Tensor[N, 1, h, w]) and targets (Tensor[N, 1, H, W], {0, 1}) may differ in size:
    both are read at the same normalised points (the decoder's 256x256 logits against the
    1024x1024 padded ground truth).
    """
    _check_pair(logits, targets)
    coords = sample_uncertain_points(
        logits, num_points, oversample_ratio, importance_sample_ratio, generator
    )
    point_targets = point_sample(targets.to(logits.dtype), coords)  # (N, 1, P)
    point_logits = point_sample(logits, coords)  # (N, 1, P)
    return sigmoid_bce_loss(point_logits, point_targets), dice_loss(point_logits, point_targets)


def full_mask_loss(logits: Tensor, targets: Tensor) -> Tuple[Tensor, Tensor]:
    """(BCE, dice) on every pixel: logits are upsampled bilinearly to the targets' size."""
    _check_pair(logits, targets)
    if logits.shape[-2:] != targets.shape[-2:]:
        logits = F.interpolate(logits, size=targets.shape[-2:], mode="bilinear", align_corners=False)
    targets = targets.to(logits.dtype)
    return sigmoid_bce_loss(logits, targets), dice_loss(logits, targets)


def mask_loss(
    kind: str,
    logits: Tensor,
    targets: Tensor,
    *,
    num_points: int = 112 * 112,
    oversample_ratio: float = 3.0,
    importance_sample_ratio: float = 0.75,
    generator: Optional[torch.Generator] = None,
) -> Tuple[Tensor, Tensor]:
    """Dispatches on kind: "points" (HQ-SAM's sampled loss) or "full" (every pixel)."""
    if kind == "points":
        return point_mask_loss(
            logits, targets, num_points, oversample_ratio, importance_sample_ratio, generator
        )
    if kind == "full":
        return full_mask_loss(logits, targets)
    raise ValueError(f"loss must be 'points' or 'full', got {kind!r}")
