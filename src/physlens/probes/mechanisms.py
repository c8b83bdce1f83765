"""Mechanism labels for tiny ReLU MLPs, read from the sign pattern of hidden pre-activations over data.

Each hidden unit is *dead* (pre-activation ≤ 0 on every data point: it never fires), *active*
(> 0 on every point: the ReLU is unused) or *straddling* (both: the unit puts a kink into the
function). For width 2 the seed's modes follow:

- ``"1"``: both units dead; the output is the constant ``b_out``.
- ``"2"``: exactly one unit dead; the network is a one-unit network.
- ``"2.5"``: both units active; the network is linear in its inputs.
- ``"3"``: one unit straddles, the other is active, both output weights are negative and the
  output bias is positive: F ≈ min(L1, L2) of two planes (see :func:`handcrafted_mode3_network`).
- ``"other"``: everything else (both straddling; or one straddling and one active with other signs).

The sign conditions of mode 3 can be relaxed to the ones that change the computed function
(``mode3_rule="function"`` in :func:`mechanism_labels`).

For wider networks :func:`unit_pattern_labels` counts units of each kind and :func:`kink_labels`
gives the coarser class "how many ReLU kinks does the function use".
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from physlens._validation import check_choice, check_finite
from physlens.models.base import HookedModel
from physlens.models.mlp import PARAM_NAMES, MLPConfig, MLPEnsemble, TinyMLP

DEAD, ACTIVE, STRADDLING = 0, 1, 2
"""Unit states returned by :func:`unit_states`."""

MODES = ("1", "2", "2.5", "3", "other")
"""Width-2 mechanism labels, in the seed's order, plus ``"other"`` for patterns outside them."""

NetworkLike = TinyMLP | MLPEnsemble | Mapping[str, Any]


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


def unit_states(network: NetworkLike, inputs: Float[Tensor, "*model n d_in"]) -> Tensor:
    """State of every hidden unit over the data: ``[model, h]`` of :data:`DEAD`, :data:`ACTIVE`, :data:`STRADDLING`.

    Dead: pre-activation ≤ 0 at every input (the ReLU's output and gradient are 0 everywhere).
    Active: > 0 at every input. Straddling: both occur.
    """
    pre = preactivations(network, inputs)
    fires = pre > 0
    states = torch.full(pre.shape[::2], STRADDLING, dtype=torch.long, device=pre.device)
    states[~fires.any(dim=1)] = DEAD
    states[fires.all(dim=1)] = ACTIVE
    return states


def unit_counts(states: Tensor) -> Tensor:
    """Number of dead, active and straddling units of each network: ``[model, 3]``."""
    return torch.stack([(states == kind).sum(dim=-1) for kind in (DEAD, ACTIVE, STRADDLING)], dim=-1)


def unit_pattern_labels(states: Tensor) -> np.ndarray:
    """``"d{dead} a{active} s{straddling}"`` for every network, e.g. ``"d0 a1 s1"``: works for any width."""
    counts = unit_counts(states).cpu().numpy()
    return np.array([f"d{d} a{a} s{s}" for d, a, s in counts])


def kink_labels(states: Tensor) -> np.ndarray:
    """Coarse mechanism class for any width: ``"dead"`` when every unit is dead, else ``"k{n}"`` with n
    the number of straddling units (``"k0"``: the function is linear; each straddling unit adds a kink)."""
    counts = unit_counts(states).cpu().numpy()
    width = states.shape[-1]
    return np.array(["dead" if d == width else f"k{s}" for d, _, s in counts])


MODE3_RULES = ("seed", "function")
"""``"seed"``: mode 3 needs the seed's full sign signature. ``"function"``: only the sign that changes
the function (the straddling unit's output weight negative, a concave crease)."""


def mechanism_labels(
    network: NetworkLike, inputs: Float[Tensor, "*model n d_in"], *, mode3_rule: str = "seed"
) -> np.ndarray:
    """The seed's width-2 mode of every network (see :data:`MODES` and the module docstring).

    With ``mode3_rule="seed"`` (default) mode 3 is the seed's signature: one straddling and one
    active unit, both output weights negative, output bias positive. An always-active unit only
    adds a linear term, which a unit of either output sign can supply (flip its weights, shift its
    bias, absorb the constant into ``b_out``), so those two signs pick one of several equivalent
    ways to write the same function. ``mode3_rule="function"`` keeps only the sign that matters:
    the straddling unit's output weight is negative, so F = min of two planes, as in
    :func:`handcrafted_mode3_network`.
    """
    check_choice("mode3_rule", mode3_rule, MODE3_RULES)
    params = network_parameters(network)
    if params["W_in"].shape[2] != 2:
        raise ValueError(
            f"mechanism_labels needs width-2 networks (modes 1/2/2.5/3), got width {params['W_in'].shape[2]}; "
            "use unit_pattern_labels or kink_labels for other widths"
        )
    states = unit_states(params, inputs).cpu()
    counts = unit_counts(states).numpy()
    w_out = params["W_out"][..., 0].cpu()
    b_out = params["b_out"][..., 0].cpu()
    if mode3_rule == "seed":
        signs_ok = ((w_out < 0).all(dim=1) & (b_out > 0)).numpy()
    else:
        signs_ok = ((w_out < 0) | (states != STRADDLING)).all(dim=1).numpy()
    labels = np.full(states.shape[0], "other", dtype=object)
    dead, active, straddling = counts[:, 0], counts[:, 1], counts[:, 2]
    labels[dead == 2] = "1"
    labels[dead == 1] = "2"
    labels[active == 2] = "2.5"
    labels[(straddling == 1) & (active == 1) & signs_ok] = "3"
    return labels.astype(str)


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
    "HANDCRAFTED_PLANES",
    "MODE3_RULES",
    "MODES",
    "STRADDLING",
    "handcrafted_mode3_network",
    "kink_labels",
    "mechanism_labels",
    "network_parameters",
    "preactivations",
    "unit_counts",
    "unit_pattern_labels",
    "unit_states",
]
