"""Worst-case box rows: the search of `stable_sam.evaluation.worst_box` on every target of a
dataset (or on a given list of targets), and the per-tau numbers a results row carries:
IoU-Min, IoU-Base (the GT box), IoU-Max and Delta = Max - Min, means over targets with 95 %
bootstrap intervals that resample images whole (`stable_sam.evaluation.intervals`), as the
reproduction table's means have.

`evaluate_worst_boxes` is the one entry: `stable-sam evaluate --worst-box` calls it per dataset,
and the reproduction pipeline can call it per method on its held-out targets.
"""
from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np
import torch

from stable_sam.data.prompts import prompt_rng
from stable_sam.evaluation.box_decoding import PredictorBoxDecoder
from stable_sam.evaluation.intervals import bootstrap_interval
from stable_sam.evaluation.metrics import mean_or_nan
from stable_sam.evaluation.prompts import sample_targets
from stable_sam.evaluation.protocol import _distributed, _gather
from stable_sam.evaluation.worst_box import (DEFAULT_TAUS, WorstBoxConfig, check_taus,
                                             search_worst_boxes, tau_key)

METRICS = ("iou_min", "iou_base", "iou_max", "delta")


def _targets_by_image(dataset, targets: Iterable[tuple[int, int]] | None) -> dict[int, list[int]]:
    """{image index: [target index, ...]} in order; None: every target (empty ones are skipped
    where the images are read)."""
    if targets is None:
        return {i: None for i in range(len(dataset))}
    grouped: dict[int, list[int]] = {}
    for image, target in targets:
        if not 0 <= int(image) < len(dataset):
            raise ValueError(f"target ({image}, {target}): {dataset.name!r} has images "
                             f"0..{len(dataset) - 1}")
        grouped.setdefault(int(image), []).append(int(target))
    return dict(sorted(grouped.items()))


def evaluate_worst_boxes(predictor, dataset, targets: Sequence[tuple[int, int]] | None = None, *,
                         taus: Sequence[float] = DEFAULT_TAUS,
                         config: WorstBoxConfig = WorstBoxConfig(), use_plugins: bool = True,
                         seed: int = 0, progress: bool = False) -> dict:
    """The worst-case box search on `dataset`'s targets and its summary per tau.

    Arguments:
      predictor: the method's Stable-SAM predictor (`stable_sam.predictor_for(model)`, any
        family); its image is replaced (set_image per image).
      dataset: `name`, `len` and items with "image" and "mask" or "masks" (HQSegDataset,
        CocoInstanceDataset, the reproduction's scene targets).
      targets: (image index, target index) pairs; None: every non-empty target.
      taus: the constraint's IoU with the GT box, one search per tau.
      config: steps, starts, step size and time budget per target (`WorstBoxConfig`).
      use_plugins: False searches the base model (the same decoder, plugins off).
      seed: target t of image i draws its noisy starts from prompt_rng(dataset.name, i, t, seed,
        stream="worst_box"): a target's result does not depend on which others run.

    Returns {"dataset", "config": config and seed, "taus": {"0.5": summary, ...},
    "records": [{"image", "target", **search record}, ...]}; a summary is {"iou_min",
    "iou_base", "iou_max", "delta" (means, fractions), "<metric>_ci" ([low, high] or None),
    "count", "truncated" (targets the time budget cut short)}. Under torch.distributed the
    images are sharded by rank and the records gathered, as in `evaluate_masks`.
    """
    config.check()
    taus = check_taus(taus)
    rank, world = _distributed()
    chosen = list(_targets_by_image(dataset, targets).items())[rank::world]
    if progress:
        from tqdm import tqdm

        chosen = tqdm(chosen, desc=f"worst box {dataset.name}", disable=rank != 0)
    records = []
    for image, wanted in chosen:
        sample = dataset[image]
        masks = sample_targets(sample)
        indices = range(len(masks)) if wanted is None else wanted
        kept = [t for t in indices if masks[t].any()]
        if not kept:
            continue
        with torch.inference_mode():
            predictor.set_image(sample["image"])
        decoder = PredictorBoxDecoder(predictor, use_plugins=use_plugins)
        for target in kept:
            rng = prompt_rng(dataset.name, image, target, seed, stream="worst_box")
            for record in search_worst_boxes(decoder, masks[target], taus=taus, config=config,
                                             seed=rng):
                records.append({"image": image, "target": target, **record})
    records = sorted(_gather(records), key=lambda r: (r["image"], r["target"], r["tau"]))
    return {"dataset": dataset.name, "config": {**config.to_json(), "seed": seed},
            "taus": worst_box_summary(records, taus), "records": records}


def worst_box_summary(records: Sequence[dict], taus: Sequence[float]) -> dict:
    """{tau key: summary} of per-target search records (see `evaluate_worst_boxes`)."""
    out = {}
    for tau in taus:
        mine = [r for r in records if r["tau"] == tau]
        images = [r["image"] for r in mine]
        values = {m: [r["iou_max"] - r["iou_min"] if m == "delta" else r[m] for r in mine]
                  for m in METRICS}
        summary: dict = {m: mean_or_nan(values[m]) for m in METRICS}
        for m in METRICS:
            low, high = bootstrap_interval(values[m], images)
            summary[f"{m}_ci"] = None if np.isnan(low) else [low, high]
        summary["count"] = len(mine)
        summary["truncated"] = sum(bool(r["truncated"]) for r in mine)
        out[tau_key(tau)] = summary
    return out
