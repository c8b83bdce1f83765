"""Linear surrogates of trained models: did the network reduce to a linear map of its window?

A :class:`~physlens.models.linear.LinearAutoregressive` is fitted to the *model's* next-step
predictions (not to the physics); its fidelity is how well it matches the model one step ahead and
how fast its rollout drifts away from the model's own rollout (the seed's Fig. 8).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from physlens._estimators import NotFittedError
from physlens._validation import check_positive_float, check_positive_int
from physlens.models.linear import LinearAutoregressive
from physlens.probes.activations import model_device
from physlens.training.rollouts import relative_error, rollout


@dataclass
class SurrogateFidelity:
    """How closely a surrogate follows the model.

    ``one_step_r2``: R² of the surrogate's next-step predictions against the model's, on held-out
    contexts. ``divergence [n_steps]``: median over trajectories of ‖surrogate − model‖/‖model‖ along
    the two rollouts. ``divergence_step``: first step (1-based) where that median exceeds
    ``threshold``, or None if it never does. ``spectral_radius``: the surrogate's own
    (:meth:`~physlens.models.linear.LinearAutoregressive.spectral_radius`); above 1 its rollout grows
    without bound whatever the model does, so its departure from the model measures the fit, not the model.
    """

    one_step_r2: float
    divergence: np.ndarray
    threshold: float
    divergence_step: int | None
    model_path: Tensor | None = None  # the model's rollout [traj, n_steps, d]
    surrogate_path: Tensor | None = None  # the surrogate's rollout [traj, n_steps, d]
    spectral_radius: float | None = None  # of the surrogate's own dynamics

    @property
    def surrogate_stable(self) -> bool | None:
        """Whether the surrogate's own dynamics decay (spectral radius < 1); None when unknown."""
        return None if self.spectral_radius is None else self.spectral_radius < 1.0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary."""
        return {
            "one_step_r2": self.one_step_r2,
            "divergence": self.divergence.tolist(),
            "threshold": self.threshold,
            "divergence_step": self.divergence_step,
            "final_divergence": float(self.divergence[-1]),
            "spectral_radius": self.spectral_radius,
        }


class LinearSurrogate:
    """A linear autoregressive model fitted to a network's last-position predictions.

    ``fit(model, contexts [n, seq_len, d])``: the last ``window`` states of each context (default:
    all of them) → ``model(contexts)[:, -1]``. Fitted: ``linear_`` (the
    :class:`~physlens.models.linear.LinearAutoregressive`), ``fit_r2_`` (in-sample R² against the model).

    Not a scikit-learn estimator: what it fits is a network, not a table of samples, so ``clone``,
    pipelines and cross-validation have nothing to split. ``linear_`` is the estimator.
    """

    def __init__(self, window: int | None = None, *, alpha: float = 0.0) -> None:
        self.window = window  # states the surrogate reads; None: the whole context
        self.alpha = alpha  # ridge penalty of the linear fit

    def __repr__(self) -> str:
        return f"LinearSurrogate(window={self.window!r}, alpha={self.alpha!r})"

    def _check_fitted(self) -> None:
        if not hasattr(self, "linear_"):
            raise NotFittedError("This LinearSurrogate instance is not fitted yet; call fit(model, contexts) first")

    def fit(self, model: Any, contexts: Tensor) -> LinearSurrogate:
        """Fit to ``model``'s next-state predictions on ``contexts``."""
        if not isinstance(contexts, Tensor) or contexts.ndim != 3:
            raise ValueError(f"contexts must have shape [n, seq_len, d], got {getattr(contexts, 'shape', type(contexts).__name__)}")
        window = contexts.shape[1] if self.window is None else check_positive_int("window", self.window)
        if window > contexts.shape[1]:
            raise ValueError(f"window={window} is longer than the contexts ({contexts.shape[1]} states)")
        contexts = contexts.to(model_device(model))
        with torch.no_grad():
            target = model(contexts)[:, -1]
        windows = contexts[:, -window:]
        self.linear_ = LinearAutoregressive(window=window, alpha=self.alpha).fit(windows, target)
        self.fit_r2_ = self.linear_.score(windows, target)
        self.window_ = window
        return self

    def predict(self, windows: Tensor) -> Tensor:
        """Next state after each window ``[n, window, d]``."""
        self._check_fitted()
        return self.linear_.predict(windows)

    def fidelity(self, model: Any, contexts: Tensor, n_steps: int, *, threshold: float = 0.1) -> SurrogateFidelity:
        """Compare surrogate and model from the same held-out ``contexts`` over ``n_steps`` of rollout."""
        self._check_fitted()
        n_steps = check_positive_int("n_steps", n_steps)
        threshold = check_positive_float("threshold", threshold)
        contexts = contexts.to(model_device(model))
        with torch.no_grad():
            target = model(contexts)[:, -1]
        one_step_r2 = self.linear_.score(contexts[:, -self.window_ :], target)
        model_path = rollout(model, contexts, n_steps, fast=True)
        surrogate_path = rollout(self.linear_, contexts[:, -self.window_ :], n_steps).to(model_path)
        divergence = relative_error(surrogate_path, model_path).median(dim=0).values.cpu().numpy()
        over = np.nonzero(~(divergence <= threshold))[0]
        step = int(over[0]) + 1 if len(over) else None
        return SurrogateFidelity(one_step_r2, divergence, threshold, step, model_path, surrogate_path,
                                 self.linear_.spectral_radius())


__all__ = ["LinearSurrogate", "SurrogateFidelity"]
