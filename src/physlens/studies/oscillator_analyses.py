"""The ``[analyses]`` part of an oscillator study: probes, ablation, patching, saliency, surrogate, weights.

Called by :mod:`physlens.studies.oscillator` after training with the trained model; every number in
the report, the Findings sentences included, is computed here from the model.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from physlens.models.linear import LinearAutoregressive
from physlens.models.transformer import OscillatorTransformer
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
from physlens.probes.linear_probe import probe_sweep
from physlens.probes.patching import patching_grid, patching_pairs, patching_sweep
from physlens.probes.saliency import off_diagonal_fraction, saliency, saliency_matrix
from physlens.probes.surrogate import LinearSurrogate
from physlens.probes.weights import head_circuits
from physlens.studies.report import Report, StudySpecError, format_number, section
from physlens.training.rollout import relative_error, rollout

ANALYSES = ("weights", "probes", "ablation", "patching", "saliency", "surrogate")
FREQUENCY_FORMS = ("omega0", "omega0_sq", "Omega", "cos_Omega_dt")
"""Parametrisations of the frequency compared in the Findings."""

TOP_KEYS = {"run": list, "batch_size": int, **{name: dict for name in ANALYSES}}
OPTION_KEYS: dict[str, dict[str, Any]] = {
    "weights": {"rtol": float},
    "probes": {"hooks": list, "targets": list, "positions": (str, list), "n_trajectories": int, "n_folds": int, "control_seed": int},
    "ablation": {"methods": list, "n_trajectories": int, "rollout_trajectories": int, "rollout_steps": int, "head_hook": str},
    "patching": {"vary": str, "n_pairs": int, "sites": list, "position_stride": int, "head_site": str, "min_change": float},
    "saliency": {"n_trajectories": int},
    "surrogate": {"n_trajectories": int, "rollout_trajectories": int, "rollout_steps": int, "threshold": float},
}
DEFAULTS: dict[str, dict[str, Any]] = {
    "weights": {"rtol": 1e-3},
    "probes": {
        "hooks": ["hook_embed", "resid_post"],
        "targets": ["omega0", "omega0_sq", "Omega", "cos_Omega_dt", "gamma", "damping_factor", "energy", "acceleration"],
        "positions": "all",
        "n_trajectories": 512,
        "n_folds": 5,
        "control_seed": 12345,
    },
    "ablation": {"methods": ["zero", "mean"], "n_trajectories": 256, "rollout_trajectories": 16, "rollout_steps": 10, "head_hook": "z"},
    "patching": {"vary": "omega0", "n_pairs": 32, "sites": ["resid_pre", "attn_out"], "position_stride": 4, "head_site": "z", "min_change": 0.5},
    "saliency": {"n_trajectories": 16},
    "surrogate": {"n_trajectories": 512, "rollout_trajectories": 32, "rollout_steps": 50, "threshold": 0.1},
}
LAYER_HOOKS = ("resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out")


def parse_analyses(spec: Mapping[str, Any]) -> tuple[list[str], int, dict[str, dict[str, Any]]]:
    """Read the ``[analyses]`` table strictly: which analyses to run, the batch size, and every
    analysis's options with defaults filled in."""
    top = section({"analyses": spec}, "analyses", TOP_KEYS)
    run = top.get("run", list(ANALYSES))
    bad = [name for name in run if name not in ANALYSES]
    if bad or not run or len(set(run)) != len(run):
        raise StudySpecError(f"[analyses] run must list distinct analyses from {list(ANALYSES)}, got {run!r}")
    batch_size = top.get("batch_size", 256)
    if batch_size < 1:
        raise StudySpecError(f"[analyses] batch_size must be >= 1, got {batch_size}")
    options = {}
    for name in ANALYSES:
        table = section(top, name, OPTION_KEYS[name])
        options[name] = {**DEFAULTS[name], **table}
        if name not in run and table:
            raise StudySpecError(f"[analyses.{name}] is given but {name!r} is not in [analyses] run")
    for name, opts in options.items():
        for key, value in opts.items():
            if isinstance(value, int) and not isinstance(value, bool) and key not in ("control_seed",) and value < 1:
                raise StudySpecError(f"[analyses.{name}] {key} must be >= 1, got {value}")
    return list(run), batch_size, options


