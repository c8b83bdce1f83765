"""Analyses over a population of labelled F = m·a networks: how stable their labels are, where their
creases run, when they switch mechanism, how well groups and scans agree with the labels.

Each function takes parameters (``W_in``, ``b_in``, ``W_out``, ``b_out`` stacked over networks) or
label arrays and returns numbers; the F = m·a study reports them.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from torch import Tensor

from physlens._validation import check_nonnegative_int, check_positive_int
from physlens.probes.discovery import evaluate_layers, network_layers
from physlens.probes.mechanisms import (
    DEFAULT_TOLERANCE,
    STRADDLING,
    crease_angles,
    crease_labels,
    labels_from_states,
    region_mse,
    relabel_on_samples,
    sign_pattern_states,
    unit_statistics,
)
from physlens.stats import Interval, mean_interval, paired_interval
from physlens.systems.fma import sample_fma


def crease_orientation(params: Mapping[str, Tensor], states: Tensor) -> np.ndarray:
    """For networks with exactly one crease: "along" (within 30° of the diagonal m = a), "across"
    (more than 60° from it) or "oblique"; "" otherwise."""
    angles = crease_angles(params)
    crease = states.numpy() == STRADDLING
    out = np.full(states.shape[0], "", dtype=object)
    for i in np.flatnonzero(crease.sum(1) == 1):
        angle = angles[i, np.argmax(crease[i])]
        out[i] = "along" if angle < 30 else ("across" if angle > 60 else "oblique")
    return out.astype(str)


def refined_classes(params: Mapping[str, Tensor], states: Tensor, stats: Any) -> np.ndarray:
    """Function classes (:func:`~physlens.probes.crease_labels`) with a single crease split by its
    orientation to the diagonal (:func:`crease_orientation`)."""
    classes = crease_labels(states, stats)
    orientation = crease_orientation(params, states)
    return np.array([f"{c} {o}" if o else c for c, o in zip(classes, orientation)])


def label_switches(snapshot_labels: np.ndarray, epochs: Sequence[int]) -> dict[str, Any]:
    """How many networks change label after training starts, and at which snapshot they last do.

    ``snapshot_labels`` is ``[snapshot, model]`` at ``epochs`` (the first, epoch 0, is skipped: a
    random initialisation has labels too, but no mechanism yet). Returns ``n_switching``,
    ``last_switch`` (per network, the epoch of its last change, −1 for none), ``transitions``
    (a Counter of (first trained label, final label)) and ``per_epoch`` (changes at each snapshot).
    """
    snapshot_labels = np.asarray(snapshot_labels)
    if snapshot_labels.ndim != 2 or snapshot_labels.shape[0] != len(epochs) or len(epochs) < 3:
        raise ValueError(f"snapshot_labels must be [snapshot, model] with one snapshot per epoch (at least 3), got "
                         f"{list(snapshot_labels.shape)} for {len(epochs)} epochs")
    trained = snapshot_labels[1:]
    changes = trained[1:] != trained[:-1]  # [snapshot - 2, model]
    last = np.full(trained.shape[1], -1)
    for k in range(changes.shape[0]):
        last[changes[k]] = epochs[k + 2]
    transitions = Counter((a, b) for a, b in zip(trained[0], trained[-1]) if a != b)
    return {
        "n_switching": int(changes.any(axis=0).sum()), "last_switch": last, "transitions": transitions,
        "per_epoch": [int(changes[k].sum()) for k in range(changes.shape[0])],
    }  # fmt: skip


def _adjusted_rand(labels_true: np.ndarray, labels_pred: np.ndarray) -> float:
    """scikit-learn's ``adjusted_rand_score`` of two labellings, the same number, without its input checks.

    The pair counts come from a contingency table built with one ``bincount``, in integers as
    scikit-learn counts them, and the index is the same expression of Python integers, so the result
    is equal to the last bit. The bootstrap and permutation control of :func:`ari_interval` evaluate
    it hundreds of times, where the checks cost more than the index.
    """
    true = np.unique(labels_true, return_inverse=True)[1].reshape(-1)
    pred = np.unique(labels_pred, return_inverse=True)[1].reshape(-1)
    n_pred = int(pred.max()) + 1 if pred.size else 1
    n_true = int(true.max()) + 1 if true.size else 1
    table = np.bincount(true * n_pred + pred, minlength=n_true * n_pred).reshape(n_true, n_pred).astype(np.int64)
    n = np.int64(true.size)
    sum_squares = (table**2).sum()
    rows, columns = table.sum(axis=1), table.sum(axis=0)
    fp = int((columns**2).sum() - sum_squares)  # pairs together in the prediction only
    fn = int((rows**2).sum() - sum_squares)  # pairs together in the truth only
    tp, tn = int(sum_squares - n), int(n**2 - fp - fn - sum_squares)
    if fn == 0 and fp == 0:
        return 1.0
    return 2.0 * (tp * tn - fn * fp) / ((tp + fn) * (fn + tn) + (tp + fp) * (fp + tn))


def ari_interval(groups: np.ndarray, labels: np.ndarray, seed: int, n_resamples: int) -> tuple[Interval, float]:
    """Adjusted Rand index with a bootstrap interval over networks, and its permutation control (the
    97.5th percentile of the index for groups shuffled across networks, 200 shuffles)."""
    codes = np.unique(labels, return_inverse=True)[1]
    interval = paired_interval(_adjusted_rand, codes, groups, n_resamples=min(n_resamples, 300), seed=seed)
    rng = np.random.default_rng(seed)
    control = [_adjusted_rand(codes, rng.permutation(groups)) for _ in range(200)]
    return interval, float(np.quantile(control, 0.975))


def discovery_ari_grid(
    fingerprints: np.ndarray,
    labellings: Mapping[str, np.ndarray],
    *,
    n_subsets: int = 5,
    random_states: Sequence[int] = (0, 1, 2),
    max_groups: int = 12,
    n_init: int = 3,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """Adjusted Rand index of the discovered groups against each labelling, over disjoint subsets of
    the networks (independent network seeds) × clustering states: ``{name: [subset, state]}``.

    The networks are split at random (with ``seed``) into ``n_subsets`` disjoint sets; on each,
    :class:`~physlens.probes.MechanismDiscovery` is fitted once per ``random_states`` entry, and its
    groups are compared with every labelling in ``labellings`` (e.g. the seed's modes and our refined
    classes), so one number is never the top of its range. ``n_init``: restarts of every mixture
    (1 is enough when ``random_states`` already samples the initialisations).
    """
    from physlens.probes.discovery import MechanismDiscovery

    fingerprints = np.asarray(fingerprints)
    n_subsets = check_positive_int("n_subsets", n_subsets)
    if not random_states:
        raise ValueError("random_states must list at least one clustering state")
    for name, labels in labellings.items():
        if np.asarray(labels).shape != fingerprints.shape[:1]:
            raise ValueError(f"labellings[{name!r}] must give one label per network ({fingerprints.shape[0]}), got {np.asarray(labels).shape}")
    if fingerprints.shape[0] < 4 * n_subsets:
        raise ValueError(f"n_subsets = {n_subsets} needs at least {4 * n_subsets} networks, got {fingerprints.shape[0]}")
    subsets = np.array_split(np.random.default_rng(check_nonnegative_int("seed", seed)).permutation(fingerprints.shape[0]), n_subsets)
    out = {name: np.zeros((n_subsets, len(random_states))) for name in labellings}
    for i, rows in enumerate(subsets):
        for j, state in enumerate(random_states):
            groups = MechanismDiscovery(max_groups=max_groups, n_init=check_positive_int("n_init", n_init), random_state=state).fit(fingerprints[rows]).labels_
            for name, labels in labellings.items():
                out[name][i, j] = _adjusted_rand(np.asarray(labels)[rows], groups)
    return out


def balanced_accuracy(truth: np.ndarray, predicted: np.ndarray) -> float:
    """Mean recall over the classes present in ``truth`` (scikit-learn's ``balanced_accuracy_score``)."""
    truth, predicted = np.asarray(truth), np.asarray(predicted)
    if truth.shape != predicted.shape or truth.ndim != 1 or not truth.size:
        raise ValueError(f"truth and predicted must be non-empty 1-D arrays of one length, got {truth.shape} and {predicted.shape}")
    return float(np.mean([(predicted[truth == c] == c).mean() for c in np.unique(truth)]))


def best_member(values: np.ndarray, labels: np.ndarray, label: str) -> int | None:
    """Index of the network with the lowest ``values`` among those labelled ``label`` (None if none is)."""
    members = np.flatnonzero(np.asarray(labels) == label)
    return int(members[np.argmin(np.asarray(values)[members])]) if members.size else None


@dataclass
class StabilityRow:
    """How often labels change when the distribution is replaced by a fresh sample of ``size`` points."""

    size: int
    changed: Interval  # this rule: share of labels that change (mean over samples, interval over networks)
    old_rule_changed: Interval  # the all-points sign-pattern rule on the same sizes, against its labels on the training points


def label_stability(
    params: Mapping[str, Tensor],
    labels: np.ndarray,
    train_inputs: Tensor,
    distribution: str,
    *,
    sizes: Sequence[int],
    repeats: int,
    seed: int,
    tolerance: float = DEFAULT_TOLERANCE,
    n_resamples: int = 1000,
) -> list[StabilityRow]:
    """Relabel every network on ``repeats`` fresh samples of each size instead of the exact distribution.

    For each size: the share of labels that differ from ``labels`` (this rule), and the share of the
    old all-points rule's labels (:func:`~physlens.probes.sign_pattern_states`) that differ from
    what that rule says on ``train_inputs`` (the networks' own training points, ``[model, n, 2]``).
    Sample seeds are ``seed + 1000 + size`` (this rule) and ``seed + 5000 + size + r`` (old rule).
    """
    repeats = check_positive_int("repeats", repeats)
    seed = check_nonnegative_int("seed", seed)
    stats = unit_statistics(params, distribution)
    old_train = labels_from_states(sign_pattern_states(params, train_inputs), stats.output_weight)
    rows = []
    for size in sizes:
        relabels = relabel_on_samples(params, distribution, n_points=size, repeats=repeats, seed=seed + 1000 + size, tolerance=tolerance)
        changed = mean_interval((relabels != labels[None]).mean(0), seed=seed, n_resamples=n_resamples)
        old_changed = []
        for r in range(repeats):
            sample = sample_fma(size, distribution, seed=seed + 5000 + size + r, dtype="float64")[0]
            old_changed.append(labels_from_states(sign_pattern_states(params, sample), stats.output_weight) != old_train)
        old = mean_interval(np.mean(old_changed, axis=0), seed=seed, n_resamples=n_resamples)
        rows.append(StabilityRow(size, changed, old))
    return rows


@dataclass
class RidgeValleySplit:
    """Where a ridge+valley network beats a mode-3 network: inside the region its valley is off, or elsewhere."""

    valley_off_share: float  # share of the points where the valley unit is off
    mse_valley_off: tuple[float, float]  # (mode 3, ridge+valley) MSE where the valley is off
    mse_elsewhere: tuple[float, float]  # the same elsewhere
    mean_output_valley_off: tuple[float, float]  # (mode 3, ridge+valley) mean output where the valley is off
    target_mean_valley_off: float  # mean of m·a there
    ridge_angle: float  # the ridge's angle to the diagonal, degrees
    valley_angle: float  # the valley's angle to the diagonal, degrees

    @property
    def gap_share_valley_off(self) -> float:
        """The share of the gap between the two networks' MSE that comes from where the valley is off."""
        inside = (self.mse_valley_off[0] - self.mse_valley_off[1]) * self.valley_off_share
        outside = (self.mse_elsewhere[0] - self.mse_elsewhere[1]) * (1 - self.valley_off_share)
        return inside / (inside + outside)


def ridge_valley_split(
    params: Mapping[str, Tensor], mode3: int, ridge_valley: int, points: Tensor, distribution: str = "product"
) -> RidgeValleySplit:
    """Compare mode-3 network ``mode3`` with ridge+valley network ``ridge_valley`` on ``points``,
    split by where the latter's valley unit (its unit with the larger output weight) is off."""
    rv = {k: v[[ridge_valley]] for k, v in params.items()}
    rv_stats = unit_statistics(rv, distribution)
    ridge, valley = int(np.argmin(rv_stats.output_weight[0])), int(np.argmax(rv_stats.output_weight[0]))
    angles = crease_angles(rv)[0]
    valley_off = (points @ rv["W_in"][0, :, valley] + rv["b_in"][0, valley]) <= 0
    pair = {k: v[[mode3, ridge_valley]] for k, v in params.items()}
    inside, outside = region_mse(pair, points, valley_off).T
    outputs = evaluate_layers(network_layers(pair), points[valley_off]).mean(1).numpy()
    return RidgeValleySplit(
        valley_off_share=float(valley_off.double().mean()),
        mse_valley_off=(float(inside[0]), float(inside[1])), mse_elsewhere=(float(outside[0]), float(outside[1])),
        mean_output_valley_off=(float(outputs[0]), float(outputs[1])),
        target_mean_valley_off=float((points[valley_off, 0] * points[valley_off, 1]).mean()),
        ridge_angle=float(angles[ridge]), valley_angle=float(angles[valley]),
    )  # fmt: skip


def transfer_scores(
    truth: np.ndarray, predicted: np.ndarray, codes: Mapping[str, int], *, seed: int, n_resamples: int
) -> dict[str, Any]:
    """Accuracy (with its Wilson interval), balanced accuracy (bootstrap over networks) and the
    confusion counts of a scan's ``predicted`` labels against ``truth``."""
    from physlens.stats import proportion_interval

    truth, predicted = np.asarray(truth), np.asarray(predicted)
    accuracy = proportion_interval(int((predicted == truth).sum()), len(truth))
    balanced = paired_interval(balanced_accuracy, np.array([codes[x] for x in truth]), np.array([codes[x] for x in predicted]),
                               n_resamples=min(n_resamples, 300), seed=seed)  # fmt: skip
    return {"accuracy": accuracy, "balanced": balanced,
            "confusion": {f"{a}->{b}": c for (a, b), c in Counter(zip(truth.tolist(), predicted.tolist())).items()}}


def settled_epochs(condition: np.ndarray, epochs: Sequence[int]) -> np.ndarray:
    """The epoch from which each network's ``condition`` holds at every later snapshot, −1 where it
    does not hold at the last one.

    ``condition`` is ``[snapshot, model]`` booleans at ``epochs`` (for instance: the network has two
    creases), so the result says when a mechanism forms for good, however often it came and went
    before.
    """
    condition = np.asarray(condition, dtype=bool)
    if condition.ndim != 2 or condition.shape[0] != len(epochs) or not len(epochs):
        raise ValueError(f"condition must be [snapshot, model] with one snapshot per epoch, got {list(condition.shape)} for {len(epochs)} epochs")
    settled = np.flip(np.cumprod(np.flip(condition, 0), 0), 0).astype(bool)  # [snapshot, model]: holds from here on
    return np.where(settled[-1], np.asarray(epochs)[np.argmax(settled, 0)], -1)


__all__ = [
    "RidgeValleySplit",
    "StabilityRow",
    "ari_interval",
    "balanced_accuracy",
    "best_member",
    "crease_orientation",
    "discovery_ari_grid",
    "label_stability",
    "label_switches",
    "refined_classes",
    "ridge_valley_split",
    "settled_epochs",
    "transfer_scores",
]
