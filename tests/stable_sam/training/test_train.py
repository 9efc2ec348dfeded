"""In-process training runs on the tiny random SAM and generated shapes: which parameters each
method changes, what a checkpoint holds, that the loss goes down, and that the sample pipeline
does not depend on the number of data-loader workers."""
import csv

import pytest
import torch

from stable_sam.training import baselines
from stable_sam.build import build_stable_sam
from stable_sam.checkpoint import load_plugins
from stable_sam.data.synthetic import make_synthetic_dataset
from stable_sam.training import CHECKPOINT_NAME, LOG_NAME, TrainConfig, load_train_checkpoint, train
from stable_sam.training.log import LOG_FIELDS
from stable_sam.training.model import build_model
from stable_sam.training.rng import seed_everything
from stable_sam.training.samples import TrainingSamples, load_datasets


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    return str(make_synthetic_dataset(tmp_path_factory.mktemp("shapes"), num_images=8,
                                      image_size=(96, 128), seed=3))


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _config(data, out, **kw):
    base = dict(model_type="tiny", data=[data], steps=2, batch_size=2, num_points=256,
                lr_drop_epochs=[], num_workers=0, ckpt_every=100, log_every=100, out_dir=str(out))
    base.update(kw)
    return TrainConfig(**base)


def _initial_model(config):
    """The model a run starts from: the trainer seeds, then builds."""
    seed_everything(config.seed, 0)
    return build_model(config)


def _state(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _changed(before, after):
    assert before.keys() == after.keys()
    return {k for k in before if not torch.equal(before[k], after[k])}


@pytest.mark.parametrize("method", ["stable_sam", "stable_sam_no_drp", "stable_sam_no_rts"])
def test_plugin_methods_change_only_the_plugins(shapes, tmp_path, method):
    config = _config(shapes, tmp_path, method=method)
    before = _state(_initial_model(config))
    result = train(config)
    changed = _changed(before, _state(result["model"]))
    assert changed and all(k.startswith("plugins.") for k in changed)  # SAM bit-identical
    assert (result["model"].plugins.drp is None) == (method == "stable_sam_no_drp")
    # the final file is in the plugin format and holds the trained plugins
    fresh = build_model(config)
    load_plugins(fresh, result["weights"])
    assert not _changed(_state(result["model"]), _state(fresh))


def test_dt_sam_changes_only_the_mask_decoder(shapes, tmp_path):
    config = _config(shapes, tmp_path, method="dt_sam")
    before = _state(_initial_model(config))
    result = train(config)
    changed = _changed(before, _state(result["model"]))
    assert changed and all(k.startswith("sam.mask_decoder.") for k in changed)
    assert (tmp_path / "dt_sam.safetensors").is_file()


def test_pt_sam_changes_only_its_tensors(shapes, tmp_path):
    config = _config(shapes, tmp_path, method="pt_sam")
    initial = _initial_model(config)
    before = _state(initial)
    result = train(config)
    after = _state(result["model"])
    changed = _changed(before, after)
    tokens = "sam.mask_decoder.mask_tokens.weight"
    assert tokens in changed
    assert changed <= {tokens} | {
        f"sam.mask_decoder.output_hypernetworks_mlps.0.{n}"
        for n in initial.sam.mask_decoder.output_hypernetworks_mlps[0].state_dict()}
    assert any(k.startswith("sam.mask_decoder.output_hypernetworks_mlps.0.") for k in changed)


def test_checkpoint_holds_config_state_and_position(shapes, tmp_path):
    config = _config(shapes, tmp_path, steps=5, ckpt_every=2, batch_size=3)
    train(config)
    ckpt = load_train_checkpoint(tmp_path / CHECKPOINT_NAME)
    assert ckpt["config"] == config.to_dict()
    assert TrainConfig.from_dict(ckpt["config"]) == config
    # 8 images / batch 3 -> 2 steps per epoch: step 5 is epoch 2, batch 1
    assert (ckpt["step"], ckpt["epoch"], ckpt["batch_in_epoch"], ckpt["world_size"]) == (5, 2, 1, 1)
    assert set(ckpt["trainable"]) == {
        n for n, _ in baselines.trainable_named_parameters(build_stable_sam("tiny"), "stable_sam")}
    assert len(ckpt["optimizer"]["state"]) == len(ckpt["trainable"])
    assert set(ckpt["rng"][0]) == {"python", "numpy", "torch", "cuda"}
    with open(tmp_path / LOG_NAME, newline="") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["step"]) for r in rows] == [1, 2, 3, 4, 5]
    assert set(rows[0]) == set(LOG_FIELDS)
    assert all(float(r["loss"]) > 0 and r["prompt_kinds"] for r in rows)


@pytest.mark.parametrize("method,steps,min_drop", [("stable_sam", 20, 0.02), ("dt_sam", 20, 0.3)])
def test_loss_decreases_on_a_fixed_batch(shapes, tmp_path, method, steps, min_drop):
    # GT boxes, no jitter, the whole dataset as one batch and the full-mask loss: the objective
    # is the same every step, so Adam must go downhill (the frozen SAM is random, so the plugins
    # can only do so much; the decoder baseline can fit far more).
    config = _config(shapes, tmp_path, method=method, steps=steps, batch_size=8, lsj=False,
                     loss="full", rts={"weights": {"box": 1.0}})
    train(config)
    with open(tmp_path / LOG_NAME, newline="") as f:
        losses = [float(r["loss"]) for r in csv.DictReader(f)]
    assert len(losses) == steps
    assert losses[-1] < losses[0] - min_drop
    quarter = steps // 4
    assert sum(losses[-quarter:]) / quarter < sum(losses[:quarter]) / quarter - min_drop / 2