def expand_hooks(model: OscillatorTransformer, hooks: list[str]) -> list[str]:
    """Short names (``resid_post``, ``attn_out``…) become one hook per layer; full names pass through."""
    names = []
    for hook in hooks:
        if hook in LAYER_HOOKS:
            names += [f"blocks.{layer}.hook_{hook}" for layer in range(model.cfg.n_layers)]
        else:
            names.append(hook)
    missing = [n for n in names if n not in model.hook_dict]
    if missing:
        raise StudySpecError(f"[analyses.probes] hooks {missing} do not exist in this model; short forms are {list(LAYER_HOOKS)}")
    return names


def run_analyses(ctx: Any, spec: Mapping[str, Any], report: Report) -> None:
    """Run the analyses listed in ``spec`` (the study's ``[analyses]`` table) on ``ctx.model`` and
    add their sections, figures, metrics and a Findings section to ``report``."""
    run, batch_size, options = parse_analyses(spec)
    model = ctx.model.eval()
    dtype = model.W_E.dtype
    metrics: dict[str, Any] = {}
    findings: list[str] = []
    timings: dict[str, float] = {}
    report.heading("Interpretability analyses")
    for offset, name in enumerate(run):
        start = time.perf_counter()
        seed = ctx.seed + 7919 * (offset + 1)
        handler = globals()[f"_run_{name}"]
        handler(ctx, model, dtype, options[name], batch_size, seed, report, metrics, findings)
        timings[name] = time.perf_counter() - start
    metrics["wall_time_s"] = timings
    report.heading("Findings", level=3)
    report.bullets(findings or ["No analysis produced a finding."])
    report.metrics["analyses"] = metrics


def _sample(ctx: Any, n: int, n_steps: int, seed: int, dtype: torch.dtype, energy_range: Any = None):
    trajectories = ctx.system.sample(n, n_steps, seed=seed, energy_range=energy_range)
    return trajectories.to(device=ctx.device, dtype=dtype)


def _run_weights(ctx, model, dtype, opts, batch_size, seed, report, metrics, findings) -> None:
    circuits = head_circuits(model, rtol=opts["rtol"])
    report.heading("Weights: OV and QK circuits", level=3)
    rows = []
    for layer in range(model.cfg.n_layers):
        for head in range(model.cfg.n_heads):
            rows.append([layer, head, float(circuits.ov_gain[layer, head]), float(circuits.w_o_norm[layer, head]),
                         float(circuits.qk_singular_values[layer, head, 0]), "yes" if bool(circuits.silent[layer, head]) else "no"])
    report.table(["layer", "head", "OV gain (σ_max)", "‖W_O‖_F", "QK σ_max", f"silent (gain < {format_number(opts['rtol'])})"], rows)
    silent = circuits.silent_heads()
    metrics["weights"] = circuits.to_dict()
    n_heads = model.cfg.n_layers * model.cfg.n_heads
    if silent:
        findings.append(f"{len(silent)} of {n_heads} heads write almost nothing (OV gain below {format_number(opts['rtol'])}): {silent}.")
    else:
        weakest = np.unravel_index(int(torch.argmin(circuits.ov_gain)), tuple(circuits.ov_gain.shape))
        findings.append(
            f"No head is silent: the weakest OV gain is {format_number(float(circuits.ov_gain.min()))} "
            f"(layer {weakest[0]}, head {weakest[1]}), so unlike the seed's OLA (W_O ≈ 0) every head writes to the residual stream."
        )


