"""`stable-sam train`: robust training of the Stable-SAM plugins (or a DT-SAM / PT-SAM baseline).

Single process (CPU or one GPU):

    stable-sam train --model-type vit_l --sam-checkpoint sam_vit_l_0b3195.pth \\
        --hqseg44k-root data --out runs/stable_sam_vit_l

Several GPUs on one node (DDP; --batch-size is per process):

    torchrun --standalone --nproc_per_node 8 -m stable_sam.cli train --model-type vit_l \\
        --sam-checkpoint sam_vit_l_0b3195.pth --hqseg44k-root data --batch-size 4 \\
        --out runs/stable_sam_vit_l

Resume (same --out; the checkpoint's config is reused, --steps/--epochs may be extended):

    stable-sam train --out runs/stable_sam_vit_l --resume

Tiny CPU demo (random `tiny` SAM, generated shapes written to OUT/synthetic_data):

    stable-sam train --preset tiny --out runs/tiny

Settings are layered: TrainConfig defaults < --preset < --config JSON < explicit flags.
"""
import argparse
import json
import os
import sys

from . import CliError
from ._common import EMBEDDED_MODEL_TYPES, MODEL_TYPES, RANDOM_MODEL_TYPES

HELP = "train the Stable-SAM plugins (or the DT-SAM / PT-SAM baselines) with robust prompts"

METHODS = ("stable_sam", "stable_sam_no_drp", "stable_sam_no_rts", "stable_sam_no_drp_no_rts",
           "dt_sam", "dt_sam_no_rts", "pt_sam", "pt_sam_no_rts")

# (flag dest, TrainConfig field): flags left at None do not override the layers below them.
_FLAG_FIELDS = {
    "model_type": "model_type", "sam_checkpoint": "sam_checkpoint",
    "plugin_checkpoint": "plugin_checkpoint", "method": "method", "data": "data",
    "hqseg44k_root": "hqseg44k_root", "steps": "steps", "epochs": "epochs",
    "batch_size": "batch_size", "lr": "lr", "loss": "loss", "amp": "amp", "out": "out_dir",
    "ckpt_every": "ckpt_every", "log_every": "log_every", "seed": "seed",
    "num_workers": "num_workers", "device": "device",
}

DEMO_IMAGES = 64  # generated images for --preset tiny without --data


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "train", help=HELP, description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--preset", choices=("epochs12", "tiny"), help="a named starting config")
    parser.add_argument("--config", metavar="JSON",
                        help="TrainConfig fields as a JSON file or an inline JSON object")
    parser.add_argument("--model-type", choices=MODEL_TYPES, default=None)
    parser.add_argument("--sam-checkpoint", default=None, help="official SAM weights (.pth)")
    parser.add_argument("--plugin-checkpoint", default=None,
                        help="start the plugins from this save_plugins file")
    parser.add_argument("--method", choices=METHODS, default=None,
                        help="what trains (default stable_sam: the plugins)")
    parser.add_argument("--data", nargs="+", metavar="DIR", default=None,
                        help="training folders: DIR/im + DIR/gt, or one folder of .jpg + .png")
    parser.add_argument("--hqseg44k-root", metavar="DATA_ROOT", default=None,
                        help="HQ-SAM's data/ folder: train on HQSeg-44K's seven training sets")
    parser.add_argument("--steps", type=int, default=None, help="optimiser steps (overrides --epochs)")
    parser.add_argument("--epochs", type=int, default=None, help="epochs (default 1)")
    parser.add_argument("--batch-size", type=int, default=None, help="images per process and step")
    parser.add_argument("--lr", type=float, default=None, help="Adam learning rate (default 1e-3)")
    parser.add_argument("--loss", choices=("points", "full"), default=None)
    parser.add_argument("--amp", choices=("none", "bf16", "fp16"), default=None,
                        help="autocast: bf16 on CUDA or the CPU, fp16 on CUDA only")
    parser.add_argument("--no-lsj", action="store_true", help="no large-scale jitter")
    parser.add_argument("--out", default=None, help="output folder (checkpoint.pt, log.csv, weights)")
    parser.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    parser.add_argument("--overwrite", action="store_true",
                        help="start a new run in an OUT that holds one (deletes its checkpoints, "
                             "log and weights); without it, such an OUT is refused")
    parser.add_argument("--skip-bad-samples", action="store_true",
                        help="train without the samples the data check refuses (unreadable, "
                             "empty or mis-sized masks) instead of stopping before step 1")
    parser.add_argument("--ckpt-every", type=int, default=None, help="checkpoint period in steps")
    parser.add_argument("--log-every", type=int, default=None, help="console period in steps")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--num-workers", type=int, default=None, help="data-loader workers")
    parser.add_argument("--device", default=None, help="torch device (default: cuda if available)")
    parser.add_argument("--deterministic", action="store_true",
                        help="torch.use_deterministic_algorithms (bit-exact resumes on GPU)")
    return parser


