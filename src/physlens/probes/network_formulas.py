"""Formulas for what trained networks compute: the exact piecewise-linear form and a compact formula
of the best F = m·a network of each mode, and a compact formula of a transformer's probe value."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import sympy
import torch
from jaxtyping import Float
from torch import Tensor

from physlens.models.mlp import MLPEnsemble, TinyMLP
from physlens.probes.linear_probe import LinearProbe
from physlens.probes.symbolic import SymbolicDistiller, record_io

FMA_VARIABLES = ("m", "a")
"""The F = m·a networks' inputs, as the formulas name them."""


def relu_network_form(network: TinyMLP, inputs: Float[Tensor, "n 2"], *, digits: int = 4) -> sympy.Expr:
    """The exact form ``b_out + Σ_u W_out[u]·max(0, pre_u(m, a))`` of a one-hidden-layer ReLU
    network, numbers to ``digits`` significant digits. Each hidden pre-activation is linear in the
    inputs, so a degree-1 distillation with three terms on ``inputs`` recovers it exactly."""
    form = sympy.Float(float(network.b_out.detach()[0]), digits)
    for unit in range(network.cfg.d_hidden):
        X, y = record_io(network, inputs, output_hook="hook_pre", component=unit)
        pre = SymbolicDistiller(variable_names=list(FMA_VARIABLES), max_terms=3, max_degree=1, unary=()).fit(X, y).expression_
        form += sympy.Float(float(network.W_out.detach()[unit, 0]), digits) * sympy.Max(0, pre)
    return form


@dataclass(frozen=True)
class ModeFormula:
    """What the best network of one mechanism mode computes."""

    mode: str
    """The mode's label."""
    count: int
    """How many networks of the ensemble have this mode."""
    member: int
    """Index of its best network (lowest validation MSE) in the ensemble."""
    val_mse: float
    """That network's validation MSE."""
    exact_form: sympy.Expr
    """Its exact piecewise-linear form (:func:`relu_network_form`)."""
    distiller: SymbolicDistiller
    """A compact formula for its output, fitted on its validation inputs."""


def mode_formulas(
    ensemble: MLPEnsemble, val_inputs: Float[Tensor, "model n 2"], val_loss: Float[Tensor, " model"], modes: np.ndarray,
    **distiller_args: Any,
) -> list[ModeFormula]:
    """For each mode in ``modes`` (one label per network, sorted), the network of that mode with the
    lowest ``val_loss``: its exact form and a compact formula for its output on its own validation
    inputs. ``distiller_args`` go to :class:`~physlens.probes.symbolic.SymbolicDistiller`."""
    formulas = []
    for mode in sorted(set(modes)):
        members = np.flatnonzero(modes == mode)
        best = int(members[np.argmin(val_loss[members].numpy())])
        network = ensemble.member(best)
        inputs = val_inputs[best]
        X, y = record_io(network, inputs)
        distiller = SymbolicDistiller(variable_names=list(FMA_VARIABLES), **distiller_args).fit(X, y)
        exact = relu_network_form(network, inputs)
        formulas.append(ModeFormula(str(mode), len(members), best, float(val_loss[best]), exact, distiller))
    return formulas


@dataclass(frozen=True)
class ProbeFormula:
    """A linear probe of a hooked activation and a compact formula of its value."""

    probe: LinearProbe
    """The probe, fitted on the activation."""
    distiller: SymbolicDistiller
    """Its value (with intercept) as a function of the current state (x, p)."""


def probe_value_formula(
    model: torch.nn.Module, inputs: Float[Tensor, "batch pos 2"], target: Float[Tensor, " batch"], *, hook: str, seed: int = 0,
    **distiller_args: Any,
) -> ProbeFormula:
    """Probe ``hook`` at the last position of ``inputs`` [batch, pos, 2] for ``target`` with a ridge
    :class:`~physlens.probes.linear_probe.LinearProbe` (5 folds, ``seed``), then distil the probe's
    value as a function of the last input state (x, p). On a model whose activation there is an affine
    map of (x, p), a probe for the next x recovers the propagator's first row."""
    with torch.no_grad():
        _, cache = model.run_with_cache(inputs, names_filter=hook)
    activation = cache[hook][:, -1].double().numpy()  # [batch, d_model] at the last position
    probe = LinearProbe(n_folds=5, seed=seed).fit(activation, target.double().numpy())
    direction = torch.as_tensor(np.asarray(probe.coef_), dtype=torch.float64)
    X, y = record_io(model, inputs, output_hook=hook, position=-1, direction=direction.to(inputs.dtype))
    last_state = X[:, -2:]  # the current state (x_t, p_t) of each sequence
    distiller = SymbolicDistiller(variable_names=["x", "p"], **distiller_args).fit(last_state, y + probe.intercept_)
    return ProbeFormula(probe, distiller)


__all__ = ["FMA_VARIABLES", "ModeFormula", "ProbeFormula", "mode_formulas", "probe_value_formula", "relu_network_form"]
