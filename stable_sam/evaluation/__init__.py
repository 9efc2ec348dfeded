"""The evaluation protocol of the paper's Tables 1-5: frozen prompts (`prompts`), the metrics
(`metrics`), the per-target loop (`protocol`), COCO mask mAP (`coco`) and the results table
(`report`)."""
from stable_sam.evaluation.coco import coco_mask_map
from stable_sam.evaluation.metrics import mask_boundary, mask_iou, stability_score, summarise
from stable_sam.evaluation.prompts import (
    COCO_KINDS,
    HQSEG_KINDS,
    KIND_TITLES,
    PROMPTS_FORMAT,
    freeze_prompts,
    kind_title,
    load_prompts,
    sample_targets,
    save_prompts,
)
from stable_sam.evaluation.protocol import evaluate_masks, predict_prompts
from stable_sam.evaluation.report import RESULTS_FORMAT, results_table, write_results

__all__ = [
    "COCO_KINDS",
    "HQSEG_KINDS",
    "KIND_TITLES",
    "PROMPTS_FORMAT",
    "RESULTS_FORMAT",
    "coco_mask_map",
    "evaluate_masks",
    "freeze_prompts",
    "kind_title",
    "load_prompts",
    "mask_boundary",
    "mask_iou",
    "predict_prompts",
    "results_table",
    "sample_targets",
    "save_prompts",
    "stability_score",
    "summarise",
    "write_results",
]
