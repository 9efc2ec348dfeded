"""Bootstrap intervals of a mean, resampling clusters (images) whole."""
import math

import numpy as np
import pytest

from stable_sam.evaluation.intervals import bootstrap_interval


def test_the_interval_holds_the_mean_and_narrows_with_more_data():
    rng = np.random.default_rng(1)
    small, large = rng.uniform(size=30), rng.uniform(size=3000)
    for values in (small, large):
        low, high = bootstrap_interval(values)
        assert low < np.mean(values) < high
    width = [np.subtract(*bootstrap_interval(v)[::-1]) for v in (small, large)]
    assert width[1] < width[0] / 5
    assert bootstrap_interval([0.4] * 10) == pytest.approx((0.4, 0.4))


def test_undefined_values_are_left_out():
    assert bootstrap_interval([0.5, float("nan"), None, 0.5]) == pytest.approx((0.5, 0.5))
    assert all(math.isnan(x) for x in bootstrap_interval([float("nan")]))


def test_clusters_are_resampled_whole():
    # two images, one all 0, one all 1: resampling images gives means of 0, 1/2 or 1 only and
    # a wide interval; resampling the 200 targets alone would give a narrow one around 1/2
    values = [0.0] * 100 + [1.0] * 100
    groups = ["a"] * 100 + ["b"] * 100
    low, high = bootstrap_interval(values, groups)
    assert (low, high) == (0.0, 1.0)
    low, high = bootstrap_interval(values)
    assert 0.4 < low < 0.5 < high < 0.6


def test_bad_arguments():
    with pytest.raises(ValueError, match="level must be in"):
        bootstrap_interval([1.0], level=1.0)
    with pytest.raises(ValueError, match="2 groups for 1 values"):
        bootstrap_interval([1.0], ["a", "b"])
