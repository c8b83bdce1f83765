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

from physlens._validation import check_positive_float, check_positive_int
from physlens.systems.oscillator import STATE_DIM, check_underdamped, fit_propagator, propagator


def _check_states(states: Tensor, minimum: int) -> None:
    if states.ndim != 3 or states.shape[-1] != STATE_DIM:
        raise ValueError(f"states must have shape [batch, pos, 2], got {list(states.shape)}")
    if states.shape[1] < minimum:
        raise ValueError(f"states must hold at least {minimum} position(s), got {states.shape[1]}")


class ExactStep:
    """The oracle: the exact propagator of each trajectory's own ω0 and γ applied to its last state.

    ``omega0`` and ``gamma`` hold one value per trajectory of the batch it will be called on.
    """

    def __init__(self, omega0: Float[Tensor, " batch"], gamma: Float[Tensor, " batch"], dt: float) -> None:
        omega0, gamma = torch.as_tensor(omega0, dtype=torch.float64), torch.as_tensor(gamma, dtype=torch.float64)
        if omega0.ndim != 1 or omega0.shape != gamma.shape:
            raise ValueError(f"omega0 and gamma must be one value per trajectory [batch], got {list(omega0.shape)} and {list(gamma.shape)}")
        check_underdamped(omega0, gamma)
        self.kernel = propagator(omega0, gamma, check_positive_float("dt", dt))  # [batch, 2, 2]

    def __call__(self, states: Float[Tensor, "batch pos 2"]) -> Float[Tensor, "batch 1 2"]:
        """The exact next state after ``states[:, -1]``."""
        _check_states(states, 1)
        if states.shape[0] != self.kernel.shape[0]:
            raise ValueError(f"states has {states.shape[0]} trajectories but the oracle holds parameters for {self.kernel.shape[0]}")
        kernel = self.kernel.to(device=states.device, dtype=states.dtype)
        return torch.einsum("bij,bj->bi", kernel, states[:, -1])[:, None]


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
