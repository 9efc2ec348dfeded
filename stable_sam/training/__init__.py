"""Training the plugins (or a baseline) on a frozen SAM: see `loop` for the commands."""
from stable_sam.training.checkpointing import (
    CHECKPOINT_NAME,
    CheckpointError,
    load_train_checkpoint,
    saved_config,
)
from stable_sam.training.config import PRESETS, TrainConfig
from stable_sam.training.distributed import DistContext
from stable_sam.training.log import LOG_NAME
from stable_sam.training.loop import train

__all__ = [
    "CHECKPOINT_NAME",
    "LOG_NAME",
    "PRESETS",
    "CheckpointError",
    "DistContext",
    "TrainConfig",
    "load_train_checkpoint",
    "saved_config",
    "train",
]
