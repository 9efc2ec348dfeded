"""TrainConfig validation, method parameter selection, checkpoint reading errors, the CSV log
and the CLI's config layering: everything of the trainer that needs no training run."""
import argparse
import csv
import json

import pytest
import torch

from stable_sam.training import baselines
from stable_sam.build import build_stable_sam
from stable_sam.training.trainer import (
    CHECKPOINT_NAME,
    CheckpointError,
    CsvLog,
    LOG_FIELDS,
    PRESETS,
    TrainConfig,
    _check_resume_config,
    get_lr,
    load_train_checkpoint,
)


@pytest.fixture(scope="module")
def tiny_model():
    return build_stable_sam("tiny")


# ---------------------------------------------------------------------------- TrainConfig


def test_defaults_follow_the_paper():
    c = TrainConfig()
    assert (c.lr, c.weight_decay, c.epochs, c.method, c.loss) == (1e-3, 0.0, 12, "stable_sam", "points")
    assert c.num_points == 112 * 112 and c.oversample_ratio == 3.0
    assert c.importance_sample_ratio == 0.75 and c.lsj_scale == [0.1, 2.0]


@pytest.mark.parametrize("bad,match", [
    (dict(method="hq_sam"), "method must be one of"),
    (dict(loss="l2"), "loss must be"),
    (dict(amp="fp8"), "amp must be"),
    (dict(batch_size=0), "batch_size must be >= 1"),
    (dict(ckpt_every=0), "ckpt_every must be >= 1"),
    (dict(steps=0, epochs=0), "steps > 0 or epochs > 0"),
    (dict(lr=-1.0), "lr must be finite"),
    (dict(lsj_scale=[2.0, 1.0]), "lsj_scale"),
    (dict(num_workers=-1), "num_workers"),
])
def test_config_rejects_bad_values(bad, match):
    with pytest.raises(ValueError, match=match):
        TrainConfig(**bad)


def test_config_dict_round_trip_and_unknown_fields():
    c = TrainConfig(**PRESETS["tiny"], data=["a", "b"])
    assert TrainConfig.from_dict(json.loads(json.dumps(c.to_dict()))) == c
    with pytest.raises(ValueError, match=r"unknown fields \['learning_rate'\]"):
        TrainConfig.from_dict({"learning_rate": 1.0})


def test_resume_config_may_change_only_run_length_and_reporting():
    saved = TrainConfig(steps=10)
    _check_resume_config(saved, saved.replace(steps=20, num_workers=0, log_every=1))
    with pytest.raises(CheckpointError, match="lr: 0.001 -> 0.01"):
        _check_resume_config(saved, saved.replace(lr=1e-2))


def test_lr_drops_tenfold_at_the_configured_epochs():
    c = TrainConfig(lr_drop_epochs=[2, 3])
    assert [get_lr(c, s, steps_per_epoch=5) for s in (0, 9, 10, 14, 15)] == pytest.approx(
        [1e-3, 1e-3, 1e-4, 1e-4, 1e-5])


# ---------------------------------------------------------------------------- baselines


def test_stable_sam_trains_exactly_the_plugins(tiny_model):
    names = [n for n, _ in baselines.trainable_named_parameters(tiny_model, "stable_sam")]
    assert names and all(n.startswith("plugins.") for n in names)
    assert len(names) == len(list(tiny_model.plugin_parameters()))


def test_dt_sam_trains_the_whole_mask_decoder(tiny_model):
    names = {n for n, _ in baselines.trainable_named_parameters(tiny_model, "dt_sam")}
    expected = {f"sam.mask_decoder.{n}" for n, _ in tiny_model.sam.mask_decoder.named_parameters()}
    assert names == expected


def test_pt_sam_trains_the_output_token_and_its_hypernetwork(tiny_model):
    picked = baselines.trainable_named_parameters(tiny_model, "pt_sam")
    names = {n for n, _ in picked}
    mlp0 = {f"sam.mask_decoder.output_hypernetworks_mlps.0.{n}"
            for n, _ in tiny_model.sam.mask_decoder.output_hypernetworks_mlps[0].named_parameters()}
    assert names == {"sam.mask_decoder.mask_tokens.weight"} | mlp0
    # about the paper's 0.13 M: one 3-layer MLP 256-256-256-32 plus four 256-d tokens
    assert sum(p.numel() for _, p in picked) == 4 * 256 + (256 * 256 + 256) * 2 + 256 * 32 + 32


def test_freeze_sets_requires_grad_on_exactly_the_selection(tiny_model):
    for method in baselines.METHODS:
        picked = {id(p) for _, p in baselines.freeze_all_but_trainable(tiny_model, method)}
        grads = {id(p) for p in tiny_model.parameters() if p.requires_grad}
        assert grads == picked, method
    assert not any(p.requires_grad for p in tiny_model.sam.image_encoder.parameters())


