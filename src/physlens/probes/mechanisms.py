"""Mechanism labels for tiny ReLU MLPs, read from what each hidden unit does to the computed function.

A unit ``j`` contributes ``w_j·relu(z_j(x))`` to the output. Over the data *distribution* (exactly,
by quadrature, or estimated on a sample) it is

- *dead* when removing it (ReLU → 0) changes the output by at most ``tolerance`` (an RMS change,
  in units of the target's standard deviation): it never fires, or its output weight is negligible;
- *linear* (the seed's "active") when replacing its ReLU by the identity changes the output by at
  most ``tolerance``: it fires on (nearly) all of the data, so it only adds a plane;
- a *crease* (the seed's "straddling") otherwise: it bends the function along the line z_j = 0,
  concave (a ridge) when w_j < 0 and convex (a valley) when w_j > 0.

For width 2 the seed's modes follow, plus the mechanisms the seed did not name (:data:`MODES`):

- ``"1"``: both units dead; the output is a constant.
- ``"2"``: exactly one unit dead; a one-unit network.
- ``"2.5"``: both units linear; the network is a plane.
- ``"3"``: one ridge and one linear unit, the seed's "one unit straddles zero, the other is
  mainly positive": F = min of two planes (see :func:`handcrafted_mode3_network`). A second unit
  that fires on 99 % of the data but bends the function only negligibly counts as linear.
- ``"valley"``: one valley and one linear unit: F = max of two planes.
- ``"ridge+valley"``: two creases with output weights of opposite sign.
- ``"same-sign pair"``: two creases with output weights of the same sign.

These labels are *our* refinement, judged by what each unit does to the function. The seed's own
taxonomy, judged by where each unit fires (the seed's words: dead, active, straddling, "mainly
positive"), is :func:`seed_mode_labels`; it is the default name of a network's mode, and the
refinement is reported beside it, never in its place (:data:`REFINEMENT_NAMES`).

For wider networks :func:`crease_labels` counts ridges and valleys, :func:`kink_labels` counts
creases, and :func:`unit_pattern_labels` counts units of each kind. The old rule, which called a
unit active only if it fired on *every* point of a sample, is :func:`sign_pattern_states`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import sympy
import torch
from jaxtyping import Float
from torch import Tensor

from physlens._validation import (
    check_choice,
    check_finite,
    check_finite_float,
    check_nonnegative_int,
    check_positive_int,
)
from physlens.models.base import HookedModel
from physlens.models.mlp import PARAM_NAMES, MLPConfig, MLPEnsemble, TinyMLP
from physlens.systems.fma import DISTRIBUTIONS, optimal_plane, sample_fma, segment_quadrature

DEAD = 0
"""Unit state (:func:`unit_states`): removing the unit leaves the function unchanged."""
ACTIVE = 1
"""Unit state (:func:`unit_states`): the unit is linear on the data, the seed's "active"."""
STRADDLING = 2
"""Unit state (:func:`unit_states`): the unit puts a crease into the function, the seed's "straddling"."""

SEED_MODES = ("1", "2", "2.5", "3")
"""The seed's width-2 modes."""

MODES = (*SEED_MODES, "valley", "ridge+valley", "same-sign pair")
"""Width-2 mechanism labels: the seed's modes, then the mechanisms it did not name (see the module docstring)."""

SEED_MAINLY = 0.9
"""Default ``mainly`` of :func:`seed_unit_states`: a unit is the seed's "active" ("mainly positive")
when it fires on at least 90 % of the distribution, dead when it fires on at most 10 %, and
straddles zero otherwise. The seed's own mode-3 examples have their second unit firing on 99.8 %
(its cleanest network), about 94 % (experiment 10's rebuilt positive 620240165) and about 92 % (a
network built like its hand-crafted one): "mainly" means most of the distribution, not all of it."""

SEED_UNNAMED = "unnamed"
"""What :func:`seed_mode_labels` answers for a width-2 pattern the seed gave no mode: both units
straddling zero."""

SEED_LABELS = (*SEED_MODES, SEED_UNNAMED)
"""Every answer of :func:`seed_mode_labels`."""

REFINEMENT_NAMES = {
    "1": "constant", "2": "one unit", "2.5": "plane", "3": "ridge + plane", "valley": "valley + plane",
    "ridge+valley": "ridge + valley", "same-sign pair": "same-sign pair",
}  # fmt: skip
"""Our function-based labels (:func:`mechanism_labels`) under names of their own, for reports that
show them beside the seed's modes: the refinement's "3" (one ridge and one linear unit) is not the
seed's mode 3 (one straddling and one mainly positive unit), so it never appears under that name."""

