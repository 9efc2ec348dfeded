"""Robust training of Stable-SAM's plugins (and the DT-SAM / PT-SAM baselines) on HQSeg-style data.

One process, CPU or one GPU (no launcher, no process group); `data` is HQ-SAM's data/ folder:

    stable-sam train --model-type vit_l --sam-checkpoint sam_vit_l_0b3195.pth \\
        --hqseg44k-root data --out runs/stable_sam

Several GPUs on one node (DDP; the batch size is per process, the paper's 32 = 8 x 4):

    torchrun --standalone --nproc_per_node 8 -m stable_sam.cli train --model-type vit_l \\
        --sam-checkpoint sam_vit_l_0b3195.pth --hqseg44k-root data --batch-size 4 \\
        --out runs/stable_sam

Resume after an interruption (same step, optimiser, RNG states and data order; bit-identical
with `--deterministic`, tested on CPU): `stable-sam train --out runs/stable_sam --resume`.

The tiny CPU demo (random `tiny` SAM, generated shapes, 500 steps in about a minute on two cores):

    stable-sam train --preset tiny --out runs/tiny

Design: the image encoder and prompt encoder run under no_grad; only the chosen method's
parameters (see `stable_sam.training.baselines`) get gradients. Every random draw that decides a sample
(jitter, occlusion, prompt) is seeded by (seed, dataset, image, epoch), so results do not depend
on the number of data-loader workers, and the data order of an epoch is a DistributedSampler
permutation seeded by (seed, epoch), so a resumed run replays it from the saved position.
"""
from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import os
import random
import signal
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.utils.data import DataLoader, DistributedSampler

from . import baselines
from .._config_fields import check_known_fields
from .losses import mask_loss

__all__ = [
    "TrainConfig",
    "PRESETS",
    "CheckpointError",
    "DistContext",
    "train",
    "load_train_checkpoint",
    "saved_config",
    "CHECKPOINT_NAME",
    "LOG_NAME",
]

CHECKPOINT_NAME = "checkpoint.pt"  # latest training state, replaced atomically
LOG_NAME = "log.csv"  # one line per step
CHECKPOINT_FORMAT = "stable-sam-train"
CHECKPOINT_VERSION = 1


# --------------------------------------------------------------------------------------------
# Configuration


