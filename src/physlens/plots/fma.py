"""Figures for the F = m·a study: pre-activation maps, a gallery per mode, ROC curves, modes over time.

Every function returns a matplotlib ``Figure`` and never shows it, so studies and notebooks decide
where it goes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.figure import Figure

from physlens.probes.mechanisms import NetworkLike, network_parameters
from physlens.probes.scan import RocResult
from physlens.systems.fma import support_vertices


def _grid(distribution: str, resolution: int) -> tuple[np.ndarray, np.ndarray, torch.Tensor]:
    top = float(support_vertices(distribution).max())
    axis = np.linspace(0.0, top, resolution)
    mm, aa = np.meshgrid(axis, axis)
    points = torch.from_numpy(np.stack([mm.ravel(), aa.ravel()], axis=1))
    return mm, aa, points


def _evaluate(params: Mapping[str, torch.Tensor], index: int, points: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    W_in, b_in = params["W_in"][index].double().cpu(), params["b_in"][index].double().cpu()
    W_out, b_out = params["W_out"][index].double().cpu(), params["b_out"][index].double().cpu()
    pre = points @ W_in + b_in  # [point, h]
    out = pre.clamp_min(0) @ W_out + b_out  # [point, 1]
    return pre.numpy(), out[:, 0].numpy()


def _in_support(distribution: str, mm: np.ndarray, aa: np.ndarray) -> np.ndarray:
    """True where (m, a) can be drawn from ``distribution``."""
    if distribution == "uniform":
        return (mm <= 1) & (aa <= 1)
    with np.errstate(divide="ignore"):
        return ((aa >= 0.5) & (aa <= 1) & (mm * aa <= 1)) | ((mm >= 0.5) & (mm <= 1) & (mm * aa <= 1))


def _image(ax: plt.Axes, values: np.ndarray, mm: np.ndarray, **style: object) -> None:
    # imshow renders far faster than pcolormesh for the many small panels of a gallery
    top = float(mm.max())
    ax.imshow(values, origin="lower", extent=(0.0, top, 0.0, top), aspect="auto", interpolation="nearest", **style)


def _zero_line(ax: plt.Axes, weights: np.ndarray, bias: float, top: float, **style: object) -> None:
    """Draw where ``weights · (m, a) + bias = 0`` inside the square [0, top]²: a unit's kink, exactly (it is a line)."""
    (wm, wa), ends = weights, []
    for fixed in (0.0, top):  # the four sides: m fixed, solve for a; a fixed, solve for m
        if wa != 0 and 0 <= (a := -(bias + wm * fixed) / wa) <= top:
            ends.append((fixed, a))
        if wm != 0 and 0 <= (m := -(bias + wa * fixed) / wm) <= top:
            ends.append((m, fixed))
    if len(ends) >= 2:
        ends.sort()
        ax.plot([ends[0][0], ends[-1][0]], [ends[0][1], ends[-1][1]], **style)


def _draw_support(ax: plt.Axes, distribution: str) -> None:
    corners = support_vertices(distribution).numpy()
    hull = np.vstack([corners, corners[:1]])
    ax.plot(hull[:, 0], hull[:, 1], color="0.3", lw=0.8, ls=":")


