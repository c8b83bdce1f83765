"""The ``[analyses.saliency]`` section: the input Jacobian of every prediction, how much of it lies off the
position diagonal, and the last layer's attention."""

from __future__ import annotations

from typing import Any

import torch

from physlens.models.base import HookedModel
from physlens.plots.probes import plot_attention_patterns, plot_saliency
from physlens.probes.activations import capture_activations
from physlens.probes.input_attribution import off_diagonal_fraction, saliency, saliency_matrix
from physlens.studies.oscillator_analyses.common import AnalysisContext, _check_positive
from physlens.studies.report import format_number
from physlens.systems.oscillator import OscillatorSystem


def check(opts: dict[str, Any], model: HookedModel, system: OscillatorSystem, seq_len: int) -> None:
    """Check the ``[analyses.saliency]`` options ``opts`` against ``model``, ``system`` and ``seq_len`` before any training."""
    _check_positive("saliency", opts, ("n_trajectories",))


def run(ctx: AnalysisContext, opts: dict[str, Any]) -> None:
    """Measure the saliency map and the last layer's attention and add the section and finding."""
    model, report = ctx.model, ctx.report
    data = ctx.sample("saliency trajectories", opts["n_trajectories"], ctx.seq_len)
    jacobian = saliency(model, data.states)
    matrix = saliency_matrix(jacobian)
    off = off_diagonal_fraction(jacobian)
    last = jacobian[:, -1].pow(2).sum(dim=(0, 1, 3))  # [pos_in]: what the last prediction reads
    share_last_input = float(last[-1] / last.sum())
    report.heading("Saliency", level=3)
    report.paragraph(
        f"Jacobian ∂Y_t/∂X_s on {len(data.states)} trajectories: {format_number(100 * off)} % of its squared norm lies "
        f"off the position diagonal (0 % for a model that ignores other time steps, the seed's Fig. 2); the last "
        f"prediction draws {format_number(100 * share_last_input)} % of its sensitivity from the last input state."
    )
    report.figure("saliency", plot_saliency(matrix), "Mean |∂Y/∂X| over positions and components (rows: outputs, columns: inputs).")
    with torch.no_grad():
        patterns = capture_activations(model, data.states, [f"blocks.{model.cfg.n_layers - 1}.attn.hook_pattern"], None)
    pattern = next(iter(patterns.values())).mean(dim=0)
    report.figure("attention_last_layer", plot_attention_patterns(pattern, title="last layer attention (batch mean)"),
                  "Attention patterns of the last layer, averaged over trajectories.")
    ctx.metrics["saliency"] = {"off_diagonal_fraction": off, "last_prediction_share_from_last_input": share_last_input, "matrix": matrix.tolist()}
    if off < 1e-3:
        verdict = "is block-diagonal in position: each prediction reads only its own time step, as in the seed's OLA"
    elif off < 0.1:
        verdict = "is mostly diagonal: each prediction reads mainly its own time step"
    else:
        verdict = "mixes time steps strongly"
    ctx.findings.append(
        f"The saliency map {verdict} ({format_number(100 * off)} % of ‖∂Y/∂X‖² off the diagonal; the last prediction takes "
        f"{format_number(100 * share_last_input)} % of its sensitivity from the last input state)."
    )
