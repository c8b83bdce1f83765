"""The F = m·a study: train thousands of tiny MLPs at once, label their mechanisms, scan for them.

``probes/fma.toml`` runs it: per-mode counts and losses of width-2 networks, mode changes during
training, the algorithm scan on held-out seeds against random-init and other-mode networks (next
to the seed-style sign score), and the same labelling and scan for wider networks.
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import torch

from physlens.models.mlp import EnsembleConfig, MLPEnsemble
from physlens.plots.fma import (
    plot_loss_by_mode,
    plot_mode_gallery,
    plot_mode_over_time,
    plot_preactivation_maps,
    plot_roc_curves,
)
from physlens.probes.mechanisms import (
    MODES,
    handcrafted_mode3_network,
    kink_labels,
    mechanism_labels,
    unit_pattern_labels,
    unit_states,
)
from physlens.probes.scan import AlgorithmScan, RocResult, flatten_parameters, roc_auc, seed_mode3_score
from physlens.studies.report import Report, StudySpecError, format_number, section
from physlens.systems.fma import FmaSplit, fma_splits
from physlens.training.ensemble import EnsembleTrainConfig, EnsembleTrainResult, train_ensemble

DATA_KEYS = {"distribution": str, "n_train": int, "n_val": int, "dtype": str, "device": str}
TRAIN_KEYS = {"n_seeds": int, "epochs": int, "lr": float, "snapshot_every": int, "compile": bool}
SCAN_KEYS = {"holdout_fraction": float, "n_random": int, "n_estimators": int}
WIDTH_KEYS = {"widths": list, "n_seeds": int}
UNTRAINED = "untrained"
RANDOM_SEED_OFFSET = 500_000  # random-init networks draw seeds far from the trained ones


def _options(spec: dict[str, Any]) -> dict[str, dict[str, Any]]:
    data = {"distribution": "product", "n_train": 512, "n_val": 512, "dtype": "float32", "device": "cpu"}
    data |= section(spec, "data", DATA_KEYS)
    train = {"n_seeds": 1024, "epochs": 4000, "lr": 1e-3, "snapshot_every": 200, "compile": False}
    train |= section(spec, "train", TRAIN_KEYS)
    scan = {"holdout_fraction": 0.3, "n_random": 2000, "n_estimators": 300} | section(spec, "scan", SCAN_KEYS)
    widths = {"widths": [3, 4, 8], "n_seeds": 128} | section(spec, "widths", WIDTH_KEYS)
    if not 0.0 < scan["holdout_fraction"] < 1.0:
        raise StudySpecError(f"[scan] holdout_fraction must be in (0, 1), got {scan['holdout_fraction']}")
    for table, key in (("train", "n_seeds"), ("scan", "n_random"), ("widths", "n_seeds")):
        value = {"train": train, "scan": scan, "widths": widths}[table][key]
        if value < 4:
            raise StudySpecError(f"[{table}] {key} must be an integer >= 4, got {value}")
    if not all(isinstance(w, int) and not isinstance(w, bool) and w >= 1 for w in widths["widths"]):
        raise StudySpecError(f"[widths] widths must be a list of positive integers, got {widths['widths']}")
    return {"data": data, "train": train, "scan": scan, "widths": widths}


def _train(seeds: list[int], width: int, opts: dict[str, dict[str, Any]], snapshot_every: int, progress: bool) -> tuple[EnsembleTrainResult, FmaSplit]:
    data_opts, train_opts = opts["data"], opts["train"]
    data = fma_splits(
        seeds, data_opts["distribution"], n_train=data_opts["n_train"], n_val=data_opts["n_val"], dtype=data_opts["dtype"]
    )
    ensemble = MLPEnsemble(EnsembleConfig(seeds=seeds, d_hidden=width, dtype=data_opts["dtype"], device=data_opts["device"]))
    config = EnsembleTrainConfig(
        epochs=train_opts["epochs"], lr=train_opts["lr"], snapshot_every=snapshot_every, compile=train_opts["compile"]
    )
    return train_ensemble(ensemble, data, config, progress=progress), data


def _linear_fit_loss(data: FmaSplit) -> np.ndarray:
    """Validation MSE of the least-squares plane F ≈ c0 + c1·m + c2·a, per seed (closed form)."""
    def design(x: torch.Tensor) -> torch.Tensor:
        return torch.cat([torch.ones_like(x[..., :1]), x], dim=-1).double()

    coef = torch.linalg.lstsq(design(data.train_inputs), data.train_targets.double()).solution
    return (design(data.val_inputs) @ coef - data.val_targets.double()).square().mean(dim=(1, 2)).numpy()


def _loss_rows(labels: np.ndarray, losses: np.ndarray, order: list[str]) -> list[list[Any]]:
    rows = []
    for label in order:
        chosen = losses[labels == label]
        if chosen.size:
            rows.append([label, int(chosen.size), float(np.median(chosen)), float(chosen.min()), float(np.quantile(chosen, 0.9))])
        else:
            rows.append([label, 0, "n/a", "n/a", "n/a"])
    return rows


def _scan(
    X: np.ndarray,
    labels: np.ndarray,
    random_X: np.ndarray,
    width: int,
    opts: dict[str, dict[str, Any]],
    seed: int,
) -> tuple[AlgorithmScan, dict[str, dict[str, Any]], dict[str, np.ndarray]]:
    """Fit the scan on the first seeds (+ half the random nets as "untrained"), evaluate on the rest."""
    n = X.shape[0]
    n_test = max(1, int(round(opts["scan"]["holdout_fraction"] * n)))
    train, test = slice(0, n - n_test), slice(n - n_test, n)
    half = random_X.shape[0] // 2
    scan = AlgorithmScan(
        d_hidden=width, distribution=opts["data"]["distribution"], n_estimators=opts["scan"]["n_estimators"], random_state=seed
    )
    scan.fit(np.r_[X[train], random_X[:half]], np.r_[labels[train], [UNTRAINED] * half])
    X_test, y_test, random_test = X[test], labels[test], random_X[half:]
    results, scores = {}, {}
    for mode in [c for c in scan.classes_ if c != UNTRAINED]:
        positive = y_test == mode
        score, random_score = scan.mode_score(X_test, mode), scan.mode_score(random_test, mode)
        scores[mode] = score
        entry: dict[str, Any] = {"n_train": int((labels[train] == mode).sum()), "n_test": int(positive.sum())}
        if positive.any():
            entry["vs_random"] = roc_auc(score[positive], random_score)
            if (~positive).any():
                entry["vs_other"] = roc_auc(score[positive], score[~positive])
        results[mode] = entry
    return scan, results, {"X_test": X_test, "y_test": y_test, "random_test": random_test}


def _auc(entry: dict[str, Any], key: str) -> Any:
    roc = entry.get(key)
    return roc.auc if isinstance(roc, RocResult) else "n/a"


def _switches(snapshot_labels: np.ndarray, epochs: list[int]) -> dict[str, Any]:
    """How many networks change label after training starts, and at which snapshot they last do."""
    trained = snapshot_labels[1:]  # skip epoch 0: random init has labels too, but no mechanism yet
    changes = trained[1:] != trained[:-1]  # [snapshot - 2, model]
    n_switching = int(changes.any(axis=0).sum())
    last = np.full(trained.shape[1], -1)
    for k in range(changes.shape[0]):
        last[changes[k]] = epochs[k + 2]
    transitions = Counter(
        (a, b) for a, b in zip(trained[0], trained[-1]) if a != b
    )
    per_epoch = [int(changes[k].sum()) for k in range(changes.shape[0])]
    return {"n_switching": n_switching, "last_switch": last, "transitions": transitions, "per_epoch": per_epoch}


def run(spec: dict[str, Any], out_dir: Path, *, progress: bool) -> None:
    """Run the study described by ``spec`` and write its report into ``out_dir``."""
    opts = _options(spec)
    seed = int(spec["study"].get("seed", 0))
    distribution = opts["data"]["distribution"]
    report = Report(spec["study"].get("name", "fma"))
    report.paragraph(spec["study"].get("description", "F = m·a with tiny ReLU MLPs."))
    timings: dict[str, float] = {}
    base = seed * 1_000_000
    n_seeds = opts["train"]["n_seeds"]
    seeds = list(range(base, base + n_seeds))

    # --- width 2: train, label, losses --------------------------------------------------------
    start = time.perf_counter()
    result, data = _train(seeds, 2, opts, opts["train"]["snapshot_every"], progress)
    timings["train_width2"] = time.perf_counter() - start
    params = result.ensemble.parameter_dict()
    val = result.val_loss.numpy().astype(float)
    labels = {rule: mechanism_labels(params, data.train_inputs, mode3_rule=rule) for rule in ("seed", "function")}
    patterns = unit_pattern_labels(unit_states(params, data.train_inputs))
    linear = _linear_fit_loss(data)
    handcrafted = handcrafted_mode3_network(dtype=opts["data"]["dtype"])
    with torch.no_grad():
        hc_val = float((handcrafted(data.val_inputs[0]) - data.val_targets[0]).square().mean())
    hc_label = str(mechanism_labels(handcrafted, data.train_inputs[0])[0])

    report.heading("Setup")
    d, t = opts["data"], opts["train"]
    report.bullets([
        f"{n_seeds} width-2 networks (seeds {base}…{base + n_seeds - 1}), each with its own split of "
        f"{d['n_train']} train / {d['n_val']} validation points, distribution `{distribution}`",
        f"full-batch Adam, lr {t['lr']}, {t['epochs']} epochs, {d['dtype']} on {d['device']}; "
        f"training took {timings['train_width2']:.1f} s",
        "labels from the sign pattern of hidden pre-activations over each network's training inputs",
    ])
    report.heading("Modes of width-2 networks")
    report.paragraph(
        "Mode 3 by the seed's signature (one straddling + one active unit, both output weights < 0, "
        "output bias > 0) and by the function-level rule (only the straddling unit's output weight "
        "< 0: F = min of two planes; the other signs can be traded by rewriting the active unit)."
    )
    rows = []
    for rule in ("seed", "function"):
        for row in _loss_rows(labels[rule], val, list(MODES)):
            rows.append([rule, *row])
    report.table(["mode 3 rule", "mode", "networks", "median val MSE", "best val MSE", "90% val MSE"], rows)
    report.table(
        ["unit pattern (dead / active / straddling)", "networks", "median val MSE", "best val MSE", "90% val MSE"],
        _loss_rows(patterns, val, sorted(set(patterns.tolist()))),
    )
    report.bullets([
        f"least-squares plane (linear fit) validation MSE: median {format_number(float(np.median(linear)))} over seeds",
        f"hand-crafted min-of-two-planes network: validation MSE {format_number(hc_val)} on seed {base}'s "
        f"validation set, labelled mode {hc_label}",
        f"best trained network: {format_number(float(val.min()))}; seed's figures: mode 3 ≈ 0.0014, linear ≈ 0.0072",
    ])
    report.metrics["width2"] = {
        "n_seeds": n_seeds,
        "counts": {rule: dict(Counter(labels[rule].tolist())) for rule in labels},
        "median_val_loss": {
            rule: {m: float(np.median(val[labels[rule] == m])) for m in MODES if (labels[rule] == m).any()} for rule in labels
        },
        "best_val_loss": float(val.min()),
        "linear_fit_val_loss_median": float(np.median(linear)),
        "handcrafted_val_loss": hc_val,
        "handcrafted_label": hc_label,
        "train_seconds": timings["train_width2"],
    }
    report.figure("loss_by_mode", plot_loss_by_mode(val, labels["function"], modes=list(MODES)),
                  "Validation MSE per mode (function-level mode-3 rule)")
    examples: dict[str, Any] = {}
    for rule, mode in [("seed", m) for m in MODES] + [("function", "3")]:
        members = np.flatnonzero(labels[rule] == mode)
        key = f"mode {mode}" + (" (function rule)" if rule == "function" else "")
        if members.size and key not in examples:
            best = int(members[np.argmin(val[members])])
            examples[key] = {name: value[best] for name, value in params.items()}
    examples["hand-crafted"] = handcrafted
    report.figure("preactivation_maps", plot_preactivation_maps(examples, distribution=distribution, inputs=data.train_inputs[0]),
                  "Pre-activation of each hidden unit over the input square (black: zero line), best network per mode")
    report.figure("gallery", plot_mode_gallery(params, labels["function"], losses=val, modes=list(MODES), distribution=distribution),
                  "Example networks per mode: error F̂ − m·a and the units' kinks")

    # --- training dynamics ---------------------------------------------------------------------
    epochs = result.snapshot_epochs
    snap_params = [{name: result.snapshots[name][k] for name in params} for k in range(len(epochs))]
    inputs_cpu = data.train_inputs.cpu()
    snapshot_labels = np.stack([mechanism_labels(p, inputs_cpu, mode3_rule="function") for p in snap_params])
    dynamics = _switches(snapshot_labels, epochs)
    report.heading("Modes during training")
    report.figure("mode_over_time", plot_mode_over_time(epochs, snapshot_labels, modes=list(MODES)),
                  "Fraction of networks in each mode (function-level rule) at every snapshot")
    late = dynamics["last_switch"][dynamics["last_switch"] >= 0]
    report.bullets([
        f"{dynamics['n_switching']} of {n_seeds} networks change mode after epoch {epochs[1]}",
        "epoch of the last change: " + (
            f"median {int(np.median(late))}, 90% by {int(np.quantile(late, 0.9))}" if late.size else "none"
        ),
    ])
    report.table(
        [f"mode at epoch {epochs[1]}", f"mode at epoch {epochs[-1]}", "networks"],
        [[a, b, c] for (a, b), c in dynamics["transitions"].most_common(12)],
    )
    report.metrics["dynamics"] = {
        "snapshot_epochs": epochs,
        "n_switching": dynamics["n_switching"],
        "switches_per_snapshot": dynamics["per_epoch"],
        "transitions": {f"{a}->{b}": c for (a, b), c in dynamics["transitions"].items()},
    }

    # --- algorithm scan (width 2) ----------------------------------------------------------------
    start = time.perf_counter()
    n_random = opts["scan"]["n_random"]
    random_seeds = list(range(base + RANDOM_SEED_OFFSET, base + RANDOM_SEED_OFFSET + n_random))
    random_X = flatten_parameters(MLPEnsemble(EnsembleConfig(seeds=random_seeds, d_hidden=2)))
    X = flatten_parameters(params)
    report.heading("Algorithm scan (width 2)")
    report.paragraph(
        f"A random forest on permutation-invariant parameter features, fitted on the first "
        f"{1 - opts['scan']['holdout_fraction']:.0%} of the seeds plus {n_random // 2} random-init networks "
        f"(class '{UNTRAINED}'), evaluated one-vs-rest on the held-out seeds: against {n_random - n_random // 2} "
        "other random-init networks and against held-out trained networks of the other modes. "
        "The seed-style score counts mode 3's sign conditions (0–4)."
    )
    scan_metrics: dict[str, Any] = {}
    rows, curves, scan_results, handcrafted_scores = [], {}, {}, {}
    for rule in ("seed", "function"):
        scan, results, held = _scan(X, labels[rule], random_X, 2, opts, seed)
        scan_results[rule] = results
        positive3 = held["y_test"] == "3"
        baseline = seed_mode3_score(held["X_test"])
        baseline_random = seed_mode3_score(held["random_test"])
        for mode, entry in results.items():
            row = [rule, mode, entry["n_train"], entry["n_test"], _auc(entry, "vs_random"), _auc(entry, "vs_other")]
            if mode == "3" and positive3.any():
                b_random = roc_auc(baseline[positive3], baseline_random)
                b_other = roc_auc(baseline[positive3], baseline[~positive3])
                row += [b_random.auc, b_other.auc]
                entry["seed_score_vs_random"], entry["seed_score_vs_other"] = b_random, b_other
                curves[f"scan vs random-init ({rule} rule)"] = entry["vs_random"]
                if "vs_other" in entry:
                    curves[f"scan vs other modes ({rule} rule)"] = entry["vs_other"]
                curves[f"seed score vs random-init ({rule} rule)"] = b_random
                curves[f"seed score vs other modes ({rule} rule)"] = b_other
            else:
                row += ["—", "—"]
            rows.append(row)
        if "3" in scan.classes_:
            handcrafted_X = flatten_parameters(handcrafted)
            handcrafted_scores[rule] = float(scan.mode_score(handcrafted_X, "3")[0])
        scan_metrics[rule] = {
            mode: {k: (v.auc if isinstance(v, RocResult) else v) for k, v in entry.items()} for mode, entry in results.items()
        }
    report.table(
        ["mode 3 rule", "mode", "train +", "held-out +", "scan AUC vs random", "scan AUC vs other modes",
         "seed score AUC vs random", "seed score AUC vs other"],
        rows,
    )
    report.bullets([
        f"hand-crafted network: seed-style score {seed_mode3_score(flatten_parameters(handcrafted))[0]:.0f} of 4; "
        + ", ".join(f"scan's P(mode 3) {p:.2f} ({rule} rule)" for rule, p in handcrafted_scores.items())
        if handcrafted_scores else "hand-crafted network: no mode-3 class was fitted",
        f"networks carrying the seed's full mode-3 signature among {n_seeds} trained: "
        f"{int((labels['seed'] == '3').sum())} (a mode needs held-out positives to get an AUC)",
    ])
    scan_metrics["handcrafted_mode3_probability"] = handcrafted_scores
    if curves:
        report.figure("roc_mode3", plot_roc_curves(curves, title="Mode 3: scan vs seed-style score"),
                      "ROC curves for mode 3 on held-out seeds")
    all_curves = {
        f"mode {mode} vs {kind}": entry[key]
        for mode, entry in scan_results["function"].items()
        for kind, key in (("random", "vs_random"), ("other", "vs_other"))
        if key in entry
    }
    if all_curves:
        report.figure("roc_all_modes", plot_roc_curves(all_curves, title="Scan, every mode (function rule)"),
                      "Scan ROC curves for every mode on held-out seeds")
    timings["scan_width2"] = time.perf_counter() - start
    report.metrics["scan_width2"] = scan_metrics

    # --- wider networks ------------------------------------------------------------------------------
    report.heading("Wider networks")
    report.paragraph(
        "Units are counted as dead / active / straddling; the class used by the scan is the number of "
        "straddling units (kinks in the function), 'dead' when every unit is dead."
    )
    wide_rows, wide_scan_rows, wide_metrics = [], [], {}
    for width in opts["widths"]["widths"]:
        start = time.perf_counter()
        n_wide = opts["widths"]["n_seeds"]
        wide_seeds = list(range(base + 100_000 * width, base + 100_000 * width + n_wide))
        wide, wide_data = _train(wide_seeds, width, opts, 0, progress)
        wide_params = wide.ensemble.parameter_dict()
        wide_val = wide.val_loss.numpy().astype(float)
        states = unit_states(wide_params, wide_data.train_inputs)
        kinks = kink_labels(states)
        for row in _loss_rows(kinks, wide_val, sorted(set(kinks.tolist()))):
            wide_rows.append([width, *row])
        wide_random = flatten_parameters(
            MLPEnsemble(EnsembleConfig(seeds=[s + RANDOM_SEED_OFFSET for s in wide_seeds], d_hidden=width))
        )
        _, results, _ = _scan(flatten_parameters(wide_params), kinks, wide_random, width, opts, seed)
        for mode, entry in results.items():
            wide_scan_rows.append([width, mode, entry["n_train"], entry["n_test"], _auc(entry, "vs_random"), _auc(entry, "vs_other")])
        top_patterns = Counter(unit_pattern_labels(states).tolist()).most_common(3)
        wide_metrics[str(width)] = {
            "counts": dict(Counter(kinks.tolist())),
            "top_patterns": dict(top_patterns),
            "median_val_loss": float(np.median(wide_val)),
            "best_val_loss": float(wide_val.min()),
            "scan": {m: {k: (v.auc if isinstance(v, RocResult) else v) for k, v in e.items()} for m, e in results.items()},
            "seconds": time.perf_counter() - start,
        }
        timings[f"width{width}"] = time.perf_counter() - start
    report.table(["width", "kinks", "networks", "median val MSE", "best val MSE", "90% val MSE"], wide_rows)
    report.table(["width", "class", "train +", "held-out +", "scan AUC vs random", "scan AUC vs other"], wide_scan_rows)
    report.bullets([
        f"width {w}: most common unit patterns " + ", ".join(f"`{p}` ({c})" for p, c in m["top_patterns"].items())
        for w, m in wide_metrics.items()
    ])
    report.metrics["wider"] = wide_metrics
    report.metrics["seconds"] = timings
    report.heading("Timings")
    report.table(["stage", "seconds"], [[k, v] for k, v in timings.items()])
    report.write(out_dir)


__all__ = ["run"]
