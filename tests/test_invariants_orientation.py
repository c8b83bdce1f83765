"""Conserved quantities of Kepler orbits beyond L: the Runge–Lenz vector, the R² of a latent against
L, E and the orbit's orientation on planted latents, and the energy-only pair-accuracy control."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from physlens.probes.invariants import ORBIT_FEATURE_SETS, conserved_quantity_r2, orbit_invariants
from physlens.systems.central import CentralPotentialSystem, angular_momentum, orbit_energy, runge_lenz
from physlens.training.invariants import make_pairs, quantity_pair_accuracy


@pytest.fixture(scope="module")
def orbits():
    return CentralPotentialSystem(dtype="float64").sample(300, 12, seed=4, random_times=True)


def test_runge_lenz_is_conserved_and_its_length_is_the_eccentricity(orbits):
    vector = runge_lenz(orbits.states)
    assert (vector - vector[:, :1]).abs().max() < 1e-9
    e = torch.sqrt(1 + 2 * orbit_energy(orbits.states) * angular_momentum(orbits.states) ** 2)
    assert torch.allclose(vector.norm(dim=-1), e, atol=1e-9)


@pytest.mark.unchecked_types  # a 3-component state on purpose, to check physlens's own message
def test_runge_lenz_refuses_states_that_are_not_orbit_states():
    with pytest.raises(ValueError):
        runge_lenz(torch.zeros(3, 3))


def test_planted_latents_are_told_apart(orbits, rng):
    states = orbits.states.reshape(-1, 4).numpy()
    q = orbit_invariants(states, harmonics=3)
    pure = -3.0 * q["L"] + 0.5 + 1e-4 * rng.standard_normal(len(states))
    scores = conserved_quantity_r2(pure, states)
    assert set(scores) == set(ORBIT_FEATURE_SETS)
    assert scores["L"] > 0.999 and scores["E"] < 0.2 and scores["orientation"] < 0.2
    mixed = q["L"] + 0.3 * q["cos1φ"] * q["e"] + 0.2 * q["sin2φ"]
    scores = conserved_quantity_r2(mixed, states)
    assert scores["L"] < 0.95  # L alone does not explain a latent that also reads the orientation
    assert scores["(L, e) × orientation"] > 0.999 and scores["(L, e) × orientation"] > scores["L + orientation"] > scores["L"]
    energy = conserved_quantity_r2(q["E"], states)
    assert energy["E"] > 0.999 and energy["L"] < 0.2


def test_an_energy_latent_separates_random_pairs_as_well_as_l(orbits):
    generator = torch.Generator().manual_seed(0)
    fit, test = (make_pairs(orbits, 4000, generator=generator) for _ in range(2))
    by_energy = quantity_pair_accuracy(orbit_energy, fit, test)
    by_l = quantity_pair_accuracy(angular_momentum, fit, test)
    assert by_energy > 0.95 and by_l > 0.95  # accuracy cannot say which invariant a latent holds
    assert quantity_pair_accuracy(lambda s: s[:, 0] * 0, fit, test) == pytest.approx(0.5, abs=0.03)  # control: nothing
    assert quantity_pair_accuracy(lambda s: s[:, 0], fit, test) < 0.8  # x is not conserved


def test_bad_input_is_refused(orbits):
    states = orbits.states.reshape(-1, 4).numpy()
    with pytest.raises(ValueError, match="harmonics"):
        orbit_invariants(states, harmonics=0)
    with pytest.raises(ValueError, match="states"):
        conserved_quantity_r2(np.zeros(10), np.zeros((10, 3)))
    with pytest.raises(ValueError, match="same length"):
        conserved_quantity_r2(np.zeros(9), states[:10])
    with pytest.raises(TypeError, match="quantity"):
        quantity_pair_accuracy(3.0, None, None)
    generator = torch.Generator().manual_seed(0)
    with pytest.raises(ValueError, match="min_gap"):
        make_pairs(orbits, 10, generator=generator, min_gap=-0.1)