DEFAULT_TOLERANCE = 0.04
"""Default ``tolerance`` of :func:`unit_states`: a unit is dead (or linear) when removing (or linearising)
it moves the output by at most 4 % of the target's standard deviation (RMS over the distribution).
A unit whose zero line cuts off 1 % of the product distribution at the slopes of trained mode-3
networks moves it by 2–4 %, so such a "mainly positive" unit counts as linear, as the seed's mode 3
requires; the valleys of ridge+valley networks move it by about 10 %."""

NetworkLike = TinyMLP | MLPEnsemble | Mapping[str, Any]

_PART_BLOCK_VALUES = 1 << 15  # values per block of the exact quadrature's elementwise steps (256 KiB of float64)
_ROW_CHUNK_VALUES = 1 << 18  # values per [unit, n] temporary when statistics are taken over a sample (2 MiB of float64)


def _count_rows(values: Tensor) -> Tensor:
    """The number of true values in each row of a boolean ``[rows, n]`` tensor."""
    return values.sum(1, dtype=torch.int32 if values.shape[1] < 2**31 else torch.int64)


def network_parameters(network: NetworkLike | torch.nn.Module) -> dict[str, Float[Tensor, "model ..."]]:
    """The parameters of one or many tiny MLPs, stacked with a leading model axis.

    Accepts a :class:`TinyMLP`, an :class:`MLPEnsemble`, or a mapping with ``W_in``
    ``[model, d_in, h]``, ``b_in`` ``[model, h]``, ``W_out`` ``[model, h, 1]`` and ``b_out``
    ``[model, 1]`` (the model axis may be left out for one network). Shapes are checked against
    each other; any other architecture is refused.
    """
    if isinstance(network, TinyMLP):
        return {name: value.unsqueeze(0) for name, value in network.parameter_dict().items()}
    if isinstance(network, MLPEnsemble):
        return network.parameter_dict()
    if isinstance(network, (HookedModel, torch.nn.Module)):
        raise TypeError(
            f"network must be a TinyMLP, an MLPEnsemble or a mapping of W_in/b_in/W_out/b_out; "
            f"{type(network).__name__} has another architecture"
        )
    if not isinstance(network, Mapping):
        raise TypeError(f"network must be a TinyMLP, an MLPEnsemble or a mapping of parameters, got {type(network).__name__}")
    missing = [name for name in PARAM_NAMES if name not in network]
    extra = sorted(set(network) - set(PARAM_NAMES))
    if missing or extra:
        raise ValueError(f"network parameters must be exactly {list(PARAM_NAMES)}; missing {missing}, unexpected {extra}")
    params = {name: torch.as_tensor(network[name]) for name in PARAM_NAMES}
    if params["W_in"].ndim == 2:
        params = {name: value.unsqueeze(0) for name, value in params.items()}
    W_in = params["W_in"]
    if W_in.ndim != 3:
        raise ValueError(f"W_in must have shape [model, d_in, h] or [d_in, h], got {list(W_in.shape)}")
    n_models, d_in, width = W_in.shape
    expected = {"b_in": (n_models, width), "W_out": (n_models, width, 1), "b_out": (n_models, 1)}
    for name, shape in expected.items():
        if tuple(params[name].shape) != shape:
            raise ValueError(
                f"{name} must have shape {list(shape)} to match W_in {list(W_in.shape)} "
                f"([model, d_in, h] with one output), got {list(params[name].shape)}"
            )
    for name, value in params.items():
        if not value.is_floating_point():
            raise ValueError(f"{name} must hold floating-point values, got dtype {value.dtype}")
        check_finite(name, value)
    dtype = torch.promote_types(W_in.dtype, torch.float32)
    return {name: value.detach().to(dtype) for name, value in params.items()}


def preactivations(network: NetworkLike, inputs: Float[Tensor, "*model n d_in"]) -> Float[Tensor, "model n h"]:
    """Hidden pre-activations of every network on ``inputs`` (``[n, d_in]`` shared, or one set per model)."""
    params = network_parameters(network)
    W_in, b_in = params["W_in"], params["b_in"]
    inputs = torch.as_tensor(inputs)
    check_finite("inputs", inputs)
    if inputs.ndim == 2:
        inputs = inputs.unsqueeze(0).expand(W_in.shape[0], -1, -1)
    if inputs.ndim != 3 or inputs.shape[0] != W_in.shape[0] or inputs.shape[2] != W_in.shape[1]:
        raise ValueError(
            f"inputs must have shape [n, {W_in.shape[1]}] or [model={W_in.shape[0]}, n, {W_in.shape[1]}], got {list(inputs.shape)}"
        )
    inputs = inputs.to(device=W_in.device, dtype=W_in.dtype)
    return torch.baddbmm(b_in.unsqueeze(1), inputs, W_in)


