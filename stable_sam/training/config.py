"""What a training run depends on: `TrainConfig`, the named presets, and the learning-rate
schedule it defines."""
from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from . import baselines
from .._config_fields import check_known_fields

__all__ = ["TrainConfig", "PRESETS", "get_lr"]


# Upper bounds: each value above them asks for more memory (or processes) than any machine has;
# the paper's settings are far below (batch 4 per GPU, 112 x 112 points, 4 workers).
_UPPER_BOUNDS = {"batch_size": 1024, "num_points": 1024 * 1024, "oversample_ratio": 100.0,
                 "num_workers": 256, "cpu_threads": 4096}
MAX_LSJ_SCALE = 10.0


@dataclass
class TrainConfig:
    """Everything a run depends on; saved as a dict inside every checkpoint."""

    # --- model
    # SAM backbone (vit_b | vit_l | vit_h | tiny) or HQ-SAM (hq_vit_b | hq_vit_l | hq_vit_h |
    # hq_vit_tiny | hq_tiny); the paper uses ViT-L
    model_type: str = "vit_l"
    sam_checkpoint: Optional[str] = None  # official SAM weights; None = random init (tests only)
    plugin_checkpoint: Optional[str] = None  # warm-start the plugins from a save_plugins file
    method: str = "stable_sam"  # see stable_sam.training.baselines.METHODS
    plugin: Dict[str, Any] = field(default_factory=dict)  # PluginConfig fields over its defaults
    # --- data
    data: List[str] = field(default_factory=list)  # HQSeg-layout folders (im/ + gt/), concatenated
    hqseg44k_root: Optional[str] = None  # HQ-SAM's data/ root: adds HQSeg-44K's 7 training sets
    # RTSConfig fields over its defaults (all prompt kinds, noisy boxes at scale 0.4); the
    # paper's RTS also pastes occluders, which RTSConfig leaves off by default. The paper gives
    # no rate; 0.25 keeps three samples in four unoccluded, so every prompt kind is also seen
    # on whole objects.
    rts: Dict[str, Any] = field(default_factory=lambda: {"occlusion_probability": 0.25})
    lsj: bool = True  # large-scale jitter as HQ-SAM; False = resize longest side + pad
    lsj_scale: List[float] = field(default_factory=lambda: [0.1, 2.0])  # LSJ scale range
    # keep each training image's embedding after its first step (training/embedding_cache.py):
    # the encoder is frozen, so without LSJ a step is decoder-only (an occluded image is still
    # encoded for its step). Needs lsj off: a jittered image is new at every step.
    cache_embeddings: bool = False
    # --- optimisation (paper §9: Adam, lr 1e-3, no weight decay; §5.1: one epoch)
    lr: float = 1e-3  # Adam learning rate
    weight_decay: float = 0.0  # the paper trains without weight decay
    # x0.1 at these epochs; one epoch has no drop (the "epochs12" preset drops at 10, as HQ-SAM)
    lr_drop_epochs: List[int] = field(default_factory=list)
    batch_size: int = 4  # images per process and step (one prompt each); 8 GPUs x 4 = 32
    # Length of the run when steps == 0. The paper's headline results (Tables 1-5) train the
    # plugins for one epoch; Table 6's 12-epoch rows are the "epochs12" preset.
    epochs: int = 1
    steps: int = 0  # > 0: run exactly this many optimiser steps instead of `epochs`
    loss: str = "points"  # "points": BCE + dice on sampled points (HQ-SAM); "full": every pixel
    num_points: int = 112 * 112  # points per mask for the "points" loss
    oversample_ratio: float = 3.0  # candidates per kept point for importance sampling
    importance_sample_ratio: float = 0.75  # share of points taken where the logits are uncertain
    amp: str = "none"  # "bf16" (CUDA or CPU) | "fp16" (CUDA only): autocast, encoder + decoder
    # --- bookkeeping
    out_dir: str = "runs/stable_sam"  # checkpoints, log.csv and the final plugin file
    ckpt_every: int = 1000  # write checkpoint.pt every this many steps (and at the end)
    log_every: int = 10  # console/tqdm refresh period in steps (log.csv gets every step)
    seed: int = 0  # seeds sample draws, data order, and initial RNG states
    num_workers: int = 4  # data-loader workers per process; results do not depend on it
    device: str = "auto"  # "auto" = cuda:LOCAL_RANK when available, else cpu
    deterministic: bool = False  # torch.use_deterministic_algorithms (bit-identical resumes on GPU)
    cpu_threads: int = 0  # torch.set_num_threads when training on CPU; 0 keeps torch's default
    skip_bad_samples: bool = False  # drop samples the data check refuses instead of stopping

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
        if self.cache_embeddings and self.lsj:
            raise ValueError("TrainConfig.cache_embeddings needs lsj off (--no-lsj): a jittered "
                             "image is a new image at every step, so there is nothing to reuse")
        self._check_bounds()
        if isinstance(self.data, (str, os.PathLike)):
            self.data = [str(self.data)]
        self.data = [str(d) for d in self.data]

    def _check_bounds(self) -> None:
        """Values that would fill the machine's memory or make no sense, refused up front."""
        for name, high in _UPPER_BOUNDS.items():
            if getattr(self, name) > high:
                raise ValueError(f"TrainConfig.{name} must be <= {high}, got {getattr(self, name)}")
        if not (math.isfinite(self.oversample_ratio) and self.oversample_ratio >= 1):
            raise ValueError(f"TrainConfig.oversample_ratio must be finite and >= 1, "
                             f"got {self.oversample_ratio}")
        if not 0 <= self.importance_sample_ratio <= 1:
            raise ValueError(f"TrainConfig.importance_sample_ratio must be in [0, 1], "
                             f"got {self.importance_sample_ratio}")
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise ValueError(f"TrainConfig.weight_decay must be finite and >= 0, "
                             f"got {self.weight_decay}")
        if len(self.lsj_scale) == 2 and self.lsj_scale[1] > MAX_LSJ_SCALE:
            raise ValueError(f"TrainConfig.lsj_scale's high end must be <= {MAX_LSJ_SCALE} (the "
                             f"jittered canvas grows with its square), got {self.lsj_scale}")
        if any(not isinstance(e, int) or e < 0 for e in self.lr_drop_epochs):
            raise ValueError(f"TrainConfig.lr_drop_epochs must be epochs (integers >= 0), "
                             f"got {self.lr_drop_epochs}")

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "TrainConfig":
        check_known_fields(cls, d, "TrainConfig.from_dict")
        return cls(**d)

    def replace(self, **changes: Any) -> "TrainConfig":
        return dataclasses.replace(self, **changes)


PRESETS: Dict[str, Dict[str, Any]] = {
    # The paper's longer schedule (Table 6's "12 epochs" rows, and Table 2's DT-SAM / PT-SAM):
    # HQ-SAM's 12 epochs with the learning rate divided by 10 at epoch 10.
    "epochs12": dict(epochs=12, lr_drop_epochs=[10]),
    # A run small enough for a laptop CPU: random `tiny` SAM (256 px input, 16x16 embedding) and
    # generated shapes. It exercises the whole pipeline; it does not learn anything useful.
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


def get_lr(config: TrainConfig, step: int, steps_per_epoch: int) -> float:
    """Learning rate for 0-based `step`: x0.1 after each epoch in lr_drop_epochs."""
    epoch = step // steps_per_epoch
    drops = sum(1 for e in config.lr_drop_epochs if epoch >= e)
    return config.lr * (0.1 ** drops)
