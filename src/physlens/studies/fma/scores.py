"""§5 of the F = m·a study: the seed's mode-3 score, our sign count and the algorithm scan's
probability of ridge + plane, by AUC on the seed's own test and on held-out trained networks."""

from __future__ import annotations

from typing import Any

import numpy as np

from physlens.models.mlp import EnsembleConfig, MLPEnsemble
from physlens.plots.fma import plot_roc_curves
from physlens.probes.mechanisms import MODES, REFINEMENT_NAMES, seed_sign_signature
from physlens.probes.scan import AlgorithmScan, RocResult, flatten_parameters, mode3_sign_count, roc_auc, seed_mode3_score
from physlens.stats import proportion_interval
from physlens.studies.fma.common import State, auc_cell, pct, take

UNTRAINED = "untrained"
SCORES = ("seed's score", "sign count (ours)", "scan P(3), parameters")

Scores = dict[str, np.ndarray]
"""Each of :data:`SCORES` for a set of networks."""


def run(state: State) -> None:
    """§5: the seed's mode-3 score and ours, by AUC on the seed's test and on held-out trained networks."""
    labels, n, params, positive_rows, positives, report, sc, seed, seeds, st = take(
        state, "labels", "n", "params", "positive_rows", "positives", "report", "sc", "seed", "seeds", "st")
    X = flatten_parameters(params)
    scan_random = flatten_parameters(MLPEnsemble(EnsembleConfig(seeds=seeds["scan_random"], dtype="float64")))
    test_random = flatten_parameters(MLPEnsemble(EnsembleConfig(seeds=seeds["test_random"], dtype="float64")))
    n_test = max(1, int(round(sc["holdout_fraction"] * n)))
    fit_rows, test_rows = np.arange(n - n_test), np.arange(n - n_test, n)
    y_fit = np.r_[labels[fit_rows], [UNTRAINED] * len(scan_random)]
    scans = {
        kind: AlgorithmScan(features=kind, distribution=state["dist"], n_estimators=sc["n_estimators"], random_state=seed).fit(np.r_[X[fit_rows], scan_random], y_fit)
        for kind in ("parameters",)
    }  # fmt: skip
    X_pos = np.concatenate([flatten_parameters(m) for m in positives]) if positives else np.empty((0, X.shape[1]))
    held, rand, pos = _scores(scans, X[test_rows], state), _scores(scans, test_random, state), _scores(scans, X_pos, state) if len(X_pos) else {}
    y_test = labels[test_rows]
    report.heading("5. The seed's mode-3 score and ours")
    report.paragraph(
        "The seed's score is its experiment-10 `mode_3_score`, exactly: a weighted mean (weights 2h, h, h, 1) of "
        "sigmoid(1 − |1 − θ|) with θ the angle between W·(1, 1) and (1, 1) over 3π/4, the cosine between softmax(−v) (v the "
        "normalised W·(1, 1)) and softmax(b_in), the mean of sigmoid(−W_out), and sigmoid(b_out). Ours: the algorithm scan's "
        "probability of our refinement's ridge + plane, the label \"3\" it is trained on (a random forest trained on the first "
        f"{len(fit_rows)} networks and {len(scan_random)} random initialisations, on parameter-only features), and "
        "our earlier sign count, which is not the seed's. AUCs with bootstrap intervals (positives and negatives resampled "
        f"separately); random initialisations are {len(test_random)} networks that never trained any scan."
    )
    auc_metrics, curves = _auc_table(state, held, rand, pos, y_test, with_seed_test=bool(len(X_pos)))
    signature = seed_sign_signature(params)
    in_mode3 = proportion_interval(int(signature[labels == "3"].sum()), max(int((labels == "3").sum()), 1))
    elsewhere = proportion_interval(int(signature[labels != "3"].sum()), max(int((labels != "3").sum()), 1))
    positive_notes = [
        f"seed {s} is the seed's mode {row[2]}, refinement {row[3]} (firing fractions {row[4]}, linearisation changes {row[5]})"
        for s, row in zip(st["positives"], positive_rows)
    ]
    report.bullets(positive_notes + [
        f"held-out positives: {int((y_test == '3').sum())} ridge + plane networks among {len(test_rows)}; the seed's test has "
        f"{len(X_pos)} positives, so its bootstrap interval cannot be wider than what resampling {len(X_pos)} scores allows",
        "the seed's score is built from signs and angles of the seed's own examples (negative output weights, positive output "
        f"bias, a 3π/4 turn of (1, 1)): the sign part holds for {pct(in_mode3)} of ridge + plane networks and for {pct(elsewhere)} "
        "of the other trained networks",
    ])
    if curves:
        report.figure("roc_mode3", plot_roc_curves(curves, title="Ridge + plane: the seed's mode-3 score and the scan"),
                      "ROC curves: our ridge + plane against the rest, scored by the seed's mode-3 score and by the scan")
    report.metrics["scores"] = auc_metrics
    state.update(scans=scans, test_rows=test_rows, y_test=y_test)


def _scores(scans: dict[str, AlgorithmScan], Z: np.ndarray, state: State) -> Scores:
    """Every score of :data:`SCORES` for the flattened networks ``Z``."""
    out = {SCORES[0]: seed_mode3_score(Z), SCORES[1]: mode3_sign_count(Z)}
    for name, kind in ((SCORES[2], "parameters"),):
        out[name] = scans[kind].mode_score(Z, "3", distribution=state["dist"]) if "3" in scans[kind].classes_ else np.zeros(len(Z))
    return out


def _auc_table(
    state: State, held: Scores, rand: Scores, pos: Scores, y_test: np.ndarray, *, with_seed_test: bool
) -> tuple[dict[str, dict[str, float]], dict[str, RocResult]]:
    """AUC of every score on each test: the seed's networks and held-out ridge + plane against random
    initialisations, and held-out ridge + plane against the other held-out mechanisms."""
    n_res, report, seed = take(state, "n_res", "report", "seed")
    comparisons: list[tuple[str, str]] = []
    if with_seed_test:
        comparisons.append(("seed's test: its 2 networks vs random init", "seed"))
    positive_mask = y_test == "3"
    comparisons.append(("held-out ridge + plane vs random init", "random"))
    comparisons.append(("held-out ridge + plane vs every other held-out refinement", "others"))
    for mode in MODES:
        if mode != "3" and (y_test == mode).any():
            comparisons.append((f"held-out ridge + plane vs {REFINEMENT_NAMES[mode]}", mode))
    auc_rows: list[list[Any]] = []
    auc_metrics: dict[str, dict[str, float]] = {}
    curves: dict[str, RocResult] = {}
    for title, kind in comparisons:
        if kind != "seed" and not positive_mask.any():
            continue
        row = [title]
        for name in SCORES:
            if kind == "seed":
                p_scores, n_scores = pos[name], rand[name]
            elif kind == "random":
                p_scores, n_scores = held[name][positive_mask], rand[name]
            elif kind == "others":
                p_scores, n_scores = held[name][positive_mask], held[name][~positive_mask]
            else:
                p_scores, n_scores = held[name][positive_mask], held[name][y_test == kind]
            roc = roc_auc(p_scores, n_scores, n_resamples=n_res, seed=seed)
            row.append(auc_cell(roc))
            auc_metrics.setdefault(title, {})[name] = roc.auc
            if kind in ("seed", "others") and name in (SCORES[0], SCORES[2]):
                curves[f"{name}: {'seed test' if kind == 'seed' else 'vs other modes'}"] = roc
        auc_rows.append(row)
    if auc_rows:
        report.table(["test", *SCORES], auc_rows)
    return auc_metrics, curves
