"""Kill -9 after a checkpoint, resume, and end bit-identical to a run that was never interrupted.

All runs go through the real CLI (`python -m stable_sam.cli train`) in subprocesses, so the
test covers what a user does after a crash or a pre-empted job.
"""
import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from stable_sam.data.synthetic import make_synthetic_dataset
from stable_sam.training import CHECKPOINT_NAME, LOG_NAME, load_train_checkpoint

REPO_ROOT = Path(__file__).resolve().parents[3]
CKPT_EVERY = 3
EXTRA_STEPS = 3


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), env.get("PYTHONPATH", "")])
    env["OMP_NUM_THREADS"] = "1"  # same reduction order in every run; spares the shared cores
    return env


def _command(data, out, steps, num_workers, resume=False):
    # 8 images / batch 2 = 4 steps per epoch, lr x0.1 from epoch 1: a resume from step 3 crosses
    # an epoch boundary (new permutation) and the lr drop.
    config = {"num_points": 256, "lr_drop_epochs": [1]}
    cmd = [sys.executable, "-m", "stable_sam.cli", "train", "--out", str(out),
           "--steps", str(steps), "--num-workers", str(num_workers), "--ckpt-every", str(CKPT_EVERY)]
    if resume:
        return cmd + ["--resume"]
    return cmd + ["--model-type", "tiny", "--data", str(data), "--batch-size", "2", "--seed", "7",
                  "--deterministic", "--config", json.dumps(config)]


def _run(cmd, log_path):
    with open(log_path, "w") as log:
        proc = subprocess.run(cmd, env=_env(), cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT,
                              timeout=300)
    assert proc.returncode == 0, Path(log_path).read_text()[-3000:]


def _log_rows(out):
    with open(out / LOG_NAME, newline="") as f:
        return list(csv.DictReader(f))


def test_killed_run_resumes_bit_identical(tmp_path):
    data = make_synthetic_dataset(tmp_path / "data", num_images=8, image_size=(96, 128), seed=5)
    killed, fresh = tmp_path / "killed", tmp_path / "fresh"

    # 1. a long run, SIGKILLed as soon as its first checkpoint exists
    with open(tmp_path / "killed.txt", "w") as log:
        proc = subprocess.Popen(_command(data, killed, 1000, 0), env=_env(), cwd=REPO_ROOT,
                                stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 240
        while not (killed / CHECKPOINT_NAME).exists():
            assert proc.poll() is None, (tmp_path / "killed.txt").read_text()[-3000:]
            assert time.monotonic() < deadline, "no checkpoint within 240 s"
            time.sleep(0.01)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    step = load_train_checkpoint(killed / CHECKPOINT_NAME)["step"]
    assert step % CKPT_EVERY == 0 and 0 < step < 1000
    final = step + EXTRA_STEPS

    # 2. resume it (with a data-loader worker this time: samples must not depend on workers)
    _run(_command(data, killed, final, 1, resume=True), tmp_path / "resumed.txt")
    # 3. the same run, never interrupted
    _run(_command(data, fresh, final, 0), tmp_path / "fresh.txt")

    a = load_train_checkpoint(killed / CHECKPOINT_NAME)
    b = load_train_checkpoint(fresh / CHECKPOINT_NAME)
    assert a["step"] == b["step"] == final
    assert a["trainable"].keys() == b["trainable"].keys()
    for name in a["trainable"]:
        assert torch.equal(a["trainable"][name], b["trainable"][name]), name
    for index, state in b["optimizer"]["state"].items():
        for key, value in state.items():
            assert torch.equal(a["optimizer"]["state"][index][key], value), (index, key)
    assert a["optimizer"]["param_groups"] == b["optimizer"]["param_groups"]
    assert torch.equal(a["rng"][0]["torch"], b["rng"][0]["torch"])
    assert a["rng"][0]["python"] == b["rng"][0]["python"]
    plugins_a = load_file(killed / "plugins.safetensors")
    plugins_b = load_file(fresh / "plugins.safetensors")
    assert all(torch.equal(plugins_a[k], plugins_b[k]) for k in plugins_b)
    # the log has each step once (lines the killed run wrote past its checkpoint were redone),
    # with the uninterrupted run's losses and learning rates
    rows_a, rows_b = _log_rows(killed), _log_rows(fresh)
    assert [int(r["step"]) for r in rows_a] == list(range(1, final + 1))
    assert [(r["loss"], r["lr"]) for r in rows_a] == [(r["loss"], r["lr"]) for r in rows_b]
    assert rows_b[-1]["lr"] == "0.0001"


def test_resume_refuses_a_changed_config(tmp_path, capsys):
    from stable_sam.cli import main

    data = make_synthetic_dataset(tmp_path / "data", num_images=4, image_size=(64, 64), seed=1)
    out = tmp_path / "run"
    args = _command(data, out, 1, 0)[3:]  # the CLI's arguments after "-m stable_sam.cli"
    assert main(args) == 0
    resume = _command(data, out, 2, 0, resume=True)[3:]
    assert main(resume + ["--method", "dt_sam"]) == 2
    err = capsys.readouterr().err
    assert "cannot resume: the config differs" in err and "method: 'stable_sam' -> 'dt_sam'" in err
    assert main(resume) == 0  # run length may change
    assert load_train_checkpoint(out / CHECKPOINT_NAME)["step"] == 2


def test_sigterm_checkpoints_the_current_step_and_resumes_exactly(tmp_path, monkeypatch, capsys):
    import stable_sam.training.loop as loop_module
    from stable_sam.cli import main

    data = make_synthetic_dataset(tmp_path / "data", num_images=8, image_size=(96, 128), seed=5)
    stopped, fresh = tmp_path / "stopped", tmp_path / "fresh"
    real_loss = loop_module.mask_loss
    calls = []

    def loss_with_a_sigterm_in_step_4(*args, **kwargs):
        calls.append(1)
        if len(calls) == 4:  # as if the cluster pre-empted the job mid-step
            os.kill(os.getpid(), signal.SIGTERM)
        return real_loss(*args, **kwargs)

    monkeypatch.setattr(loop_module, "mask_loss", loss_with_a_sigterm_in_step_4)
    previous_handler = signal.getsignal(signal.SIGTERM)
    assert main(_command(data, stopped, 1000, 0)[3:]) == 143
    assert (f"stopped by SIGTERM after step 4; {stopped / CHECKPOINT_NAME} is up to date, "
            "continue with --resume") in capsys.readouterr().err
    assert signal.getsignal(signal.SIGTERM) is previous_handler  # the trainer's handler is gone
    assert load_train_checkpoint(stopped / CHECKPOINT_NAME)["step"] == 4  # not a ckpt_every step
    assert not (stopped / "plugins.safetensors").exists()  # no "final" weights from a stopped run
    monkeypatch.setattr(loop_module, "mask_loss", real_loss)

    assert main(_command(data, stopped, 6, 0, resume=True)[3:]) == 0
    assert main(_command(data, fresh, 6, 0)[3:]) == 0
    a = load_train_checkpoint(stopped / CHECKPOINT_NAME)["trainable"]
    b = load_train_checkpoint(fresh / CHECKPOINT_NAME)["trainable"]
    assert all(torch.equal(a[k], b[k]) for k in b)
    assert [int(r["step"]) for r in _log_rows(stopped)] == [1, 2, 3, 4, 5, 6]
