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
               for k, v in build_demo_sam(BaseTrainConfig().architecture).state_dict().items()}
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


def test_the_schedule_warms_up_and_keeps_learning_in_its_last_third():
    from stable_sam.reproduction.base_sam import lr_at

    config = BaseTrainConfig(steps=300, lr=1e-3, min_lr_ratio=0.1)
    lrs = [lr_at(step, config) for step in range(config.steps)]
    assert lrs[0] < lrs[14] == pytest.approx(1e-3)  # 5 % warm-up to the peak
    assert all(a >= b for a, b in zip(lrs[15:], lrs[16:]))  # then only down
    assert min(lrs[200:]) >= 1e-4 and lrs[-1] == pytest.approx(1e-4, rel=1e-3)
    assert max(lrs[200:]) > 2e-4  # the last third is not spent at the floor either


def test_every_target_of_a_scene_is_drawn():
    import numpy as np

    from stable_sam.data.scenes import TRAIN_SEED, make_scene, scene_targets
    from stable_sam.reproduction.base_sam import _pick_targets

    targets = scene_targets(make_scene(TRAIN_SEED, 0, version=2))
    rng = np.random.default_rng(0)
    drawn = {id(m) for _ in range(50) for m in _pick_targets(targets, 4, rng)}
    assert drawn == {id(m) for m in targets} and len(targets) >= 3
    assert len({id(m) for m in _pick_targets(targets, 3, rng)}) == 3  # no repeats when enough
    assert len(_pick_targets(targets[:1], 4, rng)) == 4


def test_the_base_trains_the_configured_architecture_and_scenes(tmp_path):
    from stable_sam.families.demo.build import read_architecture

    for architecture, version in (("demo-sam/1", 1), ("demo-sam/2", 2)):
        path = tmp_path / f"{version}.safetensors"
        train_base_sam(BaseTrainConfig(num_scenes=2, steps=1, images_per_step=2,
                                       targets_per_image=2, architecture=architecture,
                                       scene_version=version), path, progress=False)
        assert read_architecture(path) == architecture


class _StopAfter:
    """StopRequest's interface: `requested` turns true once `steps` steps have run."""

    def __init__(self, steps: int):
        self.steps, self.calls = steps, 0

    @property
    def requested(self) -> bool:
        self.calls += 1
        return self.calls >= self.steps


def test_a_stopped_base_resumes_to_the_weights_of_an_uninterrupted_run(tmp_path):
    from safetensors.torch import load_file

    config = BaseTrainConfig(num_scenes=3, steps=5, images_per_step=2, targets_per_image=2)
    whole = train_base_sam(config, tmp_path / "whole.safetensors", progress=False)
    assert whole["stopped"] is False
    ckpt, cut_path = tmp_path / "base_checkpoint.pt", tmp_path / "cut.safetensors"
    cut = train_base_sam(config, cut_path, progress=False, checkpoint_path=ckpt,
                         stop=_StopAfter(2))
    assert cut == {"stopped": True, "step": 2, "checkpoint": str(ckpt)}
    assert ckpt.is_file() and not cut_path.exists()
    again = train_base_sam(config, cut_path, progress=False, checkpoint_path=ckpt)
    assert again["stopped"] is False and not ckpt.exists()
    a, b = load_file(str(tmp_path / "whole.safetensors")), load_file(str(cut_path))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert again["final_loss"] == whole["final_loss"]


def test_a_damaged_or_foreign_base_checkpoint_is_refused(tmp_path):
    from stable_sam.reproduction.base_sam import BaseCheckpointError

    config = BaseTrainConfig(num_scenes=2, steps=3, images_per_step=2, targets_per_image=2)
    ckpt = tmp_path / "base_checkpoint.pt"
    train_base_sam(config, tmp_path / "b.safetensors", progress=False, checkpoint_path=ckpt,
                   stop=_StopAfter(1))
    other = BaseTrainConfig(num_scenes=2, steps=4, images_per_step=2, targets_per_image=2)
    with pytest.raises(BaseCheckpointError, match="written with other settings"):
        train_base_sam(other, tmp_path / "b.safetensors", progress=False, checkpoint_path=ckpt)
    ckpt.write_bytes(ckpt.read_bytes()[:100])
    with pytest.raises(BaseCheckpointError, match="could not be read.*delete it"):
        train_base_sam(config, tmp_path / "b.safetensors", progress=False, checkpoint_path=ckpt)


@pytest.mark.parametrize("box_share", [0.0, 0.25, 0.5, 1.0])
def test_the_box_share_of_the_steps_is_the_configured_one(box_share):
    import numpy as np

    from stable_sam.reproduction.base_sam import _pick_kind

    rng = np.random.default_rng(0)
    kinds = [_pick_kind(BaseTrainConfig(box_share=box_share), rng) for _ in range(4000)]
    assert np.mean([k == "box" for k in kinds]) == pytest.approx(box_share, abs=0.03)
    points = [k for k in kinds if k != "box"]
    if points:  # the rest: 3, 5 or 10 points, uniformly; never one point or a loose box
        assert set(points) == {"points3", "points5", "points10"}
        assert max(points.count(k) for k in set(points)) < 1.15 * min(points.count(k)
                                                                      for k in set(points))


@pytest.mark.parametrize("grad_clip, calls", [(1.0, [1.0, 1.0]), (0.0, [])])
def test_gradients_are_clipped_at_the_configured_norm(tmp_path, monkeypatch, grad_clip, calls):
    seen = []
    real = torch.nn.utils.clip_grad_norm_
    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_",
                        lambda params, max_norm: seen.append(max_norm) or real(params, max_norm))
    train_base_sam(BaseTrainConfig(num_scenes=2, steps=2, grad_clip=grad_clip),
                   tmp_path / "b.safetensors", progress=False)
    assert seen == calls
