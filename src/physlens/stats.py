"""Confidence intervals for the numbers physlens reports: medians, means, paired differences, proportions, AUCs.

Every figure a report prints comes with an interval from here, so a sentence such as "the model
beats the baseline" is written only when the interval of the difference excludes zero. Medians,
means, ratios and AUCs get percentile bootstrap intervals from ``scipy.stats.bootstrap`` (paired
samples are resampled together, an AUC's positives and negatives independently); proportions get
Wilson score intervals from ``scipy.stats.binomtest``. Every resampling takes a seed.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import ArrayLike
from scipy import stats as sps

from physlens._validation import check_nonnegative_int, check_positive_int

DEFAULT_RESAMPLES = 2000
"""Bootstrap resamples per interval: enough for stable 95 % percentile bounds."""


@dataclass(frozen=True)
class Interval:
    """An estimate with a two-sided confidence interval ``[low, high]``."""

    estimate: float  # the statistic on the full sample
    low: float  # lower bound of the interval
    high: float  # upper bound of the interval
    confidence: float = 0.95  # confidence level of the interval
    n: int | None = field(default=None, compare=False)  # sample size behind the estimate, when one sample

    def excludes(self, value: float) -> bool:
        """True when ``value`` lies outside the interval (e.g. 0 for "a difference is real")."""
        return bool(value < self.low or value > self.high)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {"estimate": self.estimate, "low": self.low, "high": self.high, "confidence": self.confidence, "n": self.n}

    def format(self, digits: int = 3, *, percent: bool = False) -> str:
        """``"estimate [low, high]"`` with ``digits`` significant digits, or as percentages."""
        if percent:
            places = max(digits - 2, 0)
            return f"{100 * self.estimate:.{places}f} % [{100 * self.low:.{places}f}, {100 * self.high:.{places}f}]"
        return f"{_number(self.estimate, digits)} [{_number(self.low, digits)}, {_number(self.high, digits)}]"


def _number(value: float, digits: int) -> str:
    if math.isnan(value):
        return "n/a"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    if value != 0 and (abs(value) < 1e-2 or abs(value) >= 1e5):
        return f"{value:.{digits - 1}e}"
    return f"{value:.{digits}g}"


def _check_confidence(confidence: float) -> float:
    if isinstance(confidence, bool) or not isinstance(confidence, (int, float)) or not 0 < confidence < 1:
        raise ValueError(f"confidence must be a number in (0, 1), got {confidence!r}")
    return float(confidence)


def _sample(name: str, values: ArrayLike) -> np.ndarray:
    array = np.asarray(values.detach().cpu() if hasattr(values, "detach") else values, dtype=np.float64).ravel()
    if array.size == 0:
        raise ValueError(f"{name} must hold at least one value")
    if np.isnan(array).any():
        raise ValueError(f"{name} must hold finite or infinite numbers, not NaN (an infinite error ranks last)")
    return array


def _bootstrap(samples: tuple[np.ndarray, ...], statistic: Callable[..., Any], confidence: float, n_resamples: int,
               seed: int, paired: bool) -> tuple[float, float]:
    if all(np.isfinite(s).all() and np.ptp(s) == 0 for s in samples):
        value = float(statistic(*samples, axis=-1))  # nothing to resample: the interval is the point
        return value, value
    # resampling one value with replacement is resampling two copies of it; scipy wants two
    samples = tuple(np.repeat(s, 2) if s.size == 1 else s for s in samples)
    with np.errstate(invalid="ignore", divide="ignore"):  # scipy's standard error of infinite values
        result = sps.bootstrap(
            samples, statistic, n_resamples=n_resamples, confidence_level=confidence, method="percentile",
            vectorized=True, paired=paired, random_state=np.random.default_rng(seed),
        )
    return float(result.confidence_interval.low), float(result.confidence_interval.high)


def _median(sample: np.ndarray, axis: int = -1) -> np.ndarray | np.floating:
    return np.median(sample, axis=axis)


def _mean(sample: np.ndarray, axis: int = -1) -> np.ndarray | np.floating:
    return np.mean(sample, axis=axis)


def bootstrap_interval(
    values: ArrayLike,
    statistic: Callable[..., Any] = _median,
    *,
    confidence: float = 0.95,
    n_resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
) -> Interval:
    """Percentile bootstrap interval of ``statistic`` (default: the median) over ``values``.

    ``statistic(sample, axis)`` must reduce along ``axis`` (numpy's convention). Infinite values
    (diverged rollouts) are allowed and rank last; NaN is refused.
    """
    sample = _sample("values", values)
    confidence, n_resamples = _check_confidence(confidence), check_positive_int("n_resamples", n_resamples)
    with np.errstate(invalid="ignore"):
        estimate = float(statistic(sample, axis=-1))
    low, high = _bootstrap((sample,), statistic, confidence, n_resamples, check_nonnegative_int("seed", seed), paired=False)
    return Interval(estimate, low, high, confidence, int(sample.size))


def median_interval(values: ArrayLike, *, confidence: float = 0.95, n_resamples: int = DEFAULT_RESAMPLES, seed: int = 0) -> Interval:
    """The median of ``values`` with a percentile bootstrap interval."""
    return bootstrap_interval(values, _median, confidence=confidence, n_resamples=n_resamples, seed=seed)


def mean_interval(values: ArrayLike, *, confidence: float = 0.95, n_resamples: int = DEFAULT_RESAMPLES, seed: int = 0) -> Interval:
    """The mean of ``values`` with a percentile bootstrap interval."""
    return bootstrap_interval(values, _mean, confidence=confidence, n_resamples=n_resamples, seed=seed)


def paired_interval(
    statistic: Callable[..., Any],
    *arrays: ArrayLike,
    confidence: float = 0.95,
    n_resamples: int = 1000,
    seed: int = 0,
    vectorized: bool = False,
) -> Interval:
    """``statistic(*arrays)`` with a percentile bootstrap interval that resamples the rows of all
    ``arrays`` together (the same trajectories scored twice; true and predicted labels coded as numbers).

    ``vectorized=True``: ``statistic(*arrays, axis)`` reduces along ``axis`` and scipy evaluates
    every resample at once; otherwise it is called once per resample on plain 1-D arrays.
    """
    data = [np.asarray(a.detach().cpu() if hasattr(a, "detach") else a) for a in arrays]
    if not data or any(d.ndim != 1 or d.shape != data[0].shape or d.size == 0 for d in data):
        raise ValueError("arrays must be non-empty 1-D arrays of one common length")
    confidence, n_resamples = _check_confidence(confidence), check_positive_int("n_resamples", n_resamples)
    seed = check_nonnegative_int("seed", seed)
    if vectorized:
        data = [_sample(f"arrays[{i}]", d) for i, d in enumerate(data)]
        with np.errstate(invalid="ignore", divide="ignore"):
            estimate = float(statistic(*data, axis=-1))
        low, high = _bootstrap(tuple(data), statistic, confidence, n_resamples, seed, paired=True)
        return Interval(estimate, low, high, confidence, int(data[0].size))
    estimate = float(statistic(*data))
    rows = np.random.default_rng(seed).integers(0, data[0].size, size=(n_resamples, data[0].size))
    values = np.array([statistic(*(d[r] for d in data)) for r in rows], dtype=float)
    alpha = (1 - confidence) / 2
    return Interval(estimate, float(np.quantile(values, alpha)), float(np.quantile(values, 1 - alpha)), confidence, int(data[0].size))


def paired_difference_interval(
    a: ArrayLike,
    b: ArrayLike,
    statistic: Callable[..., Any] = _median,
    *,
    confidence: float = 0.95,
    n_resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
) -> Interval:
    """Interval of ``statistic(a) − statistic(b)`` for paired samples (the same trajectories scored
    twice), resampling the pairs together. An interval that excludes 0 supports "a differs from b"."""
    if np.size(a) != np.size(b):
        raise ValueError(f"a and b must be paired (same length), got {np.size(a)} and {np.size(b)}")

    def difference(x: np.ndarray, y: np.ndarray, axis: int = -1) -> np.ndarray:
        with np.errstate(invalid="ignore"):
            out = np.asarray(statistic(x, axis=axis) - statistic(y, axis=axis), dtype=np.float64)
        return np.where(np.isnan(out), 0.0, out)  # inf − inf: both diverged, no difference

    return paired_interval(difference, a, b, confidence=confidence, n_resamples=n_resamples, seed=seed, vectorized=True)


def compare_medians(a: ArrayLike, b: ArrayLike, *, confidence: float = 0.95, n_resamples: int = DEFAULT_RESAMPLES, seed: int = 0) -> str:
    """``"lower"``, ``"higher"`` or ``"indistinguishable"``: how the median of ``a`` compares with
    that of ``b`` on the same items, judged by whether the paired interval of the difference excludes 0."""
    interval = paired_difference_interval(a, b, confidence=confidence, n_resamples=n_resamples, seed=seed)
    if interval.high < 0:
        return "lower"
    if interval.low > 0:
        return "higher"
    return "indistinguishable"


def proportion_interval(successes: int, trials: int, *, confidence: float = 0.95) -> Interval:
    """``successes / trials`` with a Wilson score interval (sensible at 0 and at ``trials``, too)."""
    trials = check_positive_int("trials", trials)
    successes = check_nonnegative_int("successes", successes)
    if successes > trials:
        raise ValueError(f"successes must be at most trials ({trials}), got {successes}")
    confidence = _check_confidence(confidence)
    ci = sps.binomtest(successes, trials).proportion_ci(confidence_level=confidence, method="wilson")
    return Interval(successes / trials, float(ci.low), float(ci.high), confidence, trials)


def auc_statistic(positive: np.ndarray, negative: np.ndarray, axis: int = -1) -> np.ndarray | np.floating:
    """Area under the ROC curve of scores that should be higher for ``positive`` (ties count ½),
    vectorised along ``axis``: the Mann–Whitney U of the positives divided by n₊·n₋."""
    positive, negative = np.moveaxis(np.asarray(positive, float), axis, -1), np.moveaxis(np.asarray(negative, float), axis, -1)
    n_pos, n_neg = positive.shape[-1], negative.shape[-1]
    shape = np.broadcast_shapes(positive.shape[:-1], negative.shape[:-1])
    combined = np.concatenate([np.broadcast_to(positive, (*shape, n_pos)), np.broadcast_to(negative, (*shape, n_neg))], axis=-1)
    ranks = sps.rankdata(combined, axis=-1)
    return (ranks[..., :n_pos].sum(-1) - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def auc_interval(
    positive_scores: ArrayLike, negative_scores: ArrayLike, *, confidence: float = 0.95, n_resamples: int = 1000, seed: int = 0
) -> Interval:
    """The AUC of ``positive_scores`` against ``negative_scores`` with a bootstrap interval that
    resamples the two groups independently (so a handful of positives gives a wide interval)."""
    pos, neg = _sample("positive_scores", positive_scores), _sample("negative_scores", negative_scores)
    confidence, n_resamples = _check_confidence(confidence), check_positive_int("n_resamples", n_resamples)
    low, high = _bootstrap((pos, neg), auc_statistic, confidence, n_resamples, check_nonnegative_int("seed", seed), paired=False)
    return Interval(float(auc_statistic(pos, neg)), low, high, confidence)


__all__ = [
    "DEFAULT_RESAMPLES",
    "Interval",
    "auc_interval",
    "auc_statistic",
    "bootstrap_interval",
    "compare_medians",
    "mean_interval",
    "median_interval",
    "paired_difference_interval",
    "paired_interval",
    "proportion_interval",
]
