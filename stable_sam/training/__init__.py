"""Training the plugins (or a baseline) on a frozen SAM: see `trainer` for the commands."""
from stable_sam.training.trainer import (
    CHECKPOINT_NAME,
    LOG_NAME,
    PRESETS,
    CheckpointError,
    TrainConfig,
    load_train_checkpoint,
    saved_config,
    train,
)

__all__ = [
    "CHECKPOINT_NAME",
    "LOG_NAME",
    "PRESETS",
    "CheckpointError",
    "TrainConfig",
    "load_train_checkpoint",
    "saved_config",
    "train",
]