def plot_preactivation_maps(
    examples: Mapping[str, NetworkLike],
    *,
    distribution: str = "product",
    inputs: torch.Tensor | None = None,
    resolution: int = 81,
) -> Figure:
    """One row per labelled example network: each hidden unit's pre-activation over the input
    square (zero contour in black), then the network's output F̂ with the target m·a as contours.

    ``examples`` maps a label (e.g. a mode) to one network. ``inputs`` (``[n, 2]``), if given, are
    drawn as dots; the dotted outline is the support of ``distribution``.
    """
    if not examples:
        raise ValueError("examples must hold at least one network")
    mm, aa, points = _grid(distribution, resolution)
    top = float(mm.max())
    rows = {label: network_parameters(net) for label, net in examples.items()}
    width = max(p["W_in"].shape[2] for p in rows.values())
    fig, axes = plt.subplots(len(rows), width + 1, figsize=(2.6 * (width + 1), 2.4 * len(rows)), squeeze=False)
    for r, (label, params) in enumerate(rows.items()):
        pre, out = _evaluate(params, 0, points)
        for unit in range(width + 1):
            ax = axes[r, unit]
            if unit < pre.shape[1]:
                values = pre[:, unit].reshape(mm.shape)
                limit = max(np.abs(values).max(), 1e-9)
                _image(ax, values, mm, cmap="RdBu_r", vmin=-limit, vmax=limit)
                _zero_line(ax, params["W_in"][0, :, unit].double().cpu().numpy(), float(params["b_in"][0, unit]), top, color="k", lw=1.0)
                ax.set_title(f"{label}: unit {unit} pre-act.", fontsize=8)
            elif unit == width:
                _image(ax, out.reshape(mm.shape), mm, cmap="viridis")
                ax.contour(mm, aa, mm * aa, levels=[0.25, 0.5, 0.75, 1.0], colors="w", linewidths=0.6)
                ax.set_title(f"{label}: output F̂ (white: m·a)", fontsize=8)
            else:
                ax.axis("off")
                continue
            _draw_support(ax, distribution)
            ax.set_xlim(0.0, top)
            ax.set_ylim(0.0, top)
            if inputs is not None:
                shown = inputs[:300].detach().cpu().numpy()
                ax.scatter(shown[:, 0], shown[:, 1], s=1, c="0.2", alpha=0.3)
            ax.set_xlabel("m", fontsize=7)
            ax.set_ylabel("a", fontsize=7)
            ax.tick_params(labelsize=6)
    fig.tight_layout()
    return fig


def plot_mode_gallery(
    network: NetworkLike,
    labels: Sequence[str] | np.ndarray,
    *,
    losses: Sequence[float] | np.ndarray | None = None,
    modes: Sequence[str] | None = None,
    per_mode: int = 4,
    distribution: str = "product",
    resolution: int = 41,
    row_name: str = "mode",
) -> Figure:
    """A grid of example networks, one row per mode: each panel is the network's error F̂ − m·a over
    the input square with every hidden unit's zero line drawn in black (the ReLU kinks).

    ``labels`` may be any grouping (e.g. discovered groups); ``row_name`` names it in the titles.
    With ``losses`` the examples of each row are its lowest-loss networks."""
    params = network_parameters(network)
    labels = np.asarray(labels)
    if labels.shape[0] != params["W_in"].shape[0]:
        raise ValueError(f"labels must have one entry per network ({params['W_in'].shape[0]}), got {labels.shape[0]}")
    modes = list(modes) if modes is not None else sorted(set(labels.tolist()))
    mm, aa, points = _grid(distribution, resolution)
    top = float(mm.max())
    ticks = np.linspace(0.0, top, 5)
    fig, axes = plt.subplots(len(modes), per_mode, figsize=(2.2 * per_mode, 2.1 * len(modes)), squeeze=False)
    for r, mode in enumerate(modes):
        members = np.flatnonzero(labels == mode)
        if losses is not None:
            members = members[np.argsort(np.asarray(losses)[members], kind="stable")]
        members = members[:per_mode]
        for c in range(per_mode):
            ax = axes[r, c]
            if c >= len(members):
                ax.axis("off")
                continue
            index = int(members[c])
            pre, out = _evaluate(params, index, points)
            error = (out - (mm * aa).ravel()).reshape(mm.shape)
            error[~_in_support(distribution, mm, aa)] = np.nan  # only where data can lie
            _image(ax, error, mm, cmap="RdBu_r", vmin=-0.15, vmax=0.15)
            W_in, b_in = params["W_in"][index].double().cpu().numpy(), params["b_in"][index].double().cpu().numpy()
            for unit in range(W_in.shape[1]):
                _zero_line(ax, W_in[:, unit], float(b_in[unit]), top, color="k", lw=0.8)
            _draw_support(ax, distribution)
            ax.set_xlim(0.0, top)
            ax.set_ylim(0.0, top)
            ax.set_xticks(ticks)
            ax.set_yticks(ticks)
            # tick labels on the outer panels only: drawing them is most of a gallery's time
            below = r + 1 < len(modes) and c < min(per_mode, int((labels == modes[r + 1]).sum()))
            ax.tick_params(labelsize=6, labelbottom=not below, labelleft=c == 0)
            loss = f", val {losses[index]:.2e}" if losses is not None else ""
            ax.set_title(f"{row_name} {mode} #{index}{loss}", fontsize=7)
    fig.suptitle("F̂ − m·a on the data's support (red: too high, ±0.15); black lines: unit kinks", fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.35 / fig.get_figheight()))  # leave room for the title above the first row
    return fig


