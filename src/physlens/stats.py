"""Bootstrap intervals for the numbers physlens reports: medians, differences of paired medians, slopes.

Every figure a report prints comes with an interval from here, so a sentence such as "the model
beats the baseline" is written only when the interval of the difference excludes zero. Resampling
is done by ``scipy.stats.bootstrap`` (percentile intervals) with a seeded generator.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import stats as sps

from physlens._validation import check_nonnegative_int, check_positive_int

DEFAULT_RESAMPLES = 2000
"""Bootstrap resamples per interval: enough for stable 95 % percentile bounds."""


@dataclass(frozen=True)
class Interval:
    """A point estimate with a bootstrap confidence interval ``[low, high]`` at ``level``."""

    estimate: float  # the statistic on the full sample
    low: float  # lower bound of the interval
    high: float  # upper bound of the interval
    level: float  # confidence level, e.g. 0.95
    n: int  # sample size behind the estimate

    def excludes(self, value: float) -> bool:
        """True when ``value`` lies outside the interval (e.g. 0 for "a difference is real")."""
        return bool(value < self.low or value > self.high)

    def to_dict(self) -> dict[str, float]:
        """JSON-ready form."""
        return {"estimate": self.estimate, "low": self.low, "high": self.high, "level": self.level, "n": self.n}

    def format(self, digits: int = 3) -> str:
        """``estimate [low, high]`` with ``digits`` significant digits."""
        def number(value: float) -> str:
            if not np.isfinite(value):
                return "inf" if value > 0 else ("-inf" if value < 0 else "nan")
            if value != 0 and (abs(value) < 1e-2 or abs(value) >= 1e5):
                return f"{value:.{digits - 1}e}"
            return f"{value:.{digits}g}"

        return f"{number(self.estimate)} [{number(self.low)}, {number(self.high)}]"


def _as_sample(name: str, values: Any) -> np.ndarray:
    array = np.asarray(values.detach().cpu() if hasattr(values, "detach") else values, dtype=np.float64).reshape(-1)
    if array.size < 2:
        raise ValueError(f"{name} needs at least 2 values for a bootstrap interval, got {array.size}")
    if np.isnan(array).any():
        raise ValueError(f"{name} must not contain NaN (an infinite error is fine: it ranks last)")
    return array


def _check_level(level: float) -> float:
    level = float(level)
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level!r}")
    return level


def _median(sample: np.ndarray, axis: int = -1) -> np.ndarray:
    return np.median(sample, axis=axis)


def bootstrap_interval(
    values: Any,
    statistic: Callable[..., Any] = _median,
    *,
    level: float = 0.95,
    n_resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
) -> Interval:
    """Percentile bootstrap interval of ``statistic`` (default: the median) over ``values``.

    ``statistic(sample, axis)`` must reduce along ``axis`` (numpy's convention). Infinite values
    (diverged rollouts) are allowed and rank last; NaN is refused.
    """
    sample = _as_sample("values", values)
    level = _check_level(level)
    n_resamples = check_positive_int("n_resamples", n_resamples)
    rng = np.random.default_rng(check_nonnegative_int("seed", seed))
    estimate = float(statistic(sample, axis=-1))
    with np.errstate(invalid="ignore"):  # scipy's standard error of infinite values; the bounds are fine
        result = sps.bootstrap(
            (sample,), statistic, n_resamples=n_resamples, confidence_level=level, method="percentile",
            vectorized=True, random_state=rng,
        )
    low, high = result.confidence_interval
    return Interval(estimate, float(low), float(high), level, int(sample.size))


def paired_interval(
    samples: tuple[Any, ...],
    statistic: Callable[..., Any],
    *,
    level: float = 0.95,
    n_resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
) -> Interval:
    """Percentile bootstrap interval of ``statistic(*samples, axis)`` where the samples are paired:
    item ``i`` of every sample belongs to the same unit (trajectory, pair) and they are resampled together."""
    arrays = [_as_sample(f"samples[{i}]", sample) for i, sample in enumerate(samples)]
    if not arrays:
        raise ValueError("samples must hold at least one sample")
    if len({array.size for array in arrays}) != 1:
        raise ValueError(f"samples must be paired (same length), got lengths {[array.size for array in arrays]}")
    level = _check_level(level)
    n_resamples = check_positive_int("n_resamples", n_resamples)
    rng = np.random.default_rng(check_nonnegative_int("seed", seed))
    estimate = float(statistic(*arrays, axis=-1))
    with np.errstate(invalid="ignore", divide="ignore"):
        result = sps.bootstrap(
            tuple(arrays), statistic, paired=True, n_resamples=n_resamples, confidence_level=level,
            method="percentile", vectorized=True, random_state=rng,
        )
    low, high = result.confidence_interval
    return Interval(estimate, float(low), float(high), level, int(arrays[0].size))


def paired_difference_interval(
    a: Any,
    b: Any,
    statistic: Callable[..., Any] = _median,
    *,
    level: float = 0.95,
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

    return paired_interval((a, b), difference, level=level, n_resamples=n_resamples, seed=seed)


def compare_medians(a: Any, b: Any, *, level: float = 0.95, n_resamples: int = DEFAULT_RESAMPLES, seed: int = 0) -> str:
    """``"lower"``, ``"higher"`` or ``"indistinguishable"``: how the median of ``a`` compares with
    that of ``b`` on the same items, judged by whether the paired interval of the difference excludes 0."""
    interval = paired_difference_interval(a, b, level=level, n_resamples=n_resamples, seed=seed)
    if interval.high < 0:
        return "lower"
    if interval.low > 0:
        return "higher"
    return "indistinguishable"


__all__ = [
    "DEFAULT_RESAMPLES",
    "Interval",
    "bootstrap_interval",
    "compare_medians",
    "paired_difference_interval",
    "paired_interval",
]
