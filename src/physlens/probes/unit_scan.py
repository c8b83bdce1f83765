"""A unit scan for F = m·a networks that no formula labels: any width, one or more hidden layers.

Every hidden unit gets a role from what it does to the computed function over the data
distribution: ``"crease"`` (it bends the function), ``"linear"`` (it only adds a plane),
``"dead"`` (removing it changes nothing) or ``"cancelling"`` (it matters alone, but the units that
compute the same activation cancel it). Units whose activations are proportional on the data are
one group and are judged together, so a duplicated crease is found as a crease (its members are
flagged ``redundant``) and a cancelling pair as cancelling. :func:`planted_networks` builds networks
whose roles are known, to calibrate the scan (:class:`UnitScan`) and measure its precision and
recall (:func:`role_scores`); :func:`ablation_check` tests the roles on trained networks, where
nobody knows the truth, by removing the units of each role.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from physlens._validation import check_choice, check_finite_float, check_nonnegative_int, check_positive_int
from physlens.probes.discovery import network_layers
from physlens.probes.mechanisms import (
    ACTIVE,
    DEFAULT_TOLERANCE,
    STRADDLING,
    NetworkLike,
    handcrafted_mode3_network,
    network_parameters,
    unit_states,
)
from physlens.stats import Interval, proportion_interval
from physlens.systems.fma import DISTRIBUTIONS, optimal_plane, sample_fma, support_vertices

UNIT_ROLES = ("crease", "linear", "dead", "cancelling")
"""The roles :func:`unit_roles` gives hidden units."""

MECHANISM_ROLES = ("crease", "linear")
"""Roles of the units the product's fit depends on: creases bend the function, linear units add its plane."""

Layers = list[tuple[Tensor, Tensor]]


def _first_layer(layers: Layers, points: Tensor) -> tuple[Tensor, Tensor]:
    """Pre- and post-activations ``[model, n, width]`` of the first hidden layer, which every ablation of a
    network on the same points shares (pass them to :func:`_forward` and :func:`_activations`)."""
    hidden = points.to(torch.float64).unsqueeze(0).expand(layers[0][0].shape[0], -1, -1)
    pre = torch.baddbmm(layers[0][1].unsqueeze(1), hidden, layers[0][0])
    return pre, pre.clamp_min(0)


def _forward(
    layers: Layers, points: Tensor, remove: Sequence[Tensor | None], linearise: Sequence[Tensor | None],
    first: tuple[Tensor, Tensor] | None = None,
) -> Tensor:
    """Outputs ``[model, n]`` with, in hidden layer ``l``, the units in ``remove[l]`` set to 0 and those in
    ``linearise[l]`` passed through without their ReLU (masks ``[model, width]`` or None); ``first``: the
    first hidden layer's activations on ``points`` (:func:`_first_layer`), if already computed.

    A removed unit's outgoing weights are zeroed instead of its activations: its every product in the
    next layer is an exact 0 either way, so the outputs are the same, without a masked copy of
    ``[model, n, width]`` activations per ablation.
    """
    hidden = points.to(torch.float64).unsqueeze(0).expand(layers[0][0].shape[0], -1, -1)
    removed: Tensor | None = None  # the previous hidden layer's removed units
    for index, (W, b) in enumerate(layers):
        if removed is not None:
            W = W.masked_fill(removed.unsqueeze(2), 0.0)
        if index == 0 and first is not None:
            pre, post = first  # the caller's tensors: never written into
        else:
            pre = torch.baddbmm(b.unsqueeze(1), hidden, W)
            if index == len(layers) - 1:
                return pre[..., 0]
            post = pre.clamp_min(0)
        if linearise[index] is not None:
            post = torch.where(linearise[index].unsqueeze(1), pre, post)
        removed = remove[index]
        hidden = post
    raise AssertionError("unreachable: the last layer returns")


def _activations(layers: Layers, points: Tensor, first: tuple[Tensor, Tensor] | None = None) -> list[Tensor]:
    """Post-activations ``[model, n, width]`` of every hidden layer (``first`` as in :func:`_forward`)."""
    hidden = points.to(torch.float64).unsqueeze(0).expand(layers[0][0].shape[0], -1, -1)
    out = []
    for index, (W, b) in enumerate(layers[:-1]):
        hidden = first[1] if index == 0 and first is not None else torch.baddbmm(b.unsqueeze(1), hidden, W).clamp_min(0)
        out.append(hidden)
    return out


