"""What quantity does a latent or a bottleneck neuron hold? Polynomial regression of the latent on the
inputs, tests against candidate invariants, and identification up to a monotone map.

The slides' recipe: regress the Siamese latent on polynomial features of the state and read off the
dominant terms (they found latent ≈ −403·(x·vy − y·vx) = −403·L). A bottleneck neuron may hold any
monotone function f(Q) of a physical quantity Q, so it is matched by rank (Spearman) and by an
isotonic fit rather than by a straight line alone.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import sympy
import torch
from scipy.stats import spearmanr
from sklearn.base import BaseEstimator, RegressorMixin
from sklearn.isotonic import IsotonicRegression
from sklearn.utils.validation import check_is_fitted

from physlens._estimators import check_target_given, validate_table, warn_column_target
from physlens._validation import check_nonnegative_int, check_positive_int
from physlens.systems.central import angular_momentum, orbit_energy, runge_lenz


def _as_numpy(name: str, values: object, *, ndim: int | None = None) -> np.ndarray:
    array = values.detach().cpu().numpy() if isinstance(values, torch.Tensor) else np.asarray(values)
    if array.dtype == object:  # numbers held as Python objects count as numbers, as in scikit-learn
        try:
            array = array.astype(np.float64)
        except (TypeError, ValueError):
            raise ValueError(f"{name} must be numeric, got dtype object holding non-numbers") from None
    if not np.issubdtype(array.dtype, np.number):
        raise ValueError(f"{name} must be numeric, got dtype {array.dtype}")
    array = array.astype(np.float64)
    if ndim is not None and array.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-dimensional, got shape {list(array.shape)}")
    if not np.isfinite(array).all():
        raise ValueError(f"{name} must contain only finite values (found NaN or inf)")
    return array


def _as_target(name: str, values: object, n_samples: int) -> np.ndarray:
    target = _as_numpy(name, values)
    if target.ndim == 2 and target.shape[1] == 1:
        target = target[:, 0]
    if target.ndim != 1:
        raise ValueError(f"{name} must have shape [n_samples] or [n_samples, 1], got {list(target.shape)}")
    if target.shape[0] != n_samples:
        raise ValueError(f"{name} has {target.shape[0]} samples but X has {n_samples}; they must match")
    return target


def monomial_exponents(n_features: int, degree: int, *, include_bias: bool = True) -> list[tuple[int, ...]]:
    """Exponent tuples of every monomial of total degree ≤ ``degree`` in ``n_features`` variables,
    ordered by degree, then lexicographically (so x·vy comes before y·vx)."""
    n_features = check_positive_int("n_features", n_features)
    degree = check_nonnegative_int("degree", degree)
    exponents = []
    for total in range(0 if include_bias else 1, degree + 1):
        for combo in itertools.combinations_with_replacement(range(n_features), total):
            powers = [0] * n_features
            for index in combo:
                powers[index] += 1
            exponents.append(tuple(powers))
    return exponents


def monomial_name(powers: Sequence[int], names: Sequence[str]) -> str:
    """``(1, 0, 0, 1)`` with names (x, y, vx, vy) → ``"x*vy"``; ``(0, …)`` → ``"1"``."""
    parts = [name if p == 1 else f"{name}^{p}" for name, p in zip(names, powers) if p]
    return "*".join(parts) if parts else "1"


def polynomial_features(X: np.ndarray, exponents: Sequence[Sequence[int]]) -> np.ndarray:
    """Columns ∏ x_j^{p_j} for each exponent tuple: shape [n_samples, n_terms]."""
    X = np.asarray(X, dtype=np.float64)
    return np.stack([np.prod(X ** np.asarray(p, dtype=np.float64), axis=1) for p in exponents], axis=1)


class PolynomialLatentRegression(RegressorMixin, BaseEstimator):
    """Least-squares regression of a latent on all monomials of the inputs up to ``degree``.

    Coefficients are in the inputs' own units (as in the slides), so ``coef_`` of ``"x*vy"`` and
    ``"y*vx"`` can be compared directly. ``alpha`` adds a ridge penalty on standardised features
    (0, the default, is plain least squares).

    Fitted attributes: ``feature_names_``, ``exponents_``, ``coef_`` (one per feature, the constant
    term ``"1"`` included), ``r2_`` (training R²), ``expression_`` (sympy).
    """

    def __init__(self, degree: int = 2, *, feature_names: Sequence[str] | None = None, alpha: float = 0.0) -> None:
        self.degree = degree
        self.feature_names = feature_names
        self.alpha = alpha

    def _names(self, n_features: int) -> list[str]:
        if self.feature_names is None:
            return [f"x{i}" for i in range(n_features)]
        names = list(self.feature_names)
        if len(names) != n_features:
            raise ValueError(f"feature_names has {len(names)} names but X has {n_features} columns")
        return names

    def fit(self, X: object, y: object) -> PolynomialLatentRegression:
        """Fit the latent ``y`` [n_samples] on monomials of ``X`` [n_samples, n_features]."""
        degree = check_positive_int("degree", self.degree)
        if degree > 3:
            raise ValueError(f"degree must be 1, 2 or 3 (higher degrees overfit and blur the terms), got {degree}")
        check_target_given(self, y)
        X = validate_table(self, X, reset=True)
        warn_column_target(y)
        y = _as_target("y", y, X.shape[0])
        alpha = float(self.alpha)
        if not np.isfinite(alpha) or alpha < 0:
            raise ValueError(f"alpha must be a finite number >= 0, got {self.alpha!r}")
        names = self._names(X.shape[1])
        exponents = monomial_exponents(X.shape[1], degree)
        features = polynomial_features(X, exponents)
        if features.shape[0] < features.shape[1]:
            raise ValueError(f"X needs at least {features.shape[1]} samples for a degree-{degree} fit, got n_samples={features.shape[0]}")
        if alpha == 0:
            coef, *_ = np.linalg.lstsq(features, y, rcond=None)
        else:
            scale = features[:, 1:].std(axis=0)
            scale[scale == 0] = 1.0
            mean = features[:, 1:].mean(axis=0)
            z = (features[:, 1:] - mean) / scale
            gram = z.T @ z + alpha * np.eye(z.shape[1])
            slopes = np.linalg.solve(gram, z.T @ (y - y.mean())) / scale
            coef = np.concatenate([[y.mean() - mean @ slopes], slopes])
        self.exponents_ = exponents
        self.feature_names_ = [monomial_name(p, names) for p in exponents]
        self.coef_ = coef
        self.input_names_ = names
        self.feature_std_ = features.std(axis=0)
        self.r2_ = _r2(y, features @ coef)
        symbols = sympy.symbols(names)
        self.expression_ = sum(
            sympy.Float(c, 6) * sympy.Mul(*[s**p for s, p in zip(symbols, powers)])
            for c, powers in zip(coef, exponents)
        )
        return self

    def predict(self, X: object) -> np.ndarray:
        """The polynomial's value at each row of ``X``."""
        check_is_fitted(self, "coef_")
        X = validate_table(self, X, reset=False)
        return polynomial_features(X, self.exponents_) @ self.coef_

    def coefficient(self, term: str) -> float:
        """The coefficient of one monomial, by name (e.g. ``"x*vy"``)."""
        check_is_fitted(self, "coef_")
        if term not in self.feature_names_:
            raise ValueError(f"unknown term {term!r}; terms are {self.feature_names_}")
        return float(self.coef_[self.feature_names_.index(term)])

    def dominant_terms(self, top: int = 5) -> list[tuple[str, float, float]]:
        """The ``top`` non-constant terms by contribution |coef|·std(feature) over the training data,
        as (name, coefficient, share of the total contribution)."""
        check_is_fitted(self, "coef_")
        top = check_positive_int("top", top)
        contribution = np.abs(self.coef_) * self.feature_std_
        total = contribution.sum() or 1.0
        order = [i for i in np.argsort(-contribution) if self.feature_names_[i] != "1"][:top]
        return [(self.feature_names_[i], float(self.coef_[i]), float(contribution[i] / total)) for i in order]


