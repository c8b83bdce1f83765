"""Figures for the probe toolkit: probe R² heatmaps, ablation and patching grids, attention patterns,
saliency maps and rollouts against the truth. Every function returns a matplotlib ``Figure``."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure

from physlens.plots._arrays import to_numpy


def _short(hook: str) -> str:
    return hook.replace("blocks.", "L").replace(".hook_", " ").replace(".attn", "").replace("hook_", "")


def plot_probe_r2(result: Any, target: str, *, vmin: float = 0.0) -> Figure:
    """Held-out R² of the probes for ``target`` over hook (rows) × position (columns), next to the
    random-init control and the shuffled-label control when they were run (a ``ProbeResult``)."""
    t = result.target_index(target)
    panels = [("trained model", result.r2[:, :, t])]
    if result.control_r2 is not None:
        panels.append(("random-init control", result.control_r2[:, :, t]))
    if result.shuffled_r2 is not None:
        panels.append(("shuffled labels", result.shuffled_r2[:, :, t]))
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 0.35 * len(result.hooks) + 2.2), squeeze=False, sharey=True)
    for ax, (title, values) in zip(axes[0], panels):
        image = ax.imshow(values, aspect="auto", vmin=vmin, vmax=1.0, cmap="viridis", interpolation="nearest")
        ax.set_title(title)
        ax.set_xlabel("position")
        ticks = np.linspace(0, len(result.positions) - 1, min(len(result.positions), 8)).round().astype(int)
        ax.set_xticks(ticks, [str(result.positions[i]) for i in ticks])
    axes[0][0].set_yticks(range(len(result.hooks)), [_short(h) for h in result.hooks])
    fig.colorbar(image, ax=axes[0].tolist(), label="held-out R²")
    fig.suptitle(f"linear probe for {target}", y=1.03)
    return fig


def plot_ablation_grid(result: Any, *, metric: str = "loss") -> Figure:
    """Ablation effect (``metric``: ``"loss"`` or ``"rollout_error"``) as a [layer, head] grid, with the
    whole-attention-layer (and MLP) column beside it, relative to the unablated baseline."""
    if metric not in ("loss", "rollout_error"):
        raise ValueError(f"metric must be 'loss' or 'rollout_error', got {metric!r}")
    heads = getattr(result, f"head_{metric}")
    if heads is None:
        raise ValueError(f"the ablation sweep has no {metric} (run it with a rollout)")
    baseline = getattr(result, f"baseline_{metric}")
    columns = [heads, getattr(result, f"attn_{metric}")[:, None]]
    labels = [f"head {h}" for h in range(heads.shape[1])] + ["attn"]
    mlp = getattr(result, f"mlp_{metric}")
    if mlp is not None:
        columns.append(mlp[:, None])
        labels.append("mlp")
    grid = np.concatenate(columns, axis=1) / baseline
    fig, ax = plt.subplots(figsize=(1.0 * grid.shape[1] + 2.5, 0.4 * grid.shape[0] + 2))
    image = ax.imshow(np.log10(grid), aspect="auto", cmap="magma", interpolation="nearest")
    ax.set_xticks(range(len(labels)), labels)
    ax.set_yticks(range(grid.shape[0]), [f"layer {i}" for i in range(grid.shape[0])])
    fig.colorbar(image, ax=ax, label=f"log10({metric} / unablated)")
    ax.set_title(f"{result.method} ablation: {metric}")
    return fig


def _label_axis(axis: Any, values: Sequence[Any], max_ticks: int = 12) -> None:
    """Integer ticks at the cells of an image axis, labelled by the real values they stand for
    (thinned to at most ``max_ticks``, always keeping the first and the last)."""
    n = len(values)
    ticks = sorted({int(i) for i in np.linspace(0, n - 1, min(n, max_ticks)).round()})
    axis.set_ticks(ticks, [str(values[i]) for i in ticks])


def plot_patching(result: Any, *, title: str = "activation patching", confidence: float = 0.95, seed: int = 0) -> Figure:
    """Mean normalised recovery per cell of a TransformerLens ``PatchingResult``: a heatmap over the
    first two index columns (ticks labelled with the real layers and positions swept; a head axis is
    averaged), or per-layer bars with bootstrap intervals when there is one column."""
    from physlens.probes.patching import patching_grid

    grid, columns = patching_grid(result)
    grid = to_numpy(grid)
    levels = [sorted(int(v) for v in result.index_df[c].unique()) for c in columns]
    if grid.ndim == 1:
        low, high = (to_numpy(v).reshape(-1) for v in result.bootstrap_ci(confidence=confidence, seed=seed, n_resamples=500))
        fig, ax = plt.subplots(figsize=(max(4, 0.5 * len(grid) + 2), 3.2))
        x = np.arange(len(grid))
        ax.bar(x, grid, color="tab:blue")
        ax.errorbar(x, grid, yerr=[grid - low, high - grid], fmt="none", ecolor="black", capsize=3)
        ax.set_xticks(x, [str(v) for v in levels[0]])
        ax.set_xlabel(columns[0])
        ax.set_ylabel("recovery")
        ax.axhline(1, color="grey", lw=0.8, ls="--")
        ax.set_title(f"{title} ({int(confidence * 100)}% bootstrap CI)")
        return fig
    if grid.ndim > 2:
        grid = np.nanmean(grid.reshape(grid.shape[0], grid.shape[1], -1), axis=-1)
        title = f"{title} (mean over {', '.join(columns[2:])})"
        columns = columns[:2]
    fig, ax = plt.subplots(figsize=(min(12, 0.25 * grid.shape[1] + 3), 0.4 * grid.shape[0] + 2))
    image = ax.imshow(grid, aspect="auto", cmap="RdBu_r", vmin=-1, vmax=1, interpolation="nearest")
    _label_axis(ax.xaxis, levels[1])
    _label_axis(ax.yaxis, levels[0])
    ax.set_xlabel(columns[1])
    ax.set_ylabel(columns[0])
    fig.colorbar(image, ax=ax, label="mean recovery")
    ax.set_title(title)
    return fig


def plot_attention_patterns(pattern: Any, *, title: str = "attention pattern") -> Figure:
    """Attention patterns ``[head, q, k]`` (e.g. a batch mean of ``hook_pattern``), one panel per head."""
    pattern = to_numpy(pattern)
    if pattern.ndim == 2:
        pattern = pattern[None]
    if pattern.ndim != 3:
        raise ValueError(f"pattern must have shape [head, q, k] or [q, k], got {list(pattern.shape)}")
    n = pattern.shape[0]
    # constrained layout keeps the figure title clear of the per-head titles and the colour bar
    fig, axes = plt.subplots(1, n, figsize=(3.2 * n + 1, 3.6), squeeze=False, layout="constrained")
    for h, ax in enumerate(axes[0]):
        image = ax.imshow(pattern[h], cmap="Blues", vmin=0, vmax=max(float(pattern.max()), 1e-12), interpolation="nearest")
        _label_axis(ax.xaxis, list(range(pattern.shape[2])))
        _label_axis(ax.yaxis, list(range(pattern.shape[1])))
        ax.set_title(f"head {h}")
        ax.set_xlabel("key position")
    axes[0][0].set_ylabel("query position")
    fig.colorbar(image, ax=axes[0].tolist())
    fig.suptitle(title)
    return fig


def plot_saliency(matrix: Any, *, d_out: int = 2, d_in: int = 2, title: str = "saliency |∂Y/∂X|") -> Figure:
    """A ``[pos_out · d_out, pos_in · d_in]`` saliency matrix (see ``probes.saliency_matrix``),
    the seed's Fig. 2, on a log colour scale."""
    matrix = np.abs(to_numpy(matrix))
    if matrix.ndim != 2:
        raise ValueError(f"matrix must be 2-D [pos_out·d_out, pos_in·d_in], got {list(matrix.shape)}")
    if matrix.shape[0] % d_out or matrix.shape[1] % d_in:
        raise ValueError(f"matrix {list(matrix.shape)} does not split into positions of d_out={d_out} rows and d_in={d_in} columns")
    floor = max(float(matrix.max()) * 1e-8, 1e-300)
    fig, ax = plt.subplots(figsize=(5.5, 4.8))
    image = ax.imshow(np.log10(np.maximum(matrix, floor)), cmap="viridis", interpolation="nearest")
    for axis, width in ((ax.xaxis, d_in), (ax.yaxis, d_out)):  # one tick per position, at its first component
        n_pos = (matrix.shape[1] if axis is ax.xaxis else matrix.shape[0]) // width
        ticks = sorted({int(i) for i in np.linspace(0, n_pos - 1, min(n_pos, 10)).round()})
        axis.set_ticks([t * width for t in ticks], [str(t) for t in ticks])
    ax.set_xlabel(f"input position ({d_in} components each)")
    ax.set_ylabel(f"output position ({d_out} components each)")
    fig.colorbar(image, ax=ax, label="log10 |∂Y/∂X|")
    ax.set_title(title)
    return fig


