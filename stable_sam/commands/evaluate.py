r"""`stable-sam evaluate`: mIoU / mBIoU / mSF under frozen prompts (and COCO mask mAP).

    stable-sam evaluate --model-type vit_l --sam-checkpoint sam_vit_l_0b3195.pth \
        --plugin-checkpoint stable_sam_vit_l.safetensors \
        --data hqseg44k-val data --prompts prompts_hqseg_val.json --out eval/

The prompts file is created on the first run (then reused, so every model sees the same
prompts). Results accumulate per model in OUT/results.json and OUT/results.md. Under torchrun
the images are sharded over ranks; rank 0 writes the files.

--worst-box also searches, per target and tau, the box near the GT box (IoU with it >= tau)
that gives the model's lowest mask IoU and the one that gives its highest, by gradient on the
box (stable_sam.evaluation.worst_box), and adds IoU-Min / IoU-Base / IoU-Max / Delta per tau to
the row, with 95 % bootstrap intervals over images.
"""
import argparse
import os
import sys

from . import CliError
from ._common import add_model_arguments, model_image_size

DATA_FORMS = ("hqseg DIR [DIR ...]", "hqseg44k-val ROOT", "coco IMAGE_DIR ANN_FILE")
# WorstBoxConfig's defaults for --help, repeated: a command module imports no torch at module level
# (stable_sam.commands); test_worst_box_command keeps the two equal
WORST_BOX_DEFAULTS = {"steps": 3, "starts": 3, "time_budget_s": 10.0}
WORST_BOX_OPTIONS = ("--worst-box-tau", "--worst-box-steps", "--worst-box-starts",
                     "--worst-box-time-budget")


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "evaluate", help="accuracy and stability under frozen noisy prompts",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_arguments(parser)
    parser.add_argument("--no-plugins", action="store_true",
                        help="evaluate plain SAM (the plugins are bypassed)")
    parser.add_argument("--data", nargs="+", required=True, metavar="ARG",
                        help="one of: " + " | ".join(DATA_FORMS) + " (DIR holds im/ and gt/; "
                             "ROOT is HQ-SAM's data/ folder)")
    parser.add_argument("--prompts", required=True,
                        help="frozen prompts JSON; created (atomically) if it does not exist")
    parser.add_argument("--out", required=True, help="output folder for results.{json,md}")
    parser.add_argument("--kinds", nargs="+", default=None,
                        help="prompt settings: box noisy_box points1 points3 points5 points10 "
                             "coarse_mask nbox_LOW-HIGH (default: HQSeg: box noisy_box points1/3/"
                             "5/10; COCO: nbox_0.5-0.6 nbox_0.6-0.7 noisy_box points1)")
    parser.add_argument("--prompts-per-image", type=int, default=20,
                        help="prompts per target and kind when freezing (default 20)")
    parser.add_argument("--seed", type=int, default=0, help="prompt seed when freezing")
    parser.add_argument("--model-name", default=None,
                        help="row label (default: 'SAM vit_b' or 'Stable-SAM vit_b')")
    parser.add_argument("--batch-size", type=int, default=20,
                        help="prompts per decoder call (lower it for very large images)")
    parser.add_argument("--min-area", type=float, default=0.0,
                        help="COCO: skip annotations smaller than this (pixels)")
    parser.add_argument("--coco-score", choices=("iou", "one"), default="iou",
                        help="COCO detection score: predicted IoU (default) or 1.0")
    parser.add_argument("--progress", action="store_true", help="show a progress bar")
    worst = parser.add_argument_group("worst-case boxes (--worst-box)")
    worst.add_argument("--worst-box", action="store_true",
                       help="also search each target's worst and best box near its GT box: "
                            "IoU-Min / IoU-Base / IoU-Max / Delta per tau")
    worst.add_argument("--worst-box-tau", nargs="+", type=float, default=None, metavar="TAU",
                       help="the boxes' least IoU with the GT box, one search each "
                            "(default 0.5 0.7)")
    worst.add_argument("--worst-box-steps", type=int, default=None,
                       help=f"gradient steps per start and direction (default "
                            f"{WORST_BOX_DEFAULTS['steps']})")
    worst.add_argument("--worst-box-starts", type=int, default=None,
                       help=f"starts: the GT box and noisy boxes (default "
                            f"{WORST_BOX_DEFAULTS['starts']})")
    worst.add_argument("--worst-box-time-budget", type=float, default=None, metavar="SECONDS",
                       help=f"per target; a search cut short is counted as truncated (default "
                            f"{WORST_BOX_DEFAULTS['time_budget_s']:g})")
    parser.set_defaults(command="evaluate")
    return parser


