"""The F = m·a study: train thousands of tiny MLPs at once, check that they multiply, name their
mechanisms, find them without labels, and scan for them from parameters.

``probes/fma.toml`` runs it. The report leads with whether the networks do the task (against the
exact best plane and the best constant on the same distribution), then gives the mechanism labels
and their stability across sample sizes and data sizes, every mechanism's loss, the mechanisms
found without labels (width 2, 3, 4, 8 and two hidden layers), the seed's own mode-3 score and
ours on the seed's test and on held-out trained networks of every mode, the algorithm scan on
held-out seeds and on networks trained by independent recipes, and modes through training.
Every set of networks draws its seeds from its own ``SeedSequence`` child.
"""

from __future__ import annotations

import dataclasses
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import torch
from threadpoolctl import threadpool_limits

from physlens.models.mlp import DeepEnsembleConfig, DeepMLPEnsemble, EnsembleConfig, MLPEnsemble, seed_recipe_start
from physlens.plots.fma import (
    plot_loss_by_mode,
    plot_mode_gallery,
    plot_mode_over_time,
    plot_preactivation_maps,
    plot_roc_curves,
)
from physlens.probes.discovery import (
    FLAT_BEND,
    MechanismDiscovery,
    compare_groups,
    function_fingerprints,
    summarise_fingerprints,
)
from physlens.stats import Interval, mean_interval, median_interval, proportion_interval
from physlens.probes.mechanisms import (
    DEFAULT_TOLERANCE,
    MODES,
    REFINEMENT_NAMES,
    SEED_LABELS,
    SEED_MAINLY,
    SEED_MODES,
    crease_labels,
    handcrafted_mode3_network,
    labels_from_states,
    mechanism_labels,
    network_formula,
    refinement_labels,
    seed_mode_labels,
    seed_sign_signature,
    unit_states,
    unit_statistics,
)
from physlens.probes.populations import (
    ari_interval,
    best_member,
    discovery_ari_grid,
    label_stability,
    label_switches,
    refined_classes,
    ridge_valley_split,
    transfer_scores,
)
from physlens.probes.unit_scan import UnitScan, ablation_check, planted_networks, role_scores, unit_roles
from physlens.probes.scan import (
    AlgorithmScan,
    RocResult,
    corner_rule_labels,
    flatten_parameters,
    mode3_sign_count,
    roc_auc,
    seed_mode3_score,
)
from physlens.studies.report import Report, StudySpecError, format_number, section
from physlens.seeding import spawn_seeds
from physlens.systems.fma import DISTRIBUTIONS, FmaSplit, fma_splits, optimal_plane, plane_fit_val_mse, sample_fma
from physlens.training.deep import train_deep_ensemble
from physlens.training.checkpoints import save_checkpoint
from physlens.training.ensemble import EnsembleTrainConfig, EnsembleTrainResult, train_ensemble, train_mlp

DATA_KEYS = {"distribution": str, "n_train": int, "n_val": int, "dtype": str, "device": str}
TRAIN_KEYS = {"n_seeds": int, "epochs": int, "lr": float, "snapshot_every": int, "compile": bool}
LABEL_KEYS = {"tolerance": float, "stability_sizes": list, "stability_repeats": int}
SEED_TEST_KEYS = {"positives": list, "n_random": int}
SCAN_KEYS = {"holdout_fraction": float, "n_random": int, "n_estimators": int, "n_resamples": int}
SEED_DATA_SIZE = (8000, 2000)  # the seed's training / validation points per network
TRANSFER_KEYS = {"n_seeds": int, "other_size_n_seeds": int, "other_size_n_train": int, "other_size_n_val": int, "init_scales": list}
DISCOVERY_KEYS = {"n_points": int, "step": float, "max_groups": int}
WIDTH_KEYS = {"widths": list, "n_seeds": int, "deep_hidden": list, "deep_n_seeds": int}
UNIT_KEYS = {"planted_width": int, "n_planted": int, "noise": float, "n_points": int}
SECTIONS = {"data": DATA_KEYS, "train": TRAIN_KEYS, "labels": LABEL_KEYS, "seed_test": SEED_TEST_KEYS, "scan": SCAN_KEYS,
            "transfer": TRANSFER_KEYS, "discovery": DISCOVERY_KEYS, "widths": WIDTH_KEYS, "units": UNIT_KEYS}
"""Every table an fma study file may hold (besides ``[study]``) and the keys it accepts."""
UNTRAINED = "untrained"
SEED_POSITIVES = [620240165, 2813536937]  # the seeds of the seed's two mode-3 networks (its experiment 10)
GRID_SUBSETS, GRID_STATES = 5, (0, 1, 2)  # discovery's ARI table: disjoint sets of networks × clustering states (one restart each)
ABLATION_DRAWS = 200  # random sets of units in the ablation check's null distribution
ABLATION_TOLERANCE = 0.1  # the ablation check's relative tolerance on a network's RMS error
SCORES = ("seed's score", "sign count (ours)", "scan P(3), parameters")


# ------------------------------------------------------------------------------------------- options
def _ints(value: Any, table: str, key: str, *, minimum: int = 1, empty: bool = False) -> list[int]:
    if not isinstance(value, list) or (not value and not empty) or not all(isinstance(v, int) and not isinstance(v, bool) and v >= minimum for v in value):
        raise StudySpecError(f"[{table}] {key} must be a {'' if empty else 'non-empty '}list of integers >= {minimum}, got {value!r}")
    return list(value)


