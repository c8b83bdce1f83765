"""The algorithm scan: recognise a tiny MLP's mechanism from its parameters alone.

Networks are given as flat parameter vectors (:func:`flatten_parameters`). :func:`scan_features`
turns them into features that do not change when hidden units are permuted (symmetric summaries
over units), using only the parameters and the corners of the input distribution's support (a
unit's pre-activation is linear, so its range over the data is its range over those corners).
:class:`AlgorithmScan` is a scikit-learn classifier on those features; :func:`seed_mode3_score`
is the seed's kind of hand-made score, kept as a baseline; :func:`roc_auc` evaluates either.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from numpy.typing import ArrayLike
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.ensemble import RandomForestClassifier
from sklearn.metrics import roc_auc_score, roc_curve

from physlens._validation import check_choice, check_finite, check_positive_int
from physlens.probes.mechanisms import NetworkLike, network_parameters
from physlens.systems.fma import DISTRIBUTIONS, support_vertices

UNIT_FEATURES = (
    "w_in_0", "w_in_1", "b_in", "w_out", "pre_min", "pre_max", "straddle", "out_min", "out_max", "dir_0", "dir_1",
)  # fmt: skip
"""Per-unit quantities, summarised over units by min, mean and max."""


def n_parameters(d_hidden: int, d_in: int = 2) -> int:
    """Length of a flat parameter vector: d_in·h (W_in) + h (b_in) + h (W_out) + 1 (b_out)."""
    return check_positive_int("d_in", d_in) * check_positive_int("d_hidden", d_hidden) + 2 * d_hidden + 1


def flatten_parameters(network: NetworkLike) -> np.ndarray:
    """Flat float64 parameter vectors ``[model, P]``: W_in (row-major ``[d_in, h]``), b_in, W_out, b_out."""
    params = network_parameters(network)
    n_models = params["W_in"].shape[0]
    parts = [params[name].reshape(n_models, -1) for name in ("W_in", "b_in", "W_out", "b_out")]
    return torch.cat(parts, dim=1).to("cpu", torch.float64).numpy()


def unflatten_parameters(X: np.ndarray, d_hidden: int, d_in: int = 2) -> dict[str, torch.Tensor]:
    """Inverse of :func:`flatten_parameters`; raises unless ``X`` has exactly :func:`n_parameters` columns."""
    X = np.asarray(X, dtype=np.float64)
    expected = n_parameters(d_hidden, d_in)
    if X.ndim != 2 or X.shape[1] != expected:
        raise ValueError(
            f"X must have shape [model, {expected}] (flat parameters of width-{d_hidden} networks with "
            f"{d_in} inputs: W_in, b_in, W_out, b_out), got {list(X.shape)}"
        )
    check_finite("X", X)
    t = torch.from_numpy(X)
    h, n = d_hidden, X.shape[0]
    cut = np.cumsum([0, d_in * h, h, h, 1])
    return {
        "W_in": t[:, cut[0] : cut[1]].reshape(n, d_in, h),
        "b_in": t[:, cut[1] : cut[2]],
        "W_out": t[:, cut[2] : cut[3]].reshape(n, h, 1),
        "b_out": t[:, cut[3] : cut[4]],
    }


def scan_feature_names(distribution: str = "product") -> list[str]:
    """Names of the columns :func:`scan_features` returns."""
    n_vertices = support_vertices(distribution).shape[0]
    names = [f"{stat}_{f}" for f in UNIT_FEATURES for stat in ("min", "mean", "max")]
    names += ["n_dead", "n_active", "n_straddling", "w_out_straddling", "w_out_active", "b_out"]
    names += [f"out_vertex_{i}" for i in range(n_vertices)] + ["out_centre"]
    return names


def scan_features(X: np.ndarray, d_hidden: int, *, distribution: str = "product", d_in: int = 2) -> np.ndarray:
    """Permutation-invariant features ``[model, F]`` from flat parameters ``X`` ``[model, P]``.

    Per unit: input weights, bias, output weight, the pre-activation's min and max over the
    support's corners, a straddle margin ``min(max, −min) / (max − min)`` (> 0 iff the unit
    straddles zero), the range of its output contribution and the direction of its input weights.
    These are summarised over units by min, mean and max. Whole-network features: the counts of
    dead / active / straddling units over the support, the summed output weight of straddling and
    of active units, the output bias, and the network's output at each support corner and at their
    centre. Every feature is a symmetric function of the units, so permuting hidden units leaves
    it unchanged.
    """
    check_choice("distribution", distribution, DISTRIBUTIONS)
    if d_in != 2:
        raise ValueError(f"scan_features needs networks with 2 inputs (m, a), got d_in={d_in}")
    p = unflatten_parameters(X, d_hidden, d_in)
    vertices = support_vertices(distribution)  # [vertex, 2]
    W_in, b_in, w_out, b_out = p["W_in"], p["b_in"], p["W_out"][..., 0], p["b_out"][:, 0]
    pre = torch.einsum("vd,mdh->mvh", vertices, W_in) + b_in[:, None, :]  # [model, vertex, h]
    pre_min, pre_max = pre.min(dim=1).values, pre.max(dim=1).values
    span = (pre_max - pre_min).clamp_min(1e-12)
    straddle = torch.minimum(pre_max, -pre_min) / span
    contrib = w_out[:, None, :] * pre.clamp_min(0)  # [model, vertex, h]
    norm = W_in.norm(dim=1).clamp_min(1e-12)
    unit = {
        "w_in_0": W_in[:, 0], "w_in_1": W_in[:, 1], "b_in": b_in, "w_out": w_out,
        "pre_min": pre_min, "pre_max": pre_max, "straddle": straddle,
        "out_min": contrib.min(dim=1).values, "out_max": contrib.max(dim=1).values,
        "dir_0": W_in[:, 0] / norm, "dir_1": W_in[:, 1] / norm,
    }  # fmt: skip
    columns = []
    for name in UNIT_FEATURES:
        values = unit[name]
        columns += [values.min(dim=1).values, values.mean(dim=1), values.max(dim=1).values]
    dead, active = pre_max <= 0, pre_min > 0
    straddling = ~dead & ~active
    columns += [dead.sum(1), active.sum(1), straddling.sum(1)]
    columns += [(w_out * straddling).sum(1), (w_out * active).sum(1), b_out]
    outputs = contrib.sum(dim=2) + b_out[:, None]  # [model, vertex]
    centre = vertices.mean(dim=0)
    out_centre = ((centre @ W_in + b_in).clamp_min(0) * w_out).sum(1) + b_out
    columns += list(outputs.T) + [out_centre]
    return torch.stack([c.to(torch.float64) for c in columns], dim=1).numpy()


class AlgorithmScan(ClassifierMixin, BaseEstimator):
    """Classify tiny MLPs by mechanism from their flat parameters (scikit-learn estimator).

    ``X`` is ``[model, P]`` from :func:`flatten_parameters`, ``y`` the labels (e.g. from
    :func:`~physlens.probes.mechanisms.mechanism_labels`, plus ``"untrained"`` for randomly
    initialised networks if the scan should tell those apart). Features come from
    :func:`scan_features`; the classifier is a random forest with balanced class weights, because
    the interesting mode can be rare.
    """

    def __init__(
        self,
        d_hidden: int = 2,
        distribution: str = "product",
        n_estimators: int = 300,
        min_samples_leaf: int = 1,
        random_state: int = 0,
    ) -> None:
        self.d_hidden = d_hidden
        self.distribution = distribution
        self.n_estimators = n_estimators
        self.min_samples_leaf = min_samples_leaf
        self.random_state = random_state

    def _features(self, X: np.ndarray) -> np.ndarray:
        return scan_features(X, check_positive_int("d_hidden", self.d_hidden), distribution=self.distribution)

    def fit(self, X: ArrayLike, y: ArrayLike) -> AlgorithmScan:
        """Fit the forest on the features of ``X`` and the labels ``y``; returns ``self``."""
        y = np.asarray(y)
        X = np.asarray(X, dtype=np.float64)
        if y.ndim != 1 or y.shape[0] != X.shape[0]:
            raise ValueError(f"y must be a 1-D array with one label per row of X ({X.shape[0]}), got shape {list(y.shape)}")
        features = self._features(X)
        if len(np.unique(y)) < 2:
            raise ValueError("y must hold at least two different labels to fit a classifier")
        self.forest_ = RandomForestClassifier(
            n_estimators=check_positive_int("n_estimators", self.n_estimators),
            min_samples_leaf=check_positive_int("min_samples_leaf", self.min_samples_leaf),
            class_weight="balanced_subsample",
            random_state=self.random_state,
            n_jobs=1,
        ).fit(features, y)
        self.classes_ = self.forest_.classes_
        self.n_features_in_ = X.shape[1]
        self.feature_names_ = scan_feature_names(self.distribution)
        return self

    def _check_fitted(self) -> None:
        if not hasattr(self, "forest_"):
            raise ValueError("this AlgorithmScan is not fitted yet; call fit(X, y) first")

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        """Probability of each class (columns in ``classes_`` order) for every network."""
        self._check_fitted()
        return self.forest_.predict_proba(self._features(X))

    def predict(self, X: np.ndarray) -> np.ndarray:
        """The most probable mechanism of every network."""
        self._check_fitted()
        return self.forest_.predict(self._features(X))

    def mode_score(self, X: np.ndarray, mode: str) -> np.ndarray:
        """The probability of ``mode`` for every network: the scan's one-vs-rest score."""
        self._check_fitted()
        if mode not in self.classes_:
            raise ValueError(f"mode must be one of the fitted classes {list(self.classes_)}, got {mode!r}")
        return self.predict_proba(X)[:, list(self.classes_).index(mode)]


