"""The F = m·a study: train thousands of tiny MLPs at once, check that they multiply, name their
mechanisms, find them without labels, and scan for them from parameters.

``probes/fma.toml`` runs it. The report leads with whether the networks do the task (against the
exact best plane and the best constant on the same distribution), then gives the mechanism labels
and their stability across sample sizes and data sizes, every mechanism's loss, the mechanisms
found without labels (width 2, 3, 4, 8 and two hidden layers), the seed's own mode-3 score and
ours on the seed's test and on held-out trained networks of every mode, the algorithm scan on
held-out seeds and on networks trained by independent recipes, and modes through training.
Every set of networks draws its seeds from its own ``SeedSequence`` child.

This module reads and checks the options and runs the sections in order (:data:`_SECTIONS`, an
explicit table of the modules that write them); each section calls the library and writes its part
of the report, reading what earlier sections left in the run's shared state.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from threadpoolctl import threadpool_limits

from physlens.probes.mechanisms import DEFAULT_TOLERANCE
from physlens.seeding import spawn_seeds
from physlens.studies.fma import discovery, dynamics, labels, mechanisms, scan, scores, task, units, wider
from physlens.studies.fma.common import SEED_DATA_SIZE, Clock, State, take
from physlens.studies.report import Report, StudySpecError, section
from physlens.systems.fma import DISTRIBUTIONS, optimal_plane
from physlens.training.ensemble import EnsembleTrainConfig

DATA_KEYS = {"distribution": str, "n_train": int, "n_val": int, "dtype": str, "device": str}
TRAIN_KEYS = {"n_seeds": int, "epochs": int, "lr": float, "snapshot_every": int, "compile": bool}
LABEL_KEYS = {"tolerance": float, "stability_sizes": list, "stability_repeats": int}
SEED_TEST_KEYS = {"positives": list, "n_random": int}
SCAN_KEYS = {"holdout_fraction": float, "n_random": int, "n_estimators": int, "n_resamples": int}
TRANSFER_KEYS = {"n_seeds": int, "other_size_n_seeds": int, "other_size_n_train": int, "other_size_n_val": int, "init_scales": list}
DISCOVERY_KEYS = {"n_points": int, "step": float, "max_groups": int}
WIDTH_KEYS = {"widths": list, "n_seeds": int, "deep_hidden": list, "deep_n_seeds": int}
UNIT_KEYS = {"planted_width": int, "n_planted": int, "noise": float, "n_points": int}
SECTIONS = {"data": DATA_KEYS, "train": TRAIN_KEYS, "labels": LABEL_KEYS, "seed_test": SEED_TEST_KEYS, "scan": SCAN_KEYS,
            "transfer": TRANSFER_KEYS, "discovery": DISCOVERY_KEYS, "widths": WIDTH_KEYS, "units": UNIT_KEYS}
"""Every table an fma study file may hold (besides ``[study]``) and the keys it accepts."""
SEED_POSITIVES = [620240165, 2813536937]  # the seeds of the seed's two mode-3 networks (its experiment 10)


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
    clock = Clock()
    # One SeedSequence child per set of networks: no two sets can share an initialisation or a split.
    sets = {"width2": t["n_seeds"], "scan_random": sc["n_random"], "test_random": st["n_random"], "other_size": tr["other_size_n_seeds"],
            "uniform": tr["n_seeds"]}  # fmt: skip
    sets |= {f"init_scale_{k}": tr["n_seeds"] for k in range(len(tr["init_scales"]))}
    sets |= {f"width{w}": wd["n_seeds"] for w in wd["widths"]} | {"deep": wd["deep_n_seeds"]} | {"planted": 3}
    seeds = spawn_seeds(seed, sets)
    state: State = dict(
        spec=spec, out_dir=out_dir, progress=progress, clock=clock, d=d, disc_opts=disc_opts, dist=dist, lab=lab, n_res=n_res,
        opts=opts, plane=plane, report=report, sc=sc, seed=seed, seeds=seeds, st=st, t=t, tr=tr, un=un, wd=wd)
    for write_section in _SECTIONS:
        write_section(state)


def _write_timings(state: State) -> None:
    """The timings table; writes the report."""
    clock, out_dir, report = take(state, "clock", "out_dir", "report")
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


_SECTIONS: tuple[Callable[[State], None], ...] = (
    task.train_width2,  # the width-2 networks every later section reads
    task.run,  # §1 do the networks multiply?
    labels.run,  # §2 mechanism labels and their stability
    mechanisms.run,  # §3 the mechanisms and their losses
    discovery.run,  # §4 mechanisms found without labels
    scores.run,  # §5 the seed's mode-3 score and ours
    scan.run,  # §6 the algorithm scan on held-out seeds and independent recipes
    dynamics.run,  # §7 mechanisms during training
    wider.run,  # §8 wider networks and two hidden layers
    units.run,  # §9 which units do the work
    _write_timings,  # the timings table; writes the report
)
"""The report's sections in order; each reads what earlier ones left in the run's state."""


__all__ = ["run"]
