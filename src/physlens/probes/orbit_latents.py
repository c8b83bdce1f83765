"""What a Siamese tower's latent is on Kepler orbits: pair accuracy beside a random-init tower, the
latent regressed on the state and on every conserved quantity beside controls, and its formula."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from physlens.models.siamese import SiameseTower
from physlens.probes.invariants import (
    PolynomialLatentRegression,
    QuantityMatch,
    conserved_quantity_r2,
    match_quantities,
    orbit_invariants,
)
from physlens.probes.symbolic import SymbolicDistiller
from physlens.stats import Interval, proportion_interval
from physlens.systems.central import ORBIT_STATE_NAMES, CentralPotentialSystem, angular_momentum, orbit_energy
from physlens.training.invariants import StatePairs, best_threshold, pair_accuracy

PURE_L_R2 = 0.99
"""Held-out R² against L from which :func:`pure_latent_share` counts a latent as pure L."""

INVARIANT_CANDIDATES = ("L", "E", "e", "cos1φ", "sin1φ")
"""The conserved quantities :func:`distil_orbit_latent` writes the latent in (its second formula)."""


@dataclass(frozen=True)
class ConservationDrift:
    """Largest change of each conserved quantity along exactly propagated orbits (float64)."""

    angular_momentum: float
    """max |L(t) − L(0)| over every orbit and step."""
    energy: float
    """max |E(t) − E(0)| over every orbit and step."""


def conservation_drift(system: CentralPotentialSystem, *, n_orbits: int = 50, n_steps: int = 200, seed: int = 0) -> ConservationDrift:
    """How far L and E drift along ``n_orbits`` orbits of ``system`` propagated ``n_steps`` steps in
    float64: ≈ 1e-14 for an exact propagator, whatever the system's own dtype."""
    exact = CentralPotentialSystem(**{**system.to_dict(), "dtype": "float64"}).sample(n_orbits, n_steps, seed=seed)
    return ConservationDrift(
        angular_momentum=float((exact.angular_momentum - exact.angular_momentum[:, :1]).abs().max()),
        energy=float((exact.energy - exact.energy[:, :1]).abs().max()),
    )


@dataclass(frozen=True)
class PairAccuracies:
    """Same-orbit accuracy of a tower and of its random-init control on named sets of pairs."""

    threshold: float
    """The tower's latent-distance threshold, chosen on the fitting pairs."""
    accuracy: dict[str, float]
    """The tower's accuracy on each named set of pairs."""
    control_threshold: float
    """The control's threshold, chosen on the same fitting pairs."""
    control_accuracy: dict[str, float]
    """The control's accuracy on each named set of pairs."""


def pair_accuracies(
    tower: SiameseTower, control: SiameseTower, fit_pairs: StatePairs, pairs: Mapping[str, StatePairs]
) -> PairAccuracies:
    """Accuracy of ``tower`` and of ``control`` (e.g. an untrained tower of the same architecture) on
    each of ``pairs``, each thresholded on its latent distance at the threshold that is best on
    ``fit_pairs``. A tower whose latent is an invariant of the orbit scores 1 on pairs that differ
    in it; half of the pairs share an orbit, so guessing scores 0.5."""
    threshold = best_threshold(tower, fit_pairs)
    accuracy = {name: pair_accuracy(tower, p, threshold) for name, p in pairs.items()}
    control_threshold = best_threshold(control, fit_pairs)
    control_accuracy = {name: pair_accuracy(control, p, control_threshold) for name, p in pairs.items()}
    return PairAccuracies(threshold, accuracy, control_threshold, control_accuracy)


def tower_latent(tower: SiameseTower, states: Float[Tensor, "n 4"]) -> np.ndarray:
    """The tower's (first) latent of each state, as float64 numbers."""
    with torch.no_grad():
        return tower(states)[:, 0].double().numpy()


@dataclass(frozen=True)
class OrbitLatentAnalysis:
    """A latent over orbit states, explained by the state and by the orbit's conserved quantities."""

    regression: PolynomialLatentRegression
    """The latent regressed on monomials of (x, y, vx, vy)."""
    coef_ratio: float
    """Coefficient of x·vy over that of y·vx: −1 for a latent ∝ L = x·vy − y·vx."""
    matches: list[QuantityMatch]
    """The latent against L, E, L², E·L² and |L|, best isotonic R² first."""
    control_regression: PolynomialLatentRegression
    """The control latent regressed on the same monomials."""
    control_match_l: QuantityMatch
    """The control latent against L."""
    invariant_r2: dict[str, dict[str, float]]
    """Held-out R² on each set of :data:`~physlens.probes.invariants.ORBIT_FEATURE_SETS`, for the
    latent (``"trained tower"``), the control (``"random-init tower (control)"``) and the energy
    alone (``"energy-only latent (control)"``)."""
    angular_momentum: np.ndarray
    """L of each state."""
    energy: np.ndarray
    """E of each state."""

    def match(self, name: str) -> QuantityMatch:
        """The match of the latent with candidate ``name`` ("L", "E", "L²", "E·L²" or "|L|")."""
        return next(m for m in self.matches if m.name == name)