def _run_probes(ctx, model, dtype, opts, batch_size, seed, report, metrics, findings) -> None:
    hooks = expand_hooks(model, opts["hooks"])
    data = _sample(ctx, opts["n_trajectories"], ctx.seq_len, seed, dtype)
    labels = with_acceleration(data)
    unknown = [t for t in opts["targets"] if t not in labels]
    if unknown:
        raise StudySpecError(f"[analyses.probes] targets {unknown} are not labels; choose from {sorted(labels)}")
    constant = [t for t in opts["targets"] if float(labels[t].max() - labels[t].min()) <= 1e-12 * float(labels[t].abs().max() + 1e-300)]
    targets = [t for t in opts["targets"] if t not in constant]
    report.heading("Linear probes", level=3)
    if constant:
        report.paragraph(f"Skipped targets that are constant in this system (nothing to decode): {', '.join(constant)}.")
    if not targets:
        findings.append("Probes were skipped: every requested target is constant in this system.")
        return
    positions = opts["positions"]
    control = OscillatorTransformer(dataclasses.replace(model.cfg, seed=opts["control_seed"])).to(ctx.device).eval()
    result = probe_sweep(
        model, data.states, hooks, labels=labels, targets=targets, positions=positions, control_model=control,
        n_folds=opts["n_folds"], batch_size=batch_size, seed=seed, progress=ctx.progress,
    )
    report.paragraph(
        f"Ridge probes (α by grouped {opts['n_folds']}-fold CV, folds by trajectory) on {result.n_trajectories} fresh "
        f"trajectories at {len(hooks)} hooks × {len(result.positions)} positions. Control: the same probe on a randomly "
        "initialised copy of the model; selectivity = R² − control R². Shuffled: labels permuted across trajectories."
    )
    rows = []
    for target in targets:
        best = result.best_site(target)
        rows.append([target, best["hook"], best["position"], best["r2"], best["control_r2"], best["selectivity"], best["shuffled_r2"]])
    report.table(["target", "best hook", "position", "held-out R²", "random-init R²", "selectivity", "shuffled-label R²"], rows)
    shown = [t for t in ("omega0", "acceleration", "energy") if t in targets] or targets[:1]
    for target in shown:
        report.figure(f"probe_r2_{target}", plot_probe_r2(result, target), f"Held-out R² of linear probes for {target} per hook and position, with controls.")
    metrics["probes"] = {**result.to_dict(), "skipped_constant_targets": constant}
    if "omega0" in targets:
        best = result.best_site("omega0")
        findings.append(
            f"ω0 is decoded best at {best['hook']} position {best['position']} with held-out R² {format_number(best['r2'])}; "
            f"the same probe on a random-init copy reaches {format_number(best['control_r2'])} (selectivity "
            f"{format_number(best['selectivity'])}), shuffled labels {format_number(best['shuffled_r2'])}."
        )
    forms = [t for t in FREQUENCY_FORMS if t in targets]
    if len(forms) > 1:
        scores = {t: result.best_site(t)["r2"] for t in forms}
        ranked = sorted(scores, key=scores.get, reverse=True)
        findings.append(
            f"Of the frequency parametrisations, {ranked[0]} is represented most linearly (best-site R² "
            f"{format_number(scores[ranked[0]])}), then " + ", ".join(f"{t} ({format_number(scores[t])})" for t in ranked[1:]) + "."
        )
    if "acceleration" in targets:
        best = result.best_site("acceleration")
        findings.append(
            f"The acceleration ẍ = −ω0² x − 2γ p of the current state (the product the update needs) decodes with held-out R² "
            f"{format_number(best['r2'])} at {best['hook']} position {best['position']} (random-init control "
            f"{format_number(best['control_r2'])}, selectivity {format_number(best['selectivity'])})."
        )
    if "energy" in targets:
        best = result.best_site("energy")
        findings.append(f"Energy decodes with held-out R² up to {format_number(best['r2'])} ({best['hook']}, position {best['position']}; selectivity {format_number(best['selectivity'])}).")


def with_acceleration(data: Any) -> dict[str, torch.Tensor]:
    """The trajectories' labels plus ``acceleration`` = ẍ = −ω0² x − 2γ p at every step ``[traj, step]``."""
    labels = data.labels()
    x, p = data.states[..., 0], data.states[..., 1]
    labels["acceleration"] = -(data.omega0[:, None] ** 2 * x + 2 * data.gamma[:, None] * p)
    return labels


