"""The ``[analyses.ablation]`` section: zero- and mean-ablate every head and attention layer and compare the
loss with the unablated model's."""

from __future__ import annotations

from typing import Any

import numpy as np

from physlens.models.base import HookedModel
from physlens.plots.probes import plot_ablation_grid
from physlens.probes.ablation import ablation_sweep
from physlens.studies.oscillator_analyses.common import AnalysisContext, _check_positive, _error
from physlens.studies.report import format_number
from physlens.systems.oscillator import OscillatorSystem


def check(opts: dict[str, Any], model: HookedModel, system: OscillatorSystem, seq_len: int) -> None:
    """Check the ``[analyses.ablation]`` options ``opts`` against ``model``, ``system`` and ``seq_len`` before any training."""
    _check_positive("ablation", opts, ("n_trajectories", "rollout_trajectories", "rollout_steps"))
    bad = [m for m in opts["methods"] if m not in ("zero", "mean", "resample")]
    if bad or not opts["methods"]:
        raise _error("ablation", "methods", f"must list methods among zero, mean, resample; got {opts['methods']!r}")
    if opts["head_hook"] not in ("z", "result"):
        raise _error("ablation", "head_hook", f"must be 'z' or 'result', got {opts['head_hook']!r}")


def run(ctx: AnalysisContext, opts: dict[str, Any]) -> None:
    """Ablate every head and attention layer with each method and add the table, figure and metrics."""
    model, report = ctx.model, ctx.report
    data = ctx.sample("ablation trajectories", opts["n_trajectories"], ctx.seq_len + 1)
    inputs, targets = data.inputs_targets()
    steps = opts["rollout_steps"]
    roll = ctx.sample("ablation rollouts", opts["rollout_trajectories"], ctx.seq_len + steps)
    report.heading("Ablation", level=3)
    report.paragraph(
        f"Each head (via hook_{opts['head_hook']}) and each attention layer is replaced in turn; next-step loss on "
        f"{len(inputs)} trajectories (loss positions: {ctx.loss_positions}) and the median mean relative error of "
        f"{steps}-step rollouts from {len(roll)} contexts."
    )
    out, rows = {}, []
    for method in opts["methods"]:
        result = ablation_sweep(
            model, inputs, targets, method=method, head_hook=opts["head_hook"], loss_positions=ctx.loss_positions,
            rollout_context=roll.states[:, : ctx.seq_len], rollout_truth=roll.states[:, ctx.seq_len :],
            seed=ctx.stream(f"ablation {method}"), progress=ctx.progress,
        )
        out[method] = result.to_dict()
        layer, head = result.most_important_head()
        worst_layer = int(np.argmax(result.attn_loss))
        rows.append([method, result.baseline_loss, f"L{layer} H{head}", result.head_loss[layer, head], f"L{worst_layer}", result.attn_loss[worst_layer]])
        report.figure(f"ablation_{method}", plot_ablation_grid(result), f"{method} ablation: next-step loss relative to the unablated model.")
        unchanged = result.baseline_loss * (1 + 1e-6)  # "hurts most" would rank round-off
        if result.head_loss[layer, head] <= unchanged and result.attn_loss[worst_layer] <= unchanged:
            ctx.findings.append(
                f"{method.capitalize()}-ablating any head or whole attention layer leaves the next-step loss at "
                f"{format_number(result.baseline_loss)} (largest ×{format_number(result.attn_loss[worst_layer] / result.baseline_loss)}): "
                "the prediction does not depend on what attention writes."
            )
            continue
        ctx.findings.append(
            f"{method.capitalize()}-ablating layer {layer} head {head} hurts most among heads: next-step loss "
            f"{format_number(result.head_loss[layer, head])} vs {format_number(result.baseline_loss)} unablated "
            f"(×{format_number(result.head_loss[layer, head] / result.baseline_loss)}); the whole attention layer {worst_layer} "
            f"gives ×{format_number(result.attn_loss[worst_layer] / result.baseline_loss)}."
        )
    report.table(["method", "unablated loss", "worst head", "its loss", "worst attention layer", "its loss"], rows)
    ctx.metrics["ablation"] = out