def analyse_orbit_latent(
    latent: np.ndarray, control_latent: np.ndarray, states: Float[Tensor, "n 4"], *, degree: int = 2, harmonics: int = 3
) -> OrbitLatentAnalysis:
    """Which function of the orbit state ``latent`` [n] is, beside ``control_latent`` [n] (e.g. an
    untrained tower's): its polynomial regression (degree ``degree``) on the states [n, 4], its match
    with L, E and their combinations, and its held-out R² against each conserved quantity (with
    ``harmonics`` harmonics of the orientation) beside the control's and the energy's own.

    A latent ∝ L gives R² ≈ 1 against L and a coefficient ratio of −1; one of the energy, ≈ 1 against E.
    """
    X = states.double().numpy()
    ang = angular_momentum(states.double()).numpy()
    energy = orbit_energy(states.double()).numpy()
    regression = PolynomialLatentRegression(degree=degree, feature_names=ORBIT_STATE_NAMES).fit(X, latent)
    ratio = regression.coefficient("x*vy") / regression.coefficient("y*vx")
    matches = match_quantities(latent, {"L": ang, "E": energy, "L²": ang**2, "E·L²": energy * ang**2, "|L|": np.abs(ang)})
    control_regression = PolynomialLatentRegression(degree=regression.degree, feature_names=ORBIT_STATE_NAMES).fit(X, control_latent)
    control_match_l = match_quantities(control_latent, {"L": ang})[0]
    invariant_r2 = {
        "trained tower": conserved_quantity_r2(latent, X, harmonics=harmonics),
        "random-init tower (control)": conserved_quantity_r2(control_latent, X, harmonics=harmonics),
        "energy-only latent (control)": conserved_quantity_r2(energy, X, harmonics=harmonics),
    }
    return OrbitLatentAnalysis(regression, ratio, matches, control_regression, control_match_l, invariant_r2, ang, energy)


@dataclass(frozen=True)
class LatentFormulas:
    """Compact formulas for a latent: of the state, and of the orbit's conserved quantities."""

    of_state: SymbolicDistiller
    """Fitted on (x, y, vx, vy)."""
    of_invariants: SymbolicDistiller
    """Fitted on :data:`INVARIANT_CANDIDATES` (L, E, e, cos φ, sin φ)."""


def distil_orbit_latent(latent: np.ndarray, states: np.ndarray, *, n_samples: int = 2000, **distiller_args: Any) -> LatentFormulas:
    """Distil ``latent`` [n] as a function of the states [n, 4] and, separately, of their conserved
    quantities, on ``n_samples`` states evenly spaced through the sample. ``distiller_args`` go to
    :class:`~physlens.probes.symbolic.SymbolicDistiller` (``max_terms``, ``max_degree``, ``unary``)."""
    if states.ndim != 2 or states.shape[1] != 4:
        raise ValueError(f"states must have shape [n, 4] (x, y, vx, vy), got {list(states.shape)}")
    if latent.shape != (states.shape[0],):
        raise ValueError(f"latent must have shape [{states.shape[0]}] (one value per state), got {list(latent.shape)}")
    if n_samples < 1:
        raise ValueError(f"n_samples must be a positive integer, got {n_samples}")
    n = min(n_samples, states.shape[0])
    rows = np.linspace(0, states.shape[0] - 1, n).astype(int)
    of_state = SymbolicDistiller(variable_names=list(ORBIT_STATE_NAMES), **distiller_args).fit(states[rows], latent[rows])
    quantities = orbit_invariants(states, harmonics=1)
    candidates = np.stack([quantities[name] for name in INVARIANT_CANDIDATES], axis=1)
    of_invariants = SymbolicDistiller(variable_names=["L", "E", "e", "cos_phi", "sin_phi"], **distiller_args).fit(
        candidates[rows], latent[rows])
    return LatentFormulas(of_state, of_invariants)


@dataclass(frozen=True)
class TowerScore:
    """One tower's same-orbit accuracy and what its latent is."""

    seed: int
    """The tower's seed."""
    test_accuracy: float
    """Accuracy on the test pairs."""
    r2: dict[str, float]
    """Held-out R² of its latent on each set of :data:`~physlens.probes.invariants.ORBIT_FEATURE_SETS`."""


def score_tower(tower: SiameseTower, fit_pairs: StatePairs, test_pairs: StatePairs, states: np.ndarray, *, harmonics: int = 3) -> TowerScore:
    """Accuracy of ``tower`` on ``test_pairs`` (threshold chosen on ``fit_pairs``) and the held-out R²
    of its latent on the states [n, 4] against each conserved quantity."""
    threshold = best_threshold(tower, fit_pairs)
    accuracy = pair_accuracy(tower, test_pairs, threshold)
    latent = tower_latent(tower, torch.from_numpy(states).to(next(tower.parameters()).dtype))
    return TowerScore(tower.cfg.seed, accuracy, conserved_quantity_r2(latent, states, harmonics=harmonics))


def pure_latent_share(scores: Sequence[TowerScore], *, min_r2: float = PURE_L_R2) -> Interval:
    """The share of towers whose latent is pure L (held-out R² against L ≥ ``min_r2``), with its
    Wilson 95 % interval."""
    pure = sum(score.r2["L"] >= min_r2 for score in scores)
    return proportion_interval(int(pure), len(scores))


__all__ = [
    "INVARIANT_CANDIDATES",
    "PURE_L_R2",
    "ConservationDrift",
    "LatentFormulas",
    "OrbitLatentAnalysis",
    "PairAccuracies",
    "TowerScore",
    "analyse_orbit_latent",
    "conservation_drift",
    "distil_orbit_latent",
    "pair_accuracies",
    "pure_latent_share",
    "score_tower",
    "tower_latent",
]
