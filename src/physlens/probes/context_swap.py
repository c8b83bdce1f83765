"""The context-swap test: does a model's prediction move with ω0 the way the true dynamics do?

Two contexts end in the same state s but come from different frequencies ω_a and ω_b (see
:meth:`~physlens.systems.OscillatorSystem.sample_swap_pairs`). The true next states differ by
K(ω_a)s − K(ω_b)s; a model that infers ω0 from the context and steps with it moves its prediction by
the same amount. Regressing the model's difference on the true one (through the origin, both
components pooled) gives a slope of 1 and R² of 1 for the exact dynamics and a slope of 0 for a model
that ignores the context. The slope's interval comes from a bootstrap over pairs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from physlens._validation import check_nonnegative_int, check_positive_int
from physlens.stats import Interval, paired_interval
from physlens.systems.oscillator import Trajectories, propagator
from physlens.training.rollouts import predictor_placement


@dataclass
class SwapTestResult:
    """Regression of the model's output difference on the true difference over swap pairs."""

    slope: Interval  # least-squares slope through the origin, with a bootstrap interval over pairs
    r2: float  # 1 − Σ‖Δŷ − slope·Δy‖² / Σ‖Δŷ − mean Δŷ‖²
    model_difference: np.ndarray  # [pair, 2] ŷ(context a) − ŷ(context b)
    true_difference: np.ndarray  # [pair, 2] K(ω_a)s − K(ω_b)s

    @property
    def n_pairs(self) -> int:
        """Number of context pairs."""
        return int(self.true_difference.shape[0])

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary."""
        return {"slope": self.slope.to_dict(), "r2": self.r2, "n_pairs": self.n_pairs}


def _ratio_of_sums(numerator: np.ndarray, denominator: np.ndarray, axis: int = -1) -> np.ndarray | np.floating:
    return numerator.sum(axis=axis) / denominator.sum(axis=axis)


def context_swap_test(
    model: Callable[[Tensor], Tensor],
    contexts_a: Trajectories,
    contexts_b: Trajectories,
    *,
    seed: int = 0,
    n_resamples: int = 2000,
) -> SwapTestResult:
    """Run the swap test on pairs that share their final state (from ``sample_swap_pairs``).

    ``model`` is called on ``[batch, pos, 2]`` states in its own dtype (a module's parameter dtype,
    else the contexts') and its last-position outputs are compared; the true difference is computed
    in float64 from the pairs' labels.
    """
    if contexts_a.states.shape != contexts_b.states.shape:
        raise ValueError(f"contexts_a and contexts_b must have the same shape, got {list(contexts_a.states.shape)} and {list(contexts_b.states.shape)}")
    final_a, final_b = contexts_a.states[:, -1].double(), contexts_b.states[:, -1].double()
    if not torch.allclose(final_a, final_b, rtol=1e-6, atol=1e-9):
        raise ValueError("contexts_a and contexts_b must end in the same state (use OscillatorSystem.sample_swap_pairs)")
    if len(contexts_a) < 3:
        raise ValueError(f"the swap test needs at least 3 pairs, got {len(contexts_a)}")
    n_resamples = check_positive_int("n_resamples", n_resamples)
    dtype, device = predictor_placement(model, contexts_a.states)
    with torch.no_grad():
        out_a = model(contexts_a.states.to(device=device, dtype=dtype))[:, -1]
        out_b = model(contexts_b.states.to(device=device, dtype=dtype))[:, -1]
    model_diff = (out_a - out_b).double().cpu().numpy()
    shared = final_a.cpu()
    kernel_a = propagator(contexts_a.omega0.double().cpu(), contexts_a.gamma.double().cpu(), contexts_a.dt)
    kernel_b = propagator(contexts_b.omega0.double().cpu(), contexts_b.gamma.double().cpu(), contexts_b.dt)
    true_diff = torch.einsum("bij,bj->bi", kernel_a - kernel_b, shared).numpy()
    # Per pair: ⟨Δŷ, Δy⟩ and ‖Δy‖²; the slope is their ratio of sums, resampled pair by pair.
    products, norms = (model_diff * true_diff).sum(axis=1), (true_diff**2).sum(axis=1)
    slope = paired_interval(_ratio_of_sums, products, norms, n_resamples=n_resamples, seed=check_nonnegative_int("seed", seed),
                            vectorized=True)
    residual = ((model_diff - slope.estimate * true_diff) ** 2).sum()
    spread = ((model_diff - model_diff.mean(axis=0)) ** 2).sum()
    r2 = float(1 - residual / spread) if spread > 0 else float("nan")
    return SwapTestResult(slope, r2, model_diff, true_diff)


__all__ = ["SwapTestResult", "context_swap_test"]
