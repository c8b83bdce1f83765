"""Saliency: the Jacobian ∂Y_t/∂X_s of every output position and component w.r.t. every input one.

This is the seed's Fig. 2: a model that ignores other time steps has a Jacobian that is
block-diagonal in position. Computed with ``torch.func.jacrev`` (a vmapped backward pass).
"""

from __future__ import annotations

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


__all__ = ["off_diagonal_fraction", "saliency", "saliency_matrix"]
