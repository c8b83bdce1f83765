"""Matplotlib figures for physlens results; every function returns a ``Figure``."""

from physlens.plots.probes import (
    plot_ablation_grid,
    plot_attention_patterns,
    plot_patching,
    plot_probe_r2,
    plot_rollout,
    plot_saliency,
)

__all__ = [
    "plot_ablation_grid",
    "plot_attention_patterns",
    "plot_patching",
    "plot_probe_r2",
    "plot_rollout",
    "plot_saliency",
]
