"""A non-linear (MLP) probe, always to be read beside its random-init control.

An MLP probe can decode more than a linear one, but also more of what is merely present in the
input: a randomly initialised transformer already passes the context on, and ω0 is a function of
the context. Its R² says something about training only through the gap to the same probe on a
random-init copy of the model. Built on scikit-learn's ``MLPRegressor`` with standardised inputs and
targets (a label such as the damping factor e^{−γΔt} varies by 1 % around 0.98; unscaled, the
regressor would spend its training on the offset), scored by grouped cross-validation (folds by
trajectory).
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
from sklearn.compose import TransformedTargetRegressor
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import PredefinedSplit, cross_val_predict
from sklearn.neural_network import MLPRegressor
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

from physlens._validation import check_nonnegative_int, check_positive_int
from physlens.probes.linear_probe import grouped_folds


class _MLPRegressor(MLPRegressor):
    """scikit-learn's ``MLPRegressor`` with the R² of its early-stopping validation computed directly.

    Early stopping scores the validation split after every epoch with ``r2_score``, whose input checks
    took most of that time; this is the same R² (its float operations in the same order), without them.
    """

    def _score(self, X: np.ndarray, y: np.ndarray, sample_weight: np.ndarray | None = None) -> float:
        if sample_weight is not None:  # not what the probe does: leave it to scikit-learn
            return super()._score(X, y, sample_weight=sample_weight)
        predicted = self._predict(X, check_input=False)
        if not np.isfinite(predicted).all():
            return np.nan
        return validation_r2(y, predicted)


def validation_r2(y: np.ndarray, predicted: np.ndarray) -> float:
    """R² of ``predicted`` against ``y`` (both ``[n]`` or ``[n, 1]``) as ``sklearn.metrics.r2_score`` gives it:
    ``1 − Σ(y − ŷ)² / Σ(y − ȳ)²``, 1 for a perfect fit of a constant ``y`` and 0 for an imperfect one."""
    y, predicted = np.asarray(y, dtype=np.float64), np.asarray(predicted, dtype=np.float64)
    if y.size != predicted.size or y.size < 2 or (y.ndim == 2 and y.shape[1] != 1) or y.ndim > 2:
        raise ValueError(f"y and predicted must hold the same n >= 2 values of one target, got {list(y.shape)} and {list(predicted.shape)}")
    y, predicted = y.reshape(-1, 1), predicted.reshape(-1, 1)
    numerator = np.sum(1.0 * (y - predicted) ** 2, axis=0)[0]
    denominator = np.sum(1.0 * (y - np.mean(y, axis=0)) ** 2, axis=0)[0]
    if denominator == 0:
        return 1.0 if numerator == 0 else 0.0
    return float(1 - numerator / denominator)


def mlp_probe(hidden: tuple[int, ...] = (64, 64), *, seed: int = 0, max_iter: int = 500, alpha: float = 1e-4) -> Any:
    """The probe estimator: standardised inputs and target, then a ReLU MLP regressor (Adam, early
    stopping); predictions come back in the target's own units."""
    hidden = tuple(check_positive_int("hidden", h) for h in hidden)
    regressor = make_pipeline(
        StandardScaler(),
        _MLPRegressor(hidden_layer_sizes=hidden, alpha=alpha, max_iter=check_positive_int("max_iter", max_iter),
                     early_stopping=True, n_iter_no_change=20, random_state=check_nonnegative_int("seed", seed)),
    )
    return TransformedTargetRegressor(regressor=regressor, transformer=StandardScaler())


def mlp_probe_r2(
    X: Any,
    y: Any,
    *,
    groups: Any = None,
    n_folds: int = 5,
    seed: int = 0,
    hidden: tuple[int, ...] = (64, 64),
    max_iter: int = 500,
) -> float:
    """Held-out R² of an MLP probe: out-of-fold predictions pooled over grouped folds,
    1 − Σ(y − ŷ)² / Σ(y − ȳ)². ``groups`` (default: one per row) keeps a trajectory in one fold."""
    X, y = np.asarray(X, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if X.ndim != 2 or y.ndim != 1 or len(X) != len(y):
        raise ValueError(f"X must be [n, d] and y [n] with the same n, got {list(X.shape)} and {list(y.shape)}")
    if not (np.isfinite(X).all() and np.isfinite(y).all()):
        raise ValueError("X and y must be finite")
    folds = grouped_folds(np.arange(len(y)) if groups is None else groups, n_folds, seed=seed).numpy()
    # The matrices are tiny (a few hundred rows by 64): BLAS threads cost more in hand-offs than they gain.
    with warnings.catch_warnings(), threadpool_limits(1, user_api="blas"):
        # Early stopping on a validation split ends most fits; an unconverged one shows in the R² itself.
        warnings.simplefilter("ignore", ConvergenceWarning)
        predicted = cross_val_predict(mlp_probe(hidden, seed=seed, max_iter=max_iter), X, y, cv=PredefinedSplit(folds))
    return float(1 - ((y - predicted) ** 2).sum() / ((y - y.mean()) ** 2).sum())


__all__ = ["mlp_probe", "mlp_probe_r2", "validation_r2"]
