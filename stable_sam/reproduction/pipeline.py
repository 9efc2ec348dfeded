"""The reproduction end to end: scenes, the base SAM, the five trainings on the frozen base with
the project's trainer, and the evaluation of all six methods on the held-out split with frozen
prompts. Each stage skips work whose output already exists, so a cut run continues where it
stopped.

Both splits are version-2 scenes with every object a target (`data.scenes.scene_targets`): the
training split (TRAIN_SEED) is written once to disk, one image/mask pair per target; the
held-out split is FRESH_TEST_SEED's scenes (`data.scenes.HELD_OUT_SEED`), generated in memory
with all targets of a scene together, so that masks prompted on two objects of one scene can be
compared (prompt-following).

What a stage reuses is checked first: the work folder records the settings it was made with
(a rerun with other settings is refused rather than mixing two runs), the training split
records the SHA-256 of its files (a missing or changed image or mask is refused rather than
trained on), and the frozen prompts hold each held-out target mask's fingerprint, checked as
`stable-sam evaluate` checks them (a changed scene generator is refused, not evaluated).
"""
from __future__ import annotations

import hashlib
import json
import shutil
import signal
from pathlib import Path

from ..data._io import write_json_atomic
from ..data.scenes import (HELD_OUT_SEED, HELD_OUT_VERSION, TRAIN_SEED, SceneTargets,
                           write_scenes)
from .base_sam import BaseCheckpointError, BaseTrainConfig, train_base_sam
from .interrupts import NAMES, ReproductionStopped, StopSignals
from ..families.demo.build import DEMO_IMAGE_SIZE, DEMO_MODEL_TYPE

METHODS = ("stable_sam", "stable_sam_no_drp", "stable_sam_no_rts", "pt_sam", "dt_sam")
ALL_METHODS = ("sam",) + METHODS
KINDS = ("box", "noisy_box", "points1", "points3")
NUM_TEST_SCENES = 50  # 214 targets (every object of at least 400 px)
CHECK_SCENES = 3  # the held-out scenes whose records CI re-evaluates with the shipped weights


SETTINGS_FILE = "settings.json"  # the settings the work folder was made with


class ReproductionError(Exception):
    """Something the work folder holds cannot be used; the message names it and what to do."""


