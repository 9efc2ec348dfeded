"""OtherLoad counts other processes' CPU time, not the benchmark's own."""
import subprocess
import sys
import time

import pytest

import other_load
from other_load import OtherLoad

pytestmark = pytest.mark.skipif(other_load._machine_busy_seconds() is None,
                                reason="needs Linux's /proc/stat")


def spin(seconds):
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        pass


def test_own_work_is_not_counted():
    # what other processes do meanwhile is counted, as it should be: measured over a second of
    # sleep right before, so the test holds on a busy machine too
    idle = OtherLoad()
    time.sleep(1.0)
    others = idle.cores()
    load = OtherLoad()
    spin(1.0)
    cores = load.cores()
    assert cores < others + 0.3  # a full core of its own spinning would add about 1.0
    if others < 0.05:
        assert "shared" not in other_load.describe(cores)


def test_another_process_is_counted():
    load = OtherLoad()
    child = subprocess.Popen([sys.executable, "-c",
                              "import time\nend = time.monotonic() + 1.5\n"
                              "while time.monotonic() < end: pass"])
    time.sleep(1.5)
    cores = load.cores()  # before the child is waited for, so its time is not "own"
    child.wait()
    assert cores > 0.6
    assert "**The machine was shared" in other_load.describe(cores)


def test_without_proc_stat_it_says_not_measured(tmp_path):
    load = OtherLoad(stat_path=str(tmp_path / "missing"))
    assert load.cores() is None
    assert "not measured" in load.sentence()
