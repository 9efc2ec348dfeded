"""Validation runs for the demo base's recipe (issue 24): train a base with the given settings,
then score it on VAL_SEED's scenes only (never TEST_SEED: the test split is evaluated once, by
the publish run). One line of JSON per run is appended to --log.

    OMP_NUM_THREADS=1 .venv/bin/python scripts/demo_base_experiments.py --steps 600 \
        --log runs/base_experiments.jsonl
    .venv/bin/python scripts/demo_base_experiments.py --box-jitter 0.1 --click-share 0.25 \
        --correction-rounds 2   # SAM's own recipe on top
    .venv/bin/python scripts/demo_base_experiments.py --ceiling   # the grid ceilings only
"""
from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from stable_sam.data._io import append_json_line
from stable_sam.data.scenes import VAL_SEED, SceneTargets
from stable_sam.evaluation.ceiling import box_fill_iou, grid_ceiling_miou
from stable_sam.evaluation.protocol import evaluate_background_boxes, evaluate_masks
from stable_sam.evaluation.prompts import freeze_prompts
from stable_sam.families.demo.build import DEMO_IMAGE_SIZE, ENCODERS
from stable_sam.reproduction.base_sam import BaseTrainConfig, train_base_sam

KINDS = ("box", "noisy_box", "points1")


def ceilings(dataset: SceneTargets) -> dict:
    masks = [m for i in range(len(dataset)) for m in dataset[i]["masks"]]
    return {"targets": len(masks), "box_fill_mIoU": round(100 * np.mean([box_fill_iou(m)
                                                                         for m in masks]), 1),
            **{f"ceiling_{g}x{g}": round(100 * grid_ceiling_miou(masks, g), 1)
               for g in (16, 32, 64)}}


def validate(path: Path, dataset: SceneTargets, prompts_per_target: int) -> dict:
    from stable_sam.build import build_stable_sam
    from stable_sam.families import base_predictor_for

    model = build_stable_sam("demo", sam_checkpoint=str(path)).eval()
    prompts = freeze_prompts(dataset, KINDS, prompts_per_target, model_image_size=DEMO_IMAGE_SIZE)
    predictor = base_predictor_for(model)
    with torch.no_grad():
        results = evaluate_masks(predictor, dataset, prompts, list(KINDS), follow=True)
    background = evaluate_background_boxes(predictor, dataset)

    def pct(value):
        return None if value != value else round(100 * value, 1)

    return {**{k: {"mIoU": pct(v["miou"]), "mSF": pct(v["msf"]),
                   "cross_agreement": pct(results["follow"][k]["cross_agreement"]),
                   "stable_but_wrong": pct(results["follow"][k]["stable_but_wrong"])}
               for k, v in results["kinds"].items()},
            "background_box_on_objects": pct(background["object_share"])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--train-scenes", type=int, default=1000)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--min-lr-ratio", type=float, default=0.1)
    parser.add_argument("--architecture", choices=sorted(ENCODERS), default="demo-sam/2")
    parser.add_argument("--scene-version", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--box-share", type=float, default=0.25)
    parser.add_argument("--grad-clip", type=float, default=0.0)
    # SAM's own recipe (BaseTrainConfig's box_jitter, click_share, correction_rounds), off
    parser.add_argument("--box-jitter", type=float, default=0.0,
                        help="std of each training-box coordinate's noise as a share of the side "
                             "(SAM: 0.1), capped at 20 px")
    parser.add_argument("--click-share", type=float, default=0.0,
                        help="share of steps prompted by one click under the multimask "
                             "ambiguity loss")
    parser.add_argument("--correction-rounds", type=int, default=0,
                        help="correction clicks from the error region per step, each with the "
                             "previous logits as a mask prompt")
    parser.add_argument("--targets-per-image", type=int, default=4)
    parser.add_argument("--images-per-step", type=int, default=4)
    parser.add_argument("--val-scenes", type=int, default=60)
    parser.add_argument("--prompts-per-target", type=int, default=5)
    parser.add_argument("--ceiling", action="store_true", help="only the grid ceilings")
    parser.add_argument("--out", default="runs/base_experiments")
    parser.add_argument("--log", default="runs/base_experiments/runs.jsonl")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    dataset = SceneTargets(VAL_SEED, args.val_scenes, args.scene_version, DEMO_IMAGE_SIZE)
    result = {"val_seed": VAL_SEED, "val_scenes": args.val_scenes, **ceilings(dataset)}
    if not args.ceiling:
        config = BaseTrainConfig(num_scenes=args.train_scenes, steps=args.steps, lr=args.lr,
                                 min_lr_ratio=args.min_lr_ratio, threads=args.threads,
                                 architecture=args.architecture,
                                 scene_version=args.scene_version,
                                 box_share=args.box_share, grad_clip=args.grad_clip,
                                 targets_per_image=args.targets_per_image,
                                 images_per_step=args.images_per_step,
                                 box_jitter=args.box_jitter, click_share=args.click_share,
                                 correction_rounds=args.correction_rounds)
        name = (f"{args.architecture.replace('/', '-')}_s{args.scene_version}_{args.steps}"
                f"_lr{args.lr:g}_min{args.min_lr_ratio:g}_box{args.box_share:g}_clip{args.grad_clip:g}"
                f"_{args.images_per_step}x{args.targets_per_image}_jit{args.box_jitter:g}"
                f"_click{args.click_share:g}_corr{args.correction_rounds}")
        path = Path(args.out) / f"{name}.safetensors"
        summary = train_base_sam(config, path, progress=False)
        started = time.perf_counter()
        result.update(config=asdict(config), train_seconds=round(summary["seconds"]),
                      train_iou=round(100 * summary["final_target_iou"], 1),
                      val=validate(path, dataset, args.prompts_per_target),
                      val_seconds=round(time.perf_counter() - started))
    print(json.dumps(result))
    append_json_line(args.log, result)


if __name__ == "__main__":
    main()
