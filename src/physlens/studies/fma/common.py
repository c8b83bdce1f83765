"""What every section of the F = m·a study shares: the run's state, its clock, training a set of
networks, and the formatting of intervals and AUCs in the report."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch

from physlens.models.mlp import EnsembleConfig, MLPEnsemble
from physlens.probes.discovery import MechanismDiscovery, function_fingerprints
from physlens.probes.scan import RocResult
from physlens.stats import Interval, median_interval
from physlens.studies.report import format_number
from physlens.systems.fma import FmaSplit, fma_splits
from physlens.training.ensemble import EnsembleTrainConfig, EnsembleTrainResult, train_ensemble

SEED_DATA_SIZE = (8000, 2000)  # the seed's training / validation points per network

State = dict[str, Any]
"""The run's shared state: the options, seeds and report, and what each section leaves for later ones."""


class Clock:
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


def take(state: State, *names: str) -> tuple[Any, ...]:
    """The values of ``names`` in a run's shared state, in order."""
    return tuple(state[name] for name in names)


def train_networks(
    seeds: list[int], opts: dict[str, dict[str, Any]], *, width: int = 2, distribution: str | None = None,
    n_train: int | None = None, n_val: int | None = None, init_scale: float = 1.0, snapshot_every: int = 0, progress: bool = False,
) -> tuple[EnsembleTrainResult, FmaSplit]:
    """Train one network per seed on its own split, by the study's ``[data]`` and ``[train]`` unless overridden."""
    d, t = opts["data"], opts["train"]
    data = fma_splits(seeds, distribution or d["distribution"], n_train=n_train or d["n_train"], n_val=n_val or d["n_val"], dtype=d["dtype"])
    ensemble = MLPEnsemble(EnsembleConfig(seeds=seeds, d_hidden=width, dtype=d["dtype"], device=d["device"], init_scale=init_scale))
    config = EnsembleTrainConfig(epochs=t["epochs"], lr=t["lr"], snapshot_every=snapshot_every, compile=t["compile"])
    return train_ensemble(ensemble, data, config, progress=progress), data


def cpu_params(result: EnsembleTrainResult) -> dict[str, torch.Tensor]:
    """The trained parameters, stacked over networks, in float64 on the CPU."""
    return {name: value.to("cpu", torch.float64) for name, value in result.ensemble.parameter_dict().items()}


def ci(interval: Interval, digits: int = 3) -> str:
    """An estimate with its interval."""
    return interval.format(digits)


def pct(interval: Interval) -> str:
    """A share with its interval, in percent."""
    return interval.format(3, percent=True)


def median_ci(values: np.ndarray, seed: int, n_resamples: int) -> str:
    """The median with its bootstrap interval (at least 200 resamples), or a dash for no values."""
    return ci(median_interval(values, seed=seed, n_resamples=max(n_resamples, 200))) if len(values) else "—"


def auc_cell(roc: RocResult | None) -> str:
    """An AUC with its bootstrap interval where it has one."""
    if roc is None:
        return "—"
    if roc.interval is None:
        return format_number(roc.auc, 3)
    return f"{roc.auc:.3f} [{roc.interval.low:.3f}, {roc.interval.high:.3f}]"


def discover(network: Any, distribution: str, opts: dict[str, Any], seed: int) -> tuple[np.ndarray, MechanismDiscovery]:
    """The networks' function fingerprints and the groups found in them, by the study's ``[discovery]``."""
    fingerprints = function_fingerprints(network, distribution, n_points=opts["n_points"], step=opts["step"], seed=seed)
    return fingerprints, MechanismDiscovery(max_groups=opts["max_groups"], random_state=seed).fit(fingerprints)
