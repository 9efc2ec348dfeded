"""`stable-sam demo`: the embedded default on held-out generated scenes, SAM vs Stable-SAM.

The demo model is a small model trained on generated scenes, to show the method; it is not a
segmenter for photographs. By default one PNG, `demo_grid.png`: the first eight held-out scenes
(chosen by index, never by result), each with one casual box (a noisy box, scale 0.4, as the
evaluation draws them) and one click, both drawn from the fixed seed (PROMPT_SEED, scene) and
never redrawn, so failures show as often as they happen; SAM's and Stable-SAM's masks side by
side, and the published table's numbers (benchmarks/reproduction.json) in the caption.

`--scene N` draws one scene in detail instead (`demo_scene_N.png`): two rows, the same box and
click, with layer 2's sampling points of the most-attended tokens (a regular grid for SAM,
deformed for Stable-SAM).
"""

import argparse
import json
import os
from pathlib import Path

import numpy as np

from . import _common
from ..prompting import Prompts, predict_best

HELP = ("run the embedded demo model (a small model trained on generated scenes, to show the "
        "method, not a segmenter for photographs) on held-out scenes: SAM vs Stable-SAM from a "
        "casual box and one click, written as a PNG")
UPSCALE = 2  # the scenes are 256 px; drawn at twice that so the points are visible
GRID_SCENES = tuple(range(8))  # the first eight held-out scenes: a rule blind to the results
PROMPT_SEED = 0  # each scene's prompts come from numpy's default_rng((PROMPT_SEED, scene))
TABLE = Path("benchmarks") / "reproduction.json"  # the published table, in a source checkout
TABLE_KINDS = (("noisy_box", "casual box"), ("points1", "one click"))


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("demo", help=HELP, description=HELP)
    parser.add_argument("--scene", type=int, default=None,
                        help="draw this held-out scene (0 to 49) in detail instead of the grid "
                        "of the first eight")
    parser.add_argument("--out-dir", default=".", help="output folder (created if missing)")
    parser.add_argument("--top-k", type=int, default=16,
                        help="with --scene: image tokens whose sampling points are drawn "
                        "(default 16)")
    parser.add_argument("--device", default="cpu", help="torch device (default cpu)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace the picture if it exists (refused without it)")
    return parser


def scene_prompts(mask: np.ndarray, scene: int):
    """The demo's prompts for held-out scene `scene`: a noisy box as the evaluation draws it and
    one click on the object, from the seed (PROMPT_SEED, scene), taken as drawn."""
    from ..data.prompts import noisy_box, positive_points

    rng = np.random.default_rng((PROMPT_SEED, scene))
    box = noisy_box(mask, rng)
    coords, labels = positive_points(mask, 1, rng)
    return box, (coords, labels)


def casual_prompts(mask: np.ndarray, seed: int = 0):
    """A loose box (noisy, redrawn until its IoU with the GT box is below 0.75) and one click
    on the object: the serve page's "Casual box" (the demo's grid takes `scene_prompts` as
    drawn, without the redraw)."""
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


def published_table():
    """{kind: {method: (mIoU, mSF)}} of the published table for the shipped weights, or None
    where it is not there (an installed package has no benchmarks/)."""
    import stable_sam

    path = Path(stable_sam.__file__).resolve().parents[1] / TABLE
    try:
        methods = json.loads(path.read_text(encoding="utf-8"))["methods"]
        return {kind: {m: (methods[m]["kinds"][kind]["mIoU"], methods[m]["kinds"][kind]["mSF"])
                       for m in ("sam", "stable_sam")} for kind, _ in TABLE_KINDS}
    except (OSError, ValueError, KeyError, TypeError):
        return None


def check_arguments(args) -> str:
    """Every argument and the output, before the model is built; returns the output path."""
    from ..reproduction.pipeline import NUM_TEST_SCENES

    if args.scene is not None and not 0 <= args.scene < NUM_TEST_SCENES:
        raise _common.CliError(f"--scene must be >= 0 and <= {NUM_TEST_SCENES - 1} (the "
                               f"held-out split's scenes), is {args.scene}")
    if args.top_k < 1:
        raise _common.CliError(f"--top-k must be >= 1, is {args.top_k}")
    _common.check_device(args.device)
    if os.path.exists(args.out_dir) and not os.path.isdir(args.out_dir):
        raise _common.CliError(f"--out-dir {args.out_dir!r} is a file, not a folder")
    name = "demo_grid.png" if args.scene is None else f"demo_scene_{args.scene}.png"
    path = os.path.join(args.out_dir, name)
    if os.path.isdir(path):
        raise _common.CliError(f"output {path!r} is a folder")
    if os.path.exists(path) and not args.overwrite:
        raise _common.CliError(f"output {path!r} exists; pass --overwrite to replace it")
    return path


def run(args) -> int:
    import torch

    from ..build import build_stable_sam
    from ..families import predictor_for

    path = check_arguments(args)
    _common.prepare_out_dir(args.out_dir)
    model = build_stable_sam("demo").to(args.device).eval()
    predictor = predictor_for(model)
    with torch.inference_mode():
        figure = (_grid(predictor) if args.scene is None
                  else _one_scene(predictor, model, args.scene, args.top_k))
    _common.write_png(path, figure)  # Pillow's PNG: a third of OpenCV's default size here
    print(f"wrote {path}")
    return 0


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