def plot_rollout(truth: Any, predictions: Mapping[str, Any], *, dt: float = 1.0, components: Sequence[str] = ("x", "p")) -> Figure:
    """One trajectory's true states ``[steps, d]`` against rolled-out predictions (``name → [steps, d]``).

    The vertical range follows the truth (three times its largest magnitude), so a prediction that
    diverges leaves the panel visibly instead of squashing every other curve into a flat line.
    """
    truth = to_numpy(truth)
    if truth.ndim != 2:
        raise ValueError(f"truth must have shape [steps, d], got {list(truth.shape)}")
    fig, axes = plt.subplots(truth.shape[1], 1, figsize=(7, 2.2 * truth.shape[1]), sharex=True, squeeze=False)
    time = dt * np.arange(truth.shape[0])
    for i, ax in enumerate(axes[:, 0]):
        ax.plot(time, truth[:, i], color="black", lw=2, label="truth")
        for name, pred in predictions.items():
            pred = to_numpy(pred)
            if pred.shape != truth.shape:
                raise ValueError(f"prediction {name!r} has shape {list(pred.shape)}, truth has {list(truth.shape)}")
            ax.plot(time, pred[:, i], lw=1.2, ls="--", label=name)
        scale = 3 * float(np.max(np.abs(truth[:, i]))) or 1.0
        ax.set_ylim(-scale, scale)
        ax.set_ylabel(components[i] if i < len(components) else f"state {i}")
    axes[0, 0].legend(loc="upper right", fontsize=8)
    axes[-1, 0].set_xlabel("time")
    return fig


__all__ = ["plot_ablation_grid", "plot_attention_patterns", "plot_patching", "plot_probe_r2", "plot_rollout", "plot_saliency"]