def _options(spec: dict[str, Any]) -> dict[str, dict[str, Any]]:
    unknown = sorted(set(spec) - {"study", *SECTIONS})
    if unknown:
        raise StudySpecError(f"unknown sections {unknown} in an fma study; allowed are {sorted({'study', *SECTIONS})}")
    n_train, n_val = SEED_DATA_SIZE
    data = {"distribution": "product", "n_train": n_train, "n_val": n_val, "dtype": "float32", "device": "cpu"} | section(spec, "data", DATA_KEYS)
    train = {"n_seeds": 1024, "epochs": 4000, "lr": 1e-3, "snapshot_every": 200, "compile": False} | section(spec, "train", TRAIN_KEYS)
    labels = {"tolerance": DEFAULT_TOLERANCE, "stability_sizes": [512, 8000, 100_000], "stability_repeats": 5} | section(spec, "labels", LABEL_KEYS)
    seed_test = {"positives": SEED_POSITIVES, "n_random": 2000} | section(spec, "seed_test", SEED_TEST_KEYS)
    scan = {"holdout_fraction": 0.3, "n_random": 1000, "n_estimators": 300, "n_resamples": 500} | section(spec, "scan", SCAN_KEYS)
    transfer = {
        "n_seeds": 256, "other_size_n_seeds": 128, "other_size_n_train": 512, "other_size_n_val": 2000, "init_scales": [0.3, 3.0],
    } | section(spec, "transfer", TRANSFER_KEYS)
    discovery = {"n_points": 256, "step": 0.125, "max_groups": 12} | section(spec, "discovery", DISCOVERY_KEYS)
    widths = {"widths": [3, 4, 8], "n_seeds": 128, "deep_hidden": [2, 2], "deep_n_seeds": 128} | section(spec, "widths", WIDTH_KEYS)
    units = {"planted_width": 8, "n_planted": 200, "noise": 0.005, "n_points": 4096} | section(spec, "units", UNIT_KEYS)
    if units["noise"] < 0:
        raise StudySpecError(f"[units] noise must be >= 0, got {units['noise']}")
    if data["distribution"] not in DISTRIBUTIONS:
        raise StudySpecError(f"[data] distribution must be one of {list(DISTRIBUTIONS)}, got {data['distribution']!r}")
    if not 0.0 < scan["holdout_fraction"] < 1.0:
        raise StudySpecError(f"[scan] holdout_fraction must be in (0, 1), got {scan['holdout_fraction']}")
    if not 0.0 < labels["tolerance"] < 1.0:
        raise StudySpecError(f"[labels] tolerance must be in (0, 1), got {labels['tolerance']}")
    if not 0.0 < discovery["step"] <= 1.0:
        raise StudySpecError(f"[discovery] step must be in (0, 1], got {discovery['step']}")
    for table, values, key, low in (
        ("train", train, "n_seeds", 8), ("train", train, "epochs", 1), ("data", data, "n_train", 1), ("data", data, "n_val", 1),
        ("labels", labels, "stability_repeats", 1), ("seed_test", seed_test, "n_random", 4), ("scan", scan, "n_random", 4),
        ("scan", scan, "n_estimators", 1), ("scan", scan, "n_resamples", 10), ("transfer", transfer, "n_seeds", 4),
        ("transfer", transfer, "other_size_n_seeds", 4), ("transfer", transfer, "other_size_n_train", 1),
        ("transfer", transfer, "other_size_n_val", 1), ("discovery", discovery, "n_points", 8), ("discovery", discovery, "max_groups", 1),
        ("widths", widths, "n_seeds", 4), ("widths", widths, "deep_n_seeds", 4), ("train", train, "snapshot_every", 0),
        ("units", units, "planted_width", 6), ("units", units, "n_planted", 4), ("units", units, "n_points", 64),
    ):
        if values[key] < low:
            raise StudySpecError(f"[{table}] {key} must be an integer >= {low}, got {values[key]}")
    labels["stability_sizes"] = _ints(labels["stability_sizes"], "labels", "stability_sizes")
    seed_test["positives"] = _ints(seed_test["positives"], "seed_test", "positives", minimum=0, empty=True)
    widths["widths"] = _ints(widths["widths"], "widths", "widths")
    widths["deep_hidden"] = _ints(widths["deep_hidden"], "widths", "deep_hidden")
    if len(widths["deep_hidden"]) < 2:
        raise StudySpecError(f"[widths] deep_hidden must list at least two hidden layers, got {widths['deep_hidden']}")
    scales = transfer["init_scales"]
    if not isinstance(scales, list) or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0 for v in scales):
        raise StudySpecError(f"[transfer] init_scales must be a list of positive numbers, got {scales!r}")
    try:
        EnsembleTrainConfig(epochs=train["epochs"], lr=train["lr"], snapshot_every=train["snapshot_every"], compile=train["compile"])
    except ValueError as error:
        raise StudySpecError(f"[train] is invalid: {error}") from None
    return {"data": data, "train": train, "labels": labels, "seed_test": seed_test, "scan": scan, "transfer": transfer,
            "discovery": discovery, "widths": widths, "units": units}  # fmt: skip


def check_study(spec: dict[str, Any]) -> None:
    """Check every table, key, type and range of an fma study file before anything trains."""
    _options(spec)


# ------------------------------------------------------------------------------------------ helpers
class _Clock:
    """Wall-clock, process CPU and main-thread CPU seconds of consecutive stages.

    The process's CPU time includes every thread (BLAS, the fused kernel's chunks); the main
    thread's is what one core spends on the study when nothing runs beside it.
    """

    def __init__(self) -> None:
        self.wall: dict[str, float] = {}
        self.cpu: dict[str, float] = {}
        self.thread: dict[str, float] = {}
        self._last = self._now()

    @staticmethod
    def _now() -> tuple[float, float, float]:
        return time.perf_counter(), time.process_time(), time.thread_time()

    def lap(self, name: str) -> None:
        now = self._now()
        for times, new, old in zip((self.wall, self.cpu, self.thread), now, self._last):
            times[name] = times.get(name, 0.0) + new - old
        self._last = now


def _train(
    seeds: list[int], opts: dict[str, dict[str, Any]], *, width: int = 2, distribution: str | None = None,
    n_train: int | None = None, n_val: int | None = None, init_scale: float = 1.0, snapshot_every: int = 0, progress: bool = False,
) -> tuple[EnsembleTrainResult, FmaSplit]:
    d, t = opts["data"], opts["train"]
    data = fma_splits(seeds, distribution or d["distribution"], n_train=n_train or d["n_train"], n_val=n_val or d["n_val"], dtype=d["dtype"])
    ensemble = MLPEnsemble(EnsembleConfig(seeds=seeds, d_hidden=width, dtype=d["dtype"], device=d["device"], init_scale=init_scale))
    config = EnsembleTrainConfig(epochs=t["epochs"], lr=t["lr"], snapshot_every=snapshot_every, compile=t["compile"])
    return train_ensemble(ensemble, data, config, progress=progress), data


def _cpu_params(result: EnsembleTrainResult) -> dict[str, torch.Tensor]:
    return {name: value.to("cpu", torch.float64) for name, value in result.ensemble.parameter_dict().items()}


def _ci(interval: Interval, digits: int = 3) -> str:
    return interval.format(digits)


def _pct(interval: Interval) -> str:
    return interval.format(3, percent=True)


def _median(values: np.ndarray, seed: int, n_resamples: int) -> str:
    return _ci(median_interval(values, seed=seed, n_resamples=max(n_resamples, 200))) if len(values) else "—"


def _auc(roc: RocResult | None) -> str:
    if roc is None:
        return "—"
    if roc.interval is None:
        return format_number(roc.auc, 3)
    return f"{roc.auc:.3f} [{roc.interval.low:.3f}, {roc.interval.high:.3f}]"


def _discover(network: Any, distribution: str, opts: dict[str, Any], seed: int) -> tuple[np.ndarray, MechanismDiscovery]:
    fingerprints = function_fingerprints(network, distribution, n_points=opts["n_points"], step=opts["step"], seed=seed)
    return fingerprints, MechanismDiscovery(max_groups=opts["max_groups"], random_state=seed).fit(fingerprints)


# ---------------------------------------------------------------------------------------------- run
def run(spec: dict[str, Any], out_dir: Path, *, progress: bool) -> None:
    """Run the study described by ``spec`` and write its report into ``out_dir``.

    The options and seeds are read here; each section of the report is a function of its own
    (:data:`_SECTIONS`, in order), reading what earlier sections left in the run's shared state.
    NumPy's and SciPy's BLAS get as many threads as torch has for the run: the mixtures and PCAs
    work on matrices of a dozen columns, where BLAS threads only wait for each other (with two
    threads on a busy 2-core machine a Gaussian mixture's fits cost 15 times the CPU of one).
    """
    with threadpool_limits(limits=torch.get_num_threads(), user_api="blas"):
        _run(spec, out_dir, progress=progress)