def _one_scene(predictor, model, index: int, top_k: int) -> np.ndarray:
    import cv2

    from ..data.scenes import held_out_scene

    scene = held_out_scene(index)
    box, (coords, labels) = scene_prompts(scene.masks[scene.target], index)
    size = scene.image.shape[0] * UPSCALE
    image = cv2.resize(scene.image, (size, size), interpolation=cv2.INTER_CUBIC)
    mask = cv2.resize(scene.masks[scene.target].astype(np.uint8), (size, size),
                      interpolation=cv2.INTER_NEAREST) > 0
    predictor.set_image(image)
    rows = []
    for prompts, title in (
        (Prompts(box=box * UPSCALE, point_coords=None, point_labels=None), "casual box"),
        (Prompts(box=None, point_coords=coords * UPSCALE, point_labels=labels), "one click"),
    ):
        row, masks = _row(image, predictor, model, prompts, top_k, title)
        rows.append(row)
        sam_iou, stable_iou = (_iou(m, mask) for m in masks)
        print(f"{title}: IoU with the ground truth, SAM {sam_iou:.3f}, Stable-SAM "
              f"{stable_iou:.3f}")
    return np.concatenate([rows[0], np.full((6, rows[0].shape[1], 3), 255, np.uint8), rows[1]])


def _grid(predictor) -> np.ndarray:
    """One row per scene of GRID_SCENES: SAM and Stable-SAM from its box, then from its click;
    the rule and the published numbers on top."""
    from ..data.scenes import held_out_scene

    rows, ious = [], []
    for index in GRID_SCENES:
        scene = held_out_scene(index)
        mask = scene.masks[scene.target]
        box, (coords, labels) = scene_prompts(mask, index)
        predictor.set_image(scene.image)
        panels, row_ious = [], []
        for prompts in (Prompts(box=box, point_coords=None, point_labels=None),
                        Prompts(box=None, point_coords=coords, point_labels=labels)):
            for use_plugins in (False, True):
                predicted, _, _ = predict_best(predictor, prompts, False,
                                               use_plugins=use_plugins)
                row_ious.append(_iou(predicted, mask))
                panels.append(_grid_panel(scene.image, predicted, mask, prompts,
                                          f"scene {index}  IoU {row_ious[-1]:.2f}"))
        rows.append(_hstack(panels))
        ious.append(row_ious)
        print(f"scene {index}: IoU casual box SAM {row_ious[0]:.3f}, Stable-SAM "
              f"{row_ious[1]:.3f}; one click SAM {row_ious[2]:.3f}, Stable-SAM "
              f"{row_ious[3]:.3f}")
    caption = _caption(np.mean(ious, axis=0))
    for line in caption:
        print(line)
    width, panel_width = rows[0].shape[1], panels[0].shape[1]
    titles = _hstack([_text_strip(panel_width, [t]) for t in (
        "SAM, casual box", "Stable-SAM, casual box", "SAM, one click", "Stable-SAM, one click")])
    parts = [_text_strip(width, caption), titles]
    for row in rows:
        parts += [row, np.full((4, width, 3), 255, np.uint8)]
    return np.concatenate(parts[:-1])


def _caption(mean_ious) -> list:
    from ..reproduction.pipeline import NUM_TEST_SCENES

    table = published_table()
    lines = [f"Demo model (generated scenes, not photographs): held-out scenes "
             f"{GRID_SCENES[0]}-{GRID_SCENES[-1]}, the first eight by index, not chosen by result.",
             f"Prompts: one noisy box (the evaluation's, scale 0.4) and one click per scene from "
             f"seed ({PROMPT_SEED}, scene), none redrawn.",
             "Blue: predicted mask; white: ground-truth outline; green: the prompt.",
             f"These eight: mean IoU casual box SAM {mean_ious[0]:.2f}, Stable-SAM "
             f"{mean_ious[1]:.2f}; one click SAM {mean_ious[2]:.2f}, Stable-SAM "
             f"{mean_ious[3]:.2f}."]
    if table is None:
        return lines + [f"Published table: {TABLE} is not there (it ships with a source "
                        "checkout)."]
    lines.append(f"Published table ({TABLE}, all {NUM_TEST_SCENES} held-out scenes, frozen "
                 "prompts):")
    for kind, title in TABLE_KINDS:
        (sam_miou, sam_msf), (ours_miou, ours_msf) = table[kind]["sam"], table[kind]["stable_sam"]
        lines.append(f"  {title}: SAM mIoU {_number(sam_miou)}, mSF {_number(sam_msf)}; "
                     f"Stable-SAM mIoU {_number(ours_miou)}, mSF {_number(ours_msf)}")
    return lines


def _number(value) -> str:
    return "-" if value is None else f"{value:.1f}"


def _grid_panel(image, predicted, mask, prompts, label) -> np.ndarray:
    import cv2

    out = _common.draw_prompts(_common.overlay_mask(image, predicted), prompts)
    outline = mask.astype(np.uint8)
    contours, _ = cv2.findContours(outline, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    cv2.drawContours(out, contours, -1, (255, 255, 255), 1)
    return np.concatenate([out, _text_strip(out.shape[1], [label])])


def _text_strip(width: int, lines: list) -> np.ndarray:
    import cv2

    line_height = 18
    strip = np.full((line_height * len(lines) + 6, width, 3), 255, np.uint8)
    for i, line in enumerate(lines):
        cv2.putText(strip, line, (4, line_height * (i + 1)), cv2.FONT_HERSHEY_SIMPLEX, 0.45,
                    (0, 0, 0), 1, cv2.LINE_AA)
    return strip


def _hstack(panels: list) -> np.ndarray:
    gap = np.full((panels[0].shape[0], 4, 3), 255, np.uint8)
    out = [panels[0]]
    for panel in panels[1:]:
        out += [gap, panel]
    return np.concatenate(out, axis=1)