@dataclass
class TrainConfig:
    """Everything a run depends on; saved as a dict inside every checkpoint."""

    # --- model
    model_type: str = "vit_l"  # SAM backbone (vit_b | vit_l | vit_h | tiny); the paper uses ViT-L
    sam_checkpoint: Optional[str] = None  # official SAM weights; None = random init (tests only)
    plugin_checkpoint: Optional[str] = None  # warm-start the plugins from a save_plugins file
    method: str = "stable_sam"  # see stable_sam.training.baselines.METHODS
    plugin: Dict[str, Any] = field(default_factory=dict)  # PluginConfig fields over its defaults
    # --- data
    data: List[str] = field(default_factory=list)  # HQSeg-layout folders (im/ + gt/), concatenated
    hqseg44k_root: Optional[str] = None  # HQ-SAM's data/ root: adds HQSeg-44K's 7 training sets
    # RTSConfig fields over its defaults (all prompt kinds, noisy boxes at scale 0.4); the
    # paper's RTS also pastes occluders, which RTSConfig leaves off by default
    rts: Dict[str, Any] = field(default_factory=lambda: {"occlusion_probability": 0.25})
    lsj: bool = True  # large-scale jitter as HQ-SAM; False = resize longest side + pad
    lsj_scale: List[float] = field(default_factory=lambda: [0.1, 2.0])  # LSJ scale range
    # --- optimisation (paper §9 / HQ-SAM: Adam, lr 1e-3, no weight decay, 12 epochs)
    lr: float = 1e-3  # Adam learning rate
    weight_decay: float = 0.0  # the paper trains without weight decay
    lr_drop_epochs: List[int] = field(default_factory=lambda: [10])  # x0.1 at these epochs (HQ-SAM)
    batch_size: int = 4  # images per process and step (one prompt each); 8 GPUs x 4 = 32
    epochs: int = 12  # length of the run when steps == 0
    steps: int = 0  # > 0: run exactly this many optimiser steps instead of `epochs`
    loss: str = "points"  # "points": BCE + dice on sampled points (HQ-SAM); "full": every pixel
    num_points: int = 112 * 112  # points per mask for the "points" loss
    oversample_ratio: float = 3.0  # candidates per kept point for importance sampling
    importance_sample_ratio: float = 0.75  # share of points taken where the logits are uncertain
    amp: str = "none"  # "bf16" | "fp16": autocast for the frozen encoder + decoder, CUDA only
    # --- bookkeeping
    out_dir: str = "runs/stable_sam"  # checkpoints, log.csv and the final plugin file
    ckpt_every: int = 1000  # write checkpoint.pt every this many steps (and at the end)
    log_every: int = 10  # console/tqdm refresh period in steps (log.csv gets every step)
    seed: int = 0  # seeds sample draws, data order, and initial RNG states
    num_workers: int = 4  # data-loader workers per process; results do not depend on it
    device: str = "auto"  # "auto" = cuda:LOCAL_RANK when available, else cpu
    deterministic: bool = False  # torch.use_deterministic_algorithms (bit-identical resumes on GPU)
    cpu_threads: int = 0  # torch.set_num_threads when training on CPU; 0 keeps torch's default

    def __post_init__(self) -> None:
        baselines.get_method(self.method)  # raises with the list of methods
        if self.loss not in ("points", "full"):
            raise ValueError(f"TrainConfig.loss must be 'points' or 'full', got {self.loss!r}")
        if self.amp not in ("none", "bf16", "fp16"):
            raise ValueError(f"TrainConfig.amp must be 'none', 'bf16' or 'fp16', got {self.amp!r}")
        for name in ("batch_size", "ckpt_every", "log_every", "num_points"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"TrainConfig.{name} must be >= 1, got {getattr(self, name)!r}")
        if self.steps < 0 or self.epochs < 0 or (self.steps == 0 and self.epochs == 0):
            raise ValueError(
                f"TrainConfig needs steps > 0 or epochs > 0, got steps={self.steps}, "
                f"epochs={self.epochs}"
            )
        if self.cpu_threads < 0:
            raise ValueError(f"TrainConfig.cpu_threads must be >= 0, got {self.cpu_threads}")
        if self.num_workers < 0:
            raise ValueError(f"TrainConfig.num_workers must be >= 0, got {self.num_workers}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"TrainConfig.lr must be finite and > 0, got {self.lr}")
        if len(self.lsj_scale) != 2 or not 0 < self.lsj_scale[0] <= self.lsj_scale[1]:
            raise ValueError(f"TrainConfig.lsj_scale must be [low, high], 0 < low <= high, "
                             f"got {self.lsj_scale}")
        if isinstance(self.data, (str, os.PathLike)):
            self.data = [str(self.data)]
        self.data = [str(d) for d in self.data]

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "TrainConfig":
        check_known_fields(cls, d, "TrainConfig.from_dict")
        return cls(**d)

    def replace(self, **changes: Any) -> "TrainConfig":
        return dataclasses.replace(self, **changes)


# A run small enough for a laptop CPU: random `tiny` SAM (256 px input, 16x16 embedding) and
# generated shapes. Its purpose is to exercise the whole pipeline, not to learn anything useful.
PRESETS: Dict[str, Dict[str, Any]] = {
    "tiny": dict(
        model_type="tiny",
        steps=500,
        batch_size=4,
        lr_drop_epochs=[],
        num_points=48 * 48,
        ckpt_every=100,
        log_every=50,
        num_workers=0,
        # The model is so small that a second thread costs more in synchronisation than it
        # gains (and on a busy machine, far more).
        cpu_threads=1,
        out_dir="runs/tiny",
    ),
}


# --------------------------------------------------------------------------------------------
# Processes and devices


@dataclass(frozen=True)
class DistContext:
    """Where this process sits: torchrun's RANK / WORLD_SIZE / LOCAL_RANK, or a lone process."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @classmethod
    def from_env(cls) -> "DistContext":
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return cls()
        return cls(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))


def _resolve_device(config: TrainConfig, ctx: DistContext) -> torch.device:
    if config.device != "auto":
        device = torch.device(config.device)
        if device.type == "cuda" and ctx.distributed and device.index is None:
            device = torch.device("cuda", ctx.local_rank)
        return device
    if torch.cuda.is_available():
        return torch.device("cuda", ctx.local_rank if ctx.distributed else torch.cuda.current_device())
    return torch.device("cpu")


def _init_process_group(ctx: DistContext, device: torch.device) -> None:
    if not ctx.distributed or dist.is_initialized():
        return
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")


def _mean_over_ranks(values: Tensor, ctx: DistContext) -> Tensor:
    if ctx.distributed:
        values = values.clone()
        dist.all_reduce(values)
        values /= ctx.world_size
    return values


# --------------------------------------------------------------------------------------------
# RNG states (plain lists and tensors, so checkpoints load with weights_only=True)


def _capture_rng_state(device: Optional[torch.device] = None) -> Dict[str, Any]:
    # Only this process's own GPU: get_rng_state_all() would open a context on every visible GPU
    # from every rank.
    version, mt_state, gauss = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    on_gpu = device is not None and device.type == "cuda"
    state = {
        "python": [version, list(mt_state), gauss],
        "numpy": [np_name, torch.from_numpy(np_keys.astype(np.int64)), int(np_pos),
                  int(np_has_gauss), float(np_gauss)],
        "torch": torch.get_rng_state(),
        "cuda": [torch.cuda.get_rng_state(device)] if on_gpu else [],
    }
    return state


def _restore_rng_state(state: Dict[str, Any], device: Optional[torch.device] = None) -> None:
    version, mt_state, gauss = state["python"]
    random.setstate((version, tuple(mt_state), gauss))
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = state["numpy"]
    np.random.set_state((np_name, np_keys.numpy().astype(np.uint32), np_pos, np_has_gauss, np_gauss))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and device is not None and device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"][0], device)


def _seed_everything(seed: int, rank: int) -> None:
    seed = (seed * 1000003 + rank) % (2**31)
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _step_generator(seed: int, step: int, rank: int, device: torch.device) -> torch.Generator:
    """The loss's point-sampling draws for one step: a function of (seed, step, rank) only."""
    g = torch.Generator(device=device)
    g.manual_seed(int(np.random.SeedSequence([seed, step, rank, 0x5EED]).generate_state(1)[0]))
    return g


# --------------------------------------------------------------------------------------------
# Checkpoints


class CheckpointError(RuntimeError):
    """A training checkpoint that cannot be read or does not fit this run."""


def _atomic_torch_save(obj: Any, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes it owner-only; a checkpoint is an ordinary file
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


# Fields a resumed run may change: how long it runs and how it reports, not what it computes.
RESUME_MAY_CHANGE = ("steps", "epochs", "out_dir", "num_workers", "log_every", "ckpt_every",
                     "device", "cpu_threads")


def _check_resume_config(saved: TrainConfig, config: TrainConfig) -> None:
    changed = [f.name for f in dataclasses.fields(TrainConfig)
               if f.name not in RESUME_MAY_CHANGE and getattr(saved, f.name) != getattr(config, f.name)]
    if changed:
        details = ", ".join(f"{k}: {getattr(saved, k)!r} -> {getattr(config, k)!r}" for k in changed)
        raise CheckpointError(
            f"cannot resume: the config differs from the checkpoint's in {details}; only "
            f"{', '.join(RESUME_MAY_CHANGE)} may change (start a new --out to change the others)"
        )


def saved_config(out_dir: str | os.PathLike) -> TrainConfig:
    """The config stored in `<out_dir>/checkpoint.pt` (the starting point for a resume)."""
    return TrainConfig.from_dict(load_train_checkpoint(Path(out_dir) / CHECKPOINT_NAME)["config"])


def load_train_checkpoint(path: str | os.PathLike) -> Dict[str, Any]:
    """Reads a checkpoint written by `train` (weights_only); raises CheckpointError if unusable."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"training checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated zip, foreign pickle, ...: one clear message
        raise CheckpointError(
            f"could not read training checkpoint {path}: the file is corrupt or not a "
            f"stable-sam training checkpoint ({type(exc).__name__}: {exc})"
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


# --------------------------------------------------------------------------------------------
# Model, data and the prompted decoder (adapters over stable_sam.build / stable_sam.data)


def _plugin_config(config: TrainConfig, spec: baselines.MethodSpec):
    from ..modeling.plugins import PluginConfig

    fields = dict(config.plugin)
    if not spec.use_routing:
        fields["use_routing"] = False
    return PluginConfig.from_dict(fields)


def build_model(config: TrainConfig) -> nn.Module:
    from ..build import build_stable_sam

    spec = baselines.get_method(config.method)
    return build_stable_sam(
        config.model_type,
        sam_checkpoint=config.sam_checkpoint,
        plugin_checkpoint=config.plugin_checkpoint,
        plugin_config=_plugin_config(config, spec),
    )


def _rts_config(config: TrainConfig, spec: baselines.MethodSpec, image_size: int):
    from ..data.prompts import RTSConfig

    fields = dict(config.rts)
    if not spec.robust_prompts:
        fields.update(_GT_BOX_ONLY)
    fields["model_image_size"] = image_size  # coarse-mask logits must match this model's input
    check_known_fields(RTSConfig, fields, "rts (RTSConfig)")
    if "noisy_box_iou_range" in fields:
        fields["noisy_box_iou_range"] = tuple(fields["noisy_box_iou_range"])
    return RTSConfig(**fields)


# "Without RTS": every prompt is the ground-truth box and nothing is occluded.
_GT_BOX_ONLY: Dict[str, Any] = {"weights": {"box": 1.0}, "occlusion_probability": 0.0}


def _data_pairs(folder: str) -> List[Tuple[Path, Path]]:
    """`folder` with im/ and gt/ (DIS5K, the synthetic sets), or one folder holding both the
    .jpg images and the .png masks (cascade_psp's DUTS-TR, ECSSD, ...)."""
    root = Path(folder)
    if not root.is_dir():
        raise FileNotFoundError(f"training data folder not found: {root}")
    if (root / "im").is_dir():
        return [(root / "im", root / "gt")]
    return [(root, root)]


def _load_datasets(config: TrainConfig) -> List[Any]:
    from ..data.hqseg import HQSegDataset

    datasets = [HQSegDataset(_data_pairs(folder), name=f"train{i}-{Path(folder).name}")
                for i, folder in enumerate(config.data)]
    if config.hqseg44k_root is not None:
        from ..data.hqseg import hqseg44k_datasets

        datasets += hqseg44k_datasets(config.hqseg44k_root, "train")
    if not datasets:
        raise ValueError("no training data: give data folders or hqseg44k_root "
                         "(stable-sam train --data DIR ... / --hqseg44k-root DATA_ROOT)")
    return datasets


def _image_size(model: nn.Module) -> int:
    return int(model.image_encoder.img_size)


class TrainingSamples(torch.utils.data.Dataset):
    """(epoch, index) -> one augmented image, its mask and one prompt, all drawn from generators
    keyed by (seed, dataset, image, epoch): the same sample whichever worker or process builds it
    (one prompt per image per epoch: `prompt_index` is the epoch)."""

    def __init__(self, datasets: Sequence[Any], config: TrainConfig, image_size: int):
        self.datasets = list(datasets)
        self.offsets = np.cumsum([0] + [len(d) for d in self.datasets])
        self.config = config
        self.rts = _rts_config(config, baselines.get_method(config.method), image_size)
        self.image_size = image_size

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def locate(self, index: int) -> Tuple[int, int]:
        d = int(np.searchsorted(self.offsets, index, side="right") - 1)
        return d, index - int(self.offsets[d])

    def __getitem__(self, key: Tuple[int, int]) -> Dict[str, Any]:
        from ..data.occlusion import paste_occluder
        from ..data.prompts import prompt_rng, sample_training_prompt

        epoch, index = key
        d, local = self.locate(index)
        dataset = self.datasets[d]
        item = dataset[local]

        def rng(stream: str) -> np.random.Generator:
            return prompt_rng(dataset.name, local, epoch, self.config.seed, stream=stream)

        if not item["mask"].any():
            raise ValueError(f"training image {item['name']!r} (#{local} of {dataset.name}) has an "
                             "empty mask: every training image needs a foreground object")
        image, mask = self._geometry(item["image"], item["mask"], rng("jitter"))
        occlusion_rng = rng("occlusion")
        if len(self) > 1 and occlusion_rng.uniform() < self.rts.occlusion_probability:
            other = int(occlusion_rng.integers(len(self) - 1))
            other += other >= index  # any image but this one
            od, olocal = self.locate(other)
            occluder = self.datasets[od][olocal]
            image, mask = paste_occluder(image, mask, occluder["image"], occluder["mask"],
                                         occlusion_rng)
        prompt = sample_training_prompt(mask, rng("prompt"), self.rts,
                                        image_size=(self.image_size, self.image_size))
        return {
            "image": torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1),  # (3, S, S)
            "mask": torch.from_numpy(mask)[None],  # (1, S, S) bool
            "prompt": _prompt_to_tensors(prompt),
            "kind": prompt.kind,
        }

    def _geometry(self, image: np.ndarray, mask: np.ndarray, rng: np.random.Generator):
        """LSJ onto the S x S canvas, or resize-longest-side + pad; never an empty target."""
        from ..data.transforms import large_scale_jitter, pad_bottom_right, resize_longest_side

        size = self.image_size
        if self.config.lsj:
            # A large scale can crop the object away; redraw (same generator, so still
            # reproducible), then fall back to the plain resize.
            for _ in range(10):
                j = large_scale_jitter(image, mask, rng, size, tuple(self.config.lsj_scale))
                if j.mask.any():
                    return j.image, j.mask
        image = pad_bottom_right(resize_longest_side(image, size), size)
        mask = pad_bottom_right(resize_longest_side(mask, size), size, False)
        if not mask.any():
            raise ValueError("a training mask vanished when resized to the model input size")
        return image, mask


def _prompt_to_tensors(prompt: Any) -> Dict[str, Optional[Tensor]]:
    def t(x):
        return None if x is None else torch.from_numpy(np.asarray(x))

    mask_input = t(prompt.mask_input)
    return {
        "point_coords": t(prompt.point_coords),  # (k, 2) xy in the S x S input frame
        "point_labels": t(prompt.point_labels),  # (k,)
        "box": t(prompt.box),  # (4,) xyxy
        "mask_input": None if mask_input is None else mask_input[None],  # (1, S/4, S/4) logits
    }


def _collate(items: List[Dict[str, Any]]) -> Dict[str, Any]:
    return {
        "image": torch.stack([it["image"] for it in items]),  # (B, 3, S, S) uint8
        "mask": torch.stack([it["mask"] for it in items]),  # (B, 1, S, S) bool
        "prompts": [it["prompt"] for it in items],
        "kinds": [it["kind"] for it in items],
    }


class PromptedDecoder(nn.Module):
    """Prompt encoding + (plugin) mask decoding for a batch of images with one prompt each.

    Prompts of different types have different numbers of sparse tokens, so they are decoded in
    groups of equal structure; each prompt gets its own image's embedding (batch N decode), which
    avoids SAM's repeat of one embedding per prompt. One forward per step, so DDP can wrap it.
    """

    def __init__(self, model: nn.Module, uses_plugins: bool):
        super().__init__()
        self.model = model
        self.uses_plugins = uses_plugins

    def forward(self, image_embeddings: Tensor, prompts: List[Dict[str, Optional[Tensor]]]) -> Tensor:
        model = self.model
        n = image_embeddings.shape[0]
        image_pe = model.prompt_encoder.get_dense_pe()
        groups: Dict[Tuple, List[int]] = {}
        for i, p in enumerate(prompts):
            groups.setdefault(_prompt_signature(p), []).append(i)
        out: List[Optional[Tensor]] = [None] * n
        for indices in groups.values():
            points, boxes, masks = _stack_prompts([prompts[i] for i in indices],
                                                  image_embeddings.device)
            with torch.no_grad():  # the prompt encoder never trains
                sparse, dense = model.prompt_encoder(points=points, boxes=boxes, masks=masks)
            low_res, _ = model.decode(
                image_embeddings[indices], image_pe, sparse, dense, multimask_output=False,
                use_plugins=self.uses_plugins,
            )
            for j, i in enumerate(indices):
                out[i] = low_res[j]
        return torch.stack(out)  # (N, 1, h, w)


def _prompt_signature(p: Dict[str, Optional[Tensor]]) -> Tuple:
    coords = p.get("point_coords")
    return (
        None if coords is None else int(coords.shape[0]),
        p.get("box") is not None,
        p.get("mask_input") is not None,
    )


def _stack_prompts(prompts: List[Dict[str, Optional[Tensor]]], device: torch.device):
    first = prompts[0]
    points = boxes = masks = None
    if first.get("point_coords") is not None:
        points = (torch.stack([p["point_coords"] for p in prompts]).to(device, torch.float32),
                  torch.stack([p["point_labels"] for p in prompts]).to(device, torch.int64))
    if first.get("box") is not None:
        boxes = torch.stack([p["box"] for p in prompts]).to(device, torch.float32)
    if first.get("mask_input") is not None:
        masks = torch.stack([p["mask_input"] for p in prompts]).to(device, torch.float32)
    return points, boxes, masks


# --------------------------------------------------------------------------------------------
# Learning rate, logging


def get_lr(config: TrainConfig, step: int, steps_per_epoch: int) -> float:
    """Learning rate for 0-based `step`: x0.1 after each epoch in lr_drop_epochs."""
    epoch = step // steps_per_epoch
    drops = sum(1 for e in config.lr_drop_epochs if epoch >= e)
    return config.lr * (0.1 ** drops)


LOG_FIELDS = ["step", "epoch", "loss", "loss_bce", "loss_dice", "lr", "step_time_s",
              "elapsed_s", "images_per_s", "prompt_kinds"]


class CsvLog:
    """log.csv, one flushed line per step (a single write per line, so a kill leaves whole
    lines). On resume, lines past the checkpoint's step are dropped: they will be redone."""

    def __init__(self, path: Path, resume_step: Optional[int]):
        self.path = path
        if resume_step is not None and path.is_file():
            self._truncate_after(resume_step)
        elif path.exists():
            path.unlink()
        new = not path.is_file()
        self.file = open(path, "a", encoding="utf-8", newline="")
        if new:
            self._write_row(LOG_FIELDS)

    def _truncate_after(self, step: int) -> None:
        with open(self.path, encoding="utf-8", newline="") as f:
            rows = list(csv.reader(f))
        kept = [rows[0]] + [r for r in rows[1:] if len(r) == len(LOG_FIELDS) and r[0].isdigit()
                            and int(r[0]) <= step] if rows else []
        buf = io.StringIO()
        csv.writer(buf).writerows(kept)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.")
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
            f.write(buf.getvalue())
        os.replace(tmp, self.path)

    def _write_row(self, row: Sequence[Any]) -> None:
        buf = io.StringIO()
        csv.writer(buf).writerow(row)
        self.file.write(buf.getvalue())
        self.file.flush()

    def write(self, record: Dict[str, Any]) -> None:
        self._write_row([record[k] for k in LOG_FIELDS])

    def close(self) -> None:
        self.file.close()


def _tensorboard_writer(out_dir: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # optional: tensorboard is not a dependency
        return None
    return SummaryWriter(log_dir=str(out_dir / "tensorboard"))


# --------------------------------------------------------------------------------------------
# The loop


def _gather_kinds(kinds: List[str], ctx: DistContext) -> List[str]:
    if not ctx.distributed:
        return list(kinds)
    gathered: List[Any] = [None] * ctx.world_size
    dist.all_gather_object(gathered, list(kinds))
    return [k for rank_kinds in gathered for k in rank_kinds]


def _count_kinds(kinds: Sequence[str]) -> str:
    counts: Dict[str, int] = {}
    for k in kinds:
        counts[k] = counts.get(k, 0) + 1
    return ";".join(f"{k}:{v}" for k, v in sorted(counts.items()))


def _batches_for_epoch(num_samples: int, epoch: int, start_batch: int, steps_per_epoch: int,
                       config: TrainConfig, ctx: DistContext) -> List[List[Tuple[int, int]]]:
    sampler = DistributedSampler(range(num_samples), num_replicas=ctx.world_size, rank=ctx.rank,
                                 shuffle=True, seed=config.seed, drop_last=True)
    sampler.set_epoch(epoch)
    order = list(sampler)
    bs = config.batch_size
    return [[(epoch, i) for i in order[b * bs:(b + 1) * bs]]
            for b in range(start_batch, steps_per_epoch)]


def _autocast(config: TrainConfig, device: torch.device):
    if config.amp == "none" or device.type != "cuda":
        return torch.autocast(device_type=device.type, enabled=False)
    dtype = torch.bfloat16 if config.amp == "bf16" else torch.float16
    return torch.autocast(device_type="cuda", dtype=dtype)


def _save_final_weights(model: nn.Module, config: TrainConfig, spec: baselines.MethodSpec,
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


class _StopRequest:
    """SIGTERM (a cluster's pre-emption notice, `kill`, torchrun forwarding one) asks the loop to
    finish its step, write a checkpoint and return, so `--resume` loses nothing. Only the main
    thread can install signal handlers; elsewhere the request simply never comes."""

    def __init__(self) -> None:
        self.requested = False
        self._previous = None

    def _handle(self, signum, frame) -> None:
        self.requested = True

    def __enter__(self) -> "_StopRequest":
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        return self

    def __exit__(self, *exc_info) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)


def _ignore_sigterm(worker_id: int) -> None:
    # A SIGTERM sent to the whole process group must reach the trainer, not kill its workers
    # mid-batch; the trainer shuts them down itself when it stops.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def train(config: TrainConfig, *, resume: bool = False,
          ctx: Optional[DistContext] = None) -> Dict[str, Any]:
    """Runs (or resumes) training; see `_train`. Restores torch's deterministic-algorithms
    switch, thread count and SIGTERM handler afterwards, so an in-process call leaks none."""
    deterministic, threads = torch.are_deterministic_algorithms_enabled(), torch.get_num_threads()
    try:
        with _StopRequest() as stop:
            return _train(config, resume=resume, ctx=ctx, stop=stop)
    finally:
        torch.use_deterministic_algorithms(deterministic)
        torch.set_num_threads(threads)


def _train(config: TrainConfig, *, resume: bool, ctx: Optional[DistContext],
           stop: _StopRequest) -> Dict[str, Any]:
    """Runs (or resumes) training; returns a dict: step, loss (last step's), model (the trained
    StableSam), checkpoint, stopped (True when SIGTERM ended the run early, after writing a
    checkpoint) and, on rank 0 of a finished run, weights (the final plugin / baseline file).

    With `resume`, the run continues from `<out_dir>/checkpoint.pt`; `config` must equal the
    checkpoint's config (`saved_config(out_dir)`) except in RESUME_MAY_CHANGE fields.
    """
    ctx = ctx if ctx is not None else DistContext.from_env()
    out_dir = Path(config.out_dir)
    ckpt = None
    if resume:
        ckpt = load_train_checkpoint(out_dir / CHECKPOINT_NAME)
        _check_resume_config(TrainConfig.from_dict(ckpt["config"]), config)
        if ckpt["world_size"] != ctx.world_size:
            raise CheckpointError(
                f"checkpoint was written by {ckpt['world_size']} process(es), this run has "
                f"{ctx.world_size}: the data order and RNG states would not continue exactly"
            )
    spec = baselines.get_method(config.method)
    device = _resolve_device(config, ctx)
    owns_group = ctx.distributed and not dist.is_initialized()
    _init_process_group(ctx, device)
    if config.deterministic:
        if device.type == "cuda":  # cuBLAS needs this to be reproducible; read at first use
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        # warn_only: the "full" loss's bilinear upsampling has no deterministic CUDA backward;
        # the "points" loss and the plugin op do.
        torch.use_deterministic_algorithms(True, warn_only=True)
    if device.type == "cpu" and config.cpu_threads > 0:
        torch.set_num_threads(config.cpu_threads)
    _seed_everything(config.seed, ctx.rank)

    model = build_model(config).to(device)
    trainable = baselines.freeze_all_but_trainable(model, spec.name)
    model.eval()  # SAM has no dropout/batch-norm; eval keeps any future ones frozen too
    decoder = PromptedDecoder(model, spec.uses_plugins)
    if ctx.distributed:
        decoder = nn.parallel.DistributedDataParallel(
            decoder, device_ids=[device.index] if device.type == "cuda" else None,
            # dt_sam's IoU head gets no gradient from the mask loss
            find_unused_parameters=True,
            broadcast_buffers=False,  # SAM's buffers (pixel mean/std, PE matrix) never change
        )
    params = [p for _, p in trainable]
    optimizer = torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)
    scaler = torch.amp.GradScaler("cuda", enabled=config.amp == "fp16" and device.type == "cuda")

    samples = TrainingSamples(_load_datasets(config), config, _image_size(model))
    global_batch = config.batch_size * ctx.world_size
    steps_per_epoch = len(samples) // global_batch
    if steps_per_epoch < 1:
        raise ValueError(
            f"the training data has {len(samples)} images, fewer than one global batch "
            f"({config.batch_size} x {ctx.world_size} processes)"
        )
    total_steps = config.steps if config.steps > 0 else config.epochs * steps_per_epoch

    step = 0
    if ckpt is not None:
        baselines.load_trainable_state_dict(model, spec.name, ckpt["trainable"])
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
        _restore_rng_state(ckpt["rng"][ctx.rank], device)

    log = tb = None
    if ctx.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        log = CsvLog(out_dir / LOG_NAME, step if ckpt is not None else None)
        tb = _tensorboard_writer(out_dir)
    from tqdm.auto import tqdm

    bar = tqdm(total=total_steps, initial=step, unit="step",
               disable=not (ctx.is_main and sys.stderr.isatty()))

    def save_checkpoint() -> None:
        rng = _capture_rng_state(device)
        if ctx.distributed:
            gathered: List[Any] = [None] * ctx.world_size
            dist.all_gather_object(gathered, rng)
        else:
            gathered = [rng]
        if ctx.is_main:
            _atomic_torch_save({
                "format": CHECKPOINT_FORMAT,
                "version": CHECKPOINT_VERSION,
                "config": config.to_dict(),
                "step": step,
                "epoch": step // steps_per_epoch,
                "batch_in_epoch": step % steps_per_epoch,
                "world_size": ctx.world_size,
                "trainable": baselines.trainable_state_dict(model, spec.name),
                "optimizer": optimizer.state_dict(),
                "scaler": scaler.state_dict() if scaler.is_enabled() else {},
                "rng": gathered,
            }, out_dir / CHECKPOINT_NAME)

    started = time.perf_counter()
    last_loss = float("nan")
    stopped = False
    while step < total_steps and not stopped:
        epoch, start_batch = divmod(step, steps_per_epoch)
        batches = _batches_for_epoch(len(samples), epoch, start_batch, steps_per_epoch, config, ctx)
        batches = batches[: total_steps - step]
        # Its own generator: creating a loader draws a worker base seed, which must not come
        # from (and shift) the global RNG, or a resumed run would drift from an uninterrupted one.
        loader_rng = torch.Generator().manual_seed(config.seed * 100003 + epoch)
        loader = DataLoader(samples, batch_sampler=batches, num_workers=config.num_workers,
                            collate_fn=_collate, pin_memory=device.type == "cuda",
                            generator=loader_rng, worker_init_fn=_ignore_sigterm)
        for batch in loader:
            t0 = time.perf_counter()
            lr = get_lr(config, step, steps_per_epoch)
            for group in optimizer.param_groups:
                group["lr"] = lr
            images = batch["image"].to(device, non_blocking=True).float()
            targets = batch["mask"].to(device, non_blocking=True)
            prompts = batch["prompts"]
            with torch.no_grad(), _autocast(config, device):
                embeddings = model.image_encoder(model.preprocess(images))
            with _autocast(config, device):
                logits = decoder(embeddings, prompts)
            bce, dice = mask_loss(
                config.loss, logits.float(), targets, num_points=config.num_points,
                oversample_ratio=config.oversample_ratio,
                importance_sample_ratio=config.importance_sample_ratio,
                generator=_step_generator(config.seed, step, ctx.rank, device),
            )
            loss = bce + dice
            # Averaged over ranks before the update: every rank sees the same value, so a
            # non-finite loss stops all of them before it reaches the weights or a checkpoint.
            # The stop request rides along, so every rank stops after the same step.
            flags = torch.stack([loss.detach(), bce.detach(), dice.detach(),
                                 loss.new_tensor(float(stop.requested))])
            *losses, stop_votes = _mean_over_ranks(flags, ctx).tolist()
            if not math.isfinite(losses[0]):
                raise FloatingPointError(
                    f"loss is {losses[0]} at step {step + 1}; stopping (the last checkpoint is "
                    f"intact: lower --lr or use --amp bf16 instead of fp16, then --resume)"
                )
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            step += 1

            kinds = _gather_kinds(batch["kinds"], ctx)
            last_loss = losses[0]
            now = time.perf_counter()
            if log is not None:
                record = {
                    "step": step, "epoch": epoch, "loss": f"{losses[0]:.6f}",
                    "loss_bce": f"{losses[1]:.6f}", "loss_dice": f"{losses[2]:.6f}",
                    "lr": f"{lr:.3g}", "step_time_s": f"{now - t0:.4f}",
                    "elapsed_s": f"{now - started:.2f}",
                    "images_per_s": f"{global_batch / max(now - t0, 1e-9):.2f}",
                    "prompt_kinds": _count_kinds(kinds),
                }
                log.write(record)
                if tb is not None:
                    tb.add_scalar("train/loss", losses[0], step)
                    tb.add_scalar("train/lr", lr, step)
            bar.update(1)
            if step % config.log_every == 0:
                bar.set_postfix(loss=f"{losses[0]:.4f}", lr=f"{lr:.2g}")
                if ctx.is_main and bar.disable:
                    print(f"step {step}/{total_steps} | loss {losses[0]:.4f} "
                          f"(bce {losses[1]:.4f}, dice {losses[2]:.4f}) | lr {lr:.2g} | "
                          f"{(now - t0) * 1000:.0f} ms/step", flush=True)
            stopped = stop_votes > 0
            if step % config.ckpt_every == 0 or step == total_steps or stopped:
                save_checkpoint()
            if stopped:
                break
    bar.close()
    result: Dict[str, Any] = {"step": step, "loss": last_loss, "model": model,
                              "checkpoint": str(out_dir / CHECKPOINT_NAME), "stopped": stopped}
    if ctx.is_main:
        if stopped:
            print(f"stopped by SIGTERM after step {step}; {out_dir / CHECKPOINT_NAME} is up to "
                  "date, continue with --resume", file=sys.stderr, flush=True)
        else:
            result["weights"] = str(_save_final_weights(model, config, spec, out_dir))
        log.close()
        if tb is not None:
            tb.close()
    if ctx.distributed:
        dist.barrier()
        if owns_group:
            dist.destroy_process_group()
    return result
