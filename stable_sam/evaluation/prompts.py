"""Frozen evaluation prompts: drawn once per dataset, saved, and reloaded, so every model sees
the same prompts.

Prompt settings ("kinds"): "box", "noisy_box" (scale 0.4, no IoU filter), "points1", "points3",
"points5", "points10", "coarse_mask", and "nbox_LOW-HIGH" (noisy box, IoU in [LOW, HIGH)).
Each prompt is seeded on its own (see stable_sam.data.prompts), so a prompt does not depend on
how many others were drawn before it.
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from stable_sam.data._io import write_json_atomic
from stable_sam.data.prompts import make_prompt, prompt_rng

PROMPTS_FORMAT = "stable-sam-prompts/1"
HQSEG_KINDS = ("box", "noisy_box", "points1", "points3", "points5", "points10")
COCO_KINDS = ("nbox_0.5-0.6", "nbox_0.6-0.7", "noisy_box", "points1")
KIND_TITLES = {"box": "GT Box", "noisy_box": "Noisy Box", "points1": "1 Point",
               "points3": "3 Points", "points5": "5 Points", "points10": "10 Points",
               "coarse_mask": "Coarse Mask"}
NBOX_KIND = re.compile(r"^nbox_(\d*\.?\d+)-(\d*\.?\d+)$")
# §3.2 evaluates noisy boxes at scale 0.4 with no IoU filter; the IoU >= 0.5 filter belongs to
# training (§9). Every box the noise can make is kept.
NOISY_BOX_EVAL_IOU_RANGE = (0.0, 1.0)


def _kind_spec(kind: str) -> tuple[str, tuple[float, float]]:
    """Eval kind -> (Prompt kind, noisy-box IoU range)."""
    match = NBOX_KIND.match(kind)
    if match:
        low, high = float(match.group(1)), float(match.group(2))
        if not 0 <= low < high <= 1:
            raise ValueError(f"kind {kind!r}: the IoU range must satisfy 0 <= low < high <= 1")
        return "noisy_box", (low, high)
    if kind in KIND_TITLES:
        return kind, NOISY_BOX_EVAL_IOU_RANGE
    raise ValueError(f"unknown prompt kind {kind!r}; expected one of {sorted(KIND_TITLES)} or "
                     f"'nbox_LOW-HIGH' (e.g. nbox_0.5-0.6)")


def kind_title(kind: str) -> str:
    match = NBOX_KIND.match(kind)
    return f"N-Box {match.group(1)}-{match.group(2)}" if match else KIND_TITLES[kind]


def sample_targets(sample: dict) -> list[np.ndarray]:
    """The bool HxW target masks of a dataset item (HQSeg: one `mask`; COCO: `masks`)."""
    if "masks" in sample:
        return list(sample["masks"])
    if "mask" in sample:
        return [sample["mask"]]
    raise ValueError(f"dataset item has neither 'mask' nor 'masks' (keys: {sorted(sample)})")


def freeze_prompts(dataset, kinds: Sequence[str] = HQSEG_KINDS, prompts_per_image: int = 20,
                   seed: int = 0, *, noise_scale: float = 0.4,
                   model_image_size: int = 1024) -> dict:
    """Draws every evaluation prompt of `dataset` once, as a JSON-ready dict.

    Arguments:
      dataset: an HQSegDataset / CocoInstanceDataset (or anything with `name`, `len` and items
        holding `mask` or `masks`, `name`).
      kinds: prompt settings (see the module docstring).
      prompts_per_image: prompts per target and kind ("box" always gets one: it is
        deterministic).
      seed: global seed; prompt p of kind k for target t of image i uses
        prompt_rng(dataset.name, i, p, seed, stream=f"{k}/{t}").
      model_image_size: SAM's input size, only for "coarse_mask" logits.
    Targets with an empty mask get no prompts and are skipped by `evaluate_masks`.
    """
    if prompts_per_image < 1:
        raise ValueError(f"prompts_per_image must be >= 1, is {prompts_per_image}")
    specs = {kind: _kind_spec(kind) for kind in kinds}
    images = []
    for index in range(len(dataset)):
        sample = dataset[index]
        targets = []
        for t, mask in enumerate(sample_targets(sample)):
            entry: dict[str, Any] = {"target": t, "prompts": {}}
            if "ann_ids" in sample:
                entry["ann_id"] = int(sample["ann_ids"][t])
            if mask.any():
                for kind, (prompt_kind, iou_range) in specs.items():
                    count = 1 if kind == "box" else prompts_per_image
                    entry["prompts"][kind] = [
                        make_prompt(prompt_kind, mask,
                                    prompt_rng(dataset.name, index, p, seed, stream=f"{kind}/{t}"),
                                    noise_scale=noise_scale, iou_range=iou_range,
                                    model_image_size=model_image_size).to_json()
                        for p in range(count)]
            targets.append(entry)
        images.append({"index": index, "name": sample["name"], "targets": targets})
    return {"dataset": dataset.name, "num_images": len(dataset), "kinds": list(kinds),
            "prompts_per_image": prompts_per_image, "seed": seed, "noise_scale": noise_scale,
            "noisy_box_iou_range": list(NOISY_BOX_EVAL_IOU_RANGE), "images": images}


def save_prompts(path: str | os.PathLike, frozen: dict | Sequence[dict]) -> Path:
    """Writes one or several `freeze_prompts` dicts (one per dataset) to a JSON file, atomically."""
    frozen = [frozen] if isinstance(frozen, dict) else list(frozen)
    names = [f["dataset"] for f in frozen]
    if len(set(names)) != len(names):
        raise ValueError(f"two frozen prompt sets share a dataset name: {names}")
    return write_json_atomic(path, {"format": PROMPTS_FORMAT,
                                    "datasets": {f["dataset"]: f for f in frozen}})


def load_prompts(path: str | os.PathLike) -> dict[str, dict]:
    """Reads a prompts file: {dataset name: frozen prompts}."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"prompts file not found: {path}")
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"prompts file {path} is not valid JSON: {exc}") from exc
    if not isinstance(obj, dict) or obj.get("format") != PROMPTS_FORMAT:
        raise ValueError(f"prompts file {path} is not a {PROMPTS_FORMAT} file")
    return obj["datasets"]


def frozen_for(dataset, prompts: dict) -> dict:
    frozen = prompts
    if "images" not in prompts:  # a load_prompts mapping
        if dataset.name not in prompts:
            raise ValueError(f"the prompts hold datasets {sorted(prompts)}, not {dataset.name!r}")
        frozen = prompts[dataset.name]
    if frozen["num_images"] != len(dataset):
        raise ValueError(f"prompts for {frozen['dataset']!r} cover {frozen['num_images']} images "
                         f"but the dataset {dataset.name!r} has {len(dataset)}")
    return frozen
