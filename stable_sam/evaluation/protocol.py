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

With `follow=True`, prompt-following (`stable_sam.evaluation.follow`) per kind too: the
agreement of masks prompted on two different objects of one image, and the share of targets
that are stable but wrong; `evaluate_background_boxes` scores a box on empty background.

Prompts are frozen once per dataset with `stable_sam.evaluation.prompts.freeze_prompts` and
saved with `save_prompts`, so every model sees the same prompts.
Under torch.distributed, images are sharded by rank (rank, rank + world, ...: no padding) and
the per-target records are all-gathered before averaging, so nothing is counted twice.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from stable_sam.data.prompts import Prompt
from stable_sam.data.prompts import prompt_rng
from stable_sam.evaluation.coco import coco_mask_map, rle_json
from stable_sam.evaluation.follow import (background_box, cross_agreement, object_share,
                                          stable_but_wrong)
from stable_sam.evaluation.metrics import (mask_boundary, mask_iou, mean_or_nan,
                                           stability_score, summarise)
from stable_sam.evaluation.prompts import NBOX_KIND, frozen_for, sample_targets


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
    # SAM2ImagePredictor keeps the threshold itself; SamPredictor reads its model's
    threshold = (predictor.mask_threshold if hasattr(predictor, "mask_threshold")
                 else predictor.model.mask_threshold)
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


def evaluate_masks(predictor, dataset, prompts: dict, kinds: Sequence[str] | None = None, *,
                   batch_size: int = 20, dilation_ratio: float = 0.02,
                   coco_score: str = "iou", follow: bool = False,
                   progress: bool = False) -> dict:
    """Evaluates `predictor` on `dataset` with frozen `prompts` (see the module docstring).

    Arguments:
      predictor: SamPredictor-like (`set_image`, `predict` / `predict_torch`, `transform`,
        `original_size`, `device`, `model.mask_threshold`).
      prompts: `freeze_prompts(dataset, ...)` output or a `load_prompts` mapping.
      kinds: the settings to run; default every kind frozen in `prompts`.
      follow: also measure prompt-following (keeps one image's masks of every target at once).
    Returns {"dataset", "kinds": {kind: {"miou", "mbiou", "msf", "count"}}, "coco": {kind:
    {"map", "map50"}} (COCO datasets, nbox kinds only), "records": per-target list}, and with
    `follow` "follow": {kind: {"cross_agreement", "stable_but_wrong"}} and "cross_records":
    per-image {"image", "kind", "agreement"} (images with two disjoint targets).
    Metrics are fractions in [0, 1]; NaN where undefined.
    """
    if coco_score not in ("iou", "one"):
        raise ValueError(f"coco_score must be 'iou' or 'one', is {coco_score!r}")
    frozen = frozen_for(dataset, prompts)
    kinds = list(frozen["kinds"] if kinds is None else kinds)
    missing = [k for k in kinds if k not in frozen["kinds"]]
    if missing:
        raise ValueError(f"kinds {missing} were not frozen; the prompts hold {frozen['kinds']}")
    rank, world = _distributed()
    records, cross = [], []
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
        kept: dict = {kind: ([], []) for kind in kinds}  # kind -> (masks, gts) of this image
        for target in entry["targets"]:
            gt = targets[target["target"]]
            gt_boundary = mask_boundary(gt, dilation_ratio)
            for kind in kinds:
                if kind not in target["prompts"]:
                    continue  # an empty target
                batch = [Prompt.from_json(p) for p in target["prompts"][kind]]
                masks, scores = predict_prompts(predictor, batch, batch_size)
                if follow:
                    kept[kind][0].append(masks)
                    kept[kind][1].append(gt)
                record = {
                    "image": index, "target": target["target"], "kind": kind,
                    "iou": float(np.mean([mask_iou(m, gt) for m in masks])),
                    "biou": float(np.mean([mask_iou(mask_boundary(m, dilation_ratio),
                                                    gt_boundary) for m in masks])),
                    "sf": stability_score(masks) if len(masks) > 1 else float("nan"),
                }
                if "ann_id" in target and NBOX_KIND.match(kind):
                    record["coco"] = {
                        "image_id": int(sample["image_id"]),
                        "category_id": int(sample["category_ids"][target["target"]]),
                        "segmentation": rle_json(masks[0]),
                        "score": float(scores[0]) if coco_score == "iou" else 1.0}
                records.append(record)
        for kind, (masks, gts) in kept.items() if follow else ():
            agreement = cross_agreement(masks, gts)
            if agreement == agreement:  # NaN: no two disjoint targets in this image
                cross.append({"image": index, "kind": kind, "agreement": agreement})
    records = sorted(_gather(records), key=lambda r: (r["image"], r["target"], r["kind"]))
    results = {"dataset": dataset.name, "num_images": len(dataset),
               "kinds": {k: summarise(r for r in records if r["kind"] == k) for k in kinds},
               "records": records}
    if follow:
        cross = sorted(_gather(cross), key=lambda r: (r["image"], r["kind"]))
        results["cross_records"] = cross
        results["follow"] = {k: {
            "cross_agreement": mean_or_nan(r["agreement"] for r in cross if r["kind"] == k),
            "stable_but_wrong": stable_but_wrong(r for r in records if r["kind"] == k)}
            for k in kinds}
    if hasattr(dataset, "coco"):
        results["coco"] = {k: coco_mask_map(dataset, [r["coco"] for r in records
                                                      if r["kind"] == k and "coco" in r])
                           for k in kinds if NBOX_KIND.match(k)}
    return results


@torch.no_grad()
def evaluate_background_boxes(predictor, dataset, seed: int = 0) -> dict:
    """One box on empty background per image (`follow.background_box`, drawn from
    prompt_rng(dataset.name, i, 0, seed, stream="background_box")): the share of the predicted
    mask that lies on objects. An item's objects are its "objects" mask, else the union of its
    targets. Returns {"object_share": mean over images, "count": images with room for a box,
    "records": [{"image", "box", "object_share"}]} (fractions)."""
    records = []
    for index in range(len(dataset)):
        sample = dataset[index]
        objects = sample.get("objects")
        if objects is None:
            objects = np.any(sample_targets(sample), axis=0)
        box = background_box(objects, prompt_rng(dataset.name, index, 0, seed,
                                                 stream="background_box"))
        if box is None:
            continue
        predictor.set_image(sample["image"])
        masks, _ = predict_prompts(predictor, [Prompt("box", box=box)])
        records.append({"image": index, "box": box.tolist(),
                        "object_share": object_share(masks[0], objects)})
    return {"object_share": mean_or_nan(r["object_share"] for r in records),
            "count": len(records), "records": records}
