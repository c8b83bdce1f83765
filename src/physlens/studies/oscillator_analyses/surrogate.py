"""The ``[analyses.surrogate]`` section: a linear autoregressive surrogate fitted to the model's own
predictions, and how long its rollouts track the model's."""

from __future__ import annotations

from typing import Any

from physlens.models.base import HookedModel
from physlens.plots.probes import plot_rollout
from physlens.probes.surrogate import LinearSurrogate
from physlens.studies.oscillator_analyses.common import AnalysisContext, _check_positive, _error
from physlens.studies.report import format_number
from physlens.systems.oscillator import OscillatorSystem


def check(opts: dict[str, Any], model: HookedModel, system: OscillatorSystem, seq_len: int) -> None:
    """Check the ``[analyses.surrogate]`` options ``opts`` against ``model``, ``system`` and ``seq_len`` before any training."""
    _check_positive("surrogate", opts, ("n_trajectories", "rollout_trajectories", "rollout_steps"))
    if not opts["threshold"] > 0:
        raise _error("surrogate", "threshold", f"must be > 0, got {opts['threshold']}")


def run(ctx: AnalysisContext, opts: dict[str, Any]) -> None:
    """Fit the linear surrogate, roll it out beside the model and add the section and finding."""
    report = ctx.report
    steps = opts["rollout_steps"]
    train = ctx.sample("surrogate fit trajectories", opts["n_trajectories"], ctx.seq_len)
    held_out = ctx.sample("surrogate rollouts", opts["rollout_trajectories"], ctx.seq_len + steps)
    contexts, truth = held_out.states[:, : ctx.seq_len], held_out.states[:, ctx.seq_len :]
    surrogate = LinearSurrogate().fit(ctx.model, train.states)
    fidelity = surrogate.fidelity(ctx.model, contexts, steps, threshold=opts["threshold"])
    report.heading("Linear surrogate", level=3)
    report.paragraph(
        f"A closed-form linear autoregressive model over T = {ctx.seq_len} states fitted to the transformer's own next-step "
        f"predictions on {len(train.states)} trajectories (the seed's Fig. 8); {steps}-step rollouts of both from "
        f"{len(contexts)} held-out contexts. (The linear AR fitted to the physics is a reference in the task section above.)"
    )
    report.table(["quantity", "value"], [
        ["surrogate one-step R² vs the model (held out)", fidelity.one_step_r2],
        [f"surrogate diverges from the model (median deviation > {format_number(opts['threshold'])}) at step",
         fidelity.divergence_step if fidelity.divergence_step is not None else f"never within {steps}"],
        ["surrogate–model deviation at the last step", float(fidelity.divergence[-1])],
        ["spectral radius of the surrogate's own dynamics (below 1: a rollout settles)", fidelity.spectral_radius],
    ])
    report.figure("rollout_vs_surrogate", plot_rollout(truth[0], {"transformer": fidelity.model_path[0], "linear surrogate": fidelity.surrogate_path[0]},
                                                       dt=ctx.system.dt),
                  "One held-out trajectory: truth, transformer and the transformer's linear surrogate.")
    ctx.metrics["surrogate"] = {**fidelity.to_dict(), "surrogate_fit_r2": surrogate.fit_r2_}
    if fidelity.divergence_step is None:
        ctx.findings.append(f"A linear surrogate tracks the transformer for all {steps} rollout steps (deviation ≤ "
                            f"{format_number(opts['threshold'])}): the model behaves like a linear map of its window here.")
    elif not fidelity.surrogate_stable:
        ctx.findings.append(
            f"The linear surrogate matches the transformer one step ahead with R² {format_number(fidelity.one_step_r2)}, but its own "
            f"dynamics are unstable (spectral radius {format_number(fidelity.spectral_radius)} > 1, while every oscillator here decays), "
            f"so its rollout departs from the model's after {fidelity.divergence_step} step(s) whatever the model computes: "
            "this surrogate cannot tell whether the transformer reduced to a linear map."
        )
    else:
        ctx.findings.append(
            f"The linear surrogate matches the transformer one step ahead with R² {format_number(fidelity.one_step_r2)} and its own "
            f"dynamics are stable (spectral radius {format_number(fidelity.spectral_radius)}), but its rollout departs from the model's "
            f"(median deviation > {format_number(opts['threshold'])}) after {fidelity.divergence_step} step(s): "
            "the transformer did not reduce to a linear model."
        )
