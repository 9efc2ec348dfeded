"""The results table: results.json accumulates one row per (model, dataset); results.md renders it."""
from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path
from typing import Iterable, Sequence

from stable_sam.data._io import write_json_atomic, write_text_atomic
from stable_sam.evaluation.prompts import kind_title

RESULTS_FORMAT = "stable-sam-results/1"


def _fmt(value: float) -> str:
    return "-" if value is None or not math.isfinite(value) else f"{100 * value:.1f}"


def results_table(rows: Iterable[dict]) -> str:
    """Markdown: one row per (model, dataset), one column per prompt kind with
    "mIoU / mBIoU / mSF" in percent, then "mAP / mAP50" per COCO noisy-box range."""
    rows = list(rows)
    kinds = list(dict.fromkeys(k for r in rows for k in r["kinds"]))
    map_kinds = list(dict.fromkeys(k for r in rows for k in r.get("coco", {})))
    header = (["Model", "Dataset"] + [f"{kind_title(k)} mIoU / mBIoU / mSF" for k in kinds]
              + [f"{kind_title(k)} mAP / mAP50" for k in map_kinds])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = [row["model"], row["dataset"]]
        for k in kinds:
            m = row["kinds"].get(k)
            cells.append("n/a" if m is None else
                         f"{_fmt(m['miou'])} / {_fmt(m['mbiou'])} / {_fmt(m['msf'])}")
        for k in map_kinds:
            m = row.get("coco", {}).get(k)
            cells.append("n/a" if m is None else f"{_fmt(m['map'])} / {_fmt(m['map50'])}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def read_results(out_dir: str | os.PathLike) -> list[dict]:
    """The rows already in out_dir/results.json ([] when there is none). Raises ValueError when
    out_dir or the file cannot take more rows, so an evaluation can check it before it runs."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"output folder {out_dir} is a file, not a folder")
    json_path = out_dir / "results.json"
    if not json_path.exists():
        return []
    try:
        existing = json.loads(json_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ValueError(f"{json_path} exists but cannot be read ({exc}); move it away or "
                         "choose another output folder") from None
    if not isinstance(existing, dict) or existing.get("format") != RESULTS_FORMAT:
        raise ValueError(f"{json_path} exists but is not a {RESULTS_FORMAT} file")
    rows = existing.get("rows")
    if not isinstance(rows, list) or not all(isinstance(r, dict) and "model" in r
                                             and "dataset" in r and "kinds" in r for r in rows):
        raise ValueError(f"{json_path} is a {RESULTS_FORMAT} file with malformed rows")
    return rows


def write_results(out_dir: str | os.PathLike, model: str, results: Sequence[dict],
                  extra: dict | None = None) -> tuple[Path, Path]:
    """Adds (or replaces) `model`'s rows in out_dir/results.json and rewrites results.md.

    Several models evaluated into the same folder accumulate into one table. Per-target records
    go to out_dir/records/MODEL__DATASET.json. Every file is written atomically.
    """
    out_dir = Path(out_dir)
    json_path, md_path = out_dir / "results.json", out_dir / "results.md"
    rows = read_results(out_dir)
    new_keys = {(model, r["dataset"]) for r in results}
    rows = [r for r in rows if (r["model"], r["dataset"]) not in new_keys]
    for result in results:
        row = {"model": model, "dataset": result["dataset"], "num_images": result["num_images"],
               "kinds": result["kinds"], **({"coco": result["coco"]} if "coco" in result else {}),
               **(extra or {})}
        rows.append(row)
        safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{model}__{result['dataset']}")
        write_json_atomic(out_dir / "records" / f"{safe}.json", result["records"])
    write_json_atomic(json_path, {"format": RESULTS_FORMAT, "rows": rows})
    write_text_atomic(md_path, results_table(rows))
    return json_path, md_path
