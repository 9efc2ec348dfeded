"""The issue's targets on the reproduction table, and the RESULTS.md section in the shape of
the paper's Tables 2 and 5."""
from __future__ import annotations

from typing import Callable, List, Tuple

from .pipeline import KINDS

TITLES = {"sam": "SAM (base, frozen)", "stable_sam": "Stable-SAM",
          "stable_sam_no_drp": "Stable-SAM without DRP (DSP + RTS)",
          "stable_sam_no_rts": "Stable-SAM without RTS (DSP + DRP)",
          "pt_sam": "PT-SAM (RTS)", "dt_sam": "DT-SAM (RTS)"}
KIND_TITLES = {"box": "GT box", "noisy_box": "noisy box", "points1": "1 point",
               "points3": "3 points"}


FOLLOW_KINDS = ("noisy_box", "points1", "points3")  # kinds with an mSF, so a stable-but-wrong share


def _get(table: dict, method: str, kind: str, metric: str) -> float:
    return table["methods"][method]["kinds"][kind][metric]


def _follow(table: dict, method: str, kind: str, metric: str):
    """A prompt-following number, or None where the table has none (a table from before
    issue 24, or an undefined value)."""
    return table["methods"][method].get("follow", {}).get(kind, {}).get(metric)


def _worst_gap(table: dict, metric: str, kinds) -> tuple[float | None, str]:
    """The largest Stable-SAM minus base difference of a follow metric over `kinds`, and the
    numbers; None when any is missing."""
    pairs = [(k, _follow(table, "stable_sam", k, metric), _follow(table, "sam", k, metric))
             for k in kinds]
    if any(a is None or b is None for _, a, b in pairs):
        return None, "not measured"
    text = "; ".join(f"{KIND_TITLES[k]}: {a:.1f} vs {b:.1f}" for k, a, b in pairs)
    return max(a - b for _, a, b in pairs), text


def check_targets(table: dict) -> List[Tuple[str, bool, str]]:
    """[(target, met, the measured numbers)] for each of the issue's targets."""
    def g(method, kind, metric="mIoU"):
        return _get(table, method, kind, metric)

    params = {m: table["methods"][m]["trainable_params"] for m in ("stable_sam", "dt_sam")}
    ratio = params["dt_sam"] / max(params["stable_sam"], 1)
    fill = table.get("box_fill_mIoU")
    agreement_gap, agreement_text = _worst_gap(table, "cross_agreement", KINDS)
    wrong_gap, wrong_text = _worst_gap(table, "stable_but_wrong", FOLLOW_KINDS)
    checks: List[Tuple[str, Callable[[], bool], str]] = [
        ("Base GT-box mIoU at least 75 and at least 20 above filling the GT box",
         lambda: fill is not None and g("sam", "box") >= max(75, fill + 20),
         f"{g('sam', 'box'):.1f} vs box fill "
         + ("not measured" if fill is None else f"{fill:.1f}")),
        ("Base noisy-box mIoU at least 15 below its GT box",
         lambda: g("sam", "noisy_box") <= g("sam", "box") - 15,
         f"{g('sam', 'noisy_box'):.1f} vs {g('sam', 'box'):.1f}"),
        ("Base 1-point mIoU at most 50", lambda: g("sam", "points1") <= 50,
         f"{g('sam', 'points1'):.1f}"),
        ("Stable-SAM noisy-box mIoU within 5 points of the base's GT-box mIoU",
         lambda: g("stable_sam", "noisy_box") >= g("sam", "box") - 5,
         f"{g('stable_sam', 'noisy_box'):.1f} vs {g('sam', 'box'):.1f}"),
        ("noisy-box mSF at least 20 points above the base's",
         lambda: g("stable_sam", "noisy_box", "mSF") >= g("sam", "noisy_box", "mSF") + 20,
         f"{g('stable_sam', 'noisy_box', 'mSF'):.1f} vs {g('sam', 'noisy_box', 'mSF'):.1f}"),
        ("1-point mIoU at least 15 points above the base's",
         lambda: g("stable_sam", "points1") >= g("sam", "points1") + 15,
         f"{g('stable_sam', 'points1'):.1f} vs {g('sam', 'points1'):.1f}"),
        ("GT-box mIoU at most 3 points below the base's",
         lambda: g("stable_sam", "box") >= g("sam", "box") - 3,
         f"{g('stable_sam', 'box'):.1f} vs {g('sam', 'box'):.1f}"),
        ("Stable-SAM's cross-object agreement at most 5 above the base's (every prompt kind)",
         lambda: agreement_gap is not None and agreement_gap <= 5, agreement_text),
        ("Stable-SAM's stable-but-wrong share no higher than the base's (every kind with an mSF)",
         lambda: wrong_gap is not None and wrong_gap <= 0, wrong_text),
        ("Table 5 order under noisy boxes: without RTS < without DRP <= Stable-SAM",
         lambda: g("stable_sam_no_rts", "noisy_box") < g("stable_sam_no_drp", "noisy_box")
         <= g("stable_sam", "noisy_box"),
         f"{g('stable_sam_no_rts', 'noisy_box'):.1f} / {g('stable_sam_no_drp', 'noisy_box'):.1f}"
         f" / {g('stable_sam', 'noisy_box'):.1f}"),
        ("Stable-SAM ahead of PT-SAM and DT-SAM under noisy box and 1 point",
         lambda: all(g("stable_sam", k) > max(g("pt_sam", k), g("dt_sam", k))
                     for k in ("noisy_box", "points1")),
         "; ".join(f"{KIND_TITLES[k]}: {g('stable_sam', k):.1f} vs PT {g('pt_sam', k):.1f}, "
                   f"DT {g('dt_sam', k):.1f}" for k in ("noisy_box", "points1"))),
        ("about 50x fewer trainable parameters than DT-SAM (at least 40x)",
         lambda: ratio >= 40, f"{params['stable_sam']:,} vs {params['dt_sam']:,} ({ratio:.0f}x)"),
        ("At least 200 test targets (every object above the minimum size)",
         lambda: (table.get("test_targets") or 0) >= 200,
         "not counted" if table.get("test_targets") is None else f"{table['test_targets']}"),
    ]
    return [(name, bool(test()), measured) for name, test, measured in checks]


