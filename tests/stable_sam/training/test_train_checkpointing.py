"""Reading training checkpoints: a clear CheckpointError for every unusable file, and which
config changes a resume accepts."""
import argparse

import pytest
import torch

from stable_sam.training import (
    CHECKPOINT_NAME,
    CheckpointError,
    TrainConfig,
    load_train_checkpoint,
)
from stable_sam.training.checkpointing import check_resume_config


def test_missing_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_train_checkpoint(tmp_path / CHECKPOINT_NAME)


@pytest.mark.parametrize("content", [b"", b"not a zip file at all", b"PK\x03\x04" + bytes(100)])
def test_corrupt_checkpoint_gives_a_clear_error(tmp_path, content):
    path = tmp_path / CHECKPOINT_NAME
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match="corrupt or not a stable-sam training checkpoint"):
        load_train_checkpoint(path)


def test_truncated_checkpoint_gives_a_clear_error(tmp_path):
    path = tmp_path / CHECKPOINT_NAME
    torch.save({"format": "stable-sam-train", "payload": torch.zeros(10000)}, path)
    path.write_bytes(path.read_bytes()[:3000])
    with pytest.raises(CheckpointError, match="corrupt"):
        load_train_checkpoint(path)


def test_foreign_or_incomplete_checkpoint(tmp_path):
    path = tmp_path / CHECKPOINT_NAME
    torch.save({"model": torch.zeros(2)}, path)  # e.g. a SAM checkpoint
    with pytest.raises(CheckpointError, match="expected format 'stable-sam-train'"):
        load_train_checkpoint(path)
    torch.save({"format": "stable-sam-train", "version": 1, "step": 3}, path)
    with pytest.raises(CheckpointError, match="missing the entries"):
        load_train_checkpoint(path)
    torch.save({"format": "stable-sam-train", "version": 99}, path)
    with pytest.raises(CheckpointError, match="version 99"):
        load_train_checkpoint(path)


def test_checkpoint_with_pickled_objects_is_refused(tmp_path):
    path = tmp_path / CHECKPOINT_NAME
    torch.save({"format": "stable-sam-train", "evil": argparse.Namespace(a=1)}, path)
    with pytest.raises(CheckpointError, match="corrupt or not"):
        load_train_checkpoint(path)  # weights_only=True refuses arbitrary classes


def test_resume_config_may_change_only_run_length_and_reporting():
    saved = TrainConfig(steps=10)
    check_resume_config(saved, saved.replace(steps=20, num_workers=0, log_every=1))
    with pytest.raises(CheckpointError, match="lr: 0.001 -> 0.01"):
        check_resume_config(saved, saved.replace(lr=1e-2))
