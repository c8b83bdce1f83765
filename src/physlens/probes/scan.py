"""The algorithm scan: recognise a tiny MLP's mechanism from its parameters, and the seed's own score.

Networks are given as flat parameter vectors (:func:`flatten_parameters`). Two feature sets, both
unchanged when hidden units are permuted (symmetric summaries over units):
:func:`parameter_features` reads the parameters only; :func:`data_features` adds what each unit
does over the data distribution (the statistics the labels are computed from, which makes a scan
on them partly circular) and the network's output at the corners of the data's support.
:class:`AlgorithmScan` is a scikit-learn classifier on either set; :func:`corner_rule_labels` is the
no-learning baseline that applies the sign-pattern rule at the support's corners.
:func:`seed_mode3_score` is the seed's hand-made mode-3 score exactly as the seed wrote it;
:func:`mode3_sign_count` is an older sign count of ours; :func:`roc_auc` evaluates any of them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from numpy.typing import ArrayLike
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.ensemble import RandomForestClassifier
from sklearn.metrics import roc_auc_score, roc_curve
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted

from physlens._estimators import check_target_given, validate_table, warn_column_target
from physlens._validation import check_choice, check_finite, check_nonnegative_int, check_positive_int
from physlens.stats import Interval, auc_interval
from physlens.probes.mechanisms import (
    NetworkLike,
    labels_from_states,
    network_parameters,
    sign_pattern_states,
    unit_statistics,
)
from physlens.systems.fma import DISTRIBUTIONS, support_vertices

UNIT_PARAMETER_FEATURES = ("w_in_0", "w_in_1", "b_in", "w_out", "w_norm", "crease_offset", "crease_slope", "dir_cos2", "dir_sin2")
"""Per-unit quantities of :func:`parameter_features`, each summarised over units by min, mean and max."""

UNIT_DATA_FEATURES = ("firing", "removal", "linearisation", "signed_removal", "signed_linearisation")
"""Per-unit statistics over the distribution that :func:`data_features` adds (summarised the same way)."""

FEATURE_SETS = ("parameters", "data")
"""``"parameters"``: :func:`parameter_features`; ``"data"``: :func:`data_features`."""


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


def _summaries(unit: dict[str, torch.Tensor], names: tuple[str, ...]) -> list[torch.Tensor]:
    columns = []
    for name in names:
        values = unit[name]
        columns += [values.min(dim=1).values, values.mean(dim=1), values.max(dim=1).values]
    return columns


def _parameter_columns(p: dict[str, torch.Tensor]) -> list[torch.Tensor]:
    W_in, b_in, w_out, b_out = p["W_in"], p["b_in"], p["W_out"][..., 0], p["b_out"][:, 0]
    norm = W_in.norm(dim=1).clamp_min(1e-12)
    angle = torch.atan2(W_in[:, 1], W_in[:, 0])
    unit = {
        "w_in_0": W_in[:, 0], "w_in_1": W_in[:, 1], "b_in": b_in, "w_out": w_out, "w_norm": norm,
        "crease_offset": -b_in / norm, "crease_slope": w_out * norm,
        # the zero line is the same for W and −W, so its direction is read as a doubled angle
        "dir_cos2": torch.cos(2 * angle), "dir_sin2": torch.sin(2 * angle),
    }  # fmt: skip
    return _summaries(unit, UNIT_PARAMETER_FEATURES) + [b_out]


def parameter_features(X: np.ndarray, d_hidden: int, *, d_in: int = 2) -> np.ndarray:
    """Permutation-invariant features ``[model, F]`` from the parameters alone, no data and no distribution.

    Per unit: input weights, bias, output weight, the norm of the input weights, the offset of the
    unit's zero line from the origin (−b/‖w‖), its crease strength (w_out·‖w‖) and the direction of
    the zero line (as a doubled angle, so w and −w agree). Each is summarised over units by min,
    mean and max; the output bias is appended. Permuting hidden units leaves every column unchanged.
    """
    if d_in != 2:
        raise ValueError(f"parameter_features needs networks with 2 inputs (m, a), got d_in={d_in}")
    columns = _parameter_columns(unflatten_parameters(X, d_hidden, d_in))
    return torch.stack([c.to(torch.float64) for c in columns], dim=1).numpy()


def data_features(X: np.ndarray, d_hidden: int, *, distribution: str = "product", d_in: int = 2) -> np.ndarray:
    """:func:`parameter_features` plus what every unit does over ``distribution`` and the network's
    output at the corners of the data's support.

    Per unit (summarised by min, mean and max): the firing fraction and the output change from
    removing or linearising the unit (:func:`~physlens.probes.mechanisms.unit_statistics`), and
    those changes signed by the output weight. Then the number of units firing at every corner,
    at none and at some, the min, mean and max of the output over the corners, and the output at
    their centre. The columns mean the same on every distribution, so a scan fitted on one can be
    applied to networks trained on another. The labels are a fixed
    function of the unit statistics, so a scan on these features partly re-learns the labelling
    rule: compare it with :func:`parameter_features` and with :func:`corner_rule_labels`.
    """
    check_choice("distribution", distribution, DISTRIBUTIONS)
    if d_in != 2:
        raise ValueError(f"data_features needs networks with 2 inputs (m, a), got d_in={d_in}")
    p = unflatten_parameters(X, d_hidden, d_in)
    stats = unit_statistics(p, distribution)
    sign = torch.from_numpy(np.sign(stats.output_weight))
    unit = {
        "firing": torch.from_numpy(stats.firing_fraction),
        "removal": torch.from_numpy(stats.removal_change),
        "linearisation": torch.from_numpy(stats.linearisation_change),
        "signed_removal": sign * torch.from_numpy(stats.removal_change),
        "signed_linearisation": sign * torch.from_numpy(stats.linearisation_change),
    }
    vertices = support_vertices(distribution)  # [vertex, 2]
    W_in, b_in, w_out, b_out = p["W_in"], p["b_in"], p["W_out"][..., 0], p["b_out"][:, 0]
    pre = torch.einsum("vd,mdh->mvh", vertices, W_in) + b_in[:, None, :]  # [model, vertex, h]
    at_all, at_none = (pre > 0).all(1), (pre <= 0).all(1)
    corners = [at_none.sum(1), at_all.sum(1), (~at_all & ~at_none).sum(1)]
    outputs = (w_out[:, None, :] * pre.clamp_min(0)).sum(2) + b_out[:, None]  # [model, vertex]
    centre = vertices.mean(dim=0)
    out_centre = ((centre @ W_in + b_in).clamp_min(0) * w_out).sum(1) + b_out
    # summaries over corners, so the features mean the same on any distribution's support
    corner_outputs = [outputs.min(dim=1).values, outputs.mean(dim=1), outputs.max(dim=1).values]
    columns = _parameter_columns(p) + _summaries(unit, UNIT_DATA_FEATURES) + corners + corner_outputs + [out_centre]
    return torch.stack([c.to(torch.float64) for c in columns], dim=1).numpy()


def scan_feature_names(features: str = "parameters") -> list[str]:
    """Names of the columns :func:`parameter_features` (``"parameters"``) or :func:`data_features` (``"data"``) returns."""
    check_choice("features", features, FEATURE_SETS)
    stats = ("min", "mean", "max")
    names = [f"{stat}_{f}" for f in UNIT_PARAMETER_FEATURES for stat in stats] + ["b_out"]
    if features == "data":
        names += [f"{stat}_{f}" for f in UNIT_DATA_FEATURES for stat in stats]
        names += ["n_off_at_corners", "n_on_at_corners", "n_crossing_corners"]
        names += ["min_corner_output", "mean_corner_output", "max_corner_output", "centre_output"]
    return names


def scan_features(X: np.ndarray, d_hidden: int, *, features: str = "parameters", distribution: str = "product") -> np.ndarray:
    """The feature set ``features`` (:data:`FEATURE_SETS`) of flat parameters ``X``."""
    check_choice("features", features, FEATURE_SETS)
    if features == "parameters":
        return parameter_features(X, d_hidden)
    return data_features(X, d_hidden, distribution=distribution)


def corner_rule_labels(X: np.ndarray, d_hidden: int = 2, *, distribution: str = "product") -> np.ndarray:
    """The no-learning baseline: width-2 labels from the sign pattern at the support's corners.

    A unit is dead if its pre-activation is ≤ 0 at every corner of the support, active if > 0 at
    every corner, straddling otherwise (:func:`~physlens.probes.mechanisms.sign_pattern_states`),
    and the mode follows as in :func:`~physlens.probes.mechanisms.labels_from_states`. This is
    what the corner features hand a learned scan for free.
    """
    check_choice("distribution", distribution, DISTRIBUTIONS)
    p = unflatten_parameters(X, d_hidden)
    states = sign_pattern_states(p, support_vertices(distribution))
    return labels_from_states(states, p["W_out"][..., 0])


class AlgorithmScan(ClassifierMixin, BaseEstimator):
    """Classify tiny MLPs by mechanism from their flat parameters (scikit-learn estimator).

    ``X`` is ``[model, P]`` from :func:`flatten_parameters`, ``y`` the labels (e.g. from
    :func:`~physlens.probes.mechanisms.mechanism_labels`, plus ``"untrained"`` for randomly
    initialised networks if the scan should tell those apart). ``features`` picks
    :func:`parameter_features` or :func:`data_features` (which needs ``distribution``); the
    classifier is a random forest with balanced class weights, because some mechanisms are rare.
    """

    def __init__(
        self,
        d_hidden: int = 2,
        *,
        features: str = "parameters",
        distribution: str = "product",
        n_estimators: int = 300,
        min_samples_leaf: int = 1,
        random_state: int = 0,
    ) -> None:
        self.d_hidden = d_hidden
        self.features = features
        self.distribution = distribution
        self.n_estimators = n_estimators
        self.min_samples_leaf = min_samples_leaf
        self.random_state = random_state

    def _features(self, X: np.ndarray, distribution: str | None = None) -> np.ndarray:
        return scan_features(
            X, check_positive_int("d_hidden", self.d_hidden), features=self.features, distribution=distribution or self.distribution
        )

    def fit(self, X: ArrayLike, y: ArrayLike) -> AlgorithmScan:
        """Fit the forest on the features of ``X`` and the labels ``y``; returns ``self``."""
        check_target_given(self, y)
        X = validate_table(self, X, reset=True)
        warn_column_target(y)
        y = np.asarray(y.detach().cpu() if isinstance(y, torch.Tensor) else y)
        if y.ndim == 2 and y.shape[1] == 1:
            y = y[:, 0]
        if y.ndim != 1 or y.shape[0] != X.shape[0]:
            raise ValueError(f"y must be a 1-D array with one label per row of X ({X.shape[0]}), got shape {list(y.shape)}")
        check_classification_targets(y)
        if len(np.unique(y)) < 2:
            raise ValueError("y must hold at least two different labels to fit a classifier, got one class")
        features = self._features(X)
        self.forest_ = RandomForestClassifier(
            n_estimators=check_positive_int("n_estimators", self.n_estimators),
            min_samples_leaf=check_positive_int("min_samples_leaf", self.min_samples_leaf),
            class_weight="balanced_subsample",
            random_state=self.random_state,
            n_jobs=1,
        ).fit(features, y)
        self.classes_ = self.forest_.classes_
        self.feature_names_ = scan_feature_names(self.features)
        return self

    def predict_proba(self, X: np.ndarray, *, distribution: str | None = None) -> np.ndarray:
        """Probability of each class (columns in ``classes_`` order) for every network.

        ``distribution`` overrides the one data-aware features are computed on, for networks
        trained on other data than the scan's (it does not matter for parameter-only features).
        """
        check_is_fitted(self, "forest_")
        X = validate_table(self, X, reset=False)
        return self.forest_.predict_proba(self._features(X, distribution))

    def predict(self, X: np.ndarray, *, distribution: str | None = None, among: Sequence[str] | None = None) -> np.ndarray:
        """The most probable mechanism of every network (see :meth:`predict_proba` for ``distribution``).

        ``among`` restricts the answer to some of the fitted classes, e.g. every mechanism but
        ``"untrained"`` when the networks are known to be trained.
        """
        check_is_fitted(self, "forest_")
        X = validate_table(self, X, reset=False)
        if among is None:
            return self.forest_.predict(self._features(X, distribution))
        among = list(among)
        unknown = sorted(set(among) - set(self.classes_))
        if not among or unknown:
            raise ValueError(f"among must name fitted classes {list(self.classes_)}, got unknown {unknown or among}")
        columns = [list(self.classes_).index(c) for c in among]
        proba = self.predict_proba(X, distribution=distribution)[:, columns]
        return np.asarray(among)[np.argmax(proba, axis=1)]

    def mode_score(self, X: np.ndarray, mode: str, *, distribution: str | None = None) -> np.ndarray:
        """The probability of ``mode`` for every network: the scan's one-vs-rest score."""
        check_is_fitted(self, "forest_")
        if mode not in self.classes_:
            raise ValueError(f"mode must be one of the fitted classes {list(self.classes_)}, got {mode!r}")
        return self.predict_proba(X, distribution=distribution)[:, list(self.classes_).index(mode)]


