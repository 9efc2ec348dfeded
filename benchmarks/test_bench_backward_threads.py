"""Checks of benchmarks/bench_backward_threads.py: it refuses thread counts the machine lacks,
and a tiny run prints one row per case with the 1-thread baseline and the speed-up over it."""
import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import bench_backward_threads  # noqa: E402
import stable_sam_ops  # noqa: E402

needs_cpu_kernel = pytest.mark.skipif(
    "cpu" not in stable_sam_ops.available_backends(), reason="the cpu backend is not built"
)


@needs_cpu_kernel
@pytest.mark.parametrize("threads", ["0", str((os.cpu_count() or 1) + 1)])
def test_thread_counts_the_machine_lacks_are_refused(threads, capsys):
    with pytest.raises(SystemExit) as exit_:
        bench_backward_threads.main(["--threads", threads, "--no-write"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("bench_backward_threads: error: --threads") and err.count("\n") == 1


@needs_cpu_kernel
@pytest.mark.parametrize("argv", [["--batches", "0"], ["--groups", "3"], ["--size", "-2"],
                                  ["--warmup", "-1"], ["--repeats", "0"]])
def test_sizes_no_run_can_have_are_refused(argv, capsys):
    with pytest.raises(SystemExit) as exit_:
        bench_backward_threads.main(argv + ["--no-write"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("bench_backward_threads: error: batches") and err.count("\n") == 1


@needs_cpu_kernel
def test_tiny_run_prints_the_baseline_and_the_speedup(capsys, monkeypatch):
    written = []
    monkeypatch.setattr(bench_backward_threads, "write_results_section",
                        lambda title, body: written.append((title, body)))
    bench_backward_threads.main(["--batches", "1", "2", "--groups", "2", "--size", "6",
                                 "--channels", "8", "--threads", "1", "--warmup", "0",
                                 "--repeats", "1"])
    title, body = written[0]
    assert title == "Fused CPU backward: threads"
    rows = [line for line in body.splitlines() if line.startswith("| ")]
    header, cases = rows[0], rows[1:]
    # --threads 1 asks for nothing beyond the baseline: one timing column, no speed-up
    assert header == "| B | G | 1 thread ms |"
    assert [r.split(" | ")[:2] for r in cases] == [["| 1", "2"], ["| 2", "2"]]
    if (os.cpu_count() or 1) > 1:
        capsys.readouterr()
        written.clear()
        bench_backward_threads.main(["--batches", "1", "--groups", "1", "--size", "6",
                                     "--channels", "8", "--threads", "2", "--warmup", "0",
                                     "--repeats", "1"])
        rows = [line for line in written[0][1].splitlines() if line.startswith("| ")]
        assert rows[0] == "| B | G | 1 thread ms | 2 threads ms | 2 vs 1 |"
        cells = rows[1].strip("| ").split(" | ")
        assert float(cells[4].rstrip("x")) == pytest.approx(float(cells[2]) / float(cells[3]),
                                                            rel=0.02)
