"""§4 of the F = m·a study: the width-2 networks' mechanisms found from function fingerprints
alone, scored against the labels they never saw."""

from __future__ import annotations

import numpy as np

from physlens.plots.fma import plot_mode_gallery
from physlens.probes.discovery import FLAT_BEND, compare_groups
from physlens.probes.mechanisms import REFINEMENT_NAMES, network_formula
from physlens.probes.populations import ari_interval, discovery_ari_grid
from physlens.stats import mean_interval
from physlens.studies.fma.common import State, ci, discover, median_ci, take

GRID_SUBSETS, GRID_STATES = 5, (0, 1, 2)  # discovery's ARI table: disjoint sets of networks × clustering states (one restart each)


def run(state: State) -> None:
    """§4: mechanisms found from function fingerprints without labels."""
    classes, clock, disc_opts, dist, labels, n_res, params, report, seed, val = take(
        state, "classes", "clock", "disc_opts", "dist", "labels", "n_res", "params", "report", "seed", "val")
    report.heading("4. Mechanisms found without labels")
    report.paragraph(
        "Each network is described by a fingerprint of its function alone — its second differences along m, a and "
        f"both diagonals at {disc_opts['n_points']} probe points from the data distribution (window ±{disc_opts['step']:.3g} of "
        "the support; a window that leaves the support counts as zero) and its mean gradient — so permuting hidden units, "
        "or any other rewriting of the same function, changes nothing. Functions that do not bend on the data (RMS second "
        f"difference ≤ {FLAT_BEND}) are split into constants and planes by their slope; a Gaussian mixture on the principal "
        "components of the others picks the number of groups by BIC. No label is used."
    )
    fingerprints, discovery = discover(params, dist, disc_opts, seed)
    groups = discovery.labels_
    vs_classes, vs_modes = compare_groups(groups, classes), compare_groups(groups, labels)
    ari_classes, control_classes = ari_interval(groups, classes, seed, n_res)
    ari_modes, control_modes = ari_interval(groups, labels, seed, n_res)
    grid = discovery_ari_grid(fingerprints, {"seed's modes": state["seed_modes"], "refined classes": classes, "refinement": labels},
                              n_subsets=GRID_SUBSETS, random_states=GRID_STATES, max_groups=disc_opts["max_groups"], n_init=1, seed=seed)
    grid_rows = [[name, ci(mean_interval(values.ravel(), seed=seed, n_resamples=max(n_res, 200))),
                  f"{values.min():.3f} – {values.max():.3f}"] for name, values in grid.items()]  # fmt: skip
    group_rows = []
    for g in range(discovery.n_groups_):
        members = np.flatnonzero(groups == g)
        best = int(members[np.argmin(val[members])])
        cls, purity = vs_classes.majority[g]
        mode, mode_purity = vs_modes.majority[g]
        mode = REFINEMENT_NAMES.get(mode, mode)
        group_rows.append([g, members.size, median_ci(val[members], seed, n_res), f"{cls} ({purity:.0%})", f"{mode} ({mode_purity:.0%})",
                           f"`{network_formula({k: v[[best]] for k, v in params.items()}, digits=2)}`"])  # fmt: skip
    report.table(["group", "networks", "median val MSE [95% CI]", "most common function class", "most common class of our refinement", "best member"], group_rows)
    report.bullets([
        f"{discovery.n_groups_} groups by BIC. Against function classes (constant, plane, and the number of ridges r and valleys v, a single "
        f"crease split by its orientation to the diagonal): adjusted Rand index {ci(ari_classes)} (shuffled groups: ≤ {control_classes:.3f}); "
        "share of each class in its most common group: " + ", ".join(f"{k} {v:.0%}" for k, v in vs_classes.recall.items()),
        f"against our refinement's classes: adjusted Rand index {ci(ari_modes)} (shuffled: ≤ {control_modes:.3f}); "
        + ", ".join(f"{REFINEMENT_NAMES.get(k, k)} {v:.0%}" for k, v in vs_modes.recall.items()),
        "The groups follow functions, not unit states: our one-unit class (the seed's mode 2 when the other unit is dead) computes a plane, a lone ridge (min of a "
        "plane and a constant, a special min of two planes) or a lone valley, and it lands with the networks that compute "
        "the same function.",
    ])
    report.paragraph(
        f"One clustering of one population is one draw. Over {GRID_SUBSETS} disjoint sets of networks (independent network seeds, "
        f"about {len(labels) // GRID_SUBSETS} each) × {len(GRID_STATES)} clustering states (one mixture initialisation each), "
        "the adjusted Rand index against the seed's modes, against the refined function classes above and against our width-2 "
        f"refinement: mean [bootstrap 95 % interval over the {GRID_SUBSETS * len(GRID_STATES)} fits] and range."
    )
    report.table(["against", "mean ARI", "range"], grid_rows)
    report.figure("discovery_gallery", plot_mode_gallery(params, groups.astype(str), losses=val, modes=[str(g) for g in range(discovery.n_groups_)], distribution=dist, row_name="group", per_mode=3),
                  "The best three networks of each discovered group (error maps and creases)")  # fmt: skip
    report.metrics["discovery_width2"] = {
        "n_groups": discovery.n_groups_, "bic": discovery.bic_, "ari_classes": ari_classes.estimate, "ari_modes": ari_modes.estimate,
        "ari_controls": [control_classes, control_modes], "recall_classes": vs_classes.recall, "recall_modes": vs_modes.recall,
        "group_sizes": [int((groups == g).sum()) for g in range(discovery.n_groups_)],
        "ari_grid": {name: values.tolist() for name, values in grid.items()},
    }  # fmt: skip
    clock.lap("discovery, width 2")

