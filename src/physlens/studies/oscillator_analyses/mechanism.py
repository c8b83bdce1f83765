"""The ``[analyses.mechanism]`` section: which algorithm the model's own predictions match under noise, after
calibration on planted organisms, with the implied one-step map and where the inferred ω0 lives."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from physlens.models.base import HookedModel
from physlens.plots.evidence import plot_noise_curves
from physlens.probes.algorithm_match import identify_algorithm, identify_oscillator_algorithm
from physlens.probes.baselines import input_baseline_r2
from physlens.probes.calibration import calibrate_analyses
from physlens.probes.implied import implied_parameters
from physlens.probes.implied_step import CARRIER_SHARE, implied_omega0_patching
from physlens.probes.selection import site_features
from physlens.studies.oscillator_analyses.common import (
    AnalysisContext,
    _check_positive,
    _check_varies,
    _cv_r2,
    _error,
    _short_site,
    _varies,
)
from physlens.studies.report import format_number
from physlens.systems.oscillator import OscillatorSystem
from physlens.training.evaluation import float64_system


CALIBRATION_CONTEXT = 21
"""The shortest context the mechanism analysis accepts: its calibration organisms include least squares over 20 states."""


def check(opts: dict[str, Any], model: HookedModel, system: OscillatorSystem, seq_len: int) -> None:
    """Check the ``[analyses.mechanism]`` options ``opts`` against ``model``, ``system`` and ``seq_len`` before any training."""
    _check_positive("mechanism", opts, ("n_trajectories", "n_pairs", "calibration_seeds"))
    sigmas = opts["sigmas"]
    if (not isinstance(sigmas, list) or len(sigmas) < 2
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v >= 0 for v in sigmas)):
        raise _error("mechanism", "sigmas", f"must be a list of at least 2 finite noise levels >= 0, got {sigmas!r}")
    if 0 not in sigmas:
        raise _error("mechanism", "sigmas", f"must include 0 (the clean context every curve starts from), got {sigmas!r}")
    if not 0 < opts["threshold"] < 1:
        raise _error("mechanism", "threshold", f"must lie in (0, 1), got {opts['threshold']}")
    if seq_len < CALIBRATION_CONTEXT:
        raise _error("mechanism", "run", f"needs a context of at least {CALIBRATION_CONTEXT} states (its calibration organisms read up "
                     f"to 20 states), got [training] seq_len {seq_len}")
    _check_varies("mechanism", system, "omega0", opts["min_change"])


def run(ctx: AnalysisContext, opts: dict[str, Any]) -> None:
    """Calibrate, match the model against the candidate algorithms, read the implied map and patch by implied ω0."""
    report, model = ctx.report, ctx.model
    sigmas = [float(v) for v in opts["sigmas"]]
    report.heading("How does it predict? The model's own predictions against planted algorithms", level=3)
    # 1. calibration: every analysis used here, on organisms whose answer is planted
    calibration = calibrate_analyses(float64_system(ctx.system), list(range(opts["calibration_seeds"])), context_length=ctx.seq_len,
                                     sigmas=sigmas)
    report.paragraph(
        "**Calibration first.** Each analysis below was run on model organisms whose algorithm is planted — in-context least "
        "squares over 5 and over 20 states with 0.3 % observation noise of their own, the AR-10 filter, finite differences, a "
        "context-blind step with the mean ω0, and a blend that is none of the candidates — over "
        f"{len(calibration.seeds)} seeds, on this study's system and context length. Power: the share of seeds on which the "
        "analysis returned the planted answer; false-positive rate: the share on which it claimed something the organism "
        "does not have."
    )
    report.table(["analysis", "organism", "planted answer", "verdicts", "power", "false-positive rate"],
                 [[r.analysis, r.organism, r.planted, ", ".join(dict.fromkeys(r.verdicts)), f"{sum(r.right)}/{len(r.right)}",
                   f"{sum(r.false_positive)}/{len(r.false_positive)}"] for r in calibration.rows])
    # 2. the model against every candidate, under the same noisy contexts
    match, candidates = identify_oscillator_algorithm(model, ctx.system, seed=ctx.stream("mechanism candidates"), context_length=ctx.seq_len,
                                                      n_trajectories=opts["n_trajectories"], sigmas=sigmas, threshold=opts["threshold"])
    control = identify_algorithm(ctx.control_model(), candidates, threshold=opts["threshold"])
    report.paragraph(
        f"**Which algorithm.** {opts['n_trajectories']} fresh contexts of {ctx.seq_len} states, with observation noise of relative "
        f"size σ ∈ {{{', '.join(f'{v:g}' for v in sigmas)}}} added to every state. Exact algorithms make no error on clean data, "
        "so what tells them apart is how each responds to noise: least squares over k states, the AR-k filter, finite "
        "differences and the context-blind step degrade at different rates and make different mistakes on the same noisy "
        "contexts. *Distance*: the share of the model's error (of its last prediction, and of the one-step map its predictions "
        f"imply) that a candidate does not reproduce, at the σ where it fits best; a candidate matches when both are ≤ "
        f"{opts['threshold']:g}."
    )
    rows = [[name, match.distance[name], match.map_match[name], match.shape_distance.get(name, float("nan"))]
            for name in match.ranking()[:8]]
    report.table(["candidate (closest first)", "prediction distance", "map distance", "noise-curve shape distance"], rows)
    shown = {name: candidates.curves[name] for name in dict.fromkeys([match.best, *(n for n in match.ranking() if match.families[n] != match.families[match.best])][:4])}
    report.figure("noise_curves", plot_noise_curves(match.model_curve, shown, title="the model and the closest candidates under observation noise"),
                  "Median next-step error (left) and implied-map error (right) against the noise σ added to the context: the model "
                  "beside the closest candidate of each family.")
    # 3. the implied one-step map and its parameters
    data = float64_system(ctx.system).sample(opts["n_trajectories"], ctx.seq_len, seed=ctx.stream("implied parameters"))
    implied, implied_control = implied_parameters(model, data), implied_parameters(ctx.control_model(), data)
    report.paragraph(
        "**The implied one-step map.** Per trajectory, the 2×2 map K̂ that best carries each state of the context's second half "
        "to the model's prediction from it, and the ω0 and γ it implies (the readout's calibration is in the table above)."
    )
    report.table(["predictor", "implied ω0 RMSE", "implied ω0 R²", "median ‖K̂ − K‖/‖K‖", "share of the error along ω0, γ"], [
        ["trained model", implied.omega0_rmse, f"{implied.omega0_r2:.4f}", float(np.median(implied.kernel_error)), implied.parameter_share],
        ["random-init control", implied_control.omega0_rmse, implied_control.omega0_r2, float(np.median(implied_control.kernel_error)),
         implied_control.parameter_share],
    ])
    readouts = _implied_beside_probes(ctx, data, implied, implied_control)
    varying = list(dict.fromkeys(row["parameter"] for row in readouts))
    report.paragraph(
        f"**Implied {' and '.join(PARAMETER_SYMBOLS[p] for p in varying)} beside a linear probe.** The parameter(s) the system "
        "varies, read two ways on the same trajectories: off the map the model's predictions imply (no training of any readout), "
        f"and by a ridge probe of the label at {_short_site(readouts[0]['site'])} (held-out by {IMPLIED_PROBE_FOLDS}-fold "
        "cross-validation), with the probe's controls — the strongest of "
        f"{IMPLIED_PROBE_CONTROLS} random-init copies and quadratic features of the last 3 input states."
    )
    report.table(["parameter", "readout", "RMSE", "R²"], [[PARAMETER_SYMBOLS[row["parameter"]], row["readout"], row["rmse"], row["r2"]]
                                                         for row in readouts])
    # 4. where is the inferred ω0? patching scored by the implied ω0 of the last prediction
    a, b = ctx.system.sample_swap_pairs(opts["n_pairs"], ctx.seq_len, seed=ctx.stream("mechanism patching pairs"), min_change=opts["min_change"],
                                        match_first_norm=bool(model.cfg.scale_by_first_state))
    a, b = a.to(dtype=ctx.dtype, device=model.cfg.device), b.to(dtype=ctx.dtype, device=model.cfg.device)
    gamma = a.gamma.double().cpu()
    patched = implied_omega0_patching(model, a.states, b.states, gamma=gamma, dt=ctx.system.dt, seed=ctx.stream("mechanism patching bootstrap"))
    report.paragraph(
        f"**Where is the inferred ω0?** {patched.n_pairs} pairs of contexts that end in the same state but come from ω0 at least "
        f"{format_number(opts['min_change'])} apart. One component at a time is patched from the clean context's run into the "
        "other's, and the ω0 implied by the last prediction (the frequency whose exact step from the shared state lands nearest "
        "it) is read off: *recovery* is the slope of its shift on the clean-minus-corrupted gap (1: the component carries all of "
        "the inferred ω0; 0: none), with a bootstrap interval over pairs. The residual stream entering a layer at the last "
        "position says where ω0 has been gathered; attention and MLP outputs and single heads (at every position) say who "
        f"writes it. A component carries ω0 when the lower end of its interval reaches {CARRIER_SHARE:g}."
    )
    report.table(["component", "kind", "implied-ω0 recovery [95 % CI]"],
                 [[name, patched.kinds[name], patched.recovery(name).format()] for name in patched.patched])
    carriers, gathered = patched.carriers(), patched.gathered_from()
    ctx.metrics["mechanism"] = {"calibration": calibration.to_dict(), "match": match.to_dict(), "control_match": control.to_dict(),
                                "implied": implied.to_dict(), "implied_control": implied_control.to_dict(), "patching": patched.to_dict(),
                                "implied_beside_probes": [{**row, "site": list(row["site"])} for row in readouts]}
    best_writer = max((n for n in patched.patched if patched.kinds[n] != "last position"), key=lambda n: patched.recovery(n).estimate)
    last_layer = f"L{model.cfg.n_layers - 1} resid_pre @ last"
    where = (f"{', '.join(carriers)} alone restore(s) at least {CARRIER_SHARE:g} of it" if carriers else
             f"no single layer output or head restores {CARRIER_SHARE:g} of it (the most, {best_writer}, restores "
             f"{patched.recovery(best_writer).format()})")
    gathered_text = (f"it is gathered at the last position by {gathered.split()[0]}'s input" if gathered else
                     f"the last position's stream before the last layer carries {patched.recovery(last_layer).format()} of it")
    calibration_note = (f"{', '.join(dict.fromkeys(r.analysis for r in calibration.rows))} each returned the planted answer on "
                        "every organism and seed" if calibration.all_right else
                        f"{sum(not all(r.right) for r in calibration.rows)} calibration row(s) failed: read the table before this finding")
    ctx.findings.insert(0,
        f"How it predicts ({calibration_note}): {match.sentence()}; a random-init copy's closest candidate is {control.best} at "
        f"{format_number(control.distance[control.best])}. The map its predictions imply gives ω0 with RMSE "
        f"{format_number(implied.omega0_rmse)} (R² {implied.omega0_r2:.4f}; random-init {format_number(implied_control.omega0_r2)}). "
        + _implied_gamma_sentence(readouts)
        + f"Patching by implied ω0: {where}; {gathered_text}."
    )


PARAMETER_SYMBOLS = {"omega0": "ω0", "gamma": "γ"}
IMPLIED_PROBE_FOLDS = 5
IMPLIED_PROBE_CONTROLS = 3


def _implied_beside_probes(ctx: AnalysisContext, data: Any, implied: Any, implied_control: Any) -> list[dict[str, Any]]:
    """For each parameter the system varies: the implied readout (trained and random-init) beside a linear probe of the label at
    the last layer's output at the last position, the strongest of several random-init copies' probes, and the input baseline."""
    model, last = ctx.model, ctx.seq_len - 1
    site = (f"blocks.{model.cfg.n_layers - 1}.hook_resid_post", last)
    seed = ctx.stream("mechanism implied-parameter probes")
    features = site_features(model, data.states, [site[0]], [last])[0][:, 0]
    controls = [site_features(ctx.control_model(i), data.states, [site[0]], [last])[0][:, 0] for i in range(IMPLIED_PROBE_CONTROLS)]
    rows = []
    for parameter in [p for p in PARAMETER_SYMBOLS if _varies(ctx.system, p)]:
        y = getattr(data, parameter).double().cpu().numpy()
        spread = float(np.mean((y - y.mean()) ** 2))

        def rmse(r2: float) -> float:  # the pooled held-out R² is 1 − mean squared error / spread
            return float(np.sqrt(max(0.0, 1 - r2) * spread))

        probe = _cv_r2(features, y, seed, IMPLIED_PROBE_FOLDS)
        control = max(_cv_r2(c, y, seed, IMPLIED_PROBE_FOLDS) for c in controls)
        baseline = input_baseline_r2(data.states, y, position=last, last_k=min(3, last + 1),
                                     scale_by_first_state=bool(model.cfg.scale_by_first_state), n_folds=IMPLIED_PROBE_FOLDS, seed=seed)
        for readout, error, r2 in (
            ("implied by the trained model's predictions", implied.rmse(parameter), implied.r2(parameter)),
            ("implied by a random-init copy's predictions", implied_control.rmse(parameter), implied_control.r2(parameter)),
            (f"linear probe at {_short_site(site)}", rmse(probe), probe),
            (f"linear probe, strongest of {IMPLIED_PROBE_CONTROLS} random-init copies", rmse(control), control),
            ("input baseline: quadratic features of the last 3 states", rmse(baseline), baseline),
        ):
            rows.append({"parameter": parameter, "readout": readout, "rmse": float(error), "r2": float(r2), "site": site})
    return rows


def _implied_gamma_sentence(readouts: list[dict[str, Any]]) -> str:
    rows = [row for row in readouts if row["parameter"] == "gamma"]
    if not rows:
        return ""
    implied, control, probe, probe_control, baseline = rows
    return (f"Implied γ: RMSE {format_number(implied['rmse'])}, R² {format_number(implied['r2'])} (random-init "
            f"{format_number(control['r2'])}), against a linear γ probe's R² {format_number(probe['r2'])} (strongest random-init copy "
            f"{format_number(probe_control['r2'])}, input baseline {format_number(baseline['r2'])}). ")
