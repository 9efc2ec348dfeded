"""95 % bootstrap intervals for the table's means (mIoU, mSF), resampling whole images.

Targets of one image share its prompts' context and its model embedding, so they are not
independent draws: the bootstrap resamples images (the clusters) with replacement and takes
the mean over every target of the drawn images, the percentile interval of those means.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np

RESAMPLES = 2000
LEVEL = 0.95


def bootstrap_interval(values: Sequence[float], groups: Sequence | None = None, *,
                       level: float = LEVEL, resamples: int = RESAMPLES,
                       seed: int = 0) -> tuple[float, float]:
    """(low, high): the percentile bootstrap interval of the mean of `values`.

    Arguments:
      values: one number per target; NaN or None (undefined, e.g. the GT box's SF) is left out.
      groups: the cluster of each value (its image); None treats every value as its own.
      level: the interval's coverage, in (0, 1).
    Returns (NaN, NaN) when no value is defined.
    """
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), is {level}")
    if resamples < 1:
        raise ValueError(f"resamples must be >= 1, is {resamples}")
    groups = list(range(len(values))) if groups is None else list(groups)
    if len(groups) != len(values):
        raise ValueError(f"{len(groups)} groups for {len(values)} values")
    kept = [(g, float(v)) for g, v in zip(groups, values) if v is not None and math.isfinite(v)]
    if not kept:
        return float("nan"), float("nan")
    names = sorted({g for g, _ in kept}, key=str)
    index = {g: i for i, g in enumerate(names)}
    sums, counts = np.zeros(len(names)), np.zeros(len(names))
    for g, v in kept:
        sums[index[g]] += v
        counts[index[g]] += 1
    rng = np.random.default_rng(seed)
    draws = rng.integers(len(names), size=(resamples, len(names)))
    means = sums[draws].sum(1) / counts[draws].sum(1)
    tail = (1 - level) / 2
    low, high = np.quantile(means, [tail, 1 - tail])
    return float(low), float(high)
