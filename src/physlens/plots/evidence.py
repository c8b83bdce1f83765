"""Figures for the evidence that a sequence model infers ω0: algorithm comparison, context swap, steering.

Each function takes the result object of the analysis it draws and returns a matplotlib ``Figure``.
"""

from __future__ import annotations

from typing import Any

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator


def _finish(fig: Figure, ax: plt.Axes, xlabel: str, ylabel: str, title: str) -> Figure:
    """Label one panel, add its legend and grid, and lay the figure out."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def plot_algorithm_comparison(comparison: Any) -> Figure:
    """Errors and shared errors of the model and every candidate algorithm against context length k.

    ``comparison`` is an :class:`~physlens.probes.algorithms.AlgorithmComparison`. Top row: median
    relative error one step ahead and at the rollout horizon; bottom row: the share of the model's
    error each candidate reproduces (1 = the same mistakes).
    """
    ks = np.asarray(comparison.context_lengths)
    fig, axes = plt.subplots(2, 2, figsize=(10, 6.5), sharex=True)
    floor = np.finfo(float).tiny
    panels = [
        (axes[0, 0], comparison.model_error, comparison.error, "one step ahead: median ‖ŷ − y‖/‖y‖", True),
        (axes[0, 1], comparison.model_rollout_error, comparison.rollout_error,
         f"after {comparison.horizon} rollout steps: median error", True),
        (axes[1, 0], None, comparison.shared, "share of the model's one-step error reproduced", False),
        (axes[1, 1], None, comparison.rollout_shared, "share of the model's rollout error reproduced", False),
    ]
    for ax, model, series, title, log in panels:
        if model is not None:
            ax.plot(ks, np.clip(model, floor, None), color="k", lw=2, label="model")
        for i, (name, values) in enumerate(series.items()):
            values = np.asarray(values)
            ax.plot(ks, np.clip(values, floor, None) if log else values, color=f"C{i}", lw=1.2, marker=".", label=name)
        if log:
            ax.set_yscale("log")
        else:
            ax.axhline(0.5, color="0.5", ls=":", lw=1)
            ax.set_ylim(-0.1, 1.05)
        ax.set_title(title, fontsize=9)
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    for ax in axes[1]:
        ax.set_xlabel("context length k (states the predictors see)")
    axes[0, 0].legend(fontsize=7)
    fig.tight_layout()
    return fig


def plot_swap_test(result: Any, *, title: str = "context swap: same final state, different ω0") -> Figure:
    """The model's output difference against the true difference K(ω_a)s − K(ω_b)s, per component,
    with the identity line (the exact dynamics) and the fitted slope."""
    model_diff, true_diff = np.asarray(result.model_difference), np.asarray(result.true_difference)
    fig, ax = plt.subplots(figsize=(4.5, 4.2))
    for c, name in enumerate(("x", "p")):
        ax.scatter(true_diff[:, c], model_diff[:, c], s=8, alpha=0.6, color=f"C{c}", label=f"Δ{name}")
    span = float(np.abs(true_diff).max()) if true_diff.size else 1.0
    line = np.array([-span, span])
    ax.plot(line, line, color="0.4", ls="--", lw=1, label="exact dynamics (slope 1)")
    ax.plot(line, result.slope.estimate * line, color="k", lw=1, label=f"fit: slope {result.slope.format()}")
    return _finish(fig, ax, "true difference of next states", "model's difference of predictions", title)


def plot_steering(result: Any, *, title: str = "steering along the probe direction") -> Figure:
    """ω0 read off steered rollouts minus the unsteered one, against the push α: the probe direction
    (median and 25–75 % band over trajectories) and a random direction of equal size."""
    alphas = np.asarray(result.alphas)
    fig, ax = plt.subplots(figsize=(5, 3.8))
    for values, name, color in ((result.omega0_shift, "probe direction", "C0"), (result.control_shift, "random direction", "C7")):
        values = np.asarray(values)
        low, median, high = (np.nanquantile(values, q, axis=1) for q in (0.25, 0.5, 0.75))
        ax.plot(alphas, median, marker="o", color=color, label=name)
        ax.fill_between(alphas, low, high, color=color, alpha=0.2)
    ax.plot(alphas, alphas, color="0.4", ls="--", lw=1, label="shift = α (reads ω0 one for one)")
    return _finish(fig, ax, "push α (units of the probe's reading)", "ω0 of the rollout − unsteered", title)


def plot_group_patching(result: Any, *, title: str = "where the swapped context's difference lives") -> Figure:
    """Recovery per layer when a whole group of positions is patched at once (a
    :class:`~physlens.probes.patching.GroupPatching`), one line per group, with ±1 standard error."""
    layers = np.asarray(result.layers)
    fig, ax = plt.subplots(figsize=(5, 3.6))
    for i, group in enumerate(result.groups):
        mean, se = result.mean(group).numpy(), result.stderr(group).numpy()
        ax.errorbar(layers, mean, yerr=se, marker="o", color=f"C{i}", capsize=3, label=f"patch {group}")
    ax.axhline(1, color="0.5", ls=":", lw=1)
    ax.axhline(0, color="0.5", ls=":", lw=1)
    ax.set_xticks(layers, [str(layer) for layer in layers])
    return _finish(fig, ax, f"layer whose {result.site} is patched", "recovery of the clean prediction", title)


__all__ = ["plot_algorithm_comparison", "plot_group_patching", "plot_steering", "plot_swap_test"]


def plot_noise_curves(model_curve: Any, candidate_curves: dict[str, Any], *, title: str = "noise-injection curves") -> Figure:
    """Next-step error and implied-map error against the observation noise σ added to the context.

    ``model_curve`` and the values of ``candidate_curves`` are :class:`~physlens.probes.NoiseCurve`
    objects drawn with the same seed; σ = 0 is drawn at the left edge of the log axis.
    """
    sigmas = np.asarray(model_curve.sigmas, dtype=float)
    positive = sigmas[sigmas > 0]
    zero_at = positive.min() / 3 if positive.size else 1e-4
    x = np.where(sigmas > 0, sigmas, zero_at)
    floor = np.finfo(float).tiny
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, field, label in ((axes[0], "error", "median next-step error ‖ŷ − y‖/‖y‖"),
                             (axes[1], "kernel_error", "median implied-map error ‖K̂ − K‖/‖K‖")):
        ax.plot(x, np.clip(getattr(model_curve, field), floor, None), color="k", lw=2.2, marker="o", label="model")
        for i, (name, curve) in enumerate(candidate_curves.items()):
            ax.plot(x, np.clip(getattr(curve, field), floor, None), color=f"C{i}", lw=1.2, marker=".", label=name)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xticks(x, ["0" if s == 0 else f"{s:g}" for s in sigmas], fontsize=7)
        _finish(fig, ax, "observation noise σ (relative to the state's RMS)", label, title)
    return fig
