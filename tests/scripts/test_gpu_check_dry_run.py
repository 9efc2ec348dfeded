"""scripts/gpu_check.sh on a machine without a GPU (CI): every stage skips or fails fast with
its reason, nothing is built, deleted or benchmarked, and the exit status says nothing was
checked. Bad settings are refused before any work. The budget arithmetic of one device lease is
checked against the script's own defaults.
"""
import os
import re
import subprocess
import sys
import time

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(ROOT, "scripts", "gpu_check.sh")
STAGES = ("versions", "build", "gpu_tests", "sanitizer", "bench")
GPU_STAGES = STAGES[1:]

pytestmark = pytest.mark.skipif(torch.cuda.is_available(),
                                reason="a dry run needs a machine without a CUDA device")


def run_script(tmp_path, **env):
    inherited = {k: v for k, v in os.environ.items() if not k.startswith("GPU_CHECK_")}
    full_env = dict(inherited, OUT=str(tmp_path), PYTHON=sys.executable, **env)
    start = time.monotonic()
    proc = subprocess.run(["bash", SCRIPT], capture_output=True, text=True, env=full_env,
                          timeout=300)
    return proc, time.monotonic() - start


def summary(stdout):
    """{stage: status} from the summary block."""
    block = stdout.split("=== gpu_check summary", 1)[1]
    return dict(re.findall(r"^  (\w+): (.+)$", block, flags=re.M))


def extension_files():
    pkg = os.path.join(ROOT, "stable_sam_ops")
    return sorted((f, os.stat(os.path.join(pkg, f)).st_mtime_ns) for f in os.listdir(pkg)
                  if f.startswith("_C"))


def test_every_stage_skips_with_its_reason_and_nothing_is_touched(tmp_path):
    before = extension_files()
    results_md = os.path.join(ROOT, "benchmarks", "RESULTS.md")
    results_before = open(results_md).read() if os.path.exists(results_md) else None
    proc, seconds = run_script(tmp_path)
    out = proc.stdout
    assert proc.returncode == 3, out + proc.stderr  # nothing failed, nothing was checked
    status = summary(out)
    assert list(status)[:len(STAGES)] == list(STAGES), out
    assert status["versions"] == "ok", out
    for name in GPU_STAGES:
        assert status[name].startswith("skipped (no CUDA device visible"), (name, out)
    assert "rerun what did not pass" not in out  # a rerun on this machine would skip again
    assert "(no benchmark table" in out
    assert seconds < 120, f"a dry run must fail fast, took {seconds:.0f}s"
    # The build stage deletes the extension before building: it must not have run here.
    assert extension_files() == before
    after = open(results_md).read() if os.path.exists(results_md) else None
    assert after == results_before
    assert (tmp_path / "gpu_check.log").read_text().count("=== gpu_check summary") == 1


def test_stage_selector_runs_only_the_named_stages(tmp_path):
    proc, _ = run_script(tmp_path, GPU_CHECK_STAGES="versions,bench")
    assert list(summary(proc.stdout)) == ["versions", "bench"], proc.stdout


@pytest.mark.parametrize("env, message", [
    ({"GPU_CHECK_STAGES": "build,tests"}, "unknown stage 'tests'"),
    ({"GPU_CHECK_STAGES": ","}, "selects no stage"),
    ({"GPU_CHECK_BUDGET_S": "5m"}, "GPU_CHECK_BUDGET_S must be whole seconds"),
    ({"GPU_CHECK_TEST_TIMEOUT_S": "-1"}, "GPU_CHECK_TEST_TIMEOUT_S must be whole seconds"),
], ids=["unknown-stage", "no-stage", "budget", "test-timeout"])
def test_bad_settings_are_refused_before_any_work(tmp_path, env, message):
    proc, seconds = run_script(tmp_path, **env)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gpu_check: error: ") and message in lines[0]
    assert proc.stdout == "" and not (tmp_path / "gpu_check.log").exists()
    assert seconds < 10


def script_defaults():
    text = open(SCRIPT).read()
    budget = int(re.search(r"BUDGET_S=\$\{GPU_CHECK_BUDGET_S:-(\d+)\}", text).group(1))
    caps = {k: int(v) for k, v in re.findall(r"\[(\w+)\]=(\d+)", text)}
    return budget, caps


def test_default_budget_leaves_a_rerun_inside_one_lease():
    # One lease: 15 minutes of device time, each machine start ~2 minutes, 30 s idle before
    # the machine goes back (counted too). The first run, then a fresh machine rerunning what
    # failed (at worst everything again): both must fit, with a minute left for the transfers.
    lease_s, start_s, idle_s, transfers_s = 15 * 60, 120, 30, 60
    budget, caps = script_defaults()
    assert set(caps) == set(STAGES)
    first = start_s + budget + idle_s
    rerun = start_s + budget + idle_s
    assert first + rerun + transfers_s <= lease_s, (first, rerun)
    # The stages that prove the kernels, build then GPU tests, fit in one budget at their caps.
    assert caps["build"] + caps["gpu_tests"] <= budget


FAKE_GPU_PYTHON = """#!/usr/bin/env bash
# The real interpreter, except that torch "sees" a GPU and the extension's build fails.
case "$*" in
  *is_available*) exit 0 ;;
  *get_device_capability*) echo 9.0; exit 0 ;;
  *setup.py*) echo "fake build failure" >&2; exit 1 ;;
esac
exec {python} "$@"
"""


@pytest.mark.parametrize("budget, code, statuses", [
    ("300", 1, {"build": "FAILED rc=1", "gpu_tests": "not run (build FAILED rc=1)"}),
    ("3", 3, {"versions": "skipped (budget of 3s spent)",
              "build": "skipped (budget of 3s spent)",
              "gpu_tests": "not run (build skipped (budget of 3s spent))"}),
], ids=["build-fails", "budget-spent"])
def test_a_failed_or_unreached_build_stops_the_gpu_stages_and_prints_the_rerun(
        tmp_path, budget, code, statuses):
    # A copy of the script in an empty tree: its build stage deletes that tree's extension.
    (tmp_path / "scripts").mkdir()
    script = tmp_path / "scripts" / "gpu_check.sh"
    script.write_text(open(SCRIPT).read())
    fake = tmp_path / "fake_python"
    fake.write_text(FAKE_GPU_PYTHON.format(python=sys.executable))
    fake.chmod(0o755)
    out_dir = tmp_path / "out"
    env = {k: v for k, v in os.environ.items() if not k.startswith("GPU_CHECK_")}
    env.update(OUT=str(out_dir), PYTHON=str(fake), GPU_CHECK_BUDGET_S=budget)
    if budget == "3":  # spend the budget before the first stage: the GPU probe sleeps
        fake.write_text(FAKE_GPU_PYTHON.format(python=sys.executable).replace(
            "*is_available*) exit 0", "*is_available*) sleep 4; exit 0"))
    proc = subprocess.run(["bash", str(script)], capture_output=True, text=True, env=env,
                          timeout=120)
    assert proc.returncode == code, proc.stdout + proc.stderr
    status = summary(proc.stdout)
    for name, want in statuses.items():
        assert status[name] == want, (name, proc.stdout)
    for name in ("sanitizer", "bench"):
        assert status[name].startswith("not run (build "), proc.stdout
    assert ("rerun what did not pass: GPU_CHECK_STAGES=build,gpu_tests,sanitizer,bench "
            "bash scripts/gpu_check.sh") in proc.stdout
