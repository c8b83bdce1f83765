"""Autoregressive rollout with a sliding window, and the per-step relative error of a rollout.

The error is ‖pred − true‖ / ‖true‖ over the whole state at each step, not the pointwise x-ratio,
which spikes whenever x crosses zero.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from jaxtyping import Float
from torch import Tensor

from physlens._validation import check_finite, check_positive_int, check_shape
from physlens.systems.base import System, TrajectoryBatch
from physlens.training._compile import compile_or_eager


@torch.no_grad()
def rollout(
    model: Callable[[Tensor], Tensor],
    context: Float[Tensor, "batch t0 d"],
    n_steps: int,
    *,
    window: int | None = None,
    compile: bool = False,
) -> Float[Tensor, "batch n_steps d"]:
    """Feed the model its own predictions for ``n_steps`` steps, starting from ``context``.

    At every step the model sees the last ``window`` states (default: the context length, i.e. a
    window as long as the context it was given) and its prediction at the last position is
    appended. Returns only the predicted states. ``compile=True`` runs the model through
    ``torch.compile`` (every step has the same shape, so it compiles once; eager, with a warning,
    where no compiler exists): worth it for long rollouts, not for a few steps.
    """
    if context.ndim != 3:
        raise ValueError(f"context must have shape [batch, t0, d], got {list(context.shape)}")
    check_finite("context", context)
    n_steps = check_positive_int("n_steps", n_steps)
    window = check_positive_int("window", window) if window is not None else context.shape[1]
    n_ctx = getattr(getattr(model, "cfg", None), "n_ctx", None)
    if n_ctx is not None and window > n_ctx:
        raise ValueError(f"window must be <= the model's n_ctx ({n_ctx}), got {window}")
    if context.shape[1] < window:
        raise ValueError(f"context must hold at least window={window} states, got {context.shape[1]}")
    history = context[:, -window:]
    step = compile_or_eager(model, context.device, "rollout") if compile else model
    predictions = []
    for _ in range(n_steps):
        next_state = step(history)[:, -1:]
        predictions.append(next_state)
        history = torch.cat([history[:, 1:], next_state], dim=1)
    return torch.cat(predictions, dim=1)


def relative_error(pred: Float[Tensor, "batch step d"], true: Float[Tensor, "batch step d"]) -> Float[Tensor, "batch step"]:
    """‖pred − true‖ / ‖true‖ over the state components, at every step.

    A non-finite prediction (a diverged rollout) counts as an infinite error, so medians and
    maxima rank it last instead of turning into NaN.
    """
    if pred.shape != true.shape:
        raise ValueError(f"pred and true must have the same shape, got {list(pred.shape)} and {list(true.shape)}")
    norm = torch.linalg.vector_norm(true, dim=-1)
    if bool((norm == 0).any()):
        raise ValueError("true contains a zero state, where the relative error is undefined")
    error = torch.linalg.vector_norm(pred - true, dim=-1) / norm
    return torch.where(torch.isnan(error), torch.full_like(error, float("inf")), error)


@dataclass
class RolloutEvaluation:
    """A rollout from held-out trajectories with its per-step relative error."""

    trajectories: TrajectoryBatch  # the true trajectories (context followed by the rolled-out part)
    context_len: int  # how many true states the model was given
    predicted: Tensor  # [traj, n_steps, 2]
    error: Tensor  # [traj, n_steps] relative error per step

    @property
    def true(self) -> Tensor:
        """The true states over the rolled-out steps, [traj, n_steps, 2]."""
        return self.trajectories.states[:, self.context_len :]

    def median_error(self) -> Tensor:
        """Median over trajectories of the relative error, per step: [n_steps]."""
        return self.error.median(dim=0).values

    def summary(self) -> dict[str, float]:
        """Headline numbers: median error at the last step, over all steps, and the worst trajectory."""
        return {
            "median_final_error": float(self.error[:, -1].median()),
            "median_error_all_steps": float(self.error.median()),
            "mean_error_all_steps": float(self.error.mean()),
            "max_final_error": float(self.error[:, -1].max()),
            "n_trajectories": int(self.error.shape[0]),
            "n_steps": int(self.error.shape[1]),
        }


def evaluate_rollout(
    model: Callable[[Tensor], Tensor],
    system: System,
    *,
    n_traj: int,
    n_steps: int,
    context_len: int,
    seed: int,
    energy_range: tuple[float, float] | None = None,
) -> RolloutEvaluation:
    """Roll ``model`` out for ``n_steps`` from the first ``context_len`` true states of fresh
    trajectories (energies in ``energy_range``, e.g. beyond the training range) and score every step."""
    context_len = check_positive_int("context_len", context_len)
    n_steps = check_positive_int("n_steps", n_steps)
    trajectories = system.sample(n_traj, context_len + n_steps, seed=seed, energy_range=energy_range)
    dtype = next(model.parameters()).dtype
    device = next(model.parameters()).device
    trajectories = trajectories.to(device=device, dtype=dtype)
    predicted = rollout(model, trajectories.states[:, :context_len], n_steps)
    error = relative_error(predicted, trajectories.states[:, context_len:])
    check_shape("error", error, (n_traj, n_steps), f"[{n_traj}, {n_steps}]")
    return RolloutEvaluation(trajectories, context_len, predicted, error)


__all__ = ["RolloutEvaluation", "evaluate_rollout", "relative_error", "rollout"]