@dataclass(frozen=True)
class UnitRoles:
    """What :func:`unit_roles` found, one ``[model, width]`` array per hidden layer.

    ``roles`` holds :data:`UNIT_ROLES`; ``redundant`` marks working units whose group holds another working unit of
    the same activation (duplicates: removing one leaves the others doing its work);
    ``removal_change`` / ``group_removal_change`` / ``group_linearisation_change`` are RMS output
    changes in units of the target's standard deviation; ``group`` numbers each model's groups.
    """

    roles: list[np.ndarray]
    redundant: list[np.ndarray]
    removal_change: list[np.ndarray]
    group_removal_change: list[np.ndarray]
    group_linearisation_change: list[np.ndarray]
    group: list[np.ndarray]
    widths: tuple[int, ...]

    def at_tolerance(self, tolerance: float) -> UnitRoles:
        """The same measurements judged at another ``tolerance``: roles and redundancy thresholded anew
        (the ablations do not depend on it, so a scan can try many tolerances for the cost of one)."""
        tolerance = check_finite_float("tolerance", tolerance)
        if tolerance < 0:
            raise ValueError(f"tolerance must be >= 0, got {tolerance}")
        roles, redundant = [], []
        for removal, group_removal, group_linear, groups in zip(
            self.removal_change, self.group_removal_change, self.group_linearisation_change, self.group
        ):
            layer = np.where(
                removal <= tolerance, "dead",
                np.where(group_removal <= tolerance, "cancelling", np.where(group_linear <= tolerance, "linear", "crease")),
            ).astype(str)  # fmt: skip
            working = layer != "dead"
            sizes = np.stack([((groups == groups[:, j : j + 1]) & working).sum(1) for j in range(layer.shape[1])], axis=1)
            roles.append(layer)
            redundant.append((sizes > 1) & np.isin(layer, MECHANISM_ROLES))
        return dataclasses.replace(self, roles=roles, redundant=redundant)

    def mechanism(self) -> list[np.ndarray]:
        """Per hidden layer, ``[model, width]`` booleans: the units whose role is in :data:`MECHANISM_ROLES`."""
        return [np.isin(r, MECHANISM_ROLES) for r in self.roles]


def _groups(post: Tensor, similarity: float, silent: float) -> np.ndarray:
    """Per model, units whose activations are proportional (cosine ≥ ``similarity``) share a group;
    units that are (almost) never on are groups of their own. ``[model, width]`` of group numbers."""
    norms = post.norm(dim=1)  # [model, width]
    unit = post / norms.clamp_min(1e-300).unsqueeze(1)
    cosine = torch.einsum("mnh,mnk->mhk", unit, unit).numpy()
    loud = (norms > silent * norms.amax(dim=1, keepdim=True).clamp_min(1e-300)).numpy()
    n_models, width = norms.shape
    groups = np.tile(np.arange(width), (n_models, 1))
    rows = np.arange(n_models)
    for j in range(1, width):  # unit j joins the group of the first earlier unit it is proportional to, in every model at once
        joins = loud[:, j : j + 1] & loud[:, :j] & (cosine[:, j, :j] >= similarity)  # [model, k < j]
        first = joins.argmax(1)
        groups[:, j] = np.where(joins.any(1), groups[rows, first], j)
    return groups


