"""`stable-sam visualize`: the paper's Figure 2/4 view, SAM vs Stable-SAM side by side.

Each panel shows the mask and, for the image tokens that layer 2's output mask token attends to
most (top-k), the points they sampled: the regular grid for SAM, the G deformed points per token
for Stable-SAM; the radius grows with the attention weight (same scale in both panels).
"""

import argparse

import numpy as np

from . import _common
from ..prompting import predict_best

HELP = "draw layer 2's sampling points and attention, SAM vs Stable-SAM, in one PNG"


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("visualize", help=HELP, description=HELP)
    _common.add_prompt_arguments(parser)
    _common.add_model_arguments(parser)
    parser.add_argument(
        "--top-k",
        type=int,
        default=32,
        help="image tokens to draw, by attention weight (default 32)",
    )
    parser.add_argument(
        "--multimask",
        action="store_true",
        help="predict three candidate masks and show the best-scored one",
    )
    return parser


def _to_image_pixels(
    locations: np.ndarray, grid_hw, input_hw, original_hw, img_size: int
) -> np.ndarray:
    """Embedding-grid (x, y) -> original-image pixels. Grid pixel j covers the input-frame
    square [j, j + 1) * patch (SAM pads the resized image to img_size at the bottom/right)."""
    patch_y, patch_x = img_size / grid_hw[0], img_size / grid_hw[1]
    scale_y, scale_x = input_hw[0] / original_hw[0], input_hw[1] / original_hw[1]
    out = np.empty_like(locations, dtype=np.float64)
    out[..., 0] = (locations[..., 0] + 0.5) * patch_x / scale_x
    out[..., 1] = (locations[..., 1] + 0.5) * patch_y / scale_y
    return out


def _panel(image, mask, prompts, points, weights, max_weight, title, color):
    import cv2

    out = _common.draw_prompts(_common.overlay_mask(image, mask), prompts)
    height, width = image.shape[:2]
    unit = max(height, width) / 100  # radii in % of the image's long side
    for pts, wgt in zip(points, weights):
        radius = max(1, int(round(unit * (0.4 + 2.0 * wgt / max_weight))))
        for x, y in pts:
            if 0 <= x < width and 0 <= y < height:
                cv2.circle(out, (int(x), int(y)), radius, color, -1, lineType=cv2.LINE_AA)
    scale = max(0.4, max(height, width) / 800)
    cv2.putText(
        out,
        title,
        (5, int(25 * scale) + 5),
        cv2.FONT_HERSHEY_SIMPLEX,
        scale,
        (255, 255, 255),
        max(1, int(2 * scale)),
        cv2.LINE_AA,
    )
    return out


def run(args) -> int:
    import torch

    from ..families import predictor_for

    if args.top_k < 1:
        raise _common.CliError(f"--top-k must be >= 1, is {args.top_k}")
    _common.check_model_arguments(args)
    (path,) = _common.output_paths(args, ("sampling",))
    image = _common.load_image(args.image, args.model_type)
    prompts = _common.parse_prompts(args, image.shape)
    _common.prepare_out_dir(args.out_dir)
    model = _common.build_model(args)
    predictor = predictor_for(model)
    with torch.inference_mode():
        predictor.set_image(image)
        views = [
            predict_best(predictor, prompts, args.multimask, use_plugins=use, return_extras=True)
            for use in (False, True)
        ]
    grid_hw = views[0][2]["attention"].shape
    k = min(args.top_k, grid_hw[0] * grid_hw[1])
    selections = []
    for _, _, extras in views:
        attention = extras["attention"].reshape(-1)
        top = np.argsort(-attention)[:k]
        locations = extras["sampling_locations"].reshape(
            -1, *extras["sampling_locations"].shape[-2:]
        )[top]
        points = _to_image_pixels(
            locations,
            grid_hw,
            predictor.input_size,
            predictor.original_size,
            model.image_encoder.img_size,
        )
        selections.append((points, attention[top]))
    max_weight = max(float(w.max()) for _, w in selections)
    alpha = views[1][2]["alpha"]
    panels = [
        _panel(
            image,
            views[0][0],
            prompts,
            *selections[0],
            max_weight,
            f"SAM  score {views[0][1]:.3f}",
            (255, 64, 64),
        ),
        _panel(
            image,
            views[1][0],
            prompts,
            *selections[1],
            max_weight,
            f"Stable-SAM  score {views[1][1]:.3f}  alpha {alpha[0]:.2f}/{alpha[1]:.2f}",
            (255, 215, 0),
        ),
    ]
    separator = np.full((image.shape[0], max(2, image.shape[1] // 100), 3), 255, dtype=np.uint8)
    figure = np.concatenate([panels[0], separator, panels[1]], axis=1)
    _common.write_png(path, figure)
    print(f"alpha (deformable, regular) = ({alpha[0]:.3f}, {alpha[1]:.3f}); top-{k} tokens drawn")
    print(f"wrote {path}")
    return 0
