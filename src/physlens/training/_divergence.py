"""Divergence detection shared by every training loop: a loss that stops being finite, or climbs far
above where it started, ends training with :class:`TrainingDiverged` instead of a result."""

from __future__ import annotations

import math

import numpy as np
import torch

DIVERGENCE_FACTOR = 1e4
"""Training counts as diverged once its loss exceeds this many times its reference: the larger of the
loss at the first step and the loss of predicting zero (the mean square of the targets). Ordinary
training, even with loss spikes, stays far below; a learning rate that blows up crosses it within
a few steps."""


class TrainingDiverged(FloatingPointError):
    """Training diverged: the loss became NaN or infinite, or rose far above where it started."""


def loss_reference(first_loss: float, target_scale: float = 0.0) -> float:
    """The loss divergence is measured against: the first loss or the zero predictor's loss, whichever
    is larger (so a model that starts exact, with a loss near 0, is not flagged for leaving it)."""
    reference = max(first_loss, target_scale) if math.isfinite(first_loss) else target_scale
    return reference if reference > 0 else float(np.finfo(np.float64).tiny)


def check_loss(loss: float, step: int, reference: float, *, what: str = "training", hint: str = "lower the learning rate") -> None:
    """Raise :class:`TrainingDiverged` if ``loss`` (at ``step``) is not finite or exceeds
    :data:`DIVERGENCE_FACTOR` times ``reference``."""
    if not math.isfinite(loss):
        raise TrainingDiverged(f"{what} diverged: the loss became {loss} at step {step}; {hint}")
    if loss > DIVERGENCE_FACTOR * reference:
        raise TrainingDiverged(
            f"{what} diverged: the loss reached {loss:.3g} at step {step}, more than {DIVERGENCE_FACTOR:g} times its "
            f"start ({reference:.3g}); {hint}"
        )


def diverged_members(losses: torch.Tensor, references: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """For losses ``[step, member]`` and one reference per member: the members that diverged and, for
    each, the first step at which it did (non-finite, or above :data:`DIVERGENCE_FACTOR` × reference)."""
    bad = ~torch.isfinite(losses) | (losses > DIVERGENCE_FACTOR * references)
    members = bad.any(dim=0).nonzero().flatten()
    first_step = bad[:, members].to(torch.uint8).argmax(dim=0) if members.numel() else members
    return members, first_step
