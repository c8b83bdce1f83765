"""Saliency: the Jacobian ∂Y_t/∂X_s of every output position and component w.r.t. every input one,
and integrated gradients of one output over the input positions.

The Jacobian is the seed's Fig. 2: a model that ignores other time steps has a Jacobian that is
block-diagonal in position. Computed with ``torch.func.jacrev`` (a vmapped backward pass).
Integrated gradients (through captum, the optional ``captum`` extra) split one prediction's change
from a baseline input among the input positions and components, and add up to that change.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from physlens._validation import check_finite, check_positive_int
from physlens.probes.activations import model_device


def saliency(
    model: Any,
    inputs: Float[Tensor, "batch pos d_in"],
    *,
    batch_size: int = 256,
    device: str | torch.device | None = None,
) -> Float[Tensor, "batch pos_out d_out pos_in d_in"]:
    """∂ model(inputs)[b, t, i] / ∂ inputs[b, s, j] for every example, output and input.

    Examples must not interact inside the model (true of every eval-mode model here: no batch norm),
    so the Jacobian of the batch-summed output gives every example's Jacobian from one forward pass
    and a vmapped backward pass per output coordinate (``torch.func.jacrev``).
    """
    if not isinstance(inputs, Tensor) or inputs.ndim != 3:
        raise ValueError(f"inputs must have shape [batch, pos, d_in], got {getattr(inputs, 'shape', type(inputs).__name__)}")
    check_finite("inputs", inputs)
    batch_size = check_positive_int("batch_size", batch_size)
    device = torch.device(device) if device is not None else model_device(model)

    def summed(x: Tensor) -> Tensor:
        return model(x).sum(dim=0)  # [pos_out, d_out]

    jacobian = torch.func.jacrev(summed)
    parts = []
    for start in range(0, inputs.shape[0], batch_size):
        chunk = inputs[start : start + batch_size].to(device)
        jac = jacobian(chunk)  # [pos_out, d_out, batch, pos_in, d_in]
        parts.append(jac.permute(2, 0, 1, 3, 4).detach())
    return torch.cat(parts)


def saliency_matrix(jacobian: Float[Tensor, "batch pos_out d_out pos_in d_in"], reduce: str = "mean_abs") -> Tensor:
    """The seed's Fig. 2 layout: ``[pos_out · d_out, pos_in · d_in]`` averaged over the batch
    (``"mean_abs"``: mean of |∂Y/∂X|; ``"mean"``: signed mean)."""
    if jacobian.ndim != 5:
        raise ValueError(f"jacobian must have shape [batch, pos_out, d_out, pos_in, d_in], got {list(jacobian.shape)}")
    if reduce not in ("mean_abs", "mean"):
        raise ValueError(f"reduce must be 'mean_abs' or 'mean', got {reduce!r}")
    reduced = jacobian.abs().mean(dim=0) if reduce == "mean_abs" else jacobian.mean(dim=0)
    p_out, d_out, p_in, d_in = reduced.shape
    return reduced.reshape(p_out * d_out, p_in * d_in)


def off_diagonal_fraction(jacobian: Float[Tensor, "batch pos_out d_out pos_in d_in"]) -> float:
    """Share of the Jacobian's squared norm on other positions (s ≠ t): 0 for a block-diagonal map."""
    if jacobian.ndim != 5 or jacobian.shape[1] != jacobian.shape[3]:
        raise ValueError(f"jacobian must be [batch, pos, d_out, pos, d_in] with equal positions, got {list(jacobian.shape)}")
    squared = jacobian.pow(2).sum(dim=(0, 2, 4))  # [pos_out, pos_in]
    total = squared.sum()
    if float(total) == 0:
        raise ValueError("the Jacobian is identically zero")
    return float((total - squared.diagonal().sum()) / total)


@dataclass
class InputAttribution:
    """Integrated gradients of one prediction, per example, input position and component.

    Completeness: ``attributions`` sum over positions and components to ``output −
    baseline_output`` up to ``completeness_error`` (the error of the path integral's quadrature).
    """

    attributions: Tensor  # [batch, pos, d_in]
    output: Tensor  # [batch]: the attributed prediction on the inputs
    baseline_output: Tensor  # [batch]: the same prediction on the baselines
    completeness_error: Tensor  # [batch]: attributions.sum() − (output − baseline_output), from captum
    output_position: int  # the attributed prediction's position
    output_component: int  # ... and component (0: x, 1: p)

    @property
    def per_position(self) -> Tensor:
        """Attributions summed over the input components: ``[batch, pos]``."""
        return self.attributions.sum(dim=-1)

    @property
    def relative_completeness_error(self) -> float:
        """Largest |completeness_error| over the batch, relative to the largest |output − baseline_output|."""
        scale = (self.output - self.baseline_output).abs().max().clamp_min(torch.finfo(self.output.dtype).tiny)
        return float(self.completeness_error.abs().max() / scale)

    def check_completeness(self, rtol: float = 1e-3) -> None:
        """Raise if the attributions miss ``output − baseline_output`` by more than ``rtol`` of its size
        (too few integration steps for this model)."""
        error = self.relative_completeness_error
        if error > rtol:
            raise ValueError(
                f"integrated gradients miss output − baseline by {error:.3g} of its size (rtol {rtol:g}); raise n_steps"
            )


