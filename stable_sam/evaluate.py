"""Prompt-robustness evaluation: frozen prompts -> mIoU, mBIoU, mSF (and COCO mask mAP).

The protocol of the paper's Tables 1-3: for every target and prompt setting, predict one mask
(`multimask_output=False`) for each of 20 frozen prompts, threshold the logits at
`model.mask_threshold` at the original resolution, then
- mIoU / mBIoU: IoU / boundary IoU (dilation 0.02 of the diagonal) with the GT, averaged over
  prompts and targets;
- mSF: stability (paper Eq. 1) of the target's 20 masks, averaged over targets. The GT box is a
  single deterministic prompt, so its mSF is undefined and shown as "-";
- COCO "nbox_0.5-0.6" / "nbox_0.6-0.7": noisy boxes whose IoU with the GT box is in that range;
  the mask of each target's first prompt, RLE-encoded, is scored by pycocotools' COCOeval
  (segm) for mask mAP and mAP50. A detection's score is SAM's predicted IoU by default
  (`coco_score="iou"`), or 1.0 for every mask (`coco_score="one"`), which ranks by nothing.

Prompt settings ("kinds"): "box", "noisy_box" (scale 0.4, IoU >= 0.5), "points1", "points3",
"points5", "points10", "coarse_mask", and "nbox_LOW-HIGH" (noisy box, IoU in [LOW, HIGH)).

Prompts are frozen once per dataset with `freeze_prompts` (seeded per prompt, see
stable_sam.data.prompts) and saved with `save_prompts`, so every model sees the same prompts.
Under torch.distributed, images are sharded by rank (rank, rank + world, ...: no padding) and
the per-target records are all-gathered before averaging, so nothing is counted twice.
"""
from __future__ import annotations

import contextlib
import io
import json
import math
import os
import re
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import torch

from stable_sam.data._io import write_json_atomic, write_text_atomic
from stable_sam.data.prompts import Prompt, make_prompt, prompt_rng
from stable_sam.metrics import mask_boundary, mask_iou, stability_score, summarise

PROMPTS_FORMAT = "stable-sam-prompts/1"
RESULTS_FORMAT = "stable-sam-results/1"
HQSEG_KINDS = ("box", "noisy_box", "points1", "points3", "points5", "points10")
COCO_KINDS = ("nbox_0.5-0.6", "nbox_0.6-0.7", "noisy_box", "points1")
KIND_TITLES = {"box": "GT Box", "noisy_box": "Noisy Box", "points1": "1 Point",
               "points3": "3 Points", "points5": "5 Points", "points10": "10 Points",
               "coarse_mask": "Coarse Mask"}
_NBOX = re.compile(r"^nbox_(\d*\.?\d+)-(\d*\.?\d+)$")


def _kind_spec(kind: str) -> tuple[str, tuple[float, float]]:
    """Eval kind -> (Prompt kind, noisy-box IoU range)."""
    match = _NBOX.match(kind)
    if match:
        low, high = float(match.group(1)), float(match.group(2))
        if not 0 <= low < high <= 1:
            raise ValueError(f"kind {kind!r}: the IoU range must satisfy 0 <= low < high <= 1")
        return "noisy_box", (low, high)
    if kind in KIND_TITLES:
        return kind, (0.5, 1.0)
    raise ValueError(f"unknown prompt kind {kind!r}; expected one of {sorted(KIND_TITLES)} or "
                     f"'nbox_LOW-HIGH' (e.g. nbox_0.5-0.6)")


def kind_title(kind: str) -> str:
    match = _NBOX.match(kind)
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
            "images": images}


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


def _frozen_for(dataset, prompts: dict) -> dict:
    frozen = prompts
    if "images" not in prompts:  # a load_prompts mapping
        if dataset.name not in prompts:
            raise ValueError(f"the prompts hold datasets {sorted(prompts)}, not {dataset.name!r}")
        frozen = prompts[dataset.name]
    if frozen["num_images"] != len(dataset):
        raise ValueError(f"prompts for {frozen['dataset']!r} cover {frozen['num_images']} images "
                         f"but the dataset {dataset.name!r} has {len(dataset)}")
    return frozen


def _distributed() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def _gather(items: list) -> list:
    rank, world = _distributed()
    if world == 1:
        return items
    gathered: list = [None] * world
    torch.distributed.all_gather_object(gathered, items)
    return [item for part in gathered for item in part]


