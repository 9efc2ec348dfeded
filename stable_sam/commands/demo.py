"""`stable-sam demo`: the embedded default on a held-out generated scene, SAM vs Stable-SAM.

The demo model is a small model trained on generated scenes, to show the method; it is not a
segmenter for photographs. One PNG, two rows: a deliberately casual box (a noisy box, scale 0.4,
as the evaluation draws them) and one click; in each row SAM's mask and Stable-SAM's, with
layer 2's sampling points of the most-attended tokens (regular grid for SAM, deformed for
Stable-SAM).
"""

import argparse
import os

import numpy as np

from . import _common
from ..prompting import Prompts, predict_best

HELP = ("run the embedded demo model (a small model trained on generated scenes, to show the "
        "method, not a segmenter for photographs) on a held-out scene: SAM vs Stable-SAM from a "
        "casual box and one click, written as a PNG")
UPSCALE = 2  # the scenes are 256 px; drawn at twice that so the points are visible


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("demo", help=HELP, description=HELP)
    parser.add_argument("--scene", type=int, default=0,
                        help="index of the held-out scene (default 0)")
    parser.add_argument("--out-dir", default=".", help="output folder (created if missing)")
    parser.add_argument("--top-k", type=int, default=16,
                        help="image tokens whose sampling points are drawn (default 16)")
    parser.add_argument("--device", default="cpu", help="torch device (default cpu)")
    return parser


def casual_prompts(mask: np.ndarray, seed: int = 0):
    """A loose box (noisy, IoU with the GT box below 0.75) and one click on the object."""
    from ..data.prompts import box_iou, gt_box, noisy_box, positive_points

    rng = np.random.default_rng(seed)
    box = noisy_box(mask, rng)
    for _ in range(50):  # a box SAM already gets right shows nothing; keep a truly casual one
        if box_iou(box, gt_box(mask)) < 0.75:
            break
        box = noisy_box(mask, rng)
    coords, labels = positive_points(mask, 1, rng)
    return box, (coords, labels)


def _row(image, predictor, model, prompts, top_k, title):
    from .visualize import _panel, _to_image_pixels

    views = [predict_best(predictor, prompts, False, use_plugins=use, return_extras=True)
             for use in (False, True)]
    selections = []
    for _, _, extras in views:
        attention = extras["attention"].reshape(-1)
        top = np.argsort(-attention)[:top_k]
        locations = extras["sampling_locations"].reshape(
            -1, *extras["sampling_locations"].shape[-2:])[top]
        selections.append((_to_image_pixels(locations, extras["attention"].shape,
                                            predictor.input_size, predictor.original_size,
                                            model.image_encoder.img_size), attention[top]))
    top_weight = max(float(w.max()) for _, w in selections)
    panels = [_panel(image, views[i][0], prompts, *selections[i], top_weight,
                     f"{name}, {title}", colour)
              for i, (name, colour) in enumerate((("SAM", (255, 64, 64)),
                                                  ("Stable-SAM", (255, 215, 0))))]
    gap = np.full((image.shape[0], 6, 3), 255, np.uint8)
    return np.concatenate([panels[0], gap, panels[1]], axis=1), [v[0] for v in views]


def run(args) -> int:
    import cv2
    import torch

    from ..build import build_stable_sam
    from ..data._io import write_image_atomic
    from ..data.scenes import TEST_SEED, make_scene
    from ..families import predictor_for

    if args.scene < 0:
        raise _common.CliError(f"--scene must be >= 0, is {args.scene}")
    if args.top_k < 1:
        raise _common.CliError(f"--top-k must be >= 1, is {args.top_k}")
    out_dir = _common.prepare_out_dir(args.out_dir)
    scene = make_scene(TEST_SEED, args.scene)
    mask = scene.masks[scene.target]
    size = scene.image.shape[0] * UPSCALE
    image = cv2.resize(scene.image, (size, size), interpolation=cv2.INTER_CUBIC)
    mask = cv2.resize(mask.astype(np.uint8), (size, size), interpolation=cv2.INTER_NEAREST) > 0
    box, (coords, labels) = casual_prompts(mask)
    model = build_stable_sam("demo").to(args.device).eval()
    predictor = predictor_for(model)
    rows, ious = [], []
    with torch.inference_mode():
        predictor.set_image(image)
        for prompts, title in (
            (Prompts(box=box, point_coords=None, point_labels=None), "casual box"),
            (Prompts(box=None, point_coords=coords, point_labels=labels), "one click"),
        ):
            row, masks = _row(image, predictor, model, prompts, args.top_k, title)
            rows.append(row)
            ious.append([float((m & mask).sum() / max((m | mask).sum(), 1)) for m in masks])
    figure = np.concatenate([rows[0], np.full((6, rows[0].shape[1], 3), 255, np.uint8), rows[1]])
    path = os.path.join(out_dir, f"demo_scene_{args.scene}.png")
    write_image_atomic(path, figure)
    for (sam_iou, stable_iou), what in zip(ious, ("casual box", "one click")):
        print(f"{what}: IoU with the ground truth, SAM {sam_iou:.3f}, Stable-SAM {stable_iou:.3f}")
    print(f"wrote {path}")
    return 0
