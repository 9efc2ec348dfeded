"""Segmentation accuracy and stability metrics: mIoU, boundary IoU (mBIoU) and mSF.

All metrics work on bool masks at the image's original resolution, as HQ-SAM evaluates.
Empty cases are defined, never NaN by accident:
- IoU of two empty masks is 1 (they agree exactly); of one empty and one non-empty, 0.
- Boundary IoU follows the same rule on the two boundaries.
- mSF of K masks whose union is empty is 1: every mask equals the union (the empty mask), so
  the prompts agree perfectly; stability is agreement, not accuracy.
"""
from __future__ import annotations

import math
from typing import Iterable, Sequence

import cv2
import numpy as np

def _as_mask(mask: np.ndarray, name: str) -> np.ndarray:
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"{name} must be a 2-D HxW mask, has shape {mask.shape}")
    return mask.astype(bool, copy=False)


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.count_nonzero(a | b)
    if union == 0:
        return 1.0
    return np.count_nonzero(a & b) / union


def mask_iou(pred: np.ndarray, gt: np.ndarray) -> float:
    """|pred & gt| / |pred | gt| of two bool HxW masks of the same size (1 when both empty)."""
    pred, gt = _as_mask(pred, "pred"), _as_mask(gt, "gt")
    if pred.shape != gt.shape:
        raise ValueError(f"pred {pred.shape} and gt {gt.shape} must have the same size")
    return float(_iou(pred, gt))


def boundary_dilation(image_shape: Sequence[int], dilation_ratio: float = 0.02) -> int:
    """d = round(ratio * image diagonal), at least 1: the boundary band's width in pixels."""
    height, width = image_shape[:2]
    return max(1, int(round(dilation_ratio * math.hypot(height, width))))


def mask_boundary(mask: np.ndarray, dilation_ratio: float = 0.02) -> np.ndarray:
    """The mask minus its erosion by d pixels (3x3 structuring element, d iterations).

    d iterations of a 3x3 square equal one erosion by a (2d+1)x(2d+1) square, which OpenCV
    computes in a single pass (much faster for the large d of multi-megapixel images).
    Outside the image counts as background (the mask is zero-padded before eroding), so a mask
    touching the border has a boundary along it, as in Boundary IoU's reference code.
    """
    mask = _as_mask(mask, "mask")
    d = boundary_dilation(mask.shape, dilation_ratio)
    boundary = np.zeros_like(mask)
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    if rows.size == 0:
        return boundary
    # Only the mask's bounding box can hold boundary pixels; around it is background either
    # way (mask zeros or the zero padding), so eroding the padded box alone is exact.
    window = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
    crop = mask[window]
    padded = cv2.copyMakeBorder(crop.astype(np.uint8), 1, 1, 1, 1, cv2.BORDER_CONSTANT, value=0)
    kernel = cv2.getStructuringElement(cv2.MORPH_RECT, (2 * d + 1, 2 * d + 1))
    eroded = cv2.erode(padded, kernel)[1:-1, 1:-1].astype(bool)
    boundary[window] = crop & ~eroded
    return boundary


def boundary_iou(pred: np.ndarray, gt: np.ndarray, dilation_ratio: float = 0.02) -> float:
    """IoU of the two masks' boundaries (see `mask_boundary`); 1 when both boundaries are empty."""
    pred, gt = _as_mask(pred, "pred"), _as_mask(gt, "gt")
    if pred.shape != gt.shape:
        raise ValueError(f"pred {pred.shape} and gt {gt.shape} must have the same size")
    return float(_iou(mask_boundary(pred, dilation_ratio), mask_boundary(gt, dilation_ratio)))


def stability_score(masks: np.ndarray | Sequence[np.ndarray]) -> float:
    """mSF of one target (paper Eq. 1): mean over the K prompted masks of IoU(M_i, union).

    Arguments:
      masks: bool KxHxW (or a list of K HxW masks), K >= 1.
    Returns a value in [0, 1]: 1 for identical masks, 1/K for K disjoint equal-area masks, and
    1 when every mask is empty (see the module docstring).
    """
    masks = np.asarray(masks).astype(bool, copy=False)
    if masks.ndim != 3 or masks.shape[0] == 0:
        raise ValueError(f"masks must be KxHxW with K >= 1, has shape {masks.shape}")
    union = masks.any(0)
    union_area = np.count_nonzero(union)
    if union_area == 0:
        return 1.0
    # Each mask lies inside the union, so IoU(M_i, union) = |M_i| / |union|.
    areas = masks.reshape(len(masks), -1).sum(1)
    return float(np.mean(areas / union_area))


def mean_or_nan(values: Iterable[float]) -> float:
    """The mean of the finite values, NaN when there are none (rendered as '-' in tables)."""
    values = [float(v) for v in values if v is not None and math.isfinite(v)]
    return float(np.mean(values)) if values else float("nan")


def summarise(records: Iterable[dict], keys: Sequence[str] = ("iou", "biou", "sf")) -> dict:
    """Averages per-target records ({"iou", "biou", "sf"}) into {"miou", "mbiou", "msf", "count"}.

    mIoU and mBIoU average over targets the per-target mean over prompts, which with the same
    number of prompts per target is the mean over all (target, prompt) pairs; mSF averages the
    per-target stability (NaN for targets with a single prompt, e.g. the GT box, is left out).
    """
    records = list(records)
    out = {f"m{key}": mean_or_nan(r.get(key) for r in records) for key in keys}
    out["count"] = len(records)
    return out
