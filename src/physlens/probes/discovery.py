"""Unsupervised mechanism discovery: group networks by the function they compute, without labels.

A network is described by a *fingerprint* of its input–output function on the data distribution
(:func:`function_fingerprints`): its second differences along four directions at probe points
drawn from the distribution (where and how the function bends: a ReLU network's creases, concave
or convex) and its mean gradient (which tells a constant from a plane). The fingerprint depends on
the function only, so it is unchanged by permuting hidden units or by any other reparametrisation,
and it works for any depth and width. :class:`MechanismDiscovery` clusters fingerprints with a
Gaussian mixture whose number of groups is chosen by BIC, and :func:`compare_groups` sets the
groups against labels made by hand.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float
from numpy.typing import ArrayLike
from sklearn.base import BaseEstimator, ClusterMixin
from sklearn.decomposition import PCA
from sklearn.metrics import adjusted_rand_score
from sklearn.mixture import GaussianMixture
from sklearn.utils.validation import check_is_fitted
from torch import Tensor

from physlens._estimators import validate_table
from physlens._validation import check_choice, check_finite, check_nonnegative_int, check_positive_int
from physlens.models.mlp import DeepMLPEnsemble, MLPEnsemble, TinyMLP
from physlens.probes.mechanisms import network_parameters
from physlens.systems.fma import DISTRIBUTIONS, in_support, sample_fma, support_vertices

FINGERPRINT_DIRECTIONS = ((1.0, 0.0), (0.0, 1.0), (2**-0.5, 2**-0.5), (2**-0.5, -(2**-0.5)))
"""Directions of the second differences: along m, along a, along the diagonal and across it."""

FLAT_BEND = 0.05
"""Default RMS second difference at or below which a function counts as not bending on the data
(m·a itself bends by about 0.5 on this scale; a crease the unit labels call negligible by well under 0.05)."""


Layers = list[tuple[Tensor, Tensor]]


def network_layers(network: TinyMLP | MLPEnsemble | DeepMLPEnsemble | Mapping[str, Any] | Sequence) -> Layers:
    """Every layer's ``(W [model, fan_in, fan_out], b [model, fan_out])`` in float64 on the CPU.

    Accepts the one-hidden-layer networks of :func:`~physlens.probes.mechanisms.network_parameters`,
    a :class:`~physlens.models.mlp.DeepMLPEnsemble`, or such a list of layers already (every layer
    but the last is followed by a ReLU).
    """
    if isinstance(network, DeepMLPEnsemble):
        layers = network.layer_parameters()
    elif isinstance(network, (list, tuple)):
        layers = list(network)
    else:
        params = network_parameters(network)
        layers = [(params["W_in"], params["b_in"]), (params["W_out"], params["b_out"])]
    checked = []
    for index, pair in enumerate(layers):
        if not isinstance(pair, (list, tuple)) or len(pair) != 2:
            raise ValueError(f"layer {index} must be a pair (W, b), got {type(pair).__name__}")
        W, b = (torch.as_tensor(t).detach().to("cpu", torch.float64) for t in pair)
        if W.ndim != 3 or b.shape != (W.shape[0], W.shape[2]):
            raise ValueError(f"layer {index} must have W [model, fan_in, fan_out] and b [model, fan_out], got {list(W.shape)} and {list(b.shape)}")
        if checked and W.shape[:2] != (checked[-1][0].shape[0], checked[-1][0].shape[2]):
            raise ValueError(f"layer {index} takes {W.shape[1]} inputs but layer {index - 1} gives {checked[-1][0].shape[2]}")
        check_finite(f"layer {index}", W)
        checked.append((W, b))
    if not checked or checked[-1][0].shape[2] != 1:
        raise ValueError("network must end in a layer with one output")
    return checked


def evaluate_layers(layers: Layers, points: Float[Tensor, "n d_in"]) -> Float[Tensor, "model n"]:
    """Every network's output at shared ``points`` (ReLU after every layer but the last)."""
    hidden = points.to(torch.float64).unsqueeze(0).expand(layers[0][0].shape[0], -1, -1)
    for index, (W, b) in enumerate(layers):
        hidden = torch.baddbmm(b.unsqueeze(1), hidden, W)
        if index < len(layers) - 1:
            hidden = hidden.clamp_min(0)
    return hidden[..., 0]


