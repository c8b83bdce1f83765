"""Confidence intervals for the numbers the studies report: medians, means, proportions and AUCs.

Medians, means and AUCs get percentile bootstrap intervals from ``scipy.stats.bootstrap`` (an AUC
resamples its positives and negatives independently); proportions get Wilson score intervals from
``scipy.stats.binomtest``. Every resampling takes a seed, so a report is reproducible.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike
from scipy import stats

from physlens._validation import check_finite, check_nonnegative_int, check_positive_int


@dataclass(frozen=True)
class Interval:
    """An estimate with a two-sided confidence interval ``[low, high]``."""

    estimate: float
    low: float
    high: float
    confidence: float = 0.95

    def format(self, digits: int = 3, *, percent: bool = False) -> str:
        """``"estimate [low, high]"`` with ``digits`` significant digits (or as percentages)."""
        if percent:
            return f"{100 * self.estimate:.{max(digits - 2, 0)}f} % [{100 * self.low:.{max(digits - 2, 0)}f}, {100 * self.high:.{max(digits - 2, 0)}f}]"
        return f"{_number(self.estimate, digits)} [{_number(self.low, digits)}, {_number(self.high, digits)}]"


def _number(value: float, digits: int) -> str:
    if not math.isfinite(value):
        return "n/a"
    if value != 0 and (abs(value) < 1e-2 or abs(value) >= 1e5):
        return f"{value:.{digits - 1}e}"
    return f"{value:.{digits}g}"


def _check_confidence(confidence: float) -> float:
    if not isinstance(confidence, (int, float)) or not 0 < confidence < 1:
        raise ValueError(f"confidence must be a number in (0, 1), got {confidence!r}")
    return float(confidence)


def _sample(name: str, values: ArrayLike) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64).ravel()
    if array.size == 0:
        raise ValueError(f"{name} must hold at least one value")
    check_finite(name, array)
    return array


def _bootstrap(samples: tuple[np.ndarray, ...], statistic, confidence: float, n_resamples: int, seed: int) -> tuple[float, float]:
    if all(np.ptp(s) == 0 for s in samples):  # nothing to resample: the interval is the point
        value = float(statistic(*samples, axis=-1))
        return value, value
    # resampling one value with replacement is resampling two copies of it; scipy wants two
    samples = tuple(np.repeat(s, 2) if s.size == 1 else s for s in samples)
    result = stats.bootstrap(
        samples, statistic, n_resamples=n_resamples, confidence_level=confidence, method="percentile",
        vectorized=True, paired=False, random_state=np.random.default_rng(seed),
    )
    return float(result.confidence_interval.low), float(result.confidence_interval.high)


def median_interval(values: ArrayLike, *, confidence: float = 0.95, n_resamples: int = 2000, seed: int = 0) -> Interval:
    """The median of ``values`` with a percentile bootstrap interval."""
    data = _sample("values", values)
    confidence, n_resamples = _check_confidence(confidence), check_positive_int("n_resamples", n_resamples)
    low, high = _bootstrap((data,), np.median, confidence, n_resamples, check_nonnegative_int("seed", seed))
    return Interval(float(np.median(data)), low, high, confidence)


def mean_interval(values: ArrayLike, *, confidence: float = 0.95, n_resamples: int = 2000, seed: int = 0) -> Interval:
    """The mean of ``values`` with a percentile bootstrap interval."""
    data = _sample("values", values)
    confidence, n_resamples = _check_confidence(confidence), check_positive_int("n_resamples", n_resamples)
    low, high = _bootstrap((data,), np.mean, confidence, n_resamples, check_nonnegative_int("seed", seed))
    return Interval(float(data.mean()), low, high, confidence)


def proportion_interval(successes: int, trials: int, *, confidence: float = 0.95) -> Interval:
    """``successes / trials`` with a Wilson score interval (sensible at 0 and at ``trials``, too)."""
    trials = check_positive_int("trials", trials)
    successes = check_nonnegative_int("successes", successes)
    if successes > trials:
        raise ValueError(f"successes must be at most trials ({trials}), got {successes}")
    confidence = _check_confidence(confidence)
    ci = stats.binomtest(successes, trials).proportion_ci(confidence_level=confidence, method="wilson")
    return Interval(successes / trials, float(ci.low), float(ci.high), confidence)


def paired_interval(
    statistic,
    *arrays: ArrayLike,
    confidence: float = 0.95,
    n_resamples: int = 1000,
    seed: int = 0,
) -> Interval:
    """``statistic(*arrays)`` with a percentile bootstrap interval that resamples the rows of all
    ``arrays`` together (e.g. true and predicted labels, coded as numbers, for an accuracy)."""
    data = [np.asarray(a) for a in arrays]
    if not data or any(d.ndim != 1 or d.shape != data[0].shape or d.size == 0 for d in data):
        raise ValueError("arrays must be non-empty 1-D arrays of one common length")
    confidence, n_resamples = _check_confidence(confidence), check_positive_int("n_resamples", n_resamples)
    estimate = float(statistic(*data))
    rng = np.random.default_rng(check_nonnegative_int("seed", seed))
    rows = rng.integers(0, data[0].size, size=(n_resamples, data[0].size))
    values = np.array([statistic(*(d[r] for d in data)) for r in rows], dtype=float)
    alpha = (1 - confidence) / 2
    return Interval(estimate, float(np.quantile(values, alpha)), float(np.quantile(values, 1 - alpha)), confidence)


def auc_statistic(positive: np.ndarray, negative: np.ndarray, axis: int = -1) -> np.ndarray:
    """Area under the ROC curve of scores that should be higher for ``positive`` (ties count ½),
    vectorised along ``axis``: the Mann–Whitney U of the positives divided by n₊·n₋."""
    positive, negative = np.moveaxis(np.asarray(positive, float), axis, -1), np.moveaxis(np.asarray(negative, float), axis, -1)
    n_pos, n_neg = positive.shape[-1], negative.shape[-1]
    shape = np.broadcast_shapes(positive.shape[:-1], negative.shape[:-1])
    combined = np.concatenate([np.broadcast_to(positive, (*shape, n_pos)), np.broadcast_to(negative, (*shape, n_neg))], axis=-1)
    ranks = stats.rankdata(combined, axis=-1)
    return (ranks[..., :n_pos].sum(-1) - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def auc_interval(
    positive_scores: ArrayLike, negative_scores: ArrayLike, *, confidence: float = 0.95, n_resamples: int = 1000, seed: int = 0
) -> Interval:
    """The AUC of ``positive_scores`` against ``negative_scores`` with a bootstrap interval that
    resamples the two groups independently (so a handful of positives gives a wide interval)."""
    pos, neg = _sample("positive_scores", positive_scores), _sample("negative_scores", negative_scores)
    confidence, n_resamples = _check_confidence(confidence), check_positive_int("n_resamples", n_resamples)
    low, high = _bootstrap((pos, neg), auc_statistic, confidence, n_resamples, check_nonnegative_int("seed", seed))
    return Interval(float(auc_statistic(pos, neg)), low, high, confidence)


__all__ = ["Interval", "auc_interval", "auc_statistic", "mean_interval", "median_interval", "paired_interval", "proportion_interval"]
