"""§2 of the F = m·a study: the seed's modes beside our refinement, how stable the labels are on
fresh samples, and how they change with the data size."""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np
import torch

from physlens.probes.mechanisms import (
    MODES,
    REFINEMENT_NAMES,
    SEED_LABELS,
    SEED_MAINLY,
    UnitStatistics,
    labels_from_states,
    mechanism_labels,
    refinement_labels,
    seed_mode_labels,
    unit_states,
    unit_statistics,
)
from physlens.probes.populations import label_stability, refined_classes
from physlens.stats import Interval, proportion_interval
from physlens.studies.fma.common import State, cpu_params, pct, take, train_networks
from physlens.studies.report import Report


def run(state: State) -> None:
    """§2: mechanism labels, their stability across sample sizes, and another data size."""
    clock, dist, lab, params, report = take(state, "clock", "dist", "lab", "params", "report")
    stats = unit_statistics(params, dist)
    states = unit_states(stats, tolerance=lab["tolerance"])
    labels = labels_from_states(states, stats.output_weight)
    seed_modes = seed_mode_labels(stats)
    classes = refined_classes(params, states, stats)
    report.heading("2. Mechanism labels, and how stable they are")
    _seed_modes_table(report, stats, labels, seed_modes)
    stability_metrics = _stability(state, labels)
    clock.lap("labels and their stability")
    big_labels, big_params, small_labels, agree = _other_data_size(state)
    report.metrics["labels"] = {
        "tolerance": lab["tolerance"], "stability": stability_metrics, "other_size_agreement": agree.estimate,
        "other_size_agreement_interval": [agree.low, agree.high], "counts": dict(Counter(labels.tolist())),
        "other_size_counts": dict(Counter(big_labels.tolist())), "study_size_counts": dict(Counter(small_labels.tolist())),
        "seed_mode_counts": dict(Counter(seed_modes.tolist())), "seed_mainly": SEED_MAINLY,
    }  # fmt: skip
    state.update(big_labels=big_labels, big_params=big_params, classes=classes, labels=labels, seed_modes=seed_modes)


def _seed_modes_table(report: Report, stats: UnitStatistics, labels: np.ndarray, seed_modes: np.ndarray) -> None:
    """The seed's modes, each with our refinement of its networks and how much their more active unit fires."""
    report.paragraph(
        "**The seed's modes** judge a unit by where it fires, in the seed's words: dead (fires on at most "
        f"{1 - SEED_MAINLY:.0%} of the distribution), active or \"mainly positive\" (at least {SEED_MAINLY:.0%}), straddling zero "
        "otherwise; mode 1 both dead, 2 one dead, 2.5 both active, 3 one straddling and one active; two straddling units "
        "are a pattern the seed did not name. Beside each seed mode, our refinement (what the units do to the function, "
        "below) and the firing fraction of each network's more active unit (median [range]):"
    )
    firing = stats.firing_fraction.max(axis=1)
    seed_rows = []
    for mode in SEED_LABELS:
        chosen = seed_modes == mode
        if chosen.any():
            refined = Counter(refinement_labels(labels[chosen]).tolist()).most_common()
            seed_rows.append([mode, f"{int(chosen.sum())} ({pct(proportion_interval(int(chosen.sum()), len(labels)))})",
                              f"{np.median(firing[chosen]):.1%} [{firing[chosen].min():.1%}, {firing[chosen].max():.1%}]",
                              ", ".join(f"{k} {v}" for k, v in refined)])  # fmt: skip
    report.table(["seed's mode", "networks", "more active unit fires on", "our refinement (networks)"], seed_rows)


