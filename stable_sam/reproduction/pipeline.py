"""The reproduction end to end: scenes, the base SAM, the five trainings on the frozen base with
the project's trainer at its default (one epoch), and the evaluation of all six methods on the
held-out split with frozen prompts. Each stage skips work whose output already exists, so a cut
run continues where it stopped.
"""
from __future__ import annotations

import json
from pathlib import Path

from ..data._io import write_json_atomic
from ..data.scenes import TEST_SEED, TRAIN_SEED, write_scenes
from .base_sam import BaseTrainConfig, train_base_sam
from ..families.demo.build import DEMO_IMAGE_SIZE, DEMO_MODEL_TYPE

METHODS = ("stable_sam", "stable_sam_no_drp", "stable_sam_no_rts", "pt_sam", "dt_sam")
ALL_METHODS = ("sam",) + METHODS
KINDS = ("box", "noisy_box", "points1", "points3")
NUM_TEST_SCENES = 50
CHECK_SCENES = 3  # the held-out scenes whose records CI re-evaluates with the shipped weights


class ReproductionStopped(Exception):
    """SIGTERM reached a training stage; its checkpoint is written and a rerun continues it."""


def prepare_scenes(out: Path, num_train: int, num_test: int = NUM_TEST_SCENES) -> dict:
    dirs = {"train": out / "scenes_train", "test": out / "scenes_test"}
    for split, seed, count in (("train", TRAIN_SEED, num_train), ("test", TEST_SEED, num_test)):
        gt = dirs[split] / "gt"
        if not gt.is_dir() or len(list(gt.glob("*.png"))) != count:
            write_scenes(dirs[split], count, seed, DEMO_IMAGE_SIZE)
    return dirs


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
            raise CheckpointError(f"{exc}; the work folder holds a run of another version: "
                                  "use a fresh --out") from exc


def train_base(out: Path, config: BaseTrainConfig, progress: bool = True) -> Path:
    path = base_path(out)
    if not path.is_file():
        train_base_sam(config, path, progress=progress)
    return path


def weights_path(out: Path, method: str) -> Path:
    name = "plugins" if method.startswith("stable_sam") else method
    return out / method / f"{name}.safetensors"


def train_methods(out: Path, base: Path, train_dir: Path, methods=METHODS,
                  threads: int = 2, **overrides) -> dict:
    """Trains each method on the frozen base with TrainConfig's defaults (one epoch) but for the
    data, the device settings and `overrides` (tests shorten the run)."""
    from ..training import TrainConfig, train
    from ..training.checkpointing import CHECKPOINT_NAME

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
            result = train(config, resume=cut, overwrite=not cut)
            if result["stopped"]:  # SIGTERM: stop the whole reproduction, not just this method
                raise ReproductionStopped(f"stopped by SIGTERM while training {method} "
                                          f"(checkpoint in {path.parent}); run the same command "
                                          "again to continue")
        paths[method] = path
    return paths


def load_method(method: str, base: Path, weights: Path | None):
    """(model, predictor) of one of ALL_METHODS on `base`."""
    from ..build import build_stable_sam
    from ..families import base_predictor_for, predictor_for
    from ..training.baselines import load_baseline_weights

    if method.startswith("stable_sam"):
        model = build_stable_sam(DEMO_MODEL_TYPE, str(base), str(weights)).eval()
        return model, predictor_for(model)
    model = build_stable_sam(DEMO_MODEL_TYPE, str(base)).eval()
    if method != "sam":
        load_baseline_weights(model, weights)
    return model, base_predictor_for(model)


def trainable_params(model, method: str) -> int:
    """What the method trains on top of the frozen base (0 for the base itself)."""
    from ..training.baselines import trainable_named_parameters

    if method == "sam":
        return 0
    return int(sum(p.numel() for _, p in trainable_named_parameters(model, method)))


def evaluate_methods(out: Path, base: Path, test_dir: Path, weights: dict,
                     methods=ALL_METHODS, prompts_per_image: int = 20, max_images: int = 0,
                     progress: bool = True) -> dict:
    """The issue's table: {"methods": {NAME: {"trainable_params", "kinds": {KIND: {"mIoU",
    "mBIoU", "mSF"}}}}}, percentages; the prompts are frozen once into OUT/prompts_test_*.json.
    A method whose row OUT already holds is not evaluated again."""
    import torch

    from ..data.hqseg import HQSegDataset
    from ..evaluation import evaluate_masks, freeze_prompts, load_prompts, save_prompts

    dataset = HQSegDataset([(test_dir / "im", test_dir / "gt")], name="scenes_test")
    if max_images:
        dataset.samples = dataset.samples[:max_images]
    prompts_file = out / f"prompts_test_{len(dataset)}x{prompts_per_image}.json"
    if not prompts_file.is_file():
        save_prompts(prompts_file, freeze_prompts(dataset, KINDS, prompts_per_image,
                                                  model_image_size=DEMO_IMAGE_SIZE))
    prompts = load_prompts(prompts_file)
    table = {"methods": {}}
    for method in methods:
        row_file = out / f"row_{method}_{prompts_file.stem}.json"
        if row_file.is_file():  # evaluated before (each method's row is kept on its own)
            table["methods"][method] = read_table(row_file)
            continue
        model, predictor = load_method(method, base, weights.get(method))
        with torch.no_grad():
            results = evaluate_masks(predictor, dataset, prompts, list(KINDS), progress=progress)
        write_json_atomic(out / f"records_{method}_{prompts_file.stem}.json", results["records"])
        table["methods"][method] = {
            "trainable_params": trainable_params(model, method),
            "kinds": {kind: _percentages(results["kinds"][kind]) for kind in KINDS},
        }
        write_json_atomic(row_file, table["methods"][method])
    return table


def _percentages(summary: dict) -> dict:
    def pct(value):
        return None if value is None or value != value else round(100.0 * float(value), 2)

    return {"mIoU": pct(summary["miou"]), "mBIoU": pct(summary["mbiou"]),
            "mSF": pct(summary["msf"])}


def write_table(path: Path, table: dict) -> Path:
    return write_json_atomic(path, table)


def read_table(path: Path) -> dict:
    return json.loads(Path(path).read_text())


def shipped_check_records(out: Path, prompts_per_image: int, num_test: int) -> dict:
    """The full run's per-target records of the first CHECK_SCENES held-out scenes for the
    two shipped methods: CI evaluates those scenes with the same frozen prompts and compares."""
    stem = f"prompts_test_{num_test}x{prompts_per_image}"
    return {"prompts_per_image": prompts_per_image, "scenes": CHECK_SCENES,
            "records": {m: [r for r in json.loads((out / f"records_{m}_{stem}.json").read_text())
                            if r["image"] < CHECK_SCENES] for m in ("sam", "stable_sam")}}