def seed_mode3_score(X: np.ndarray, d_hidden: int = 2) -> np.ndarray:
    """The seed's style of hand-made mode-3 detector: how many of mode 3's sign conditions hold (0–4).

    One point each for: every output weight negative; output bias positive; at least one hidden
    bias positive; at least one hidden bias negative or zero (units on both sides of zero, as a
    straddling unit beside an always-active one tends to give). Signs only, no data and no
    training: a baseline for :class:`AlgorithmScan`.
    """
    p = unflatten_parameters(X, d_hidden)
    w_out, b_out, b_in = p["W_out"][..., 0], p["b_out"][:, 0], p["b_in"]
    score = (w_out < 0).all(1).long() + (b_out > 0).long() + (b_in > 0).any(1).long() + (b_in <= 0).any(1).long()
    return score.numpy().astype(np.float64)


@dataclass(frozen=True)
class RocResult:
    """One ROC curve: false/true positive rates, the area under it, and the class sizes."""

    fpr: np.ndarray
    tpr: np.ndarray
    auc: float
    n_positive: int
    n_negative: int


def roc_auc(positive_scores: ArrayLike, negative_scores: ArrayLike) -> RocResult:
    """ROC curve and AUC of a score that should be higher for positives (ties count one half)."""
    pos, neg = np.asarray(positive_scores, dtype=np.float64).ravel(), np.asarray(negative_scores, dtype=np.float64).ravel()
    if pos.size == 0 or neg.size == 0:
        raise ValueError(f"need at least one positive and one negative score, got {pos.size} and {neg.size}")
    check_finite("positive_scores", pos)
    check_finite("negative_scores", neg)
    truth = np.r_[np.ones(pos.size), np.zeros(neg.size)]
    scores = np.r_[pos, neg]
    fpr, tpr, _ = roc_curve(truth, scores)
    return RocResult(fpr=fpr, tpr=tpr, auc=float(roc_auc_score(truth, scores)), n_positive=pos.size, n_negative=neg.size)


__all__ = [
    "UNIT_FEATURES",
    "AlgorithmScan",
    "RocResult",
    "flatten_parameters",
    "n_parameters",
    "roc_auc",
    "scan_feature_names",
    "scan_features",
    "seed_mode3_score",
    "unflatten_parameters",
]
