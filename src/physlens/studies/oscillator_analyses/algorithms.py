"""The ``[analyses.algorithms]`` section: the model beside candidate algorithms (least squares, AR-k, the
current state) at every context length."""

from __future__ import annotations

from typing import Any

from physlens.models.base import HookedModel
from physlens.plots.evidence import plot_algorithm_comparison
from physlens.probes.algorithms import compare_algorithms, fit_ar_candidates, integer_ranges
from physlens.studies.oscillator_analyses.common import AnalysisContext, _check_positive, _error
from physlens.studies.report import format_number
from physlens.systems.oscillator import OscillatorSystem
from physlens.training.evaluation import float64_system


FAILED_ROLLOUT = 1.0
"""A rollout whose median relative error reaches this has lost the trajectory (it is as far off as predicting 0)."""


def check(opts: dict[str, Any], model: HookedModel, system: OscillatorSystem, seq_len: int) -> None:
    """Check the ``[analyses.algorithms]`` options ``opts`` against ``model``, ``system`` and ``seq_len`` before any training."""
    _check_positive("algorithms", opts, ("n_trajectories", "horizon", "n_reference_trajectories"))
    if opts["context_lengths"] != "all":
        ks = opts["context_lengths"]
        if not isinstance(ks, list) or not ks or not all(isinstance(k, int) and not isinstance(k, bool) for k in ks):
            raise _error("algorithms", "context_lengths", f"must be 'all' or a list of integers, got {ks!r}")
        if min(ks) < 2 or max(ks) > seq_len:
            raise _error("algorithms", "context_lengths", f"must lie in 2..{seq_len} (the model's context), got {ks}")


def run(ctx: AnalysisContext, opts: dict[str, Any]) -> None:
    """Compare the model with the candidate algorithms by context length and add the table, figure and finding."""
    ks = list(range(2, ctx.seq_len + 1)) if opts["context_lengths"] == "all" else sorted(set(opts["context_lengths"]))
    horizon = opts["horizon"]
    # float64 states: the AR-k filters amplify float32 rounding of their inputs into diverging rollouts.
    data = float64_system(ctx.system).sample(opts["n_trajectories"], max(ks) + horizon, seed=ctx.stream("algorithms trajectories"))
    candidates = fit_ar_candidates(ctx.system, ks, seed=ctx.stream("algorithms AR fits"), n_traj=opts["n_reference_trajectories"])
    comparison = compare_algorithms(ctx.model, data, ks, candidates, horizon=horizon)
    report = ctx.report
    report.heading("Which algorithm? The model beside candidate algorithms, by context length", level=3)
    report.paragraph(
        f"{len(data)} fresh trajectories. For every context length k the model and each candidate see the first k states "
        f"and predict the next one, then roll out {horizon} steps keeping a window of k states. Candidates: in-context "
        "least squares on the k states (infer K, then step — exact from k = 3 on noiseless data), the linear AR-k filter "
        "fitted in closed form in float64, the current-state-only map, and the exact propagator. *Shared error* is the "
        "share of the model's squared error a candidate reproduces (1: the same mistakes; ≤ 0: none of them)."
    )
    rows = []
    best = comparison.best_match()
    shown = sorted({k for k in (2, 3, 4, 5, 8, 10, 20, 30, 40, ks[-1]) if k in ks})
    for k in shown:
        i = ks.index(k)
        rows.append([k, comparison.model_error[i], comparison.model_rollout_error[i],
                     comparison.rollout_error["in-context least squares (k states)"][i],
                     comparison.rollout_error["linear AR-k (float64)"][i],
                     comparison.rollout_error["current state only"][i], best[i] or "none (its own)"])
    report.table(["k", "model one-step error", f"model {horizon}-step error", f"least squares {horizon}-step",
                  f"AR-k {horizon}-step", f"current state {horizon}-step", "best match (rollout)"], rows)
    if isinstance(ctx.loss_positions, int) and ctx.loss_positions > 0:
        report.paragraph(f"The training loss skipped the first {ctx.loss_positions} positions, so the model was never trained to "
                         f"predict from fewer than {ctx.loss_positions + 1} states: its errors at shorter contexts are expected.")
    report.figure("algorithms", plot_algorithm_comparison(comparison),
                  "Model and candidate algorithms against context length: errors (top) and the share of the model's error each candidate reproduces (bottom).")
    ctx.metrics["algorithms"] = comparison.to_dict()
    ar_error = comparison.rollout_error["linear AR-k (float64)"]
    # A rollout whose median relative error is 1 or more has lost the trajectory: two failed rollouts are no comparison.
    compared = [k for i, k in enumerate(ks) if min(comparison.model_rollout_error[i], ar_error[i]) < FAILED_ROLLOUT]
    beats_ar = [k for k in comparison.more_accurate_than("linear AR-k (float64)") if k in compared]
    least_squares = comparison.rollout_error["in-context least squares (k states)"]
    exact_from = [k for i, k in enumerate(ks) if k >= 3 and least_squares[i] < comparison.model_rollout_error[i]]
    ctx.findings.append(
        f"Which algorithm (shared error): {comparison.verdict()}. This comparison cannot identify an exact candidate: the "
        "oracle's and least squares' errors are ≈ 0, so their shared error with any model is ≈ 0 by construction, and "
        "'none' does not rule them out. The model's "
        f"{horizon}-step rollouts are more accurate than the fitted AR-k filter at {len(beats_ar)} of the {len(compared)} context "
        f"lengths where at least one of the two rollouts stays below relative error {FAILED_ROLLOUT:g}"
        + (f" (k = {integer_ranges(beats_ar)})" if beats_ar else "")
        + f"; in-context least squares over the same k states is more accurate than the model at {len(exact_from)} of the "
        f"{sum(k >= 3 for k in ks)} lengths k ≥ 3 ({format_number(float(least_squares[-1]))} at k = {ks[-1]} against the "
        f"model's {format_number(float(comparison.model_rollout_error[-1]))}), so 'better than a linear filter' holds for the "
        "fitted AR-k only, not for the best linear use of the context."
    )