def _stability(state: State, labels: np.ndarray) -> dict[str, Any]:
    """How our rule is defined, and how often its labels (and the old rule's) change on fresh samples."""
    data, dist, lab, n_res, params, report, seed = take(state, "data", "dist", "lab", "n_res", "params", "report", "seed")
    report.paragraph(
        "A hidden unit is judged by what it does to the computed function over the data distribution (computed "
        "exactly, by quadrature): *dead* if removing it (ReLU → 0) moves the output by at most "
        f"{lab['tolerance']:.0%} of the target's standard deviation (RMS), *linear* (the seed's \"active\") if replacing its "
        "ReLU by the identity moves it by at most that much, a *crease* (the seed's \"straddling\") otherwise — a ridge "
        "(concave) when its output weight is negative, a valley (convex) when positive. **Our refinement** names networks "
        "by these: constant (both dead), one unit (one dead), plane (both linear), ridge + plane (one ridge and one "
        "linear unit: min of two planes), valley + plane (max of two planes), ridge + valley and same-sign pair (two "
        "creases). It is not the seed's taxonomy: a unit that fires on 94 % of the data but bends the output by more than "
        "the tolerance is the seed's \"mainly positive\" and our crease, so the seed's mode-3 exemplar 620240165 is our "
        "same-sign pair (§3). The refinement's labels are what the scan and discovery sections below are scored against."
    )
    stability_rows, stability_metrics = [], {}
    for row in label_stability(params, labels, data.train_inputs, dist, sizes=lab["stability_sizes"], repeats=lab["stability_repeats"],
                               seed=seed, tolerance=lab["tolerance"], n_resamples=n_res):
        changed, old = row.changed, row.old_rule_changed
        stability_rows.append([f"{row.size:,}", pct(changed), pct(old)])
        stability_metrics[str(row.size)] = {"changed": changed.estimate, "low": changed.low, "high": changed.high, "old_rule_changed": old.estimate}
    report.paragraph(
        f"Relabelling every network on fresh samples ({lab['stability_repeats']} samples per size) instead of the exact "
        "distribution: the share of labels that change (mean over samples, bootstrap interval over networks). The old rule "
        "(a unit is active only if it fires on every point) is shown relabelled on the same sizes against its labels on "
        "the networks' own training points."
    )
    report.table(["fresh sample size", "labels changed (this rule)", "labels changed (old all-points rule)"], stability_rows)
    return stability_metrics


def _other_data_size(state: State) -> tuple[np.ndarray, dict[str, torch.Tensor], np.ndarray, Interval]:
    """The same initialisations trained on this study's data and on a second size: how often their labels agree."""
    clock, d, dist, lab, opts, progress, report, seeds, tr = take(
        state, "clock", "d", "dist", "lab", "opts", "progress", "report", "seeds", "tr")
    big, _ = train_networks(seeds["other_size"], opts, n_train=tr["other_size_n_train"], n_val=tr["other_size_n_val"], progress=progress)
    small, _ = train_networks(seeds["other_size"], opts, progress=progress)
    big_params, small_params = cpu_params(big), cpu_params(small)
    big_labels, small_labels = (mechanism_labels(p, dist, tolerance=lab['tolerance']) for p in (big_params, small_params))
    agree = proportion_interval(int((big_labels == small_labels).sum()), len(big_labels))
    clock.lap(f"another data size ({tr['other_size_n_seeds']} networks, trained twice)")
    size_rows = []
    for mode in MODES:
        a, b = int((small_labels == mode).sum()), int((big_labels == mode).sum())
        if a or b:
            size_rows.append([REFINEMENT_NAMES[mode], pct(proportion_interval(a, len(small_labels))), pct(proportion_interval(b, len(big_labels)))])
    report.paragraph(
        f"Another data size: {len(big_labels)} further networks trained from the same initialisations twice, once on "
        f"this study's {d['n_train']} / {d['n_val']} points and once on "
        f"{tr['other_size_n_train']} / {tr['other_size_n_val']}. The same network gets the same label in {pct(agree)} of cases; "
        "the frequencies of our refinement's classes (Wilson intervals):"
    )
    report.table(["our refinement", f"{d['n_train']} training points", f"{tr['other_size_n_train']} training points"], size_rows)
    return big_labels, big_params, small_labels, agree
