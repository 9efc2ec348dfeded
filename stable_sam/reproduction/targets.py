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


def _get(table: dict, method: str, kind: str, metric: str) -> float:
    return table["methods"][method]["kinds"][kind][metric]


def check_targets(table: dict) -> List[Tuple[str, bool, str]]:
    """[(target, met, the measured numbers)] for each of the issue's targets."""
    def g(method, kind, metric="mIoU"):
        return _get(table, method, kind, metric)

    params = {m: table["methods"][m]["trainable_params"] for m in ("stable_sam", "dt_sam")}
    ratio = params["dt_sam"] / max(params["stable_sam"], 1)
    checks: List[Tuple[str, Callable[[], bool], str]] = [
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
    ]
    return [(name, bool(test()), measured) for name, test, measured in checks]


def _cell(value) -> str:
    return "-" if value is None else f"{value:.1f}"


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
        cells = [" / ".join(_cell(row["kinds"][k][m]) for m in ("mIoU", "mBIoU", "mSF"))
                 for k in KINDS]
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
    lines += ["", "### Targets", "", "| target | measured | |", "| --- | --- | --- |"]
    for name, met, measured in check_targets(table):
        lines.append(f"| {name} | {measured} | {'met' if met else 'MISSED'} |")
    if note:
        lines += ["", note]
    return "\n".join(lines) + "\n"
