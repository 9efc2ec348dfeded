"""What a run reports: one log.csv line per step, tensorboard scalars when tensorboard is
installed (both on rank 0), the progress bar, and a console line where no bar is shown."""
from __future__ import annotations

import csv
import io
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from ..data._io import write_text_atomic
from .distributed import DistContext

__all__ = ["LOG_NAME", "LOG_FIELDS", "CsvLog", "TrainingLog", "tensorboard_writer", "count_kinds"]

LOG_NAME = "log.csv"  # one line per step
LOG_FIELDS = ["step", "epoch", "loss", "loss_bce", "loss_dice", "lr", "step_time_s",
              "elapsed_s", "images_per_s", "prompt_kinds"]


class CsvLog:
    """log.csv, one flushed line per step (a single write per line, so a kill leaves whole
    lines). On resume, lines past the checkpoint's step are dropped: they will be redone."""

    def __init__(self, path: Path, resume_step: Optional[int]):
        self.path = path
        if resume_step is not None and path.is_file():
            self._truncate_after(resume_step)
        elif path.exists():
            path.unlink()
        new = not path.is_file()
        self.file = open(path, "a", encoding="utf-8", newline="")
        if new:
            self._write_row(LOG_FIELDS)

    def _truncate_after(self, step: int) -> None:
        with open(self.path, encoding="utf-8", newline="") as f:
            rows = list(csv.reader(f))
        kept = [rows[0]] + [r for r in rows[1:] if len(r) == len(LOG_FIELDS) and r[0].isdigit()
                            and int(r[0]) <= step] if rows else []
        buf = io.StringIO()
        csv.writer(buf).writerows(kept)
        write_text_atomic(self.path, buf.getvalue())

    def _write_row(self, row: Sequence[Any]) -> None:
        buf = io.StringIO()
        csv.writer(buf).writerow(row)
        self.file.write(buf.getvalue())
        self.file.flush()

    def write(self, record: Dict[str, Any]) -> None:
        self._write_row([record[k] for k in LOG_FIELDS])

    def close(self) -> None:
        self.file.close()


def tensorboard_writer(out_dir: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # optional: tensorboard is not a dependency
        return None
    return SummaryWriter(log_dir=str(out_dir / "tensorboard"))


def count_kinds(kinds: Sequence[str]) -> str:
    counts: Dict[str, int] = {}
    for k in kinds:
        counts[k] = counts.get(k, 0) + 1
    return ";".join(f"{k}:{v}" for k, v in sorted(counts.items()))


class TrainingLog:
    """The reports of one process's run; only rank 0 writes files or prints."""

    def __init__(self, out_dir: Path, ctx: DistContext, resume_step: Optional[int], step: int,
                 total_steps: int, log_every: int, global_batch: int):
        self.csv: Optional[CsvLog] = None
        self.tensorboard = None
        if ctx.is_main:
            out_dir.mkdir(parents=True, exist_ok=True)
            self.csv = CsvLog(out_dir / LOG_NAME, resume_step)
            self.tensorboard = tensorboard_writer(out_dir)
        from tqdm.auto import tqdm

        self.bar = tqdm(total=total_steps, initial=step, unit="step",
                        disable=not (ctx.is_main and sys.stderr.isatty()))
        self.is_main = ctx.is_main
        self.total_steps = total_steps
        self.log_every = log_every
        self.global_batch = global_batch
        self.started = time.perf_counter()

    def record(self, step: int, epoch: int, losses: List[float], lr: float, step_started: float,
               kinds: Sequence[str]) -> None:
        """Reports the step that just ended (`step` counts from 1): `losses` are its loss, BCE
        and dice averaged over the ranks, `kinds` the prompt kinds of the global batch."""
        now = time.perf_counter()
        if self.csv is not None:
            record = {
                "step": step, "epoch": epoch, "loss": f"{losses[0]:.6f}",
                "loss_bce": f"{losses[1]:.6f}", "loss_dice": f"{losses[2]:.6f}",
                "lr": f"{lr:.3g}", "step_time_s": f"{now - step_started:.4f}",
                "elapsed_s": f"{now - self.started:.2f}",
                "images_per_s": f"{self.global_batch / max(now - step_started, 1e-9):.2f}",
                "prompt_kinds": count_kinds(kinds),
            }
            self.csv.write(record)
            if self.tensorboard is not None:
                self.tensorboard.add_scalar("train/loss", losses[0], step)
                self.tensorboard.add_scalar("train/lr", lr, step)
        self.bar.update(1)
        if step % self.log_every == 0:
            self.bar.set_postfix(loss=f"{losses[0]:.4f}", lr=f"{lr:.2g}")
            if self.is_main and self.bar.disable:
                print(f"step {step}/{self.total_steps} | loss {losses[0]:.4f} "
                      f"(bce {losses[1]:.4f}, dice {losses[2]:.4f}) | lr {lr:.2g} | "
                      f"{(now - step_started) * 1000:.0f} ms/step", flush=True)

    def close_progress_bar(self) -> None:
        self.bar.close()

    def close(self) -> None:
        if self.csv is not None:
            self.csv.close()
        if self.tensorboard is not None:
            self.tensorboard.close()