def test_trainable_state_round_trip_and_mismatch(tiny_model):
    state = baselines.trainable_state_dict(tiny_model, "pt_sam")
    changed = {k: v + 1 for k, v in state.items()}
    baselines.load_trainable_state_dict(tiny_model, "pt_sam", changed)
    after = baselines.trainable_state_dict(tiny_model, "pt_sam")
    assert all(torch.equal(after[k], changed[k]) for k in state)
    baselines.load_trainable_state_dict(tiny_model, "pt_sam", state)
    with pytest.raises(ValueError, match="missing"):
        baselines.load_trainable_state_dict(tiny_model, "dt_sam", state)
    bad = dict(state)
    bad["sam.mask_decoder.mask_tokens.weight"] = torch.zeros(3, 256)
    with pytest.raises(ValueError, match=r"expected shape \(4, 256\)"):
        baselines.load_trainable_state_dict(tiny_model, "pt_sam", bad)


def test_unknown_method_names_the_choices():
    with pytest.raises(ValueError, match="dt_sam"):
        baselines.get_method("lora")


# ---------------------------------------------------------------------------- checkpoints


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


# ---------------------------------------------------------------------------- CSV log


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _record(step):
    return {k: (step if k == "step" else "x") for k in LOG_FIELDS}


def test_csv_log_truncates_lines_past_the_resumed_step(tmp_path):
    path = tmp_path / "log.csv"
    log = CsvLog(path, resume_step=None)
    for step in range(1, 8):
        log.write(_record(step))
    log.close()
    with open(path, "a") as f:
        f.write("8,0,0.5")  # a line cut short by a kill
    log = CsvLog(path, resume_step=4)
    log.write(_record(5))
    log.close()
    assert [r["step"] for r in _rows(path)] == ["1", "2", "3", "4", "5"]
    CsvLog(path, resume_step=None).close()  # a fresh run starts a fresh log
    assert _rows(path) == []


# ---------------------------------------------------------------------------- CLI config layering


def _parse(argv):
    from stable_sam.commands import train as train_command

    parser = argparse.ArgumentParser()
    train_command.add_parser(parser.add_subparsers(dest="command"))
    return parser.parse_args(["train"] + argv), train_command


def test_cli_layers_preset_then_json_then_flags(tmp_path):
    cfg_file = tmp_path / "c.json"
    cfg_file.write_text(json.dumps({"lr": 0.01, "batch_size": 2, "rts": {"noise_scale": 0.2}}))
    args, cmd = _parse(["--preset", "tiny", "--config", str(cfg_file), "--batch-size", "3",
                        "--method", "pt_sam", "--no-lsj", "--out", str(tmp_path / "o")])
    c = cmd.resolve_config(args)
    assert c.model_type == "tiny" and c.steps == PRESETS["tiny"]["steps"]  # preset
    assert c.lr == 0.01 and c.rts == {"noise_scale": 0.2}  # JSON over preset
    assert c.batch_size == 3 and c.method == "pt_sam" and c.lsj is False  # flags over JSON
    assert c.out_dir == str(tmp_path / "o")


def test_cli_config_errors(tmp_path):
    from stable_sam.commands import CliError

    args, cmd = _parse(["--config", "{not json"])
    with pytest.raises(CliError, match="not valid JSON"):
        cmd.resolve_config(args)
    args, cmd = _parse(["--config", str(tmp_path / "missing.json")])
    with pytest.raises(CliError, match="no such file"):
        cmd.resolve_config(args)
    args, cmd = _parse(["--config", '{"lr": "fast"}'])
    with pytest.raises(CliError, match="invalid training config"):
        cmd.resolve_config(args)
    args, cmd = _parse(["--resume"])
    with pytest.raises(CliError, match="--resume needs --out"):
        cmd.resolve_config(args)
    args, cmd = _parse(["--resume", "--out", str(tmp_path)])
    with pytest.raises(CliError, match="not found"):
        cmd.resolve_config(args)


def test_baseline_weights_file_round_trip(tiny_model, tmp_path):
    path = tmp_path / "pt_sam.safetensors"
    baselines.save_baseline_weights(tiny_model, "pt_sam", path)
    fresh = build_stable_sam("tiny")
    with torch.no_grad():
        fresh.sam.mask_decoder.mask_tokens.weight.add_(1.0)
    assert baselines.load_baseline_weights(fresh, path) == "pt_sam"
    assert torch.equal(fresh.sam.mask_decoder.mask_tokens.weight,
                       tiny_model.sam.mask_decoder.mask_tokens.weight)
    path.write_bytes(b"garbage")
    with pytest.raises(ValueError, match="corrupt or not a safetensors file"):
        baselines.load_baseline_weights(fresh, path)


def test_rng_states_survive_a_weights_only_checkpoint(tmp_path):
    import random

    import numpy as np

    from stable_sam.training.trainer import _capture_rng_state, _restore_rng_state

    def draws():
        return (random.random(), np.random.rand(3).tolist(), torch.rand(3).tolist())

    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    torch.save(_capture_rng_state(), tmp_path / "rng.pt")
    expected = draws()
    draws()  # move every generator on
    _restore_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True))
    assert draws() == expected
