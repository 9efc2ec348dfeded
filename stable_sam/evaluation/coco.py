"""COCO mask mAP of the masks predicted from noisy boxes, through pycocotools' COCOeval."""
from __future__ import annotations

import contextlib
import io

import numpy as np


def rle_json(mask: np.ndarray) -> dict:
    from pycocotools import mask as mask_utils

    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")}


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
