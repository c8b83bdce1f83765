"""The ``[analyses]`` of an oscillator study: which algorithm, causal tests, honest probes, interventions.

:func:`parse_analyses` reads and checks every option against the model and the system before
anything is trained; :func:`run_analyses` calls the library for each analysis named in ``run`` (an
explicit table, :data:`ANALYSES`) and adds sections, figures, metrics and Findings to the report.
Every number in the report, the Findings sentences included, is computed here from the model, and
every analysis draws from its own named random stream.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from physlens.models.base import HookedModel
from physlens.models.reference import InContextLeastSquares
from physlens.models.transformer import OscillatorTransformer
from physlens.plots.evidence import plot_algorithm_comparison, plot_group_patching, plot_noise_curves, plot_steering, plot_swap_test
from physlens.plots.probes import (
    plot_ablation_grid,
    plot_attention_patterns,
    plot_patching,
    plot_probe_r2,
    plot_rollout,
    plot_saliency,
)
from physlens.probes.ablation import ablation_sweep
from physlens.probes.activations import capture_activations
from physlens.probes.algorithm_match import DEFAULT_SIGMAS, MATCH_DISTANCE, identify_algorithm, identify_oscillator_algorithm
from physlens.probes.algorithms import compare_algorithms, fit_ar_candidates, integer_ranges
from physlens.probes.attribution import attribution_patching_sweep, patching_agreement
from physlens.probes.baselines import input_baseline_r2
from physlens.probes.calibration import calibrate_analyses
from physlens.probes.context_swap import context_swap_test
from physlens.probes.energy import probe_sites_beside_controls, rollout_energy_decay
from physlens.probes.implied import implied_parameters
from physlens.probes.implied_step import CARRIER_SHARE, implied_omega0_patching
from physlens.probes.linear_probe import LinearProbe, ProbeResult
from physlens.probes.nonlinear import mlp_probe_r2
from physlens.probes.parity import parity_report, pattern_features, quadratic_features
from physlens.probes.patching import group_patching, patching_grid, patching_sweep
from physlens.probes.input_attribution import off_diagonal_fraction, saliency, saliency_matrix
from physlens.probes.selection import SiteSelection, select_sites, site_features
from physlens.probes.steering import fit_probe_direction, steering_sweep
from physlens.probes.surrogate import LinearSurrogate
from physlens.probes.weights import head_circuits
from physlens.seeding import stream_seed
from physlens.studies.report import Report, StudySpecError, format_number, section
from physlens.systems.oscillator import EVEN_LABELS, LABEL_NAMES, OscillatorSystem
from physlens.training.evaluation import TaskVerdict, float64_system

LAYER_HOOKS = ("resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out")
"""Short hook names that expand to one hook per layer."""

HEADLINE_TARGET = "omega0"

CALIBRATION_CONTEXT = 21
"""The shortest context the mechanism analysis accepts: its calibration organisms include least squares over 20 states."""

ATTRIBUTION_AGREEMENT = 0.9
"""Attribution patching may rank cells in place of exact patching only where the lower end of the
interval of its Pearson correlation with exact patching reaches this."""


FAILED_ROLLOUT = 1.0
"""A rollout whose median relative error reaches this has lost the trajectory (it is as far off as predicting 0)."""


@dataclass
class AnalysisContext:
    """What every analysis reads: the trained model, its system, the study's seed and the report."""

    model: HookedModel  # the trained model, in eval mode
    system: OscillatorSystem  # the training distribution
    seq_len: int  # positions the model was trained on
    loss_positions: str | int  # the training loss's positions ("last", "all" or the first scored one)
    seed: int  # the study's seed: every analysis derives its own streams from it
    progress: bool  # show progress bars
    verdict: TaskVerdict | None = None  # whether the model does its task, judged before any analysis
    report: Report = field(default_factory=lambda: Report("analyses"))
    metrics: dict[str, Any] = field(default_factory=dict)
    findings: list[str] = field(default_factory=list)
    seeds: dict[str, int] = field(default_factory=dict)  # every stream an analysis drew from, by name
    shared: dict[str, Any] = field(default_factory=dict)  # results one analysis hands to a later one

    @property
    def dtype(self) -> torch.dtype:
        """The model's parameter dtype."""
        return self.model.W_E.dtype

    def stream(self, name: str) -> int:
        """The seed of the named random stream (recorded so ``load_run`` can replay it)."""
        self.seeds[name] = stream_seed(self.seed, name)
        return self.seeds[name]

    def sample(self, name: str, n: int, n_steps: int):
        """``n`` fresh trajectories of ``n_steps`` from the stream ``name``, in the model's dtype."""
        return self.system.sample(n, n_steps, seed=self.stream(name)).to(device=self.model.cfg.device, dtype=self.dtype)

    def control_model(self, index: int = 0) -> OscillatorTransformer:
        """A randomly initialised copy of the model from its own stream (never the model's own seed);
        ``index`` > 0 gives further copies, each from a stream of its own."""
        name = "random-init control" if index == 0 else f"random-init control {index}"
        seed = self.stream(name)
        if seed == self.model.cfg.seed:
            seed = self.stream(f"{name} (second draw)")
        return OscillatorTransformer(dataclasses.replace(self.model.cfg, seed=seed)).to(self.model.cfg.device).eval()


@dataclass(frozen=True)
class Analysis:
    """One entry of :data:`ANALYSES`: its option types, defaults, a pre-training check and the runner."""

    keys: Mapping[str, Any]
    defaults: Mapping[str, Any]
    check: Callable[[dict[str, Any], HookedModel, OscillatorSystem, int], None]
    run: Callable[[AnalysisContext, dict[str, Any]], None]


def _error(name: str, key: str, message: str) -> StudySpecError:
    return StudySpecError(f"[analyses.{name}] {key}: {message}")


def _check_positive(name: str, opts: Mapping[str, Any], keys: tuple[str, ...]) -> None:
    for key in keys:
        if key in opts and opts[key] < 1:
            raise _error(name, key, f"must be >= 1, got {opts[key]}")


def _check_varies(name: str, system: OscillatorSystem, vary: str, min_change: float) -> None:
    if vary not in ("omega0", "gamma"):
        raise _error(name, "vary", f"must be 'omega0' or 'gamma', got {vary!r}")
    if not min_change > 0:
        raise _error(name, "min_change", f"must be > 0, got {min_change}")
    low, high = (system.omega0 if vary == "omega0" else system.gamma).bounds
    if high - low < min_change:
        raise _error(
            name, "vary",
            f"the system's {vary} spans [{low:g}, {high:g}], so there are no contexts that differ in {vary} by "
            f"min_change={min_change:g}: this analysis needs a system whose {vary} varies",
        )