def _cell(value) -> str:
    return "-" if value is None else f"{value:.1f}"


def _with_interval(numbers: dict, metric: str) -> str:
    interval = numbers.get(f"{metric}_ci")
    text = _cell(numbers[metric])
    return text if not interval else f"{text} [{interval[0]:.1f}, {interval[1]:.1f}]"


def markdown_section(table: dict, command: str, machine: str, note: str = "") -> str:
    """The RESULTS.md section: Table 2's shape (every method, every prompt kind: mIoU / mBIoU /
    mSF), Table 5's ablation rows under noisy boxes, and the targets."""
    head = "| method | trainable params | " + " | ".join(
        f"{KIND_TITLES[k]} mIoU / mBIoU / mSF" for k in KINDS) + " |"
    lines = ["## Small-scale reproduction of Tables 2 and 5 (demo model, generated scenes)", "",
             f"Rebuilt with `{command}` on {machine}.", "",
             "### Table 2 shape: every method and prompt kind", "", head,
             "|" + " --- |" * (2 + len(KINDS))]
    for method, row in table["methods"].items():
        cells = [" / ".join((_with_interval(row["kinds"][k], "mIoU"),
                             _cell(row["kinds"][k]["mBIoU"]),
                             _with_interval(row["kinds"][k], "mSF"))) for k in KINDS]
        lines.append(f"| {TITLES.get(method, method)} | {row['trainable_params']:,} | "
                     + " | ".join(cells) + " |")
    lines += ["", "### Table 5 shape: ablation under noisy boxes", "",
              "| DSP | DRP | RTS | mIoU | mBIoU | mSF |", "| --- | --- | --- | --- | --- | --- |"]
    for method, flags in (("sam", ("", "", "")), ("stable_sam_no_rts", ("x", "x", "")),
                          ("stable_sam_no_drp", ("x", "", "x")), ("stable_sam", ("x", "x", "x"))):
        if method in table["methods"]:
            k = table["methods"][method]["kinds"]["noisy_box"]
            lines.append(f"| {' | '.join(flags)} | {_cell(k['mIoU'])} | {_cell(k['mBIoU'])} | "
                         f"{_cell(k['mSF'])} |")
    if "test_targets" in table:
        lines += ["", f"{table['test_targets']} test targets; 95 % bootstrap intervals (images "
                  f"resampled) in brackets; filling the GT box scores "
                  f"{_cell(table['box_fill_mIoU'])} mIoU on them."]
    if any("follow" in row for row in table["methods"].values()):
        lines += ["", "### Prompt-following: cross-object agreement / stable but wrong (%), "
                  "and a box on empty background (% of the mask on objects)", "",
                  "| method | " + " | ".join(KIND_TITLES[k] for k in KINDS)
                  + " | empty-background box |", "|" + " --- |" * (2 + len(KINDS))]
        for method, row in table["methods"].items():
            if "follow" not in row:
                continue
            cells = [f"{_cell(row['follow'][k]['cross_agreement'])} / "
                     f"{_cell(row['follow'][k]['stable_but_wrong'])}" for k in KINDS]
            lines.append(f"| {TITLES.get(method, method)} | " + " | ".join(cells)
                         + f" | {_cell(row.get('background_box', {}).get('on_objects'))} |")
    if "site_reliance" in table:
        lines += ["", *reliance_lines(table["site_reliance"])]
    if "worst_box" in table:
        lines += ["", *worst_box_lines(table["worst_box"])]
    lines += ["", "### Targets", "", "| target | measured | |", "| --- | --- | --- |"]
    for name, met, measured in check_targets(table):
        lines.append(f"| {name} | {measured} | {'met' if met else 'MISSED'} |")
    if note:
        lines += ["", note]
    return "\n".join(lines) + "\n"


