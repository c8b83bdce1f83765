"""§6 of the F = m·a study: the algorithm scan of §5, tested on held-out seeds and on networks
trained by independent recipes (another data size, uniform inputs, other initial scales)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from physlens.probes.mechanisms import MODES, mechanism_labels
from physlens.probes.populations import transfer_scores
from physlens.probes.scan import AlgorithmScan, corner_rule_labels, flatten_parameters
from physlens.studies.fma.common import State, cpu_params, pct, take, train_networks
from physlens.studies.fma.scores import UNTRAINED

Recipe = tuple[dict[str, torch.Tensor], np.ndarray, str]
"""A recipe's trained parameters, their labels and the distribution they were trained on."""


def run(state: State) -> None:
    """§6: the algorithm scan on held-out seeds and on networks trained by independent recipes."""
    clock, report, scans = take(state, "clock", "report", "scans")
    report.heading("6. The algorithm scan: held-out seeds and independent recipes")
    codes = {label: i for i, label in enumerate([*MODES, UNTRAINED])}
    transfer_rows, transfer_metrics = [], {}
    for name, recipe in _recipes(state).items():
        row, transfer_metrics[name] = _transfer(state, scans, recipe, codes)
        transfer_rows.append([name, *row])
    report.paragraph(
        "The scan is trained once, on this study's networks, and tested on held-out seeds and on networks trained by "
        "independent recipes (each with its own seeds and its own labels on its own data distribution): another data "
        "size, uniform inputs, and smaller and larger initial weights. Cells: accuracy [Wilson 95 % interval] / balanced "
        "accuracy (mean recall over mechanisms, so rare mechanisms count). The scans answer among the mechanisms (the "
        "networks are known to be trained); the last column is how many the full scan would call untrained. The corner rule "
        "applies the old sign-pattern rule at the corners of the data's support, with no learning."
    )
    report.table(["test networks", "networks", "scan, parameters only", "corner rule (no learning)", "called untrained"], transfer_rows)
    report.paragraph(
        "**What these accuracies can and cannot show.** The labels are a closed-form function of the 7 parameters, which "
        "`mechanism_labels` computes exactly by quadrature at no cost: the parameter-only scan's accuracy measures how well "
        "a random forest imitates a formula we already have, and how well that imitation transfers to other recipes. It "
        "is not evidence that a scan finds mechanisms, and it says nothing about networks no formula labels (for those, "
        "§9). A scan on the unit statistics the labels threshold (removal and linearisation changes) is the labeller "
        "itself: a depth-4 tree on them is exact on held-out networks, so this report does not use it as evidence. The "
        "mode-3 scores of §5 are compared on the same footing: a score is useful if it separates mechanisms without the "
        "formula, which the seed's score was built to do."
    )
    report.metrics["transfer"] = transfer_metrics
    clock.lap("scores, scan, transfer recipes")


def _recipes(state: State) -> dict[str, Recipe]:
    """The test networks: held-out seeds, another data size, uniform inputs, and each initial scale (trained here).

    The independent recipes' parameters are left in the state for the unit scan (§9)."""
    big_labels, big_params, d, dist, lab, opts, params, progress, seeds, test_rows, tr, uniform_result, y_test = take(
        state, "big_labels", "big_params", "d", "dist", "lab", "opts", "params", "progress", "seeds", "test_rows", "tr",
        "uniform_result", "y_test")
    recipes: dict[str, Recipe] = {}
    recipes[f"held-out seeds ({d['n_train']} points)"] = ({k: v[test_rows] for k, v in params.items()}, y_test, dist)
    recipes[f"another data size ({tr['other_size_n_train']} points)"] = (big_params, big_labels, dist)
    uniform_params = cpu_params(uniform_result)
    state.setdefault("recipe_params", {})["uniform inputs"] = (uniform_params, "uniform")
    recipes["uniform inputs"] = (uniform_params, mechanism_labels(uniform_params, "uniform", tolerance=lab['tolerance']), "uniform")
    for k, scale in enumerate(tr["init_scales"]):
        scaled, _ = train_networks(seeds[f"init_scale_{k}"], opts, init_scale=scale, progress=progress)
        scaled_params = cpu_params(scaled)
        state.setdefault("recipe_params", {})[f"initialisation ×{scale:g}"] = (scaled_params, dist)
        recipes[f"initialisation ×{scale:g}"] = (scaled_params, mechanism_labels(scaled_params, dist, tolerance=lab['tolerance']), dist)
    return recipes


def _transfer(state: State, scans: dict[str, AlgorithmScan], recipe: Recipe, codes: dict[str, int]) -> tuple[list[Any], dict[str, Any]]:
    """The scan's and the corner rule's accuracy on one recipe's networks, and how many the scan calls untrained."""
    n_res, seed = take(state, "n_res", "seed")
    rp, truth, rdist = recipe
    Z = flatten_parameters(rp)
    mechanisms = [c for c in scans["parameters"].classes_ if c != UNTRAINED]
    predictions = {
        "scan, parameters only": scans["parameters"].predict(Z, among=mechanisms),
        "corner rule (no learning)": corner_rule_labels(Z, distribution=rdist),
    }
    untrained = {kind: float((scans[kind].predict(Z, distribution=rdist) == UNTRAINED).mean()) for kind in ("parameters",)}
    row: list[Any] = [len(truth)]
    entry: dict[str, Any] = {"called_untrained": untrained}
    for kind, predicted in predictions.items():
        scored = transfer_scores(truth, predicted, codes, seed=seed, n_resamples=n_res)
        accuracy, balanced = scored["accuracy"], scored["balanced"]
        row.append(f"{pct(accuracy)} / {balanced.estimate:.1%}")
        entry[kind] = {"accuracy": accuracy.estimate, "accuracy_interval": [accuracy.low, accuracy.high], "balanced": balanced.estimate,
                       "confusion": scored["confusion"]}  # fmt: skip
    row.append(f"{untrained['parameters']:.0%}")
    return row, entry
