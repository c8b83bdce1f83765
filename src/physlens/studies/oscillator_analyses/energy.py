"""The ``[analyses.energy]`` section: is the physical energy in the model beyond its controls, and does the
model's rollout energy decay as γ says?"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from physlens.models.base import HookedModel
from physlens.probes.baselines import input_baseline_r2
from physlens.probes.energy import probe_sites_beside_controls, rollout_energy_decay
from physlens.probes.selection import site_features
from physlens.studies.oscillator_analyses.common import (
    AnalysisContext,
    FIRST_STATE_UNITS,
    _check_positive,
    _cv_r2,
    _error,
    _positions,
    _short_site,
    _varies,
    expand_hooks,
)
from physlens.studies.report import format_number
from physlens.systems.oscillator import OscillatorSystem
from physlens.training.evaluation import float64_system


FIRST_STATE_ENERGY = FIRST_STATE_UNITS["energy"][0]
"""What the ``energy`` label is for a ``scale_by_first_state`` model: E/‖s0‖², a function of ω0 and the
phase only (the model never sees a state's size, so it cannot carry the physical energy)."""


NO_LINEAR_READOUT = 0.1
"""Below this held-out R² at its best site, a label is reported as not linearly readable from the model."""


def check(opts: dict[str, Any], model: HookedModel, system: OscillatorSystem, seq_len: int) -> None:
    """Check the ``[analyses.energy]`` options ``opts`` against ``model``, ``system`` and ``seq_len`` before any training."""
    _check_positive("energy", opts, ("n_trajectories", "n_folds", "n_controls", "last_k", "rollout_trajectories", "rollout_steps"))
    if opts["n_folds"] < 2:
        raise _error("energy", "n_folds", f"must be >= 2 for cross-validation, got {opts['n_folds']}")
    if opts["n_trajectories"] < 2 * opts["n_folds"]:
        raise _error("energy", "n_trajectories", f"must be at least 2 × n_folds = {2 * opts['n_folds']}, got {opts['n_trajectories']}")
    if opts["rollout_steps"] < 2:
        raise _error("energy", "rollout_steps", f"must be >= 2 to fit a decay rate, got {opts['rollout_steps']}")
    expand_hooks(model, opts["hooks"], "[analyses.energy] hooks")
    _positions(opts["positions"], seq_len, "[analyses.energy] positions")


def _energy_site_rows(result: Any) -> list[list[Any]]:
    return [[_short_site(site), *(result.at(site)[key] for key in ("r2", "strongest_random_init_r2", "shuffled_r2", "input_baseline_r2",
                                                                  "selectivity_over_baseline"))]
            for site in result.sites]


def run(ctx: AnalysisContext, opts: dict[str, Any]) -> None:
    """Probe the energy at every site beside its controls, measure its rollout decay and add the section."""
    model, report, seq_len = ctx.model, ctx.report, ctx.seq_len
    hooks = expand_hooks(model, opts["hooks"], "[analyses.energy] hooks")
    positions = _positions(opts["positions"], seq_len, "[analyses.energy] positions")
    scaled = bool(model.cfg.scale_by_first_state)
    data = ctx.sample("energy trajectories", opts["n_trajectories"], seq_len)
    X, sites = site_features(model, data.states, hooks, positions)
    controls = [site_features(ctx.control_model(i), data.states, hooks, positions)[0] for i in range(opts["n_controls"])]
    seed = ctx.stream("energy probes")
    site_positions = torch.tensor([p for _, p in sites])
    labels = {"energy": data.to(dtype=torch.float64).labels()["energy"]}
    if scaled:
        labels[FIRST_STATE_ENERGY] = data.to(dtype=torch.float64).labels(first_state_units=True)["energy"]
    results = {}
    for name, values in labels.items():
        baseline = {p: input_baseline_r2(data.states, values[:, p], position=p, last_k=min(opts["last_k"], p + 1),
                                         scale_by_first_state=scaled, n_folds=opts["n_folds"], seed=seed) for p in positions}
        results[name] = probe_sites_beside_controls(X, controls, values.cpu()[:, site_positions], sites, label=name,
                                                    baseline_r2=np.array([baseline[p] for _, p in sites]), n_folds=opts["n_folds"],
                                                    seed=seed)
    if scaled:  # how much of the physical energy E/‖s0‖² alone explains, linearly (other functions of the scaled states may add some)
        last = positions[-1]
        summary_ceiling = _cv_r2(labels[FIRST_STATE_ENERGY][:, last, None], labels["energy"][:, last].cpu().numpy(), seed, opts["n_folds"])
    report.heading("Energy: probes at every site beside their controls, and its decay along rollouts", level=3)
    units = ("The model divides its input by the size of its first state, so it never sees how large a trajectory is: the "
             f"physical energy is not a function of what it sees, and the label a probe can find is `{FIRST_STATE_ENERGY}`, "
             "E/‖s0‖², the energy in units of the first state's size — a function of ω0 and the phase only. Both are probed. "
             if scaled else "The model sees the states in physical units. ")
    report.paragraph(
        units + f"Physical energy E = ½(p² + ω0²x²) at each site's position; ridge probes on {len(data)} fresh trajectories at "
        f"{len(hooks)} hooks × {len(positions)} positions, held-out R² by {opts['n_folds']}-fold cross-validation over trajectories. "
        f"Controls at every site: {opts['n_controls']} random-init copies of the model (the strongest is shown), the same probe "
        f"with the labels shuffled across trajectories, and the input baseline — quadratic features of the last {opts['last_k']} "
        "input states, in the units the model sees. E is a quadratic function of the current state (ω0²x² is a quadratic of two "
        "consecutive states, since the step from one to the next carries ω0), so the input baseline is expected to explain "
        "most of it: only the selectivity over that baseline says the model adds anything.")
    summary: dict[str, Any] = {}
    if scaled:
        summary["physical_from_first_state_units_r2"] = {"position": last, "r2": summary_ceiling}
        report.paragraph(f"At position {last}, a linear fit of the physical energy on {FIRST_STATE_ENERGY} alone has held-out R² "
                         f"{format_number(summary_ceiling)}: the part of the physical energy the label this model can carry explains. "
                         "What else a probe of the model reads comes from other functions of the scaled states (such as how far the "
                         "energy has decayed), which the input-baseline column measures; the model never sees a trajectory's size.")
    for name, result in results.items():
        best = result.best_site()
        at = result.at(best)
        summary[name] = {**result.to_dict(), "best": at}
        report.table([f"site ({name})", "held-out R²", "strongest random-init R²", "shuffled-label R²",
                      f"input baseline R² (last {opts['last_k']} states, quadratic)", "selectivity over the baseline"],
                     _energy_site_rows(result))
    # 2. the energy of the model's own rollouts: E(t)/E(0) against the decay law e^{−2γt}
    rollouts = float64_system(ctx.system).sample(opts["rollout_trajectories"], seq_len + opts["rollout_steps"], seed=ctx.stream("energy rollouts"))
    try:
        decay = rollout_energy_decay(model, rollouts, context_len=seq_len)
    except ValueError as error:
        decay = None
        report.paragraph(f"**Energy decay along rollouts** could not be read: {error}.")
    if decay is not None:
        T = (decay.n_steps - 1) * ctx.system.dt
        report.paragraph(
            f"**Energy decay along rollouts.** {len(rollouts)} fresh trajectories: the model is given {seq_len} true states and rolls "
            f"out {decay.n_steps} steps (T = {format_number(T)} time units). On average the energy decays as e^{{−2γt}} (exactly, "
            "dE/dt = −2γp², which oscillates about −2γE); the damping rate γ̂ = −slope/2 of a line through log E(t) is read off the "
            "model's rollout and off the true trajectory with the same fit.")
        gamma_varies = _varies(ctx.system, "gamma")
        rows = [
            ["median E(T)/E(0)", float(np.median(decay.model_ratio)), float(np.median(decay.true_ratio))],
            ["median e^{−2γT} (the law)", float(np.median(decay.law_ratio())), float(np.median(decay.law_ratio()))],
            ["median relative distance of E(T)/E(0) from e^{−2γT}", decay.law_error("model"), decay.law_error("truth")],
            ["median relative distance of E(T)/E(0) from the true trajectory's", float(np.median(decay.final_ratio_error)), "—"],
            ["RMSE of γ̂ against the true trajectory's γ̂", decay.rmse(), "—"],
        ]
        if gamma_varies:  # with one γ for every trajectory the truth's γ̂ barely varies, and an R² against it means nothing
            rows.append(["R² of γ̂ against the true trajectory's γ̂", decay.r2(), "—"])
        report.table(["quantity", "model's rollout", "true trajectory"], rows)
        summary["decay"] = decay.to_dict()
    ctx.metrics["energy"] = summary
    physical = results["energy"].at(results["energy"].best_site())
    sentence = (f"Energy: the physical energy's best site is {_short_site(results['energy'].best_site())} with held-out R² "
                f"{format_number(physical['r2'])} (strongest random-init copy {format_number(physical['strongest_random_init_r2'])}, "
                f"shuffled labels {format_number(physical['shuffled_r2'])}, input baseline {format_number(physical['input_baseline_r2'])}; "
                f"selectivity over the baseline {format_number(physical['selectivity_over_baseline'])})")
    if scaled:
        first = results[FIRST_STATE_ENERGY].at(results[FIRST_STATE_ENERGY].best_site())
        sentence += (f". The model is scale-equivariant, so the physical energy is not representable in it (it is no function of "
                     f"what the model sees; {FIRST_STATE_ENERGY} alone explains R² {format_number(summary_ceiling)} of it at position "
                     f"{last}, linearly); what it can carry is "
                     f"{FIRST_STATE_ENERGY} (E/‖s0‖², a function of ω0 and the phase), best R² {format_number(first['r2'])} at "
                     f"{_short_site(results[FIRST_STATE_ENERGY].best_site())} against the input baseline's "
                     f"{format_number(first['input_baseline_r2'])}")
    elif physical["r2"] < NO_LINEAR_READOUT:
        sentence += (f": no site carries it linearly (R² below {format_number(NO_LINEAR_READOUT)} everywhere), while the input's "
                     "quadratic features give it; the energy is a quadratic of the state, and this model's activations are not")
    elif physical["selectivity_over_baseline"] <= 0.02:
        sentence += (": the input states alone give the energy (it is a quadratic of the current state), so this site's "
                     "probe is no evidence that the model computes it")
    if decay is not None:
        sentence += (f". Along {decay.n_steps}-step rollouts the model's E(T)/E(0) is {format_number(float(np.median(decay.model_ratio)))} "
                     f"(truth {format_number(float(np.median(decay.true_ratio)))}, e^{{−2γT}} {format_number(float(np.median(decay.law_ratio())))}); "
                     + (f"the damping rate read off its energy has R² {format_number(decay.r2())} against the truth's" if _varies(ctx.system, "gamma")
                        else f"the damping rate read off its energy is off the truth's by RMSE {format_number(decay.rmse())}"))
    ctx.findings.append(sentence + ".")