def expand_hooks(model: HookedModel, hooks: list[str], where: str = "[analyses.probes] hooks") -> list[str]:
    """Short names (``resid_post``, ``attn_out``…) become one hook per layer; full names pass through."""
    names = []
    for hook in hooks:
        if not isinstance(hook, str):
            raise StudySpecError(f"{where}: every hook must be a string, got {hook!r}")
        if hook in LAYER_HOOKS:
            names += [f"blocks.{layer}.hook_{hook}" for layer in range(model.cfg.n_layers)]
        else:
            names.append(hook)
    missing = [n for n in names if n not in model.hook_dict]
    if missing:
        raise StudySpecError(f"{where}: {missing} do not exist in this model; short forms are {list(LAYER_HOOKS)}")
    return names


def _sites(opts_sites: list[Any], model: HookedModel, seq_len: int, where: str) -> list[tuple[str, int]]:
    sites = []
    for site in opts_sites:
        if not (isinstance(site, list) and len(site) == 2 and isinstance(site[0], str) and isinstance(site[1], int)
                and not isinstance(site[1], bool)):
            raise StudySpecError(f"{where}: every site must be [hook, position], got {site!r}")
        hook = expand_hooks(model, [site[0]], where)
        if len(hook) != 1:
            raise StudySpecError(f"{where}: a site names one hook, not the short form {site[0]!r}")
        position = site[1] % seq_len if -seq_len <= site[1] < seq_len else None
        if position is None:
            raise StudySpecError(f"{where}: position {site[1]} is outside the {seq_len} positions of the context")
        sites.append((hook[0], position))
    return sites


def _positions(value: Any, seq_len: int, where: str) -> list[int]:
    if value == "all":
        return list(range(seq_len))
    if not isinstance(value, list) or not value or not all(isinstance(p, int) and not isinstance(p, bool) for p in value):
        raise StudySpecError(f"{where}: must be 'all' or a non-empty list of positions, got {value!r}")
    bad = [p for p in value if not -seq_len <= p < seq_len]
    if bad:
        raise StudySpecError(f"{where}: positions {bad} are outside the {seq_len} positions of the context")
    return sorted({p % seq_len for p in value})


# --- weights -----------------------------------------------------------------------------------

def _check_weights(opts, model, system, seq_len) -> None:
    if not opts["rtol"] > 0:
        raise _error("weights", "rtol", f"must be > 0, got {opts['rtol']}")


def _run_weights(ctx: AnalysisContext, opts: dict[str, Any]) -> None:
    model, report = ctx.model, ctx.report
    circuits = head_circuits(model, rtol=opts["rtol"])
    report.heading("Weights: OV and QK circuits", level=3)
    rows = []
    for layer in range(model.cfg.n_layers):
        for head in range(model.cfg.n_heads):
            rows.append([layer, head, float(circuits.ov_gain[layer, head]), float(circuits.w_o_norm[layer, head]),
                         float(circuits.qk_singular_values[layer, head, 0]), "yes" if bool(circuits.silent[layer, head]) else "no"])
    report.table(["layer", "head", "OV gain (σ_max)", "‖W_O‖_F", "QK σ_max", f"silent (gain < {format_number(opts['rtol'])})"], rows)
    silent = circuits.silent_heads()
    ctx.metrics["weights"] = circuits.to_dict()
    n_heads = model.cfg.n_layers * model.cfg.n_heads
    if silent:
        ctx.findings.append(f"{len(silent)} of {n_heads} heads write almost nothing (OV gain below {format_number(opts['rtol'])}): {silent}.")
    else:
        weakest = np.unravel_index(int(torch.argmin(circuits.ov_gain)), tuple(circuits.ov_gain.shape))
        ctx.findings.append(
            f"No head is silent: the weakest OV gain is {format_number(float(circuits.ov_gain.min()))} "
            f"(layer {weakest[0]}, head {weakest[1]}), so unlike the seed's OLA (W_O ≈ 0) every head writes to the residual stream."
        )


# --- algorithms --------------------------------------------------------------------------------

def _check_algorithms(opts, model, system, seq_len) -> None:
    _check_positive("algorithms", opts, ("n_trajectories", "horizon", "n_reference_trajectories"))
    if opts["context_lengths"] != "all":
        ks = opts["context_lengths"]
        if not isinstance(ks, list) or not ks or not all(isinstance(k, int) and not isinstance(k, bool) for k in ks):
            raise _error("algorithms", "context_lengths", f"must be 'all' or a list of integers, got {ks!r}")
        if min(ks) < 2 or max(ks) > seq_len:
            raise _error("algorithms", "context_lengths", f"must lie in 2..{seq_len} (the model's context), got {ks}")


def _run_algorithms(ctx: AnalysisContext, opts: dict[str, Any]) -> None:
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


# --- mechanism: which algorithm, read off the model's own predictions --------------------------

def _check_mechanism(opts, model, system, seq_len) -> None:
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


def _run_mechanism(ctx: AnalysisContext, opts: dict[str, Any]) -> None:
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


def _varies(system: OscillatorSystem, parameter: str) -> bool:
    low, high = getattr(system, parameter).bounds
    return high > low


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


# --- context swap ------------------------------------------------------------------------------

def _check_swap(opts, model, system, seq_len) -> None:
    _check_positive("swap", opts, ("n_pairs",))
    _check_varies("swap", system, opts["vary"], opts["min_change"])


def _run_swap(ctx: AnalysisContext, opts: dict[str, Any]) -> None:
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


# --- probes ------------------------------------------------------------------------------------

def _check_probes(opts, model, system, seq_len) -> None:
    _check_positive("probes", opts, ("n_trajectories", "n_folds", "n_controls"))
    if opts["n_folds"] < 3:
        raise _error("probes", "n_folds", f"must be >= 3 for nested cross-validation, got {opts['n_folds']}")
    if opts["n_permutations"] < 0:
        raise _error("probes", "n_permutations", f"must be >= 0, got {opts['n_permutations']}")
    expand_hooks(model, opts["hooks"])
    _positions(opts["positions"], seq_len, "[analyses.probes] positions")
    unknown = [t for t in opts["targets"] if t not in LABEL_NAMES]
    if unknown or not opts["targets"]:
        raise _error("probes", "targets", f"must name labels from {list(LABEL_NAMES)}, got unknown {unknown}")
    _sites(opts["sites"], model, seq_len, "[analyses.probes] sites")
    if opts["n_trajectories"] < 2 * opts["n_folds"]:
        raise _error("probes", "n_trajectories", f"must be at least 2 × n_folds = {2 * opts['n_folds']}, got {opts['n_trajectories']}")


