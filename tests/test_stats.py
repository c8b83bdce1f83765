"""Bootstrap intervals: coverage against the known population median, pairing, and bad input."""

from __future__ import annotations

import numpy as np
import pytest

from physlens.stats import Interval, bootstrap_interval, compare_medians, paired_difference_interval


def test_median_interval_covers_the_population_median_about_95_percent_of_the_time(rng):
    # Exponential(1) has median ln 2; a calibrated 95 % interval covers it in ~95 % of samples.
    hits = 0
    for replicate in range(300):
        sample = rng.exponential(size=151)
        hits += not bootstrap_interval(sample, seed=replicate, n_resamples=1000).excludes(np.log(2))
    assert 0.89 <= hits / 300 <= 0.99


def test_interval_brackets_the_estimate_and_narrows_with_more_data(rng):
    small = bootstrap_interval(rng.normal(size=50), seed=0)
    large = bootstrap_interval(rng.normal(size=5000), seed=0)
    for interval in (small, large):
        assert interval.low <= interval.estimate <= interval.high
    assert (large.high - large.low) < 0.3 * (small.high - small.low)


def test_a_constant_shift_between_pairs_gives_a_point_interval(rng):
    b = rng.normal(size=200)
    interval = paired_difference_interval(b + 1.0, b, seed=1)
    assert interval.estimate == pytest.approx(1.0)
    assert interval.low == pytest.approx(1.0) and interval.high == pytest.approx(1.0)
    assert compare_medians(b + 1.0, b) == "higher" and compare_medians(b, b + 1.0) == "lower"


def test_noise_alone_is_indistinguishable(rng):
    a, b = rng.normal(size=100), rng.normal(size=100)
    assert compare_medians(a, b, seed=2) == "indistinguishable"


def test_infinite_errors_rank_last_but_nan_is_refused():
    interval = bootstrap_interval([1.0, 2.0, 3.0, np.inf, np.inf], seed=0)
    assert interval.estimate == 3.0 and interval.high == np.inf
    with pytest.raises(ValueError, match="values must not contain NaN"):
        bootstrap_interval([1.0, np.nan, 2.0])
    with pytest.raises(ValueError, match="at least 2 values"):
        bootstrap_interval([1.0])
    with pytest.raises(ValueError, match="paired"):
        paired_difference_interval([1.0, 2.0], [1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="level must be in"):
        bootstrap_interval([1.0, 2.0], level=95)


def test_interval_formats_and_serialises():
    interval = Interval(0.5, 0.25, 1e-3, 0.95, 10)
    assert interval.format() == "0.5 [0.25, 1.00e-03]"
    assert interval.to_dict() == {"estimate": 0.5, "low": 0.25, "high": 1e-3, "level": 0.95, "n": 10}