def function_fingerprints(
    network: TinyMLP | MLPEnsemble | DeepMLPEnsemble | Mapping[str, Any] | Sequence | Callable[[Tensor], Tensor],
    distribution: str = "product",
    *,
    n_points: int = 256,
    step: float = 0.125,
    seed: int = 0,
) -> np.ndarray:
    """A fingerprint ``[model, 4·n_points + 2]`` of each network's function on ``distribution``.

    ``n_points`` probe points x are drawn from the distribution (with ``seed``). For each of the
    four :data:`FINGERPRINT_DIRECTIONS` u, the second difference (f(x + hu) − 2f(x) + f(x − hu)) / h²
    measures the bending of f across a window of half-width h = ``step`` × the support's extent:
    zero where f is flat or planar, negative across a concave crease, positive across a convex one.
    A window that leaves the data's support (:func:`~physlens.systems.fma.in_support`) counts as
    zero, so a crease just outside the data, which the network never uses, leaves no trace. The
    entries are scaled so that the Euclidean distance between fingerprints is their RMS
    difference, and followed by the mean gradient (central differences along m and a).
    ``network`` may also be any callable that maps points ``[n, 2]`` (float64) to outputs ``[model, n]``.
    """
    check_choice("distribution", distribution, DISTRIBUTIONS)
    n_points, seed = check_positive_int("n_points", n_points), check_nonnegative_int("seed", seed)
    if not isinstance(step, (int, float)) or not 0 < step <= 1:
        raise ValueError(f"step must be a number in (0, 1] (a fraction of the support's extent), got {step!r}")
    if callable(network) and not isinstance(network, torch.nn.Module):
        function = network
    else:
        layers = network_layers(network)
        function = lambda points: evaluate_layers(layers, points)  # noqa: E731
    h = float(step) * float(support_vertices(distribution).max())
    points = sample_fma(n_points, distribution, seed=seed, dtype="float64")[0]
    centre = function(points)
    if centre.ndim != 2 or centre.shape[1] != n_points:
        raise ValueError(f"the network function must return [model, {n_points}] outputs, got {list(centre.shape)}")
    bends, slopes = [], []
    for u in FINGERPRINT_DIRECTIONS:
        shift = h * torch.tensor(u, dtype=torch.float64)
        ahead, behind = function(points + shift), function(points - shift)
        inside = (in_support(points + shift, distribution) & in_support(points - shift, distribution)).to(torch.float64)
        bends.append(inside * (ahead - 2 * centre + behind) / h**2)
        slopes.append((ahead - behind).mean(1) / (2 * h))
    bend = torch.stack(bends, dim=2).reshape(centre.shape[0], -1) / np.sqrt(4 * n_points)
    gradient = torch.stack(slopes[:2], dim=1)
    fingerprint = torch.cat([bend, gradient], dim=1).numpy()
    check_finite("fingerprints", fingerprint)
    return fingerprint


class MechanismDiscovery(ClusterMixin, BaseEstimator):
    """Group networks by their function fingerprints (:func:`function_fingerprints`), without labels.

    Functions that do not bend on the data (RMS second difference at most ``flat``, see
    :func:`summarise_fingerprints`) are constants or planes; they are grouped by their slope
    (constant where the mean gradient's norm is at most ``flat``), because a mixture cannot model a
    cluster of identical fingerprints next to a spread-out one. The others are projected on their
    first ``n_components`` principal components (optionally scaled to unit variance with
    ``whiten``) and a Gaussian mixture (full covariances, ``n_init`` restarts) is fitted for every
    number of groups from 1 to ``max_groups``; the number with the lowest BIC wins. Groups are
    numbered by size, largest first.

    Fitted attributes: ``labels_`` (group of every network), ``n_groups_``, ``bic_`` (BIC per
    number of mixture components), ``pca_``, ``mixture_`` (``None`` when fewer than two networks bend).
    """

    def __init__(
        self,
        n_components: int = 12,
        *,
        max_groups: int = 12,
        n_init: int = 3,
        flat: float = FLAT_BEND,
        whiten: bool = False,
        random_state: int = 0,
    ) -> None:
        self.n_components = n_components
        self.max_groups = max_groups
        self.n_init = n_init
        self.flat = flat
        self.whiten = whiten
        self.random_state = random_state

    def _raw_groups(self, X: np.ndarray) -> np.ndarray:
        """Group codes before renumbering: 0 constant, 1 plane, 2 + k mixture component k."""
        summary = summarise_fingerprints(X, flat=self.flat)
        straight = summary.bend <= self.flat
        raw = np.where(summary.slope <= self.flat, 0, 1)
        if (~straight).any():
            if self.mixture_ is None:
                raise ValueError("the fitted networks all lie flat or planar, so bending networks cannot be grouped")
            raw[~straight] = 2 + self.mixture_.predict(self.pca_.transform(X[~straight]))
        return raw

    def fit(self, X: ArrayLike, y: None = None) -> MechanismDiscovery:
        """Choose the number of groups by BIC and fit the mixture to fingerprints ``X`` ``[model, F]``."""
        X = validate_table(self, X, reset=True)
        if X.shape[0] < 2:
            raise ValueError(f"X must be fingerprints [model, F] of at least 2 networks, got shape {list(X.shape)} (n_samples={X.shape[0]})")
        if X.shape[1] < 3 or (X.shape[1] - 2) % 4:
            raise ValueError(f"X must be fingerprints [model, 4·n_points + 2] from function_fingerprints, got n_features={X.shape[1]} columns")
        if not isinstance(self.flat, (int, float)) or self.flat < 0:
            raise ValueError(f"flat must be a number >= 0, got {self.flat!r}")
        bending = X[summarise_fingerprints(X, flat=self.flat).bend > self.flat]
        self.bic_, self.pca_, self.mixture_ = {}, None, None
        if len(bending) >= 2:
            max_groups = min(check_positive_int("max_groups", self.max_groups), len(bending))
            components = min(check_positive_int("n_components", self.n_components), len(bending) - 1, X.shape[1])
            self.pca_ = PCA(n_components=max(components, 1), whiten=bool(self.whiten), random_state=self.random_state).fit(bending)
            Z = self.pca_.transform(bending)
            mixtures = {}
            for k in range(1, max_groups + 1):
                mixture = GaussianMixture(
                    k, covariance_type="full", n_init=check_positive_int("n_init", self.n_init), random_state=self.random_state, reg_covar=1e-6
                ).fit(Z)
                self.bic_[k], mixtures[k] = float(mixture.bic(Z)), mixture
            self.mixture_ = mixtures[min(self.bic_, key=self.bic_.get)]
        if len(bending) == 1:  # a lone bending network is a group of its own; no mixture to fit
            summary = summarise_fingerprints(X, flat=self.flat)
            raw = np.where(summary.slope <= self.flat, 0, 1)
            raw[summary.bend > self.flat] = 2
        else:
            raw = self._raw_groups(X)
        codes = np.unique(raw)
        sizes = np.array([(raw == c).sum() for c in codes])
        self.codes_ = codes[np.argsort(-sizes, kind="stable")]  # raw codes by size, largest first
        self.n_groups_ = len(codes)
        self.labels_ = self._renumber(raw)
        return self

    def _renumber(self, raw: np.ndarray) -> np.ndarray:
        lookup = {int(code): rank for rank, code in enumerate(self.codes_)}
        return np.array([lookup.get(int(code), -1) for code in raw])

    def predict(self, X: ArrayLike) -> np.ndarray:
        """The group of each network with fingerprints ``X`` (−1 for a kind of function, constant or
        plane, that no fitted network had)."""
        check_is_fitted(self, "codes_")
        X = validate_table(self, X, reset=False)
        return self._renumber(self._raw_groups(X))