FIRST_STATE_UNITS = {
    "energy": ("energy_over_first_state_sq", "E/‖s0‖², the energy in units of the first state's size: a function of ω0 and the phase"),
    "acceleration": ("acceleration_over_first_state_norm", "ẍ/‖s0‖"),
    "omega0_sq_x": ("omega0_sq_x_over_first_state_norm", "ω0²x/‖s0‖"),
    "gamma_p": ("gamma_p_over_first_state_norm", "γp/‖s0‖"),
}
"""Labels that scale with the states, and what they are when measured in units of the first state's size."""


def probe_label_name(label: str, first_state_units: bool) -> str:
    """The name a probe target is reported under: ``label`` itself, or, for a ``scale_by_first_state``
    model, what a label that scales with the states becomes in first-state units
    (``energy`` → ``energy_over_first_state_sq``)."""
    if label not in LABEL_NAMES:
        raise ValueError(f"label must be one of {list(LABEL_NAMES)}, got {label!r}")
    return FIRST_STATE_UNITS[label][0] if first_state_units and label in FIRST_STATE_UNITS else label


def _constant_targets(system: OscillatorSystem, targets: list[str], seq_len: int) -> list[str]:
    """Targets that do not vary in this system (e.g. γ when it is fixed): nothing to decode."""
    labels = system.sample(64, seq_len, seed=0).labels()
    return [t for t in targets if float(labels[t].max() - labels[t].min()) <= 1e-12 * float(labels[t].abs().max() + 1e-300)]


def _label_matrix(data: Any, targets: list[str], sites: list[tuple[str, int]], model: HookedModel) -> torch.Tensor:
    # A scale-equivariant model sees states in units of its first state's size; so must its labels.
    labels = data.to(dtype=torch.float64).labels(first_state_units=model.cfg.scale_by_first_state)
    columns = []
    for target in targets:
        value = labels[target].cpu()
        positions = torch.tensor([p for _, p in sites])
        columns.append(value[:, positions] if value.ndim == 2 else value[:, None].expand(-1, len(sites)))
    return torch.stack(columns, dim=-1)  # [n, site, t]


def _input_baselines(data: Any, targets: list[str], sites: list[tuple[str, int]], model: HookedModel, seed: int,
                     n_folds: int) -> dict[tuple[int, str], float]:
    """Held-out R² of each target from quadratic features of the last 3 input states, at each site's position."""
    scaled = bool(model.cfg.scale_by_first_state)
    labels = data.to(dtype=torch.float64).labels(first_state_units=scaled)
    out = {}
    for position in sorted({p for _, p in sites}):
        for target in targets:
            y = labels[target][:, position] if labels[target].ndim == 2 else labels[target]
            out[(position, target)] = input_baseline_r2(data.states, y, position=position, last_k=min(3, position + 1),
                                                        scale_by_first_state=scaled, n_folds=n_folds, seed=seed)
    return out


def _probe_result(selection: SiteSelection, control: SiteSelection, hooks: list[str], positions: list[int]) -> ProbeResult:
    shape = (len(hooks), len(positions), len(selection.targets))
    return ProbeResult(hooks=hooks, positions=positions, targets=selection.targets, r2=selection.cv_r2.reshape(shape),
                       alpha=np.full(shape, np.nan), control_r2=control.cv_r2.reshape(shape), shuffled_r2=None,
                       folds=torch.empty(0, dtype=torch.long), n_trajectories=selection.n_samples)


def _cv_r2(features: torch.Tensor, y: np.ndarray, seed: int, n_folds: int) -> float:
    return float(LinearProbe(n_folds=n_folds, seed=seed).fit(features.double().cpu().numpy(), y).cv_r2_)


