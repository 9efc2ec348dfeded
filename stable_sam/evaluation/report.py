"""The results table: results.json accumulates one row per (model, dataset); results.md renders it.

A row evaluated with the worst-case box search (`worst_box_rows`) also carries "worst_box":
{"config", "taus": {tau: IoU-Min / Base / Max / Delta with intervals}}, rendered as a second
table under the first."""
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


def _with_interval(value: float, interval) -> str:
    text = _fmt(value)
    return text if not interval else f"{text} [{_fmt(interval[0])}, {_fmt(interval[1])}]"


WORST_BOX_COLUMNS = (("iou_min", "IoU-Min"), ("iou_base", "IoU-Base"), ("iou_max", "IoU-Max"),
                     ("delta", "Delta"))


def worst_box_table(rows: Iterable[dict]) -> str:
    """Markdown: one line per (model, dataset, tau) of the rows with a worst-box search: IoU-Min,
    IoU-Base, IoU-Max and Delta = Max - Min in percent, 95 % bootstrap intervals (images
    resampled) in brackets; "" when no row has one."""
    rows = [r for r in rows if "worst_box" in r]
    if not rows:
        return ""
    lines = ["| Model | Dataset | tau | " + " | ".join(t for _, t in WORST_BOX_COLUMNS)
             + " | targets | search |", "|" + "---|" * (5 + len(WORST_BOX_COLUMNS))]
    for row in rows:
        search = row["worst_box"]
        config = search.get("config", {})
        how = f"{config.get('steps', '?')} steps x {config.get('starts', '?')} starts"
        for tau, numbers in search["taus"].items():
            cells = [_with_interval(numbers[key], numbers.get(f"{key}_ci"))
                     for key, _ in WORST_BOX_COLUMNS]
            cut = f", {numbers['truncated']} cut by the time budget" if numbers.get(
                "truncated") else ""
            lines.append(f"| {row['model']} | {row['dataset']} | {tau} | " + " | ".join(cells)
                         + f" | {numbers['count']} | {how}{cut} |")
    return "\n".join(lines) + "\n"


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
    table = "\n".join(lines) + "\n"
    worst = worst_box_table(rows)
    if worst:
        table += ("\nWorst-case boxes: the lowest and highest mask IoU the gradient search "
                  "found among boxes with IoU >= tau to the GT box (%; 95 % bootstrap intervals "
                  "over images)\n\n" + worst)
    return table


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
    go to out_dir/records/MODEL__DATASET.json (and a worst-box search's, when a result has one,
    to MODEL__DATASET__worst_box.json). Every file is written atomically.
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
        worst = result.get("worst_box")
        if worst is not None:
            row["worst_box"] = {"config": worst["config"], "taus": worst["taus"]}
        rows.append(row)
        safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{model}__{result['dataset']}")
        write_json_atomic(out_dir / "records" / f"{safe}.json", result["records"])
        if worst is not None:
            write_json_atomic(out_dir / "records" / f"{safe}__worst_box.json", worst["records"])
    write_json_atomic(json_path, {"format": RESULTS_FORMAT, "rows": rows})
    write_text_atomic(md_path, results_table(rows))
    return json_path, md_path
