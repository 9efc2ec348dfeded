"""Trains the demo's base SAM on clean prompts only, as SAM was: the tight GT box or several
positive points (3, 5 or 10) of one visible object per scene, never a loose box.

Each step encodes a few images and decodes several targets from each embedding, drawn uniformly
from every target of the scene (`scene_targets`: each object above a minimum size and each
part/whole pair's whole), so the encoder's cost is shared and the base learns to follow the
prompt to any object, not to find the named one. Loss: sigmoid BCE + dice on the mask at the
input resolution, plus SAM's IoU-prediction MSE so that predicted scores mean something.
The learning rate warms up for 5 % of the steps, then follows a cosine down to
`min_lr_ratio` of its peak, so the last third still learns.

Three knobs add the rest of SAM's own recipe (SAM paper, appendix A), each off by default so
that the default run is the published one bit for bit: `box_jitter` (SAM's small noise on the
training boxes), `click_share` (steps of one click decoded by the three multimask tokens under
SAM's ambiguity loss, the minimum over them) and `correction_rounds` (SAM's iterative training:
clicks from the error region with the previous logits as a mask prompt, same embeddings).
The prompts are in `base_prompts.py`.

One thread:  `.venv/bin/python -c "from stable_sam.reproduction.base_sam import *;
train_base_sam(BaseTrainConfig(), 'base.safetensors')"` (or `stable-sam reproduce`).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import math
import time

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from ..data._io import write_atomic
from ..data.prompts import gt_box, positive_points
from ..data.scenes import TRAIN_SEED, make_scene, scene_targets
from ..families.sam import StableSam
from .base_prompts import correction_clicks, jitter_boxes
from .denormals import denormals_flushed
from ..families.demo.build import (DEMO_IMAGE_SIZE, TRAINED_ARCHITECTURE, build_demo_sam,
                                   save_sam_weights)

CLEAN_KINDS = ("box", "points3", "points5", "points10")
CHECKPOINT_EVERY = 100  # steps between the stage's checkpoints (a stop also writes one)
MIN_OBJECT_AREA = 150  # smaller visible objects (most clutter) are not used as targets


@dataclass
class BaseTrainConfig:
    num_scenes: int = 3000  # training scenes (seed TRAIN_SEED); the plugins train on the same
    # 10000 steps x 16 targets (0.26 s each with 2 threads): 900 steps gave 45.5 GT-box mIoU
    # and 1800 gave 51.1 on the validation seed, so the base is still learning at these lengths
    steps: int = 10000
    images_per_step: int = 4
    targets_per_image: int = 4  # decoded from one embedding: the encoder's cost is shared
    # peak, after the warm-up: 2e-3 gave 45.5 GT-box mIoU where 1e-3 gave 41.2 (900 steps,
    # every target of 60 VAL_SEED version-2 scenes)
    lr: float = 2e-3
    min_lr_ratio: float = 0.1  # the cosine ends at this share of the peak, not at ~0
    seed: int = 0
    threads: int = 1
    architecture: str = TRAINED_ARCHITECTURE  # the demo encoder (families.demo.build.ENCODERS)
    scene_version: int = 2  # the scene generator (data.scenes.VERSIONS)
    # share of steps prompted by the GT box; the rest draw 3, 5 or 10 points uniformly
    box_share: float = 0.25
    # > 0: clip the gradients' global norm to this before each step. lr 4e-3 collapsed to one
    # mask for every prompt with and without it; at 2e-3 it gave 46.1 against 45.5 (900 steps):
    # kept as insurance for the long run
    grad_clip: float = 1.0
    # SAM's recipe, each off by default (today's published recipe):
    # > 0: each coordinate of a training box moves by Gaussian noise of std box_jitter x the
    # box's side, the move capped at base_prompts.BOX_JITTER_MAX_PX (SAM: 0.1 and 20 px)
    box_jitter: float = 0.0
    # share of steps prompted by ONE positive click, decoded by SAM's three multimask tokens
    # under its ambiguity loss (issue 31, 2000 steps: with lr 1e-3 and 0.25, 59.5 GT-box mIoU
    # and the plugin site alive, 46.3 lost without it; with lr 2e-3 one constant mask);
    # box_share + click_share <= 1, the rest are 3, 5 or 10 points
    click_share: float = 0.0
    # SAM's iterative training: after the first prediction, this many rounds that each add a
    # click from the larger error region and feed the previous low-res logits as the mask
    # prompt (SAM: 8 + 2 rounds); the step's loss is the mean over its 1 + rounds predictions
    correction_rounds: int = 0

    def __post_init__(self):
        if self.box_jitter < 0:
            raise ValueError(f"box_jitter must be >= 0, is {self.box_jitter}")
        if not 0 <= self.click_share <= 1 - self.box_share:
            raise ValueError(f"click_share must be in [0, 1 - box_share = "
                             f"{1 - self.box_share:g}], is {self.click_share}")
        if self.correction_rounds < 0:
            raise ValueError(f"correction_rounds must be >= 0, is {self.correction_rounds}")


# fields added after checkpoints were first written; each default is the behaviour of the code
# before it, so a checkpoint without them resumes as if it had them at their defaults
ADDED_FIELDS = ("box_jitter", "click_share", "correction_rounds")


def lr_at(step: int, config: BaseTrainConfig) -> float:
    """Linear warm-up over 5 % of the steps, then a cosine from lr to min_lr_ratio * lr."""
    warmup = max(1, round(0.05 * config.steps))
    if step < warmup:
        return config.lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, config.steps - warmup)
    floor = config.min_lr_ratio * config.lr
    return floor + (config.lr - floor) * 0.5 * (1 + math.cos(math.pi * progress))


def _pick_targets(targets: list, count: int, rng: np.random.Generator) -> list:
    """`count` of the scene's target masks, uniformly (with replacement when it has fewer)."""
    return [targets[int(k)] for k in rng.choice(len(targets), count,
                                                replace=len(targets) < count)]


