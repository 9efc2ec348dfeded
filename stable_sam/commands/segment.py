"""`stable-sam segment IMAGE --box ... | --points ...`: a mask PNG and an overlay PNG."""

import argparse

from . import _common
from ..prompting import predict_best

HELP = "segment one object from a box and/or point prompts"


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("segment", help=HELP, description=HELP)
    _common.add_prompt_arguments(parser)
    _common.add_model_arguments(parser)
    parser.add_argument(
        "--multimask",
        action="store_true",
        help="predict SAM's three candidate masks and keep the best-scored one",
    )
    parser.add_argument("--no-plugins", action="store_true", help="plain SAM (for comparison)")
    return parser


def run(args) -> int:
    import torch

    from ..families import predictor_for

    _common.check_model_arguments(args)
    mask_path, overlay_path = _common.output_paths(args, ("mask", "overlay"))
    image = _common.load_image(args.image, args.model_type)
    prompts = _common.parse_prompts(args, image.shape)
    _common.prepare_out_dir(args.out_dir)
    model = _common.build_model(args)
    predictor = predictor_for(model)
    with torch.inference_mode():
        predictor.set_image(image)
        mask, score, _ = predict_best(
            predictor, prompts, args.multimask, use_plugins=not args.no_plugins
        )

    _common.write_png(mask_path, mask.astype("uint8") * 255)
    _common.write_png(
        overlay_path, _common.draw_prompts(_common.overlay_mask(image, mask), prompts)
    )
    print(f"score {score:.4f}, {int(mask.sum())} foreground pixels")
    print(f"wrote {mask_path}")
    print(f"wrote {overlay_path}")
    return 0
