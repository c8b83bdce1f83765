"""The ``[analyses.swap]`` section: the context-swap causal test, pairs of contexts that end in the same state
but come from different ω0 or γ."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from physlens.models.base import HookedModel
from physlens.models.reference import InContextLeastSquares
from physlens.plots.evidence import plot_swap_test
from physlens.probes.context_swap import context_swap_test
from physlens.studies.oscillator_analyses.common import AnalysisContext, _check_positive, _check_varies
from physlens.studies.report import format_number
from physlens.systems.oscillator import OscillatorSystem


def check(opts: dict[str, Any], model: HookedModel, system: OscillatorSystem, seq_len: int) -> None:
    """Check the ``[analyses.swap]`` options ``opts`` against ``model``, ``system`` and ``seq_len`` before any training."""
    _check_positive("swap", opts, ("n_pairs",))
    _check_varies("swap", system, opts["vary"], opts["min_change"])


def run(ctx: AnalysisContext, opts: dict[str, Any]) -> None:
    """Run the context-swap test on the model, a random-init copy and least squares, and add its section and finding."""
    a, b = ctx.system.sample_swap_pairs(opts["n_pairs"], ctx.seq_len, seed=ctx.stream("swap pairs"), vary=opts["vary"],
                                        min_change=opts["min_change"])
    a, b = a.to(dtype=ctx.dtype), b.to(dtype=ctx.dtype)
    result = context_swap_test(ctx.model, a, b, seed=ctx.stream("swap bootstrap"))
    control = context_swap_test(ctx.control_model(), a, b, seed=ctx.stream("swap bootstrap"))
    exact = context_swap_test(InContextLeastSquares(), a.to(dtype=torch.float64), b.to(dtype=torch.float64), n_resamples=200)
    vary = "ω0" if opts["vary"] == "omega0" else "γ"
    report = ctx.report
    report.heading(f"Causal test: context swap ({vary})", level=3)
    report.paragraph(
        f"{result.n_pairs} pairs of {ctx.seq_len}-state contexts end in the same state s but come from different {vary} "
        f"(at least {format_number(opts['min_change'])} apart). The difference of the model's predictions is regressed "
        "(through the origin, x and p pooled) on the true difference K(a)s − K(b)s; 95 % intervals from a bootstrap over pairs."
    )
    report.table(["predictor", "slope [95 % CI]", "R²"], [
        ["trained model", result.slope.format(), result.r2],
        ["random-init control", control.slope.format(), control.r2],
        ["in-context least squares (exact)", exact.slope.format(), exact.r2],
    ])
    report.figure("context_swap", plot_swap_test(result, title=f"context swap: same final state, different {vary}"),
                  f"The model's prediction difference against the true difference for swap pairs differing in {vary}.")
    ctx.metrics["swap"] = {"model": result.to_dict(), "random_init_control": control.to_dict(), "exact": exact.to_dict(), "vary": opts["vary"]}
    slope = result.slope
    if slope.low <= 1 <= slope.high:
        what = f"moves with {vary} as the true propagator does (slope 1 lies in the interval)"
    elif 0.95 <= slope.low and slope.high <= 1.05:
        what = (f"moves with {vary} almost exactly as the true propagator does, by {format_number(100 * slope.estimate)} % of "
                "the true amount (the interval excludes 1, but only by a few per cent)")
    elif slope.low > 0:
        what = f"moves with {vary} in the right direction, by {format_number(100 * slope.estimate)} % of the true amount"
    else:
        what = f"does not move with {vary} (the interval includes 0)"
    gap = float(np.sqrt(((result.model_difference - result.true_difference) ** 2).sum() / (result.true_difference**2).sum()))
    ctx.metrics["swap"]["relative_difference_error"] = gap
    ctx.findings.append(
        f"Context swap: with the final state fixed, the model's prediction {what}: slope {slope.format()}, R² {format_number(result.r2)} "
        f"(random-init control: slope {control.slope.format()}, R² {format_number(control.r2)}). What this measures: the model's "
        f"error on the difference is {format_number(gap)} of the difference's size, and any predictor that accurate has a slope near 1 "
        "whatever algorithm it runs, so the test shows that the prediction depends on the context as the dynamics do, not how the "
        "model infers them."
    )
    ctx.shared["swap_pairs"] = (a, b)
