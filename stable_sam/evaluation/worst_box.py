"""Worst-case boxes (issue 34): for one target, the box near the GT box that breaks a model most
(the lowest mask IoU with the target) and the one that serves it best, by gradient on the box.

Among the boxes inside the image whose IoU with the GT box is at least tau
(`stable_sam.evaluation.box_constraint`), `search_worst_boxes` looks for the one minimising, and
separately the one maximising, the IoU of the model's mask with the target:

- objective: a soft IoU, sigmoid((logit - threshold) / temperature) against the target's area
  fraction, in a frame the size of the model's low-res logits (the image scaled so its long side
  is 4 x the embedding's: 64 px for the demo model, 256 for a 1024 px SAM), differentiable in the
  box's (x0, y0, x1, y1) through the prompt encoder's positional encoding and the decoder
  (`stable_sam.evaluation.box_decoding`);
- steps: projected gradient ascent on direction x soft IoU (direction -1 to minimise, +1 to
  maximise). The gradient, in units of the GT box's size, is scaled so its largest coordinate
  moves alpha_t x the box's width or height (alpha_t falls linearly from `step_size` to a tenth of
  it): the step is the same share of the box whatever the logits' scale, so one step size serves
  every model. A box pressed against the constraint has the part of its step that would leave
  the feasible set taken out (it slides along the boundary), then every box is projected back
  into the feasible set (`box_constraint.project`);
- starts: the GT box and `starts - 1` noisy boxes (`noisy_box`, IoU with the GT box in
  [tau, 1)) drawn from `seed`; every start, direction and tau share one decoder call per step;
- scoring: every box visited is kept, and each is scored with the hard IoU of its mask
  thresholded at full size (the evaluation's rule, `metrics.mask_iou`). IoU-Min at a tau is the
  lowest over the boxes the minimising searches visited that are feasible for that tau, of any
  tau's search (so IoU-Min at 0.5 is never above IoU-Min at 0.7), IoU-Max the highest of the
  maximising searches'; the two directions are not pooled, so a search that runs the wrong way
  shows in its own result instead of being covered by the other. The lowest and highest, and
  the GT box (IoU-Base), are scored again through the evaluation's own entry (float32 boxes
  through the predictor's `transform`), so IoU-Base is the evaluation's GT-box IoU, and
  IoU-Min <= IoU-Base <= IoU-Max always (the GT box is every search's first box).

Deterministic for a seed (the time budget, when it cuts a search short, is the exception: the
result says `truncated`). No gradient reaches a weight: autograd is asked for the box's alone.

Cost, with the defaults (3 steps, 3 starts, taus 0.5 and 0.7: 12 boxes per decoder call, 3
calls with their backward and one without): one target of the demo model (256 px held-out
scenes) took 0.71 s median (plugins off) and 0.81 s (plugins on), 0.90 s at most over 20
targets, on this project's 2-core CPU VM with one torch thread while another process held about
one core (load average 2-3; two threads there spin against it and take ten times longer). The
defaults buy that time with depth: on 10 scenes x plugins on/off, IoU-Min at tau 0.5 averaged
0.22 with them, 0.05 with 10 steps x 6 starts (3.9 s a target) and 0.02 with 20 x 8 (10.5 s);
at tau 0.7 0.40, 0.37 and 0.35; IoU-Max 0.81, 0.84, 0.84. IoU-Min is an upper bound on the true
minimum, tighter the deeper the search: compare methods at the same settings.
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from typing import Sequence

import cv2
import numpy as np
import torch
from torch import Tensor

from stable_sam.data.prompts import gt_box as tight_box
from stable_sam.data.prompts import noisy_box
from stable_sam.evaluation.box_constraint import box_ious, feasible, project, tangent_steps
from stable_sam.evaluation.box_decoding import BoxDecoder

DEFAULT_TAUS = (0.5, 0.7)  # the constraint's IoU with the GT box: a loose and a careful annotator
MAX_STEPS = 1000
MAX_STARTS = 64
MINIMISE, MAXIMISE = -1.0, 1.0


@dataclass(frozen=True)
class WorstBoxConfig:
    """How hard one target is searched; every default is measured on the demo model (see the
    module docstring for the time)."""

    steps: int = 3  # gradient steps per start and direction: kept for the time (module
    # docstring); deeper searches find lower minima (--worst-box-steps / --worst-box-starts)
    starts: int = 3  # the GT box + 2 noisy boxes: more starts beat more steps at equal cost
    start_noise: float = 0.2  # noisy_box's scale for the noisy starts (the evaluation's is 0.4)
    step_size: float = 0.3  # first step: the largest coordinate moves 0.3 x the GT box's size
    temperature: float = 1.0  # of the soft mask: SAM's logits are already in units of ~1
    time_budget_s: float | None = 10.0  # per target; None: no limit (stops stepping, not scoring)

    def check(self) -> "WorstBoxConfig":
        """self, or ValueError naming the bad field and its value."""
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) \
                or not 0 <= self.steps <= MAX_STEPS:
            raise ValueError(f"steps must be an integer in 0..{MAX_STEPS}, is {self.steps!r}")
        if isinstance(self.starts, bool) or not isinstance(self.starts, int) \
                or not 1 <= self.starts <= MAX_STARTS:
            raise ValueError(f"starts must be an integer in 1..{MAX_STARTS}, is {self.starts!r}")
        for name in ("start_noise", "step_size", "temperature"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a finite number > 0, is {value!r}")
        budget = self.time_budget_s
        if budget is not None and not (isinstance(budget, (int, float)) and math.isfinite(budget)
                                       and budget > 0):
            raise ValueError(f"time_budget_s must be None or a finite number > 0, is {budget!r}")
        return self

    def to_json(self) -> dict:
        return asdict(self)


def check_taus(taus: Sequence[float]) -> tuple[float, ...]:
    """The taus as floats, each in (0, 1) and none twice; ValueError otherwise."""
    taus = tuple(float(t) for t in taus)
    if not taus:
        raise ValueError("give at least one tau")
    bad = [t for t in taus if not 0 < t < 1]
    if bad:
        raise ValueError(f"every tau must be in (0, 1) (the IoU with the GT box), got {bad}")
    if len(set(taus)) != len(taus):
        raise ValueError(f"a tau is given twice: {list(taus)}")
    return taus


def tau_key(tau: float) -> str:
    """The JSON key of a tau ("0.5")."""
    return f"{tau:g}"


def area_fraction(target: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """The target's foreground share of each pixel of the image scaled to `size` (h, w)."""
    if tuple(size) == target.shape:
        return target.astype(np.float32)
    return cv2.resize(target.astype(np.float32), (size[1], size[0]), interpolation=cv2.INTER_AREA)


