"""What a mask head can reach at all: the IoU left after a GT mask passes through a coarse grid.

A decoder whose mask is a function of a G x G embedding can only draw masks as fine as that
grid allows. `grid_ceiling_iou` measures the bound directly: area-average the GT to G x G,
scale it back up bilinearly, threshold at 0.5, and score it against the GT. Its mean over
targets (`grid_ceiling_miou`) is the mIoU no model with that bottleneck can beat by much.

`box_fill_iou` is the trivial rule the issue compares against: the GT box, filled.
"""
from __future__ import annotations

from typing import Iterable

import cv2
import numpy as np

from stable_sam.evaluation.metrics import mask_iou


def grid_roundtrip(mask: np.ndarray, grid: int) -> np.ndarray:
    """The bool HxW mask after area-averaging to `grid` x `grid` and bilinear scaling back."""
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"mask must be a 2-D HxW mask, has shape {mask.shape}")
    if grid < 1:
        raise ValueError(f"grid must be >= 1, is {grid}")
    height, width = mask.shape
    coarse = cv2.resize(mask.astype(np.float32), (grid, grid), interpolation=cv2.INTER_AREA)
    return cv2.resize(coarse, (width, height), interpolation=cv2.INTER_LINEAR) > 0.5


def grid_ceiling_iou(mask: np.ndarray, grid: int) -> float:
    """IoU of the GT mask with its `grid_roundtrip`."""
    return mask_iou(grid_roundtrip(mask, grid), mask)


def grid_ceiling_miou(masks: Iterable[np.ndarray], grid: int) -> float:
    """Mean `grid_ceiling_iou` over targets (a fraction; NaN for no targets)."""
    values = [grid_ceiling_iou(m, grid) for m in masks]
    return float(np.mean(values)) if values else float("nan")


def box_fill(mask: np.ndarray) -> np.ndarray:
    """The mask's bounding box, filled (empty for an empty mask)."""
    mask = np.asarray(mask, bool)
    filled = np.zeros_like(mask)
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    if rows.size:
        filled[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1] = True
    return filled


def box_fill_iou(mask: np.ndarray) -> float:
    """IoU of the filled GT box with the GT: what 'segment' means for a model that only copies
    the box."""
    return mask_iou(box_fill(mask), mask)
