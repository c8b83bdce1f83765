"""Matplotlib figures for physlens results; every function returns a ``Figure``."""

from physlens.plots.probes import (
    plot_ablation_grid,
    plot_attention_patterns,
    plot_patching,
    plot_probe_r2,
    plot_rollout,
    plot_saliency,
)
from physlens.plots.invariants import (
    plot_bottleneck_matches,
    plot_formula_front,
    plot_latent_vs_invariant,
)
from physlens.plots.training import plot_loss_curve, plot_phase_space, plot_rollout_error
from physlens.plots.evidence import plot_algorithm_comparison, plot_group_patching, plot_noise_curves, plot_steering, plot_swap_test
from physlens.plots.fma import (
    plot_loss_by_mode,
    plot_mode_gallery,
    plot_mode_over_time,
    plot_preactivation_maps,
    plot_roc_curves,
)

__all__ = [
    "plot_noise_curves",
    "plot_algorithm_comparison",
    "plot_group_patching",
    "plot_steering",
    "plot_swap_test",
    "plot_bottleneck_matches",
    "plot_formula_front",
    "plot_latent_vs_invariant",
    "plot_loss_curve",
    "plot_phase_space",
    "plot_rollout_error",
    "plot_loss_by_mode",
    "plot_mode_gallery",
    "plot_mode_over_time",
    "plot_preactivation_maps",
    "plot_roc_curves",
    "plot_ablation_grid",
    "plot_attention_patterns",
    "plot_patching",
    "plot_probe_r2",
    "plot_rollout",
    "plot_saliency",
]
