"""TrainConfig validation, its presets and learning-rate schedule, and the CLI's config layering."""
import argparse
import json

import pytest

from stable_sam.training import PRESETS, TrainConfig
from stable_sam.training.config import get_lr


# ---------------------------------------------------------------------------- TrainConfig


def test_defaults_follow_the_paper():
    c = TrainConfig()
    # §5.1: the headline results train the plugins for one epoch, with no lr drop inside it
    assert (c.lr, c.weight_decay, c.epochs, c.steps) == (1e-3, 0.0, 1, 0)
    assert c.lr_drop_epochs == [] and (c.method, c.loss) == ("stable_sam", "points")
    assert c.num_points == 112 * 112 and c.oversample_ratio == 3.0
    assert c.importance_sample_ratio == 0.75 and c.lsj_scale == [0.1, 2.0]
    assert c.rts["occlusion_probability"] > 0  # RTS pastes occluders


def test_twelve_epoch_preset_is_table_6s_schedule():
    c = TrainConfig(**PRESETS["epochs12"])
    assert (c.epochs, c.lr_drop_epochs) == (12, [10])
    assert [get_lr(c, s, steps_per_epoch=3) for s in (0, 29, 30, 35)] == pytest.approx(
        [1e-3, 1e-3, 1e-4, 1e-4])


def test_cli_offers_every_method_and_preset():
    from stable_sam.training import baselines

    args, cmd = _parse(["--preset", "epochs12", "--method", "pt_sam_no_rts"])
    assert cmd.resolve_config(args).epochs == 12
    assert sorted(cmd.METHODS) == sorted(baselines.METHODS)
    parser = argparse.ArgumentParser()
    cmd.add_parser(parser.add_subparsers(dest="command"))
    preset_action = next(a for a in parser._subparsers._group_actions[0].choices["train"]._actions
                         if a.dest == "preset")
    assert sorted(preset_action.choices) == sorted(PRESETS)


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


def test_lr_drops_tenfold_at_the_configured_epochs():
    c = TrainConfig(lr_drop_epochs=[2, 3])
    assert [get_lr(c, s, steps_per_epoch=5) for s in (0, 9, 10, 14, 15)] == pytest.approx(
        [1e-3, 1e-3, 1e-4, 1e-4, 1e-5])


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