def _run_ablation(ctx, model, dtype, opts, batch_size, seed, report, metrics, findings) -> None:
    data = _sample(ctx, opts["n_trajectories"], ctx.seq_len + 1, seed, dtype)
    inputs, targets = data.inputs_targets()
    steps = opts["rollout_steps"]
    roll = _sample(ctx, opts["rollout_trajectories"], ctx.seq_len + steps, seed + 1, dtype)
    report.heading("Ablation", level=3)
    report.paragraph(
        f"Each head (via hook_{opts['head_hook']}) and each attention layer is replaced in turn; next-step loss on "
        f"{len(inputs)} trajectories ({ctx.loss_positions} position(s)) and the median mean relative error of "
        f"{steps}-step rollouts from {len(roll)} contexts."
    )
    out = {}
    rows = []
    for method in opts["methods"]:
        if method not in ("zero", "mean", "resample"):
            raise StudySpecError(f"[analyses.ablation] methods must be among zero, mean, resample; got {method!r}")
        result = ablation_sweep(
            model, inputs, targets, method=method, head_hook=opts["head_hook"], loss_positions=ctx.loss_positions,
            rollout_context=roll.states[:, : ctx.seq_len], rollout_truth=roll.states[:, ctx.seq_len :], seed=seed, progress=ctx.progress,
        )
        out[method] = result.to_dict()
        layer, head = result.most_important_head()
        worst_layer = int(np.argmax(result.attn_loss))
        rows.append([method, result.baseline_loss, f"L{layer} H{head}", result.head_loss[layer, head], f"L{worst_layer}", result.attn_loss[worst_layer]])
        report.figure(f"ablation_{method}", plot_ablation_grid(result), f"{method} ablation: next-step loss relative to the unablated model.")
        findings.append(
            f"{method.capitalize()}-ablating layer {layer} head {head} hurts most among heads: next-step loss "
            f"{format_number(result.head_loss[layer, head])} vs {format_number(result.baseline_loss)} unablated "
            f"(×{format_number(result.head_loss[layer, head] / result.baseline_loss)}); the whole attention layer {worst_layer} "
            f"gives ×{format_number(result.attn_loss[worst_layer] / result.baseline_loss)}."
        )
    report.table(["method", "unablated loss", "worst head", "its loss", "worst attention layer", "its loss"], rows)
    metrics["ablation"] = out


def _run_patching(ctx, model, dtype, opts, batch_size, seed, report, metrics, findings) -> None:
    try:
        clean, corrupted = patching_pairs(ctx.system, opts["n_pairs"], ctx.seq_len, vary=opts["vary"], min_change=opts["min_change"], seed=seed)
    except ValueError as error:
        report.heading("Activation patching", level=3)
        report.paragraph(f"Skipped: {error}.")
        findings.append(f"Patching was skipped: {error}.")
        return
    clean, corrupted = clean.to(device=ctx.device, dtype=dtype), corrupted.to(device=ctx.device, dtype=dtype)
    stride = opts["position_stride"]
    positions = list(range(ctx.seq_len - 1, -1, -stride))[::-1]
    report.heading("Activation patching", level=3)
    report.paragraph(
        f"{len(clean.states)} clean/corrupted pairs share the initial state and differ in {opts['vary']} (by ≥ {format_number(opts['min_change'])}). "
        f"Metric: recovery 1 − ‖y_patched − y_clean‖/‖y_corrupted − y_clean‖ of the last-position prediction (1 = clean restored); "
        f"positions every {stride} steps."
    )
    out = {}
    sites = list(opts["sites"]) + ([opts["head_site"]] if opts["head_site"] else [])
    for site in sites:
        per_position = site not in ("z", "result")
        hook_site = f"blocks.0.hook_{site}" if per_position else f"blocks.0.attn.hook_{site}"
        if hook_site not in model.hook_dict:
            raise StudySpecError(f"[analyses.patching] site {site!r} does not exist in this model")
        result = patching_sweep(model, clean.states, corrupted.states, site=site, positions=positions, per_position=per_position, progress=ctx.progress)
        grid, columns = patching_grid(result)
        stderr, _ = patching_grid(result, "stderr")
        out[site] = {"columns": columns, "mean": grid.tolist(), "stderr": stderr.tolist(),
                     "index": result.index_df.values.tolist(),
                     "p_value": result.permutation_pvalue(n_permutations=500, seed=seed).tolist()}
        report.figure(f"patching_{site}", plot_patching(result, title=f"patching {site} ({opts['vary']} corrupted)"),
                      f"Mean recovery when patching {site} from the clean run, per {' × '.join(columns)}.")
        flat = torch.nan_to_num(grid, nan=-np.inf)
        cell = np.unravel_index(int(torch.argmax(flat)), tuple(grid.shape))
        where = ", ".join(f"{c} {result.index_df[c].sort_values().unique()[i]}" for c, i in zip(columns, cell))
        findings.append(f"Patching {site}: the best single cell ({where}) recovers {format_number(float(grid[cell]))} ± {format_number(float(stderr[cell]))} of the clean prediction.")
    metrics["patching"] = out