def _last_layer_changes(pre: Tensor, post: Tensor, W_out: Tensor, groups: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """RMS output changes ``[model, width]`` from removing each unit of the last hidden layer, removing its
    group, and linearising its group (pre- and post-activations ``[model, n, width]``, ``W_out`` ``[model, width, 1]``).

    The output is linear in the last hidden layer, so no forward pass is needed: removing a set of units
    subtracts their contributions w·relu(z), and linearising them adds w·min(z, 0), what their ReLU cut off.
    """
    weight = W_out[:, None, :, 0]  # [model, 1, width]
    contribution, cut = post * weight, pre.clamp_max(0) * weight  # [model, n, width]

    def rms(t: Tensor) -> np.ndarray:
        return t.square().mean(1).sqrt().numpy()

    def grouped(t: Tensor, chosen: np.ndarray) -> np.ndarray:  # RMS of each unit's group's sum, for the models chosen
        same = torch.from_numpy(groups[chosen, :, None] == groups[chosen, None, :]).to(pre.dtype)  # [model, unit, member]
        return rms(torch.bmm(t, same.transpose(1, 2)))  # [model, n, unit]

    removal = rms(contribution)
    merged = np.flatnonzero((groups != np.arange(groups.shape[1])).any(1))  # models with a group of several units
    if merged.size == groups.shape[0]:
        return removal, grouped(contribution, merged), grouped(cut, merged)
    # where every group is one unit, a group's sum is the unit itself (bit for bit: the other terms are exact zeros)
    group_removal, group_linear = removal.copy(), rms(cut)
    if merged.size:
        pick = torch.from_numpy(merged)
        group_removal[merged], group_linear[merged] = grouped(contribution[pick], merged), grouped(cut[pick], merged)
    return removal, group_removal, group_linear


def unit_roles(
    network: Any,
    distribution: str = "product",
    *,
    n_points: int = 4096,
    seed: int = 0,
    tolerance: float = DEFAULT_TOLERANCE,
    similarity: float = 0.999,
) -> UnitRoles:
    """The role of every hidden unit of every network (:data:`UNIT_ROLES`), from ablations on a sample.

    ``network``: a :class:`~physlens.models.mlp.TinyMLP`, :class:`~physlens.models.mlp.MLPEnsemble`,
    :class:`~physlens.models.mlp.DeepMLPEnsemble`, a parameter mapping or a list of ``(W, b)``
    layers. On ``n_points`` points of ``distribution`` (drawn with ``seed``), for each unit: the RMS
    output change when it is removed, and when its group (units with proportional activations,
    cosine ≥ ``similarity``) is removed or has its ReLU replaced by the identity, each divided by the
    target's standard deviation. Then: ``"dead"`` if removing the unit changes the output by at most
    ``tolerance``; ``"cancelling"`` if it changes it by more but removing its group does not;
    ``"linear"`` if linearising the group changes nothing; ``"crease"`` otherwise.
    """
    check_choice("distribution", distribution, DISTRIBUTIONS)
    n_points, seed = check_positive_int("n_points", n_points), check_nonnegative_int("seed", seed)
    tolerance = check_finite_float("tolerance", tolerance)
    similarity = check_finite_float("similarity", similarity)
    if tolerance < 0:
        raise ValueError(f"tolerance must be >= 0, got {tolerance}")
    if not 0 < similarity <= 1:
        raise ValueError(f"similarity must be in (0, 1], got {similarity}")
    layers = network_layers(network)
    if layers[0][0].shape[1] != 2:
        raise ValueError(f"network must take the two inputs (m, a), got {layers[0][0].shape[1]}")
    points = sample_fma(n_points, distribution, seed=seed, dtype="float64")[0]
    scale = optimal_plane(distribution).target_variance ** 0.5
    blocks = [_block_changes(_layers_of(layers, part), points, scale, similarity) for part in _model_blocks(layers, n_points)]
    removal, group_removal, group_linear, group = (
        [np.concatenate([block[key][index] for block in blocks]) for index in range(len(layers) - 1)] for key in range(4)
    )
    return UnitRoles(
        roles=[], redundant=[], removal_change=removal, group_removal_change=group_removal, group_linearisation_change=group_linear,
        group=group, widths=tuple(W.shape[2] for W, _ in layers[:-1]),
    ).at_tolerance(tolerance)  # fmt: skip


_BLOCK_VALUES = 1 << 21
"""Activations ``[model, n, width]`` per block of networks in the unit scans (16 MiB of float64): every network is
scanned on its own, so blocks only bound the temporaries, which then stay in cache and are not mapped afresh from
the system for every ablation."""


def _model_blocks(layers: Layers, n_points: int) -> list[slice]:
    """Consecutive blocks of networks whose activations on ``n_points`` points hold about :data:`_BLOCK_VALUES` values."""
    n_models, width = layers[0][0].shape[0], max(W.shape[2] for W, _ in layers)
    size = max(1, _BLOCK_VALUES // (n_points * width))
    return [slice(start, min(start + size, n_models)) for start in range(0, n_models, size)]


def _layers_of(layers: Layers, part: slice) -> Layers:
    return [(W[part], b[part]) for W, b in layers]


def _block_changes(layers: Layers, points: Tensor, scale: float, similarity: float) -> tuple[list[np.ndarray], ...]:
    """:func:`unit_roles`' measurements for one block of networks: per hidden layer, ``[model, width]`` arrays of the
    removal, group-removal and group-linearisation changes (in units of ``scale``), and the groups."""
    first = _first_layer(layers, points)
    n_models = layers[0][0].shape[0]
    # the intact outputs, which only the hidden layers before the last need (the last one's changes are closed-form)
    base = _forward(layers, points, [None] * len(layers), [None] * len(layers), first) if len(layers) > 2 else None

    def change(output: Tensor) -> np.ndarray:
        return ((output - base).square().mean(1).sqrt() / scale).numpy()

    out: dict[str, list[np.ndarray]] = {k: [] for k in ("removal", "group_removal", "group_linear", "group")}
    posts = _activations(layers, points, first)
    for index, post in enumerate(posts):
        width = post.shape[2]
        groups = _groups(post, similarity, 1e-9)
        if index == len(posts) - 1:
            pre = torch.baddbmm(layers[index][1].unsqueeze(1), posts[index - 1], layers[index][0]) if index else first[0]
            for key, values in zip(("removal", "group_removal", "group_linear"), _last_layer_changes(pre, post, layers[-1][0], groups)):
                out[key].append(values / scale)
            out["group"].append(groups)
            continue
        removal, group_removal, group_linear = (np.zeros((n_models, width)) for _ in range(3))
        for j in range(width):
            mask = torch.zeros(n_models, width, dtype=torch.bool)
            mask[:, j] = True
            masks: list[Tensor | None] = [None] * len(layers)
            masks[index] = mask
            removal[:, j] = change(_forward(layers, points, masks, [None] * len(layers), first))
            group_mask = torch.from_numpy(groups == groups[:, j : j + 1])
            masks[index] = group_mask
            group_removal[:, j] = change(_forward(layers, points, masks, [None] * len(layers), first))
            group_linear[:, j] = change(_forward(layers, points, [None] * len(layers), masks, first))
        out["removal"].append(removal)
        out["group_removal"].append(group_removal)
        out["group_linear"].append(group_linear)
        out["group"].append(groups)
    return out["removal"], out["group_removal"], out["group_linear"], out["group"]


def _hidden_widths(network: Any) -> tuple[int, ...]:
    return tuple(W.shape[2] for W, _ in network_layers(network)[:-1])


def planted_networks(
    n_models: int,
    width: int,
    *,
    n_dead: int = 1,
    n_duplicates: int = 1,
    n_cancelling: int = 1,
    noise: float = 0.0,
    seed: int = 0,
    base: Any = None,
    base_roles: np.ndarray | None = None,
    distribution: str = "product",
) -> tuple[dict[str, Tensor], np.ndarray]:
    """Width-``width`` networks with a known mechanism: the seed's hand-crafted mode-3 pair (a ridge
    along the diagonal and a linear unit, :func:`~physlens.probes.mechanisms.handcrafted_mode3_network`)
    embedded among ``n_dead`` dead units, ``n_duplicates`` copies of the ridge unit (sharing its
    output weight, so the function is unchanged) and ``n_cancelling`` pairs of units with the same
    activation and opposite output weights; any units left over are dead too.

    Each network draws its own rescalings (a unit's input weights ×c, its output weight ÷c: the same
    function), crease lines of the cancelling pairs through the data, directions of the dead units,
    and a random order of units, then every parameter is multiplied by 1 + ``noise``·N(0, 1).
    Returns the parameters (``W_in [model, 2, width]``, ``b_in``, ``W_out``, ``b_out``) and the true
    roles ``[model, width]`` (:data:`UNIT_ROLES`; duplicates are creases).

    ``base`` replaces the hand-crafted pair by ``n_models`` given one-hidden-layer networks (e.g.
    trained width-2 networks of another recipe) whose units have the roles ``base_roles``
    ``[model, base width]``; the duplicates then copy each network's first crease unit (a network
    without one gets dead units instead). Dead units are off on the whole support of
    ``distribution``, cancelling pairs crease it, and every unit of a pair alone moves the output by
    0.3–1 standard deviation of m·a there.
    """
    check_choice("distribution", distribution, DISTRIBUTIONS)
    n_models, width = check_positive_int("n_models", n_models), check_positive_int("width", width)
    n_dead, n_duplicates, n_cancelling = (check_nonnegative_int(k, v) for k, v in
                                          (("n_dead", n_dead), ("n_duplicates", n_duplicates), ("n_cancelling", n_cancelling)))  # fmt: skip
    noise, seed = check_finite_float("noise", noise), check_nonnegative_int("seed", seed)
    if noise < 0:
        raise ValueError(f"noise must be >= 0, got {noise}")
    needed = 2 + n_dead + n_duplicates + 2 * n_cancelling
    if needed > width:
        raise ValueError(f"width must hold every planted unit: 2 (the mode-3 pair) + {n_dead} dead + {n_duplicates} duplicates + "
                         f"2×{n_cancelling} cancelling = {needed}, got width {width}")  # fmt: skip
    rng = np.random.default_rng(seed)
    if base is None:
        pair = {k: v.detach().to(torch.float64).numpy()[None] for k, v in handcrafted_mode3_network(dtype="float64").parameter_dict().items()}
        pair_roles = np.array([["crease", "linear"]] * n_models)
        pick = np.zeros(n_models, dtype=int)
    else:
        pair = {k: v.numpy() for k, v in network_parameters(base).items()}
        pair_roles = np.asarray(base_roles).astype(str) if base_roles is not None else None
        if pair_roles is None or pair_roles.shape != (pair["W_in"].shape[0], pair["W_in"].shape[2]) or pair["W_in"].shape[0] != n_models:
            raise ValueError(f"base_roles must give a role to every unit of the {n_models} base networks ([model, width] = "
                             f"{[pair['W_in'].shape[0], pair['W_in'].shape[2]]}), got {None if pair_roles is None else list(pair_roles.shape)}")  # fmt: skip
        if not set(pair_roles.ravel().tolist()) <= set(UNIT_ROLES):
            raise ValueError(f"base_roles must hold roles from {list(UNIT_ROLES)}, got {sorted(set(pair_roles.ravel().tolist()))}")
        pick = np.arange(n_models)
        needed += pair["W_in"].shape[2] - 2
        if needed > width:
            raise ValueError(f"width must hold every planted unit: the base network's {pair['W_in'].shape[2]} + {needed - pair['W_in'].shape[2]} "
                             f"planted = {needed}, got width {width}")  # fmt: skip
    corners = support_vertices(distribution).numpy()
    probe = sample_fma(4096, distribution, seed=seed, dtype="float64")[0].numpy()
    scale = optimal_plane(distribution).target_variance ** 0.5
    W_in, b_in, W_out, b_out = np.zeros((n_models, 2, width)), np.zeros((n_models, width)), np.zeros((n_models, width)), np.zeros((n_models, 1))
    roles = np.empty((n_models, width), dtype=object)
    for m in range(n_models):
        units: list[tuple[np.ndarray, float, float, str]] = []  # (input weights, bias, output weight, role)
        b = pick[m]
        creases = np.flatnonzero(pair_roles[m] == "crease")
        copied = int(creases[0]) if creases.size and n_duplicates else -1
        for j in range(pair["W_in"].shape[2]):
            # the copied crease and its duplicates split its output weight; every unit is rescaled
            # (each share at least half an equal share, so that every copy alone still matters)
            shares = 0.5 / (n_duplicates + 1) + 0.5 * rng.dirichlet(np.ones(n_duplicates + 1)) if j == copied else [1.0]
            for share in shares:
                c = rng.uniform(0.5, 2.0)
                units.append((c * pair["W_in"][b, :, j], c * pair["b_in"][b, j], share * pair["W_out"][b, j, 0] / c, pair_roles[m, j]))
        for _ in range(n_cancelling):
            angle = rng.uniform(0, 2 * np.pi)
            direction = np.array([np.cos(angle), np.sin(angle)])
            through = rng.dirichlet(np.ones(len(corners))) @ corners  # a point inside the support
            bias = -float(direction @ through)
            # each unit alone moves the output by 0.3-1 standard deviation of m·a, so it clearly matters
            rms = float(np.sqrt(np.mean(np.maximum(probe @ direction + bias, 0.0) ** 2)))
            weight = rng.uniform(0.3, 1.0) * scale / max(rms, 1e-12) * rng.choice([-1, 1])
            for sign in (1.0, -1.0):
                c = rng.uniform(0.5, 2.0)
                units.append((c * direction, c * bias, sign * weight / c, "cancelling"))
        for _ in range(width - len(units)):
            angle = rng.uniform(0, 2 * np.pi)
            direction = np.array([np.cos(angle), np.sin(angle)])
            bias = -float((corners @ direction).max()) - rng.uniform(0.1, 1.0)  # off at every corner of the support
            units.append((direction, bias, rng.uniform(-2, 2), "dead"))
        order = rng.permutation(width)
        for slot, k in enumerate(order):
            W_in[m, :, slot], b_in[m, slot], W_out[m, slot], roles[m, slot] = units[k]
        b_out[m, 0] = pair["b_out"][b, 0]
    params = {"W_in": W_in, "b_in": b_in, "W_out": W_out[..., None], "b_out": b_out}
    if noise:
        params = {k: v * (1 + noise * rng.standard_normal(v.shape)) for k, v in params.items()}
    return {k: torch.from_numpy(v) for k, v in params.items()}, roles.astype(str)


@dataclass(frozen=True)
class RoleScore:
    """Precision and recall of one role (Wilson intervals), with the counts they come from."""

    role: str
    precision: Interval | None  # None when no unit was called ``role``
    recall: Interval | None  # None when no unit truly has ``role``
    false_positive_rate: Interval | None  # share of units without ``role`` that were called ``role``
    n_true: int
    n_called: int


def role_scores(predicted: np.ndarray, truth: np.ndarray, roles: Sequence[str] = (*UNIT_ROLES, "mechanism")) -> dict[str, RoleScore]:
    """Precision, recall and false-positive rate of each role over all units (``[model, width]`` arrays
    of :data:`UNIT_ROLES`); ``"mechanism"`` scores the union of :data:`MECHANISM_ROLES`."""
    predicted, truth = np.asarray(predicted).astype(str), np.asarray(truth).astype(str)
    if predicted.shape != truth.shape:
        raise ValueError(f"predicted and truth must have the same shape, got {list(predicted.shape)} and {list(truth.shape)}")
    out = {}
    for role in roles:
        if role == "mechanism":
            called, true = np.isin(predicted, MECHANISM_ROLES), np.isin(truth, MECHANISM_ROLES)
        else:
            check_choice("roles", role, (*UNIT_ROLES, "mechanism"))
            called, true = predicted == role, truth == role
        hits = int((called & true).sum())
        out[role] = RoleScore(
            role=role,
            precision=proportion_interval(hits, int(called.sum())) if called.any() else None,
            recall=proportion_interval(hits, int(true.sum())) if true.any() else None,
            false_positive_rate=proportion_interval(int((called & ~true).sum()), int((~true).sum())) if (~true).any() else None,
            n_true=int(true.sum()), n_called=int(called.sum()),
        )  # fmt: skip
    return out


class UnitScan:
    """:func:`unit_roles` with its tolerance calibrated on networks whose roles are known.

    Not a scikit-learn estimator: its input is networks, not a table. :meth:`fit` takes planted
    networks (:func:`planted_networks`) and their true roles and keeps the tolerance, among
    ``tolerances``, with the most units given their true role; the scan then applies only to
    networks of the hidden-layer widths it was fitted on.
    """

    def __init__(
        self,
        distribution: str = "product",
        *,
        tolerances: Sequence[float] = (0.01, 0.02, 0.04, 0.08),
        n_points: int = 4096,
        similarity: float = 0.999,
        seed: int = 0,
    ) -> None:
        check_choice("distribution", distribution, DISTRIBUTIONS)
        self.distribution = distribution
        if not tolerances or not all(check_finite_float("tolerances", t) >= 0 for t in tolerances):
            raise ValueError(f"tolerances must be a non-empty list of numbers >= 0, got {tolerances!r}")
        self.tolerances = tuple(float(t) for t in tolerances)
        self.n_points = check_positive_int("n_points", n_points)
        self.similarity = similarity
        self.seed = check_nonnegative_int("seed", seed)

    def fit(self, network: Any, truth: np.ndarray | Sequence[np.ndarray]) -> UnitScan:
        """Choose the tolerance that gives the most units of ``network`` their role in ``truth``
        (one ``[model, width]`` array per hidden layer, or one array for one hidden layer)."""
        truth_layers = [np.asarray(truth)] if isinstance(truth, np.ndarray) else [np.asarray(t) for t in truth]
        widths = _hidden_widths(network)
        if [t.shape[-1] for t in truth_layers] != list(widths):
            raise ValueError(f"truth must give one role per unit of every hidden layer (widths {list(widths)}), got shapes "
                             f"{[list(t.shape) for t in truth_layers]}")  # fmt: skip
        accuracy = []
        measured = self._roles(network, self.tolerances[0])
        for tolerance in self.tolerances:
            found = measured.at_tolerance(tolerance)
            right = sum(int((f == t).sum()) for f, t in zip(found.roles, truth_layers))
            accuracy.append(right / sum(t.size for t in truth_layers))
        self.accuracy_ = dict(zip(self.tolerances, accuracy))
        self.tolerance_ = self.tolerances[int(np.argmax(accuracy))]
        self.widths_ = widths
        return self

    def _roles(self, network: Any, tolerance: float) -> UnitRoles:
        return unit_roles(network, self.distribution, n_points=self.n_points, seed=self.seed, tolerance=tolerance, similarity=self.similarity)

    def roles(self, network: Any) -> UnitRoles:
        """The roles of ``network``'s units at the fitted tolerance; refuses other widths or depths."""
        if not hasattr(self, "tolerance_"):
            raise RuntimeError("this UnitScan is not fitted yet; call fit on planted networks first")
        widths = _hidden_widths(network)
        if widths != self.widths_:
            raise ValueError(f"network has hidden widths {list(widths)}, but the scan was fitted on {list(self.widths_)}; "
                             "fit a scan on planted networks of that architecture")  # fmt: skip
        return self._roles(network, self.tolerance_)


@dataclass(frozen=True)
class AblationCheck:
    """Fit errors of every network intact and with the units of some roles removed, and the verdicts.

    MSEs against m·a on fresh points, ``[model]`` arrays unless said otherwise. The verdicts compare
    each network with itself (ratios to its own intact MSE), so a network whose error is far below
    the exact best plane is held to its own standard, not to an absolute one.
    """

    intact: np.ndarray
    without_creases: np.ndarray  # every unit called a crease removed
    without_mechanism: np.ndarray  # crease and linear units removed
    without_rest: np.ndarray  # every dead and cancelling unit removed, linear units without their ReLU
    without_random: np.ndarray  # [model, draw] the null: random sets of units outside the mechanism, as many per layer as it has creases
    n_creases: np.ndarray  # crease units per network (all layers)
    n_outside: np.ndarray  # units outside the mechanism per network (what the null draws from)
    plane_mse: float  # the exact best plane on the distribution
    constant_mse: float  # the best constant, Var(m·a)
    rel_tolerance: float  # removing the creases must raise the RMS error by more than this fraction; anything else, by at most this
    quantile: float  # the null's quantile the creases must exceed, and the others must stay under

    @property
    def crease_ratio(self) -> np.ndarray:
        """MSE without the creases over the intact MSE, ``[model]``."""
        return self.without_creases / self.intact

    @property
    def null_ratio(self) -> np.ndarray:
        """MSE without each random set of units outside the mechanism over the intact MSE, ``[model, draw]``
        (NaN where a network has no such units or no creases to match)."""
        return self.without_random / self.intact[:, None]

    @property
    def rest_ratio(self) -> np.ndarray:
        """MSE without the dead and cancelling units (linear units linearised) over the intact MSE, ``[model]``."""
        return self.without_rest / self.intact

    def null_quantile(self) -> np.ndarray:
        """The null ratio's ``quantile`` per network, ``[model]`` (NaN where the null is empty)."""
        ratios = self.null_ratio
        out = np.full(ratios.shape[0], np.nan)
        has = np.isfinite(ratios).any(1)
        out[has] = np.nanquantile(ratios[has], self.quantile, axis=1)
        return out

    def p_value(self) -> np.ndarray:
        """Per network, the share of null draws that hurt at least as much as removing the creases
        (with the usual +1 in numerator and denominator; NaN where the null is empty), ``[model]``."""
        ratios = self.null_ratio
        draws = np.isfinite(ratios).sum(1)
        worse = (np.nan_to_num(ratios, nan=-np.inf) >= self.crease_ratio[:, None]).sum(1)
        return np.where(draws > 0, (1 + worse) / (1 + draws), np.nan)

    def necessary(self) -> np.ndarray:
        """``[model]``: the network has creases, and removing them raises its RMS error by more than
        ``rel_tolerance`` and by more than the null's ``quantile`` does (where the null is not empty)."""
        null = self.null_quantile()
        beats_null = np.where(np.isnan(null), True, self.crease_ratio > null)
        return (self.n_creases > 0) & (self.crease_ratio > (1 + self.rel_tolerance) ** 2) & beats_null

    def others_unnecessary(self) -> np.ndarray:
        """``[model]``: removing the dead and cancelling units (and linearising linear ones) keeps the RMS
        error within ``rel_tolerance`` of the intact one, and so does the null's ``quantile``."""
        limit = (1 + self.rel_tolerance) ** 2
        null = self.null_quantile()
        return (self.rest_ratio <= limit) & np.where(np.isnan(null), True, null <= limit)

    def passed(self) -> np.ndarray:
        """``[model]``: the identified creases are necessary and the other units are not."""
        return self.necessary() & self.others_unnecessary()


def _group_closure(mask: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """``mask`` ``[..., model, width]`` grown to whole groups (``groups`` ``[model, width]``): a unit is in
    if any unit of its group is."""
    same = groups[:, :, None] == groups[:, None, :]  # [model, width, width]
    return np.einsum("...mk,mjk->...mj", mask.astype(np.int64), same.astype(np.int64)) > 0


def _random_sets(roles: UnitRoles, n_draws: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Per hidden layer, ``[draw, model, width]`` masks: in each draw, as many units outside the mechanism as
    the layer has creases (or all of them, if fewer), drawn without replacement, grown to whole groups."""
    out = []
    for layer_roles, groups in zip(roles.roles, roles.group):
        allowed = ~np.isin(layer_roles, MECHANISM_ROLES)
        size = np.minimum((layer_roles == "crease").sum(1), allowed.sum(1))  # [model]
        keys = np.where(allowed, rng.random((n_draws, *layer_roles.shape)), np.inf)
        rank = np.argsort(np.argsort(keys, axis=-1), axis=-1)
        # grown to whole groups among the units outside the mechanism: a dead unit that shares a crease's activation
        # (output weight ~0) must not drag the crease in
        out.append(_group_closure((rank < size[:, None]) & allowed, groups) & allowed)
    return out


NullForm = tuple[np.ndarray, np.ndarray, np.ndarray]
"""One hidden layer's null as a quadratic form: mean r², ⟨C, r⟩ ``[model, width]`` and ⟨C, C⟩ ``[model, width, width]``."""


def _null_form(layers: Layers, points: Tensor, residual: Tensor, first: tuple[Tensor, Tensor] | None = None) -> NullForm:
    """The quadratic form of :func:`_null_mse` for networks of one hidden layer: C the units' contributions
    ``[model, n, width]`` and r the intact ``residual`` ``[model, n]``, every moment a mean over ``points``."""
    post = _activations(layers, points, first)[0]  # [model, n, width]
    contribution = post * layers[1][0][:, None, :, 0]
    n = points.shape[0]
    gram = (torch.einsum("mnj,mnk->mjk", contribution, contribution) / n).numpy()
    cross = (torch.einsum("mnj,mn->mj", contribution, residual) / n).numpy()
    return residual.square().mean(1).numpy(), cross, gram


def _null_mse(
    layers: Layers, points: Tensor, target: Tensor, masks: list[np.ndarray], first: tuple[Tensor, Tensor] | None = None,
    form: NullForm | None = None,
) -> np.ndarray:
    """MSE ``[draw, model]`` with, in every draw, the units of ``masks`` (per hidden layer, ``[draw, model, width]``) removed
    (``first``: the first hidden layer's activations on ``points``, :func:`_first_layer`, if already computed;
    ``form``: one hidden layer's :func:`_null_form`, if already computed).

    With one hidden layer removal is linear in the output, so every draw is a quadratic form in the mask,
    exact: with C the units' contributions and r the intact residual, MSE = mean r² − 2 m·⟨C, r⟩ + mᵀ⟨C, C⟩m.
    With more, each network runs each distinct set among its draws once: a network of a few units outside
    the mechanism has only a few such sets, however many draws there are.
    """
    if len(layers) == 2:
        if form is None:
            form = _null_form(layers, points, _forward(layers, points, [None, None], [None, None], first) - target, first)
        mean_square, cross, gram = form
        mask = masks[0].astype(np.float64)
        mse = mean_square - 2 * (mask * cross).sum(-1) + np.einsum("dmj,mjk,dmk->dm", mask, gram, mask)
        return np.maximum(mse, 0.0)
    units = np.concatenate(masks, axis=-1)  # [draw, model, every hidden unit]
    n_draws, n_models, _ = units.shape
    distinct, which = [], np.empty((n_draws, n_models), dtype=np.int64)
    for m in range(n_models):
        rows, inverse = np.unique(units[:, m], axis=0, return_inverse=True)
        distinct.append(rows)
        which[:, m] = inverse.reshape(-1)
    n_sets = max(len(rows) for rows in distinct)
    # [set, model, unit]: a network with fewer distinct sets repeats its first one
    sets = np.stack([np.concatenate([rows, np.repeat(rows[:1], n_sets - len(rows), axis=0)]) for rows in distinct], axis=1)
    per_layer = np.split(sets, np.cumsum([m.shape[-1] for m in masks])[:-1], axis=-1)
    none: list[Tensor | None] = [None] * len(layers)
    mse = np.stack([
        (_forward(layers, points, [torch.from_numpy(np.ascontiguousarray(layer[k])) for layer in per_layer] + [None], none, first) - target)
        .square().mean(1).numpy()
        for k in range(n_sets)
    ])  # fmt: skip
    return mse[which, np.arange(n_models)]


def ablation_check(
    network: Any,
    roles: UnitRoles,
    distribution: str = "product",
    *,
    n_points: int = 20_000,
    n_draws: int = 200,
    rel_tolerance: float = 0.1,
    quantile: float = 0.95,
    seed: int = 1,
) -> AblationCheck:
    """Test the roles by ablation on fresh points, each network against its own error: the units called
    creases must be necessary, and the others must not be.

    *Necessary*: removing the crease units raises the network's RMS error by more than ``rel_tolerance``
    (a fraction of its own error), and its MSE by more than the ``quantile`` of a null distribution — ``n_draws`` random sets of units outside the
    mechanism (neither crease nor linear), as many per layer as it has creases, each grown to whole
    groups (a cancelling unit is removed with the units outside the mechanism that it cancels, as the scan judged it). *The others
    are not*: removing every dead and cancelling unit (and linearising the linear ones) keeps the RMS
    error within ``rel_tolerance`` of the intact one, and so does the null's ``quantile``. A scan given
    the wrong units fails both: removing them costs nothing, and the null then holds the real creases.

    In a network with one hidden layer, removing every crease leaves a plane, which cannot beat the
    exact best plane. Use a ``seed`` other than the one the roles were found with. To check several sets
    of roles of the same networks, :func:`ablation_checks` does the work that does not depend on them once.
    """
    return ablation_checks(network, [roles], distribution, n_points=n_points, n_draws=n_draws, rel_tolerance=rel_tolerance,
                           quantile=quantile, seed=seed)[0]  # fmt: skip


def ablation_checks(
    network: Any,
    roles: Sequence[UnitRoles],
    distribution: str = "product",
    *,
    n_points: int = 20_000,
    n_draws: int = 200,
    rel_tolerance: float = 0.1,
    quantile: float = 0.95,
    seed: int = 1,
) -> list[AblationCheck]:
    """:func:`ablation_check` of the same networks for every set of ``roles`` in turn (e.g. a scan's roles and
    wrong units, to calibrate the check): each check is the one :func:`ablation_check` gives, while the
    points, the first hidden layer, the intact error and (one hidden layer) the null's quadratic form are
    computed once for all of them."""
    check_choice("distribution", distribution, DISTRIBUTIONS)
    n_draws = check_positive_int("n_draws", n_draws)
    rel_tolerance, quantile = check_finite_float("rel_tolerance", rel_tolerance), check_finite_float("quantile", quantile)
    if rel_tolerance < 0:
        raise ValueError(f"rel_tolerance must be >= 0, got {rel_tolerance}")
    if not 0 < quantile <= 1:
        raise ValueError(f"quantile must be in (0, 1], got {quantile}")
    layers = network_layers(network)
    for found in roles:
        if tuple(W.shape[2] for W, _ in layers[:-1]) != found.widths or found.roles[0].shape[0] != layers[0][0].shape[0]:
            raise ValueError(f"roles were found on networks of widths {list(found.widths)} and {found.roles[0].shape[0]} models; "
                             f"network has {[W.shape[2] for W, _ in layers[:-1]]} and {layers[0][0].shape[0]}")  # fmt: skip
    points = sample_fma(check_positive_int("n_points", n_points), distribution, seed=check_nonnegative_int("seed", seed), dtype="float64")[0]
    nulls = [_random_sets(found, n_draws, np.random.default_rng(seed)) for found in roles]  # drawn for every network at once
    role_masks = [
        [[np.isin(r, kinds) for r in found.roles] for kinds in (["crease"], list(MECHANISM_ROLES), ["dead", "cancelling"], ["linear"])]
        for found in roles
    ]  # fmt: skip
    blocks = [
        _block_mses(_layers_of(layers, part), points, [[[m[part] for m in kind] for kind in masks] for masks in role_masks],
                    [[m[:, part] for m in null] for null in nulls])
        for part in _model_blocks(layers, points.shape[0])
    ]  # fmt: skip
    plane = optimal_plane(distribution)
    checks = []
    for k, found in enumerate(roles):
        intact, without_creases, without_mechanism, without_rest, null = (np.concatenate([block[k][i] for block in blocks]) for i in range(5))
        n_creases = sum((r == "crease").sum(1) for r in found.roles)
        n_outside = sum((~np.isin(r, MECHANISM_ROLES)).sum(1) for r in found.roles)
        null[(n_creases == 0) | (n_outside == 0)] = np.nan
        checks.append(AblationCheck(
            intact=intact, without_creases=without_creases, without_mechanism=without_mechanism, without_rest=without_rest,
            without_random=null, n_creases=n_creases, n_outside=n_outside, plane_mse=plane.mse, constant_mse=plane.target_variance,
            rel_tolerance=rel_tolerance, quantile=quantile,
        ))  # fmt: skip
    return checks


def _block_mses(
    layers: Layers, points: Tensor, role_masks: list[list[list[np.ndarray]]], nulls: list[list[np.ndarray]]
) -> list[tuple[np.ndarray, ...]]:
    """:func:`ablation_checks`' MSEs for one block of networks, per set of roles: intact, without the creases,
    without the mechanism, without the rest (linear units linearised) ``[model]``, and the null ``[model, draw]``.

    ``role_masks``: per set of roles, the per-layer ``[model, width]`` masks of its creases, mechanism, dead and
    cancelling units, and linear units; ``nulls``: per set of roles, :func:`_random_sets`' masks."""
    target = points[:, 0] * points[:, 1]
    first = _first_layer(layers, points)  # every ablation below starts from the same first hidden layer
    none = [None] * len(layers)
    residual = _forward(layers, points, none, none, first) - target
    intact = residual.square().mean(1).numpy()
    form = _null_form(layers, points, residual, first) if len(layers) == 2 else None
    del residual

    def mse(masks: list[np.ndarray] | None, linearise: list[np.ndarray] | None = None) -> np.ndarray:
        def of(chosen: list[np.ndarray] | None) -> list[Tensor | None]:
            return none if chosen is None else [torch.from_numpy(m) for m in chosen] + [None]
        return (_forward(layers, points, of(masks), of(linearise), first) - target).square().mean(1).numpy()

    return [
        (intact.copy(), mse(creases), mse(mechanism), mse(rest, linear), _null_mse(layers, points, target, null, first, form).T)
        for (creases, mechanism, rest, linear), null in zip(role_masks, nulls)
    ]


def exact_unit_roles(network: NetworkLike, distribution: str = "product", *, tolerance: float = DEFAULT_TOLERANCE) -> np.ndarray:
    """The role of every unit of one-hidden-layer networks, each unit judged alone and exactly.

    ``[model, h]`` of ``"crease"``, ``"linear"`` and ``"dead"``: the states of
    :func:`~physlens.probes.unit_states` (quadrature over ``distribution``, no sample) in the unit
    scan's words. A unit judged alone is never ``"cancelling"``. This is the truth of a trained
    network's own units when it is embedded among planted ones (``base_roles`` of
    :func:`planted_networks`), to score :func:`unit_roles` on units no one planted.
    """
    states = unit_states(network, distribution, tolerance=tolerance).numpy()
    return np.where(states == STRADDLING, "crease", np.where(states == ACTIVE, "linear", "dead"))


__all__ = [
    "MECHANISM_ROLES",
    "UNIT_ROLES",
    "AblationCheck",
    "RoleScore",
    "UnitRoles",
    "UnitScan",
    "ablation_check",
    "ablation_checks",
    "exact_unit_roles",
    "planted_networks",
    "role_scores",
    "unit_roles",
]
