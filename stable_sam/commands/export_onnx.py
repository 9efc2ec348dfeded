"""`stable-sam export-onnx --output decoder.onnx [--encoder-output encoder.onnx]`: the decoder
with segment_anything's exported-decoder interface (plugins included), and the image encoder."""

import argparse
import importlib.util  # noqa: F401 - tests fake a missing onnx package through it
import os

from . import CliError, _common

HELP = "export the decoder (and the image encoder) to ONNX for onnxruntime and SAM tools"
ONNX_PACKAGES = ("onnx", "onnxruntime", "onnxscript")


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("export-onnx", help=HELP, description=HELP)
    _common.add_model_arguments(parser)
    parser.add_argument(
        "--output", required=True, help="decoder file (prompt encoder + mask decoder + plugins)"
    )
    parser.add_argument(
        "--encoder-output", help="also write the image encoder (with its preprocessing) here"
    )
    parser.add_argument("--opset", type=int, default=None, help="ONNX opset (default 18)")
    parser.add_argument(
        "--return-single-mask",
        action="store_true",
        help="return the best mask only (multimask for 1-2 points, the single mask for more)",
    )
    parser.add_argument(
        "--gelu-approximate",
        action="store_true",
        help="tanh GELU in SAM's MLPs, for runtimes without a fast erf",
    )
    parser.add_argument(
        "--use-stability-score",
        action="store_true",
        help="replace the predicted IoUs with the masks' stability scores",
    )
    parser.add_argument(
        "--return-extra-metrics",
        action="store_true",
        help="also output stability_scores and areas (outputs: masks, iou_predictions, "
        "stability_scores, areas, low_res_masks)",
    )
    parser.add_argument("--quantize-out", help="also write a uint8 dynamically quantized decoder")
    parser.add_argument(
        "--sampling",
        choices=("gather", "grid_sample"),
        default="gather",
        help="ONNX form of the deformable sampling (default gather; see the README)",
    )
    parser.add_argument("--no-plugins", action="store_true", help="export plain SAM")
    parser.add_argument("--overwrite", action="store_true", help="replace existing output files")
    return parser


def _check_outputs(args) -> None:
    flags = {"--output": args.output}
    if args.encoder_output is not None:
        flags["--encoder-output"] = args.encoder_output
    if args.quantize_out is not None:
        flags["--quantize-out"] = args.quantize_out
    seen = {}
    for flag, path in flags.items():
        real = os.path.realpath(path)
        if real in seen:
            raise CliError(f"{flag} and {seen[real]} are the same file {path!r}")
        seen[real] = flag
        folder = os.path.dirname(real)
        if not os.path.isdir(folder):
            raise CliError(f"{flag} {path!r}: folder {folder!r} does not exist")
        _common.check_output_file(flag, path, args.overwrite)


def check_onnx_extra() -> None:
    """The onnx extra's packages are installed and import (an incompatible onnxruntime raises
    on import: said now, not as a traceback halfway through the export)."""
    from ..optional_imports import describe_failures, failing_imports, not_installed

    missing = not_installed(ONNX_PACKAGES)
    if missing:
        raise CliError(
            f"missing {', '.join(missing)}: install the onnx extra (pip install 'stable-sam[onnx]')"
        )
    failures = failing_imports(ONNX_PACKAGES)
    if failures:
        raise CliError(f"the ONNX export: {describe_failures(failures)}; the onnx extra's "
                       "versions: pip install 'stable-sam[onnx]'")


def check_args(args) -> None:
    """Every check that needs no model: options, output paths, the onnx extra, the compiled op."""
    check_onnx_extra()
    if args.device not in (None, "cpu"):
        raise CliError(f"the export runs on the CPU; --device must be cpu, is {args.device!r}")
    from ..export import DEFAULT_OPSET, check_export_options

    if args.opset is None:
        args.opset = DEFAULT_OPSET
    try:
        check_export_options(args.opset, args.sampling)
    except (ValueError, RuntimeError) as exc:
        raise CliError(str(exc)) from None
    from ..families import family_of

    if family_of(args.model_type).name == "sam2" and (
            args.use_stability_score or args.return_extra_metrics):
        raise CliError("--use-stability-score and --return-extra-metrics are options of SAM's "
                       "decoder interface; a SAM 2 decoder file outputs masks and iou_predictions")
    _check_outputs(args)
    _common.check_model_arguments(args)


def run(args) -> int:
    check_args(args)
    from ..export import export_decoder_onnx, export_encoder_onnx

    args.device = "cpu"
    model = _common.build_model(args)
    export_decoder_onnx(
        model,
        args.output,
        opset=args.opset,
        return_single_mask=args.return_single_mask,
        use_stability_score=args.use_stability_score,
        return_extra_metrics=args.return_extra_metrics,
        gelu_approximate=args.gelu_approximate,
        use_plugins=not args.no_plugins,
        sampling=args.sampling,
        quantize_path=args.quantize_out,
    )
    print(f"wrote {args.output}")
    if args.quantize_out is not None:
        print(f"wrote {args.quantize_out}")
    if args.encoder_output is not None:
        export_encoder_onnx(model, args.encoder_output, opset=args.opset)
        print(f"wrote {args.encoder_output}")
    return 0
