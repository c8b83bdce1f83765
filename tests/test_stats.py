"""Confidence intervals: bootstrap coverage against known population values, pairing, Wilson
intervals by hand, AUCs against scikit-learn, and bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest
from numpy.testing import assert_allclose
from sklearn.metrics import roc_auc_score

from physlens.stats import (
    Interval,
    auc_interval,
    auc_statistic,
    bootstrap_interval,
    compare_medians,
    mean_interval,
    median_interval,
    paired_difference_interval,
    paired_interval,
    proportion_interval,
)


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
    assert interval.format().startswith("3 [") and interval.format().endswith(", inf]")
    with pytest.raises(ValueError, match="values must hold finite or infinite numbers, not NaN"):
        bootstrap_interval([1.0, np.nan, 2.0])
    assert bootstrap_interval([1.5]) == Interval(1.5, 1.5, 1.5)  # one value: the interval is the point
    with pytest.raises(ValueError, match="paired"):
        paired_difference_interval([1.0, 2.0], [1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="confidence must be a number in"):
        bootstrap_interval([1.0, 2.0], confidence=95)


def test_interval_formats_and_serialises():
    interval = Interval(0.5, 0.25, 1e-3, 0.95, 10)
    assert interval.format() == "0.5 [0.25, 1.00e-03]"
    assert interval.to_dict() == {"estimate": 0.5, "low": 0.25, "high": 1e-3, "confidence": 0.95, "n": 10}


def test_a_vectorized_paired_statistic_resamples_rows_together(rng):
    # A ratio of sums (the context-swap slope): exact when every pair has the same ratio.
    numerator = rng.uniform(1, 2, 100)
    interval = paired_interval(lambda a, b, axis=-1: a.sum(axis=axis) / b.sum(axis=axis), 3 * numerator, numerator,
                               vectorized=True, seed=2)
    assert interval.estimate == pytest.approx(3.0) and interval.low == pytest.approx(3.0) and interval.high == pytest.approx(3.0)


def test_wilson_interval_matches_the_formula():
    k, n, z = 7, 1024, 1.959963984540054
    p = k / n
    centre = (p + z**2 / (2 * n)) / (1 + z**2 / n)
    half = z / (1 + z**2 / n) * math.sqrt(p * (1 - p) / n + z**2 / (4 * n**2))
    interval = proportion_interval(k, n)
    assert_allclose([interval.low, interval.high], [centre - half, centre + half], rtol=1e-9)
    assert interval.estimate == p
    assert proportion_interval(0, 50).low == 0.0 and proportion_interval(50, 50).high == 1.0
    with pytest.raises(ValueError, match="at most trials"):
        proportion_interval(5, 4)


def test_auc_statistic_matches_scikit_learn_with_ties(rng):
    pos, neg = rng.integers(0, 5, 30).astype(float), rng.integers(0, 5, 50).astype(float)  # many ties
    expected = roc_auc_score(np.r_[np.ones(30), np.zeros(50)], np.r_[pos, neg])
    assert_allclose(auc_statistic(pos, neg), expected, rtol=1e-12)
    batch = np.stack([pos, pos[::-1]])
    assert_allclose(auc_statistic(batch, neg[None]), [expected, expected], rtol=1e-12)


def test_bootstrap_intervals_cover_the_truth_at_about_their_level(rng):
    hits = {"median": 0, "mean": 0, "auc": 0}
    trials = 40
    for trial in range(trials):
        sample = rng.normal(2.0, 1.0, 200)
        hits["median"] += median_interval(sample, n_resamples=300, seed=trial).low <= 2.0 <= median_interval(sample, n_resamples=300, seed=trial).high
        hits["mean"] += (lambda i: i.low <= 2.0 <= i.high)(mean_interval(sample, n_resamples=300, seed=trial))
        pos, neg = rng.normal(1.0, 1.0, 60), rng.normal(0.0, 1.0, 60)
        true_auc = 0.5 * math.erfc(-1 / 2)  # P(N(1,1) > N(0,1)) = Φ(1/√2)
        hits["auc"] += (lambda i: i.low <= true_auc <= i.high)(auc_interval(pos, neg, n_resamples=300, seed=trial))
    for name, count in hits.items():
        assert count / trials > 0.8, name  # nominal 95 %; a percentile bootstrap runs a little low


def test_intervals_on_constant_data_and_paired_statistics():
    assert median_interval([3.0, 3.0, 3.0]) == Interval(3.0, 3.0, 3.0)
    assert auc_interval([1.0, 1.0], [0.0, 0.0]).low == 1.0
    truth = np.array([0, 0, 1, 1, 1, 2, 2, 2, 2, 2])
    guess = np.array([0, 1, 1, 1, 0, 2, 2, 2, 2, 1])
    accuracy = paired_interval(lambda t, g: float((t == g).mean()), truth, guess, n_resamples=300, seed=1)
    assert accuracy.estimate == 0.7 and accuracy.low <= 0.7 <= accuracy.high
    assert "0.7 [" in accuracy.format()
    assert proportion_interval(1, 200).format(percent=True).startswith("0.5 % [")
    with pytest.raises(ValueError, match="one common length"):
        paired_interval(np.mean, truth, guess[:3])
    with pytest.raises(ValueError, match="at least one value"):
        median_interval([])
    with pytest.raises(ValueError, match="finite"):
        mean_interval([1.0, np.nan])
    with pytest.raises(ValueError, match="confidence must be"):
        median_interval([1.0, 2.0], confidence=1.5)