def soft_ious(logits: Tensor, target: Tensor, threshold: float, temperature: float) -> Tensor:
    """Soft IoU (N,) of sigmoid((logits - threshold) / temperature) (N, h, w) with the target's
    area fraction (h, w); the hard IoU in the limit of temperature -> 0."""
    p = torch.sigmoid((logits - threshold) / temperature)
    inter = (p * target).sum((-2, -1))
    union = (p + target - p * target).sum((-2, -1))
    return inter / union.clamp_min(1e-6)


def hard_ious(masks: Tensor, target: Tensor) -> Tensor:
    """IoU (N,) of bool masks (N, h, w) with a bool target (h, w); 1 where both are empty
    (`metrics.mask_iou`'s rule)."""
    inter = (masks & target).sum((-2, -1)).double()
    union = (masks | target).sum((-2, -1)).double()
    return torch.where(union > 0, inter / union.clamp_min(1), torch.ones_like(union))


def _starts(gt: np.ndarray, taus: Sequence[float], config: WorstBoxConfig,
            image_size: tuple[int, int], rng: np.random.Generator):
    """The search's rows: (boxes (R, 4), tau index (R,), direction (R,)); per tau the GT box and
    config.starts - 1 noisy boxes, each searched both ways."""
    boxes, tau_index, direction = [], [], []
    for i, tau in enumerate(taus):
        starts = [gt] + [noisy_box(gt, rng, config.start_noise, (tau, 1.0), image_size)
                         for _ in range(config.starts - 1)]
        starts = project(np.stack(starts), gt, tau, image_size)  # noisy_box's fallback may miss
        for sign in (MINIMISE, MAXIMISE):
            boxes.append(starts)
            tau_index += [i] * len(starts)
            direction += [sign] * len(starts)
    return np.concatenate(boxes), np.array(tau_index), np.array(direction)