def _run(spec: dict[str, Any], out_dir: Path, *, progress: bool) -> None:
    opts = _options(spec)
    seed = int(spec["study"].get("seed", 0))
    d, t, lab, st, sc, tr, disc_opts, wd, un = (opts[k] for k in ("data", "train", "labels", "seed_test", "scan", "transfer", "discovery", "widths", "units"))
    dist, n_res = d["distribution"], sc["n_resamples"]
    plane = optimal_plane(dist)
    report = Report(spec["study"].get("name", "fma"))
    report.paragraph(spec["study"].get("description", "F = m·a with tiny ReLU MLPs."))
    clock = _Clock()
    # One SeedSequence child per set of networks: no two sets can share an initialisation or a split.
    sets = {"width2": t["n_seeds"], "scan_random": sc["n_random"], "test_random": st["n_random"], "other_size": tr["other_size_n_seeds"],
            "uniform": tr["n_seeds"]}  # fmt: skip
    sets |= {f"init_scale_{k}": tr["n_seeds"] for k in range(len(tr["init_scales"]))}
    sets |= {f"width{w}": wd["n_seeds"] for w in wd["widths"]} | {"deep": wd["deep_n_seeds"]} | {"planted": 3}
    seeds = spawn_seeds(seed, sets)
    state: dict[str, Any] = dict(
        spec=spec, out_dir=out_dir, progress=progress, clock=clock, d=d, disc_opts=disc_opts, dist=dist, lab=lab, n_res=n_res,
        opts=opts, plane=plane, report=report, sc=sc, seed=seed, seeds=seeds, st=st, t=t, tr=tr, un=un, wd=wd)
    for write_section in _SECTIONS:
        write_section(state)


def _take(state: dict[str, Any], *names: str) -> tuple[Any, ...]:
    """The values of ``names`` in a run's shared state, in order."""
    return tuple(state[name] for name in names)


def _section_train_width2(state: dict[str, Any]) -> None:
    """Train the width-2 networks every later section reads."""
    clock, opts, progress, seeds, t = _take(state, "clock", "opts", "progress", "seeds", "t")
    result, data = _train(seeds["width2"], opts, snapshot_every=t["snapshot_every"], progress=progress)
    clock.lap("train width 2")
    params = _cpu_params(result)
    val = result.val_loss.numpy().astype(float)
    n = len(val)
    state.update(data=data, n=n, params=params, result=result, val=val)


def _section_task(state: dict[str, Any]) -> None:
    """§1: do the networks multiply, against the exact best plane and constant on the same distribution."""
    clock, d, data, dist, n, n_res, opts, plane, progress, report, seed, seeds, t, tr, val = _take(
        state, "clock", "d", "data", "dist", "n", "n_res", "opts", "plane", "progress", "report", "seed", "seeds", "t", "tr", "val")
    per_seed_plane = plane_fit_val_mse(data)
    beats = int((val < plane.mse).sum())
    uniform_plane = optimal_plane("uniform")
    uniform_result, uniform_data = _train(seeds["uniform"], opts, distribution="uniform", progress=progress)
    uniform_val = uniform_result.val_loss.numpy().astype(float)
    report.heading("1. Do the networks multiply?")
    report.paragraph(
        f"{n} width-2 networks trained the seed's way (full-batch Adam, lr {t['lr']}, {t['epochs']} epochs, PyTorch's default "
        f"initialisation) on `{dist}` data, {d['n_train']} training / {d['n_val']} validation points each ("
        + ("the seed's sizes" if (d["n_train"], d["n_val"]) == SEED_DATA_SIZE else "the seed used 8000 / 2000")
        + f"; §2 compares the labels with {tr['other_size_n_train']} / {tr['other_size_n_val']}). Every baseline is on the same distribution: "
        "the best plane and the best constant over the distribution itself (exact moments, float64), and a plane fitted "
        "by least squares on each network's own training points, scored on its own validation points."
    )
    report.table(["model (same distribution)", "validation MSE", "interval"], [
        ["trained networks, median", float(np.median(val)), _median(val, seed, n_res)],
        ["trained networks, best", float(val.min()), "—"],
        ["least-squares plane per network (fitted on its own training points), median", float(np.median(per_seed_plane)), _median(per_seed_plane, seed, n_res)],
        ["best plane over the distribution (exact)", plane.mse, "exact"],
        ["best constant over the distribution, Var(F) (exact)", plane.target_variance, "exact"],
    ])  # fmt: skip
    beat_interval = proportion_interval(beats, n)
    report.bullets([
        f"networks below the exact best plane: {beats} of {n}, {_pct(beat_interval)}; below the best constant: "
        f"{int((val < plane.target_variance).sum())}",
        f"uniform inputs, for the seed's linear figure only: {len(uniform_val)} networks trained on `uniform` data reach median "
        f"{_median(uniform_val, seed, n_res)}; the best plane there is exactly 1/144 = {uniform_plane.mse:.5f}, and the seed's linear model "
        "scored 0.0072 on such inputs. The seed's 0.0072 is not comparable with the product-data numbers above.",
    ])
    report.metrics["task"] = {
        "median_val": float(np.median(val)), "best_val": float(val.min()), "per_seed_plane_median": float(np.median(per_seed_plane)),
        "exact_plane": plane.mse, "exact_constant": plane.target_variance, "beat_exact_plane": beats,
        "uniform_median_val": float(np.median(uniform_val)), "uniform_exact_plane": uniform_plane.mse,
    }  # fmt: skip

    clock.lap(f"task check (and {tr['n_seeds']} networks on uniform inputs)")
    state.update(uniform_result=uniform_result)


def _section_labels(state: dict[str, Any]) -> None:
    """§2: mechanism labels, their stability across sample sizes, and another data size."""
    clock, d, data, dist, lab, n_res, opts, params, progress, report, seed, seeds, tr = _take(
        state, "clock", "d", "data", "dist", "lab", "n_res", "opts", "params", "progress", "report", "seed", "seeds", "tr")
    stats = unit_statistics(params, dist)
    states = unit_states(stats, tolerance=lab["tolerance"])
    labels = labels_from_states(states, stats.output_weight)
    seed_modes = seed_mode_labels(stats)
    classes = refined_classes(params, states, stats)
    report.heading("2. Mechanism labels, and how stable they are")
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
            seed_rows.append([mode, f"{int(chosen.sum())} ({_pct(proportion_interval(int(chosen.sum()), len(labels)))})",
                              f"{np.median(firing[chosen]):.1%} [{firing[chosen].min():.1%}, {firing[chosen].max():.1%}]",
                              ", ".join(f"{k} {v}" for k, v in refined)])  # fmt: skip
    report.table(["seed's mode", "networks", "more active unit fires on", "our refinement (networks)"], seed_rows)
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
        stability_rows.append([f"{row.size:,}", _pct(changed), _pct(old)])
        stability_metrics[str(row.size)] = {"changed": changed.estimate, "low": changed.low, "high": changed.high, "old_rule_changed": old.estimate}
    report.paragraph(
        f"Relabelling every network on fresh samples ({lab['stability_repeats']} samples per size) instead of the exact "
        "distribution: the share of labels that change (mean over samples, bootstrap interval over networks). The old rule "
        "(a unit is active only if it fires on every point) is shown relabelled on the same sizes against its labels on "
        "the networks' own training points."
    )
    report.table(["fresh sample size", "labels changed (this rule)", "labels changed (old all-points rule)"], stability_rows)

    clock.lap("labels and their stability")

    # another data size: the same initialisations trained on this study's data and on a second size
    big, big_data = _train(seeds["other_size"], opts, n_train=tr["other_size_n_train"], n_val=tr["other_size_n_val"], progress=progress)
    small, _ = _train(seeds["other_size"], opts, progress=progress)
    big_params, small_params = _cpu_params(big), _cpu_params(small)
    big_labels, small_labels = (mechanism_labels(p, dist, tolerance=lab['tolerance']) for p in (big_params, small_params))
    agree = proportion_interval(int((big_labels == small_labels).sum()), len(big_labels))
    clock.lap(f"another data size ({tr['other_size_n_seeds']} networks, trained twice)")
    size_rows = []
    for mode in MODES:
        a, b = int((small_labels == mode).sum()), int((big_labels == mode).sum())
        if a or b:
            size_rows.append([REFINEMENT_NAMES[mode], _pct(proportion_interval(a, len(small_labels))), _pct(proportion_interval(b, len(big_labels)))])
    report.paragraph(
        f"Another data size: {len(big_labels)} further networks trained from the same initialisations twice, once on "
        f"this study's {d['n_train']} / {d['n_val']} points and once on "
        f"{tr['other_size_n_train']} / {tr['other_size_n_val']}. The same network gets the same label in {_pct(agree)} of cases; "
        "the frequencies of our refinement's classes (Wilson intervals):"
    )
    report.table(["our refinement", f"{d['n_train']} training points", f"{tr['other_size_n_train']} training points"], size_rows)
    report.metrics["labels"] = {
        "tolerance": lab["tolerance"], "stability": stability_metrics, "other_size_agreement": agree.estimate,
        "other_size_agreement_interval": [agree.low, agree.high], "counts": dict(Counter(labels.tolist())),
        "other_size_counts": dict(Counter(big_labels.tolist())), "study_size_counts": dict(Counter(small_labels.tolist())),
        "seed_mode_counts": dict(Counter(seed_modes.tolist())), "seed_mainly": SEED_MAINLY,
    }  # fmt: skip
    state.update(big_labels=big_labels, big_params=big_params, classes=classes, labels=labels, seed_modes=seed_modes)


