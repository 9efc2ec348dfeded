"""Trains the demo's base SAM on clean prompts only, as SAM was: the tight GT box or several
positive points (3, 5 or 10) of one visible object per scene, never a loose box or one click.

Every object of a training scene is a target (not just the one the HQSeg file names), which
gives the small model more supervision from the same scenes. Loss: sigmoid BCE + dice on the
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
from ..modeling import StableSam
from .demo_model import DEMO_IMAGE_SIZE, build_demo_sam, save_sam_weights

CLEAN_KINDS = ("box", "points3", "points5", "points10")
MIN_OBJECT_AREA = 64  # smaller visible objects are not used as targets


@dataclass
class BaseTrainConfig:
    num_scenes: int = 1200  # training scenes (seed TRAIN_SEED); the plugins train on the same
    steps: int = 1500
    batch_size: int = 8
    lr: float = 1e-3
    seed: int = 0
    threads: int = 1


def _targets(scenes):
    return [(s, i) for s, scene in enumerate(scenes) for i, m in enumerate(scene.masks)
            if m.sum() >= MIN_OBJECT_AREA]


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


def train_base_sam(config: BaseTrainConfig, out_path, progress: bool = True) -> dict:
    """Trains the base SAM and writes it to `out_path` (float16 safetensors); returns a summary."""
    torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    scenes = [make_scene(TRAIN_SEED, i, DEMO_IMAGE_SIZE)
              for i in tqdm(range(config.num_scenes), desc="scenes", disable=not progress)]
    targets = _targets(scenes)
    images = torch.as_tensor(np.stack([s.image for s in scenes])).permute(0, 3, 1, 2).float()
    sam = build_demo_sam()
    model = StableSam(sam, None, model_type="demo")  # its decode() batches one prompt per image
    sam.requires_grad_(True)  # StableSam freezes SAM; here SAM is what trains
    params = [p for n, p in model.named_parameters() if not n.startswith("plugins")]
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, config.lr, total_steps=config.steps,
                                                   pct_start=0.05)
    bar = tqdm(range(config.steps), desc="base SAM", disable=not progress)
    losses = []
    for step in bar:
        picks = rng.choice(len(targets), config.batch_size, replace=False)
        flips = rng.uniform(size=config.batch_size) < 0.5
        masks, batch = [], []
        for (s, i), flip in zip((targets[p] for p in picks), flips):
            image, mask = images[s], scenes[s].masks[i]
            if flip:  # horizontal flip: the only augmentation, cheap and label-exact
                image, mask = image.flip(-1), mask[:, ::-1]
            batch.append(image)
            masks.append(np.ascontiguousarray(mask))
        kind = CLEAN_KINDS[int(rng.integers(len(CLEAN_KINDS)))]
        points, boxes = _prompt_tensors(kind, masks, rng)
        gt = torch.as_tensor(np.stack(masks)[:, None], dtype=torch.float32)
        embeddings = model.image_encoder(model.preprocess(torch.stack(batch)))
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
        losses.append(float(loss))
        if step % 20 == 0:
            bar.set_postfix(loss=f"{np.mean(losses[-50:]):.3f}")
    path = save_sam_weights(sam, Path(out_path))
    return {"path": str(path), "final_loss": float(np.mean(losses[-100:])), "steps": config.steps,
            "targets": len(targets)}
