"""Prompt-following: does a model segment what it is prompted on, or one object whatever the
prompt? Stability alone rewards the second, so the table puts these beside mIoU and mSF:

- cross-object agreement: masks prompted on two different (disjoint) objects of one scene
  should differ; their IoU, averaged over pairs and prompts, is high for a prompt-blind model;
- stable but wrong: the share of targets whose masks agree (SF >= 0.7) on something that is
  not the target (IoU < 0.3);
- a box on empty background: the share of the predicted mask that lies on objects. A box
  holding no object gives a model that follows it nothing to grab but the background inside;
  one that ignores it segments an object elsewhere.
"""
from __future__ import annotations

import math
from typing import Iterable, Sequence

import cv2
import numpy as np

from stable_sam.evaluation.metrics import mask_iou

STABLE_MIN_SF = 0.7  # "stable": the mSF >= 70
WRONG_MAX_IOU = 0.3  # "wrong": the IoU < 30
BACKGROUND_BOX_SIDES = (0.12, 0.25)  # side of the empty box, as a share of the short image side


def stable_but_wrong(records: Iterable[dict]) -> float:
    """The share of targets with sf >= STABLE_MIN_SF and iou < WRONG_MAX_IOU among the records
    ({"iou", "sf"}, one per target) whose sf is defined; NaN when none is."""
    flags = [r["sf"] >= STABLE_MIN_SF and r["iou"] < WRONG_MAX_IOU for r in records
             if r.get("sf") is not None and math.isfinite(r["sf"])]
    return float(np.mean(flags)) if flags else float("nan")


def disjoint_pairs(gts: Sequence[np.ndarray]) -> list[tuple[int, int]]:
    """(a, b), a < b, of targets whose GT masks share no pixel (a part and its whole do)."""
    return [(a, b) for a in range(len(gts)) for b in range(a + 1, len(gts))
            if not np.any(np.asarray(gts[a], bool) & np.asarray(gts[b], bool))]


def cross_agreement(predictions: Sequence[np.ndarray], gts: Sequence[np.ndarray]) -> float:
    """Mean IoU of masks prompted on two different objects of one image.

    Arguments:
      predictions: one bool K x H x W array per target, prompt p of every target at index p.
      gts: the targets' bool H x W GT masks; only pairs with disjoint GTs count.
    Returns the mean over those pairs and over p of IoU(predictions[a][p], predictions[b][p]);
    NaN when the image has no such pair.
    """
    if len(predictions) != len(gts):
        raise ValueError(f"{len(predictions)} prediction sets for {len(gts)} targets")
    values = [mask_iou(pa, pb) for a, b in disjoint_pairs(gts)
              for pa, pb in zip(predictions[a], predictions[b])]
    return float(np.mean(values)) if values else float("nan")


def background_box(objects: np.ndarray, rng: np.random.Generator,
                   sides: tuple[float, float] = BACKGROUND_BOX_SIDES) -> np.ndarray | None:
    """A square xyxy box (the prompts' inclusive-corner convention) that holds no pixel of
    `objects` (bool H x W, every object of the image), its side drawn from `sides` x the short
    image side and its place uniform among the places that fit; None when none fits."""
    objects = np.asarray(objects, bool)
    height, width = objects.shape
    side = max(2, int(round(rng.uniform(*sides) * min(height, width))))
    if side > min(height, width):
        return None
    counts = cv2.integral(objects.astype(np.uint8))  # (H+1) x (W+1) summed-area table
    inside = (counts[side:, side:] - counts[:-side, side:] - counts[side:, :-side]
              + counts[:-side, :-side])  # objects in the side x side window at each top-left
    rows, cols = np.nonzero(inside == 0)
    if rows.size == 0:
        return None
    k = int(rng.integers(rows.size))
    top, left = int(rows[k]), int(cols[k])
    return np.array([left, top, left + side - 1, top + side - 1], np.float32)


def object_share(mask: np.ndarray, objects: np.ndarray) -> float:
    """The share of the predicted mask's pixels on objects; 0 for an empty mask."""
    mask, objects = np.asarray(mask, bool), np.asarray(objects, bool)
    if mask.shape != objects.shape:
        raise ValueError(f"mask {mask.shape} and objects {objects.shape} must have the same size")
    area = np.count_nonzero(mask)
    return float(np.count_nonzero(mask & objects) / area) if area else 0.0