def build_datasets(data: list, min_area: float = 0.0) -> tuple[list, str]:
    """--data values -> (datasets, "hqseg" | "coco")."""
    from ..data import CocoInstanceDataset, HQSegDataset, hqseg44k_datasets

    form, rest = data[0], data[1:]
    if form == "hqseg" and rest:
        names = [os.path.basename(os.path.normpath(d)) for d in rest]
        if len(set(names)) != len(names):
            raise CliError(f"--data hqseg: folder names must differ (they name the rows): {names}")
        return [HQSegDataset(d, name=n) for d, n in zip(rest, names)], "hqseg"
    if form == "hqseg44k-val" and len(rest) == 1:
        return hqseg44k_datasets(rest[0], "val"), "hqseg"
    if form == "coco" and len(rest) == 2:
        return [CocoInstanceDataset(rest[0], rest[1], min_area=min_area)], "coco"
    raise CliError(f"--data must be one of: {' | '.join(DATA_FORMS)}; got {' '.join(data)!r}")


def _init_distributed():
    import torch

    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.distributed.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        torch.distributed.init_process_group(backend)
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    if torch.distributed.is_initialized():
        return torch.distributed.get_rank()
    return 0


def build_predictors(args):
    """(the evaluation's predictor, the worst-box search's or None): plain SAM's own predictor
    with --no-plugins; the search always drives the Stable-SAM predictor (plugins switched off
    for --no-plugins), the one with a gradient path and the plugin switch."""
    from ..families import base_predictor_for, predictor_for
    from ._common import build_model

    model = build_model(args)
    predictor = base_predictor_for(model) if args.no_plugins else predictor_for(model)
    if not args.worst_box:
        return predictor, None
    return predictor, (predictor if not args.no_plugins else predictor_for(model))


def worst_box_settings(args):
    """(taus, WorstBoxConfig) from the --worst-box-* options (checked by check_arguments)."""
    from ..evaluation.worst_box import DEFAULT_TAUS, WorstBoxConfig

    given = {"steps": args.worst_box_steps, "starts": args.worst_box_starts,
             "time_budget_s": args.worst_box_time_budget}
    config = WorstBoxConfig(**{k: v for k, v in given.items() if v is not None})
    return tuple(args.worst_box_tau or DEFAULT_TAUS), config


MAX_PROMPTS_PER_IMAGE = 1000
MAX_BATCH_SIZE = 4096


def frozen_prompts_for(datasets: list, args, default_kinds, rank: int,
                       model_image_size: int) -> dict:
    """Loads --prompts and checks it against the datasets, or freezes them (rank 0 writes;
    every rank freezes the same prompts)."""
    from ..evaluation import freeze_prompts, load_prompts, save_prompts
    from ..evaluation.prompts_check import check_prompts, fingerprinted

    if os.path.exists(args.prompts):
        try:
            prompts = load_prompts(args.prompts)
            check_prompts(prompts, datasets, args.kinds, model_image_size, args.prompts)
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            detail = str(exc) if isinstance(exc, ValueError) else f"malformed ({exc!r})"
            raise CliError(detail if args.prompts in detail
                           else f"prompts file {args.prompts}: {detail}") from None
        return prompts
    kinds = args.kinds or default_kinds
    frozen = [fingerprinted(freeze_prompts, d, kinds, args.prompts_per_image, args.seed,
                            model_image_size=model_image_size) for d in datasets]
    if rank == 0:
        save_prompts(args.prompts, frozen)
        print(f"froze prompts for {[d.name for d in datasets]} into {args.prompts}",
              file=sys.stderr)
    return {f["dataset"]: f for f in frozen}