@dataclass(frozen=True)
class FingerprintSummary:
    """How each network bends, read off its fingerprint: ``[model]`` arrays."""

    bend: np.ndarray  # RMS of the second differences: 0 for a plane or a constant
    concave_share: np.ndarray  # share of Σ|second difference| that is negative (ridges); NaN where f does not bend
    slope: np.ndarray  # norm of the mean gradient: 0 for a constant


def summarise_fingerprints(fingerprints: ArrayLike, *, flat: float = FLAT_BEND) -> FingerprintSummary:
    """Bend, concave share and slope of every fingerprint from :func:`function_fingerprints`.

    A function whose bend (RMS second difference) is at most ``flat`` counts as not bending: its
    concave share is NaN rather than the sign of round-off or of a crease outside the data.
    """
    X = np.asarray(fingerprints, dtype=np.float64)
    if X.ndim != 2 or X.shape[1] < 3 or (X.shape[1] - 2) % 4:
        raise ValueError(f"fingerprints must have shape [model, 4·n_points + 2], got {list(X.shape)}")
    bends, gradient = X[:, :-2], X[:, -2:]
    bend = np.sqrt((bends**2).sum(1))
    total = np.abs(bends).sum(1)
    straight = (bend <= flat) | (total == 0)
    concave = np.where(straight, np.nan, np.clip(-bends, 0, None).sum(1) / np.where(straight, 1.0, total))
    return FingerprintSummary(bend=bend, concave_share=concave, slope=np.linalg.norm(gradient, axis=1))


@dataclass(frozen=True)
class GroupComparison:
    """Discovered groups against labels: the contingency table, the adjusted Rand index, and for every
    label the share of its networks in its most common group (recall) and for every group its
    most common label and that label's share (purity)."""

    table: pd.DataFrame  # rows: groups, columns: labels, cells: networks
    adjusted_rand: float
    recall: dict[str, float]
    majority: dict[int, tuple[str, float]]


def compare_groups(groups: ArrayLike, labels: ArrayLike) -> GroupComparison:
    """Contingency table, adjusted Rand index, per-label recall and per-group majority label."""
    groups, labels = np.asarray(groups), np.asarray(labels).astype(str)
    if groups.shape != labels.shape or groups.ndim != 1:
        raise ValueError(f"groups and labels must be 1-D with one entry per network, got {groups.shape} and {labels.shape}")
    table = pd.crosstab(pd.Series(groups, name="group"), pd.Series(labels, name="label"))
    recall = {str(label): float(table[label].max() / table[label].sum()) for label in table.columns}
    majority = {int(group): (str(row.idxmax()), float(row.max() / row.sum())) for group, row in table.iterrows()}
    return GroupComparison(table=table, adjusted_rand=float(adjusted_rand_score(labels, groups)), recall=recall, majority=majority)


__all__ = [
    "FINGERPRINT_DIRECTIONS",
    "FLAT_BEND",
    "FingerprintSummary",
    "GroupComparison",
    "MechanismDiscovery",
    "compare_groups",
    "evaluate_layers",
    "function_fingerprints",
    "network_layers",
    "summarise_fingerprints",
]
