"""The ``[analyses.probes]`` section: linear probes at every site with random-init controls, nested
cross-validation, a permutation null, an input baseline and even features for even labels."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from physlens.models.base import HookedModel
from physlens.plots.probes import plot_probe_r2
from physlens.probes.baselines import input_baseline_r2
from physlens.probes.linear_probe import ProbeResult
from physlens.probes.nonlinear import mlp_probe_r2
from physlens.probes.parity import parity_report, pattern_features, quadratic_features
from physlens.probes.selection import SiteSelection, select_sites, site_features
from physlens.studies.oscillator_analyses.common import (
    AnalysisContext,
    FIRST_STATE_UNITS,
    _check_positive,
    _cv_r2,
    _error,
    _positions,
    _short_site,
    _sites,
    expand_hooks,
)
from physlens.studies.report import format_number
from physlens.systems.oscillator import EVEN_LABELS, LABEL_NAMES, OscillatorSystem


HEADLINE_TARGET = "omega0"


def check(opts: dict[str, Any], model: HookedModel, system: OscillatorSystem, seq_len: int) -> None:
    """Check the ``[analyses.probes]`` options ``opts`` against ``model``, ``system`` and ``seq_len`` before any training."""
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
    nonlinear = opts["nonlinear"]
    if isinstance(nonlinear, list) and not (all(isinstance(t, str) for t in nonlinear) and set(nonlinear) <= set(opts["targets"])):
        raise _error("probes", "nonlinear", f"must be true, false or a list of the probed targets {opts['targets']}, got {opts['nonlinear']!r}")
    if opts["n_trajectories"] < 2 * opts["n_folds"]:
        raise _error("probes", "n_trajectories", f"must be at least 2 × n_folds = {2 * opts['n_folds']}, got {opts['n_trajectories']}")


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


def run(ctx: AnalysisContext, opts: dict[str, Any]) -> None:
    """Probe every target at every site beside its controls and add the tables, figures, metrics and findings."""
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
    per_trajectory = [t for t in even_targets if labels[t].ndim == 1]  # per-step even labels (energy) are probed at the sites above
    if not per_trajectory:
        return rows, metrics
    # The features do not depend on the target: each is computed once, for every target.
    patterns = [(pattern_features(ctx.model, data.states, layer, last), pattern_features(control, data.states, layer, last))
                for layer in range(ctx.model.cfg.n_layers)]
    activations = [(site, site_features(ctx.model, data.states, [site[0]], [site[1]])[0][:, 0],
                    site_features(control, data.states, [site[0]], [site[1]])[0][:, 0]) for site in registered]
    quadratic = [(quadratic_features(model_acts), quadratic_features(control_acts)) for _, model_acts, control_acts in activations]
    for target in per_trajectory:
        for layer, (model_pattern, control_pattern) in enumerate(patterns):
            add(f"attention weights, layer {layer}, query {last}", target, model_pattern, control_pattern)
        for (site, model_acts, control_acts), (model_quadratic, control_quadratic) in zip(activations, quadratic):
            add(f"quadratic features, {_short_site(site)}", target, model_quadratic, control_quadratic)
            if opts["nonlinear"] is True or (isinstance(opts["nonlinear"], list) and target in opts["nonlinear"]):
                add(f"MLP probe, {_short_site(site)}", target, model_acts, control_acts, nonlinear=True)
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
