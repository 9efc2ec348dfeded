"""Checks of benchmarks/bench_batched_prompts.py: its table logic (prompts per second each way,
the ratio), a tiny run's rows on the demo model and the small random SAM 2, and refused
arguments."""
import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import bench_batched_prompts  # noqa: E402


def test_row_gives_prompts_per_second_and_the_speedup():
    row = bench_batched_prompts.table_row("demo", 4, "1 box each", 10, (4, 1), 100.0, 40.0)
    assert row[:5] == ["demo", 4, "1 box each", 10, "4 / 1"]
    assert row[5] == pytest.approx(100.0)  # 10 prompts in 0.1 s
    assert row[6] == pytest.approx(250.0)  # 10 prompts in 0.04 s
    assert row[7] == "2.50x"


def test_tiny_run_measures_both_ways_on_both_families(monkeypatch):
    written = []
    monkeypatch.setattr(bench_batched_prompts, "write_results_section",
                        lambda title, body: written.append((title, body)))
    bench_batched_prompts.main(["--models", "demo", "sam2_tiny_random", "--images", "3",
                                "--repeats", "1", "--warmup", "0"])
    title, body = written[0]
    assert title == "Batched prompts across images (cpu)"
    assert body.startswith("Machine: ")
    lines = [line for line in body.splitlines() if line.startswith("| ")]
    assert lines[0] == "| " + " | ".join(bench_batched_prompts.HEADER) + " |"
    rows = [line.strip("| ").split(" | ") for line in lines[1:]]
    assert [(r[0], r[2]) for r in rows] == [
        (m, w) for m in ("demo", "sam2_tiny_random") for w in bench_batched_prompts.WORKLOADS]
    # prompts: 3 boxes / 1 + 6 + 5 boxes / 3 click prompts; decoder calls: one per image in
    # the loop, one per prompt structure batched (clicks: 1, 2 and 3 clicks)
    assert [(r[3], r[4]) for r in rows[:3]] == [("3", "3 / 1"), ("12", "3 / 1"), ("3", "3 / 3")]
    for r in rows:
        loop, batched = float(r[5]), float(r[6])
        assert float(r[7].rstrip("x")) == pytest.approx(batched / loop, rel=0.02)


@pytest.mark.parametrize("argv, message", [
    (["--repeats", "0"], "images and repeats must be >= 1"),
    (["--images", "0"], "images and repeats must be >= 1"),
    (["--models", "vit_q"], "--models ['vit_q'] are not model types"),
])
def test_arguments_no_run_can_use_are_refused(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_:
        bench_batched_prompts.main(argv + ["--no-write"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(f"bench_batched_prompts: error: {message}") and err.count("\n") == 1
