"""Validation runs for the methods trained on a frozen demo base (issue 31's positive control):
train the chosen methods with the project's trainer on the training split, then score them and
the base on VAL_SEED's scenes only (never the held-out split). One line of JSON per run is
appended to --log.

    .venv/bin/python scripts/demo_plugin_experiments.py --base runs/exp/BASE.safetensors \
        --methods stable_sam dt_sam --samples 40000 --batch-size 32 --log runs/exp/plugins.jsonl
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from stable_sam.data._io import append_json_line
from stable_sam.data.scenes import VAL_SEED, SceneTargets
from stable_sam.evaluation.prompts import freeze_prompts
from stable_sam.evaluation.protocol import evaluate_masks
from stable_sam.evaluation.route_reliance import route_reliance
from stable_sam.families.demo.build import DEMO_IMAGE_SIZE
from stable_sam.reproduction import pipeline

KINDS = ("box", "noisy_box", "points1")


def score(predictor, dataset, prompts) -> dict:
    with torch.no_grad():
        results = evaluate_masks(predictor, dataset, prompts, list(KINDS), follow=True)

    def pct(value):
        return None if value != value else round(100 * value, 1)

    return {k: {"mIoU": pct(v["miou"]), "mSF": pct(v["msf"]),
                "cross_agreement": pct(results["follow"][k]["cross_agreement"])}
            for k, v in results["kinds"].items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", required=True, help="a demo base SAM (safetensors)")
    parser.add_argument("--methods", nargs="+", default=["stable_sam"],
                        choices=pipeline.METHODS)
    parser.add_argument("--samples", type=int, default=40000, help="prompted samples per method")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--occlusion", type=float, default=0.25)
    parser.add_argument("--num-points", type=int, default=48 * 48,
                        help="points per mask of the trainer's point loss (its default, 112 x 112, "
                        "is for 256 x 256 logits; the demo's are 64 x 64)")
    parser.add_argument("--kinds", nargs="+", default=None,
                        help="train on these RTS prompt kinds only, equally weighted")
    parser.add_argument("--train-scenes", type=int, default=1000)
    parser.add_argument("--val-scenes", type=int, default=20)
    parser.add_argument("--prompts-per-target", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--reliance", action="store_true", help="also the base's route reliance")
    parser.add_argument("--out", default="runs/plugin_experiments")
    parser.add_argument("--log", default="runs/plugin_experiments/runs.jsonl")
    parser.add_argument("--tag", default="", help="a name for this run in the log")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    base = Path(args.base)
    dataset = SceneTargets(VAL_SEED, args.val_scenes, 2, DEMO_IMAGE_SIZE)
    prompts = freeze_prompts(dataset, KINDS, args.prompts_per_target,
                             model_image_size=DEMO_IMAGE_SIZE)
    result = {"tag": args.tag, "base": str(base), "val_seed": VAL_SEED,
              "val_scenes": args.val_scenes, "samples": args.samples,
              "batch_size": args.batch_size, "lr": args.lr, "occlusion": args.occlusion,
              "num_points": args.num_points, "kinds": args.kinds,
              "methods": {}}
    _, predictor = pipeline.load_method("sam", base, None)
    result["methods"]["sam"] = score(predictor, dataset, prompts)
    if args.reliance:
        result["site_reliance"] = route_reliance(predictor, dataset, prompts, ("box", "noisy_box"))
    train_dir = pipeline.prepare_scenes(out, args.train_scenes)["train"]
    steps = max(1, args.samples // args.batch_size)
    run_dir = out / f"{base.stem}_{args.tag or 'run'}_{args.samples}x{args.batch_size}_lr{args.lr:g}"
    rts = {"occlusion_probability": args.occlusion}
    if args.kinds:
        rts["weights"] = {k: 1.0 for k in args.kinds}
    for method in args.methods:
        started = time.perf_counter()
        weights = pipeline.train_methods(
            run_dir, base, train_dir, methods=(method,), threads=args.threads, steps=steps,
            batch_size=args.batch_size, lr=args.lr, lsj=False, cache_embeddings=True,
            num_points=args.num_points, rts=rts)[method]
        seconds = time.perf_counter() - started
        _, predictor = pipeline.load_method(method, base, weights)
        result["methods"][method] = {**score(predictor, dataset, prompts),
                                     "train_seconds": round(seconds)}
        print(json.dumps({method: result["methods"][method]}), flush=True)
    print(json.dumps(result))
    append_json_line(args.log, result)


if __name__ == "__main__":
    main()
