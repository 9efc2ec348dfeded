"""The training data check before step 1: every sample's image header and mask are read once, so
a bad file stops the run before it starts (all bad files named at once), not when the loader
reaches it hours in (and again at the same sample after `--resume`).

What is checked without decoding images: the image file opens and is under the pixel limit;
the mask decodes, has the image's size (after EXIF orientation) and a foreground pixel.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, List, Sequence, Tuple

__all__ = ["find_bad_samples", "check_training_data"]


def _problem(image_path: Path, mask_path: Path) -> str | None:
    from ..data.hqseg import FOREGROUND_THRESHOLD
    from ..data.image_files import ImageReadError, read_gray, read_image_header

    try:
        size = read_image_header(image_path)
    except (ImageReadError, OSError) as exc:
        return str(exc)
    try:
        mask = read_gray(mask_path)
    except (ImageReadError, OSError) as exc:
        return str(exc)
    if mask.shape != size:
        return (f"mask {mask_path} is {mask.shape[1]}x{mask.shape[0]} (WxH) but image "
                f"{image_path} is {size[1]}x{size[0]}")
    if not (mask > FOREGROUND_THRESHOLD).any():
        return f"mask {mask_path} is empty (no pixel > {FOREGROUND_THRESHOLD})"
    return None


def find_bad_samples(dataset: Any) -> List[Tuple[int, str]]:
    """(index, problem) of every unusable sample of an HQSegDataset, in index order."""
    bad = []
    for index, (image_path, mask_path) in enumerate(dataset.samples):
        problem = _problem(image_path, mask_path)
        if problem is not None:
            bad.append((index, problem))
    return bad


def check_training_data(datasets: Sequence[Any], skip_bad: bool, report: bool) -> List[Any]:
    """The datasets, checked: with bad samples, raises ValueError naming every one of them, or
    (`skip_bad`) drops them, says so on stderr when `report`, and returns what is left. The
    check is deterministic, so a resumed run drops the same samples."""
    problems = [(dataset, find_bad_samples(dataset)) for dataset in datasets]
    count = sum(len(bad) for _, bad in problems)
    if count == 0:
        return list(datasets)
    listed = "; ".join(problem for _, bad in problems for _, problem in bad)
    if not skip_bad:
        raise ValueError(f"{count} training sample(s) cannot be used: {listed} (fix or remove "
                         "them, or pass --skip-bad-samples to train without them)")
    if report:
        print(f"skipping {count} bad training sample(s): {listed}", file=sys.stderr, flush=True)
    kept = []
    for dataset, bad in problems:
        drop = {index for index, _ in bad}
        dataset.samples = [s for i, s in enumerate(dataset.samples) if i not in drop]
        if dataset.samples:
            kept.append(dataset)
    if not kept:
        raise ValueError(f"every training sample is bad: {listed}")
    return kept
