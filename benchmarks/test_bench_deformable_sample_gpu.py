"""bench_deformable_sample_gpu.py's budget and its row-by-row table, run on the CPU (its
--device cpu smoke mode): the table in --out-dir is rewritten after every row, so a run killed
midway keeps what it measured, and no row starts once the budget is spent."""
import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import bench_deformable_sample_gpu as bench  # noqa: E402
import stable_sam_ops  # noqa: E402

TABLE = "bench_deformable_sample_gpu.md"


def run(monkeypatch, tmp_path, *extra):
    argv = ["bench", "--device", "cpu", "--groups", "8", "--dtypes", "float32",
            "--compile-batches", "--no-results-md", "--out-dir", str(tmp_path), *extra]
    monkeypatch.setattr(sys, "argv", argv)
    return bench.main()


def table_rows(text):
    return [line for line in text.splitlines() if line.startswith("| ") and "ms" not in line
            and not line.startswith("| ---")]


@pytest.mark.skipif("cpu" not in stable_sam_ops.available_backends(),
                    reason="the cpu backend is not built")
def test_table_is_written_after_every_row(monkeypatch, tmp_path):
    seen = []
    write = bench.write_out_dir_table

    def recording_write(out_dir, gpu, body):
        write(out_dir, gpu, body)
        seen.append(len(table_rows((tmp_path / TABLE).read_text())))

    monkeypatch.setattr(bench, "write_out_dir_table", recording_write)
    assert run(monkeypatch, tmp_path, "--batches", "1") == 0
    # fwd row, fwd+bwd row, then the final write of the same two rows.
    assert seen == [1, 2, 2]
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / TABLE).stat().st_mode & 0o777 == 0o666 & ~umask
    assert not [f for f in os.listdir(tmp_path) if f.endswith(".tmp")]


def test_no_row_starts_once_the_budget_is_spent(monkeypatch, tmp_path):
    assert run(monkeypatch, tmp_path, "--batches", "1", "8", "--budget-s", "0") == 0
    text = (tmp_path / TABLE).read_text()
    assert table_rows(text) == []
    assert "stopped at the 0 s budget: 2 of 2 configurations not run" in text