def _run_probes(ctx: AnalysisContext, opts: dict[str, Any]) -> None:
    model, report, seq_len = ctx.model, ctx.report, ctx.seq_len
    hooks = expand_hooks(model, opts["hooks"])
    positions = _positions(opts["positions"], seq_len, "[analyses.probes] positions")
    constant = _constant_targets(ctx.system, opts["targets"], seq_len)
    targets = [t for t in opts["targets"] if t not in constant]
    registered = _sites(opts["sites"], model, seq_len, "[analyses.probes] sites")
    report.heading("Linear probes with controls, nested cross-validation and a permutation null", level=3)
    if constant:
        report.paragraph(f"Skipped targets that are constant in this system (nothing to decode): {', '.join(constant)}.")
    if not targets:
        ctx.findings.append("Probes were skipped: every requested target is constant in this system.")
        return
    data = ctx.sample("probes trajectories", opts["n_trajectories"], seq_len)
    control = ctx.control_model()
    X, sites = site_features(model, data.states, hooks, positions)
    X_control, _ = site_features(control, data.states, hooks, positions)
    y = _label_matrix(data, targets, sites, model)
    # Labels in first-state units are named for what they are from here on (E/‖s0‖² is no energy).
    scaled = bool(model.cfg.scale_by_first_state)
    raw = {probe_label_name(t, scaled): t for t in targets}
    targets = list(raw)
    seed = ctx.stream("probes folds and permutations")
    kwargs = dict(n_folds=opts["n_folds"], n_permutations=opts["n_permutations"], seed=seed)
    selection = select_sites(X, y, sites, targets, **kwargs)
    control_selection = select_sites(X_control, y, sites, targets, **kwargs)
    # Further random-init copies: the strongest of them at each site is the control a site must beat.
    extra_controls = [select_sites(site_features(ctx.control_model(i), data.states, hooks, positions)[0], y, sites, targets,
                                   n_folds=opts["n_folds"], n_permutations=0, seed=seed)
                      for i in range(1, opts["n_controls"])]
    ctx.shared["strongest_control"] = {
        (site, target): max([control_selection.r2_at(site, target)] + [c.r2_at(site, target) for c in extra_controls])
        for site in registered for target in targets}
    parity = parity_report(model, data.states, hooks, positions)
    report.paragraph(
        f"Ridge probes on {len(data)} fresh trajectories at {len(hooks)} hooks × {len(positions)} positions = {len(sites)} "
        f"sites; folds by trajectory ({opts['n_folds']}). The same probes on a randomly initialised copy of the model are the "
        "control. **Pre-registered sites** (fixed in the study file) need no correction. Over all sites, the *nested* R² "
        "chooses the site and the penalty inside each training fold, and the maximum over sites is compared with its "
        f"permutation null ({opts['n_permutations']} label shuffles across trajectories). *Even share*: the share of the "
        "site's variance that is even under s → −s; a linear probe for an even label (ω0, γ, energy) can use only that part."
        + (" The model divides its input by the size of its first state, so labels that scale with the states are probed in "
           "those units too, and named for it: " + ", ".join(f"{name} ({FIRST_STATE_UNITS[label][1]})" for name, label in raw.items()
                                                            if name != label)
           + ". The physical energy cannot be carried by such a model; the [analyses.energy] section probes it."
           if scaled and any(name != label for name, label in raw.items()) else "")
    )
    if registered:
        rows = []
        for site in registered:
            for target in targets:
                possible = parity.linear_readout_possible(site, raw[target]) if site in parity.sites else True
                share = float(parity.even_share[parity.sites.index(site)]) if site in parity.sites else float("nan")
                rows.append([f"{site[0]} @ {site[1]}", target, selection.r2_at(site, target), control_selection.r2_at(site, target),
                             share, "" if possible else "odd site: no linear readout of an even label"])
        report.table(["pre-registered site", "target", "held-out R²", "random-init R²", "even share", "note"], rows)
        if opts["n_controls"] > 1:
            report.paragraph(f"Strongest of {opts['n_controls']} random-init copies at each pre-registered site: "
                             + "; ".join(f"{_short_site(site)} {target} {format_number(ctx.shared['strongest_control'][(site, target)])}"
                                         for site in registered for target in targets) + ".")
    baseline = {(position, probe_label_name(target, scaled)): r2 for (position, target), r2 in
                _input_baselines(data, list(raw.values()), registered or [sites[-1]], model, seed, opts["n_folds"]).items()}
    report.paragraph(
        "**Input-feature baseline**: the same ridge probe on quadratic features of the last 3 input states (in the units the "
        "model sees), the strongest baseline a site's probe must beat: a label this baseline decodes is no evidence that "
        "the model computed it."
    )
    report.table(["position", "target", "R² from the last 3 input states (quadratic)"],
                 [[position, target, r2] for (position, target), r2 in baseline.items()])
    ctx.shared["input_baselines"] = baseline
    rows = []
    for target in targets:
        s, c = selection.summary(target), control_selection.summary(target)
        rows.append([target, s["nested_r2"], c["nested_r2"], f"{format_number(s['max_r2'])} ({_short_site(selection.best_site(target))})",
                     f"{format_number(c['max_r2'])} ({_short_site(control_selection.best_site(target))})",
                     s["p_value_of_max"], s["null_max_95"]])
    report.table(["target", "nested R²", "control nested R²", "max over sites (best site)", "control max (its best site)",
                  "p of the max", "null 95 % of the max"], rows)
    probe_result = _probe_result(selection, control_selection, hooks, positions)
    for target in [probe_label_name(t, scaled) for t in (HEADLINE_TARGET, "omega0_sq_x", "energy") if t in raw.values()] or targets[:1]:
        report.figure(f"probe_r2_{target}", plot_probe_r2(probe_result, target),
                      f"Held-out R² of linear probes for {target} per hook and position, trained model beside its random-init control.")
    metrics: dict[str, Any] = {"model": selection.to_dict(), "random_init_control": control_selection.to_dict(),
                               "parity": parity.to_dict(), "pre_registered_sites": [list(s) for s in registered],
                               "skipped_constant_targets": constant}
    even_rows, even_metrics = _even_features(ctx, opts, data, control, list(raw.values()), registered)
    if even_rows:
        report.paragraph("Even features, for even labels: attention weights at the last query of every layer (q·k is even when "
                         "q and k are odd) and quadratic features (top-8 principal components and their products) at each "
                         "pre-registered site; and an MLP probe at each pre-registered site. Each beside the same probe on the "
                         "random-init control; held-out R² by grouped cross-validation.")
        report.table(["features", "target", "held-out R²", "random-init R²"], even_rows)
    metrics["even_features"] = even_metrics
    metrics["pre_registered"] = {
        f"{hook}@{position}": {t: {"r2": selection.r2_at((hook, position), t), "control_r2": control_selection.r2_at((hook, position), t)}
                               for t in targets}
        for hook, position in registered
    }
    if registered and HEADLINE_TARGET in targets:
        site = registered[0]
        r2, control_r2 = selection.r2_at(site, HEADLINE_TARGET), control_selection.r2_at(site, HEADLINE_TARGET)
        metrics["headline"] = {"target": HEADLINE_TARGET, "site": list(site), "r2": r2, "control_r2": control_r2,
                               "selectivity": r2 - control_r2, **{k: v for k, v in selection.summary(HEADLINE_TARGET).items()
                                                                  if k in ("nested_r2", "p_value_of_max")}}
    ctx.metrics["probes"] = metrics
    ctx.shared["probe_sites"] = registered
    _probe_findings(ctx, targets, registered, selection, control_selection, parity, even_metrics, raw)


def _short_site(site: tuple[str, int]) -> str:
    return f"{site[0].replace('blocks.', 'L').replace('.hook_', ' ').replace('hook_', '')} @ {site[1]}"


def _even_features(ctx, opts, data, control, targets, registered) -> tuple[list[list[Any]], list[dict[str, Any]]]:
    even_targets = [t for t in targets if t in EVEN_LABELS]
    rows, metrics = [], []
    if not even_targets:
        return rows, metrics
    labels = data.labels()
    seed = ctx.stream("even-feature probes")
    n_folds = opts["n_folds"]

    def add(name: str, target: str, model_features: torch.Tensor, control_features: torch.Tensor, nonlinear: bool = False) -> None:
        y = labels[target].double().cpu().numpy()
        if nonlinear:
            r2 = mlp_probe_r2(model_features.double().cpu().numpy(), y, n_folds=n_folds, seed=seed)
            r2_control = mlp_probe_r2(control_features.double().cpu().numpy(), y, n_folds=n_folds, seed=seed)
        else:
            r2, r2_control = _cv_r2(model_features, y, seed, n_folds), _cv_r2(control_features, y, seed, n_folds)
        rows.append([name, target, r2, r2_control])
        metrics.append({"features": name, "target": target, "r2": r2, "control_r2": r2_control})

    last = ctx.seq_len - 1
    for target in even_targets:
        if labels[target].ndim != 1:
            continue  # per-step even labels (energy) are probed at the sites above
        for layer in range(ctx.model.cfg.n_layers):
            add(f"attention weights, layer {layer}, query {last}", target, pattern_features(ctx.model, data.states, layer, last),
                pattern_features(control, data.states, layer, last))
        for hook, position in registered:
            model_acts = site_features(ctx.model, data.states, [hook], [position])[0][:, 0]
            control_acts = site_features(control, data.states, [hook], [position])[0][:, 0]
            add(f"quadratic features, {_short_site((hook, position))}", target, quadratic_features(model_acts), quadratic_features(control_acts))
            if opts["nonlinear"]:
                add(f"MLP probe, {_short_site((hook, position))}", target, model_acts, control_acts, nonlinear=True)
    return rows, metrics