def _step(boxes, grad, alpha, extent, gt, taus, tau_index, image_size) -> np.ndarray:
    """One projected step of every row: the gradient in units of the GT box's size, scaled so
    its largest coordinate moves alpha x the box's size, slid along the constraint where a box
    is pressed against it, then projected back into the feasible set."""
    scaled = grad * extent  # d objective / d (box / extent)
    top = np.abs(scaled).max(1, keepdims=True)
    move = np.divide(scaled, top, out=np.zeros_like(scaled), where=top > 0) * alpha * extent
    out = np.empty_like(boxes)
    for i, tau in enumerate(taus):
        rows = tau_index == i
        move[rows] = tangent_steps(boxes[rows], move[rows], gt, tau, extent)
        out[rows] = project(boxes[rows] + move[rows], gt, tau, image_size)
    return out


def search_worst_boxes(decoder: BoxDecoder, target: np.ndarray, gt: np.ndarray | None = None,
                       taus: Sequence[float] = DEFAULT_TAUS,
                       config: WorstBoxConfig = WorstBoxConfig(), seed=0,
                       score_size: tuple[int, int] | None = None) -> list[dict]:
    """The worst and best box near the GT box for one target, for each tau (module docstring).

    Arguments:
      decoder: a BoxDecoder on the target's image (`PredictorBoxDecoder(predictor, use_plugins)`
        after `predictor.set_image`).
      target: bool HxW mask at the image's size (or at score_size, with gt given), non-empty.
      gt: the GT box (4,) xyxy; default the target's tight box (`data.prompts.gt_box`, the
        evaluation's "box" prompt).
      seed: an int, a SeedSequence or a numpy Generator for the noisy starts.
      score_size: (h, w) the masks are scored at; default the image's size (the evaluation's
        rule); the demo server passes a smaller one for very large uploads.

    Returns one JSON-ready record per tau, in order: {"tau", "iou_min", "iou_base", "iou_max"
    (fractions), "box_min", "box_max" ([x0, y0, x1, y1]), "box_iou_min", "box_iou_max" (their
    IoU with the GT box), "visited" (feasible boxes scored for this tau), "steps" (done),
    "truncated" (the time budget stopped it)}.
    """
    config.check()
    taus = check_taus(taus)
    target = np.asarray(target, bool)
    image_size = tuple(decoder.image_size)
    score_size = image_size if score_size is None else tuple(score_size)
    if target.shape not in (image_size, score_size):
        raise ValueError(f"target is {target.shape} but the decoder's image is {image_size}"
                         + (f" and the scoring size {score_size}" if score_size != image_size
                            else ""))
    if gt is None and target.shape != image_size:
        raise ValueError("give the GT box when the target is not at the image's size")
    gt = tight_box(target).astype(np.float64) if gt is None else np.asarray(gt, np.float64)
    rng = np.random.default_rng(seed)
    started = time.perf_counter()
    device = getattr(decoder, "device", None) or torch.device("cpu")
    soft_target = torch.as_tensor(area_fraction(target, decoder.low_res_size), device=device)
    score_target = torch.as_tensor(target if target.shape == score_size
                                   else area_fraction(target, score_size) > 0.5, device=device)
    width, height = gt[2] - gt[0], gt[3] - gt[1]
    degenerate = width <= 0 or height <= 0  # a one-pixel-wide target: only its own box is feasible
    boxes, tau_index, direction = _starts(gt, taus, config, image_size, rng) if not degenerate \
        else (gt[None], np.zeros(1, int), np.full(1, MINIMISE))
    steps = 0 if degenerate else config.steps
    extent = np.array([width, height, width, height])
    visited_boxes, visited_ious, visited_directions = [], [], []
    truncated, done = False, 0
    with torch.inference_mode(False), torch.enable_grad():
        for step in range(steps + 1):
            box_tensor = torch.tensor(boxes, dtype=torch.float32, device=device,
                                      requires_grad=step < steps)
            low_res = decoder.low_res(box_tensor)
            with torch.no_grad():
                hard = decoder.resize(low_res.detach(), score_size) > decoder.mask_threshold
                visited_ious.append(hard_ious(hard, score_target).cpu().numpy())
            visited_boxes.append(boxes)
            visited_directions.append(direction)
            out_of_time = (config.time_budget_s is not None
                           and time.perf_counter() - started > config.time_budget_s)
            if step == steps or out_of_time:
                truncated = out_of_time and step < steps
                break
            soft = soft_ious(decoder.resize(low_res, decoder.low_res_size), soft_target,
                             decoder.mask_threshold, config.temperature)
            # ascent on direction x soft IoU: down for the minimising rows, up for the others
            objective = (soft * torch.as_tensor(direction, dtype=soft.dtype,
                                                device=soft.device)).sum()
            (grad,) = torch.autograd.grad(objective, box_tensor)  # the box's gradient alone
            alpha = config.step_size * (1 - 0.9 * step / max(1, steps - 1))
            boxes = _step(boxes, grad.double().cpu().numpy(), alpha, extent, gt, taus,
                          tau_index, image_size)
            done = step + 1
    visited = (np.concatenate(visited_boxes), np.concatenate(visited_ious),
               np.concatenate(visited_directions))
    return _records(decoder, gt, taus, visited, score_target.cpu().numpy(), score_size,
                    image_size, done, truncated)


