"""§9 of the F = m·a study: which hidden units do the work in networks no formula labels. The unit
scan is calibrated and scored on planted networks, its roles are tested by ablation, and the width-2
networks' creases are followed through training."""

from __future__ import annotations

import dataclasses
import itertools
from typing import Any

import numpy as np

from physlens.probes.populations import label_switches, settled_epochs
from physlens.probes.unit_scan import AblationCheck, UnitRoles, UnitScan, ablation_checks, exact_unit_roles, planted_networks, role_scores, unit_roles
from physlens.stats import proportion_interval
from physlens.studies.fma.common import State, median_ci, pct, take

ABLATION_DRAWS = 200  # random sets of units in the ablation check's null distribution
ABLATION_TOLERANCE = 0.1  # the ablation check's relative tolerance on a network's RMS error


def run(state: State) -> None:
    """§9: which units do the work in networks no formula labels, by the unit scan."""
    clock, report = take(state, "clock", "report")
    scan, planted_metrics, test_params, found_test = _planted(state)
    clock.lap("unit scan on planted networks")
    ablation_metrics = _ablation(state, scan.tolerance_, test_params, found_test)
    clock.lap("unit scan ablation on trained networks")
    dynamics_metrics = _creases_through_training(state, scan.tolerance_)
    report.metrics["unit_scan"] = {"tolerance": scan.tolerance_, "calibration": {str(k): v for k, v in scan.accuracy_.items()},
                                   "planted": planted_metrics, "ablation": ablation_metrics, "dynamics": dynamics_metrics}  # fmt: skip
    clock.lap("unit scan through training")


def _layout(width: int) -> dict[str, int]:
    """The planted networks' units besides the hand-crafted pair."""
    return {"n_dead": width - 5, "n_duplicates": 1, "n_cancelling": 1}


def _planted(state: State) -> tuple[UnitScan, dict[str, Any], dict[str, Any], UnitRoles]:
    """Calibrate the scan's tolerance on planted networks; its precision and recall on held-out ones and on
    trained networks of the other recipes embedded among planted units."""
    dist, report, seed, seeds, un = take(state, "dist", "report", "seed", "seeds", "un")
    width, n_planted = un["planted_width"], un["n_planted"]
    layout = _layout(width)
    report.heading("9. Which units do the work: the unit scan")
    report.paragraph(
        "For networks no formula labels (any width, two hidden layers), the unit scan gives every hidden unit a role from "
        "ablations on a sample of the data: *dead* (removing it moves the output by at most the tolerance, in units of "
        "std(m·a)), *cancelling* (it matters alone, but removing it together with the units whose activations are "
        "proportional to its own changes nothing), *linear* (linearising its group changes nothing) or *crease*. Units "
        "with proportional activations form a group, so a duplicated crease is found, and flagged redundant. The scan's "
        f"tolerance is calibrated on planted networks: the seed's hand-crafted mode-3 pair (a ridge along the diagonal and "
        f"a linear unit) in width {width}, among {layout['n_dead']} dead units, a duplicate of the ridge and a pair of "
        f"cancelling units, every unit rescaled at random, every parameter perturbed by {un['noise']:.1%} and the units "
        "shuffled. Nothing in the scan reads the planted truth or a label."
    )
    fit_params, fit_truth = planted_networks(n_planted, width, **layout, noise=un["noise"], seed=seeds["planted"][0], distribution=dist)
    scan = UnitScan(dist, n_points=un["n_points"], seed=seed).fit(fit_params, fit_truth)
    tol = scan.tolerance_
    rows, metrics = [], {}
    test_params, test_truth = planted_networks(n_planted, width, **layout, noise=un["noise"], seed=seeds["planted"][1], distribution=dist)
    found_test = scan.roles(test_params)
    row, metrics["held-out planted seeds"] = _role_row(f"held-out seeds (hand-crafted pair, {dist})", found_test.roles[0], test_truth)
    rows.append(row)
    clean_params, clean_truth = planted_networks(n_planted, width, **layout, noise=0.0, seed=seeds["planted"][1], distribution=dist)
    row, metrics["no noise"] = _role_row("held-out seeds, no noise", scan.roles(clean_params).roles[0], clean_truth)
    rows.append(row)
    for name, (rparams, rdist) in state.get("recipe_params", {}).items():
        k = min(n_planted, rparams["W_in"].shape[0])
        base = {key: value[:k] for key, value in rparams.items()}
        planted, truth = planted_networks(k, width, **layout, noise=0.0, seed=seeds["planted"][2], base=base,
                                          base_roles=exact_unit_roles(base, rdist, tolerance=tol), distribution=rdist)  # fmt: skip
        found = unit_roles(planted, rdist, n_points=un["n_points"], seed=seed, tolerance=tol).roles[0]
        row, metrics[name] = _role_row(f"trained width-2 networks, {name}, embedded", found, truth)
        rows.append(row)
    report.paragraph(
        f"Calibrated tolerance {tol:g} (share of planted units given their true role at each tried tolerance: "
        + ", ".join(f"{t:g}: {a:.1%}" for t, a in scan.accuracy_.items()) + "). Precision and recall of the units the product's "
        "fit depends on (crease or linear), with Wilson 95 % intervals over units, on planted networks of held-out seeds and "
        "on trained width-2 networks of the other recipes embedded among the same planted units (their own two units' "
        "truth: each unit judged alone, exactly, by quadrature over the recipe's distribution, at the same tolerance). The false-positive rate "
        "is the share of dead and cancelling units called part of the mechanism; the last column is how many truly dead "
        "units the scan calls dead."
    )
    report.table(["planted networks", "networks", "units", "mechanism precision", "mechanism recall", "false-positive rate",
                  "crease precision / recall", "cancelling recall", "dead recall"], rows)  # fmt: skip
    return scan, metrics, test_params, found_test