def _pick_kind(config: BaseTrainConfig, rng: np.random.Generator) -> str:
    """The step's prompt kind: "box" (box_share of the steps), "click" (click_share) or 3, 5
    or 10 points uniformly. One uniform draw picks among them, so click_share 0 draws what the
    recipe always drew."""
    draw = rng.uniform()
    if draw < config.box_share:
        return "box"
    if draw < config.box_share + config.click_share:
        return "click"
    points = [k for k in CLEAN_KINDS if k != "box"]
    return points[int(rng.integers(len(points)))]


def _prompt_tensors(kind: str, masks: list, rng: np.random.Generator, box_jitter: float = 0.0):
    """(points (coords Bx n x2, labels Bx n) or None, boxes Bx4 or None) in the masks' frame:
    the tight box (jittered when box_jitter > 0), or n positive points (one for "click")."""
    if kind == "box":
        boxes = np.stack([gt_box(m) for m in masks])
        if box_jitter > 0:
            boxes = jitter_boxes(boxes, masks[0].shape, box_jitter, rng)
        return None, torch.as_tensor(boxes, dtype=torch.float32)
    n = 1 if kind == "click" else int(kind[len("points"):])
    coords = np.stack([positive_points(m, n, rng)[0] for m in masks]).astype(np.float32)
    return (torch.as_tensor(coords), torch.ones(coords.shape[:2], dtype=torch.int64)), None


