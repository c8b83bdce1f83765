"""The implied-parameter readout: the one-step map, ω0 and γ a predictor's own predictions imply.

Per trajectory, the map K̂ with ŷ_t ≈ K̂ s_t is fitted by least squares to the predictor's predictions
over the context, and ω0, γ are read off K̂ (:func:`~physlens.systems.parameters_from_propagator`). A
predictor that steps with the true map implies the true ω0; one that never reads the context implies
the same ω0 for every trajectory, whatever its accuracy.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from physlens._validation import check_nonnegative_int, check_positive_int
from physlens.systems.oscillator import STATE_DIM, Trajectories, least_squares_map, parameters_from_propagator, propagator


def predictor_dtype(model: Callable[[Tensor], Tensor], default: torch.dtype = torch.float64) -> tuple[torch.dtype, Any]:
    """The dtype and device a predictor computes in: its first floating parameter's or buffer's, else ``default`` on the CPU."""
    for getter in ("parameters", "buffers"):
        tensors = list(getattr(model, getter)()) if hasattr(model, getter) else []
        floating = [t for t in tensors if t.is_floating_point()]
        if floating:
            return floating[0].dtype, floating[0].device
    return default, torch.device("cpu")


def predict_all_positions(model: Callable[[Tensor], Tensor], states: Float[Tensor, "batch pos 2"]) -> Float[Tensor, "batch pos 2"]:
    """The model's prediction at every position of ``states``, run in the model's dtype, returned in float64 on the CPU."""
    dtype, device = predictor_dtype(model)
    with torch.no_grad():
        out = model(states.to(device=device, dtype=dtype))
    if out.shape != states.shape:
        raise ValueError(f"the model must predict the next state at every position ({list(states.shape)}), got {list(out.shape)}")
    return out.to(device="cpu", dtype=torch.float64)


def default_start(n_positions: int) -> int:
    """The first position a readout uses by default: the second half of a context of ``n_positions``.

    A causal model (and every organism) has seen only t + 1 states at position t; early positions carry its
    shortest, least informed predictions, which would dominate the fit (on the shipped variable-ω0
    transformer, positions from 2 give an implied-ω0 RMSE of 0.15, positions from 20 one of 0.014)."""
    return check_positive_int("n_positions", n_positions) // 2


def implied_kernel(states: Float[Tensor, "batch pos 2"], predictions: Float[Tensor, "batch pos 2"], *,
                   start: int | None = None) -> Float[Tensor, "batch 2 2"]:
    """Per trajectory, the least-squares map K̂ with ``predictions[:, t] ≈ K̂ states[:, t]`` over positions
    t ≥ ``start`` (default :func:`default_start`)."""
    if states.ndim != 3 or states.shape[-1] != STATE_DIM or predictions.shape != states.shape:
        raise ValueError(f"states and predictions must both have shape [batch, pos, 2], got {list(states.shape)} and {list(predictions.shape)}")
    start = default_start(states.shape[1]) if start is None else check_nonnegative_int("start", start)
    if states.shape[1] - start < 2:
        raise ValueError(f"the fit needs at least 2 positions from start={start}, but the context holds {states.shape[1]}")
    current, predicted = states[:, start:].to(torch.float64), predictions[:, start:].to(torch.float64)
    return least_squares_map(current, predicted)


def parameter_directions(omega0: Float[Tensor, " batch"], gamma: Float[Tensor, " batch"], dt: float) -> Float[Tensor, "batch 2 2 2"]:
    """∂K/∂ω0 and ∂K/∂γ of the exact propagator at each trajectory's parameters, stacked on the last axis
    (central differences, step 1e-6 relative, float64)."""
    omega0, gamma = omega0.to(torch.float64), gamma.to(torch.float64)
    h_omega = 1e-6 * omega0
    h_gamma = 1e-6 * torch.clamp(gamma, min=1e-3)
    d_omega = (propagator(omega0 + h_omega, gamma, dt) - propagator(omega0 - h_omega, gamma, dt)) / (2 * h_omega)[:, None, None]
    d_gamma = (propagator(omega0, gamma + h_gamma, dt) - propagator(omega0, (gamma - h_gamma).clamp_min(0), dt)) / (
        (gamma + h_gamma) - (gamma - h_gamma).clamp_min(0))[:, None, None]
    return torch.stack([d_omega, d_gamma], dim=-1)


@dataclass
class ImpliedParameters:
    """The implied map and parameters of a predictor, per trajectory, beside the truth."""

    kernel: np.ndarray  # [traj, 2, 2] implied one-step map K̂
    true_kernel: np.ndarray  # [traj, 2, 2] exact propagator of the trajectory's ω0 and γ
    omega0: np.ndarray  # [traj] implied ω0 (NaN where K̂ is no underdamped rotation)
    gamma: np.ndarray  # [traj] implied γ (NaN likewise)
    true_omega0: np.ndarray  # [traj]
    true_gamma: np.ndarray  # [traj]
    kernel_error: np.ndarray  # [traj] ‖K̂ − K‖_F / ‖K‖_F
    along_parameters: np.ndarray  # [traj, 2] first-order ω0 and γ shifts that best explain K̂ − K
    fit_residual: np.ndarray  # [traj] ‖ŷ − K̂ s‖ / ‖ŷ‖ over the fitted positions: how far from one linear map
    parameter_share: float  # share of Σ‖K̂ − K‖² in the span of ∂K/∂ω0 and ∂K/∂γ
    start: int  # first position the fit used
    dt: float

    @property
    def n_invalid(self) -> int:
        """Trajectories whose implied map is no underdamped rotation (NaN parameters)."""
        return int(np.isnan(self.omega0).sum())

    @property
    def omega0_rmse(self) -> float:
        """Root-mean-square error of the implied ω0 over the valid trajectories."""
        valid = ~np.isnan(self.omega0)
        return float(np.sqrt(np.mean((self.omega0[valid] - self.true_omega0[valid]) ** 2))) if valid.any() else float("nan")

    @property
    def omega0_r2(self) -> float:
        """R² of the implied ω0 against the true ω0 (valid trajectories; NaN if the true ω0 does not vary)."""
        valid = ~np.isnan(self.omega0)
        truth = self.true_omega0[valid]
        spread = float(((truth - truth.mean()) ** 2).sum()) if valid.any() else 0.0
        return float(1 - ((self.omega0[valid] - truth) ** 2).sum() / spread) if spread > 0 else float("nan")

    def rmse(self, parameter: str) -> float:
        """Root-mean-square error of the implied ``parameter`` (``"omega0"`` or ``"gamma"``) over the valid trajectories."""
        implied, truth = self._pair(parameter)
        return float(np.sqrt(np.mean((implied - truth) ** 2))) if implied.size else float("nan")

    def r2(self, parameter: str) -> float:
        """R² of the implied ``parameter`` (``"omega0"`` or ``"gamma"``) against its true value over the valid
        trajectories (NaN if the true value does not vary)."""
        implied, truth = self._pair(parameter)
        spread = float(((truth - truth.mean()) ** 2).sum()) if implied.size else 0.0
        return float(1 - ((implied - truth) ** 2).sum() / spread) if spread > 0 else float("nan")

    def _pair(self, parameter: str) -> tuple[np.ndarray, np.ndarray]:
        if parameter not in ("omega0", "gamma"):
            raise ValueError(f"parameter must be 'omega0' or 'gamma', got {parameter!r}")
        valid = ~np.isnan(self.omega0)
        return getattr(self, parameter)[valid], getattr(self, f"true_{parameter}")[valid]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary."""
        valid = ~np.isnan(self.omega0)
        return {
            "n_trajectories": int(len(self.omega0)),
            "n_invalid": self.n_invalid,
            "omega0_rmse": self.omega0_rmse,
            "omega0_r2": self.omega0_r2,
            "omega0_median_bias": float(np.median(self.omega0[valid] - self.true_omega0[valid])) if valid.any() else float("nan"),
            "gamma_median": float(np.median(self.gamma[valid])) if valid.any() else float("nan"),
            "gamma_rmse": self.rmse("gamma"),
            "gamma_r2": self.r2("gamma"),
            "kernel_error_median": float(np.median(self.kernel_error)),
            "parameter_share": self.parameter_share,
            "fit_residual_median": float(np.median(self.fit_residual)),
            "start": self.start,
        }