def _role_row(name: str, found: np.ndarray, truth: np.ndarray) -> tuple[list[Any], dict[str, Any]]:
    """One row of the planted-network table: precision and recall of unit roles, with Wilson intervals."""
    scores = role_scores(found, truth)
    mech, crease, cancel = scores["mechanism"], scores["crease"], scores["cancelling"]
    wrong_dead = role_scores(found, truth, roles=("dead",))["dead"]
    row = [name, truth.shape[0], truth.size, pct(mech.precision), pct(mech.recall), pct(mech.false_positive_rate),
           f"{pct(crease.precision)} / {pct(crease.recall)}", pct(cancel.recall) if cancel.recall else "—",
           pct(wrong_dead.recall) if wrong_dead.recall else "—"]  # fmt: skip
    metrics = {role: {"precision": sc.precision.estimate if sc.precision else None, "recall": sc.recall.estimate if sc.recall else None,
                      "recall_interval": [sc.recall.low, sc.recall.high] if sc.recall else None,
                      "precision_interval": [sc.precision.low, sc.precision.high] if sc.precision else None,
                      "false_positive_rate": sc.false_positive_rate.estimate if sc.false_positive_rate else None, "n_true": sc.n_true}
               for role, sc in scores.items()}  # fmt: skip
    return row, metrics


def _ablation(state: State, tol: float, test_params: dict[str, Any], found_test: UnitRoles) -> dict[str, Any]:
    """The ablation check, calibrated where the truth is known: the held-out planted networks with the scan's
    roles (right for 99+ % of units) and with wrong units (creases and dead units swapped; every network's
    roles shuffled); then on the trained wider and deeper networks of §8."""
    dist, report, seed, un = take(state, "dist", "report", "seed", "un")
    swapped = [np.where(r == "crease", "dead", np.where(r == "dead", "crease", r)) for r in found_test.roles]
    shuffle = np.random.default_rng(seed)
    shuffled = [np.stack([row[shuffle.permutation(row.size)] for row in r]) for r in found_test.roles]
    cases: list[tuple[str, Any, Any, str]] = [
        ("planted (held out), the scan's roles", test_params, found_test, "planted"),
        ("planted, wrong units: creases and dead units swapped", test_params, dataclasses.replace(found_test, roles=swapped), "planted"),
        ("planted, wrong units: each network's roles shuffled", test_params, dataclasses.replace(found_test, roles=shuffled), "planted"),
    ]
    for name, (network, _) in state.get("wide", {}).items():
        cases.append((f"trained, {name}", network, unit_roles(network, dist, n_points=un["n_points"], seed=seed, tolerance=tol), "trained"))
    # the cases of one set of networks are checked together: their points, activations and intact errors are shared
    checks: list[AblationCheck] = []
    for _, group in itertools.groupby(cases, key=lambda case: id(case[1])):
        same = list(group)
        checks += ablation_checks(same[0][1], [roles for _, _, roles, _ in same], dist, n_points=20_000, n_draws=ABLATION_DRAWS,
                                  rel_tolerance=ABLATION_TOLERANCE, seed=seed + 1)  # fmt: skip
    ab_rows, ab_metrics = [], {}
    for (name, _, _, kind), check in zip(cases, checks):
        row, ab_metrics[name] = _ablation_row(state, check, kind)
        ab_rows.append([name, *row])
    limit = (1 + ABLATION_TOLERANCE) ** 2
    report.paragraph(
        f"**Ablation check.** The roles are tested by ablation on 20 000 fresh points (the scan used {un['n_points']} others), "
        "each network against its own error: ratios are MSE after the ablation over the network's intact MSE. The creases "
        f"are *necessary* if removing them raises the RMS error by more than {ABLATION_TOLERANCE:.0%} (MSE ratio > {limit:.2f}) "
        f"and more than the 95th percentile of a null distribution: {ABLATION_DRAWS} random sets of units outside the "
        "mechanism (neither crease nor linear), as many per layer as it has creases, a cancelling unit together with the "
        "units it cancels. The *others are unnecessary* if removing every dead and cancelling unit (linear units "
        f"linearised) and the null's 95th percentile keep the RMS error within {ABLATION_TOLERANCE:.0%} (ratio ≤ {limit:.2f}). "
        "The check is calibrated on the held-out planted networks first: it must pass the scan's roles there, which are "
        "their true roles for almost every unit (first table), and fail when it is given the wrong units. Medians with bootstrap intervals; shares with Wilson intervals; the null column counts "
        "the networks that have units outside the mechanism to draw from."
    )
    report.table(["networks", "count", "crease units (median [range])", "units outside the mechanism (median; networks with a null)",
                  "MSE intact", "MSE ratio without creases", "null's 95th percentile ratio", "ratio without dead/cancelling",
                  "creases necessary", "others unnecessary", "both"], ab_rows)  # fmt: skip
    return ab_metrics


