"""The ω0 implied by one predicted step: exact for the exact step (checked against scipy's expm), and
a patching metric that reads 1 for the clean run and 0 for the corrupted one."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from numpy.testing import assert_allclose
from scipy.linalg import expm

from physlens.models.reference import ExactStep, InContextLeastSquares
from physlens.probes.implied_step import implied_omega0_from_step, implied_omega0_metric, implied_omega0_of_model
from physlens.systems import OscillatorSystem, Uniform


def test_the_exact_step_implies_the_true_frequency() -> None:
    rng = np.random.default_rng(0)
    omega0 = rng.uniform(1, 4, size=50)
    states = rng.normal(size=(50, 2))
    landed = np.stack([expm(np.array([[0, 1], [-w**2, -0.2]]) * 0.1) @ s for w, s in zip(omega0, states)])  # γ = 0.1
    found = implied_omega0_from_step(torch.tensor(states), torch.tensor(landed), gamma=0.1, dt=0.1)
    assert_allclose(found.numpy(), omega0, atol=1e-7)


def test_a_model_that_infers_the_frequency_from_context_implies_it() -> None:
    traj = OscillatorSystem(omega0=Uniform(1.0, 4.0), dtype="float64").sample(40, 12, seed=3)
    found = implied_omega0_of_model(InContextLeastSquares(), traj.states, gamma=0.1, dt=0.1)
    assert_allclose(found.numpy(), traj.omega0.numpy(), atol=1e-6)


def test_the_patching_metric_reads_clean_as_one_and_corrupted_as_zero() -> None:
    system = OscillatorSystem(omega0=Uniform(1.0, 4.0), dtype="float64")
    a, b = system.sample_swap_pairs(30, 10, seed=1)
    model = InContextLeastSquares()
    metric = implied_omega0_metric(model, a.states, b.states, gamma=0.1, dt=0.1)
    assert_allclose(metric(model(a.states)).numpy(), 1.0, atol=1e-6)
    assert_allclose(metric(model(b.states)).numpy(), 0.0, atol=1e-6)
    # halfway: a prediction stepped with the mean of the two frequencies recovers about half
    middle = ExactStep((a.omega0 + b.omega0) / 2, a.gamma, 0.1)(a.states)
    assert_allclose(metric(middle).numpy(), 0.5, atol=0.02)


def test_a_context_blind_model_is_refused_for_it_has_nothing_to_recover() -> None:
    system = OscillatorSystem(omega0=Uniform(1.0, 4.0), dtype="float64")
    a, b = system.sample_swap_pairs(10, 10, seed=1)
    blind = ExactStep(torch.full((10,), 2.5, dtype=torch.float64), torch.full((10,), 0.1, dtype=torch.float64), 0.1)
    with pytest.raises(ValueError, match="within min_gap"):
        implied_omega0_metric(blind, a.states, b.states, gamma=0.1, dt=0.1)


@pytest.mark.unchecked_types  # passes [batch, 3] states on purpose, to check physlens's own message
@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"omega_range": (0.5, 0.2)}, "omega_range"), ({"omega_range": (0.05, 2.0)}, "omega_range"), ({"dt": -1.0}, "dt"), ({"grid": 0}, "grid")],
)
def test_bad_arguments_are_named(kwargs, message) -> None:
    args = {"gamma": 0.1, "dt": 0.1} | kwargs
    with pytest.raises(ValueError, match=message):
        implied_omega0_from_step(torch.zeros(3, 2), torch.zeros(3, 2), **args)
    with pytest.raises(ValueError, match=r"\[batch, 2\]"):
        implied_omega0_from_step(torch.zeros(3, 3), torch.zeros(3, 3), gamma=0.1, dt=0.1)


def test_implied_patching_finds_the_planted_channel_and_nothing_else() -> None:
    from physlens.probes.implied_step import implied_omega0_patching
    from physlens.probes.planted import make_organism, omega0_system

    organism = make_organism("planted", n_ctx=16, seed=0)  # ω0 written by L0H0 from states 0–2, a distractor at L1H1
    a, b = omega0_system().sample_swap_pairs(48, 16, seed=3)
    patched = implied_omega0_patching(organism, a.states, b.states, gamma=0.1, dt=0.1)
    for name in ("L0H0", "L0 attn_out", "L1 resid_pre @ last"):
        assert patched.recovery(name).estimate == pytest.approx(1.0, abs=1e-6), name
    for name in ("L0H1", "L1H0", "L1H1", "L0 mlp_out", "L1 attn_out", "L0 resid_pre @ last"):
        assert abs(patched.recovery(name).estimate) < 1e-6, name  # off the causal graph (L1H1 writes a direction nothing reads)
    assert set(patched.carriers()) == {"L0H0", "L0 attn_out", "L1 mlp_out"}  # the planted write, and the stepper that reads it
    assert patched.gathered_from() == "L1 resid_pre @ last"
    with pytest.raises(ValueError, match="nothing to localise"):
        implied_omega0_patching(make_organism("null", n_ctx=16), a.states, b.states, gamma=0.1, dt=0.1)


def test_without_refinement_the_search_returns_the_grid_point_whose_exact_step_lands_nearest() -> None:
    from physlens.systems.oscillator import propagator

    generator = torch.Generator().manual_seed(3)
    states = torch.randn(16, 2, dtype=torch.float64, generator=generator)
    gamma = 0.05 + 0.1 * torch.rand(16, dtype=torch.float64, generator=generator)
    predictions = states + 0.05 * torch.randn(16, 2, dtype=torch.float64, generator=generator)
    found = implied_omega0_from_step(states, predictions, gamma=gamma, dt=0.1, omega_range=(0.5, 6.0), grid=301, refinements=0)
    grid = torch.linspace(0.5, 6.0, 301, dtype=torch.float64)
    landed = torch.einsum("bgij,bj->bgi", propagator(grid[None], gamma[:, None], 0.1), states)
    expected = grid[(landed - predictions[:, None]).square().sum(-1).argmin(dim=1)]
    assert_allclose(found.numpy(), expected.numpy(), rtol=0, atol=1e-12)