def read_json(path: Path, what: str, remedy: str) -> dict:
    """A JSON object the reproduction wrote; ReproductionError naming it if it is damaged."""
    try:
        obj = json.loads(Path(path).read_text(encoding="utf-8"))
    except (ValueError, OSError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise ReproductionError(f"{what} {path} cannot be read ({exc}): {remedy}") from None
    if not isinstance(obj, dict):
        raise ReproductionError(f"{what} {path} holds a {type(obj).__name__}, not an object: "
                                f"{remedy}")
    return obj


def check_settings(out: Path, settings: dict) -> None:
    """Refuses a work folder made with other settings (its stages would be reused under the new
    ones) or by a version that kept no record of them; nothing is written."""
    record = out / SETTINGS_FILE
    if record.is_file():
        saved = read_json(record, "the work folder's settings record",
                          "use a fresh --out")
        if saved != settings:
            changed = ", ".join(f"--{k.replace('_', '-')} {saved.get(k)!r} -> {v!r}"
                                for k, v in settings.items() if saved.get(k) != v)
            raise ReproductionError(f"--out {out} holds a run made with other settings "
                                    f"({changed or saved}); use a fresh --out, or that run's "
                                    "settings")
    elif out.is_dir() and any(out.iterdir()):
        raise ReproductionError(f"--out {out} is not empty and holds no {SETTINGS_FILE} (not a "
                                "reproduction, or one made by an older version): use a fresh "
                                "--out")


def record_settings(out: Path, settings: dict) -> None:
    if not (out / SETTINGS_FILE).is_file():
        write_json_atomic(out / SETTINGS_FILE, settings)


def _file_hashes(folder: Path) -> dict:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def manifest_path(out: Path, split: str) -> Path:
    return out / f"scenes_{split}.sha256.json"


def prepare_scenes(out: Path, num_train: int) -> dict:
    """Writes the training split once (into a temporary folder, renamed when complete, with
    the SHA-256 of its files beside it: one pair per target of each scene) and checks a split
    already there against those hashes. {"train": its folder}."""
    folder, manifest = out / "scenes_train", manifest_path(out, "train")
    if folder.is_dir():
        check_scenes(folder, manifest)
    else:
        partial = out / f".{folder.name}.partial"
        shutil.rmtree(partial, ignore_errors=True)
        # the same scene generator as the held-out split's
        write_scenes(partial, num_train, TRAIN_SEED, DEMO_IMAGE_SIZE, version=HELD_OUT_VERSION,
                     every_target=True)
        write_json_atomic(manifest, _file_hashes(partial))
        partial.rename(folder)
    return {"train": folder}


def held_out_split(num_test: int = NUM_TEST_SCENES) -> SceneTargets:
    """The held-out split: scenes 0..num_test-1 of HELD_OUT_SEED with all their targets."""
    return SceneTargets(HELD_OUT_SEED, num_test, HELD_OUT_VERSION, DEMO_IMAGE_SIZE)


def check_scenes(folder: Path, manifest: Path) -> None:
    """Every file the split was written with is there, unchanged, and nothing was added."""
    remedy = f"delete {folder} and {manifest.name} to write the scenes again"
    expected = read_json(manifest, "the scenes' hashes", remedy)
    found = _file_hashes(folder)
    for name, digest in expected.items():
        if name not in found:
            raise ReproductionError(f"{folder / name} is missing: {remedy}")
        if found[name] != digest:
            raise ReproductionError(f"{folder / name} changed since it was written: {remedy}")
    added = sorted(set(found) - set(expected))
    if added:
        raise ReproductionError(f"{folder / added[0]} was not written by the reproduction: "
                                f"{remedy}")


def base_path(out: Path) -> Path:
    return out / "base_sam.safetensors"


def check_reused_base(out: Path) -> None:
    """A base that OUT already holds is reused: it must load into today's demo architecture
    (one from an older version of the package does not), checked before any scene is written."""
    from ..checkpoint import CheckpointError
    from ..families.demo.build import build_demo_sam, load_sam_weights

    path = base_path(out)
    if path.is_file():
        try:
            load_sam_weights(build_demo_sam(), path)
        except CheckpointError as exc:
            raise CheckpointError(f"{exc}; the work folder's base is damaged or of another "
                                  "version: delete it to train it again, or use a fresh --out"
                                  ) from exc


def base_checkpoint_path(out: Path) -> Path:
    return out / "base_sam_checkpoint.pt"


def train_base(out: Path, config: BaseTrainConfig, progress: bool = True,
               signals: StopSignals | None = None) -> Path:
    """Trains the base SAM unless the work folder has it. Under `signals`, SIGTERM or Ctrl+C
    lets the step finish, writes the stage's checkpoint and stops (ReproductionStopped); a
    rerun continues from it."""
    from ..training.signals import StopRequest

    path = base_path(out)
    if not path.is_file():
        try:
            with StopRequest() as stop:  # StopSignals hands Ctrl+C to it as it does for methods
                result = train_base_sam(config, path, progress=progress,
                                        checkpoint_path=base_checkpoint_path(out), stop=stop)
        except BaseCheckpointError as exc:
            raise ReproductionError(str(exc)) from None
        if result["stopped"]:
            signum = (signals.signum if signals else None) or signal.SIGTERM
            raise ReproductionStopped(
                f"stopped by {NAMES[signum]} while training the base SAM after step "
                f"{result['step']} (checkpoint written: run the same command again to continue)",
                signum)
    return path


def weights_path(out: Path, method: str) -> Path:
    name = "plugins" if method.startswith("stable_sam") else method
    return out / method / f"{name}.safetensors"


def method_steps(num_train_scenes: int) -> int:
    """Each method's optimiser steps: one pass over the training scenes' count at the
    trainer's batch size. The split holds one pair per target (about 4.8 per scene), so a full
    epoch over it would take about 5x longer than the reproduction's time allows; the steps
    draw their pairs from all of them."""
    from ..training import TrainConfig

    return max(1, num_train_scenes // TrainConfig().batch_size)


def train_methods(out: Path, base: Path, train_dir: Path, methods=METHODS,
                  threads: int = 2, signals: StopSignals | None = None, **overrides) -> dict:
    """Trains each method on the frozen base with TrainConfig's defaults (one epoch unless
    `overrides` give `steps`) but for the data, the device settings and `overrides`. SIGTERM,
    or Ctrl+C under `signals`, stops the training after its step with a checkpoint
    (ReproductionStopped); a rerun continues it."""
    from ..training import TrainConfig, train
    from ..training.checkpointing import CHECKPOINT_NAME, CheckpointError

    paths = {}
    for method in methods:
        path = weights_path(out, method)
        if not path.is_file():
            config = TrainConfig(model_type=DEMO_MODEL_TYPE, sam_checkpoint=str(base),
                                 method=method, data=[str(train_dir)], out_dir=str(path.parent),
                                 num_workers=0, cpu_threads=threads, device="cpu", **overrides)
            # A run cut by SIGTERM left its checkpoint: continue it. One killed before its first
            # checkpoint left only a log, nothing to continue from: start it again.
            cut = (path.parent / CHECKPOINT_NAME).is_file()
            try:
                result = train(config, resume=cut, overwrite=not cut, announce_stop=False)
            except (CheckpointError, FileNotFoundError, ValueError, FloatingPointError) as exc:
                # as `stable-sam train` reports them: bad data, a damaged checkpoint
                raise ReproductionError(f"training {method}: {exc}") from None
            if result["stopped"]:  # stop the whole reproduction, not just this method
                signum = (signals.signum if signals else None) or signal.SIGTERM
                raise ReproductionStopped(f"stopped by {NAMES[signum]} while training {method} "
                                          f"(checkpoint in {path.parent}); run the same command "
                                          "again to continue", signum)
        paths[method] = path
    return paths


def load_method(method: str, base: Path, weights: Path | None):
    """(model, predictor) of one of ALL_METHODS on `base`."""
    from ..build import build_stable_sam
    from ..families import base_predictor_for, predictor_for
    from ..training.baselines import load_baseline_weights

    from ..checkpoint import CheckpointError

    try:
        if method.startswith("stable_sam"):
            model = build_stable_sam(DEMO_MODEL_TYPE, str(base), str(weights)).eval()
            return model, predictor_for(model)
        model = build_stable_sam(DEMO_MODEL_TYPE, str(base)).eval()
        if method != "sam":
            load_baseline_weights(model, weights)
    except (CheckpointError, ValueError) as exc:
        remedy = "" if weights is None else f": delete {weights} to train {method} again"
        raise ReproductionError(f"{exc}{remedy}") from None
    return model, base_predictor_for(model)


def trainable_params(model, method: str) -> int:
    """What the method trains on top of the frozen base (0 for the base itself)."""
    from ..training.baselines import trainable_named_parameters

    if method == "sam":
        return 0
    return int(sum(p.numel() for _, p in trainable_named_parameters(model, method)))


def evaluate_methods(out: Path, base: Path, dataset: SceneTargets, weights: dict,
                     methods=ALL_METHODS, prompts_per_image: int = 20, max_images: int = 0,
                     progress: bool = True) -> dict:
    """The issue's table: {"methods": {NAME: {"trainable_params", "kinds": {KIND: {"mIoU",
    "mBIoU", "mSF", "mIoU_ci", "mSF_ci"}}, "follow": {KIND: {"cross_agreement",
    "stable_but_wrong"}}, "background_box"}}, "box_fill_mIoU", "test_targets"}, percentages
    (`table_rows`); the prompts are frozen once into OUT/prompts_test_*.json. A method whose
    row OUT already holds is not evaluated again."""
    import torch

    from .table_rows import evaluate_row, split_summary

    dataset, prompts_file, prompts = test_prompts(out, dataset, prompts_per_image, max_images)
    table = {"methods": {}}
    for method in methods:
        row_file = out / f"row_{method}_{prompts_file.stem}.json"
        if row_file.is_file():  # evaluated before (each method's row is kept on its own)
            table["methods"][method] = read_json(row_file, f"the {method} row",
                                                 f"delete it to evaluate {method} again")
            continue
        model, predictor = load_method(method, base, weights.get(method))
        with torch.no_grad():
            row, records = evaluate_row(predictor, dataset, prompts, KINDS, progress=progress)
        write_json_atomic(out / f"records_{method}_{prompts_file.stem}.json", records)
        table["methods"][method] = {"trainable_params": trainable_params(model, method), **row}
        write_json_atomic(row_file, table["methods"][method])
    if "sam" in methods:
        table["site_reliance"] = base_site_reliance(out, base, dataset, prompts,
                                                    prompts_file.stem)
    if {"sam", "stable_sam"} <= set(methods):
        table["worst_box"] = worst_box_rows(out, base, weights["stable_sam"], dataset,
                                            prompts_file.stem, progress)
    table.update(split_summary(dataset))
    return table


# the worst-case box search (evaluation.worst_box) as `stable-sam evaluate --worst-box` runs it
# by default, without its per-target time budget: a table must not depend on the machine's speed
WORST_BOX_METHODS = ("sam", "stable_sam")


def worst_box_rows(out: Path, base: Path, plugins: Path, dataset: SceneTargets, stem: str,
                   progress: bool = True) -> dict:
    """{method: {tau: IoU-Min / IoU-Base / IoU-Max / Delta summary}} for SAM (the base: the
    Stable-SAM model with its plugins off, the same decoder path) and Stable-SAM, on every
    held-out target; percentages. Kept in OUT like a method's row."""
    import dataclasses

    from ..evaluation.worst_box import WorstBoxConfig
    from ..evaluation.worst_box_rows import evaluate_worst_boxes

    path = out / f"worst_box_{stem}.json"
    if path.is_file():
        return read_json(path, "the worst-case box rows", "delete it to search again")
    config = dataclasses.replace(WorstBoxConfig(), time_budget_s=None)
    _, predictor = load_method("stable_sam", base, plugins)
    rows = {}
    for method in WORST_BOX_METHODS:
        result = evaluate_worst_boxes(predictor, dataset, config=config,
                                      use_plugins=method == "stable_sam", progress=progress)
        rows[method] = {tau: {k: percent_of(v) for k, v in summary.items()}
                        for tau, summary in result["taus"].items()}
    rows["config"] = result["config"]
    write_json_atomic(path, rows)
    return rows


def percent_of(value):
    """A fraction (or a [low, high] pair of them) as percentages; counts stay as they are."""
    from .table_rows import percent

    if isinstance(value, list):
        return [percent(v) for v in value]
    return percent(value) if isinstance(value, float) else value


RELIANCE_KINDS = ("box", "noisy_box")
RELIANCE_PROMPTS = 5  # noisy boxes per target: five routes removed, so the first five of 20


def base_site_reliance(out: Path, base: Path, dataset: SceneTargets, prompts: dict,
                       stem: str) -> dict:
    """The base's route reliance on the held-out split (`evaluation.route_reliance`): whether
    the plugin site carries its masks at all. Kept in OUT like a method's row."""
    import torch

    from ..evaluation.route_reliance import route_reliance

    path = out / f"site_reliance_{stem}.json"
    if path.is_file():
        return read_json(path, "the base's route reliance", "delete it to measure it again")
    _, predictor = load_method("sam", base, None)
    with torch.no_grad():
        result = route_reliance(predictor, dataset, first_prompts(prompts, RELIANCE_PROMPTS),
                                RELIANCE_KINDS)
    result["prompts_per_target"] = RELIANCE_PROMPTS
    write_json_atomic(path, result)
    return result


def first_prompts(prompts: dict, count: int) -> dict:
    """Frozen prompts with each target's first `count` prompts of every kind."""
    images = [{**image, "targets": [
        {**target, "prompts": {k: v[:count] for k, v in target["prompts"].items()}}
        for target in image["targets"]]} for image in prompts["images"]]
    return {**prompts, "images": images, "prompts_per_image": min(count,
                                                                   prompts["prompts_per_image"])}


def test_prompts(out: Path, dataset: SceneTargets, prompts_per_image: int, max_images: int = 0):
    """(dataset, prompts file, its prompts) of the held-out split: frozen once with each target
    mask's fingerprint, and checked against the split's masks on every later run."""
    from ..evaluation import freeze_prompts, load_prompts, save_prompts
    from ..evaluation.prompts_check import check_prompts, fingerprinted

    if max_images:
        dataset.scenes = dataset.scenes[:max_images]
    prompts_file = out / f"prompts_test_{len(dataset)}x{prompts_per_image}.json"
    if not prompts_file.is_file():
        save_prompts(prompts_file, fingerprinted(freeze_prompts, dataset, KINDS,
                                                 prompts_per_image,
                                                 model_image_size=DEMO_IMAGE_SIZE))
    remedy = f"delete {prompts_file} and the row_*.json files to freeze and evaluate again"
    try:
        prompts = load_prompts(prompts_file)
        check_prompts(prompts, [dataset], list(KINDS), DEMO_IMAGE_SIZE, str(prompts_file))
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ReproductionError(f"{exc}: {remedy}" if isinstance(exc, ValueError)
                                else f"prompts file {prompts_file} is malformed ({exc!r}): "
                                f"{remedy}") from None
    return dataset, prompts_file, prompts[dataset.name]


def write_table(path: Path, table: dict) -> Path:
    return write_json_atomic(path, table)


def read_table(path: Path) -> dict:
    return json.loads(Path(path).read_text())


def shipped_check_records(out: Path, prompts_per_image: int, num_test: int) -> dict:
    """The full run's per-target records of the first CHECK_SCENES held-out scenes for the
    two shipped methods: CI evaluates those scenes with the same frozen prompts and compares."""
    stem = f"prompts_test_{num_test}x{prompts_per_image}"
    return {"seed": HELD_OUT_SEED, "version": HELD_OUT_VERSION,
            "prompts_per_image": prompts_per_image, "scenes": CHECK_SCENES,
            "records": {m: [r for r in json.loads((out / f"records_{m}_{stem}.json").read_text())
                            if r["image"] < CHECK_SCENES] for m in ("sam", "stable_sam")}}