def _section_mechanisms(state: dict[str, Any]) -> None:
    """§3: every mechanism's loss, ridge + plane's two kinds, the seed's networks and the ridge+valley split."""
    classes, clock, d, data, dist, lab, labels, n, n_res, out_dir, params, plane, report, result, seed, st, val = _take(
        state, "classes", "clock", "d", "data", "dist", "lab", "labels", "n", "n_res", "out_dir", "params", "plane", "report",
        "result", "seed", "st", "val")
    report.heading("3. The mechanisms of width-2 networks and their losses")
    mech_rows = []
    for mode in MODES:
        chosen = val[labels == mode]
        if not chosen.size:
            continue
        who = f"ours, label {mode} (not the seed's mode {mode}: §2)" if mode in SEED_MODES else "ours (the seed did not name it)"
        mech_rows.append([
            REFINEMENT_NAMES[mode], who, f"{chosen.size} ({_pct(proportion_interval(int(chosen.size), n))})", _median(chosen, seed, n_res),
            float(chosen.min()), float(np.median(chosen) / plane.mse),
        ])  # fmt: skip
    report.table(["our refinement", "named by", "networks", "median val MSE [95% CI]", "best val MSE", "median / exact best plane"], mech_rows)
    seed_modes = state["seed_modes"]
    seed_rows = []
    for mode in SEED_LABELS:
        chosen = val[seed_modes == mode]
        if chosen.size:
            seed_rows.append([mode, chosen.size, _median(chosen, seed, n_res), float(chosen.min())])
    report.paragraph("The same networks by the seed's own modes (§2):")
    report.table(["seed's mode", "networks", "median val MSE [95% CI]", "best val MSE"], seed_rows)
    ridge_rows = []
    for orientation in ("along", "across", "oblique"):
        chosen = val[(labels == "3") & (np.char.endswith(classes, orientation))]
        if chosen.size:
            where = {"along": "along the diagonal", "across": "across the diagonal", "oblique": "oblique to the diagonal"}[orientation]
            ridge_rows.append([f"ridge + plane, ridge {where}", chosen.size, _median(chosen, seed, n_res), float(chosen.min())])
    report.paragraph(
        "Ridge + plane (our refinement: one ridge and one linear unit; the seed's mode 3 is one straddling and one mainly "
        "positive unit, and §2 shows how the two overlap) has two kinds, told apart by where the ridge runs: along the diagonal m = a (a roof, min of two mirror-image "
        "planes, as in the seed's hand-crafted and cleanest mode-3 networks) or across it (a crease that only cuts off the far tips of the product distribution, where "
        "one input is large). Most of its spread in loss is this split:"
    )
    report.table(["networks", "count", "median val MSE [95% CI]", "best"], ridge_rows)

    # seed's positives and hand-crafted network
    positives, positive_rows = [], []
    eval_points = sample_fma(100_000, dist, seed=seed + 77, dtype="float64")[0]
    for s in st["positives"]:
        model, split = seed_recipe_start(s)
        fit = train_mlp(model, split, EnsembleTrainConfig())  # the seed's recipe, whatever this study's [train] says
        label = mechanism_labels(model, dist, tolerance=lab['tolerance'])[0]
        u = unit_statistics(model, dist)
        positives.append(model)
        positive_rows.append([
            s, fit.val_loss, seed_mode_labels(u)[0], REFINEMENT_NAMES[label], ", ".join(f"{f:.1%}" for f in u.firing_fraction[0]),
            ", ".join(f"{c:.3f}" for c in u.linearisation_change[0]), f"`{network_formula(model, digits=3)}`",
        ])  # fmt: skip
    clock.lap("seed's positives")
    handcrafted = handcrafted_mode3_network(dtype="float64")
    with torch.no_grad():
        hc_mse = float((handcrafted(eval_points)[:, 0] - eval_points[:, 0] * eval_points[:, 1]).square().mean())
    report.paragraph(
        "The seed's two mode-3 networks, rebuilt from its seeds by its own recipe (same random draws for data and "
        "initialisation, bit for bit; 8000 / 2000 points) and trained as it trained them, and its hand-crafted design:"
    )
    report.table(
        ["seed", "val MSE", "seed's mode", "our refinement", "firing fraction per unit", "linearisation change per unit", "formula"],
        positive_rows + [["hand-crafted", hc_mse, seed_mode_labels(handcrafted, dist)[0],
                          REFINEMENT_NAMES[mechanism_labels(handcrafted, dist, tolerance=lab['tolerance'])[0]],
                          ", ".join(f"{f:.1%}" for f in unit_statistics(handcrafted, dist).firing_fraction[0]), "",
                          f"`{network_formula(handcrafted)}`"]],
    )  # fmt: skip

    # the best mechanism
    best_rv = best_member(val, labels, "ridge+valley")
    best_3 = best_member(val, labels, "3")
    if best_rv is not None and best_3 is not None:
        split = ridge_valley_split(params, best_3, best_rv, eval_points, dist)
        share, inside, outside = split.valley_off_share, split.mse_valley_off, split.mse_elsewhere
        outputs, target_mean = split.mean_output_valley_off, split.target_mean_valley_off
        rv_vals, m3_vals = val[labels == "ridge+valley"], val[labels == "3"]
        formula = network_formula({k: v[[best_rv]] for k, v in params.items()})
        report.paragraph(
            f"**What the seed missed: ridge+valley.** The lowest losses (best {val.min():.2e}) belong to networks whose two units "
            f"are both creases, with output weights of opposite sign. The best one computes `{formula}`: a ridge "
            f"{split.ridge_angle:.0f}° from the diagonal (the roof of ridge + plane) and a valley {split.valley_angle:.0f}° from it that is off on "
            f"{share:.0%} of the data, where m + a is small. There m·a averages {target_mean:.3f}, the best ridge + plane network "
            f"{outputs[0]:.3f} and the best ridge+valley network {outputs[1]:.3f}. m·a is a saddle: concave across the "
            "diagonal, which the ridge of min of two planes follows, and convex along it, which a ridge cannot follow and "
            "a valley can. MSE where the "
            f"valley is off: ridge + plane {inside[0]:.2e}, ridge+valley {inside[1]:.2e}; elsewhere {outside[0]:.2e} and "
            f"{outside[1]:.2e} — {split.gap_share_valley_off:.0%} of the gap between the two best networks comes from "
            f"the {share:.0%} near the origin. Median validation MSE: ridge+valley {_median(rv_vals, seed, n_res)}, ridge + plane "
            f"{_median(m3_vals, seed, n_res)}, exact best plane {plane.mse:.2e}."
        )
        report.metrics["ridge_valley"] = {
            "best_formula": str(formula), "valley_off_share": share, "mse_valley_off": {"mode3": float(inside[0]), "ridge+valley": float(inside[1])},
            "mse_elsewhere": {"mode3": float(outside[0]), "ridge+valley": float(outside[1])},
        }  # fmt: skip
    save_checkpoint(out_dir / "width2_networks", result.ensemble, metadata={
        "labels": labels.tolist(), "val_loss": val.tolist(), "distribution": dist, "tolerance": lab["tolerance"],
        "n_train": d["n_train"], "n_val": d["n_val"],
    })  # fmt: skip
    report.metrics["mechanisms"] = {
        mode: {"count": int((labels == mode).sum()), "median_val": float(np.median(val[labels == mode])), "best_val": float(val[labels == mode].min())}
        for mode in MODES if (labels == mode).any()
    }  # fmt: skip
    report.figure("loss_by_mode", plot_loss_by_mode(val, np.vectorize(REFINEMENT_NAMES.get)(labels), modes=[REFINEMENT_NAMES[m] for m in MODES], references={"exact best plane": plane.mse, "best constant": plane.target_variance}),
                  "Validation MSE per mechanism, with the exact best plane and constant on the same distribution")  # fmt: skip
    examples: dict[str, Any] = {}
    for mode in MODES:
        best = best_member(val, labels, mode)
        if best is not None and mode != "1":
            examples[f"{REFINEMENT_NAMES[mode]} (#{best})"] = {name: value[best] for name, value in params.items()}
    examples |= {f"seed {s}": m for s, m in zip(st["positives"], positives)} | {"hand-crafted": handcrafted}
    report.figure("preactivation_maps", plot_preactivation_maps(examples, distribution=dist, inputs=data.train_inputs[0]),
                  "Each unit's pre-activation (black: its zero line) and the output, for the best network of each mechanism, the seed's two networks and its hand-crafted design")  # fmt: skip
    report.figure("gallery", plot_mode_gallery(params, np.vectorize(REFINEMENT_NAMES.get)(labels), losses=val, row_name="class",
                                               modes=[REFINEMENT_NAMES[m] for m in MODES if (labels == m).any()], distribution=dist),
                  "The best networks of each mechanism: error F̂ − m·a on the data's support, and the units' creases")  # fmt: skip
    clock.lap("mechanisms and figures")
    state.update(positive_rows=positive_rows, positives=positives)


