"""One method's row of the reproduction table, in percentages: per prompt kind mIoU, mBIoU and
mSF with 95 % bootstrap intervals (images resampled whole), prompt-following ("follow": the
agreement of masks prompted on two different objects of an image, the stable-but-wrong share),
and a box on empty background; and the split's own numbers (the fill-the-GT-box rule's mIoU,
the number of targets). `pipeline.evaluate_methods` writes them into reproduction.json."""
from __future__ import annotations

import numpy as np

from ..evaluation import evaluate_masks, sample_targets
from ..evaluation.ceiling import box_fill_iou
from ..evaluation.intervals import bootstrap_interval
from ..evaluation.protocol import evaluate_background_boxes


def percent(value) -> float | None:
    """A fraction as a percentage with two decimals; None for an undefined (NaN) value."""
    return None if value is None or value != value else round(100.0 * float(value), 2)


def kind_summary(records: list, kind: str) -> dict:
    """{"mIoU", "mBIoU", "mSF", "mIoU_ci", "mSF_ci"} of one kind's per-target records."""
    mine = [r for r in records if r["kind"] == kind]
    images = [r["image"] for r in mine]
    out = {}
    for key, name in (("iou", "mIoU"), ("biou", "mBIoU"), ("sf", "mSF")):
        values = [r[key] for r in mine if r[key] == r[key]]
        out[name] = percent(np.mean(values)) if values else None
    for key, name in (("iou", "mIoU_ci"), ("sf", "mSF_ci")):
        low, high = bootstrap_interval([r[key] for r in mine], images)
        out[name] = None if low != low else [percent(low), percent(high)]
    return out


def evaluate_row(predictor, dataset, prompts, kinds, progress: bool = False) -> tuple[dict, list]:
    """(row, per-target records): row = {"kinds": {KIND: kind_summary}, "follow": {KIND:
    {"cross_agreement", "stable_but_wrong"}}, "background_box": {"on_objects"}}."""
    results = evaluate_masks(predictor, dataset, prompts, list(kinds), follow=True,
                             progress=progress)
    background = evaluate_background_boxes(predictor, dataset)
    row = {"kinds": {k: kind_summary(results["records"], k) for k in kinds},
           "follow": {k: {name: percent(v) for name, v in results["follow"][k].items()}
                      for k in kinds},
           "background_box": {"on_objects": percent(background["object_share"]),
                              "images": background["count"]}}
    return row, results["records"]


def split_summary(dataset) -> dict:
    """{"box_fill_mIoU", "test_targets"}: the trivial rule's mIoU on every non-empty target."""
    ious = [box_fill_iou(m) for i in range(len(dataset)) for m in sample_targets(dataset[i])
            if m.any()]
    return {"box_fill_mIoU": percent(np.mean(ious)) if ious else None, "test_targets": len(ious)}
