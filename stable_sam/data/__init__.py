"""Datasets, prompt sampling (RTS), occlusion and transforms for training and evaluation."""
from stable_sam.data.coco import CocoInstanceDataset
from stable_sam.data.hqseg import HQSegDataset, hqseg44k_datasets, hqseg44k_roots
from stable_sam.data.occlusion import paste_behind, paste_occluder, synthesize_occlusion
from stable_sam.data.prompts import (
    POINT_KINDS,
    PROMPT_KINDS,
    Prompt,
    RTSConfig,
    WITHOUT_RTS,
    box_iou,
    coarse_mask,
    gt_box,
    make_prompt,
    mask_to_low_res_logits,
    noisy_box,
    positive_points,
    prompt_rng,
    sample_training_prompt,
)
from stable_sam.data.synthetic import make_synthetic_dataset
from stable_sam.data.transforms import (
    Jittered,
    image_to_sam_input,
    large_scale_jitter,
    pad_bottom_right,
    resize_longest_side,
    transform_prompt,
)

__all__ = [
    "CocoInstanceDataset", "HQSegDataset", "hqseg44k_datasets", "hqseg44k_roots",
    "paste_behind", "paste_occluder", "synthesize_occlusion", "POINT_KINDS", "PROMPT_KINDS",
    "Prompt", "RTSConfig", "WITHOUT_RTS", "box_iou",
    "coarse_mask", "gt_box", "make_prompt", "mask_to_low_res_logits", "noisy_box",
    "positive_points", "prompt_rng", "sample_training_prompt", "make_synthetic_dataset",
    "Jittered", "image_to_sam_input", "large_scale_jitter", "pad_bottom_right",
    "resize_longest_side", "transform_prompt",
]
