"""Files written through `write_atomic` look like any other file: the umask decides their mode,
and durable writes reach the disk before and after the rename."""
import os

import numpy as np
import pytest
import torch

from stable_sam.data._io import write_atomic, write_image_atomic, write_json_atomic
from stable_sam.training.checkpointing import atomic_torch_save


@pytest.fixture
def umask_027():
    previous = os.umask(0o027)
    yield
    os.umask(previous)


@pytest.mark.parametrize("writer", ["json", "image", "torch", "csv_log"])
def test_outputs_honour_the_umask(tmp_path, umask_027, writer):
    path = tmp_path / f"out.{writer}"
    if writer == "json":
        write_json_atomic(path, {"a": 1})
    elif writer == "image":
        path = tmp_path / "out.png"
        write_image_atomic(path, np.zeros((4, 4), np.uint8))
    elif writer == "torch":
        atomic_torch_save({"a": torch.zeros(2)}, path)
    else:
        from stable_sam.training.log import CsvLog

        path = tmp_path / "log.csv"
        path.write_text("step\n1\n2\n")
        CsvLog(path, resume_step=1).close()  # rewrites the log without the lines after step 1
    assert os.stat(path).st_mode & 0o777 == 0o640
    assert sorted(os.listdir(tmp_path)) == [path.name]  # no temp file left behind


def test_durable_write_fsyncs_the_file_and_its_folder(tmp_path, monkeypatch):
    synced = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: synced.append(os.readlink(f"/proc/self/fd/{fd}"))
                        or real_fsync(fd))
    write_atomic(tmp_path / "a.bin", lambda tmp: open(tmp, "wb").close(), durable=True)
    assert synced[-1] == str(tmp_path) and synced[0].startswith(str(tmp_path / ".a.bin."))
    synced.clear()
    write_atomic(tmp_path / "b.bin", lambda tmp: open(tmp, "wb").close())
    assert synced == []


def test_a_failed_write_leaves_the_old_file(tmp_path):
    (tmp_path / "a.txt").write_text("old")

    def fail(tmp):
        open(tmp, "w").write("half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_atomic(tmp_path / "a.txt", fail)
    assert (tmp_path / "a.txt").read_text() == "old" and os.listdir(tmp_path) == ["a.txt"]


def test_append_json_line_adds_one_whole_line_per_call(tmp_path):
    import json

    from stable_sam.data._io import append_json_line

    log = tmp_path / "new" / "runs.jsonl"
    append_json_line(log, {"a": 1})
    append_json_line(log, {"b": [2, 3]})
    assert [json.loads(line) for line in log.read_text().splitlines()] == [{"a": 1},
                                                                           {"b": [2, 3]}]
