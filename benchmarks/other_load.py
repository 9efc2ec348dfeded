"""How busy other processes kept the CPUs while a benchmark ran.

The 1-minute load average, which the benchmarks used to read, counts the benchmark's own threads
(and decays from whatever ran before), so an idle machine running a 2-thread benchmark looked
"shared". This takes the machine's busy CPU time from /proc/stat over the run, less this
process's own CPU time (os.times, waited-for children included), per second of wall time: the
number of cores other processes used on average.
"""
import os
import time
from typing import NamedTuple, Optional

# Above this many cores busy with other work on average, a table is flagged as shared.
SHARED_CORES = 0.25


class _Snapshot(NamedTuple):
    wall: float
    busy: float  # seconds of CPU time the whole machine spent busy
    own: float   # seconds of CPU time this process (and its waited-for children) spent


def _machine_busy_seconds(stat_path: str = "/proc/stat") -> Optional[float]:
    try:
        with open(stat_path) as f:
            fields = f.readline().split()
    except OSError:
        return None
    if not fields or fields[0] != "cpu":
        return None
    # user nice system idle iowait irq softirq steal ...: busy is all but idle, iowait, steal
    ticks = [int(v) for v in fields[1:9]]
    busy = ticks[0] + ticks[1] + ticks[2] + ticks[5] + ticks[6]
    return busy / os.sysconf("SC_CLK_TCK")


def _own_seconds() -> float:
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


class OtherLoad:
    """Start it before the timed work; `cores()` after gives the cores others kept busy."""

    def __init__(self, stat_path: str = "/proc/stat") -> None:
        self._stat_path = stat_path
        self._start = self._snapshot()

    def _snapshot(self) -> Optional[_Snapshot]:
        busy = _machine_busy_seconds(self._stat_path)
        if busy is None:
            return None
        return _Snapshot(time.monotonic(), busy, _own_seconds())

    def cores(self) -> Optional[float]:
        """Average cores busy with other processes since the start; None without /proc/stat."""
        end = self._snapshot()
        if self._start is None or end is None or end.wall <= self._start.wall:
            return None
        others = (end.busy - self._start.busy) - (end.own - self._start.own)
        return max(0.0, others) / (end.wall - self._start.wall)

    def sentence(self) -> str:
        """The Machine line's words for the use since the start."""
        return describe(self.cores())


def describe(cores: Optional[float]) -> str:
    """Words for `cores` busy with other work, with the shared-machine warning when it applies."""
    if cores is None:
        return "Other processes' CPU use: not measured (no /proc/stat)."
    text = (f"Other processes kept {cores:.2f} cores busy on average while this ran "
            "(/proc/stat less this process's CPU time).")
    if cores >= SHARED_CORES:
        text += (" **The machine was shared with other jobs while this ran**: the ratios, "
                 "against baselines measured in the same run, mean more than the absolute times.")
    return text