def _dice(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    prob = logits.sigmoid().flatten(1)
    target = target.flatten(1)
    return (1 - (2 * (prob * target).sum(1) + 1) / (prob.sum(1) + target.sum(1) + 1)).mean()


@torch.no_grad()
def _actual_iou(logits: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    """IoU of each thresholded output with its target: logits NxMxHxW, gt Nx1xHxW -> NxM."""
    pred, target = logits > 0, gt > 0
    return (pred & target).flatten(2).sum(2) / ((pred | target).flatten(2).sum(2) + 1)


def _mask_loss(logits: torch.Tensor, iou_pred: torch.Tensor, gt: torch.Tensor):
    """The single-mask loss: BCE + dice + the IoU head's MSE. logits Nx1xHxW at the input
    resolution, iou_pred Nx1, gt Nx1xHxW; returns (loss, IoU N)."""
    iou = _actual_iou(logits, gt)[:, 0]
    loss = (F.binary_cross_entropy_with_logits(logits, gt) + _dice(logits, gt)
            + F.mse_loss(iou_pred[:, 0], iou.float()))
    return loss, iou


def _ambiguity_loss(logits: torch.Tensor, iou_pred: torch.Tensor, gt: torch.Tensor):
    """SAM's loss for an ambiguous prompt: of the M outputs (its three multimask tokens) only
    the one with the lowest BCE + dice backpropagates its mask loss, per prompt; the IoU head
    learns every output's actual IoU. logits NxMxHxW, iou_pred NxM, gt Nx1xHxW; returns
    (loss, IoU N of each prompt's kept output)."""
    target = gt.expand_as(logits)
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none").flatten(2).mean(2)
    prob, flat = logits.sigmoid().flatten(2), target.flatten(2)
    dice = 1 - (2 * (prob * flat).sum(2) + 1) / (prob.sum(2) + flat.sum(2) + 1)  # N x M
    per_output = bce + dice
    best = per_output.detach().argmin(1, keepdim=True)  # N x 1
    iou = _actual_iou(logits, gt)  # N x M
    loss = per_output.gather(1, best).mean() + F.mse_loss(iou_pred, iou.float())
    return loss, iou.gather(1, best)[:, 0]


def _decode(model, embeddings, points, boxes, mask_input, multimask: bool):
    """The base's own decoder (no plugins) on prompts in the input frame; mask_input is None or
    low-res logits Nx1x4hx4w (the decoder's own output size). Returns (low_res NxMx4hx4w,
    iou_pred NxM), M = 3 with multimask, else 1."""
    sparse, dense = model.prompt_encoder(points=points, boxes=boxes, masks=mask_input)
    return model.decode(embeddings, model.prompt_encoder.get_dense_pe(), sparse, dense,
                        multimask_output=multimask, use_plugins=False)


def _with_click(points, clicks):
    """The round's points: the previous ones (None for a box step) and one click per target."""
    clicks = tuple(torch.as_tensor(c) for c in clicks)
    if points is None:
        return clicks
    return torch.cat([points[0], clicks[0]], 1), torch.cat([points[1], clicks[1]], 1)


def _step_loss(model, embeddings, points, boxes, gt, multimask: bool, rounds: int,
               rng: np.random.Generator):
    """The step's loss and the first prediction's IoU with each target (N). With `rounds`, SAM's
    iterative training on the same embeddings: each round adds a correction click from the
    previous prediction's error (`base_prompts.correction_clicks`) and feeds its low-res logits,
    detached, as the mask prompt; after a multimask round the output with the highest predicted
    IoU goes on, as in SAM, and the rounds after it (two or more prompts) decode one mask. The
    loss is the mean over the 1 + rounds predictions."""
    low_res, iou_pred = _decode(model, embeddings, points, boxes, None, multimask)
    logits = F.interpolate(low_res, size=gt.shape[-2:], mode="bilinear", align_corners=False)
    loss, first_iou = (_ambiguity_loss if multimask else _mask_loss)(logits, iou_pred, gt)
    losses = [loss]
    rows = torch.arange(len(gt))
    for _ in range(rounds):
        kept = iou_pred.detach().argmax(1)  # always 0 for a single mask
        previous = low_res[rows, kept][:, None].detach()
        pred = (logits[rows, kept] > 0).numpy()
        points = _with_click(points, correction_clicks(pred, gt[:, 0].numpy() > 0, rng))
        low_res, iou_pred = _decode(model, embeddings, points, boxes, previous, False)
        logits = F.interpolate(low_res, size=gt.shape[-2:], mode="bilinear",
                               align_corners=False)
        losses.append(_mask_loss(logits, iou_pred, gt)[0])
    return (losses[0] if len(losses) == 1 else torch.stack(losses).mean()), first_iou


def _batch(targets, images, config: BaseTrainConfig, rng: np.random.Generator):
    """(images B x 3 x H x W float, masks list of B*K H x W bool): K targets of each image, in
    image-major order to match repeat_interleave of the embeddings."""
    picks = rng.choice(len(images), config.images_per_step,
                       replace=len(images) < config.images_per_step)
    flips = rng.uniform(size=config.images_per_step) < 0.5
    batch, masks = [], []
    for s, flip in zip(picks, flips):
        image = torch.from_numpy(images[s]).permute(2, 0, 1).float()
        if flip:  # horizontal flip: the only augmentation, cheap and label-exact
            image = image.flip(-1)
        batch.append(image)
        for mask in _pick_targets(targets[s], config.targets_per_image, rng):
            masks.append(np.ascontiguousarray(mask[:, ::-1] if flip else mask))
    return torch.stack(batch), masks


class BaseCheckpointError(ValueError):
    """A base-stage checkpoint that cannot be resumed (damaged, or of other settings)."""


def _save_checkpoint(path: Path, step: int, sam, optimizer, rng, losses, ious,
                     config: BaseTrainConfig) -> None:
    """Everything the loop needs to go on from `step` as if it had never stopped: weights,
    AdamW's moments, both generators and the loss history. Plain tensors and Python values
    only, so it loads with weights_only=True."""
    state = {"step": step, "config": asdict(config), "sam": sam.state_dict(),
             "optimizer": optimizer.state_dict(), "rng": rng.bit_generator.state,
             "torch_rng": torch.get_rng_state(), "losses": losses, "ious": ious}
    write_atomic(path, lambda tmp: torch.save(state, tmp))


def _load_checkpoint(path: Path, config: BaseTrainConfig) -> dict:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated or foreign: say which file, not a pickle traceback
        raise BaseCheckpointError(f"base SAM checkpoint {str(path)!r} could not be read "
                                  f"({type(exc).__name__}); delete it to train the base again"
                                  ) from None
    saved = state.get("config") if isinstance(state, dict) else None
    if isinstance(saved, dict):  # written before ADDED_FIELDS: their defaults are what it ran
        saved = {**{k: getattr(BaseTrainConfig, k) for k in ADDED_FIELDS}, **saved}
    if saved != asdict(config):
        raise BaseCheckpointError(f"base SAM checkpoint {str(path)!r} was written with other "
                                  "settings; delete it to train the base again")
    return state


def train_base_sam(config: BaseTrainConfig, out_path, progress: bool = True,
                   checkpoint_path=None, stop=None) -> dict:
    """Trains the base SAM and writes it to `out_path` (float16 safetensors); returns a summary.

    With `checkpoint_path`, the stage writes its state there every CHECKPOINT_EVERY steps and
    when `stop.requested` turns true (checked after each step: `training.signals.StopRequest`),
    then returns with "stopped": True; a later call with the same settings continues from that
    checkpoint and ends with the same weights as an uninterrupted run (one thread). The
    checkpoint is removed once the weights are written."""
    with denormals_flushed():  # 2x faster steps once the weights are trained (denormals.py)
        return _train(config, out_path, progress, checkpoint_path, stop)


def _train(config: BaseTrainConfig, out_path, progress: bool, checkpoint_path, stop) -> dict:
    checkpoint_path = Path(checkpoint_path) if checkpoint_path is not None else None
    resumed = (_load_checkpoint(checkpoint_path, config)
               if checkpoint_path is not None and checkpoint_path.is_file() else None)
    torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    images, targets = [], []
    for i in tqdm(range(config.num_scenes), desc="scenes", disable=not progress):
        scene = make_scene(TRAIN_SEED, i, DEMO_IMAGE_SIZE, version=config.scene_version)
        images.append(scene.image)
        # a scene whose objects are all small still trains on its largest one
        targets.append(scene_targets(scene, MIN_OBJECT_AREA)
                       or [max(scene.masks, key=lambda m: m.sum())])
    sam = build_demo_sam(config.architecture)
    model = StableSam(sam, None, model_type="demo")  # its decode() batches one prompt per image
    sam.requires_grad_(True)  # StableSam freezes SAM; here SAM is what trains
    params = [p for n, p in model.named_parameters() if not n.startswith("plugins")]
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=1e-4)
    losses, ious, first = [], [], 0
    if resumed is not None:
        sam.load_state_dict(resumed["sam"], strict=True)
        optimizer.load_state_dict(resumed["optimizer"])
        rng.bit_generator.state = resumed["rng"]
        torch.set_rng_state(resumed["torch_rng"])
        losses, ious, first = list(resumed["losses"]), list(resumed["ious"]), resumed["step"]
    started = time.perf_counter()
    bar = tqdm(range(first, config.steps), desc="base SAM", disable=not progress,
               initial=first, total=config.steps)
    for step in bar:
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, config)
        batch, masks = _batch(targets, images, config, rng)
        kind = _pick_kind(config, rng)
        points, boxes = _prompt_tensors(kind, masks, rng, config.box_jitter)
        gt = torch.as_tensor(np.stack(masks)[:, None], dtype=torch.float32)
        embeddings = model.image_encoder(model.preprocess(batch))
        embeddings = embeddings.repeat_interleave(config.targets_per_image, dim=0)
        loss, iou = _step_loss(model, embeddings, points, boxes, gt, kind == "click",
                               config.correction_rounds, rng)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if config.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(params, config.grad_clip)
        optimizer.step()
        losses.append(float(loss.detach()))
        ious.append(float(iou.mean()))
        if step % 20 == 0:
            bar.set_postfix(loss=f"{np.mean(losses[-50:]):.3f}",
                            target_iou=f"{np.mean(ious[-50:]):.3f}")
        done = step + 1
        stopping = stop is not None and stop.requested and done < config.steps
        if checkpoint_path is not None and (stopping or done % CHECKPOINT_EVERY == 0):
            _save_checkpoint(checkpoint_path, done, sam, optimizer, rng, losses, ious, config)
        if stopping:
            return {"stopped": True, "step": done, "checkpoint": str(checkpoint_path)}
    path = save_sam_weights(sam, Path(out_path))
    if checkpoint_path is not None:
        checkpoint_path.unlink(missing_ok=True)
    return {"stopped": False, "path": str(path), "final_loss": float(np.mean(losses[-100:])),
            "steps": config.steps,
            "final_target_iou": float(np.mean(ious[-100:])),
            "seconds": time.perf_counter() - started}