def _batched_inputs(predictor, prompts: list[Prompt]):
    """Stacks same-kind prompts into predict_torch's tensors in the model's input frame."""
    device, size = predictor.device, predictor.original_size
    coords = labels = boxes = masks = None
    first = prompts[0]
    if first.point_coords is not None:
        coords = np.stack([p.point_coords for p in prompts])  # B x N x 2
        coords = predictor.transform.apply_coords(coords, size)
        coords = torch.as_tensor(coords, dtype=torch.float, device=device)
        labels = torch.as_tensor(np.stack([p.point_labels for p in prompts]), dtype=torch.int,
                                 device=device)
    if first.box is not None:
        boxes = predictor.transform.apply_boxes(np.stack([p.box for p in prompts]), size)
        boxes = torch.as_tensor(boxes, dtype=torch.float, device=device)
    if first.mask_input is not None:
        masks = torch.as_tensor(np.stack([p.mask_input for p in prompts])[:, None],
                                dtype=torch.float, device=device)
    return coords, labels, boxes, masks


@torch.no_grad()
def predict_prompts(predictor, prompts: list[Prompt], batch_size: int = 20
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Single-mask predictions for prompts of one kind on the image set in `predictor`.

    Returns (bool KxHxW masks at the original resolution, float K predicted IoUs). Uses one
    `predict_torch` call per `batch_size` prompts when the predictor has it, else `predict`.
    """
    threshold = predictor.model.mask_threshold
    expected = getattr(getattr(predictor.model, "prompt_encoder", None), "mask_input_size", None)
    if prompts[0].mask_input is not None and expected is not None \
            and tuple(prompts[0].mask_input.shape) != tuple(expected):
        raise ValueError(f"coarse-mask prompts are {prompts[0].mask_input.shape} logits but the "
                         f"model takes {tuple(expected)}: freeze them with model_image_size = "
                         f"the model's image size")
    if not hasattr(predictor, "predict_torch"):
        outs = [predictor.predict(p.point_coords, p.point_labels, p.box,
                                  None if p.mask_input is None else p.mask_input[None],
                                  multimask_output=False, return_logits=True) for p in prompts]
        return (np.stack([o[0][0] > threshold for o in outs]),
                np.array([float(o[1][0]) for o in outs]))
    masks, scores = [], []
    for start in range(0, len(prompts), batch_size):
        inputs = _batched_inputs(predictor, prompts[start:start + batch_size])
        logits, iou_pred, _ = predictor.predict_torch(*inputs, multimask_output=False,
                                                      return_logits=True)
        masks.append((logits[:, 0] > threshold).cpu().numpy())
        scores.append(iou_pred[:, 0].float().cpu().numpy())
    return np.concatenate(masks), np.concatenate(scores)


def _rle_json(mask: np.ndarray) -> dict:
    from pycocotools import mask as mask_utils

    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")}


def evaluate_masks(predictor, dataset, prompts: dict, kinds: Sequence[str] | None = None, *,
                   batch_size: int = 20, dilation_ratio: float = 0.02,
                   coco_score: str = "iou", progress: bool = False) -> dict:
    """Evaluates `predictor` on `dataset` with frozen `prompts` (see the module docstring).

    Arguments:
      predictor: SamPredictor-like (`set_image`, `predict` / `predict_torch`, `transform`,
        `original_size`, `device`, `model.mask_threshold`).
      prompts: `freeze_prompts(dataset, ...)` output or a `load_prompts` mapping.
      kinds: the settings to run; default every kind frozen in `prompts`.
    Returns {"dataset", "kinds": {kind: {"miou", "mbiou", "msf", "count"}}, "coco": {kind:
    {"map", "map50"}} (COCO datasets, nbox kinds only), "records": per-target list}.
    Metrics are fractions in [0, 1]; NaN where undefined.
    """
    if coco_score not in ("iou", "one"):
        raise ValueError(f"coco_score must be 'iou' or 'one', is {coco_score!r}")
    frozen = _frozen_for(dataset, prompts)
    kinds = list(frozen["kinds"] if kinds is None else kinds)
    missing = [k for k in kinds if k not in frozen["kinds"]]
    if missing:
        raise ValueError(f"kinds {missing} were not frozen; the prompts hold {frozen['kinds']}")
    rank, world = _distributed()
    records = []
    indices = range(rank, len(dataset), world)
    if progress:
        from tqdm import tqdm

        indices = tqdm(indices, desc=f"eval {dataset.name}", disable=rank != 0)
    for index in indices:
        sample, entry = dataset[index], frozen["images"][index]
        if entry["name"] != sample["name"]:
            raise ValueError(f"prompts image {index} is {entry['name']!r} but the dataset has "
                             f"{sample['name']!r}: prompts were frozen for another dataset")
        targets = sample_targets(sample)
        predictor.set_image(sample["image"])
        for target in entry["targets"]:
            gt = targets[target["target"]]
            gt_boundary = mask_boundary(gt, dilation_ratio)
            for kind in kinds:
                if kind not in target["prompts"]:
                    continue  # an empty target
                batch = [Prompt.from_json(p) for p in target["prompts"][kind]]
                masks, scores = predict_prompts(predictor, batch, batch_size)
                record = {
                    "image": index, "target": target["target"], "kind": kind,
                    "iou": float(np.mean([mask_iou(m, gt) for m in masks])),
                    "biou": float(np.mean([mask_iou(mask_boundary(m, dilation_ratio),
                                                    gt_boundary) for m in masks])),
                    "sf": stability_score(masks) if len(masks) > 1 else float("nan"),
                }
                if "ann_id" in target and _NBOX.match(kind):
                    record["coco"] = {
                        "image_id": int(sample["image_id"]),
                        "category_id": int(sample["category_ids"][target["target"]]),
                        "segmentation": _rle_json(masks[0]),
                        "score": float(scores[0]) if coco_score == "iou" else 1.0}
                records.append(record)
    records = sorted(_gather(records), key=lambda r: (r["image"], r["target"], r["kind"]))
    results = {"dataset": dataset.name, "num_images": len(dataset),
               "kinds": {k: summarise(r for r in records if r["kind"] == k) for k in kinds},
               "records": records}
    if hasattr(dataset, "coco"):
        results["coco"] = {k: coco_mask_map(dataset, [r["coco"] for r in records
                                                      if r["kind"] == k and "coco" in r])
                           for k in kinds if _NBOX.match(k)}
    return results


def coco_mask_map(dataset, detections: list[dict]) -> dict:
    """Mask mAP@[.5:.95] and mAP50 of `detections` (COCO results format) against the
    dataset's COCO ground truth, on the dataset's images only."""
    from pycocotools.cocoeval import COCOeval

    if not detections:
        return {"map": float("nan"), "map50": float("nan")}
    gt = dataset.coco
    with contextlib.redirect_stdout(io.StringIO()):
        dt = gt.loadRes([dict(d, segmentation=dict(d["segmentation"])) for d in detections])
        evaluator = COCOeval(gt, dt, iouType="segm")
        evaluator.params.imgIds = list(dataset.image_ids)
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return {"map": float(evaluator.stats[0]), "map50": float(evaluator.stats[1])}


def _fmt(value: float) -> str:
    return "-" if value is None or not math.isfinite(value) else f"{100 * value:.1f}"


def results_table(rows: Iterable[dict]) -> str:
    """Markdown: one row per (model, dataset), one column per prompt kind with
    "mIoU / mBIoU / mSF" in percent, then "mAP / mAP50" per COCO noisy-box range."""
    rows = list(rows)
    kinds = list(dict.fromkeys(k for r in rows for k in r["kinds"]))
    map_kinds = list(dict.fromkeys(k for r in rows for k in r.get("coco", {})))
    header = (["Model", "Dataset"] + [f"{kind_title(k)} mIoU / mBIoU / mSF" for k in kinds]
              + [f"{kind_title(k)} mAP / mAP50" for k in map_kinds])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = [row["model"], row["dataset"]]
        for k in kinds:
            m = row["kinds"].get(k)
            cells.append("n/a" if m is None else
                         f"{_fmt(m['miou'])} / {_fmt(m['mbiou'])} / {_fmt(m['msf'])}")
        for k in map_kinds:
            m = row.get("coco", {}).get(k)
            cells.append("n/a" if m is None else f"{_fmt(m['map'])} / {_fmt(m['map50'])}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_results(out_dir: str | os.PathLike, model: str, results: Sequence[dict],
                  extra: dict | None = None) -> tuple[Path, Path]:
    """Adds (or replaces) `model`'s rows in out_dir/results.json and rewrites results.md.

    Several models evaluated into the same folder accumulate into one table. Per-target records
    go to out_dir/records/MODEL__DATASET.json. Every file is written atomically.
    """
    out_dir = Path(out_dir)
    json_path, md_path = out_dir / "results.json", out_dir / "results.md"
    rows = []
    if json_path.is_file():
        existing = json.loads(json_path.read_text(encoding="utf-8"))
        if existing.get("format") != RESULTS_FORMAT:
            raise ValueError(f"{json_path} exists but is not a {RESULTS_FORMAT} file")
        rows = existing["rows"]
    new_keys = {(model, r["dataset"]) for r in results}
    rows = [r for r in rows if (r["model"], r["dataset"]) not in new_keys]
    for result in results:
        row = {"model": model, "dataset": result["dataset"], "num_images": result["num_images"],
               "kinds": result["kinds"], **({"coco": result["coco"]} if "coco" in result else {}),
               **(extra or {})}
        rows.append(row)
        safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{model}__{result['dataset']}")
        write_json_atomic(out_dir / "records" / f"{safe}.json", result["records"])
    write_json_atomic(json_path, {"format": RESULTS_FORMAT, "rows": rows})
    write_text_atomic(md_path, results_table(rows))
    return json_path, md_path
