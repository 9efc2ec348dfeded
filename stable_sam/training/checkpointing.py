"""The training checkpoint (`<out_dir>/checkpoint.pt`): writing it atomically, reading it
strictly, checking that a resumed run fits it, restoring its state; and the final weights file
of a finished run."""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
from pathlib import Path
from typing import Any, Dict, List

import torch
from torch import nn

from ..data._io import write_atomic
from . import baselines
from .config import TrainConfig
from .rng import restore_rng_state

__all__ = ["CHECKPOINT_NAME", "PREVIOUS_CHECKPOINT_NAME", "CheckpointError", "prepare_out_dir",
           "RESUME_MAY_CHANGE", "check_resume_config",
           "write_train_checkpoint", "load_train_checkpoint", "saved_config",
           "open_resume_checkpoint", "restore_training_state", "save_final_weights"]

CHECKPOINT_NAME = "checkpoint.pt"  # latest training state, replaced atomically
PREVIOUS_CHECKPOINT_NAME = "checkpoint_prev.pt"  # the one before it, in case the latest is bad
# What makes a folder hold a run: a new run there would replace these.
RUN_FILES = (CHECKPOINT_NAME, PREVIOUS_CHECKPOINT_NAME, "log.csv")
CHECKPOINT_FORMAT = "stable-sam-train"
CHECKPOINT_VERSION = 1


class CheckpointError(RuntimeError):
    """A training checkpoint that cannot be read or does not fit this run."""


def atomic_torch_save(obj: Any, path: Path) -> None:
    write_atomic(path, lambda tmp: torch.save(obj, tmp), durable=True)


def _run_files(out_dir: Path) -> List[str]:
    weights = sorted(p.name for p in out_dir.glob("*.safetensors"))
    return [name for name in RUN_FILES if (out_dir / name).exists()] + weights


def prepare_out_dir(out_dir: str | os.PathLike, *, resume: bool, overwrite: bool) -> None:
    """Refuses to start a new run where one already is (its checkpoints, log and weights would
    be replaced) unless `overwrite`, which deletes them first; `resume` needs the checkpoint."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise CheckpointError(f"output folder {out_dir} is a file, not a folder")
    if resume:
        if overwrite:
            raise CheckpointError("--resume continues the run in the output folder and "
                                  "--overwrite deletes it: give one of them")
        return
    found = _run_files(out_dir) if out_dir.is_dir() else []
    if found and not overwrite:
        raise CheckpointError(
            f"output folder {out_dir} already holds a run ({', '.join(found)}); pass --resume "
            "to continue it, --overwrite to replace it, or choose another --out")
    for name in found:
        (out_dir / name).unlink(missing_ok=True)  # another rank may have been first


def _keep_previous(path: Path) -> None:
    """Makes the current checkpoint the previous one without a moment where neither exists:
    a hard link first, then the atomic replace of the latest."""
    if not path.is_file():
        return
    previous = path.with_name(PREVIOUS_CHECKPOINT_NAME)
    link = path.with_name(f".{PREVIOUS_CHECKPOINT_NAME}.link")
    if link.exists():
        link.unlink()
    try:
        os.link(path, link)
    except OSError:  # a filesystem without hard links
        shutil.copy2(path, link)
    os.replace(link, previous)


# Fields a resumed run may change: how long it runs and how it reports, not what it computes.
RESUME_MAY_CHANGE = ("steps", "epochs", "out_dir", "num_workers", "log_every", "ckpt_every",
                     "device", "cpu_threads", "cache_embeddings")


def check_resume_config(saved: TrainConfig, config: TrainConfig) -> None:
    changed = [f.name for f in dataclasses.fields(TrainConfig)
               if f.name not in RESUME_MAY_CHANGE and getattr(saved, f.name) != getattr(config, f.name)]
    if changed:
        details = ", ".join(f"{k}: {getattr(saved, k)!r} -> {getattr(config, k)!r}" for k in changed)
        raise CheckpointError(
            f"cannot resume: the config differs from the checkpoint's in {details}; only "
            f"{', '.join(RESUME_MAY_CHANGE)} may change (start a new --out to change the others)"
        )


def write_train_checkpoint(path: Path, *, config: TrainConfig, step: int, steps_per_epoch: int,
                           world_size: int, model: nn.Module, method: str,
                           optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
                           rng: List[Dict[str, Any]]) -> None:
    """`rng` holds every rank's RNG state, in rank order. The checkpoint that was at `path`
    stays beside it as PREVIOUS_CHECKPOINT_NAME."""
    _keep_previous(path)
    atomic_torch_save({
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "config": config.to_dict(),
        "step": step,
        "epoch": step // steps_per_epoch,
        "batch_in_epoch": step % steps_per_epoch,
        "world_size": world_size,
        "trainable": baselines.trainable_state_dict(model, method),
        "optimizer": optimizer.state_dict(),
        "scaler": scaler.state_dict() if scaler.is_enabled() else {},
        "rng": rng,
    }, path)


def saved_config(out_dir: str | os.PathLike) -> TrainConfig:
    """The config stored in `<out_dir>/checkpoint.pt` (the starting point for a resume)."""
    return TrainConfig.from_dict(load_train_checkpoint(Path(out_dir) / CHECKPOINT_NAME)["config"])


def load_train_checkpoint(path: str | os.PathLike) -> Dict[str, Any]:
    """Reads a checkpoint written by `train` (weights_only); raises CheckpointError if unusable."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"training checkpoint not found: {path}")
    previous = path.with_name(PREVIOUS_CHECKPOINT_NAME)
    hint = (f" (the checkpoint before it is {previous}: copy it over {path.name} to resume "
            "from there)" if path.name == CHECKPOINT_NAME and previous.is_file() else "")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated zip, foreign pickle, ...: one clear message
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise CheckpointError(
            f"could not read training checkpoint {path}: the file is corrupt or not a "
            f"stable-sam training checkpoint ({type(exc).__name__}: {first_line}){hint}"
        ) from exc
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        found = ckpt.get("format") if isinstance(ckpt, dict) else type(ckpt).__name__
        raise CheckpointError(
            f"{path} is not a stable-sam training checkpoint (expected format "
            f"{CHECKPOINT_FORMAT!r}, found {found!r})"
        )
    if ckpt.get("version") != CHECKPOINT_VERSION:
        raise CheckpointError(
            f"{path} has checkpoint version {ckpt.get('version')!r}; this code reads "
            f"version {CHECKPOINT_VERSION}"
        )
    missing = [k for k in ("config", "step", "epoch", "batch_in_epoch", "world_size",
                           "trainable", "optimizer", "rng") if k not in ckpt]
    if missing:
        raise CheckpointError(f"{path} is missing the entries {missing}")
    return ckpt