def _r2(y: np.ndarray, prediction: np.ndarray) -> float:
    residual = float(((y - prediction) ** 2).sum())
    total = float(((y - y.mean()) ** 2).sum())
    return 1.0 - residual / total if total > 0 else (1.0 if residual == 0 else 0.0)


@dataclass(frozen=True)
class QuantityMatch:
    """How well a latent (or bottleneck neuron) matches one candidate quantity.

    ``linear_r2``: R² of the best affine map candidate → latent. ``spearman``: rank correlation
    (±1 for any strictly monotone map). ``isotonic_r2``: R² of the best monotone map candidate →
    latent, fitted on even-indexed samples and scored on the odd ones, so a noisy candidate cannot
    earn a high score by overfitting.
    """

    name: str
    linear_r2: float
    spearman: float
    isotonic_r2: float


def match_quantities(latent: object, candidates: Mapping[str, object]) -> list[QuantityMatch]:
    """Compare a 1-D ``latent`` [n] with each candidate quantity [n]; best isotonic R² first.

    Quantities that are monotone functions of each other (ω0, ω0², Ω at fixed γ) score the same
    rank and isotonic fit: only ``linear_r2`` tells which parametrisation the latent is linear in.
    """
    values = _as_numpy("latent", latent)
    if values.ndim == 2 and values.shape[1] == 1:
        values = values[:, 0]
    if values.ndim != 1:
        raise ValueError(f"latent must have shape [n] or [n, 1], got {list(values.shape)}")
    if len(candidates) == 0:
        raise ValueError("candidates must name at least one quantity to compare with")
    if values.shape[0] < 4:
        raise ValueError(f"latent needs at least 4 samples, got {values.shape[0]}")
    matches = []
    for name, candidate in candidates.items():
        quantity = _as_target(f"candidates[{name!r}]", candidate, values.shape[0])
        if np.ptp(quantity) == 0:
            raise ValueError(f"candidates[{name!r}] is constant; it cannot explain anything")
        design = np.stack([quantity, np.ones_like(quantity)], axis=1)
        linear = design @ np.linalg.lstsq(design, values, rcond=None)[0]
        rank = float(spearmanr(quantity, values).statistic)
        iso = IsotonicRegression(increasing=rank >= 0, out_of_bounds="clip")
        iso.fit(quantity[::2], values[::2])
        held_out = iso.predict(quantity[1::2])
        matches.append(QuantityMatch(name, _r2(values, linear), rank, _r2(values[1::2], held_out)))
    return sorted(matches, key=lambda m: -m.isotonic_r2)