@dataclass(frozen=True)
class UnitStatistics:
    """What every hidden unit does over the data, ``[model, h]`` arrays (float64).

    ``removal_change`` and ``linearisation_change`` are the RMS changes of the network's output when
    the unit's ReLU is replaced by 0 and by the identity, divided by the target's standard deviation
    on ``distribution``.
    """

    firing_fraction: np.ndarray  # share of the data where the pre-activation is > 0
    removal_change: np.ndarray  # ‖w·relu(z)‖ / std(F)
    linearisation_change: np.ndarray  # ‖w·relu(−z)‖ / std(F)
    output_weight: np.ndarray  # w, the unit's output weight
    distribution: str  # the distribution the scale (and, without a sample, the expectations) refer to
    n_points: int | None  # size of the sample the expectations were estimated on; None: exact (quadrature)


def _part_integrals(A: Tensor, B: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """∫₀¹ 1[At + B > 0] dt, ∫₀¹ relu(At + B)² dt and ∫₀¹ relu(−At − B)² dt, elementwise, in closed form.

    The negative part is the positive part of (−A, −B), computed from what the two share: the root −B/A
    (the same number for both signs), B², A·B and A², all exact under a change of sign.
    """
    flat = A.abs() <= 1e-12 * (B.abs() + 1.0)
    safe = torch.where(flat, torch.ones_like(A), A)
    root = (-B / safe).clamp(0.0, 1.0)
    zeros, ones = torch.zeros_like(A), torch.ones_like(A)
    B2, AB, A2 = B**2, A * B, A**2

    def part(rising: Tensor, positive_on_flat: Tensor) -> tuple[Tensor, Tensor]:
        lo = torch.where(flat, zeros, torch.where(rising, root, zeros))
        hi = torch.where(flat, positive_on_flat.to(A.dtype), torch.where(rising, ones, root))
        length = (hi - lo).clamp_min(0.0)
        # ∫_lo^hi (At + B)² dt without cancellation for small A
        return length, length * (B2 + AB * (hi + lo) + A2 * (hi**2 + hi * lo + lo**2) / 3)

    length, positive = part(A > 0, B > 0)
    _, negative = part(A < 0, B < 0)
    return length, positive, negative


def _sample_moments(params: dict[str, Tensor], inputs: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Sample means of 1[z > 0], relu(z)² and relu(−z)² for every unit: three ``[model, h]`` tensors.

    The pre-activations are laid out ``[unit, n]``, one unit per row, so every mean is a reduction
    along contiguous memory; units are taken in blocks whose rows are written into buffers allocated
    once, so large samples run in bounded memory.
    """
    check_finite("inputs", inputs)
    W_in, b_in = params["W_in"], params["b_in"]
    n_models, d_in, width = W_in.shape
    if inputs.ndim == 3:  # one sample per model
        pre = preactivations(params, inputs.to(torch.float64))
        return (pre > 0).to(torch.float64).mean(1), pre.clamp_min(0).square().mean(1), (-pre).clamp_min(0).square().mean(1)
    if inputs.ndim != 2 or inputs.shape[1] != d_in:
        raise ValueError(f"inputs must have shape [n, {d_in}] or [model={n_models}, n, {d_in}], got {list(inputs.shape)}")
    inputs_t = inputs.to(torch.float64).T.contiguous()  # [d_in, n]
    n, units = inputs_t.shape[1], n_models * width
    weights = W_in.permute(0, 2, 1).reshape(units, d_in)  # [unit, d_in], unit = model·h + j
    biases = b_in.reshape(units, 1)
    rows = max(1, min(units, _ROW_CHUNK_VALUES // n))
    pre = torch.empty(rows, n, dtype=torch.float64)
    part = torch.empty_like(pre)
    fires = torch.empty(pre.shape, dtype=torch.bool)
    out = [torch.empty(units, dtype=torch.float64) for _ in range(3)]
    for start in range(0, units, rows):
        stop = min(start + rows, units)
        z, p, f = pre[: stop - start], part[: stop - start], fires[: stop - start]
        torch.addmm(biases[start:stop], weights[start:stop], inputs_t, out=z)
        torch.gt(z, 0, out=f)
        out[0][start:stop] = _count_rows(f).to(torch.float64) / n
        torch.clamp_min(z, 0, out=p)
        out[1][start:stop] = p.square_().mean(1)
        torch.clamp_max(z, 0, out=p)
        out[2][start:stop] = p.square_().mean(1)
    return tuple(values.reshape(n_models, width) for values in out)


def unit_statistics(
    network: NetworkLike,
    distribution: str = "product",
    *,
    inputs: Float[Tensor, "*model n 2"] | None = None,
) -> UnitStatistics:
    """Firing fraction and the output change from removing or linearising every hidden unit.

    Without ``inputs`` the expectations are over the distribution itself: along the segments of
    :func:`~physlens.systems.fma.segment_quadrature` a pre-activation is linear, so its firing
    fraction and its squared positive and negative parts integrate in closed form, and only the
    transverse coordinate is discretised (error far below any tolerance used here). With ``inputs``
    (``[n, 2]`` or one sample per model) they are sample means, which is what relabelling on a
    fresh sample measures. Either way the changes are divided by the standard deviation of m·a on
    ``distribution``.
    """
    check_choice("distribution", distribution, DISTRIBUTIONS)
    params = {name: value.to("cpu", torch.float64) for name, value in network_parameters(network).items()}
    if params["W_in"].shape[1] != 2:
        raise ValueError(f"unit_statistics needs networks with inputs (m, a), got d_in = {params['W_in'].shape[1]}")
    w_out = params["W_out"][..., 0]  # [model, h]
    if inputs is None:
        quadrature = segment_quadrature(distribution)
        slope = torch.einsum("kd,mdh->mkh", quadrature.directions, params["W_in"])  # [model, segment, h]
        offset = torch.einsum("kd,mdh->mkh", quadrature.origins, params["W_in"]) + params["b_in"][:, None, :]
        fires, positive, negative = (torch.empty_like(slope) for _ in range(3))
        rows = max(1, _PART_BLOCK_VALUES // (slope.shape[1] * slope.shape[2]))
        for start in range(0, slope.shape[0], rows):  # the dozens of elementwise steps run on blocks that stay in cache
            part = slice(start, start + rows)
            fires[part], positive[part], negative[part] = _part_integrals(slope[part], offset[part])
        weights = quadrature.weights[None, :, None]
        fraction, positive, negative = ((weights * t).sum(1) for t in (fires, positive, negative))
        n_points = None
    else:
        fraction, positive, negative = _sample_moments(params, torch.as_tensor(inputs))
        n_points = torch.as_tensor(inputs).shape[-2]
    scale = optimal_plane(distribution).target_variance ** 0.5
    return UnitStatistics(
        firing_fraction=fraction.numpy(),
        removal_change=(w_out.abs() * positive.sqrt() / scale).numpy(),
        linearisation_change=(w_out.abs() * negative.sqrt() / scale).numpy(),
        output_weight=w_out.numpy(),
        distribution=distribution,
        n_points=n_points,
    )


def unit_states(
    network: NetworkLike | UnitStatistics,
    distribution: str = "product",
    *,
    inputs: Float[Tensor, "*model n 2"] | None = None,
    tolerance: float = DEFAULT_TOLERANCE,
) -> Tensor:
    """State of every hidden unit over the data: ``[model, h]`` of :data:`DEAD`, :data:`ACTIVE` (linear)
    and :data:`STRADDLING` (crease), judged by what the unit does to the function (module docstring).

    ``network`` may also be the :class:`UnitStatistics` of the networks, to try several tolerances
    without recomputing them. ``tolerance`` is the largest RMS output change, in units of the
    target's standard deviation, that still counts as "does nothing" (removal) or "is linear"
    (linearisation).
    """
    tolerance = check_finite_float("tolerance", tolerance)
    if tolerance < 0:
        raise ValueError(f"tolerance must be >= 0, got {tolerance}")
    stats = network if isinstance(network, UnitStatistics) else unit_statistics(network, distribution, inputs=inputs)
    dead = stats.removal_change <= tolerance
    linear = ~dead & (stats.linearisation_change <= tolerance)
    states = np.where(dead, DEAD, np.where(linear, ACTIVE, STRADDLING))
    return torch.from_numpy(states.astype(np.int64))


def _preactivation_range(network: NetworkLike, inputs: Float[Tensor, "*model n d_in"]) -> tuple[Float[Tensor, "model h"], Float[Tensor, "model h"]]:
    """The smallest and largest pre-activation of every hidden unit over ``inputs`` (``[n, d_in]`` shared,
    or one set per model): two ``[model, h]`` tensors, the same values :func:`preactivations` gives.

    Units are taken in blocks whose pre-activations fill a ``[unit, n]`` buffer allocated once (shared
    inputs: one matrix product ``[block, d_in] @ [d_in, n]`` per block), so a large sample never holds
    all of ``[model, n, h]`` at once.
    """
    params = network_parameters(network)
    W_in, b_in = params["W_in"], params["b_in"]
    n_models, d_in, width = W_in.shape
    inputs = torch.as_tensor(inputs)
    check_finite("inputs", inputs)
    if inputs.ndim == 3:
        pre = preactivations(params, inputs)
        return pre.amin(dim=1), pre.amax(dim=1)
    if inputs.ndim != 2 or inputs.shape[1] != d_in:
        raise ValueError(f"inputs must have shape [n, {d_in}] or [model={n_models}, n, {d_in}], got {list(inputs.shape)}")
    inputs_t = inputs.to(device=W_in.device, dtype=W_in.dtype).T.contiguous()  # [d_in, n]
    n, units = inputs_t.shape[1], n_models * width
    weights = W_in.permute(0, 2, 1).reshape(units, d_in)  # [unit, d_in], unit = model·h + j
    biases = b_in.reshape(units, 1)
    rows = max(1, min(units, _ROW_CHUNK_VALUES // max(1, n)))
    buffer = torch.empty(rows, n, dtype=W_in.dtype, device=W_in.device)  # [unit, n]: each extreme is a reduction along a row
    lowest, highest = (torch.empty(units, dtype=W_in.dtype, device=W_in.device) for _ in range(2))
    for start in range(0, units, rows):
        stop = min(start + rows, units)
        z = buffer[: stop - start]
        torch.addmm(biases[start:stop], weights[start:stop], inputs_t, out=z)
        lowest[start:stop] = z.amin(1)
        highest[start:stop] = z.amax(1)
    return lowest.reshape(n_models, width), highest.reshape(n_models, width)


def sign_pattern_states(network: NetworkLike, inputs: Float[Tensor, "*model n d_in"]) -> Tensor:
    """The all-points rule, kept for comparison: dead if the pre-activation is ≤ 0 at every input,
    active if > 0 at every input, straddling otherwise (``[model, h]``).

    On a sample this depends on the sample's extreme points; on the corners of the data's support
    (:func:`~physlens.systems.fma.support_vertices`) it is the corner rule that needs no data.
    """
    lowest, highest = _preactivation_range(network, inputs)
    states = torch.full(lowest.shape, STRADDLING, dtype=torch.long, device=lowest.device)
    states[highest <= 0] = DEAD
    states[lowest > 0] = ACTIVE
    return states.cpu()


def seed_unit_states(
    network: NetworkLike | UnitStatistics,
    distribution: str = "product",
    *,
    inputs: Float[Tensor, "*model n 2"] | None = None,
    mainly: float = SEED_MAINLY,
) -> Tensor:
    """The seed's unit states, ``[model, h]``: :data:`DEAD` when the unit fires on at most
    ``1 − mainly`` of the distribution, :data:`ACTIVE` ("mainly positive") when it fires on at least
    ``mainly`` of it, :data:`STRADDLING` otherwise.

    Only the firing fraction counts, as in the seed, which judged units by where their
    pre-activations fall over the data, not by what they do to the output (that is
    :func:`unit_states`). ``network`` may be the networks' :class:`UnitStatistics`.
    """
    mainly = check_finite_float("mainly", mainly)
    if not 0.5 < mainly <= 1.0:
        raise ValueError(f"mainly must be in (0.5, 1], the share of the distribution on which a unit fires to count as active; got {mainly}")
    stats = network if isinstance(network, UnitStatistics) else unit_statistics(network, distribution, inputs=inputs)
    fraction = stats.firing_fraction
    states = np.where(fraction <= 1.0 - mainly, DEAD, np.where(fraction >= mainly, ACTIVE, STRADDLING))
    return torch.from_numpy(states.astype(np.int64))


def seed_modes_from_states(states: Tensor) -> np.ndarray:
    """The seed's width-2 modes (:data:`SEED_LABELS`) from :func:`seed_unit_states`: ``"1"`` both dead,
    ``"2"`` one dead, ``"2.5"`` both active, ``"3"`` one straddling and one active, and
    :data:`SEED_UNNAMED` for two straddling units, a pattern the seed did not name."""
    states = torch.as_tensor(states).cpu()
    if states.ndim != 2 or states.shape[1] != 2:
        raise ValueError(f"states must have shape [model, 2] (width-2 networks), got {list(states.shape)}")
    counts = unit_counts(states).numpy()
    dead, active, straddling = counts[:, 0], counts[:, 1], counts[:, 2]
    labels = np.full(states.shape[0], SEED_UNNAMED, dtype=object)
    labels[(straddling == 1) & (active == 1)] = "3"
    labels[active == 2] = "2.5"
    labels[dead == 1] = "2"
    labels[dead == 2] = "1"
    return labels.astype(str)


def seed_mode_labels(
    network: NetworkLike | UnitStatistics,
    distribution: str = "product",
    *,
    inputs: Float[Tensor, "*model n 2"] | None = None,
    mainly: float = SEED_MAINLY,
) -> np.ndarray:
    """The seed's mode of every width-2 network (:data:`SEED_LABELS`), as the seed defines it.

    Mode 1: both units dead; 2: one unit dead; 2.5: both units active (the ReLU unused); 3: one
    unit straddles zero and the other is mainly positive. A unit is judged by the share of the
    distribution on which it fires (:func:`seed_unit_states`), exactly (quadrature) or on
    ``inputs``. Report the firing fractions (:func:`unit_statistics`) beside the label, and our
    function-based refinement (:func:`mechanism_labels`, :data:`REFINEMENT_NAMES`) in a column of its own.
    """
    if isinstance(network, UnitStatistics):
        width = network.firing_fraction.shape[1]
    else:
        network = network_parameters(network)
        width = network["W_in"].shape[2]
    if width != 2:
        raise ValueError(f"seed_mode_labels needs width-2 networks (the seed's modes), got width {width}")
    return seed_modes_from_states(seed_unit_states(network, distribution, inputs=inputs, mainly=mainly))


def unit_counts(states: Tensor) -> Tensor:
    """Number of dead, linear and crease units of each network: ``[model, 3]``."""
    return torch.stack([(states == kind).sum(dim=-1) for kind in (DEAD, ACTIVE, STRADDLING)], dim=-1)


def unit_pattern_labels(states: Tensor) -> np.ndarray:
    """``"d{dead} a{active} s{straddling}"`` for every network, e.g. ``"d0 a1 s1"``: works for any width."""
    counts = unit_counts(states).cpu().numpy()
    return np.array([f"d{d} a{a} s{s}" for d, a, s in counts])


def kink_labels(states: Tensor) -> np.ndarray:
    """Coarse mechanism class for any width: ``"dead"`` when every unit is dead, else ``"k{n}"`` with n
    the number of creases (``"k0"``: the function is linear; each crease adds a kink)."""
    counts = unit_counts(states).cpu().numpy()
    width = states.shape[-1]
    return np.array(["dead" if d == width else f"k{s}" for d, _, s in counts])


def crease_labels(states: Tensor, network: NetworkLike | UnitStatistics) -> np.ndarray:
    """Mechanism class for any width from the creases' curvature: ``"constant"`` (every unit dead),
    ``"plane"`` (no crease), else ``"r{ridges}v{valleys}"`` (concave and convex creases)."""
    weights = network.output_weight if isinstance(network, UnitStatistics) else network_parameters(network)["W_out"][..., 0].cpu().numpy()
    states = states.cpu().numpy()
    if weights.shape != states.shape:
        raise ValueError(f"states {list(states.shape)} and the networks' output weights {list(weights.shape)} must match")
    crease = states == STRADDLING
    ridges, valleys = (crease & (weights < 0)).sum(1), (crease & (weights > 0)).sum(1)
    dead = (states == DEAD).all(1)
    return np.array(
        ["constant" if d else ("plane" if r + v == 0 else f"r{r}v{v}") for d, r, v in zip(dead, ridges, valleys)]
    )


def labels_from_states(states: Tensor, output_weights: np.ndarray | Tensor) -> np.ndarray:
    """Width-2 mechanism labels (:data:`MODES`) from unit states and the units' output weights."""
    states = torch.as_tensor(states).cpu()
    weights = torch.as_tensor(np.asarray(output_weights)).cpu()
    if states.ndim != 2 or states.shape[1] != 2 or weights.shape != states.shape:
        raise ValueError(
            f"states and output_weights must both have shape [model, 2] (width-2 networks), got {list(states.shape)} and {list(weights.shape)}"
        )
    counts = unit_counts(states).numpy()
    dead, linear, crease = counts[:, 0], counts[:, 1], counts[:, 2]
    is_crease = (states == STRADDLING).numpy()
    w = weights.numpy()
    crease_weight = np.where(is_crease, w, 0.0).sum(1)  # the one crease's output weight, where there is one
    opposite = np.sign(w[:, 0]) != np.sign(w[:, 1])
    labels = np.full(states.shape[0], "same-sign pair", dtype=object)
    labels[(crease == 2) & opposite] = "ridge+valley"
    labels[(crease == 1) & (linear == 1)] = np.where(crease_weight[(crease == 1) & (linear == 1)] < 0, "3", "valley")
    labels[linear == 2] = "2.5"
    labels[dead == 1] = "2"
    labels[dead == 2] = "1"
    return labels.astype(str)


def refinement_labels(labels: np.ndarray) -> np.ndarray:
    """Our function-based labels (:func:`mechanism_labels`) under their own names (:data:`REFINEMENT_NAMES`)."""
    labels = np.asarray(labels).astype(str)
    unknown = sorted(set(labels.tolist()) - set(REFINEMENT_NAMES))
    if unknown:
        raise ValueError(f"labels must be mechanism_labels' labels {list(REFINEMENT_NAMES)}, got {unknown}")
    return np.array([REFINEMENT_NAMES[label] for label in labels.tolist()], dtype=str)


def mechanism_labels(
    network: NetworkLike,
    distribution: str = "product",
    *,
    inputs: Float[Tensor, "*model n 2"] | None = None,
    tolerance: float = DEFAULT_TOLERANCE,
) -> np.ndarray:
    """Our function-based refinement of every width-2 network (:data:`MODES`): modes 1, 2, 2.5 and 3
    judged by what units do to the function, and ``"valley"``, ``"ridge+valley"``, ``"same-sign
    pair"`` for what the seed did not name. The seed's own taxonomy is :func:`seed_mode_labels`;
    where the two are shown together, show these under :func:`refinement_labels`' names.

    Units are judged over ``distribution`` (exactly) or on ``inputs`` (a sample), with
    :func:`unit_states`' ``tolerance``. Mode 3 is the seed's "one unit straddles zero and the other
    is mainly positive" with the output ≈ min of two planes: one crease with a negative output
    weight (a ridge) and one linear unit. Only that sign matters to the function: an always-on
    unit adds a plane that a unit of either output sign can supply, so the seed's sign signature
    (:func:`seed_sign_signature`) is one of several ways to write the same mode.
    """
    params = network_parameters(network)
    if params["W_in"].shape[2] != 2:
        raise ValueError(
            f"mechanism_labels needs width-2 networks (modes 1/2/2.5/3), got width {params['W_in'].shape[2]}; "
            "use crease_labels, kink_labels or unit_pattern_labels for other widths"
        )
    stats = unit_statistics(params, distribution, inputs=inputs)
    return labels_from_states(unit_states(stats, tolerance=tolerance), stats.output_weight)


def relabel_on_samples(
    network: NetworkLike,
    distribution: str = "product",
    *,
    n_points: int,
    repeats: int = 5,
    seed: int = 0,
    tolerance: float = DEFAULT_TOLERANCE,
) -> np.ndarray:
    """Labels of every network estimated on ``repeats`` fresh samples of ``n_points`` points:
    ``[repeat, model]``. Compare with :func:`mechanism_labels` on the distribution to measure how
    much labels depend on the sample (sample ``r`` is drawn with seed ``seed + r``)."""
    n_points, repeats = check_positive_int("n_points", n_points), check_positive_int("repeats", repeats)
    seed = check_nonnegative_int("seed", seed)
    return np.stack([
        mechanism_labels(network, distribution, inputs=sample_fma(n_points, distribution, seed=seed + r, dtype="float64")[0], tolerance=tolerance)
        for r in range(repeats)
    ])


def network_formula(network: NetworkLike, index: int = 0, *, digits: int = 3, tolerance: float | None = DEFAULT_TOLERANCE) -> sympy.Expr:
    """Network ``index`` written out: b_out + Σ_j w_j·max(0, W_j·(m, a) + b_j), rounded to ``digits``.

    With ``tolerance`` (default), units that are dead on the product distribution are dropped and
    linear units are written as their plane (their ReLU never acts), so the formula shows the
    mechanism; ``tolerance=None`` keeps every unit as it is.
    """
    params = network_parameters(network)
    n_models = params["W_in"].shape[0]
    if isinstance(index, bool) or not isinstance(index, int) or not -n_models <= index < n_models:
        raise ValueError(f"index must be an integer in [0, {n_models}), got {index!r}")
    one = {name: value[index : index + 1] for name, value in params.items()}
    states = unit_states(one, tolerance=tolerance)[0].tolist() if tolerance is not None else [STRADDLING] * one["W_in"].shape[2]
    m, a = sympy.symbols("m a")

    def number(value: Tensor) -> sympy.Float:
        return sympy.Float(float(value), digits)

    formula = number(one["b_out"][0, 0])
    for unit, state in enumerate(states):
        if state == DEAD:
            continue
        pre = number(one["W_in"][0, 0, unit]) * m + number(one["W_in"][0, 1, unit]) * a + number(one["b_in"][0, unit])
        formula += number(one["W_out"][0, unit, 0]) * (pre if state == ACTIVE else sympy.Max(0, pre))
    return formula


def region_mse(network: NetworkLike, inputs: Float[Tensor, "n 2"], region: Tensor) -> np.ndarray:
    """Each network's mean squared error against m·a inside and outside ``region`` (a boolean mask
    over ``inputs``): ``[model, 2]``, NaN where a side holds no point."""
    inputs = torch.as_tensor(inputs).to(torch.float64)
    region = torch.as_tensor(region)
    if region.dtype != torch.bool or region.shape != inputs.shape[:1]:
        raise ValueError(f"region must be a boolean mask with one entry per input ({inputs.shape[0]}), got {region.dtype} {list(region.shape)}")
    params = {name: value.to("cpu", torch.float64) for name, value in network_parameters(network).items()}
    output = (preactivations(params, inputs).clamp_min(0) * params["W_out"][:, None, :, 0]).sum(-1) + params["b_out"]
    error = (output - inputs[:, 0] * inputs[:, 1]).square()
    inside = error[:, region].mean(1) if region.any() else torch.full(error.shape[:1], float("nan"), dtype=error.dtype)
    outside = error[:, ~region].mean(1) if (~region).any() else torch.full(error.shape[:1], float("nan"), dtype=error.dtype)
    return torch.stack([inside, outside], dim=1).numpy()


def seed_sign_signature(network: NetworkLike) -> np.ndarray:
    """Whether each network carries the sign signature of the seed's mode-3 examples: every output
    weight negative and the output bias positive (a parametrisation, not a property of the function)."""
    params = network_parameters(network)
    return ((params["W_out"][..., 0] < 0).all(dim=1) & (params["b_out"][:, 0] > 0)).cpu().numpy()


def crease_angles(network: NetworkLike) -> np.ndarray:
    """Angle in degrees (0–90) between each unit's zero line and the diagonal m = a: ``[model, h]``.

    0° is a crease along the diagonal (a roof whose ridge runs where m = a, as in the seed's cleanest
    mode-3 network); 90° is a crease across it, e.g. one that cuts off the far tips of the product
    distribution.
    """
    W = network_parameters(network)["W_in"].to("cpu", torch.float64)  # [model, 2, h]
    if W.shape[1] != 2:
        raise ValueError(f"crease_angles needs networks with inputs (m, a), got d_in = {W.shape[1]}")
    # the zero line runs along (−W₁, W₀); against (1, 1) its dot product is W₀ − W₁ and its cross product −(W₀ + W₁)
    return torch.rad2deg(torch.atan2((W[:, 0] + W[:, 1]).abs(), (W[:, 0] - W[:, 1]).abs())).numpy()


HANDCRAFTED_PLANES = (0.85, 0.55, 0.45)
"""(α, β, γ) of the hand-crafted network's planes L1 = αm + βa − γ and L2 = βm + αa − γ."""


def handcrafted_mode3_network(
    alpha: float = HANDCRAFTED_PLANES[0],
    beta: float = HANDCRAFTED_PLANES[1],
    gamma: float = HANDCRAFTED_PLANES[2],
    *,
    offset: float = 3.0,
    dtype: str = "float32",
    device: str = "cpu",
) -> TinyMLP:
    """A width-2 network built by hand that multiplies approximately, by the mode-3 mechanism.

    It computes F ≈ min(L1, L2) with L1 = αm + βa − γ and L2 = βm + αa − γ (α > β): two planes
    that meet along the diagonal m = a, a concave roof over the saddle m·a. Written with ReLUs,
    min(L1, L2) = L1 − relu(L1 − L2), and L1 = c − relu(k − αm − βa) whenever k − αm − βa > 0:

    - unit 0: pre = (α − β)(m − a), straddles zero across the diagonal (the kink);
    - unit 1: pre = ``offset`` − αm − βa, positive on the whole input range (always active);
    - both output weights −1, output bias c = ``offset`` − γ > 0.

    So it carries exactly the mode-3 signature. The defaults were picked by a coarse least-squares
    search over the uniform-in-product distribution; ``offset`` only has to keep unit 1 positive
    (m, a ≤ 2 there).
    """
    if not alpha > beta:
        raise ValueError(f"alpha must exceed beta so that the planes cross on the diagonal, got {alpha} and {beta}")
    model = TinyMLP(MLPConfig(d_hidden=2, seed=0, dtype=dtype, device=device))
    kink = alpha - beta
    exact = dict(dtype=torch.float64)  # cast once from float64, never through float32
    with torch.no_grad():
        model.W_in.copy_(torch.tensor([[kink, -alpha], [-kink, -beta]], **exact))
        model.b_in.copy_(torch.tensor([0.0, offset], **exact))
        model.W_out.copy_(torch.tensor([[-1.0], [-1.0]], **exact))
        model.b_out.copy_(torch.tensor([offset - gamma], **exact))
    return model


__all__ = [
    "ACTIVE",
    "DEAD",
    "DEFAULT_TOLERANCE",
    "HANDCRAFTED_PLANES",
    "MODES",
    "REFINEMENT_NAMES",
    "SEED_LABELS",
    "SEED_MAINLY",
    "SEED_MODES",
    "SEED_UNNAMED",
    "STRADDLING",
    "UnitStatistics",
    "crease_angles",
    "crease_labels",
    "handcrafted_mode3_network",
    "kink_labels",
    "labels_from_states",
    "mechanism_labels",
    "network_formula",
    "network_parameters",
    "preactivations",
    "region_mse",
    "refinement_labels",
    "relabel_on_samples",
    "seed_mode_labels",
    "seed_modes_from_states",
    "seed_sign_signature",
    "seed_unit_states",
    "sign_pattern_states",
    "unit_counts",
    "unit_pattern_labels",
    "unit_states",
    "unit_statistics",
]
