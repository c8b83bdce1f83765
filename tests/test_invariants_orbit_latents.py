"""The Siamese latent's analyses on planted towers and latents whose answer is known: a latent that is
exactly L, one that is the energy, and random ones."""

from __future__ import annotations

import numpy as np
import pytest
import sympy
import torch
from jaxtyping import Float
from numpy.testing import assert_allclose
from torch import Tensor

from physlens.models.siamese import SiameseConfig, SiameseTower
from physlens.probes.orbit_latents import (
    analyse_orbit_latent,
    conservation_drift,
    distil_orbit_latent,
    pair_accuracies,
    pure_latent_share,
    score_tower,
    tower_latent,
)
from physlens.systems.central import CentralPotentialSystem, angular_momentum, orbit_energy
from physlens.training.invariants import make_pairs


class AngularMomentumTower(SiameseTower):
    """A planted tower whose latent is exactly L = x·vy − y·vx."""

    def forward(self, states: Float[Tensor, "batch d_in"]) -> Float[Tensor, "batch d_latent"]:
        return angular_momentum(states)[:, None]


@pytest.fixture(scope="module")
def orbits():
    system = CentralPotentialSystem()
    return system.sample(200, 8, seed=0, random_times=True), system.sample(100, 8, seed=1, random_times=True)


@pytest.fixture(scope="module")
def states(orbits) -> Tensor:
    return orbits[1].states.reshape(-1, 4)


def test_exact_propagation_conserves_l_and_e() -> None:
    drift = conservation_drift(CentralPotentialSystem(), n_orbits=10, n_steps=100, seed=0)
    assert 0.0 <= drift.angular_momentum < 1e-10 and 0.0 <= drift.energy < 1e-10


def test_a_tower_that_computes_l_separates_orbits_and_a_random_one_does_not(orbits) -> None:
    train, test = orbits
    generator = torch.Generator().manual_seed(0)
    fit = make_pairs(train, 2000, generator=generator)
    pairs = {"random": make_pairs(test, 2000, generator=generator), "gap": make_pairs(test, 2000, generator=generator, min_gap=0.2)}
    planted, control = AngularMomentumTower(SiameseConfig(seed=0)), SiameseTower(SiameseConfig(d_hidden=8, seed=1)).eval()
    result = pair_accuracies(planted, control, fit, pairs)
    assert list(result.accuracy) == ["random", "gap"]
    assert result.accuracy["gap"] == 1.0  # pairs that differ by 0.2 in L are told apart without error
    assert result.accuracy["random"] > 0.95  # random different pairs may share L closely
    assert result.threshold < 0.2
    assert all(0.4 < value < 0.85 for value in result.control_accuracy.values())


def test_a_latent_that_is_l_is_found_to_be_l_and_not_e(states) -> None:
    L = angular_momentum(states.double()).numpy()
    E = orbit_energy(states.double()).numpy()
    noise = np.random.default_rng(0).normal(size=L.shape[0])
    analysis = analyse_orbit_latent(-403.0 * L, noise, states, degree=2, harmonics=2)
    assert analysis.regression.r2_ > 0.999999
    assert_allclose(analysis.coef_ratio, -1.0, atol=1e-6)
    assert analysis.match("L").linear_r2 > 0.999999 and analysis.match("E").linear_r2 < 0.1
    trained = analysis.invariant_r2["trained tower"]
    assert trained["L"] > 0.999999 and trained["E"] < 0.1 and trained["orientation"] < 0.1
    # the controls: a random latent explains nothing, the energy is E and not L
    control = analysis.invariant_r2["random-init tower (control)"]
    assert max(control.values()) < 0.1 and analysis.control_regression.r2_ < 0.1 and analysis.control_match_l.linear_r2 < 0.05
    energy = analysis.invariant_r2["energy-only latent (control)"]
    assert energy["E"] > 0.999999 and energy["L"] < 0.1
    assert_allclose(analysis.angular_momentum, L) and assert_allclose(analysis.energy, E)


def test_a_random_latent_is_found_to_be_no_invariant(states) -> None:
    L = angular_momentum(states.double()).numpy()
    noise = np.random.default_rng(1).normal(size=L.shape[0])
    analysis = analyse_orbit_latent(noise, L, states)
    assert max(analysis.invariant_r2["trained tower"].values()) < 0.1 and analysis.regression.r2_ < 0.1
    assert analysis.invariant_r2["random-init tower (control)"]["L"] > 0.999999  # the control slot scores what it is given


def test_distillation_writes_down_l_from_the_state_and_from_the_invariants(states) -> None:
    X = states.double().numpy()
    latent = 2.0 * angular_momentum(states.double()).numpy()
    formulas = distil_orbit_latent(latent, X, n_samples=300, max_terms=2, max_degree=2, unary=())
    x, y, vx, vy, L = sympy.symbols("x y vx vy L")
    assert formulas.of_state.expression_.free_symbols == {x, y, vx, vy}
    assert_allclose(formulas.of_state.predict(X), latent, atol=1e-6)
    assert formulas.of_invariants.expression_.free_symbols == {L}
    assert formulas.of_invariants.selected_.nmse < 1e-10
    with pytest.raises(ValueError, match="latent must have shape"):
        distil_orbit_latent(latent[:-1], X)
    with pytest.raises(ValueError, match="states must have shape"):
        distil_orbit_latent(latent, X[:, :3])


def test_tower_scores_and_the_share_of_pure_l_towers(orbits, states) -> None:
    train, test = orbits
    generator = torch.Generator().manual_seed(1)
    fit, held_out = make_pairs(train, 1000, generator=generator), make_pairs(test, 1000, generator=generator)
    X = states.double().numpy()
    planted, random_tower = AngularMomentumTower(SiameseConfig(seed=7)), SiameseTower(SiameseConfig(d_hidden=8, seed=3)).eval()
    assert_allclose(tower_latent(planted, states), angular_momentum(states).double().numpy())
    pure, impure = score_tower(planted, fit, held_out, X), score_tower(random_tower, fit, held_out, X)
    assert (pure.seed, impure.seed) == (7, 3)
    assert pure.r2["L"] > 0.999999 and pure.test_accuracy > 0.95
    assert impure.r2["L"] < 0.5 and impure.test_accuracy < 0.85
    share = pure_latent_share([pure, impure, impure, impure])
    assert share.estimate == 0.25 and share.low < 0.25 < share.high
    assert pure_latent_share([pure, impure], min_r2=-np.inf).estimate == 1.0
