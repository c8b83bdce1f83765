"""The calibration table: every oscillator analysis run on organisms whose answer is planted, over seeds.

For each analysis × organism the table gives the planted answer, the analysis's verdict at every seed,
its power (the share of seeds on which the verdict is right) and its false-positive rate (the share of
seeds on which it claims a finding the organism does not have). The docs table is this function's
output, not typed. Analyses:

- ``algorithm match`` (:func:`~physlens.probes.identify_algorithm`): the verdict is a candidate or
  ``"none"``; a named candidate other than the planted one is a false positive.
- ``implied ω0`` (:func:`~physlens.probes.implied_parameters`): claims "the predictions carry ω0" when the
  implied ω0's R² against the true ω0 is at least :data:`CARRIES_OMEGA0_R2`.
- ``context swap`` (:func:`~physlens.probes.context_swap_test`): claims "the prediction moves with ω0
  with the final state fixed" when the slope's interval lies above 0. It measures whether the context
  changes the prediction as ω0 does, which finite differences over 3 states do as well as least squares.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from physlens._validation import check_nonnegative_int, check_positive_int
from physlens.models.organisms import (
    ARFilterOrganism,
    BlendOrganism,
    ContextBlindOrganism,
    FiniteDifferenceOrganism,
    LeastSquaresOrganism,
    check_noise,
)
from physlens.probes.algorithm_match import (
    AR_FAMILY,
    CONTEXT_BLIND_FAMILY,
    DEFAULT_SIGMAS,
    FINITE_DIFFERENCE_FAMILY,
    LEAST_SQUARES_FAMILY,
    NO_MATCH,
    build_candidates,
    candidate_name,
    evaluate_candidates,
    identify_algorithm,
)
from physlens.probes.context_swap import context_swap_test
from physlens.probes.implied import implied_parameters
from physlens.systems.oscillator import OscillatorSystem

CARRIES_OMEGA0_R2 = 0.9
"""The implied-ω0 readout claims "the predictions carry ω0" when R²(implied ω0, true ω0) reaches this."""

CALIBRATED_ANALYSES = ("algorithm match", "implied ω0", "context swap")
"""The analyses the table calibrates, in its row order."""


@dataclass(frozen=True)
class PlantedOrganism:
    """An organism with its planted answers: the candidate it is (or ``"none"``) and whether it reads ω0 from the context."""

    name: str
    organism: torch.nn.Module
    algorithm: str  # the candidate name the algorithm match should return, or "none"
    reads_omega0: bool  # whether its predictions depend on the context's ω0


def planted_organisms(system: OscillatorSystem, *, seed: int, noise: float = 0.003, n_ctx: int = 40,
                      ar_window: int = 10) -> list[PlantedOrganism]:
    """The organisms of the table, with ``seed`` fixing their observation noise and the AR filter's fit:
    least squares over 5 and over 20 states with relative observation noise ``noise``, the AR-``ar_window``
    filter (fitted on its own trajectories), finite differences, the context-blind step with the mean ω0,
    and the blend of least squares over 5 and 20 states (no candidate)."""
    seed = check_nonnegative_int("seed", seed)
    noise = check_noise("noise", noise)
    dt = system.dt
    ls5 = LeastSquaresOrganism(5, noise=noise, seed=seed, n_ctx=n_ctx, dt=dt)
    ls20 = LeastSquaresOrganism(20, noise=noise, seed=seed + 1, n_ctx=n_ctx, dt=dt)
    percent = f"{100 * noise:g} % noise"
    return [
        PlantedOrganism(f"least squares k=5, {percent}", ls5, candidate_name(LEAST_SQUARES_FAMILY, 5), True),
        PlantedOrganism(f"least squares k=20, {percent}", ls20, candidate_name(LEAST_SQUARES_FAMILY, 20), True),
        PlantedOrganism(f"AR k={ar_window} (own fit)", ARFilterOrganism.fit(system, ar_window, fit_seed=10_000 + seed, n_ctx=n_ctx),
                        candidate_name(AR_FAMILY, ar_window), True),
        PlantedOrganism("finite differences", FiniteDifferenceOrganism.from_system(system, n_ctx=n_ctx), FINITE_DIFFERENCE_FAMILY, True),
        PlantedOrganism("context-blind (mean ω0)", ContextBlindOrganism.from_system(system, n_ctx=n_ctx), CONTEXT_BLIND_FAMILY, False),
        PlantedOrganism("blend of least squares k=5 and k=20", BlendOrganism(
            LeastSquaresOrganism(5, n_ctx=n_ctx, dt=dt), LeastSquaresOrganism(20, n_ctx=n_ctx, dt=dt), n_ctx=n_ctx, dt=dt), NO_MATCH, True),
    ]


@dataclass
class CalibrationRow:
    """One analysis on one organism over several seeds."""

    analysis: str
    organism: str
    planted: str  # the right answer
    verdicts: list[str]  # the analysis's answer per seed
    right: list[bool]  # per seed: the answer is the planted one
    false_positive: list[bool]  # per seed: the answer claims a finding the organism does not have
    detail: list[dict[str, Any]]  # per seed: the numbers behind the verdict

    @property
    def power(self) -> float:
        """Share of seeds with the right answer."""
        return float(np.mean(self.right))

    @property
    def false_positive_rate(self) -> float:
        """Share of seeds on which the analysis claimed something false."""
        return float(np.mean(self.false_positive))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {"analysis": self.analysis, "organism": self.organism, "planted": self.planted, "verdicts": self.verdicts,
                "right": self.right, "false_positive": self.false_positive, "power": self.power,
                "false_positive_rate": self.false_positive_rate, "detail": self.detail}


@dataclass
class CalibrationTable:
    """Rows for every analysis × organism, and the settings that produced them."""

    rows: list[CalibrationRow]
    seeds: list[int]
    settings: dict[str, Any]

    @property
    def all_right(self) -> bool:
        """True when every analysis gave the planted answer on every organism at every seed."""
        return all(all(row.right) for row in self.rows)

    def markdown(self) -> str:
        """The table as Markdown, for the docs."""
        lines = ["| analysis | organism | planted answer | verdicts | power | false-positive rate |", "|---|---|---|---|---|---|"]
        for row in self.rows:
            verdicts = ", ".join(dict.fromkeys(row.verdicts))
            lines.append(f"| {row.analysis} | {row.organism} | {row.planted} | {verdicts} | "
                         f"{sum(row.right)}/{len(row.right)} | {sum(row.false_positive)}/{len(row.false_positive)} |")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {"rows": [row.to_dict() for row in self.rows], "seeds": self.seeds, "settings": self.settings,
                "all_right": self.all_right}


def calibrate_analyses(system: OscillatorSystem, seeds: Sequence[int], *, n_trajectories: int = 64, context_length: int = 40,
                       context_lengths: Sequence[int] | None = None, sigmas: Sequence[float] = DEFAULT_SIGMAS,
                       noise: float = 0.003, n_swap_pairs: int = 32, swap_context: int = 12,
                       n_resamples: int = 300) -> CalibrationTable:
    """Run every analysis of :data:`CALIBRATED_ANALYSES` on every organism of :func:`planted_organisms`, once per seed.

    Each seed draws fresh evaluation trajectories (``n_trajectories`` contexts of ``context_length``
    states), a fresh noise draw, fresh AR candidate fits, fresh organism noise and a fresh AR organism
    fit. ``context_lengths`` are the k of the least-squares and AR candidates (default 2 … context_length).
    """
    seeds = [check_nonnegative_int("seeds", s) for s in seeds]
    if not seeds:
        raise ValueError("seeds must hold at least one seed")
    context_length = check_positive_int("context_length", context_length)
    ks = list(range(2, context_length + 1)) if context_lengths is None else sorted(set(context_lengths))
    system64 = OscillatorSystem(**{**system.to_dict(), "dtype": "float64", "device": "cpu"})
    cells: dict[tuple[str, str], CalibrationRow] = {}
    for seed in seeds:
        base = 1000 * seed
        candidates = evaluate_candidates(build_candidates(system64, ks, seed=base + 1, n_ctx=context_length),
                                         system64.sample(n_trajectories, context_length + 1, seed=base + 2), sigmas, seed=base + 3)
        readout_data = system64.sample(n_trajectories, context_length, seed=base + 4)
        swap_a, swap_b = system64.sample_swap_pairs(n_swap_pairs, swap_context, seed=base + 5)
        for planted in planted_organisms(system64, seed=seed, noise=noise, n_ctx=context_length):
            match = identify_algorithm(planted.organism, candidates)
            readout = implied_parameters(planted.organism, readout_data)
            swap = context_swap_test(planted.organism, swap_a, swap_b, seed=base + 6, n_resamples=n_resamples)
            carries = bool(readout.omega0_r2 >= CARRIES_OMEGA0_R2)
            moves = bool(swap.slope.low > 0)
            outcomes = {
                "algorithm match": (planted.algorithm, match.verdict, match.verdict == planted.algorithm,
                                    match.verdict not in (planted.algorithm, NO_MATCH),
                                    {"distance": match.distance[match.best], "map_distance": match.map_match[match.best],
                                     "best": match.best, "runner_up": match.runner_up()[0], "runner_up_distance": match.runner_up()[1]}),
                "implied ω0": (_carries(planted.reads_omega0), _carries(carries), carries == planted.reads_omega0,
                               carries and not planted.reads_omega0, readout.to_dict()),
                "context swap": (_moves(planted.reads_omega0), _moves(moves), moves == planted.reads_omega0,
                                 moves and not planted.reads_omega0, swap.to_dict()),
            }
            for analysis in CALIBRATED_ANALYSES:
                expected, verdict, right, false_positive, detail = outcomes[analysis]
                row = cells.setdefault((analysis, planted.name), CalibrationRow(analysis, planted.name, expected, [], [], [], []))
                row.verdicts.append(verdict)
                row.right.append(bool(right))
                row.false_positive.append(bool(false_positive))
                row.detail.append(detail)
    rows = sorted(cells.values(), key=lambda row: CALIBRATED_ANALYSES.index(row.analysis))
    settings = {"system": system64.to_dict(), "n_trajectories": n_trajectories, "context_length": context_length,
                "context_lengths": ks, "sigmas": list(sigmas), "noise": noise, "n_swap_pairs": n_swap_pairs,
                "swap_context": swap_context, "carries_omega0_r2": CARRIES_OMEGA0_R2}
    return CalibrationTable(rows, seeds, settings)


def _carries(value: bool) -> str:
    return "carries ω0" if value else "no ω0"


def _moves(value: bool) -> str:
    return "moves with ω0" if value else "does not move"


__all__ = ["CALIBRATED_ANALYSES", "CARRIES_OMEGA0_R2", "CalibrationRow", "CalibrationTable", "PlantedOrganism", "calibrate_analyses",
           "planted_organisms"]