def _run_saliency(ctx, model, dtype, opts, batch_size, seed, report, metrics, findings) -> None:
    data = _sample(ctx, opts["n_trajectories"], ctx.seq_len, seed, dtype)
    jacobian = saliency(model, data.states, batch_size=batch_size)
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
    report.figure("attention_last_layer", plot_attention_patterns(pattern, title="last layer attention (batch mean)"), "Attention patterns of the last layer, averaged over trajectories.")
    metrics["saliency"] = {"off_diagonal_fraction": off, "last_prediction_share_from_last_input": share_last_input, "matrix": matrix.tolist()}
    if off < 1e-3:
        verdict = "is block-diagonal in position: each prediction reads only its own time step, as in the seed's OLA"
    elif off < 0.1:
        verdict = "is mostly diagonal: each prediction reads mainly its own time step"
    else:
        verdict = "mixes time steps strongly"
    findings.append(
        f"The saliency map {verdict} ({format_number(100 * off)} % of ‖∂Y/∂X‖² off the diagonal; the last prediction takes "
        f"{format_number(100 * share_last_input)} % of its sensitivity from the last input state)."
    )


def _run_surrogate(ctx, model, dtype, opts, batch_size, seed, report, metrics, findings) -> None:
    steps = opts["rollout_steps"]
    train = _sample(ctx, opts["n_trajectories"], ctx.seq_len + 20, seed, dtype)  # 20 windows each for the baseline
    held_out = _sample(ctx, opts["rollout_trajectories"], ctx.seq_len + steps, seed + 1, dtype)
    contexts, truth = held_out.states[:, : ctx.seq_len], held_out.states[:, ctx.seq_len :]
    surrogate = LinearSurrogate().fit(model, train.states[:, : ctx.seq_len])
    fidelity = surrogate.fidelity(model, contexts, steps, threshold=opts["threshold"])
    baseline = LinearAutoregressive(window=ctx.seq_len).fit(train.states)
    model_path, surrogate_path = fidelity.model_path, fidelity.surrogate_path
    baseline_path = rollout(baseline, contexts, steps).to(model_path)
    model_error = relative_error(model_path, truth).median(dim=0).values
    baseline_error = relative_error(baseline_path, truth).median(dim=0).values
    report.heading("Linear baseline and linear surrogate", level=3)
    report.paragraph(
        f"A closed-form linear autoregressive model over T = {ctx.seq_len} states fitted to the physics (baseline), and one "
        f"fitted to the transformer's own predictions (surrogate), both on {len(train.states)} trajectories; "
        f"{steps}-step rollouts from {len(contexts)} held-out contexts."
    )
    report.table(
        ["quantity", "value"],
        [
            ["surrogate one-step R² vs the model (held out)", fidelity.one_step_r2],
            [f"surrogate diverges from the model (median deviation > {format_number(opts['threshold'])}) at step",
             fidelity.divergence_step if fidelity.divergence_step is not None else f"never within {steps}"],
            ["surrogate–model deviation at the last step", float(fidelity.divergence[-1])],
            ["transformer median rollout error, last step", float(model_error[-1])],
            ["linear baseline median rollout error, last step", float(baseline_error[-1])],
        ],
    )
    report.figure("rollout_vs_linear", plot_rollout(truth[0], {"transformer": model_path[0], "linear baseline": baseline_path[0], "linear surrogate": surrogate_path[0]}, dt=ctx.system.dt),
                  "One held-out trajectory: truth, transformer, linear baseline and the transformer's linear surrogate (the seed's Fig. 8).")
    metrics["surrogate"] = {**fidelity.to_dict(), "model_median_error": model_error.tolist(), "baseline_median_error": baseline_error.tolist(),
                            "surrogate_fit_r2": surrogate.fit_r2_}
    if fidelity.divergence_step is None:
        findings.append(f"A linear surrogate tracks the transformer for all {steps} rollout steps (deviation ≤ {format_number(opts['threshold'])}): the model behaves like a linear map of its window here.")
    else:
        findings.append(
            f"The linear surrogate matches the transformer one step ahead with R² {format_number(fidelity.one_step_r2)} but its rollout "
            f"departs from the model's (median deviation > {format_number(opts['threshold'])}) after {fidelity.divergence_step} step(s): "
            "the transformer did not reduce to a linear model."
        )
    better = "beats" if float(model_error[-1]) < float(baseline_error[-1]) else "does not beat"
    findings.append(
        f"After {steps} steps the transformer's median rollout error is {format_number(float(model_error[-1]))}, the linear baseline's "
        f"{format_number(float(baseline_error[-1]))}: the transformer {better} the linear baseline."
    )


__all__ = ["ANALYSES", "DEFAULTS", "expand_hooks", "parse_analyses", "run_analyses", "with_acceleration"]
