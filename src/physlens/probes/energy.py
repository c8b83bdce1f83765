"""Energy along a model's rollouts: does the energy it predicts decay as the damping says?

For the damped oscillator the energy E = ½(p² + ω0²x²) decays on average as e^{−2γt} (exactly,
dE/dt = −2γp², which oscillates around −2γE). Fitting log E(t) = c − 2γ̂t over a rollout of several
periods reads a damping rate off the trajectory alone; the same fit on the true trajectory is the
reference, since the oscillation of dE/dt biases both fits alike.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from physlens._validation import check_positive_int
from physlens.systems.oscillator import Trajectories, energy
from physlens.training.rollouts import rollout


def decay_rate(energies: np.ndarray, dt: float) -> np.ndarray:
    """Per row of ``energies`` (``[traj, step]``, positive), γ̂ = −slope/2 of the least-squares line
    through log E against time ``k·dt``: the damping rate the energy's decay implies."""
    energies = np.asarray(energies, dtype=float)
    if energies.ndim != 2 or energies.shape[1] < 2:
        raise ValueError(f"energies must be [traj, step] with at least 2 steps, got shape {list(energies.shape)}")
    if not np.isfinite(energies).all() or (energies <= 0).any():
        raise ValueError("energies must be finite and positive to take their logarithm")
    time = dt * np.arange(energies.shape[1])
    centred = time - time.mean()
    logs = np.log(energies)
    slope = (logs - logs.mean(axis=1, keepdims=True)) @ centred / (centred @ centred)
    return -slope / 2


@dataclass
class EnergyDecay:
    """Damping rates read off the energy of a model's rollouts and of the true trajectories."""

    model_gamma: np.ndarray  # [traj] γ̂ from the model's rolled-out energy
    truth_gamma: np.ndarray  # [traj] γ̂ from the true trajectory's energy (the same fit)
    true_gamma: np.ndarray  # [traj] the label
    final_ratio_error: np.ndarray  # [traj] |E_model(T)/E_model(0) − E_true(T)/E_true(0)| / (E_true(T)/E_true(0))
    n_steps: int

    def r2(self) -> float:
        """R² of the model's γ̂ against the true trajectory's γ̂ (the fit's own bias removed)."""
        residual = ((self.model_gamma - self.truth_gamma) ** 2).sum()
        spread = ((self.truth_gamma - self.truth_gamma.mean()) ** 2).sum()
        return float(1 - residual / spread) if spread > 0 else float("nan")

    def rmse(self) -> float:
        """Root-mean-square difference between the model's and the true trajectory's γ̂."""
        return float(np.sqrt(((self.model_gamma - self.truth_gamma) ** 2).mean()))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary."""
        return {"r2": self.r2(), "rmse": self.rmse(), "median_final_ratio_error": float(np.median(self.final_ratio_error)),
                "truth_fit_rmse_vs_label": float(np.sqrt(((self.truth_gamma - self.true_gamma) ** 2).mean())), "n_steps": self.n_steps,
                "n_trajectories": int(self.model_gamma.shape[0])}


def rollout_energy_decay(model: Callable[[Tensor], Tensor], trajectories: Trajectories, *, context_len: int) -> EnergyDecay:
    """Roll ``model`` out from the first ``context_len`` states of ``trajectories`` to their end and
    compare the damping rate its energy implies with the true trajectory's (energies with each
    trajectory's own ω0, in float64)."""
    context_len = check_positive_int("context_len", context_len)
    n_steps = trajectories.n_steps - context_len
    if n_steps < 2:
        raise ValueError(f"trajectories must run at least 2 steps past context_len={context_len}, got {trajectories.n_steps} steps")
    parameters = list(model.parameters()) if hasattr(model, "parameters") else []
    dtype = parameters[0].dtype if parameters else trajectories.states.dtype
    device = parameters[0].device if parameters else trajectories.states.device
    context = trajectories.states[:, :context_len].to(device=device, dtype=dtype)
    with torch.no_grad():
        predicted = rollout(model, context, n_steps).to(device="cpu", dtype=torch.float64)
    truth = trajectories.states[:, context_len:].to(device="cpu", dtype=torch.float64)
    omega0 = trajectories.omega0.to(device="cpu", dtype=torch.float64)[:, None]
    model_energy, true_energy = energy(predicted, omega0).numpy(), energy(truth, omega0).numpy()
    if (model_energy <= 0).any() or not np.isfinite(model_energy).all():
        raise ValueError("the model's rollout reaches zero or non-finite energy: no damping rate can be read from it")
    model_ratio, true_ratio = model_energy[:, -1] / model_energy[:, 0], true_energy[:, -1] / true_energy[:, 0]
    return EnergyDecay(
        model_gamma=decay_rate(model_energy, trajectories.dt), truth_gamma=decay_rate(true_energy, trajectories.dt),
        true_gamma=trajectories.gamma.double().cpu().numpy(), final_ratio_error=np.abs(model_ratio - true_ratio) / true_ratio, n_steps=n_steps,
    )


__all__ = ["EnergyDecay", "decay_rate", "rollout_energy_decay"]