def plot_roc_curves(curves: Mapping[str, RocResult], *, title: str = "ROC") -> Figure:
    """ROC curves with their AUC in the legend."""
    if not curves:
        raise ValueError("curves must hold at least one ROC curve")
    fig, ax = plt.subplots(figsize=(4.6, 4.2 + 0.16 * len(curves)))
    for name, roc in curves.items():
        interval = f" [{roc.interval.low:.2f}, {roc.interval.high:.2f}]" if roc.interval is not None else ""
        ax.plot(roc.fpr, roc.tpr, lw=1.3, label=f"{name} (AUC {roc.auc:.3f}{interval}, {roc.n_positive}+/{roc.n_negative}−)")
    ax.plot([0, 1], [0, 1], color="0.6", lw=0.8, ls="--")
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=6, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=1)
    fig.tight_layout()
    return fig


def plot_mode_over_time(epochs: Sequence[int] | np.ndarray, labels: np.ndarray, *, modes: Sequence[str] | None = None) -> Figure:
    """Fraction of networks in each mode at every snapshot epoch (``labels`` is ``[snapshot, model]``)."""
    labels = np.asarray(labels)
    epochs = np.asarray(epochs)
    if labels.ndim != 2 or labels.shape[0] != epochs.shape[0]:
        raise ValueError(f"labels must have shape [snapshot={epochs.shape[0]}, model], got {list(labels.shape)}")
    modes = list(modes) if modes is not None else sorted(set(labels.ravel().tolist()))
    fractions = np.stack([(labels == mode).mean(axis=1) for mode in modes])
    fig, ax = plt.subplots(figsize=(5.5, 3.2))
    ax.stackplot(epochs, fractions, labels=[f"mode {m}" for m in modes], alpha=0.85)
    ax.set_xlabel("epoch")
    ax.set_ylabel("fraction of networks")
    ax.set_xlim(epochs.min(), epochs.max())
    ax.set_ylim(0, 1)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))
    fig.tight_layout()
    return fig


def plot_loss_by_mode(
    losses: np.ndarray,
    labels: np.ndarray,
    *,
    modes: Sequence[str] | None = None,
    references: Mapping[str, float] | None = None,
    row_name: str = "mode",
) -> Figure:
    """Histograms of validation loss (log scale) per mode, with optional reference losses (e.g. the
    best plane on the same distribution) drawn as vertical lines."""
    losses, labels = np.asarray(losses, dtype=float), np.asarray(labels)
    if losses.shape != labels.shape:
        raise ValueError(f"losses and labels must have the same shape, got {losses.shape} and {labels.shape}")
    modes = list(modes) if modes is not None else sorted(set(labels.tolist()))
    positive = losses[losses > 0]
    bins = np.geomspace(positive.min(), positive.max(), 50) if positive.size > 1 else 20
    fig, ax = plt.subplots(figsize=(5.8, 3.3))
    for mode in modes:
        chosen = losses[labels == mode]
        if chosen.size:
            ax.hist(chosen, bins=bins, alpha=0.6, label=f"{row_name} {mode} ({chosen.size})")
    for index, (name, value) in enumerate((references or {}).items()):
        ax.axvline(value, color="k", lw=1.0, ls=("--", ":", "-.")[index % 3], label=name)
    ax.set_xscale("log")
    ax.set_xlabel("validation MSE")
    ax.set_ylabel("networks")
    ax.legend(fontsize=6, loc="center left", bbox_to_anchor=(1.0, 0.5))
    fig.tight_layout()
    return fig


__all__ = ["plot_loss_by_mode", "plot_mode_gallery", "plot_mode_over_time", "plot_preactivation_maps", "plot_roc_curves"]