def open_resume_checkpoint(out_dir: Path, config: TrainConfig, world_size: int) -> Dict[str, Any]:
    """`<out_dir>/checkpoint.pt`, once it is known that `config` on `world_size` processes can
    continue it."""
    ckpt = load_train_checkpoint(out_dir / CHECKPOINT_NAME)
    check_resume_config(TrainConfig.from_dict(ckpt["config"]), config)
    if ckpt["world_size"] != world_size:
        raise CheckpointError(
            f"checkpoint was written by {ckpt['world_size']} process(es), this run has "
            f"{world_size}: the data order and RNG states would not continue exactly"
        )
    return ckpt


def restore_training_state(ckpt: Dict[str, Any], model: nn.Module, method: str,
                           optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
                           steps_per_epoch: int, rank: int, device: torch.device) -> int:
    """Puts the checkpoint's weights, optimiser, scaler and rank `rank`'s RNG states back;
    returns its step."""
    baselines.load_trainable_state_dict(model, method, ckpt["trainable"])
    optimizer.load_state_dict(ckpt["optimizer"])
    if ckpt.get("scaler"):
        scaler.load_state_dict(ckpt["scaler"])
    step = int(ckpt["step"])
    if (step // steps_per_epoch, step % steps_per_epoch) != (ckpt["epoch"], ckpt["batch_in_epoch"]):
        raise CheckpointError(
            f"checkpoint position (epoch {ckpt['epoch']}, batch {ckpt['batch_in_epoch']}) does "
            f"not match step {step} with {steps_per_epoch} steps per epoch: the training data "
            "or batch size changed since it was written"
        )
    restore_rng_state(ckpt["rng"][rank], device)
    return step


def save_final_weights(model: nn.Module, config: TrainConfig, spec: baselines.MethodSpec,
                       out_dir: Path) -> Path:
    if spec.uses_plugins:  # for `stable-sam segment/evaluate --plugin-checkpoint`
        from ..checkpoint import save_plugins

        path = out_dir / "plugins.safetensors"
        save_plugins(model, path)
        return path
    path = out_dir / f"{spec.name}.safetensors"
    baselines.save_baseline_weights(model, spec.name, path, extra_metadata={
        "model_type": config.model_type, "train_config": json.dumps(config.to_dict())})
    return path