def test_samples_do_not_depend_on_workers_or_call_order(shapes):
    config = _config(shapes, "unused", lsj=True, rts={"occlusion_probability": 0.5})
    samples = TrainingSamples(load_datasets(config), config, image_size=256)
    a = [samples[(1, i)] for i in range(len(samples))]
    b = [samples[(1, i)] for i in reversed(range(len(samples)))][::-1]
    loader = torch.utils.data.DataLoader(samples, batch_size=None, num_workers=2,
                                         sampler=[(1, i) for i in range(len(samples))])
    c = list(loader)
    for x, y, z in zip(a, b, c):
        assert torch.equal(x["image"], y["image"]) and torch.equal(x["image"], z["image"])
        assert torch.equal(x["mask"], z["mask"]) and x["kind"] == z["kind"]
    other_epoch = samples[(2, 0)]
    assert not torch.equal(other_epoch["image"], a[0]["image"])  # a fresh jitter each epoch
    assert all(s["image"].shape == (3, 256, 256) and s["mask"].any() for s in a)


def test_no_rts_prompts_are_high_quality(shapes):
    config = _config(shapes, "unused", method="stable_sam_no_rts")
    samples = TrainingSamples(load_datasets(config), config, image_size=256)
    kinds = {samples[(e, i)]["kind"] for e in range(4) for i in range(len(samples))}
    assert kinds == {"box", "points10", "coarse_mask"}
    robust = TrainingSamples(load_datasets(_config(shapes, "unused")), _config(shapes, "unused"),
                             image_size=256)
    assert len({robust[(e, i)]["kind"] for e in range(3) for i in range(8)}) >= 4


def test_missing_data_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="no training data"):
        train(_config(str(tmp_path), tmp_path).replace(data=[]))
    with pytest.raises(FileNotFoundError, match="training data folder not found"):
        train(_config(str(tmp_path / "nope"), tmp_path))


def test_too_little_data_for_one_batch(shapes, tmp_path):
    with pytest.raises(ValueError, match="fewer than one global batch"):
        train(_config(shapes, tmp_path, batch_size=9))


def test_cli_tiny_preset_generates_data_and_trains(tmp_path, capsys):
    from stable_sam.cli import main

    out = tmp_path / "tiny"
    assert main(["train", "--preset", "tiny", "--steps", "2", "--out", str(out)]) == 0
    assert (out / "synthetic_data" / "gt").is_dir()
    ckpt = load_train_checkpoint(out / CHECKPOINT_NAME)
    assert ckpt["step"] == 2 and ckpt["config"]["model_type"] == "tiny"
    assert (out / "plugins.safetensors").is_file()
    assert "wrote" in capsys.readouterr().out


def test_an_empty_training_mask_names_the_image(tmp_path):
    import cv2
    import numpy as np

    root = make_synthetic_dataset(tmp_path / "d", num_images=2, image_size=(64, 64), seed=0)
    cv2.imwrite(str(root / "gt" / "synthetic_0001.png"), np.zeros((64, 64), np.uint8))
    config = _config(str(root), tmp_path / "out", batch_size=1)
    samples = TrainingSamples(load_datasets(config), config, image_size=256)
    samples[(0, 0)]
    with pytest.raises(ValueError, match="'synthetic_0001'.*empty mask"):
        samples[(0, 1)]


def test_a_non_finite_loss_stops_before_the_update(shapes, tmp_path, monkeypatch):
    import stable_sam.training.loop as loop_module

    real_loss = loop_module.mask_loss
    calls = []

    def loss_that_explodes_at_step_3(*args, **kwargs):
        calls.append(1)
        bce, dice = real_loss(*args, **kwargs)
        return (bce * float("nan"), dice) if len(calls) == 3 else (bce, dice)

    monkeypatch.setattr(loop_module, "mask_loss", loss_that_explodes_at_step_3)
    with pytest.raises(FloatingPointError, match="loss is nan at step 3"):
        train(_config(shapes, tmp_path, steps=5, ckpt_every=2))
    ckpt = load_train_checkpoint(tmp_path / CHECKPOINT_NAME)
    assert ckpt["step"] == 2
    assert all(torch.isfinite(v).all() for v in ckpt["trainable"].values())


def test_tensorboard_gets_loss_and_lr_when_available(shapes, tmp_path, monkeypatch):
    import stable_sam.training.log as log_module

    scalars = []

    class RecordingWriter:  # stands in for torch.utils.tensorboard.SummaryWriter
        def add_scalar(self, tag, value, step):
            scalars.append((tag, step))

        def close(self):
            scalars.append(("closed", None))

    monkeypatch.setattr(log_module, "tensorboard_writer", lambda out_dir: RecordingWriter())
    train(_config(shapes, tmp_path, steps=2))
    assert scalars == [("train/loss", 1), ("train/lr", 1), ("train/loss", 2), ("train/lr", 2),
                       ("closed", None)]
