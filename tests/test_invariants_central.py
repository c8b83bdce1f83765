"""The central-potential system: exact Kepler orbits conserve E and L and match an independent integrator."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.integrate import solve_ivp

from physlens.systems import (
    CONSERVATION_TOLERANCE,
    CentralPotentialSystem,
    OrbitTrajectories,
    angular_momentum,
    check_bound_orbits,
    orbit_energy,
    orbit_state,
    perihelion,
    propagate_orbit,
)


def _kepler_rhs(_t: float, state: np.ndarray) -> list[float]:
    x, y, vx, vy = state
    r3 = (x * x + y * y) ** 1.5
    return [vx, vy, -x / r3, -y / r3]


def test_sampled_orbits_conserve_energy_and_angular_momentum(seed: int) -> None:
    orbits = CentralPotentialSystem(dtype="float64").sample(64, 200, seed=seed)
    for values in (orbits.energy, orbits.angular_momentum):
        drift = (values - values[:, :1]).abs().max() / values.abs().max()
        assert float(drift) < CONSERVATION_TOLERANCE


def test_propagation_matches_an_independent_high_order_integrator(seed: int) -> None:
    orbits = CentralPotentialSystem(dtype="float64", min_perihelion=0.3).sample(4, 60, seed=seed)
    for i in range(len(orbits)):
        times = (orbits.times[i] - orbits.times[i, 0]).numpy()
        reference = solve_ivp(
            _kepler_rhs, (0, times[-1]), orbits.states[i, 0].numpy(), t_eval=times, method="DOP853", rtol=1e-12, atol=1e-12
        )
        np.testing.assert_allclose(orbits.states[i].numpy(), reference.y.T, atol=1e-8)


def test_circular_orbit_is_a_rotation_with_period_two_pi() -> None:
    start = torch.tensor([[1.0, 0.0, 0.0, 1.0]], dtype=torch.float64)
    times = torch.tensor([0.0, math.pi / 2, math.pi, 2 * math.pi, 7.3], dtype=torch.float64)
    states = propagate_orbit(start, times)[0]
    expected = torch.stack([torch.cos(times), torch.sin(times), -torch.sin(times), torch.cos(times)], dim=-1)
    torch.testing.assert_close(states, expected, atol=1e-12, rtol=0)


def test_orbit_state_has_the_requested_invariants_and_perihelion() -> None:
    energy = torch.tensor([-0.5, -0.4, -0.7], dtype=torch.float64)
    ang = torch.tensor([0.8, -1.0, 0.3], dtype=torch.float64)
    state = orbit_state(energy, ang, torch.tensor([0.0, 1.0, 2.5], dtype=torch.float64))
    torch.testing.assert_close(orbit_energy(state), energy)
    torch.testing.assert_close(angular_momentum(state), ang)
    radius = torch.linalg.vector_norm(state[:, :2], dim=-1)
    torch.testing.assert_close(radius, perihelion(energy, ang))


def test_random_times_cover_one_period_and_labels_are_per_orbit(seed: int) -> None:
    orbits = CentralPotentialSystem(dtype="float64").sample(8, 30, seed=seed, random_times=True)
    labels = orbits.labels()
    assert set(labels) == {"angular_momentum", "energy", "semi_major_axis", "eccentricity", "period"}
    assert bool((orbits.times >= 0).all()) and bool((orbits.times <= labels["period"][:, None]).all())
    assert bool((orbits.times.diff(dim=1) >= 0).all())
    torch.testing.assert_close(labels["semi_major_axis"], -1 / (2 * labels["energy"]))


def test_sampling_respects_ranges_and_is_reproducible(seed: int) -> None:
    system = CentralPotentialSystem(energy_range=(-0.7, -0.4), angular_momentum_range=(0.3, 1.0), min_perihelion=0.15)
    first = system.sample(300, 3, seed=seed)
    again = system.sample(300, 3, seed=seed)
    torch.testing.assert_close(first.states, again.states)
    labels = {k: v.double() for k, v in first.labels().items()}
    assert labels["energy"].min() >= -0.7 - 1e-5 and labels["energy"].max() <= -0.4 + 1e-5
    assert labels["angular_momentum"].abs().min() >= 0.3 - 1e-5 and labels["angular_momentum"].abs().max() <= 1.0 + 1e-5
    assert bool((labels["angular_momentum"] > 0).any()) and bool((labels["angular_momentum"] < 0).any())
    assert float(perihelion(labels["energy"], labels["angular_momentum"]).min()) >= 0.15 - 1e-5
    assert first.states.dtype == torch.float32


def test_unbound_orbits_are_refused() -> None:
    escaping = torch.tensor([[1.0, 0.0, 0.0, 1.5]], dtype=torch.float64)  # E = 1.125 − 1 > 0
    with pytest.raises(ValueError, match="bound orbits"):
        propagate_orbit(escaping, torch.tensor([0.0, 1.0]))
    parabolic = torch.tensor([[1.0, 0.0, 0.0, math.sqrt(2.0)]], dtype=torch.float64)  # E = 0
    with pytest.raises(ValueError, match="E = "):
        check_bound_orbits(parabolic, 0.01)
    with pytest.raises(ValueError, match="energy_range"):
        CentralPotentialSystem(energy_range=(-0.5, 0.1))


def test_colliding_orbits_are_refused() -> None:
    radial = torch.tensor([[1.0, 0.0, -0.3, 0.0]], dtype=torch.float64)  # L = 0
    with pytest.raises(ValueError, match="collide"):
        propagate_orbit(radial, torch.tensor([0.0, 1.0]))
    grazing = torch.tensor([[1.0, 0.0, 0.0, 0.2]], dtype=torch.float64)  # perihelion ≈ 0.02
    with pytest.raises(ValueError, match="min_perihelion"):
        propagate_orbit(grazing, torch.tensor([0.0]), min_perihelion=0.1)
    with pytest.raises(ValueError, match="angular_momentum_range"):
        CentralPotentialSystem(angular_momentum_range=(0.0, 1.0))
    with pytest.raises(ValueError, match="closer than min_perihelion"):
        CentralPotentialSystem(energy_range=(-0.8, -0.7), angular_momentum_range=(0.05, 0.1), min_perihelion=0.5)


@pytest.mark.unchecked_types
def test_non_finite_and_malformed_states_are_refused() -> None:
    bad = torch.tensor([[1.0, float("nan"), 0.0, 1.0]], dtype=torch.float64)
    with pytest.raises(ValueError, match="finite"):
        propagate_orbit(bad, torch.tensor([0.0]))
    with pytest.raises(ValueError, match="finite"):
        propagate_orbit(torch.tensor([[1.0, 0.0, 0.0, 1.0]]), torch.tensor([0.0, float("inf")]))
    with pytest.raises(ValueError, match=r"\[traj, 4\]"):
        propagate_orbit(torch.ones(2, 3), torch.tensor([0.0]))
    with pytest.raises(ValueError, match="origin"):
        check_bound_orbits(torch.tensor([[0.0, 0.0, 0.1, 0.1]]), 0.1)
    with pytest.raises(ValueError, match="last dimension of 4"):
        angular_momentum(torch.ones(3, 2))
    with pytest.raises(ValueError, match="exactly one of seed"):
        CentralPotentialSystem().sample(2, 2)
    with pytest.raises(ValueError, match="times"):
        OrbitTrajectories(torch.ones(2, 3, 4), torch.ones(2, 4))


def test_orbit_state_refuses_impossible_invariants() -> None:
    with pytest.raises(ValueError, match="energy must be < 0"):
        orbit_state(torch.tensor([0.1]), torch.tensor([1.0]), torch.tensor([0.0]))
    with pytest.raises(ValueError, match="nonzero"):
        orbit_state(torch.tensor([-0.5]), torch.tensor([0.0]), torch.tensor([0.0]))
    with pytest.raises(ValueError, match="circular-orbit"):
        orbit_state(torch.tensor([-0.5]), torch.tensor([1.5]), torch.tensor([0.0]))


def test_system_round_trips_through_its_dict() -> None:
    system = CentralPotentialSystem(energy_range=(-0.6, -0.3), dt=0.05)
    assert CentralPotentialSystem(**system.to_dict()) == system