def check_arguments(args) -> None:
    """Every argument and output checked before a dataset, a model or a prompt is touched."""
    import math

    from ..evaluation.prompts import _kind_spec
    from ..evaluation.report import read_results
    from ._common import check_model_arguments

    if not 1 <= args.prompts_per_image <= MAX_PROMPTS_PER_IMAGE:
        raise CliError(f"--prompts-per-image must be in 1..{MAX_PROMPTS_PER_IMAGE}, is "
                       f"{args.prompts_per_image}")
    if not 1 <= args.batch_size <= MAX_BATCH_SIZE:
        raise CliError(f"--batch-size must be in 1..{MAX_BATCH_SIZE}, is {args.batch_size}")
    if not (math.isfinite(args.min_area) and args.min_area >= 0):
        raise CliError(f"--min-area must be finite and >= 0, is {args.min_area}")
    for kind in args.kinds or ():
        try:
            _kind_spec(kind)
        except ValueError as exc:
            raise CliError(f"--kinds: {exc}") from None
    if args.kinds is not None and len(set(args.kinds)) != len(args.kinds):
        raise CliError(f"--kinds names a kind twice: {args.kinds}")
    check_worst_box_arguments(args)
    check_model_arguments(args)
    try:
        read_results(args.out)
    except ValueError as exc:
        raise CliError(f"--out: {exc}") from None
    prompts_dir = os.path.dirname(os.path.abspath(args.prompts))
    if os.path.isdir(args.prompts):
        raise CliError(f"--prompts {args.prompts!r} is a folder; give a JSON file name")
    if os.path.lexists(args.prompts) and not os.path.isfile(args.prompts):
        raise CliError(f"--prompts {args.prompts!r} is not a regular file (a FIFO, socket or "
                       "device); give a JSON file name")
    if os.path.exists(prompts_dir) and not os.path.isdir(prompts_dir):
        raise CliError(f"--prompts {args.prompts!r}: {prompts_dir} is a file, not a folder")
    for what, folder in (("--out", args.out), ("--prompts", prompts_dir)):
        existing = folder
        while not os.path.exists(existing):
            existing = os.path.dirname(existing) or "."
        if not os.path.isdir(existing) or not os.access(existing, os.W_OK | os.X_OK):
            raise CliError(f"{what}: {existing!r} is not a writable folder")


def check_worst_box_arguments(args) -> None:
    """--worst-box-* values in range, and only with --worst-box (a search option without the
    search would silently do nothing)."""
    import math

    from ..evaluation.worst_box import MAX_STARTS, MAX_STEPS, check_taus

    given = [flag for flag in WORST_BOX_OPTIONS
             if getattr(args, flag[2:].replace("-", "_")) is not None]
    if given and not args.worst_box:
        raise CliError(f"{given[0]} needs --worst-box")
    if args.worst_box_tau is not None:
        try:
            check_taus(args.worst_box_tau)
        except ValueError as exc:
            raise CliError(f"--worst-box-tau: {exc}") from None
    for flag, value, low, high in (("--worst-box-steps", args.worst_box_steps, 0, MAX_STEPS),
                                   ("--worst-box-starts", args.worst_box_starts, 1, MAX_STARTS)):
        if value is not None and not low <= value <= high:
            raise CliError(f"{flag} must be in {low}..{high}, is {value}")
    budget = args.worst_box_time_budget
    if budget is not None and not (math.isfinite(budget) and budget > 0):
        raise CliError(f"--worst-box-time-budget must be a finite number of seconds > 0, "
                       f"is {budget}")


def run(args) -> int:
    from ..evaluation import COCO_KINDS, HQSEG_KINDS, evaluate_masks, write_results

    check_arguments(args)
    rank = _init_distributed()
    try:
        datasets, form = build_datasets(args.data, args.min_area)
    except ValueError as exc:
        raise CliError(str(exc)) from exc
    default_kinds = COCO_KINDS if form == "coco" else HQSEG_KINDS
    prompts = frozen_prompts_for(datasets, args, default_kinds, rank,
                                 model_image_size(args.model_type))
    predictor, worst_predictor = build_predictors(args)
    model_name = args.model_name or (
        f"{'SAM' if args.no_plugins else 'Stable-SAM'} {args.model_type}")
    try:
        results = [evaluate_masks(predictor, d, prompts[d.name], args.kinds,
                                  batch_size=args.batch_size, coco_score=args.coco_score,
                                  progress=args.progress) for d in datasets]
        if worst_predictor is not None:
            from ..evaluation.worst_box_rows import evaluate_worst_boxes

            taus, config = worst_box_settings(args)
            for result, dataset in zip(results, datasets):
                result["worst_box"] = evaluate_worst_boxes(
                    worst_predictor, dataset, taus=taus, config=config,
                    use_plugins=not args.no_plugins, seed=args.seed, progress=args.progress)
    except ValueError as exc:
        raise CliError(str(exc)) from exc
    if rank == 0:
        json_path, md_path = write_results(args.out, model_name, results, extra={
            "model_type": args.model_type, "sam_checkpoint": args.sam_checkpoint,
            "plugin_checkpoint": None if args.no_plugins else args.plugin_checkpoint,
            "prompts": os.path.abspath(args.prompts)})
        print(md_path.read_text(encoding="utf-8"))
        print(f"wrote {json_path} and {md_path}", file=sys.stderr)
    return 0
