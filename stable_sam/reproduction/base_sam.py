"""Trains the demo's base SAM on clean prompts only, as SAM was: the tight GT box or several
positive points (3, 5 or 10) of one visible object per scene, never a loose box or one click.

Each step encodes a few images and decodes several targets from each embedding (the named target
and other objects of the scene), so the encoder's cost is shared. Loss: sigmoid BCE + dice on the
mask at the input resolution, plus SAM's IoU-prediction MSE so that predicted scores mean
something.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from ..data.prompts import gt_box, positive_points
from ..data.scenes import TRAIN_SEED, make_scene
from ..families.sam import StableSam
from ..families.demo.build import DEMO_IMAGE_SIZE, build_demo_sam, save_sam_weights

CLEAN_KINDS = ("box", "points3", "points5", "points10")
MIN_OBJECT_AREA = 150  # smaller visible objects (most clutter) are not used as targets


@dataclass
class BaseTrainConfig:
    num_scenes: int = 3000  # training scenes (seed TRAIN_SEED); the plugins train on the same
    steps: int = 3000
    images_per_step: int = 4
    targets_per_image: int = 4  # decoded from one embedding: the encoder's cost is shared
    lr: float = 1e-3
    seed: int = 0
    threads: int = 1


def _object_indices(scene) -> list:
    return [i for i, m in enumerate(scene.masks) if i != scene.target and m.sum() >= MIN_OBJECT_AREA]


def _pick_targets(scene, count: int, rng: np.random.Generator) -> list:
    """The named target (the occluded, touched object the evaluation asks for) and count - 1
    other objects: a uniform pick over every object would be mostly easy clutter."""
    others = _object_indices(scene)
    picks = [scene.target]
    if others:
        picks += [others[int(k)] for k in rng.integers(len(others), size=count - 1)]
    return picks + [scene.target] * (count - len(picks))


def _prompt_tensors(kind: str, masks: list, rng: np.random.Generator):
    if kind == "box":
        boxes = torch.as_tensor(np.stack([gt_box(m) for m in masks]), dtype=torch.float32)
        return None, boxes
    n = int(kind[len("points"):])
    coords = np.stack([positive_points(m, n, rng)[0] for m in masks]).astype(np.float32)
    return (torch.as_tensor(coords), torch.ones(coords.shape[:2], dtype=torch.int64)), None


def _dice(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    prob = logits.sigmoid().flatten(1)
    target = target.flatten(1)
    return (1 - (2 * (prob * target).sum(1) + 1) / (prob.sum(1) + target.sum(1) + 1)).mean()


def _batch(scenes, images, config: BaseTrainConfig, rng: np.random.Generator):
    """(images B x 3 x H x W float, masks list of B*K H x W bool): K targets of each image, in
    image-major order to match repeat_interleave of the embeddings."""
    picks = rng.choice(len(scenes), config.images_per_step,
                       replace=len(scenes) < config.images_per_step)
    flips = rng.uniform(size=config.images_per_step) < 0.5
    batch, masks = [], []
    for s, flip in zip(picks, flips):
        image = torch.from_numpy(images[s]).permute(2, 0, 1).float()
        if flip:  # horizontal flip: the only augmentation, cheap and label-exact
            image = image.flip(-1)
        batch.append(image)
        for i in _pick_targets(scenes[s], config.targets_per_image, rng):
            mask = scenes[s].masks[i]
            masks.append(np.ascontiguousarray(mask[:, ::-1] if flip else mask))
    return torch.stack(batch), masks


def train_base_sam(config: BaseTrainConfig, out_path, progress: bool = True) -> dict:
    """Trains the base SAM and writes it to `out_path` (float16 safetensors); returns a summary."""
    torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    scenes = [make_scene(TRAIN_SEED, i, DEMO_IMAGE_SIZE)
              for i in tqdm(range(config.num_scenes), desc="scenes", disable=not progress)]
    images = [s.image for s in scenes]
    sam = build_demo_sam()
    model = StableSam(sam, None, model_type="demo")  # its decode() batches one prompt per image
    sam.requires_grad_(True)  # StableSam freezes SAM; here SAM is what trains
    params = [p for n, p in model.named_parameters() if not n.startswith("plugins")]
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=1e-4)
    # about 5 % warm-up; the half step keeps OneCycleLR's phase ends off whole steps, where a
    # warm-up of exactly one step (steps=20) divides by zero
    warmup = round(0.05 * config.steps) + 0.5
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, config.lr, total_steps=config.steps,
                                                   pct_start=warmup / config.steps)
    bar = tqdm(range(config.steps), desc="base SAM", disable=not progress)
    losses, ious = [], []
    for step in bar:
        batch, masks = _batch(scenes, images, config, rng)
        kind = CLEAN_KINDS[int(rng.integers(len(CLEAN_KINDS)))]
        points, boxes = _prompt_tensors(kind, masks, rng)
        gt = torch.as_tensor(np.stack(masks)[:, None], dtype=torch.float32)
        embeddings = model.image_encoder(model.preprocess(batch))
        embeddings = embeddings.repeat_interleave(config.targets_per_image, dim=0)
        sparse, dense = model.prompt_encoder(points=points, boxes=boxes, masks=None)
        low_res, iou_pred = model.decode(embeddings, model.prompt_encoder.get_dense_pe(), sparse,
                                         dense, multimask_output=False, use_plugins=False)
        logits = F.interpolate(low_res, size=gt.shape[-2:], mode="bilinear", align_corners=False)
        with torch.no_grad():
            pred = logits > 0
            iou = (pred & (gt > 0)).flatten(1).sum(1) / ((pred | (gt > 0)).flatten(1).sum(1) + 1)
        loss = (F.binary_cross_entropy_with_logits(logits, gt) + _dice(logits, gt)
                + F.mse_loss(iou_pred[:, 0], iou.float()))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        losses.append(float(loss.detach()))
        ious.append(float(iou[::config.targets_per_image].mean()))  # the named targets
        if step % 20 == 0:
            bar.set_postfix(loss=f"{np.mean(losses[-50:]):.3f}",
                            target_iou=f"{np.mean(ious[-50:]):.3f}")
    path = save_sam_weights(sam, Path(out_path))
    return {"path": str(path), "final_loss": float(np.mean(losses[-100:])), "steps": config.steps,
            "final_target_iou": float(np.mean(ious[-100:]))}
