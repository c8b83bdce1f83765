"""Figures for invariant discovery and symbolic distillation: latent vs invariant, formula fronts,
bottleneck vs candidate quantities."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
import sympy
from matplotlib.figure import Figure

from physlens.probes.symbolic import FormulaCandidate

_MAX_POINTS = 4000  # scatter plots thin to this many points so figures stay small


def _thin(n: int) -> np.ndarray:
    return np.arange(n) if n <= _MAX_POINTS else np.linspace(0, n - 1, _MAX_POINTS).astype(int)


def plot_latent_vs_invariant(
    latent: Sequence[float] | np.ndarray,
    invariant: Sequence[float] | np.ndarray,
    *,
    invariant_name: str = "L = x·vy − y·vx",
    latent_name: str = "latent",
    color: Sequence[float] | np.ndarray | None = None,
    color_name: str = "",
) -> Figure:
    """Scatter of a latent against a candidate invariant, with the least-squares line and its R²."""
    latent, invariant = np.asarray(latent, dtype=float).ravel(), np.asarray(invariant, dtype=float).ravel()
    if latent.shape != invariant.shape:
        raise ValueError(f"latent and invariant must have the same length, got {latent.shape[0]} and {invariant.shape[0]}")
    slope, intercept = np.polyfit(invariant, latent, 1)
    residual = latent - (slope * invariant + intercept)
    r2 = 1 - residual.var() / latent.var() if latent.var() > 0 else float("nan")
    keep = _thin(latent.shape[0])
    fig, ax = plt.subplots(figsize=(5, 4))
    points = ax.scatter(
        invariant[keep], latent[keep], s=4, alpha=0.6,
        c=None if color is None else np.asarray(color, dtype=float).ravel()[keep], cmap="viridis",
    )
    if color is not None:
        fig.colorbar(points, ax=ax, label=color_name)
    grid = np.linspace(invariant.min(), invariant.max(), 2)
    ax.plot(grid, slope * grid + intercept, color="black", lw=1, label=f"{slope:.3g}·x + {intercept:.3g} (R² = {r2:.4f})")
    ax.set_xlabel(invariant_name)
    ax.set_ylabel(latent_name)
    ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    return fig


def plot_formula_front(
    front: Sequence[FormulaCandidate], *, selected: FormulaCandidate | None = None, title: str = "", floor: float = 1e-16
) -> Figure:
    """Complexity against relative error (nmse, log scale) of every formula on a Pareto front, each
    labelled with its expression; the selected formula is circled."""
    if len(front) == 0:
        raise ValueError("front must hold at least one formula")
    complexity = [c.complexity for c in front]
    error = [max(c.nmse, floor) for c in front]
    fig, ax = plt.subplots(figsize=(6.5, 4))
    ax.plot(complexity, error, marker="o", lw=1)
    for i, (c, e, candidate) in enumerate(zip(complexity, error, front)):
        label = str(sympy.N(candidate.expression, 3))
        # stagger the labels: neighbouring formulas often sit at nearly the same error
        ax.annotate(label if len(label) < 40 else label[:37] + "…", (c, e), fontsize=7, xytext=(4, 4 - 11 * (i % 3)), textcoords="offset points")
    if selected is not None:
        ax.scatter([selected.complexity], [max(selected.nmse, floor)], s=160, facecolors="none", edgecolors="red", label="selected")
        ax.legend(loc="upper right", fontsize=8)
    ax.set_yscale("log")
    ax.set_xlabel("complexity (expression-tree nodes)")
    ax.set_ylabel("relative error (MSE / Var y)")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return fig


def plot_bottleneck_matches(bottleneck: Sequence[float] | np.ndarray, candidates: Mapping[str, Sequence[float] | np.ndarray]) -> Figure:
    """One scatter panel per candidate quantity: the bottleneck neuron against it."""
    if len(candidates) == 0:
        raise ValueError("candidates must name at least one quantity")
    values = np.asarray(bottleneck, dtype=float).ravel()
    keep = _thin(values.shape[0])
    fig, axes = plt.subplots(1, len(candidates), figsize=(3.2 * len(candidates), 3), squeeze=False)
    for ax, (name, quantity) in zip(axes[0], candidates.items()):
        quantity = np.asarray(quantity, dtype=float).ravel()
        if quantity.shape != values.shape:
            raise ValueError(f"candidates[{name!r}] must have {values.shape[0]} values, got {quantity.shape[0]}")
        ax.scatter(quantity[keep], values[keep], s=3, alpha=0.5)
        ax.set_xlabel(name)
    axes[0][0].set_ylabel("bottleneck")
    fig.tight_layout()
    return fig


__all__ = ["plot_bottleneck_matches", "plot_formula_front", "plot_latent_vs_invariant"]
