"""Figures for training and rollouts: loss curve, phase-space rollout vs truth, error vs step.

Each function returns a matplotlib ``Figure`` and never shows it, so studies can save it and
notebooks can display it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.figure import Figure

from physlens.plots._arrays import to_numpy


def plot_loss_curve(
    losses: Sequence[float] | torch.Tensor | Mapping[str, Sequence[float] | torch.Tensor], *, title: str = "training loss"
) -> Figure:
    """Training loss against step on a log scale: one curve, or one per name from a mapping."""
    curves = losses if isinstance(losses, Mapping) else {"": losses}
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for name, curve in curves.items():
        values = to_numpy(curve)
        if values.ndim != 1 or values.size == 0:
            raise ValueError(f"losses{'[' + repr(name) + ']' if name else ''} must be a non-empty 1-d sequence, "
                             f"got shape {list(values.shape)}")
        ax.semilogy(np.arange(1, values.size + 1), np.clip(values, np.finfo(float).tiny, None), lw=1, label=name or None)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if len(curves) > 1 or "" not in curves:
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_phase_space(
    true: torch.Tensor | np.ndarray,
    predicted: torch.Tensor | np.ndarray,
    *,
    n_examples: int = 4,
    labels: Sequence[str] = ("x", "p"),
) -> Figure:
    """Rolled-out trajectories against the truth in the (x, p) plane, one panel per example.

    ``true`` and ``predicted`` are ``[traj, step, 2]``.
    """
    true_np, pred_np = to_numpy(true), to_numpy(predicted)
    if true_np.shape != pred_np.shape or true_np.ndim != 3 or true_np.shape[-1] != 2:
        raise ValueError(
            f"true and predicted must both have shape [traj, step, 2], got {list(true_np.shape)} and {list(pred_np.shape)}"
        )
    count = min(n_examples, true_np.shape[0])
    fig, axes = plt.subplots(1, count, figsize=(3.2 * count, 3.2), squeeze=False)
    for i, ax in enumerate(axes[0]):
        ax.plot(true_np[i, :, 0], true_np[i, :, 1], color="0.6", lw=3, label="true")
        ax.plot(pred_np[i, :, 0], pred_np[i, :, 1], color="C3", lw=1, ls="--", label="model")
        ax.set_xlabel(labels[0])
        ax.set_ylabel(labels[1])
        ax.set_title(f"trajectory {i}")
        ax.set_aspect("equal", adjustable="datalim")
    axes[0][0].legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    return fig


def plot_rollout_error(
    errors: dict[str, torch.Tensor | np.ndarray] | torch.Tensor | np.ndarray, *, title: str = "rollout error"
) -> Figure:
    """Median relative error per step with its 10–90 % band, for one or several ``[traj, step]`` arrays."""
    series = errors if isinstance(errors, dict) else {"model": errors}
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for i, (name, error) in enumerate(series.items()):
        values = to_numpy(error)
        if values.ndim != 2:
            raise ValueError(f"errors[{name!r}] must have shape [traj, step], got {list(values.shape)}")
        steps = np.arange(1, values.shape[1] + 1)
        floor = np.finfo(float).tiny
        low, median, high = (np.clip(np.quantile(values, q, axis=0), floor, None) for q in (0.1, 0.5, 0.9))
        ax.semilogy(steps, median, color=f"C{i}", label=f"{name} (median)")
        ax.fill_between(steps, low, high, color=f"C{i}", alpha=0.2)
    ax.set_xlabel("rollout step")
    ax.set_ylabel("‖pred − true‖ / ‖true‖")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


__all__ = ["plot_loss_curve", "plot_phase_space", "plot_rollout_error"]
