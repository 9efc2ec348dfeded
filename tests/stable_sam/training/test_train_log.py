"""log.csv: one line per step, and a resumed run's log has each step once."""
import csv

from stable_sam.training.log import LOG_FIELDS, CsvLog


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _record(step):
    return {k: (step if k == "step" else "x") for k in LOG_FIELDS}


def test_csv_log_truncates_lines_past_the_resumed_step(tmp_path):
    path = tmp_path / "log.csv"
    log = CsvLog(path, resume_step=None)
    for step in range(1, 8):
        log.write(_record(step))
    log.close()
    with open(path, "a") as f:
        f.write("8,0,0.5")  # a line cut short by a kill
    log = CsvLog(path, resume_step=4)
    log.write(_record(5))
    log.close()
    assert [r["step"] for r in _rows(path)] == ["1", "2", "3", "4", "5"]
    CsvLog(path, resume_step=None).close()  # a fresh run starts a fresh log
    assert _rows(path) == []
