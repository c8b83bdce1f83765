"""Noise-injection curves: how a predictor's next-step error grows with observation noise on its context.

Exact algorithms make no error on clean data, so clean data cannot tell them apart; under noise they
differ. Noise of relative size σ (see :func:`~physlens.models.organisms.observation_scale`) is added to
every context state, the prediction after the last state is compared with the clean truth, and the
one-step map implied by the predictions (regressed on the states the model saw) with the true map.
In-context least squares over k states, the AR-k filter and finite differences amplify noise by very
different factors, so the curve reads off the algorithm and its effective context. The noise draw is
fixed by ``seed``, so two predictors run with the same seed see the same noisy contexts.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from physlens._validation import check_nonnegative_int
from physlens.models.organisms import check_noise, observation_scale
from physlens.probes.implied import default_start, implied_kernel, predict_all_positions, predictor_dtype
from physlens.systems.oscillator import Trajectories, propagator

RESOLUTION_FACTOR = 10.0
"""Injected noise must be at least this many units in the last place of the largest state component in
the model's dtype: below that, casting the noisy states to the model's dtype rounds the noise away."""


def smallest_representable_sigma(states: Tensor, dtype: torch.dtype) -> float:
    """The smallest relative noise σ that ``dtype`` represents on ``states`` ``[batch, pos, 2]``
    (:data:`RESOLUTION_FACTOR` · eps · max|s| / scale, over the trajectories)."""
    if not dtype.is_floating_point:
        raise ValueError(f"dtype must be a floating-point dtype, got {dtype}")
    states = states.to(torch.float64)
    ratio = states.abs().amax(dim=(1, 2)) / observation_scale(states).clamp_min(torch.finfo(torch.float64).tiny)
    return float(RESOLUTION_FACTOR * torch.finfo(dtype).eps * ratio.max())


def check_sigmas(sigmas: Sequence[float], states: Tensor, dtype: torch.dtype) -> list[float]:
    """The noise grid as floats, or a ValueError naming ``sigmas`` if one is negative, not finite, or
    nonzero but too small for ``dtype`` to represent on ``states``."""
    values = [check_noise("sigmas", s) for s in sigmas]
    if not values:
        raise ValueError("sigmas must hold at least one noise size")
    floor = smallest_representable_sigma(states, dtype)
    too_small = [s for s in values if 0 < s < floor]
    if too_small:
        raise ValueError(f"sigmas {too_small} are below the resolution of the model's dtype {dtype} on these states "
                         f"(smallest representable relative noise {floor:.3g}): use 0 or sizes >= {floor:.3g}")
    return values


@dataclass
class NoiseCurve:
    """A predictor's response to observation noise σ on its context, per σ of the grid.

    ``error`` and ``kernel_error`` are medians over trajectories of ‖ŷ − y‖/‖y‖ (last position, clean
    truth) and ‖K̂ − K‖_F/‖K‖_F (map implied by the predictions at positions ≥ ``start``).
    ``predictions`` and ``kernels`` keep the per-trajectory values so two curves drawn with the same
    seed can be compared trajectory by trajectory.
    """

    sigmas: np.ndarray  # [sigma]
    error: np.ndarray  # [sigma]
    kernel_error: np.ndarray  # [sigma]
    predictions: np.ndarray  # [sigma, traj, 2] prediction after the last context state
    kernels: np.ndarray  # [sigma, traj, 2, 2] implied one-step maps
    truth: np.ndarray  # [traj, 2] the clean next state after the context
    true_kernel: np.ndarray  # [traj, 2, 2]
    context_length: int
    start: int
    seed: int
    dtype: str = "float64"  # the dtype the model computed in

    @property
    def n_trajectories(self) -> int:
        """Number of trajectories behind every point."""
        return int(self.truth.shape[0])

    def rms_error(self) -> np.ndarray:
        """Per σ, the root-mean-square over trajectories of ‖ŷ − y‖/‖y‖ (last position): unlike the median,
        independent error sources add in quadrature, so the error noise added is √(rms(σ)² − rms(0)²)."""
        relative = ((self.predictions - self.truth) ** 2).sum(-1) / (self.truth**2).sum(-1)  # [sigma, traj]
        return np.sqrt(relative.mean(axis=1))

    def gain(self) -> np.ndarray:
        """``error / σ`` per σ > 0 (NaN at σ = 0): how many times the injected noise the error is."""
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(self.sigmas > 0, self.error / np.where(self.sigmas > 0, self.sigmas, 1.0), np.nan)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (the per-trajectory arrays are left out)."""
        return {"sigmas": self.sigmas.tolist(), "error": self.error.tolist(), "kernel_error": self.kernel_error.tolist(),
                "rms_error": self.rms_error().tolist(), "gain": [None if np.isnan(g) else float(g) for g in self.gain()],
                "context_length": self.context_length,
                "start": self.start, "seed": self.seed, "dtype": self.dtype, "n_trajectories": self.n_trajectories}


def noise_curve(model: Callable[[Tensor], Tensor], trajectories: Trajectories, sigmas: Sequence[float], *, seed: int,
                start: int | None = None) -> NoiseCurve:
    """The noise-injection curve of ``model`` on ``trajectories``: their first ``n_steps − 1`` states are
    the context, the last the clean target. The same standard-normal draw (from ``seed``) is scaled to
    every σ, so the curve is smooth in σ and shared by every model run with the same seed. The implied
    maps use positions from ``start`` on (default :func:`~physlens.probes.default_start`).

    ``model`` runs in its own dtype; a nonzero σ too small for that dtype to represent is refused.
    """
    seed = check_nonnegative_int("seed", seed)
    start = default_start(trajectories.n_steps - 1) if start is None else check_nonnegative_int("start", start)
    if trajectories.n_steps < 2:
        raise ValueError(f"trajectories need a context and a target: at least 2 steps, got {trajectories.n_steps}")
    states = trajectories.states.to(device="cpu", dtype=torch.float64)
    context, targets = states[:, :-1], states[:, 1:]
    dtype, _ = predictor_dtype(model)
    grid = check_sigmas(sigmas, context, dtype)
    draw = torch.randn(context.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    unit = observation_scale(context)[:, None, None] * draw
    truth = targets[:, -1]
    true_kernel = propagator(trajectories.omega0.double().cpu(), trajectories.gamma.double().cpu(), trajectories.dt)
    errors, kernel_errors, predictions, kernels = [], [], [], []
    for sigma in grid:
        noisy = context + sigma * unit
        predicted = predict_all_positions(model, noisy)
        kernel = implied_kernel(noisy, predicted, start=start)
        last = predicted[:, -1]
        errors.append(float((torch.linalg.vector_norm(last - truth, dim=-1) / torch.linalg.vector_norm(truth, dim=-1)).median()))
        kernel_errors.append(float((torch.linalg.matrix_norm(kernel - true_kernel) / torch.linalg.matrix_norm(true_kernel)).median()))
        predictions.append(last.numpy())
        kernels.append(kernel.numpy())
    return NoiseCurve(sigmas=np.array(grid), error=np.array(errors), kernel_error=np.array(kernel_errors),
                      predictions=np.stack(predictions), kernels=np.stack(kernels), truth=truth.numpy(),
                      true_kernel=true_kernel.numpy(), context_length=int(context.shape[1]), start=start, seed=seed,
                      dtype=str(dtype).removeprefix("torch."))


__all__ = ["RESOLUTION_FACTOR", "NoiseCurve", "check_sigmas", "noise_curve", "smallest_representable_sigma"]
