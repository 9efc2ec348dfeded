"""`stable-sam reproduce`: the small-scale reproduction of the paper's Tables 2 and 5 from
scratch on the CPU: generated scenes, the base SAM (clean prompts only), Stable-SAM, its two
ablations, PT-SAM and DT-SAM on the frozen base (one epoch, the trainer's default), and the
evaluation of all six on the held-out scenes with frozen prompts.

Writes OUT/reproduction.json (the table) and OUT/results.md (the RESULTS.md section);
`--publish` also writes them to benchmarks/ and ships the base and Stable-SAM plugin weights as
the embedded `demo` model. Each stage skips what OUT already holds, so a cut run continues.
"""

import argparse
import os
import platform
import shutil
import sys
import time
from pathlib import Path

from . import CliError

HELP = ("rebuild the small-scale reproduction (scenes, base SAM, plugins and baselines, "
        "evaluation of six methods) on the CPU")
SECTION_TITLE = "## Small-scale reproduction of Tables 2 and 5"
DEFAULT_COMMAND = "stable-sam reproduce --publish"
# what CI's test of the shipped weights compares with (see pipeline.shipped_check_records)
SHIPPED_CHECK = Path("tests/stable_sam/families/demo/shipped_weights_records.json")


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("reproduce", help=HELP, description=HELP)
    parser.add_argument("--out", default="runs/reproduction",
                        help="work folder; a stage whose output is already there is reused, not "
                        "rerun (use a fresh folder after changing a setting)")
    parser.add_argument("--train-scenes", type=int, default=3000,
                        help="generated training scenes: the base SAM trains on them with clean "
                        "prompts, then each method one epoch (the trainer's default) with its own")
    parser.add_argument("--test-scenes", type=int, default=50)
    parser.add_argument("--base-steps", type=int, default=3000,
                        help="base SAM training steps (4 images x 4 targets each); about 25 min "
                        "on one thread of the 2-core machine")
    parser.add_argument("--prompts-per-image", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1,
                        help="CPU threads (default 1: on a shared 2-core machine a second thread "
                        "spin-waits behind other processes and ran 5-10x slower here)")
    parser.add_argument("--publish", action="store_true",
                        help="also write benchmarks/reproduction.json, the RESULTS.md section "
                        "(both relative to the current folder: run it from the repository root) "
                        "and the embedded demo weights (stable_sam/weights/)")
    return parser


def _replace_section(results_md: Path, section: str) -> None:
    from ..data._io import write_text_atomic

    text = results_md.read_text() if results_md.is_file() else "# Results\n"
    start = text.find(SECTION_TITLE)
    if start < 0:
        text = text.rstrip("\n") + "\n\n" + section
    else:
        end = text.find("\n## ", start + len(SECTION_TITLE))
        text = text[:start] + section + ("" if end < 0 else text[end:])
    write_text_atomic(results_md, text)


def run(args) -> int:
    for name in ("train_scenes", "test_scenes", "base_steps", "prompts_per_image", "threads"):
        if getattr(args, name) < 1:
            raise CliError(f"--{name.replace('_', '-')} must be >= 1, is {getattr(args, name)}")
    from ..training.config import TrainConfig

    batch = TrainConfig().batch_size  # every method trains at the trainer's default batch
    if args.train_scenes < batch:
        raise CliError(f"--train-scenes must be >= {batch} (one training batch), is "
                       f"{args.train_scenes}")
    # the work folder, or the nearest part of its path that exists, must be a writable folder
    existing = Path(args.out)
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise CliError(f"--out {args.out!r}: {str(existing)!r} is not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise CliError(f"--out {args.out!r}: {str(existing)!r} is not writable")
    import torch

    from ..data._io import write_text_atomic
    from ..reproduction import pipeline
    from ..reproduction.base_sam import BaseTrainConfig
    from ..families.demo.build import DEMO_PLUGIN_WEIGHTS, DEMO_SAM_WEIGHTS
    from ..reproduction.targets import markdown_section

    torch.set_num_threads(args.threads)
    out = Path(args.out)
    pipeline.check_reused_base(out)
    started = time.perf_counter()
    dirs = pipeline.prepare_scenes(out, args.train_scenes, args.test_scenes)
    base = pipeline.train_base(out, BaseTrainConfig(num_scenes=args.train_scenes,
                                                    steps=args.base_steps, threads=args.threads))
    try:
        weights = pipeline.train_methods(out, base, dirs["train"], threads=args.threads)
    except pipeline.ReproductionStopped as exc:
        print(f"stable-sam reproduce: {exc}", file=sys.stderr)
        return 128 + 15  # the shell's code for "terminated by SIGTERM", as `stable-sam train`
    table = pipeline.evaluate_methods(out, base, dirs["test"], weights,
                                      prompts_per_image=args.prompts_per_image)
    minutes = (time.perf_counter() - started) / 60
    machine = f"{platform.machine()} CPU, {os.cpu_count()} cores, {args.threads} thread(s)"
    section = markdown_section(table, DEFAULT_COMMAND, machine)
    pipeline.write_table(out / "reproduction.json", table)
    write_text_atomic(out / "results.md", section)
    print(section)
    print(f"{minutes:.1f} min (stages already in {out} were not rerun)")
    if args.publish:
        pipeline.write_table(Path("benchmarks/reproduction.json"), table)
        _replace_section(Path("benchmarks/RESULTS.md"), section)
        pipeline.write_table(SHIPPED_CHECK, pipeline.shipped_check_records(
            out, args.prompts_per_image, args.test_scenes))
        for src, dst in ((base, DEMO_SAM_WEIGHTS), (weights["stable_sam"], DEMO_PLUGIN_WEIGHTS)):
            tmp = dst.with_name(f".{dst.name}.tmp")
            shutil.copyfile(src, tmp)
            os.replace(tmp, dst)
        print(f"published benchmarks/reproduction.json, benchmarks/RESULTS.md, {SHIPPED_CHECK}, "
              f"{DEMO_SAM_WEIGHTS} and {DEMO_PLUGIN_WEIGHTS}")
    return 0