def implied_parameters(model: Callable[[Tensor], Tensor], trajectories: Trajectories, *, start: int | None = None) -> ImpliedParameters:
    """Run ``model`` on the states of ``trajectories`` (the whole sequence is the context) and read off the
    one-step map its predictions imply at positions ≥ ``start``, with the ω0 and γ of that map.

    ``start`` skips positions where a causal predictor has seen too little to have inferred anything
    (default :func:`default_start`, the second half of the context; 2 is the first position with two
    transitions behind it)."""
    states = trajectories.states.to(device="cpu", dtype=torch.float64)
    predictions = predict_all_positions(model, states)
    return readout_from_predictions(states, predictions, trajectories.omega0, trajectories.gamma, trajectories.dt, start=start)


def readout_from_predictions(states: Float[Tensor, "batch pos 2"], predictions: Float[Tensor, "batch pos 2"],
                             omega0: Float[Tensor, " batch"], gamma: Float[Tensor, " batch"], dt: float, *,
                             start: int | None = None) -> ImpliedParameters:
    """:func:`implied_parameters` from predictions already made: the implied map, its parameters and errors."""
    states, predictions = states.to(torch.float64).cpu(), predictions.to(torch.float64).cpu()
    omega0, gamma = omega0.to(torch.float64).cpu(), gamma.to(torch.float64).cpu()
    start = default_start(states.shape[1]) if start is None else check_nonnegative_int("start", start)
    kernel = implied_kernel(states, predictions, start=start)
    truth = propagator(omega0, gamma, dt)
    params = parameters_from_propagator(kernel, dt)
    deviation = (kernel - truth).reshape(-1, 4)  # [traj, 4]
    directions = parameter_directions(omega0, gamma, dt).reshape(-1, 4, 2)  # [traj, 4, 2]
    shifts = (torch.linalg.pinv(directions) @ deviation[:, :, None])[..., 0]  # [traj, 2]
    explained = (directions @ shifts[:, :, None])[..., 0]
    total = float(deviation.pow(2).sum())
    share = float(explained.pow(2).sum()) / total if total > 0 else float("nan")
    fitted = torch.einsum("bij,bpj->bpi", kernel, states[:, start:])
    residual = torch.linalg.vector_norm(predictions[:, start:] - fitted, dim=(1, 2)) / torch.linalg.vector_norm(predictions[:, start:], dim=(1, 2))
    return ImpliedParameters(
        kernel=kernel.numpy(), true_kernel=truth.numpy(), omega0=params["omega0"].numpy(), gamma=params["gamma"].numpy(),
        true_omega0=omega0.numpy(), true_gamma=gamma.numpy(),
        kernel_error=(torch.linalg.matrix_norm(kernel - truth) / torch.linalg.matrix_norm(truth)).numpy(),
        along_parameters=shifts.numpy(), fit_residual=residual.numpy(), parameter_share=share, start=start, dt=float(dt),
    )


__all__ = ["ImpliedParameters", "default_start", "implied_kernel", "implied_parameters", "parameter_directions", "predict_all_positions",
           "predictor_dtype", "readout_from_predictions"]
