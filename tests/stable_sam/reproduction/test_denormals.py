"""The reproduction flushes denormal floats while it runs and leaves IEEE arithmetic behind it
(the flag is process-wide: a test after it, or a user's code, must not inherit it)."""
import torch

from stable_sam.cli import main
from stable_sam.reproduction.base_sam import BaseTrainConfig, train_base_sam
from stable_sam.reproduction.denormals import denormals_flushed

DENORMAL = 1e-40  # below float32's smallest normal (1.2e-38)


def _kept() -> bool:
    return (torch.tensor([DENORMAL]) * 1.0).item() != 0.0


def test_flushed_inside_and_kept_after():
    assert _kept()
    with denormals_flushed():
        assert not _kept()
    assert _kept()


def test_the_base_stage_and_the_command_leave_denormals_kept(tmp_path, monkeypatch):
    from stable_sam.reproduction import base_sam

    seen = []
    real = base_sam._train
    monkeypatch.setattr(base_sam, "_train", lambda *a: seen.append(_kept()) or real(*a))
    train_base_sam(BaseTrainConfig(num_scenes=2, steps=1), tmp_path / "b.safetensors",
                   progress=False)
    assert seen == [False] and _kept()
    assert main(["reproduce", "--out", str(tmp_path / "r"), "--train-scenes", "8",
                 "--test-scenes", "1", "--base-steps", "1", "--prompts-per-image", "2"]) == 0
    assert _kept()