def integrated_gradients(
    model: Any,
    inputs: Float[Tensor, "batch pos d_in"],
    *,
    output_position: int = -1,
    output_component: int = 0,
    baselines: Float[Tensor, "batch pos d_in"] | float = 0.0,
    n_steps: int = 64,
    method: str = "gausslegendre",
    internal_batch_size: int | None = None,
    device: str | torch.device | None = None,
) -> InputAttribution:
    """Integrated gradients of the prediction ``model(inputs)[:, output_position, output_component]``
    over every input position and component, computed by captum's ``IntegratedGradients``.

    The path runs from ``baselines`` (a tensor shaped like ``inputs``, or one value for every entry;
    0 is the oscillator at rest) to ``inputs`` in ``n_steps`` steps of ``method`` (captum's
    quadratures: ``"gausslegendre"``, ``"riemann_trapezoid"``, ...). Returns the attributions with
    their completeness check. Needs the ``captum`` extra (``pip install 'physlens[captum]'``).
    """
    try:
        from captum.attr import IntegratedGradients
    except ImportError:
        raise ImportError("integrated_gradients needs captum: pip install 'physlens[captum]' (or pip install captum)") from None
    if not isinstance(inputs, Tensor) or inputs.ndim != 3:
        raise ValueError(f"inputs must have shape [batch, pos, d_in], got {getattr(inputs, 'shape', type(inputs).__name__)}")
    check_finite("inputs", inputs)
    n_steps = check_positive_int("n_steps", n_steps)
    if n_steps < 2:
        raise ValueError(f"n_steps must be at least 2 (captum's quadratures need two points), got {n_steps}")
    if internal_batch_size is not None:
        internal_batch_size = check_positive_int("internal_batch_size", internal_batch_size)
    device = torch.device(device) if device is not None else model_device(model)
    inputs = inputs.to(device)
    n_pos, d_in = inputs.shape[1], inputs.shape[2]
    if isinstance(output_position, bool) or not isinstance(output_position, int) or not -n_pos <= output_position < n_pos:
        raise ValueError(f"output_position must be an integer in {-n_pos}..{n_pos - 1}, got {output_position!r}")
    output_position %= n_pos
    if isinstance(baselines, Tensor):
        if baselines.shape != inputs.shape:
            raise ValueError(f"baselines must have the inputs' shape {list(inputs.shape)}, got {list(baselines.shape)}")
        check_finite("baselines", baselines)
        baselines = baselines.to(device=device, dtype=inputs.dtype)
    elif isinstance(baselines, (int, float)) and not isinstance(baselines, bool):
        baselines = torch.full_like(inputs, float(baselines))
    else:
        raise ValueError(f"baselines must be a tensor shaped like inputs or a number, got {type(baselines).__name__}")
    with torch.no_grad():
        probe = model(inputs[:1])
    if probe.ndim != 3 or probe.shape[1] != n_pos:
        raise ValueError(f"the model must return [batch, pos, d_out] predictions, got {list(probe.shape)}")
    d_out = probe.shape[2]
    if isinstance(output_component, bool) or not isinstance(output_component, int) or not 0 <= output_component < d_out:
        raise ValueError(f"output_component must be an integer in 0..{d_out - 1}, got {output_component!r}")

    def prediction(x: Tensor) -> Tensor:
        return model(x)[:, output_position, output_component]

    attributions, delta = IntegratedGradients(prediction).attribute(
        inputs, baselines=baselines, n_steps=n_steps, method=method, internal_batch_size=internal_batch_size,
        return_convergence_delta=True,
    )
    with torch.no_grad():
        output, baseline_output = prediction(inputs), prediction(baselines)
    return InputAttribution(
        attributions=attributions.detach(),
        output=output,
        baseline_output=baseline_output,
        completeness_error=delta.detach().to(output.dtype),
        output_position=output_position,
        output_component=output_component,
    )


__all__ = ["InputAttribution", "integrated_gradients", "off_diagonal_fraction", "saliency", "saliency_matrix"]
