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

from physlens._validation import check_nonnegative_int, check_positive_int
from physlens.probes.linear_probe import grouped_folds


def mlp_probe(hidden: tuple[int, ...] = (64, 64), *, seed: int = 0, max_iter: int = 500, alpha: float = 1e-4) -> Any:
    """The probe estimator: standardised inputs and target, then a ReLU MLP regressor (Adam, early
    stopping); predictions come back in the target's own units."""
    hidden = tuple(check_positive_int("hidden", h) for h in hidden)
    regressor = make_pipeline(
        StandardScaler(),
        MLPRegressor(hidden_layer_sizes=hidden, alpha=alpha, max_iter=check_positive_int("max_iter", max_iter),
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
    with warnings.catch_warnings():
        # Early stopping on a validation split ends most fits; an unconverged one shows in the R² itself.
        warnings.simplefilter("ignore", ConvergenceWarning)
        predicted = cross_val_predict(mlp_probe(hidden, seed=seed, max_iter=max_iter), X, y, cv=PredefinedSplit(folds))
    return float(1 - ((y - predicted) ** 2).sum() / ((y - y.mean()) ** 2).sum())


__all__ = ["mlp_probe", "mlp_probe_r2"]