SEED_SCORE_WEIGHTS = (4, 2, 2, 1)
"""The seed weights its four mode-3 terms by the parameter counts of W_in, b_in, W_out and b_out (2h, h, h, 1 at h = 2)."""


def seed_mode3_score(X: np.ndarray, d_hidden: int = 2) -> np.ndarray:
    """The seed's mode-3 score (its experiment 10, ``mode_3_score``), exactly as the seed computes it.

    With the seed's ``W`` = W_inᵀ (``[h, 2]``), v = W·(1, 1) normalised to unit length, and
    θ = angle(v, (1, 1)) / (3π/4), the score is the mean of four terms weighted by the parameter
    counts 2h, h, h, 1:

    - sigmoid(1 − |1 − θ|), largest when the input layer turns (1, 1) by 3π/4;
    - the cosine between softmax(−v) and softmax(b_in) (note: of the *normalised* v, as in the seed);
    - the mean of sigmoid(−W_out);
    - sigmoid(b_out).

    Defined for width 2 only (θ compares an h-vector with (1, 1)). Computed in float64; the cosine
    inside the arccos is clipped to [−1, 1], where the seed's float32 arccos could return NaN by
    round-off.
    """
    if d_hidden != 2:
        raise ValueError(f"the seed's score is defined for width-2 networks only, got d_hidden={d_hidden}")
    p = unflatten_parameters(X, 2)
    v = p["W_in"].sum(dim=1)  # W·(1, 1) for each network: [model, h]
    v = v / v.norm(dim=1, keepdim=True)
    cosine = (v.sum(dim=1) / math.sqrt(2.0)).clamp(-1.0, 1.0)
    theta = torch.arccos(cosine) / (3 * math.pi / 4)
    angle_term = torch.sigmoid(1 - (1 - theta).abs())
    o1, o2 = torch.softmax(-v, dim=1), torch.softmax(p["b_in"], dim=1)
    bias_term = ((o1 / o1.norm(dim=1, keepdim=True)) * (o2 / o2.norm(dim=1, keepdim=True))).sum(dim=1)
    out_weight_term = torch.sigmoid(-p["W_out"][..., 0]).mean(dim=1)
    out_bias_term = torch.sigmoid(p["b_out"][:, 0])
    weights = SEED_SCORE_WEIGHTS
    terms = (angle_term, bias_term, out_weight_term, out_bias_term)
    return (sum(w * t for w, t in zip(weights, terms)) / sum(weights)).numpy()