def _probe_findings(ctx, targets, registered, selection, control_selection, parity, even_metrics, raw) -> None:
    for target in targets:
        s, c = selection.summary(target), control_selection.summary(target)
        sentence = f"{target}: "
        if registered:
            site = registered[0]
            sentence += (f"at the pre-registered site {_short_site(site)} a linear probe reaches held-out R² "
                         f"{format_number(selection.r2_at(site, target))} (random-init control {format_number(control_selection.r2_at(site, target))}")
            strongest = ctx.shared.get("strongest_control", {}).get((site, target))
            if strongest is not None and strongest != control_selection.r2_at(site, target):
                sentence += f"; strongest of several random-init copies {format_number(strongest)}"
            baseline = ctx.shared.get("input_baselines", {}).get((site[1], target))
            if baseline is not None:
                sentence += f"; quadratic features of the last 3 input states {format_number(baseline)}"
                if baseline >= selection.r2_at(site, target) - 0.02:
                    sentence += ", as much as the site: the input alone explains it"
            sentence += "); "
        significant = s["p_value_of_max"] <= 0.05
        sentence += (f"over all {len(selection.sites)} sites the nested R² is {format_number(s['nested_r2'])} (control "
                     f"{format_number(c['nested_r2'])}); the best site's {format_number(s['max_r2'])} "
                     + ("exceeds" if significant else "does not exceed")
                     + f" the permutation null of the maximum (p = {format_number(s['p_value_of_max'])}).")
        if raw[target] in EVEN_LABELS:
            odd = [site for site in parity.sites if parity.is_odd(site)]
            if len(odd) == len(parity.sites):
                sentence += (" Every probed site is odd under s → −s (even share < "
                             f"{format_number(parity.tolerance)}), so no linear probe there can read this even label, whatever the model knows.")
            elif odd:
                sentence += f" {len(odd)} of {len(parity.sites)} sites are odd under s → −s and cannot carry it linearly."
        for entry in even_metrics:
            if entry["target"] == target and entry["features"].startswith("MLP"):
                gap = entry["r2"] - entry["control_r2"]
                sentence += (f" An MLP probe ({entry['features'][len('MLP probe, '):]}) reaches {format_number(entry['r2'])} against "
                             f"{format_number(entry['control_r2'])} on the random-init control"
                             + (": the context alone carries it, so this says little about training." if gap < 0.05 else ".")
                             )
        ctx.findings.append(sentence)


# --- energy: is the physical energy in the model beyond its controls, and does it decay as γ says? ---

FIRST_STATE_ENERGY = FIRST_STATE_UNITS["energy"][0]
"""What the ``energy`` label is for a ``scale_by_first_state`` model: E/‖s0‖², a function of ω0 and the
phase only (the model never sees a state's size, so it cannot carry the physical energy)."""


NO_LINEAR_READOUT = 0.1
"""Below this held-out R² at its best site, a label is reported as not linearly readable from the model."""


def _check_energy(opts, model, system, seq_len) -> None:
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


def _run_energy(ctx: AnalysisContext, opts: dict[str, Any]) -> None:
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


# --- steering ----------------------------------------------------------------------------------

def _check_steering(opts, model, system, seq_len) -> None:
    _check_positive("steering", opts, ("n_trajectories", "n_probe_trajectories", "n_steps"))
    if opts["n_steps"] < 3:
        raise _error("steering", "n_steps", f"must be >= 3 to read a frequency off the rollout, got {opts['n_steps']}")
    alphas = opts["alphas"]
    if not isinstance(alphas, list) or not all(isinstance(a, (int, float)) and not isinstance(a, bool) for a in alphas) or 0 not in alphas or len(alphas) < 2:
        raise _error("steering", "alphas", f"must be a list of numbers holding 0 and at least one push, got {alphas!r}")
    expand_hooks(model, opts["hooks"], "[analyses.steering] hooks")
    if not -seq_len <= opts["position"] < seq_len:
        raise _error("steering", "position", f"{opts['position']} is outside the {seq_len} positions of the context")
    if opts["positions"] not in ("probe", "all"):
        raise _error("steering", "positions", f"must be 'probe' (push at the probe's position) or 'all', got {opts['positions']!r}")
    if opts["target"] not in LABEL_NAMES:
        raise _error("steering", "target", f"must be a label from {list(LABEL_NAMES)}, got {opts['target']!r}")
    if opts["target"] in ("omega0", "Omega", "omega0_sq", "cos_Omega_dt"):
        _check_varies("steering", system, "omega0", 1e-9)