ORBIT_FEATURE_SETS = ("L", "E", "orientation", "L + orientation", "(L, e) × orientation")
"""The candidate explanations :func:`conserved_quantity_r2` scores, each a set of regressors."""


def orbit_invariants(states: object, *, harmonics: int = 3) -> dict[str, np.ndarray]:
    """The conserved quantities of Kepler orbit states ``[n, 4]`` (x, y, vx, vy; m = k = 1): L, E,
    the eccentricity e (the Runge–Lenz vector's length) and ``cos kφ``, ``sin kφ`` for k = 1 …
    ``harmonics`` of its angle φ, the orbit's orientation."""
    harmonics = int(harmonics) if isinstance(harmonics, (int, np.integer)) and not isinstance(harmonics, bool) else -1
    if harmonics < 1:
        raise ValueError(f"harmonics must be a positive integer, got {harmonics!r}")
    X = _as_numpy("states", states, ndim=2)
    if X.shape[1] != 4:
        raise ValueError(f"states must have shape [n, 4] (x, y, vx, vy), got {list(X.shape)}")
    t = torch.from_numpy(X.astype(np.float64))
    vector = runge_lenz(t).numpy()
    phi = np.arctan2(vector[:, 1], vector[:, 0])
    out = {"L": angular_momentum(t).numpy(), "E": orbit_energy(t).numpy(), "e": np.hypot(vector[:, 0], vector[:, 1])}
    for k in range(1, harmonics + 1):
        out[f"cos{k}φ"], out[f"sin{k}φ"] = np.cos(k * phi), np.sin(k * phi)
    return out


def conserved_quantity_r2(latent: object, states: object, *, harmonics: int = 3) -> dict[str, float]:
    """Held-out R² of a latent ``[n]`` regressed (least squares with an intercept) on each set of
    :data:`ORBIT_FEATURE_SETS`: L alone, E alone, the orientation (harmonics of the Runge–Lenz
    angle), L plus the orientation, and L and e each times the orientation harmonics. Fitted on
    even-indexed states, scored on the odd ones, so a large set cannot win by overfitting.

    A latent that is a function of L alone scores ≈ 1 on "L" (if it is affine in L); one that mixes
    L with the orbit's orientation gains from the sets that add the orientation.
    """
    values = _as_numpy("latent", latent)
    if values.ndim == 2 and values.shape[1] == 1:
        values = values[:, 0]
    if values.ndim != 1:
        raise ValueError(f"latent must have shape [n] or [n, 1], got {list(values.shape)}")
    quantities = orbit_invariants(states, harmonics=harmonics)
    if quantities["L"].shape[0] != values.shape[0]:
        raise ValueError(f"latent and states must have the same length, got {values.shape[0]} and {quantities['L'].shape[0]}")
    if values.shape[0] < 8:
        raise ValueError(f"latent needs at least 8 samples, got {values.shape[0]}")
    waves = [quantities[f"{f}{k}φ"] for k in range(1, harmonics + 1) for f in ("cos", "sin")]
    L, E, e = quantities["L"], quantities["E"], quantities["e"]
    sets = {
        "L": [L], "E": [E], "orientation": waves, "L + orientation": [L, *waves],
        "(L, e) × orientation": [L, e, *waves, *(L * w for w in waves), *(e * w for w in waves)],
    }  # fmt: skip
    out = {}
    for name, columns in sets.items():
        design = np.stack([*columns, np.ones_like(L)], axis=1)
        coef = np.linalg.lstsq(design[::2], values[::2], rcond=None)[0]
        out[name] = _r2(values[1::2], design[1::2] @ coef)
    return out


__all__ = [
    "ORBIT_FEATURE_SETS",
    "PolynomialLatentRegression",
    "QuantityMatch",
    "conserved_quantity_r2",
    "match_quantities",
    "monomial_exponents",
    "monomial_name",
    "orbit_invariants",
    "polynomial_features",
]