def _records(decoder, gt, taus, visited, target, score_size, image_size, steps,
             truncated) -> list[dict]:
    """Per tau the lowest box the minimising searches visited and the highest the maximising
    ones did (any tau's search: a box feasible at 0.7 is feasible at 0.5), scored again with the
    GT box through the decoder's exact path. The two directions' boxes are not pooled, so a
    search that runs the wrong way shows in its result instead of being covered by the other."""
    boxes, ious, directions = visited
    picks = []
    for tau in taus:
        ok = feasible(boxes, gt, tau, image_size)
        low = np.flatnonzero(ok & (directions == MINIMISE))
        high = np.flatnonzero(ok & (directions == MAXIMISE))
        low, high = (low, high) if len(high) else (low, low)  # degenerate: the GT box alone
        picks.append((int(ok.sum()), low[np.argmin(ious[low])], high[np.argmax(ious[high])]))
    chosen = np.stack([gt] + [boxes[i] for _, low, high in picks for i in (low, high)])
    masks = decoder.masks(chosen, score_size)
    exact = [float(hard_ious(torch.as_tensor(m)[None], torch.as_tensor(target))[0])
             for m in masks]
    base, records = exact[0], []
    for k, (tau, (count, _, _)) in enumerate(zip(taus, picks)):
        low, high = exact[1 + 2 * k], exact[2 + 2 * k]
        box_low, box_high = chosen[1 + 2 * k], chosen[2 + 2 * k]
        if base < low:  # rescoring moved a hair: the GT box is feasible and scores lower
            low, box_low = base, gt
        if base > high:
            high, box_high = base, gt
        records.append({
            "tau": tau, "iou_min": low, "iou_base": base, "iou_max": high,
            "box_min": [float(v) for v in box_low], "box_max": [float(v) for v in box_high],
            "box_iou_min": float(box_ious(box_low, gt)[0]),
            "box_iou_max": float(box_ious(box_high, gt)[0]),
            "visited": count, "steps": int(steps), "truncated": bool(truncated)})
    return records
