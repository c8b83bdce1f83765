"""Reference predictors a trained oscillator model is judged against: the exact step and in-context least squares.

Neither is trained. :class:`ExactStep` knows each trajectory's ω0 and γ (an oracle);
:class:`InContextLeastSquares` reads the one-step map off the states it is given, with no labels,
which on noiseless trajectories is exact from three states on. Both are called like a model on
``[batch, pos, 2]`` states and return the next state after the last position as ``[batch, 1, 2]``,
so :func:`physlens.training.rollout` rolls them out unchanged.
"""

from __future__ import annotations

import torch
from jaxtyping import Float
from torch import Tensor

from physlens._validation import check_positive_int
from physlens.systems.oscillator import ExactStep, _check_states, fit_propagator


class InContextLeastSquares:
    """Estimate the one-step map K from the last ``window`` states by least squares, then step.

    ``window=None`` uses every state given. This is the algorithm "infer the dynamics from the
    context, then apply them": on noiseless oscillator trajectories it is exact from three states
    on (two transitions fix K); with two states it returns the minimum-norm K. No labels, no training.
    """

    def __init__(self, window: int | None = None) -> None:
        if window is not None:
            window = check_positive_int("window", window)
            if window < 2:
                raise ValueError(f"window must be >= 2 states (one transition) to estimate K, got {window}")
        self.window = window

    def __call__(self, states: Float[Tensor, "batch pos 2"]) -> Float[Tensor, "batch 1 2"]:
        """The next state after ``states[:, -1]`` under the K fitted to the last ``window`` states."""
        _check_states(states, 2 if self.window is None else self.window)
        context = states if self.window is None else states[:, -self.window :]
        kernel = fit_propagator(context)
        return torch.einsum("bij,bj->bi", kernel, states[:, -1])[:, None]


__all__ = ["ExactStep", "InContextLeastSquares"]