def reliance_lines(reliance: dict) -> list:
    """The base's route reliance as a markdown table: mIoU with every route, and lost when one
    is removed (the plugin site marked)."""
    kinds = list(reliance["full"])
    lines = ["### The base's route reliance: mIoU lost when one attention route is removed", "",
             f"First {reliance.get('prompts_per_target', '')} prompts of each kind per target; "
             "a route's output projection zeroed (`evaluation/route_reliance.py`). Stable-SAM's "
             "plugins change only the plugin site's keys/values.", "",
             "| route | " + " | ".join(f"{KIND_TITLES.get(k, k)} mIoU lost" for k in kinds) + " |",
             "|" + " --- |" * (1 + len(kinds)),
             "| none removed (mIoU) | " + " | ".join(_cell(reliance["full"][k]) for k in kinds)
             + " |"]
    for name, row in reliance["routes"].items():
        label = f"**{name} (plugin site)**" if name == reliance["site"] else name
        lines.append(f"| {label} | " + " | ".join(_cell(row["drop"][k]) for k in kinds) + " |")
    return lines


def worst_box_lines(rows: dict) -> list:
    """IoU-Min / IoU-Base / IoU-Max / Delta per method and tau (`evaluation/worst_box.py`)."""
    config = rows.get("config", {})
    lines = ["### Worst-case boxes: IoU-Min / IoU-Base / IoU-Max (mIoU over targets)", "",
             "Among boxes whose IoU with the GT box is at least tau, the one found by projected "
             "gradient steps on its four coordinates that minimises (maximises) the mask's IoU; "
             f"{config.get('starts', '?')} starts, {config.get('steps', '?')} steps per start "
             "and direction. IoU-Base is the GT box's; 95 % bootstrap intervals over images.", "",
             "| method | tau | IoU-Min | IoU-Base | IoU-Max | Delta |",
             "| --- | --- | --- | --- | --- | --- |"]
    for method, by_tau in rows.items():
        if method == "config":
            continue
        for tau, s in by_tau.items():
            cells = [_with_interval(s, m) for m in ("iou_min", "iou_base", "iou_max", "delta")]
            lines.append(f"| {TITLES.get(method, method)} | {tau} | " + " | ".join(cells) + " |")
    return lines