def mode3_sign_count(X: np.ndarray, d_hidden: int = 2) -> np.ndarray:
    """An earlier sign count of ours (not the seed's score): how many of four sign conditions hold (0–4).

    One point each for: every output weight negative; output bias positive; at least one hidden
    bias positive; at least one hidden bias negative or zero.
    """
    p = unflatten_parameters(X, d_hidden)
    w_out, b_out, b_in = p["W_out"][..., 0], p["b_out"][:, 0], p["b_in"]
    score = (w_out < 0).all(1).long() + (b_out > 0).long() + (b_in > 0).any(1).long() + (b_in <= 0).any(1).long()
    return score.numpy().astype(np.float64)


@dataclass(frozen=True)
class RocResult:
    """One ROC curve: false/true positive rates, the area under it with its interval, and the class sizes."""

    fpr: np.ndarray
    tpr: np.ndarray
    auc: float
    n_positive: int
    n_negative: int
    interval: Interval | None = None  # bootstrap interval of the AUC (None when not computed)


def roc_auc(
    positive_scores: ArrayLike,
    negative_scores: ArrayLike,
    *,
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> RocResult:
    """ROC curve and AUC of a score that should be higher for positives (ties count one half).

    The AUC comes with a bootstrap interval that resamples positives and negatives independently
    (:func:`~physlens.stats.auc_interval`); ``n_resamples=0`` skips it.
    """
    pos, neg = np.asarray(positive_scores, dtype=np.float64).ravel(), np.asarray(negative_scores, dtype=np.float64).ravel()
    if pos.size == 0 or neg.size == 0:
        raise ValueError(f"need at least one positive and one negative score, got {pos.size} and {neg.size}")
    check_finite("positive_scores", pos)
    check_finite("negative_scores", neg)
    truth = np.r_[np.ones(pos.size), np.zeros(neg.size)]
    scores = np.r_[pos, neg]
    fpr, tpr, _ = roc_curve(truth, scores)
    n_resamples = check_nonnegative_int("n_resamples", n_resamples)
    interval = auc_interval(pos, neg, confidence=confidence, n_resamples=n_resamples, seed=seed) if n_resamples else None
    return RocResult(
        fpr=fpr, tpr=tpr, auc=float(roc_auc_score(truth, scores)), n_positive=pos.size, n_negative=neg.size, interval=interval
    )


__all__ = [
    "FEATURE_SETS",
    "SEED_SCORE_WEIGHTS",
    "UNIT_DATA_FEATURES",
    "UNIT_PARAMETER_FEATURES",
    "AlgorithmScan",
    "RocResult",
    "corner_rule_labels",
    "data_features",
    "flatten_parameters",
    "mode3_sign_count",
    "n_parameters",
    "parameter_features",
    "roc_auc",
    "scan_feature_names",
    "scan_features",
    "seed_mode3_score",
    "unflatten_parameters",
]