def _run_steering(ctx: AnalysisContext, opts: dict[str, Any]) -> None:
    hooks = expand_hooks(ctx.model, opts["hooks"], "[analyses.steering] hooks")
    position = opts["position"] % ctx.seq_len
    target = opts["target"]
    train = ctx.sample("steering probe trajectories", opts["n_probe_trajectories"], ctx.seq_len)
    contexts = ctx.sample("steering contexts", opts["n_trajectories"], ctx.seq_len)
    alphas = [float(a) for a in opts["alphas"]]
    report = ctx.report
    report.heading(f"Intervention: steering along the {target} probe direction", level=3)
    report.paragraph(
        f"At each site a ridge probe for {target} gives a direction w; adding α·w/‖w‖² there moves the probe's reading by α "
        f"({'at the probe position only' if opts['positions'] == 'probe' else 'at every position'}). For every α the model rolls "
        f"out {opts['n_steps']} steps from {len(contexts)} contexts with the push applied at every step, and ω0 is read off the "
        "rollout by least squares. If the model used the direction as its ω0, the rollout's ω0 would move by about α. Control: a "
        "random direction of the same size. Slopes: median over trajectories of dω0/dα with a 95 % bootstrap interval. (At the "
        "last layer's output a push can only add a constant to the prediction: no computation follows it.)"
    )
    rows, results, best = [], {}, None
    for hook in hooks:
        site = (hook, position)
        direction = fit_probe_direction(ctx.model, train, hook, position, target, seq_len=ctx.seq_len, seed=ctx.stream("steering probe folds"))
        try:
            result = steering_sweep(ctx.model, direction, contexts, alphas, n_steps=opts["n_steps"], positions=opts["positions"],
                                    seed=ctx.stream("steering control direction"))
        except ValueError as error:  # no readable frequency in the steered or the randomly pushed rollouts
            rows.append([_short_site(site), direction.cv_r2, f"skipped: {error}", "", ""])
            results[f"{hook}@{position}"] = {"skipped": str(error), "direction": direction.to_dict()}
            continue
        rows.append([_short_site(site), direction.cv_r2, result.slope.format(), result.control_slope.format(),
                     f"{format_number(100 * result.valid_fraction)} %"])
        results[f"{hook}@{position}"] = {**result.to_dict(), "direction": direction.to_dict()}
        if best is None or abs(result.slope.estimate) > abs(best[1].slope.estimate):
            best = (site, result)
    report.table(["site", "probe R²", "slope dω0/dα [95 % CI]", "random direction", "rollouts with a readable frequency"], rows)
    ctx.metrics["steering"] = {"sites": results, "positions": opts["positions"], "target": target}
    if best is None:
        best_r2 = max(entry["direction"]["cv_r2"] for entry in results.values())
        pushes = [float(np.linalg.norm(entry["direction"]["coef"])) for entry in results.values()]
        why = (f" The probes there decode {target} poorly (best held-out R² {format_number(best_r2)}), and a push α·w/‖w‖² grows as "
               f"the probe's weights shrink (‖w/‖w‖²‖ up to {format_number(1 / max(min(pushes), 1e-300))}): such pushes say nothing "
               "about how the model uses a direction." if best_r2 < 0.5 else "")
        ctx.findings.append("Steering was skipped at every site: for fewer than 2 contexts did the steered and the randomly "
                            "pushed rollouts stay oscillations with a readable frequency at every α." + why)
        return
    site, result = best
    ctx.metrics["steering"]["largest"] = {"site": list(site), "slope": result.slope.to_dict(), "control_slope": result.control_slope.to_dict()}
    report.figure("steering", plot_steering(result, title=f"steering along the {target} direction at {_short_site(site)}"),
                  f"ω0 of steered rollouts minus the unsteered rollout against the push α, at the site with the largest slope ({_short_site(site)}).")
    slope, control = result.slope, result.control_slope
    if slope.low > 0.5:
        verdict = "the model reads this direction as its ω0"
    elif slope.low > 0 and slope.low > control.high:
        verdict = (f"the push moves the rollout's frequency in the right direction but by only {format_number(100 * slope.estimate)} % "
                   "of what reading the direction as ω0 would: the probe decodes ω0 far better than the model uses its direction")
    else:
        verdict = "the push changes the frequency no more than a random push of the same size: the probe decodes ω0 but the model does not use that direction"
    ctx.findings.append(
        f"Steering along the {target} probe direction at {len(hooks)} sites (position {position}): the largest effect, at "
        f"{_short_site(site)}, is dω0/dα = {slope.format()} against {control.format()} for a random direction — {verdict}."
    )


# --- ablation, patching, saliency, surrogate ---------------------------------------------------

def _check_ablation(opts, model, system, seq_len) -> None:
    _check_positive("ablation", opts, ("n_trajectories", "rollout_trajectories", "rollout_steps"))
    bad = [m for m in opts["methods"] if m not in ("zero", "mean", "resample")]
    if bad or not opts["methods"]:
        raise _error("ablation", "methods", f"must list methods among zero, mean, resample; got {opts['methods']!r}")
    if opts["head_hook"] not in ("z", "result"):
        raise _error("ablation", "head_hook", f"must be 'z' or 'result', got {opts['head_hook']!r}")


def _run_ablation(ctx: AnalysisContext, opts: dict[str, Any]) -> None:
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


def _check_patching(opts, model, system, seq_len) -> None:
    _check_positive("patching", opts, ("n_pairs", "position_stride"))
    _check_varies("patching", system, opts["vary"], opts["min_change"])
    bad = [s for s in opts["sites"] if f"blocks.0.hook_{s}" not in model.hook_dict]
    if bad:
        raise _error("patching", "sites", f"{bad} do not exist in this model")
    if opts["head_site"] and f"blocks.0.attn.hook_{opts['head_site']}" not in model.hook_dict:
        raise _error("patching", "head_site", f"{opts['head_site']!r} does not exist in this model (use 'z' or 'result')")


