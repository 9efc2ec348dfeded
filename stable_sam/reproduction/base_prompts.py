"""The prompts of SAM's own training recipe (SAM paper, appendix A "Training algorithm") that the
demo base's trainer (`base_sam.py`) adds to its tight boxes and points: the small jitter on a
training box, and the correction click of its simulated interactive segmentation.

Everything is in the input frame the trainer decodes in: the masks' pixels (x = column,
y = row of the DEMO_IMAGE_SIZE image), the frame `data.prompts` draws in; SAM's prompt encoder
adds 0.5 to reach a pixel's centre itself. These are never the evaluation's loose boxes
(`data.prompts.noisy_box` at scale 0.4): SAM trained on tight boxes and so does the base.
"""
from __future__ import annotations

import numpy as np

# SAM's cap on how far one box coordinate moves (20 px of its 1024 px input). Kept in pixels of
# the demo's 256 px input, as the issue asks: at 10 % of the side it only binds for sides > 200 px
BOX_JITTER_MAX_PX = 20.0
NO_CLICK = -1  # SAM's "not a point" label: a prediction without error gets no new click


def jitter_boxes(boxes: np.ndarray, image_size: tuple[int, int], jitter: float,
                 rng: np.random.Generator) -> np.ndarray:
    """SAM's box noise: each coordinate of each tight box moves by Gaussian noise of standard
    deviation `jitter` x the box's side along that axis, the move capped at BOX_JITTER_MAX_PX,
    then the box is clipped to the image (and kept ordered, x0 <= x1, y0 <= y1).

    Arguments:
      boxes (float32 Nx4): xyxy GT boxes (`data.prompts.gt_box`'s inclusive convention).
      image_size ((H, W)): the frame to clip to.
      jitter (float): the noise's standard deviation as a share of the side (SAM: 0.1).

    Returns:
      float32 Nx4 boxes, each coordinate within BOX_JITTER_MAX_PX of the GT box's.
    """
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    box_w, box_h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    std = jitter * np.stack([box_w, box_h, box_w, box_h], axis=1)  # N x 4, per coordinate
    move = np.clip(rng.normal(size=boxes.shape) * std, -BOX_JITTER_MAX_PX, BOX_JITTER_MAX_PX)
    moved = boxes + move
    height, width = image_size
    # sorting and clipping only bring a coordinate closer to the GT one: the cap still holds
    xs = np.clip(np.sort(moved[:, 0::2], axis=1), 0, width - 1)
    ys = np.clip(np.sort(moved[:, 1::2], axis=1), 0, height - 1)
    return np.stack([xs[:, 0], ys[:, 0], xs[:, 1], ys[:, 1]], axis=1).astype(np.float32)


def correction_clicks(pred: np.ndarray, gt: np.ndarray, rng: np.random.Generator
                      ) -> tuple[np.ndarray, np.ndarray]:
    """One correction click per target, drawn as SAM draws its iterative points: uniformly from
    the larger error region of the previous prediction, positive (label 1) on a false-negative
    pixel, negative (label 0) on a false-positive one (a tie goes to the false negatives). A
    target predicted without error gets NO_CLICK at (0, 0), which SAM's prompt encoder embeds as
    "not a point", so the round still runs (SAM's rounds without a new point).

    Arguments:
      pred (bool NxHxW): the previous round's thresholded masks at the input resolution.
      gt (bool NxHxW): the targets.

    Returns:
      coords (float32 Nx1x2, xy) and labels (int64 Nx1).
    """
    pred, gt = np.asarray(pred, bool), np.asarray(gt, bool)
    if pred.shape != gt.shape or pred.ndim != 3:
        raise ValueError(f"pred and gt must be NxHxW masks of one shape, are {pred.shape} "
                         f"and {gt.shape}")
    coords = np.zeros((len(gt), 1, 2), np.float32)
    labels = np.full((len(gt), 1), NO_CLICK, np.int64)
    for i, (p, g) in enumerate(zip(pred, gt)):
        missed, extra = np.flatnonzero(g & ~p), np.flatnonzero(p & ~g)
        region, label = (missed, 1) if missed.size >= extra.size else (extra, 0)
        if region.size == 0:
            continue
        row, col = divmod(int(region[rng.integers(region.size)]), g.shape[1])
        coords[i, 0], labels[i, 0] = (col, row), label
    return coords, labels
