"""The worst-case box search's feasible set: boxes inside the image whose IoU with the GT box is at
least tau, and the projection that brings a box that stepped out of it back in.

Boxes are float (N, 4) xyxy in image pixels, compared as continuous rectangles, as
`stable_sam.data.prompts.box_iou` compares them; the image is the continuous 0..W x 0..H (the
frame SAM and the demo page take boxes in; a GT box, whose x1 is its last foreground column,
lies within 0..W-1).
"""
from __future__ import annotations

import numpy as np

# Halvings of the segment toward the GT box: 2**-30 of a box's offset is far below a pixel.
BISECTION_STEPS = 30
# A box whose IoU with the GT box is within this of tau is on the constraint's boundary (the
# projection leaves it within 2**-30 of a box's offset of it).
ON_BOUNDARY = 1e-3


def box_ious(boxes: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """IoU (N,) of each box (N, 4) with the box gt (4,); a box identical to gt scores 1 (as
    `box_iou`: a zero-area GT box equals only itself), an inverted or empty box 0."""
    boxes, gt = np.asarray(boxes, np.float64).reshape(-1, 4), np.asarray(gt, np.float64)
    iw = np.clip(np.minimum(boxes[:, 2], gt[2]) - np.maximum(boxes[:, 0], gt[0]), 0, None)
    ih = np.clip(np.minimum(boxes[:, 3], gt[3]) - np.maximum(boxes[:, 1], gt[1]), 0, None)
    inter = iw * ih
    areas = (np.clip(boxes[:, 2] - boxes[:, 0], 0, None)
             * np.clip(boxes[:, 3] - boxes[:, 1], 0, None))
    union = areas + (gt[2] - gt[0]) * (gt[3] - gt[1]) - inter
    ious = np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
    return np.where((boxes == gt).all(1), 1.0, ious)


def clip_boxes(boxes: np.ndarray, image_size: tuple[int, int]) -> np.ndarray:
    """Each box's corners clipped into 0..W x 0..H (the order of the corners is kept: an
    inverted box stays inverted, and infeasible)."""
    height, width = image_size
    out = np.array(boxes, np.float64).reshape(-1, 4)
    out[:, 0::2] = out[:, 0::2].clip(0, width)
    out[:, 1::2] = out[:, 1::2].clip(0, height)
    return out


def feasible(boxes: np.ndarray, gt: np.ndarray, tau: float,
             image_size: tuple[int, int]) -> np.ndarray:
    """bool (N,): inside the image, x0 < x1 and y0 < y1, and IoU with gt >= tau (the GT box
    itself always is, even with zero area)."""
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    height, width = image_size
    inside = ((boxes[:, 0::2] >= 0).all(1) & (boxes[:, 0::2] <= width).all(1)
              & (boxes[:, 1::2] >= 0).all(1) & (boxes[:, 1::2] <= height).all(1))
    ordered = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    same = (boxes == np.asarray(gt, np.float64)).all(1)
    return inside & (same | (ordered & (box_ious(boxes, gt) >= tau)))


def project(boxes: np.ndarray, gt: np.ndarray, tau: float,
            image_size: tuple[int, int]) -> np.ndarray:
    """Feasible boxes (N, 4) near `boxes`: clipped into the image, then, where that is not
    feasible, moved along the straight line toward gt to the feasible point farthest from gt
    that bisection finds. gt itself is feasible and the segment between two boxes inside the
    image stays inside it, so the result is always feasible; a feasible box is returned as it is.
    (Not the Euclidean projection: the feasible set is not convex; this one keeps the step's
    direction and costs a few vectorised passes.)"""
    gt = np.asarray(gt, np.float64)
    clipped = clip_boxes(boxes, image_size)
    ok = feasible(clipped, gt, tau, image_size)
    if ok.all():
        return clipped
    offset = clipped - gt
    low, high = np.zeros(len(clipped)), np.ones(len(clipped))  # low: feasible, high: not
    for _ in range(BISECTION_STEPS):
        middle = (low + high) / 2
        inside = feasible(gt + middle[:, None] * offset, gt, tau, image_size)
        low, high = np.where(inside, middle, low), np.where(inside, high, middle)
    pulled = gt + low[:, None] * offset
    return np.where(ok[:, None], clipped, pulled)


def box_iou_gradients(boxes: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """d IoU(box, gt) / d box (N, 4), the constraint's normal; zero where a box does not overlap
    gt (the IoU is flat there)."""
    import torch

    b = torch.tensor(np.asarray(boxes, np.float64).reshape(-1, 4), requires_grad=True)
    g = torch.as_tensor(np.asarray(gt, np.float64))
    iw = (torch.minimum(b[:, 2], g[2]) - torch.maximum(b[:, 0], g[0])).clamp_min(0)
    ih = (torch.minimum(b[:, 3], g[3]) - torch.maximum(b[:, 1], g[1])).clamp_min(0)
    inter = iw * ih
    union = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1]) + (g[2] - g[0]) * (g[3] - g[1]) - inter
    (grad,) = torch.autograd.grad((inter / union.clamp_min(1e-12)).sum(), b)
    return grad.numpy()


def tangent_steps(boxes: np.ndarray, steps: np.ndarray, gt: np.ndarray, tau: float,
                  scale: np.ndarray) -> np.ndarray:
    """`steps` (N, 4) with, for boxes on the constraint's boundary, the part that would lower
    their IoU with gt taken out, so a box pressed against the boundary slides along it instead
    of being pulled back to where it was. In coordinates divided by `scale` (4,) (the GT box's
    size), where a step's components are comparable."""
    steps = np.array(steps, np.float64)
    on_boundary = box_ious(boxes, gt) < tau + ON_BOUNDARY
    if not on_boundary.any():
        return steps
    normals = box_iou_gradients(boxes[on_boundary], gt) * scale  # d IoU / d (box / scale)
    moves = steps[on_boundary] / scale
    along = (moves * normals).sum(1)
    norms = (normals ** 2).sum(1)
    outward = (along < 0) & (norms > 0)
    moves[outward] -= (along[outward] / norms[outward])[:, None] * normals[outward]
    steps[on_boundary] = moves * scale
    return steps