def _run_patching(ctx: AnalysisContext, opts: dict[str, Any]) -> None:
    model, report = ctx.model, ctx.report
    # A model that measures states in units of its first state's size must see the same final state in
    # both runs: the pairs then share the first state's size as well.
    scaled = model.cfg.scale_by_first_state
    clean, corrupted = ctx.system.sample_swap_pairs(opts["n_pairs"], ctx.seq_len, seed=ctx.stream("patching pairs"),
                                                    vary=opts["vary"], min_change=opts["min_change"], match_first_norm=scaled)
    clean, corrupted = clean.to(dtype=ctx.dtype), corrupted.to(dtype=ctx.dtype)
    stride = opts["position_stride"]
    positions = list(range(ctx.seq_len - 1, -1, -stride))[::-1]
    report.heading("Activation patching", level=3)
    report.paragraph(
        f"{len(clean.states)} clean/corrupted pairs **share their final state** and differ in {opts['vary']} (by ≥ "
        f"{format_number(opts['min_change'])}), so the prediction can change only through what the model inferred from the "
        "earlier states: patching shows where that information flows, not where the current state is copied."
        + (" The model measures states in units of its first state's size, so the pairs also share that size." if scaled else "")
        + " Metric: recovery 1 − ‖y_patched − y_clean‖/‖y_corrupted − y_clean‖ of the last-position prediction (1 = clean restored)."
    )
    last = ctx.seq_len - 1
    with torch.no_grad():
        gap = torch.linalg.vector_norm(model(clean.states)[:, -1] - model(corrupted.states)[:, -1], dim=-1)
        size = torch.linalg.vector_norm(model(clean.states)[:, -1], dim=-1).clamp_min(1e-30)
    blind = int((gap <= 1e-12 * size).sum())
    if blind:
        # Recovery is undefined for such pairs; a model that ignores the context gives nothing else.
        share = "every pair" if blind == len(gap) else f"{blind} of {len(gap)} pairs"
        report.paragraph(f"Patching skipped: for {share} the model's last prediction is the same in both runs, so there is "
                         "no difference for a patch to recover.")
        ctx.findings.append(f"Patching: for {share} the clean and corrupted contexts give the same last prediction, so the "
                            f"prediction does not depend on what differs ({opts['vary']}) there: nothing to localise.")
        ctx.metrics["patching"] = {"skipped": "identical predictions", "n_identical_pairs": blind, "n_pairs": len(gap)}
        return
    groups = group_patching(model, clean.states, corrupted.states,
                            {"every position but the last": list(range(last)), "the last position only": [last]}, site="resid_pre")
    rows = [[layer] + [f"{format_number(float(groups.mean(g)[i]))} ± {format_number(float(groups.stderr(g)[i]))}" for g in groups.groups]
            for i, layer in enumerate(groups.layers)]
    report.paragraph("First, whole groups of positions at once: the residual stream entering each layer, patched at every "
                     "position but the last (the context that differs) or at the last position only (the shared final state, "
                     "plus whatever earlier layers gathered there).")
    report.table(["layer (resid_pre)"] + [f"recovery, {g}" for g in groups.groups], rows)
    report.figure("patching_groups", plot_group_patching(groups), "Recovery per layer when the context, or the last position, is patched whole.")
    out, agreement_rows, agreement_lows, largest = {"groups": groups.to_dict()}, [], [], 0.0
    sites = list(opts["sites"]) + ([opts["head_site"]] if opts["head_site"] else [])
    for site in sites:
        per_position = site not in ("z", "result")
        try:
            result = patching_sweep(model, clean.states, corrupted.states, site=site, positions=positions, per_position=per_position,
                                    progress=ctx.progress)
        except ValueError as error:
            report.paragraph(f"Patching {site} skipped: {error}.")
            ctx.findings.append(f"Patching {site} was skipped: {error}.")
            continue
        grid, columns = patching_grid(result)
        stderr, _ = patching_grid(result, "stderr")
        estimate = attribution_patching_sweep(model, clean.states, corrupted.states, site=site, positions=positions,
                                              per_position=per_position)
        agreement = patching_agreement(result, estimate, seed=ctx.stream(f"patching {site} agreement")) if len(result.index_df) >= 3 else None
        out[site] = {"columns": columns, "mean": grid.tolist(), "stderr": stderr.tolist(),
                     "index": result.index_df.values.tolist(),
                     "p_value": result.permutation_pvalue(n_permutations=500, seed=ctx.stream(f"patching {site} permutations")).tolist(),
                     "attribution_agreement": agreement.to_dict() if agreement is not None else None}
        if agreement is not None:
            agreement_lows.append((site, float(agreement.pearson_interval[0])))
            agreement_rows.append([site, agreement.n_cells, f"{format_number(agreement.pearson)} [{format_number(agreement.pearson_interval[0])}, "
                                   f"{format_number(agreement.pearson_interval[1])}]", agreement.spearman, agreement.max_abs_error])
        report.figure(f"patching_{site}", plot_patching(result, title=f"patching {site} ({opts['vary']} corrupted, final state shared)"),
                      f"Mean recovery when patching {site} from the clean run one cell at a time (positions every {stride} steps), "
                      f"per {' × '.join(columns)}.")
        flat = torch.nan_to_num(grid, nan=-np.inf)
        cell = np.unravel_index(int(torch.argmax(flat)), tuple(grid.shape))
        where = ", ".join(f"{c} {result.index_df[c].sort_values().unique()[i]}" for c, i in zip(columns, cell))
        ctx.findings.append(f"Patching {site}: the best single cell ({where}) recovers {format_number(float(grid[cell]))} ± "
                            f"{format_number(float(stderr[cell]))} of the clean prediction.")
        largest = max(largest, float(grid.abs().nan_to_num(0).max()))
    context, final = (groups.mean(g) for g in groups.groups)
    ctx.findings.append(
        "Patching whole groups of positions: at layer 0 the context (every position but the last) carries a recovery of "
        f"{format_number(float(context[0]))}; by the last layer the last position alone carries "
        f"{format_number(float(final[-1]))} — " + ("the difference moves from the context into the last position across the layers."
                                                   if float(final[-1]) > float(final[0]) + 0.2 else "it does not gather in the last position.")
    )
    if agreement_rows:
        note = (" Single cells recover little here (at most {}), so these correlations compare mostly noise."
                .format(format_number(largest)) if largest < 0.1 else "")
        report.paragraph("Attribution patching (the gradient estimate, one backward pass for every cell) against the exact "
                         "patching above, on the same pairs: correlation of the per-cell mean recoveries, 95 % interval from "
                         "resampling pairs." + note)
        report.table(["site", "cells", "Pearson [95 % CI]", "Spearman", "largest error of a cell mean"], agreement_rows)
        poor = [site for site, low in agreement_lows if low < ATTRIBUTION_AGREEMENT]
        if poor:
            ctx.findings.append(
                f"Attribution patching agrees poorly with exact patching at {', '.join(poor)} (the lower end of the Pearson interval "
                f"is below {ATTRIBUTION_AGREEMENT:g}): here it cannot stand in for exact patching to rank cells, whatever it is "
                "recommended for elsewhere."
            )
    ctx.metrics["patching"] = out


def _check_saliency(opts, model, system, seq_len) -> None:
    _check_positive("saliency", opts, ("n_trajectories",))


def _run_saliency(ctx: AnalysisContext, opts: dict[str, Any]) -> None:
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


def _check_surrogate(opts, model, system, seq_len) -> None:
    _check_positive("surrogate", opts, ("n_trajectories", "rollout_trajectories", "rollout_steps"))
    if not opts["threshold"] > 0:
        raise _error("surrogate", "threshold", f"must be > 0, got {opts['threshold']}")


def _run_surrogate(ctx: AnalysisContext, opts: dict[str, Any]) -> None:
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

