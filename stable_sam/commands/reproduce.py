"""`stable-sam reproduce`: the small-scale reproduction of the paper's Tables 2 and 5 from
scratch on the CPU: generated scenes, the base SAM (clean prompts only), Stable-SAM, its two
ablations, PT-SAM and DT-SAM on the frozen base (`pipeline.method_steps` each), and the
evaluation of all six on the held-out scenes with frozen prompts.

Writes OUT/reproduction.json (the table) and OUT/results.md (the RESULTS.md section);
`--publish` also writes them to benchmarks/, ships the base and Stable-SAM plugin weights as
the embedded `demo` model and redraws docs/demo_grid.png with them: only into the source
checkout the package was imported from, and only a run of the full recipe (the defaults) unless
`--publish-any-recipe`. Each stage skips what OUT already holds, so a cut run continues; SIGTERM
and Ctrl+C stop it with exit 143 / 130.
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
# the settings the table depends on (not --threads), at the published run's values: the
# parser's defaults
FULL_RECIPE = {"train_scenes": 3000, "test_scenes": 50, "base_steps": 10000,
               "prompts_per_image": 20}
MAX_PROMPTS_PER_IMAGE = 1000  # as `stable-sam evaluate`


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("reproduce", help=HELP, description=HELP)
    parser.add_argument("--out", default="runs/reproduction",
                        help="work folder; a stage whose output is already there is reused, not "
                        "rerun (use a fresh folder after changing a setting)")
    parser.add_argument("--train-scenes", type=int, default=FULL_RECIPE["train_scenes"],
                        help="generated training scenes: the base SAM trains on them with clean "
                        "prompts, then each method one epoch (the trainer's default) with its own")
    parser.add_argument("--test-scenes", type=int, default=FULL_RECIPE["test_scenes"])
    parser.add_argument("--base-steps", type=int, default=FULL_RECIPE["base_steps"],
                        help="base SAM training steps (4 images x 4 targets each); about 0.26 s "
                        "each on the 2-core machine")
    parser.add_argument("--prompts-per-image", type=int,
                        default=FULL_RECIPE["prompts_per_image"],
                        help="frozen prompts per held-out target and prompt kind (at least 2: "
                        "mSF compares a target's masks with each other)")
    parser.add_argument("--threads", type=int, default=1,
                        help="CPU threads (default 1: on a shared 2-core machine a second thread "
                        "spin-waits behind other processes and ran 5-10x slower here)")
    parser.add_argument("--publish", action="store_true",
                        help="also write benchmarks/reproduction.json, the RESULTS.md section, "
                        "the CI check's records and the embedded demo weights into the source "
                        "checkout this package runs from (refused for an installed package, and "
                        "for a run that is not the full recipe)")
    parser.add_argument("--publish-any-recipe", action="store_true",
                        help="with --publish: publish even a run whose settings differ from the "
                        "defaults (the full recipe)")
    return parser


def source_checkout() -> Path:
    """The root of the source checkout of this repository that the package was imported from;
    CliError for an installed package (publishing would replace its weights)."""
    import stable_sam

    root = Path(stable_sam.__file__).resolve().parents[1]
    pyproject = root / "pyproject.toml"
    try:
        is_ours = 'name = "stable-sam"' in pyproject.read_text(encoding="utf-8")
    except OSError:
        is_ours = False
    if not (is_ours and all((root / d).is_dir() for d in ("benchmarks", "tests/stable_sam"))):
        raise CliError(f"--publish writes into a source checkout of stable-sam, and the package "
                       f"runs from {root}, which is not one (an installed package): run it from "
                       "a clone")
    return root


def check_arguments(args) -> None:
    """Every argument, the work folder and what --publish would write, before any work."""
    for name in ("train_scenes", "test_scenes", "base_steps"):
        if getattr(args, name) < 1:
            raise CliError(f"--{name.replace('_', '-')} must be >= 1, is {getattr(args, name)}")
    if not 2 <= args.prompts_per_image <= MAX_PROMPTS_PER_IMAGE:
        raise CliError(f"--prompts-per-image must be in 2..{MAX_PROMPTS_PER_IMAGE} (mSF compares "
                       f"a target's masks with each other), is {args.prompts_per_image}")
    cores = os.cpu_count() or 1
    if not 1 <= args.threads <= cores:
        raise CliError(f"--threads must be in 1..{cores} (this machine's cores), is "
                       f"{args.threads}")
    from ..training.config import TrainConfig

    batch = TrainConfig().batch_size  # every method trains at the trainer's default batch
    if args.train_scenes < batch:
        raise CliError(f"--train-scenes must be >= {batch} (one training batch), is "
                       f"{args.train_scenes}")
    if args.publish_any_recipe and not args.publish:
        raise CliError("--publish-any-recipe only applies with --publish")
    from ._common import check_tensorboard

    check_tensorboard()  # the methods' training logs to it
    # the work folder, or the nearest part of its path that exists, must be a writable folder
    existing = Path(args.out)
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise CliError(f"--out {args.out!r}: {str(existing)!r} is not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise CliError(f"--out {args.out!r}: {str(existing)!r} is not writable")
    if args.publish:
        source_checkout()
        other = [f"--{k.replace('_', '-')} {getattr(args, k)} (the recipe's is {v})"
                 for k, v in FULL_RECIPE.items() if getattr(args, k) != v]
        if other and not args.publish_any_recipe:
            raise CliError(f"--publish replaces the published table and the shipped weights, and "
                           f"this run is not the full recipe: {', '.join(other)}; add "
                           "--publish-any-recipe if that is meant")


def publish(root: Path, out: Path, args, table: dict, section: str, base: Path,
            plugins: Path) -> list:
    """Writes the table, the RESULTS.md section, CI's records, the shipped weights and then the
    demo's grid picture drawn with them into the checkout at `root`, each atomically; returns
    the paths written."""
    from ..data._io import write_atomic
    from ..families.demo.build import DEMO_PLUGIN_WEIGHTS, DEMO_SAM_WEIGHTS
    from ..reproduction import pipeline

    written = [root / "benchmarks" / "reproduction.json", root / "benchmarks" / "RESULTS.md",
               root / SHIPPED_CHECK]
    pipeline.write_table(written[0], table)
    _replace_section(written[1], section)
    pipeline.write_table(written[2], pipeline.shipped_check_records(
        out, args.prompts_per_image, args.test_scenes))
    for src, shipped in ((base, DEMO_SAM_WEIGHTS), (plugins, DEMO_PLUGIN_WEIGHTS)):
        dst = root / shipped.resolve().relative_to(root)
        write_atomic(dst, lambda tmp, src=src: shutil.copyfile(src, tmp))
        written.append(dst)
    written.append(_draw_demo_grid(root))
    return written


def _draw_demo_grid(root: Path) -> Path:
    """`stable-sam demo --overwrite` into root/docs: the README's picture, drawn with the
    weights and the table just published (the package runs from `root`, so it loads them)."""
    from . import demo

    out_dir = root / "docs"
    demo.run(argparse.Namespace(scene=None, out_dir=str(out_dir), top_k=16, device="cpu",
                                overwrite=True))
    return out_dir / "demo_grid.png"


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


def _settings(args) -> dict:
    return {name: getattr(args, name) for name in FULL_RECIPE}


def run(args) -> int:
    check_arguments(args)
    import torch

    from ..reproduction import pipeline
    from ..reproduction.denormals import denormals_flushed

    out = Path(args.out)
    root = source_checkout() if args.publish else None
    try:
        pipeline.check_settings(out, _settings(args))
        pipeline.check_reused_base(out)
        with pipeline.StopSignals() as signals, denormals_flushed():
            # denormal floats in trained weights made each stage up to 2x slower on the CPU
            torch.set_num_threads(args.threads)
            table, section, base, weights = _reproduce(args, out, signals)
            if root is not None:  # a rerun publishes again what a cut one left half-published
                written = publish(root, out, args, table, section, base, weights["stable_sam"])
                print("published " + ", ".join(str(p) for p in written))
    except pipeline.ReproductionError as exc:
        raise CliError(str(exc)) from None
    except pipeline.ReproductionStopped as exc:
        print(f"stable-sam reproduce: {exc}", file=sys.stderr)
        return exc.exit_code
    return 0


def _reproduce(args, out: Path, signals) -> tuple:
    """The stages in order; each reuses what OUT holds."""
    from ..data._io import write_text_atomic
    from ..reproduction import pipeline
    from ..reproduction.base_sam import BaseTrainConfig
    from ..reproduction.targets import markdown_section

    started = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    pipeline.record_settings(out, _settings(args))
    dirs = pipeline.prepare_scenes(out, args.train_scenes)
    base = pipeline.train_base(out, BaseTrainConfig(num_scenes=args.train_scenes,
                                                    steps=args.base_steps, threads=args.threads),
                               signals=signals)
    weights = pipeline.train_methods(out, base, dirs["train"], threads=args.threads,
                                     signals=signals,
                                     steps=pipeline.method_steps(args.train_scenes))
    table = pipeline.evaluate_methods(out, base, pipeline.held_out_split(args.test_scenes),
                                      weights, prompts_per_image=args.prompts_per_image)
    minutes = (time.perf_counter() - started) / 60
    machine = f"{platform.machine()} CPU, {os.cpu_count()} cores, {args.threads} thread(s)"
    section = markdown_section(table, DEFAULT_COMMAND, machine)
    pipeline.write_table(out / "reproduction.json", table)
    write_text_atomic(out / "results.md", section)
    print(section)
    print(f"{minutes:.1f} min (stages already in {out} were not rerun)")
    return table, section, base, weights