def _section_discovery(state: dict[str, Any]) -> None:
    """§4: mechanisms found from function fingerprints without labels."""
    classes, clock, disc_opts, dist, labels, n_res, params, report, seed, val = _take(
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
    fingerprints, discovery = _discover(params, dist, disc_opts, seed)
    groups = discovery.labels_
    vs_classes, vs_modes = compare_groups(groups, classes), compare_groups(groups, labels)
    ari_classes, control_classes = ari_interval(groups, classes, seed, n_res)
    ari_modes, control_modes = ari_interval(groups, labels, seed, n_res)
    grid = discovery_ari_grid(fingerprints, {"seed's modes": state["seed_modes"], "refined classes": classes, "refinement": labels},
                              n_subsets=GRID_SUBSETS, random_states=GRID_STATES, max_groups=disc_opts["max_groups"], n_init=1, seed=seed)
    grid_rows = [[name, _ci(mean_interval(values.ravel(), seed=seed, n_resamples=max(n_res, 200))),
                  f"{values.min():.3f} – {values.max():.3f}"] for name, values in grid.items()]  # fmt: skip
    group_rows = []
    for g in range(discovery.n_groups_):
        members = np.flatnonzero(groups == g)
        best = int(members[np.argmin(val[members])])
        cls, purity = vs_classes.majority[g]
        mode, mode_purity = vs_modes.majority[g]
        mode = REFINEMENT_NAMES.get(mode, mode)
        group_rows.append([g, members.size, _median(val[members], seed, n_res), f"{cls} ({purity:.0%})", f"{mode} ({mode_purity:.0%})",
                           f"`{network_formula({k: v[[best]] for k, v in params.items()}, digits=2)}`"])  # fmt: skip
    report.table(["group", "networks", "median val MSE [95% CI]", "most common function class", "most common class of our refinement", "best member"], group_rows)
    report.bullets([
        f"{discovery.n_groups_} groups by BIC. Against function classes (constant, plane, and the number of ridges r and valleys v, a single "
        f"crease split by its orientation to the diagonal): adjusted Rand index {_ci(ari_classes)} (shuffled groups: ≤ {control_classes:.3f}); "
        "share of each class in its most common group: " + ", ".join(f"{k} {v:.0%}" for k, v in vs_classes.recall.items()),
        f"against our refinement's classes: adjusted Rand index {_ci(ari_modes)} (shuffled: ≤ {control_modes:.3f}); "
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


def _section_scores(state: dict[str, Any]) -> None:
    """§5: the seed's mode-3 score and ours, by AUC on the seed's test and on held-out trained networks."""
    dist, labels, n, n_res, params, positive_rows, positives, report, sc, seed, seeds, st = _take(
        state, "dist", "labels", "n", "n_res", "params", "positive_rows", "positives", "report", "sc", "seed", "seeds", "st")
    X = flatten_parameters(params)
    scan_random = flatten_parameters(MLPEnsemble(EnsembleConfig(seeds=seeds["scan_random"], dtype="float64")))
    test_random = flatten_parameters(MLPEnsemble(EnsembleConfig(seeds=seeds["test_random"], dtype="float64")))
    n_test = max(1, int(round(sc["holdout_fraction"] * n)))
    fit_rows, test_rows = np.arange(n - n_test), np.arange(n - n_test, n)
    y_fit = np.r_[labels[fit_rows], [UNTRAINED] * len(scan_random)]
    scans = {
        kind: AlgorithmScan(features=kind, distribution=dist, n_estimators=sc["n_estimators"], random_state=seed).fit(np.r_[X[fit_rows], scan_random], y_fit)
        for kind in ("parameters",)
    }  # fmt: skip
    X_pos = np.concatenate([flatten_parameters(m) for m in positives]) if positives else np.empty((0, X.shape[1]))

    def scores(Z: np.ndarray, distribution: str = dist) -> dict[str, np.ndarray]:
        out = {SCORES[0]: seed_mode3_score(Z), SCORES[1]: mode3_sign_count(Z)}
        for name, kind in ((SCORES[2], "parameters"),):
            out[name] = scans[kind].mode_score(Z, "3", distribution=distribution) if "3" in scans[kind].classes_ else np.zeros(len(Z))
        return out

    held, rand, pos = scores(X[test_rows]), scores(test_random), scores(X_pos) if len(X_pos) else {}
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
    auc_rows, auc_metrics, curves = [], {}, {}
    comparisons: list[tuple[str, np.ndarray, np.ndarray, str]] = []
    if len(X_pos):
        comparisons.append(("seed's test: its 2 networks vs random init", None, None, "seed"))
    positive_mask = y_test == "3"
    comparisons.append(("held-out ridge + plane vs random init", None, None, "random"))
    comparisons.append(("held-out ridge + plane vs every other held-out refinement", None, None, "others"))
    for mode in MODES:
        if mode != "3" and (y_test == mode).any():
            comparisons.append((f"held-out ridge + plane vs {REFINEMENT_NAMES[mode]}", None, None, mode))
    for title, _, _, kind in comparisons:
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
            row.append(_auc(roc))
            auc_metrics.setdefault(title, {})[name] = roc.auc
            if kind in ("seed", "others") and name in (SCORES[0], SCORES[2]):
                curves[f"{name}: {'seed test' if kind == 'seed' else 'vs other modes'}"] = roc
        auc_rows.append(row)
    if auc_rows:
        report.table(["test", *SCORES], auc_rows)
    signature = seed_sign_signature(params)
    in_mode3 = proportion_interval(int(signature[labels == "3"].sum()), max(int((labels == "3").sum()), 1))
    elsewhere = proportion_interval(int(signature[labels != "3"].sum()), max(int((labels != "3").sum()), 1))
    positive_notes = [
        f"seed {s} is the seed's mode {row[2]}, refinement {row[3]} (firing fractions {row[4]}, linearisation changes {row[5]})"
        for s, row in zip(st["positives"], positive_rows)
    ]
    report.bullets(positive_notes + [
        f"held-out positives: {int(positive_mask.sum())} ridge + plane networks among {len(test_rows)}; the seed's test has "
        f"{len(X_pos)} positives, so its bootstrap interval cannot be wider than what resampling {len(X_pos)} scores allows",
        "the seed's score is built from signs and angles of the seed's own examples (negative output weights, positive output "
        f"bias, a 3π/4 turn of (1, 1)): the sign part holds for {_pct(in_mode3)} of ridge + plane networks and for {_pct(elsewhere)} "
        "of the other trained networks",
    ])
    if curves:
        report.figure("roc_mode3", plot_roc_curves(curves, title="Ridge + plane: the seed's mode-3 score and the scan"),
                      "ROC curves: our ridge + plane against the rest, scored by the seed's mode-3 score and by the scan")
    report.metrics["scores"] = auc_metrics
    state.update(scans=scans, test_rows=test_rows, y_test=y_test)


def _section_scan(state: dict[str, Any]) -> None:
    """§6: the algorithm scan on held-out seeds and on networks trained by independent recipes."""
    big_labels, big_params, clock, d, dist, lab, n_res, opts, params, progress, report, scans, seed, seeds, test_rows, tr, uniform_result, y_test = _take(
        state, "big_labels", "big_params", "clock", "d", "dist", "lab", "n_res", "opts", "params", "progress", "report", "scans",
        "seed", "seeds", "test_rows", "tr", "uniform_result", "y_test")
    # the scan: held-out seeds, transfer recipes, corner rule
    report.heading("6. The algorithm scan: held-out seeds and independent recipes")
    recipes: dict[str, tuple[dict[str, torch.Tensor], np.ndarray, str]] = {}
    recipes[f"held-out seeds ({d['n_train']} points)"] = ({k: v[test_rows] for k, v in params.items()}, y_test, dist)
    recipes[f"another data size ({tr['other_size_n_train']} points)"] = (big_params, big_labels, dist)
    uniform_params = _cpu_params(uniform_result)
    state.setdefault("recipe_params", {})["uniform inputs"] = (uniform_params, "uniform")
    recipes["uniform inputs"] = (uniform_params, mechanism_labels(uniform_params, "uniform", tolerance=lab['tolerance']), "uniform")
    for k, scale in enumerate(tr["init_scales"]):
        scaled, _ = _train(seeds[f"init_scale_{k}"], opts, init_scale=scale, progress=progress)
        scaled_params = _cpu_params(scaled)
        state.setdefault("recipe_params", {})[f"initialisation ×{scale:g}"] = (scaled_params, dist)
        recipes[f"initialisation ×{scale:g}"] = (scaled_params, mechanism_labels(scaled_params, dist, tolerance=lab['tolerance']), dist)
    codes = {label: i for i, label in enumerate([*MODES, UNTRAINED])}
    transfer_rows, transfer_metrics = [], {}
    for name, (rp, truth, rdist) in recipes.items():
        Z = flatten_parameters(rp)
        mechanisms = [c for c in scans["parameters"].classes_ if c != UNTRAINED]
        predictions = {
            "scan, parameters only": scans["parameters"].predict(Z, among=mechanisms),
            "corner rule (no learning)": corner_rule_labels(Z, distribution=rdist),
        }
        untrained = {kind: float((scans[kind].predict(Z, distribution=rdist) == UNTRAINED).mean()) for kind in ("parameters",)}
        row, entry = [name, len(truth)], {"called_untrained": untrained}
        for kind, predicted in predictions.items():
            scored = transfer_scores(truth, predicted, codes, seed=seed, n_resamples=n_res)
            accuracy, balanced = scored["accuracy"], scored["balanced"]
            row.append(f"{_pct(accuracy)} / {balanced.estimate:.1%}")
            entry[kind] = {"accuracy": accuracy.estimate, "accuracy_interval": [accuracy.low, accuracy.high], "balanced": balanced.estimate,
                           "confusion": scored["confusion"]}  # fmt: skip
        row.append(f"{untrained['parameters']:.0%}")
        transfer_rows.append(row)
        transfer_metrics[name] = entry
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


def _section_dynamics(state: dict[str, Any]) -> None:
    """§7: mechanisms through training."""
    clock, dist, lab, n, params, report, result = _take(state, "clock", "dist", "lab", "n", "params", "report", "result")
    epochs = result.snapshot_epochs
    snapshot_labels = np.stack([
        mechanism_labels({name: result.snapshots[name][k] for name in params}, dist, tolerance=lab['tolerance']) for k in range(len(epochs))
    ])  # fmt: skip
    dynamics = label_switches(snapshot_labels, epochs) if len(epochs) > 2 else None
    report.heading("7. Mechanisms during training")
    named = np.vectorize(REFINEMENT_NAMES.get)(snapshot_labels)
    report.figure("mode_over_time", plot_mode_over_time(epochs, named, modes=[REFINEMENT_NAMES[m] for m in MODES]),
                  "Share of networks per class of our refinement at every snapshot")
    if dynamics is not None:
        late = dynamics["last_switch"][dynamics["last_switch"] >= 0]
        report.bullets([
            f"{dynamics['n_switching']} of {n} networks change mechanism after epoch {epochs[1]}",
            "epoch of the last change: " + (f"median {int(np.median(late))}, 90% by {int(np.quantile(late, 0.9))}" if late.size else "none"),
        ])
        report.table([f"mechanism at epoch {epochs[1]}", f"at epoch {epochs[-1]}", "networks"],
                     [[REFINEMENT_NAMES[a], REFINEMENT_NAMES[b], c] for (a, b), c in dynamics["transitions"].most_common(10)])  # fmt: skip
        report.metrics["dynamics"] = {"snapshot_epochs": epochs, "n_switching": dynamics["n_switching"],
                                      "transitions": {f"{a}->{b}": c for (a, b), c in dynamics["transitions"].items()}}  # fmt: skip
    clock.lap("dynamics")


def _section_wider(state: dict[str, Any]) -> None:
    """§8: wider networks and two hidden layers."""
    clock, d, disc_opts, dist, lab, n_res, opts, plane, progress, report, seed, seeds, t, wd = _take(
        state, "clock", "d", "disc_opts", "dist", "lab", "n_res", "opts", "plane", "progress", "report", "seed", "seeds", "t", "wd")
    report.heading("8. Wider networks and two hidden layers")
    report.paragraph(
        "Labels for one hidden layer of any width: constant (every unit dead), plane (no crease), or r·v· (the numbers of "
        "ridges and valleys). The discovery runs on the same function fingerprints as at width 2; for two hidden layers, "
        "where units have no such labels, each group is described by how its functions bend: the RMS of the second "
        "differences and the share that is concave."
    )
    wide_rows, wide_metrics = [], {}
    for width in wd["widths"]:
        wide, _ = _train(seeds[f"width{width}"], opts, width=width, progress=progress)
        wide_params, wide_val = _cpu_params(wide), wide.val_loss.numpy().astype(float)
        state.setdefault("wide", {})[f"width {width}"] = (wide_params, wide_val)
        wide_stats = unit_statistics(wide_params, dist)
        wide_classes = crease_labels(unit_states(wide_stats, tolerance=lab["tolerance"]), wide_stats)
        _, wide_disc = _discover(wide_params, dist, disc_opts, seed)
        comparison = compare_groups(wide_disc.labels_, wide_classes)
        ari, control = ari_interval(wide_disc.labels_, wide_classes, seed, n_res)
        top = Counter(wide_classes.tolist()).most_common(4)
        wide_rows.append([
            f"width {width}", len(wide_val), _median(wide_val, seed, n_res), float(wide_val.min()),
            ", ".join(f"{c} {k}" for c, k in top), wide_disc.n_groups_, f"{_ci(ari)} (shuffled ≤ {control:.2f})",
            "; ".join(f"{int((wide_disc.labels_ == g).sum())}: {comparison.majority[g][0]}, {np.median(wide_val[wide_disc.labels_ == g]):.1e}"
                      for g in range(min(wide_disc.n_groups_, 4))),
        ])  # fmt: skip
        wide_metrics[str(width)] = {"median_val": float(np.median(wide_val)), "best_val": float(wide_val.min()), "classes": dict(Counter(wide_classes.tolist())),
                                    "n_groups": wide_disc.n_groups_, "ari": ari.estimate}  # fmt: skip
        clock.lap(f"width {width}")
    deep_cfg = DeepEnsembleConfig(seeds=seeds["deep"], d_hidden=wd["deep_hidden"], dtype=d["dtype"], device=d["device"])
    deep_data = fma_splits(seeds["deep"], dist, n_train=d["n_train"], n_val=d["n_val"], dtype=d["dtype"])
    deep = train_deep_ensemble(DeepMLPEnsemble(deep_cfg), deep_data, EnsembleTrainConfig(epochs=t["epochs"], lr=t["lr"]), progress=progress)
    deep_val = deep.val_loss.numpy().astype(float)
    state.setdefault("wide", {})[f"hidden {'×'.join(map(str, wd['deep_hidden']))}"] = (deep.ensemble, deep_val)
    deep_fp, deep_disc = _discover(deep.ensemble, dist, disc_opts, seed)
    summary = summarise_fingerprints(deep_fp)
    def concave(group: int) -> str:
        shares = summary.concave_share[deep_disc.labels_ == group]
        return f"{np.nanmedian(shares):.0%}" if np.isfinite(shares).any() else "— (no bend)"

    deep_groups = "; ".join(
        f"{int((deep_disc.labels_ == g).sum())}: val {np.median(deep_val[deep_disc.labels_ == g]):.1e}, bend "
        f"{np.median(summary.bend[deep_disc.labels_ == g]):.2f}, concave {concave(g)}"
        for g in range(min(deep_disc.n_groups_, 5))
    )
    wide_rows.append([f"hidden {'×'.join(map(str, wd['deep_hidden']))}", len(deep_val), _median(deep_val, seed, n_res), float(deep_val.min()),
                      "—", deep_disc.n_groups_, "—", deep_groups])  # fmt: skip
    report.table(["networks", "count", "median val MSE [95% CI]", "best", "most common labels", "groups (BIC)",
                  "adjusted Rand vs labels", "largest groups: size: majority label, median val"], wide_rows)  # fmt: skip
    report.paragraph(f"Exact best plane on this distribution: {plane.mse:.2e}.")
    wide_metrics["deep"] = {"hidden": wd["deep_hidden"], "median_val": float(np.median(deep_val)), "best_val": float(deep_val.min()), "n_groups": deep_disc.n_groups_}
    report.metrics["wider"] = wide_metrics
    clock.lap("two hidden layers")


def _role_rows(name: str, found: np.ndarray, truth: np.ndarray) -> tuple[list[Any], dict[str, Any]]:
    """One row of the planted-network table: precision and recall of unit roles, with Wilson intervals."""
    scores = role_scores(found, truth)
    mech, crease, cancel = scores["mechanism"], scores["crease"], scores["cancelling"]
    wrong_dead = role_scores(found, truth, roles=("dead",))["dead"]
    row = [name, truth.shape[0], truth.size, _pct(mech.precision), _pct(mech.recall), _pct(mech.false_positive_rate),
           f"{_pct(crease.precision)} / {_pct(crease.recall)}", _pct(cancel.recall) if cancel.recall else "—",
           _pct(wrong_dead.recall) if wrong_dead.recall else "—"]  # fmt: skip
    metrics = {role: {"precision": sc.precision.estimate if sc.precision else None, "recall": sc.recall.estimate if sc.recall else None,
                      "recall_interval": [sc.recall.low, sc.recall.high] if sc.recall else None,
                      "precision_interval": [sc.precision.low, sc.precision.high] if sc.precision else None,
                      "false_positive_rate": sc.false_positive_rate.estimate if sc.false_positive_rate else None, "n_true": sc.n_true}
               for role, sc in scores.items()}  # fmt: skip
    return row, metrics


def _exact_roles(params: dict[str, torch.Tensor], distribution: str, tolerance: float) -> np.ndarray:
    """Roles of every unit of one-hidden-layer networks, each unit judged alone and exactly (quadrature)."""
    states = unit_states(params, distribution, tolerance=tolerance).numpy()
    return np.where(states == 2, "crease", np.where(states == 1, "linear", "dead"))


def _section_units(state: dict[str, Any]) -> None:
    """§9: which units do the work in networks no formula labels, by the unit scan."""
    clock, dist, lab, n_res, report, result, seed, seeds, un = _take(
        state, "clock", "dist", "lab", "n_res", "report", "result", "seed", "seeds", "un")
    width, n_planted = un["planted_width"], un["n_planted"]
    layout = {"n_dead": width - 5, "n_duplicates": 1, "n_cancelling": 1}
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
    row, metrics["held-out planted seeds"] = _role_rows(f"held-out seeds (hand-crafted pair, {dist})", found_test.roles[0], test_truth)
    rows.append(row)
    clean_params, clean_truth = planted_networks(n_planted, width, **layout, noise=0.0, seed=seeds["planted"][1], distribution=dist)
    row, metrics["no noise"] = _role_rows("held-out seeds, no noise", scan.roles(clean_params).roles[0], clean_truth)
    rows.append(row)
    for name, (rparams, rdist) in state.get("recipe_params", {}).items():
        k = min(n_planted, rparams["W_in"].shape[0])
        base = {key: value[:k] for key, value in rparams.items()}
        base_roles = _exact_roles(base, rdist, tol)
        planted, truth = planted_networks(k, width, **layout, noise=0.0, seed=seeds["planted"][2], base=base, base_roles=base_roles, distribution=rdist)
        found = unit_roles(planted, rdist, n_points=un["n_points"], seed=seed, tolerance=tol).roles[0]
        row, metrics[name] = _role_rows(f"trained width-2 networks, {name}, embedded", found, truth)
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
    clock.lap("unit scan on planted networks")

    # The ablation check, calibrated where the truth is known: the held-out planted networks with the scan's roles
    # (right for 99+ % of units), and with the wrong units (creases and dead units swapped; every network's roles shuffled)
    swapped = [np.where(r == "crease", "dead", np.where(r == "dead", "crease", r)) for r in found_test.roles]
    shuffle = np.random.default_rng(seed)
    shuffled = [np.stack([row[shuffle.permutation(row.size)] for row in r]) for r in found_test.roles]
    ab_rows, ab_metrics = [], {}
    cases: list[tuple[str, Any, Any, str]] = [
        ("planted (held out), the scan's roles", test_params, found_test, "planted"),
        ("planted, wrong units: creases and dead units swapped", test_params, dataclasses.replace(found_test, roles=swapped), "planted"),
        ("planted, wrong units: each network's roles shuffled", test_params, dataclasses.replace(found_test, roles=shuffled), "planted"),
    ]
    for name, (network, _) in state.get("wide", {}).items():
        cases.append((f"trained, {name}", network, unit_roles(network, dist, n_points=un["n_points"], seed=seed, tolerance=tol), "trained"))
    for name, network, roles, kind in cases:
        check = ablation_check(network, roles, dist, n_points=20_000, n_draws=ABLATION_DRAWS, rel_tolerance=ABLATION_TOLERANCE, seed=seed + 1)
        has, has_null = check.n_creases > 0, np.isfinite(check.null_quantile())
        necessary, others, passed = check.necessary(), check.others_unnecessary(), check.passed()
        shares = {key: proportion_interval(int(v.sum()), len(v)) for key, v in (("necessary", necessary), ("others", others), ("passed", passed))}
        ab_rows.append([
            name, len(check.intact), f"{np.median(check.n_creases):.0f} [{check.n_creases.min()}, {check.n_creases.max()}]",
            f"{np.median(check.n_outside):.0f} ({int(has_null.sum())})", _median(check.intact, seed, n_res),
            _median(check.crease_ratio[has], seed, n_res) if has.any() else "—",
            _median(check.null_quantile()[has_null], seed, n_res) if has_null.any() else "—",
            _median(check.rest_ratio, seed, n_res), _pct(shares["necessary"]), _pct(shares["others"]), _pct(shares["passed"]),
        ])  # fmt: skip
        ab_metrics[name] = {
            "kind": kind, "median_intact": float(np.median(check.intact)), "median_crease_ratio": float(np.median(check.crease_ratio[has])) if has.any() else None,
            "median_null_quantile": float(np.median(check.null_quantile()[has_null])) if has_null.any() else None,
            "median_rest_ratio": float(np.median(check.rest_ratio)), "with_null": int(has_null.sum()),
            **{key: iv.estimate for key, iv in shares.items()}, **{f"{key}_interval": [iv.low, iv.high] for key, iv in shares.items()},
        }  # fmt: skip
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
    clock.lap("unit scan ablation on trained networks")

    epochs = result.snapshot_epochs
    if len(epochs) > 2:
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
                     [[epochs[k], *(_pct(proportion_interval(int((counts[k] == c).sum()), counts.shape[1])) for c in (0, 1, 2))] for k in shown])  # fmt: skip
        # the epoch from which a network keeps two creases to the end: when its crease pair forms for good
        pair = counts == 2
        settled = np.flip(np.cumprod(np.flip(pair, 0), 0), 0).astype(bool)  # [snapshot, model]: two creases from here on
        ends_paired = settled[-1]
        formed = np.asarray(epochs)[np.argmax(settled, 0)][ends_paired]
        report.bullets([
            f"the crease pair forms for good (two creases at every later snapshot) in {int(ends_paired.sum())} of {counts.shape[1]} "
            f"networks: " + (f"median epoch {int(np.median(formed))}, 10–90 % range {int(np.quantile(formed, 0.1))}–"
                             f"{int(np.quantile(formed, 0.9))}; {int((formed <= epochs[1]).sum())} already at epoch {epochs[1]}" if formed.size else "none"),
            f"{switches['n_switching']} of {counts.shape[1]} networks change their number of creases after epoch {epochs[1]}; "
            + (f"the last change: median epoch {int(np.median(late))}, 90 % by {int(np.quantile(late, 0.9))}" if late.size else "none changes"),
            "transitions (creases at the first trained snapshot → at the end): "
            + ", ".join(f"{a}→{b}: {c}" for (a, b), c in switches["transitions"].most_common(4)),
        ])
        metrics_dyn = {"n_pair_formed": int(ends_paired.sum()), "pair_formed_median_epoch": float(np.median(formed)) if formed.size else None,
                       "n_switching": switches["n_switching"], "transitions": {f"{a}->{b}": c for (a, b), c in switches["transitions"].items()}}
    else:
        metrics_dyn = {}
    report.metrics["unit_scan"] = {"tolerance": tol, "calibration": {str(k): v for k, v in scan.accuracy_.items()}, "planted": metrics,
                                   "ablation": ab_metrics, "dynamics": metrics_dyn}  # fmt: skip
    clock.lap("unit scan through training")


def _section_timings(state: dict[str, Any]) -> None:
    """The timings table; writes the report."""
    clock, out_dir, report = _take(state, "clock", "out_dir", "report")
    report.timings["seconds"] = clock.wall
    report.timings["cpu_seconds"] = clock.cpu
    report.timings["thread_cpu_seconds"] = clock.thread
    report.heading("Timings")
    report.paragraph(
        "Wall-clock and CPU seconds per stage: the process's CPU time (every thread) and the main thread's. With one "
        "thread (the study's `threads = 1`) the two agree; wall time grows when other work shares the machine."
    )
    report.table(["stage", "wall s", "CPU s", "main-thread CPU s"], [[k, clock.wall[k], clock.cpu[k], clock.thread[k]] for k in clock.wall]
                 + [["total", sum(clock.wall.values()), sum(clock.cpu.values()), sum(clock.thread.values())]])  # fmt: skip
    report.write(out_dir)


_SECTIONS = (
    _section_train_width2,
    _section_task,
    _section_labels,
    _section_mechanisms,
    _section_discovery,
    _section_scores,
    _section_scan,
    _section_dynamics,
    _section_wider,
    _section_units,
    _section_timings,
)
"""The report's sections in order; each reads what earlier ones left in the run's state."""


__all__ = ["run"]