ANALYSES: dict[str, Analysis] = {
    "mechanism": Analysis(
        {"n_trajectories": int, "sigmas": list, "threshold": float, "n_pairs": int, "min_change": float, "calibration_seeds": int},
        {"n_trajectories": 128, "sigmas": list(DEFAULT_SIGMAS), "threshold": MATCH_DISTANCE, "n_pairs": 128, "min_change": 0.5,
         "calibration_seeds": 3},
        _check_mechanism, _run_mechanism),
    "weights": Analysis({"rtol": float}, {"rtol": 1e-3}, _check_weights, _run_weights),
    "algorithms": Analysis(
        {"n_trajectories": int, "context_lengths": (str, list), "horizon": int, "n_reference_trajectories": int},
        {"n_trajectories": 256, "context_lengths": "all", "horizon": 20, "n_reference_trajectories": 1024},
        _check_algorithms, _run_algorithms),
    "swap": Analysis({"n_pairs": int, "vary": str, "min_change": float}, {"n_pairs": 256, "vary": "omega0", "min_change": 0.5},
                     _check_swap, _run_swap),
    "probes": Analysis(
        {"hooks": list, "targets": list, "positions": (str, list), "n_trajectories": int, "n_folds": int, "n_permutations": int,
         "sites": list, "nonlinear": bool, "n_controls": int},
        {"hooks": ["hook_embed", "resid_post"], "targets": ["omega0", "omega0_sq", "energy", "acceleration", "omega0_sq_x", "gamma_p"],
         "positions": "all", "n_trajectories": 512, "n_folds": 5, "n_permutations": 100, "sites": [], "nonlinear": True,
         "n_controls": 3},
        _check_probes, _run_probes),
    "energy": Analysis(
        {"hooks": list, "positions": (str, list), "n_trajectories": int, "n_folds": int, "n_controls": int, "last_k": int,
         "rollout_trajectories": int, "rollout_steps": int},
        {"hooks": ["hook_embed", "resid_post"], "positions": "all", "n_trajectories": 512, "n_folds": 5, "n_controls": 3, "last_k": 3,
         "rollout_trajectories": 128, "rollout_steps": 120},
        _check_energy, _run_energy),
    "steering": Analysis(
        {"hooks": list, "position": int, "positions": str, "target": str, "alphas": list, "n_trajectories": int,
         "n_probe_trajectories": int, "n_steps": int},
        {"hooks": ["resid_mid"], "position": -1, "positions": "probe", "target": "omega0", "alphas": [-0.5, -0.25, 0.0, 0.25, 0.5],
         "n_trajectories": 128, "n_probe_trajectories": 512, "n_steps": 10},
        _check_steering, _run_steering),
    "ablation": Analysis(
        {"methods": list, "n_trajectories": int, "rollout_trajectories": int, "rollout_steps": int, "head_hook": str},
        {"methods": ["zero", "mean"], "n_trajectories": 256, "rollout_trajectories": 16, "rollout_steps": 10, "head_hook": "z"},
        _check_ablation, _run_ablation),
    "patching": Analysis(
        {"vary": str, "n_pairs": int, "sites": list, "position_stride": int, "head_site": str, "min_change": float},
        {"vary": "omega0", "n_pairs": 32, "sites": ["resid_pre", "attn_out"], "position_stride": 4, "head_site": "z", "min_change": 0.5},
        _check_patching, _run_patching),
    "saliency": Analysis({"n_trajectories": int}, {"n_trajectories": 16}, _check_saliency, _run_saliency),
    "surrogate": Analysis(
        {"n_trajectories": int, "rollout_trajectories": int, "rollout_steps": int, "threshold": float},
        {"n_trajectories": 512, "rollout_trajectories": 32, "rollout_steps": 50, "threshold": 0.1},
        _check_surrogate, _run_surrogate),
}
"""Every analysis an oscillator study can run, in the order the report shows them."""


def parse_analyses(spec: Mapping[str, Any], model: HookedModel, system: OscillatorSystem, seq_len: int) -> dict[str, dict[str, Any]]:
    """Read and check the ``[analyses]`` table against ``model`` and ``system`` before any training.

    Returns ``{analysis: options}`` for the analyses in ``run`` (in :data:`ANALYSES` order), defaults
    filled in. Unknown analyses or keys, wrong types, out-of-range values, hooks or sites the model
    lacks and interventions the system cannot support are :class:`StudySpecError` naming the key.
    """
    top = section({"analyses": spec}, "analyses", {"run": list, **{name: dict for name in ANALYSES}})
    run = top.get("run", list(ANALYSES))
    bad = [name for name in run if name not in ANALYSES]
    if bad or not run or len(set(run)) != len(run):
        raise StudySpecError(f"[analyses] run must list distinct analyses from {list(ANALYSES)}, got {run!r}")
    options = {}
    for name, analysis in ANALYSES.items():
        table = section(top, name, analysis.keys)
        if name not in run:
            if table:
                raise StudySpecError(f"[analyses.{name}] is given but {name!r} is not in [analyses] run")
            continue
        opts = {**analysis.defaults, **table}
        analysis.check(opts, model, system, seq_len)
        options[name] = opts
    return options


def run_analyses(ctx: AnalysisContext, options: Mapping[str, dict[str, Any]]) -> None:
    """Run the parsed analyses on ``ctx.model`` in :data:`ANALYSES` order and add their sections,
    figures, metrics and a Findings section to ``ctx.report``. When the model failed its task the
    Findings say so first, and every later finding describes a model that does not work."""
    ctx.model.eval()
    timings: dict[str, float] = {}
    report = ctx.report
    report.heading("Interpretability analyses")
    if ctx.verdict is not None and not ctx.verdict.works:
        report.paragraph(f"**The model does not do its task ({ctx.verdict.status}); the analyses below describe a model that fails.**")
    for name, opts in options.items():
        start = time.perf_counter()
        ANALYSES[name].run(ctx, opts)
        timings[name] = time.perf_counter() - start
    report.heading("Findings", level=3)
    findings = list(ctx.findings)
    if ctx.verdict is not None:
        lead = ("The model does its task" if ctx.verdict.works else f"**The model fails its task ({ctx.verdict.status})**; read every finding below as describing a model that does not work")
        findings.insert(0, lead + f" — see the first section (verdict at {ctx.verdict.horizon} rollout steps).")
    report.bullets(findings or ["No analysis produced a finding."])
    ctx.metrics["seeds"] = dict(ctx.seeds)
    report.metrics["analyses"] = ctx.metrics
    report.timings["analyses"] = timings


__all__ = ["ANALYSES", "FIRST_STATE_UNITS", "Analysis", "AnalysisContext", "LAYER_HOOKS", "expand_hooks", "parse_analyses",
           "probe_label_name", "run_analyses"]