def _json_layer(text: str) -> dict:
    if os.path.isfile(text):
        with open(text, encoding="utf-8") as f:
            text = f.read()
    elif not text.lstrip().startswith("{"):
        raise CliError(f"--config {text!r}: no such file, and not an inline JSON object")
    try:
        layer = json.loads(text)
    except json.JSONDecodeError as exc:
        raise CliError(f"--config is not valid JSON: {exc}") from exc
    if not isinstance(layer, dict):
        raise CliError(
            f"--config must be a JSON object of TrainConfig fields, got {type(layer).__name__}")
    return layer


def _flag_layer(args) -> dict:
    layer = {field: getattr(args, dest) for dest, field in _FLAG_FIELDS.items()
             if getattr(args, dest) is not None}
    if args.no_lsj:
        layer["lsj"] = False
    if args.deterministic:
        layer["deterministic"] = True
    if args.skip_bad_samples:
        layer["skip_bad_samples"] = True
    return layer


def resolve_config(args):
    """TrainConfig from defaults < --preset < --config < flags (or, with --resume, from the
    checkpoint's config < flags)."""
    from ..training import PRESETS, CheckpointError, TrainConfig, saved_config

    flags = _flag_layer(args)
    try:
        if args.resume:
            if args.out is None:
                raise CliError("--resume needs --out: the folder holding checkpoint.pt")
            if args.preset or args.config:
                raise CliError("--resume reuses the checkpoint's config; drop --preset/--config")
            base = saved_config(args.out).to_dict()
        else:
            base = dict(PRESETS[args.preset]) if args.preset else {}
            if args.config:
                base.update(_json_layer(args.config))
        base.update(flags)
        return TrainConfig.from_dict(base)
    except CheckpointError as exc:
        raise CliError(str(exc)) from exc
    except (TypeError, ValueError) as exc:
        raise CliError(f"invalid training config: {exc}") from exc


def _demo_data(config) -> None:
    """--preset tiny without data: generate shapes into OUT/synthetic_data (once)."""
    from ..data.synthetic import make_synthetic_dataset

    root = os.path.join(config.out_dir, "synthetic_data")
    if not os.path.isdir(os.path.join(root, "gt")):
        make_synthetic_dataset(root, num_images=DEMO_IMAGES, image_size=(192, 256), seed=config.seed)
        print(f"generated {DEMO_IMAGES} synthetic images in {root}", file=sys.stderr)
    config.data = [root]


def _one_line(exc: BaseException) -> str:
    """An error raised in a data-loader worker arrives with the worker's traceback in its
    message; the user gets its last line, which is the error itself."""
    lines = [line for line in str(exc).strip().splitlines() if line.strip()]
    if len(lines) > 1:  # "...Original Traceback...", then "ValueError: the message"
        return lines[-1].strip().removeprefix(f"{type(exc).__name__}: ")
    return lines[0].strip() if lines else type(exc).__name__


def run(args) -> int:
    from ._common import check_device, check_family_installed, check_tensorboard
    from ..training.checkpointing import CheckpointError, prepare_out_dir

    config = resolve_config(args)
    check_family_installed(config.model_type)  # before OUT is touched
    check_tensorboard()
    if config.device != "auto":  # from a flag, --config or the checkpoint
        check_device(config.device)
    try:  # before anything is generated into it
        prepare_out_dir(config.out_dir, resume=args.resume, overwrite=args.overwrite)
    except CheckpointError as exc:
        raise CliError(str(exc)) from None
    if args.preset == "tiny" and not config.data and config.hqseg44k_root is None:
        _demo_data(config)
    if config.sam_checkpoint is None and config.model_type in EMBEDDED_MODEL_TYPES:
        # the shipped base, with the plugins at identity: train, do not fine-tune the shipped ones
        from ..families.demo.build import DEMO_SAM_WEIGHTS

        config = config.replace(sam_checkpoint=str(DEMO_SAM_WEIGHTS))
    if config.sam_checkpoint is None and config.model_type not in RANDOM_MODEL_TYPES:
        raise CliError(f"--sam-checkpoint is required for --model-type {config.model_type}")
    for flag, path in (("--sam-checkpoint", config.sam_checkpoint),
                       ("--plugin-checkpoint", config.plugin_checkpoint)):
        if path is not None and not os.path.isfile(path):
            raise CliError(f"{flag} {path!r}: no such file")
    from ..training import CheckpointError, train

    try:
        result = train(config, resume=args.resume)  # the folder was prepared above
    except (CheckpointError, FileNotFoundError, ValueError, FloatingPointError) as exc:
        raise CliError(_one_line(exc)) from None  # bad data, config or files; a diverged loss
    if result["stopped"]:
        return 128 + 15  # the shell's code for "terminated by SIGTERM": the run is not finished
    if "weights" in result:
        print(f"step {result['step']}: loss {result['loss']:.4f}; wrote {result['checkpoint']} "
              f"and {result['weights']}")
    return 0
