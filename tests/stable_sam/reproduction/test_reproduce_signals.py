"""Real signals on a tiny `stable-sam reproduce` in a subprocess: SIGTERM in the base SAM's
stage and Ctrl+C (SIGINT) in a method's training each checkpoint the stage and exit 143 / 130
with one line, and a rerun of the same command continues and finishes."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ARGS = ["--train-scenes", "40", "--test-scenes", "2", "--base-steps", "5",
        "--prompts-per-image", "2"]
TIMEOUT_S = 300


def _start(out: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "stable_sam.cli", "reproduce", "--out",
                             str(out), *ARGS], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True, env=dict(os.environ, OMP_NUM_THREADS="1"))


def _signal_when(process: subprocess.Popen, path: Path, signum: int) -> tuple:
    """Sends `signum` as soon as `path` exists; (exit code, stderr lines but progress bars)."""
    deadline = time.monotonic() + TIMEOUT_S
    while not path.exists():
        assert process.poll() is None, process.communicate()[1]
        assert time.monotonic() < deadline
        time.sleep(0.02)
    process.send_signal(signum)
    _, err = process.communicate(timeout=TIMEOUT_S)
    return process.returncode, [line for line in err.splitlines()
                                if line.strip() and "%|" not in line]


def test_signals_stop_a_stage_with_one_line_and_a_rerun_continues(tmp_path):
    out = tmp_path / "r"
    # the training split is complete (the held-out one is generated in memory): the base SAM's
    # stage is running; it finishes its step and checkpoints
    code, lines = _signal_when(_start(out), out / "scenes_train", signal.SIGTERM)
    assert code == 143, lines
    assert lines[-1].startswith("stable-sam reproduce: stopped by SIGTERM while training the "
                                "base SAM after step "), lines
    assert not any("Traceback" in line for line in lines), lines
    assert (out / "base_sam_checkpoint.pt").is_file()
    assert not (out / "base_sam.safetensors").exists()

    # Ctrl+C during the first method's training: it finishes its step and checkpoints
    code, lines = _signal_when(_start(out), out / "stable_sam" / "log.csv", signal.SIGINT)
    assert code == 130, lines
    assert lines[-1].startswith("stable-sam reproduce: stopped by Ctrl+C (SIGINT) while "
                                "training stable_sam"), lines
    assert not any("Traceback" in line or "KeyboardInterrupt" in line for line in lines), lines
    assert not any("--resume" in line for line in lines), lines  # the trainer's own words
    assert (out / "stable_sam" / "checkpoint.pt").is_file()
    assert not (out / "stable_sam" / "plugins.safetensors").exists()
    steps_before = (out / "stable_sam" / "log.csv").read_text().splitlines()

    done = subprocess.run([sys.executable, "-m", "stable_sam.cli", "reproduce", "--out",
                           str(out), *ARGS], capture_output=True, text=True, timeout=TIMEOUT_S,
                          env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert done.returncode == 0, done.stderr[-2000:]
    assert (out / "reproduction.json").is_file()
    assert not (out / "base_sam_checkpoint.pt").exists()  # the base finished from it
    # continued from the checkpoint: the log keeps the steps before the stop and adds the rest
    steps_after = (out / "stable_sam" / "log.csv").read_text().splitlines()
    assert steps_after[:len(steps_before)] == steps_before
    # header + method_steps: one step per 4 training scenes (the split holds a pair per target)
    assert len(steps_after) == 1 + 40 // 4
