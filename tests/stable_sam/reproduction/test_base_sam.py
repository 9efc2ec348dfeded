"""The base SAM trainer of the reproduction: it trains (weights move, loss falls on a batch it
sees again) and writes a file the demo builder loads strictly."""
import pytest
import torch

from stable_sam.build import build_stable_sam
from stable_sam.cli import main
from stable_sam.reproduction.base_sam import BaseTrainConfig, train_base_sam
from stable_sam.families.demo.build import build_demo_sam


def test_trains_and_writes_a_loadable_base(tmp_path):
    path = tmp_path / "base.safetensors"
    summary = train_base_sam(BaseTrainConfig(num_scenes=4, steps=3, images_per_step=2, targets_per_image=2), path,
                             progress=False)
    assert summary["steps"] == 3 and path.is_file()
    model = build_stable_sam("demo", sam_checkpoint=str(path))
    # the file holds float16: compare with the initial weights rounded the same way
    initial = {k: v.half().float() if v.is_floating_point() else v
               for k, v in build_demo_sam().state_dict().items()}
    trained = model.sam.state_dict()
    moved = [k for k in initial if not torch.equal(initial[k], trained[k])]
    assert any(k.startswith("image_encoder.") for k in moved)
    assert any(k.startswith("mask_decoder.") for k in moved)


def test_a_foreign_file_is_refused(tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a safetensors file")
    from stable_sam.checkpoint import CheckpointError

    with pytest.raises(CheckpointError):
        build_stable_sam("demo", sam_checkpoint=str(bad))


def test_reproduce_refuses_bad_numbers_before_any_work(tmp_path, capsys):
    assert main(["reproduce", "--out", str(tmp_path / "r"), "--base-steps", "0"]) == 2
    assert "stable-sam reproduce: error: --base-steps must be >= 1, is 0" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("below", ["", "sub"])
def test_reproduce_refuses_a_work_folder_that_is_a_file(tmp_path, capsys, below):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    out = blocker / below if below else blocker
    assert main(["reproduce", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("stable-sam reproduce: error: --out") and "is not a folder" in err
    assert blocker.read_text() == "not a folder"


def test_reproduce_refuses_fewer_training_scenes_than_one_batch(tmp_path, capsys):
    assert main(["reproduce", "--out", str(tmp_path / "r"), "--train-scenes", "3"]) == 2
    assert ("stable-sam reproduce: error: --train-scenes must be >= 4 (one training batch), is 3"
            in capsys.readouterr().err)
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("steps", [1, 2, 20])
def test_base_trains_for_any_step_count_and_fewer_scenes_than_a_step_takes(tmp_path, steps):
    summary = train_base_sam(BaseTrainConfig(num_scenes=2, steps=steps, images_per_step=3,
                                             targets_per_image=2), tmp_path / "b.safetensors",
                             progress=False)
    assert summary["steps"] == steps