def _ablation_row(state: State, check: AblationCheck, kind: str) -> tuple[list[Any], dict[str, Any]]:
    """The ablation check of one set of networks given its roles: medians of the MSE ratios and the shares that pass."""
    n_res, seed = take(state, "n_res", "seed")
    has, has_null = check.n_creases > 0, np.isfinite(check.null_quantile())
    necessary, others, passed = check.necessary(), check.others_unnecessary(), check.passed()
    shares = {key: proportion_interval(int(v.sum()), len(v)) for key, v in (("necessary", necessary), ("others", others), ("passed", passed))}
    row = [
        len(check.intact), f"{np.median(check.n_creases):.0f} [{check.n_creases.min()}, {check.n_creases.max()}]",
        f"{np.median(check.n_outside):.0f} ({int(has_null.sum())})", median_ci(check.intact, seed, n_res),
        median_ci(check.crease_ratio[has], seed, n_res) if has.any() else "—",
        median_ci(check.null_quantile()[has_null], seed, n_res) if has_null.any() else "—",
        median_ci(check.rest_ratio, seed, n_res), pct(shares["necessary"]), pct(shares["others"]), pct(shares["passed"]),
    ]  # fmt: skip
    metrics = {
        "kind": kind, "median_intact": float(np.median(check.intact)), "median_crease_ratio": float(np.median(check.crease_ratio[has])) if has.any() else None,
        "median_null_quantile": float(np.median(check.null_quantile()[has_null])) if has_null.any() else None,
        "median_rest_ratio": float(np.median(check.rest_ratio)), "with_null": int(has_null.sum()),
        **{key: iv.estimate for key, iv in shares.items()}, **{f"{key}_interval": [iv.low, iv.high] for key, iv in shares.items()},
    }  # fmt: skip
    return row, metrics


def _creases_through_training(state: State, tol: float) -> dict[str, Any]:
    """The width-2 networks' crease units at every snapshot of §1, by the scan: when the crease pair forms for good."""
    dist, report, result, seed, un = take(state, "dist", "report", "result", "seed", "un")
    epochs = result.snapshot_epochs
    if len(epochs) <= 2:
        return {}
    counts = np.stack([
        (unit_roles({name: result.snapshots[name][k] for name in ("W_in", "b_in", "W_out", "b_out")}, dist,
                    n_points=min(un["n_points"], 1024), seed=seed, tolerance=tol).roles[0] == "crease").sum(1)
        for k in range(len(epochs))
    ])  # fmt: skip
    switches = label_switches(counts.astype(str), epochs)
    late = switches["last_switch"][switches["last_switch"] >= 0]
    shown = sorted({0, 1, len(epochs) // 4, len(epochs) // 2, len(epochs) - 1})
    report.paragraph(
        "The identified mechanism through training (width-2 networks of §1, every snapshot): the share of networks with "
        "0, 1 and 2 crease units, and when the count last changes."
    )
    report.table(["epoch", "0 creases", "1 crease", "2 creases"],
                 [[epochs[k], *(pct(proportion_interval(int((counts[k] == c).sum()), counts.shape[1])) for c in (0, 1, 2))] for k in shown])  # fmt: skip
    pair_from = settled_epochs(counts == 2, epochs)  # the epoch from which a network keeps two creases to the end
    ends_paired = pair_from >= 0
    formed = pair_from[ends_paired]
    report.bullets([
        f"the crease pair forms for good (two creases at every later snapshot) in {int(ends_paired.sum())} of {counts.shape[1]} "
        f"networks: " + (f"median epoch {int(np.median(formed))}, 10–90 % range {int(np.quantile(formed, 0.1))}–"
                         f"{int(np.quantile(formed, 0.9))}; {int((formed <= epochs[1]).sum())} already at epoch {epochs[1]}" if formed.size else "none"),
        f"{switches['n_switching']} of {counts.shape[1]} networks change their number of creases after epoch {epochs[1]}; "
        + (f"the last change: median epoch {int(np.median(late))}, 90 % by {int(np.quantile(late, 0.9))}" if late.size else "none changes"),
        "transitions (creases at the first trained snapshot → at the end): "
        + ", ".join(f"{a}→{b}: {c}" for (a, b), c in switches["transitions"].most_common(4)),
    ])
    return {"n_pair_formed": int(ends_paired.sum()), "pair_formed_median_epoch": float(np.median(formed)) if formed.size else None,
            "n_switching": switches["n_switching"], "transitions": {f"{a}->{b}": c for (a, b), c in switches["transitions"].items()}}
