"""What keeps a run from being lost: the data check before step 1, the previous checkpoint, the
refusal to start over a run, config bounds, worker shutdown on errors, and advice that fits."""
import multiprocessing

import numpy as np
import pytest
import torch
from PIL import Image

from stable_sam.data.synthetic import make_synthetic_dataset
from stable_sam.training import CHECKPOINT_NAME, TrainConfig, load_train_checkpoint, train
from stable_sam.training.checkpointing import PREVIOUS_CHECKPOINT_NAME, CheckpointError


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    return make_synthetic_dataset(tmp_path_factory.mktemp("shapes"), num_images=6,
                                  image_size=(64, 80), seed=5)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _config(data, out, **kw):
    base = dict(model_type="tiny", data=[str(data)], steps=2, batch_size=2, num_points=64,
                lr_drop_epochs=[], num_workers=0, ckpt_every=100, log_every=100,
                out_dir=str(out), lsj=False)
    base.update(kw)
    return TrainConfig(**base)


def _broken_copy(shapes, tmp_path):
    """The shapes with three bad samples: an empty mask, a mask of another size, a text file."""
    root = make_synthetic_dataset(tmp_path / "broken", num_images=6, image_size=(64, 80), seed=5)
    Image.fromarray(np.zeros((64, 80), np.uint8)).save(root / "gt" / "synthetic_0001.png")
    Image.fromarray(np.full((10, 10), 255, np.uint8)).save(root / "gt" / "synthetic_0003.png")
    (root / "im" / "synthetic_0004.jpg").write_text("not a picture")
    return root


def test_every_bad_sample_is_named_before_step_1(shapes, tmp_path):
    root = _broken_copy(shapes, tmp_path)
    with pytest.raises(ValueError, match=r"^3 training sample\(s\) cannot be used: .*"
                                         r"synthetic_0001\.png is empty.*synthetic_0003\.png is "
                                         r"10x10.*synthetic_0004\.jpg.*--skip-bad-samples"):
        train(_config(root, tmp_path / "out"))
    assert not (tmp_path / "out" / CHECKPOINT_NAME).exists()


def test_skip_bad_samples_trains_on_the_rest(shapes, tmp_path, capsys):
    root = _broken_copy(shapes, tmp_path)
    result = train(_config(root, tmp_path / "out", skip_bad_samples=True, steps=1))
    assert result["step"] == 1
    assert "skipping 3 bad training sample(s)" in capsys.readouterr().err


def test_a_new_run_refuses_a_folder_holding_one(shapes, tmp_path):
    config = _config(shapes, tmp_path / "out", steps=1)
    train(config)
    first = (tmp_path / "out" / CHECKPOINT_NAME).read_bytes()
    with pytest.raises(CheckpointError, match=r"already holds a run \(checkpoint\.pt, log\.csv, "
                                              r"plugins\.safetensors\).*--resume.*--overwrite"):
        train(config)
    assert (tmp_path / "out" / CHECKPOINT_NAME).read_bytes() == first
    train(config.replace(seed=1), overwrite=True)
    assert load_train_checkpoint(tmp_path / "out" / CHECKPOINT_NAME)["config"]["seed"] == 1
    (tmp_path / "file").write_text("x")
    with pytest.raises(CheckpointError, match="is a file, not a folder"):
        train(_config(shapes, tmp_path / "file"))


def test_the_previous_checkpoint_stays_beside_the_latest(shapes, tmp_path):
    train(_config(shapes, tmp_path, steps=3, ckpt_every=1))
    latest = load_train_checkpoint(tmp_path / CHECKPOINT_NAME)
    previous = load_train_checkpoint(tmp_path / PREVIOUS_CHECKPOINT_NAME)
    assert (latest["step"], previous["step"]) == (3, 2)
    (tmp_path / CHECKPOINT_NAME).write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="checkpoint_prev.pt: copy it over checkpoint.pt"):
        train(_config(shapes, tmp_path, steps=4, ckpt_every=1), resume=True)


@pytest.mark.parametrize("field, value, match", [
    ("batch_size", 10 ** 6, "batch_size must be <= 1024"),
    ("num_points", 10 ** 9, "num_points must be <= 1048576"),
    ("num_workers", 10 ** 4, "num_workers must be <= 256"),
    ("lsj_scale", [0.1, 1e6], "lsj_scale's high end must be <= 10"),
    ("oversample_ratio", 0.5, "oversample_ratio must be finite and >= 1"),
    ("importance_sample_ratio", 1.5, r"importance_sample_ratio must be in \[0, 1\]"),
    ("weight_decay", float("nan"), "weight_decay must be finite"),
    ("lr_drop_epochs", [-1], "lr_drop_epochs must be epochs"),
])
def test_unbounded_config_values_are_refused(tmp_path, field, value, match):
    with pytest.raises(ValueError, match=match):
        _config(tmp_path, tmp_path, **{field: value})


def test_a_nan_at_step_1_does_not_advise_a_checkpoint_that_is_not_there(shapes, tmp_path,
                                                                        monkeypatch):
    import stable_sam.training.loop as loop_module

    monkeypatch.setattr(loop_module, "mask_loss",
                        lambda *a, **k: (torch.tensor(float("nan")), torch.tensor(0.0)))
    with pytest.raises(FloatingPointError, match="no checkpoint was written yet") as info:
        train(_config(shapes, tmp_path))
    assert "--resume" not in str(info.value)


def test_an_error_in_a_step_shuts_the_loader_workers_down(shapes, tmp_path, monkeypatch):
    # The workers ignore SIGTERM; any left alive would block the interpreter's exit for ever.
    import stable_sam.training.loop as loop_module

    def failing_step(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(loop_module, "_run_step", failing_step)
    with pytest.raises(RuntimeError, match="boom") as info:
        train(_config(shapes, tmp_path, num_workers=2))
    assert info.value.__traceback__ is not None  # the traceback (and its frames) still lives
    left = multiprocessing.active_children()
    for worker in left:  # so that a failure here fails this test instead of hanging pytest
        worker.kill()
        worker.join()
    assert left == []
