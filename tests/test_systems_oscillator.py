"""The oscillator system against independent references: scipy's expm and the decay law."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from numpy.testing import assert_allclose
from scipy.linalg import expm

from physlens.systems import (
    EVEN_LABELS,
    Choice,
    Fixed,
    OscillatorSystem,
    Trajectories,
    Uniform,
    as_param_spec,
    check_underdamped,
    damped_frequency,
    energy,
    evolve,
    evolve_backward,
    fit_propagator,
    least_squares_map,
    parameters_from_propagator,
    propagator,
)


def test_propagator_matches_expm_for_random_underdamped_parameters(rng):
    omega0 = rng.uniform(0.2, 6.0, size=200)
    gamma = omega0 * rng.uniform(0.0, 0.98, size=200)
    dt = rng.uniform(1e-3, 2.0, size=200)
    kernels = propagator(torch.tensor(omega0), torch.tensor(gamma), torch.tensor(dt)).numpy()
    for i in range(200):
        generator = np.array([[0.0, 1.0], [-omega0[i] ** 2, -2 * gamma[i]]])
        assert_allclose(kernels[i], expm(generator * dt[i]), rtol=0, atol=1e-12)


def test_propagator_composes_over_time():
    one = propagator(2.0, 0.1, 0.1)
    ten = propagator(2.0, 0.1, 1.0)
    assert_allclose(torch.linalg.matrix_power(one, 10).numpy(), ten.numpy(), atol=1e-13)


def test_energy_decays_as_exp_minus_two_gamma_t_over_every_half_period():
    # K(t + π/Ω) = −e^{−γπ/Ω} K(t), so every trajectory's energy shrinks by exactly e^{−2γ·π/Ω} per
    # half period of Ω: the envelope decays as e^{−2γt} while E oscillates inside it.
    omega0, gamma = 2.0, 0.3
    half_period = math.pi / math.sqrt(omega0**2 - gamma**2)
    system = OscillatorSystem(omega0=omega0, gamma=gamma, dt=half_period / 20, energy_range=(0.5, 1.5), dtype="float64")
    e = system.sample(500, 101, seed=0).energy
    assert_allclose((e[:, 20:] / e[:, :-20]).numpy(), math.exp(-2 * gamma * half_period), rtol=1e-10)
    # Averaged over a half period (the oscillation at 2Ω cancels), the mean follows e^{−2γt} exactly.
    windows = e[:, :100].reshape(500, 5, 20).mean(dim=-1)
    t = half_period * torch.arange(5, dtype=torch.float64)
    assert_allclose((windows / windows[:, :1]).numpy(), torch.exp(-2 * gamma * t).expand(500, 5).numpy(), rtol=1e-10)


def test_undamped_energy_is_conserved_exactly():
    traj = OscillatorSystem(omega0=3.0, gamma=0.0, dt=0.1, dtype="float64").sample(16, 500, seed=1)
    assert_allclose(traj.energy.numpy(), traj.energy[:, :1].expand(-1, 500).numpy(), rtol=1e-12)


def test_initial_energies_follow_the_requested_range():
    traj = OscillatorSystem(energy_range=(2.0, 3.0), dtype="float64").sample(2000, 2, seed=3)
    e0 = traj.energy[:, 0]
    assert float(e0.min()) >= 2.0 - 1e-12 and float(e0.max()) <= 3.0 + 1e-12
    assert abs(float(e0.mean()) - 2.5) < 0.03


def test_trajectory_states_follow_the_propagator():
    traj = OscillatorSystem(omega0={"range": [1, 4]}, gamma={"values": [0.0, 0.1]}, dtype="float64").sample(32, 20, seed=5)
    kernels = propagator(traj.omega0, traj.gamma, traj.dt)
    stepped = torch.einsum("tij,tsj->tsi", kernels, traj.states[:, :-1])
    assert_allclose(stepped.numpy(), traj.states[:, 1:].numpy(), atol=1e-13)


def test_labels_are_consistent():
    traj = OscillatorSystem(omega0={"range": [1, 4]}, gamma={"range": [0.0, 0.5]}, dtype="float64").sample(64, 5, seed=2)
    labels = traj.labels()
    assert set(labels) == {"omega0", "gamma", "Omega", "energy", "omega0_sq", "cos_Omega_dt", "damping_factor",
                           "acceleration", "omega0_sq_x", "gamma_p"}
    assert_allclose(labels["Omega"].numpy(), damped_frequency(traj.omega0, traj.gamma).numpy())
    assert_allclose(labels["omega0_sq"].numpy(), traj.omega0.numpy() ** 2)
    assert_allclose(labels["cos_Omega_dt"].numpy(), np.cos(labels["Omega"].numpy() * 0.1))
    assert_allclose(labels["damping_factor"].numpy(), np.exp(-0.1 * traj.gamma.numpy()))
    assert labels["energy"].shape == (64, 5)


def test_sampling_is_reproducible_from_a_seed():
    system = OscillatorSystem(omega0={"range": [1, 4]})
    a, b, c = system.sample(8, 10, seed=7), system.sample(8, 10, seed=7), system.sample(8, 10, seed=8)
    assert torch.equal(a.states, b.states) and torch.equal(a.omega0, b.omega0)
    assert not torch.equal(a.states, c.states)


def test_fresh_batches_differ_and_replay_from_the_seed():
    system = OscillatorSystem()
    first = system.batches(4, 3, seed=0)
    again = system.batches(4, 3, seed=0)
    b1, b2 = next(first), next(first)
    assert not torch.equal(b1.states, b2.states)
    assert torch.equal(b1.states, next(again).states)


def test_param_specs():
    gen = torch.Generator().manual_seed(0)
    kwargs = dict(generator=gen, dtype=torch.float64, device="cpu")
    assert torch.all(Fixed(2.0).sample(5, **kwargs) == 2.0)
    uniform = Uniform(1.0, 4.0).sample(5000, **kwargs)
    assert 1.0 <= float(uniform.min()) and float(uniform.max()) <= 4.0 and abs(float(uniform.mean()) - 2.5) < 0.05
    choice = Choice((0.0, 0.1)).sample(1000, **kwargs)
    assert set(choice.tolist()) == {0.0, 0.1}
    assert as_param_spec("x", 3) == Fixed(3.0)
    assert as_param_spec("x", {"range": [1, 2]}) == Uniform(1.0, 2.0)
    assert as_param_spec("x", {"values": [1, 2]}) == Choice((1.0, 2.0))


@pytest.mark.parametrize(
    "bad, message",
    [([1, 4], "omega0 must be a number"), ({"range": [4, 1]}, "low <= high"), (float("nan"), "finite"),
     ({"values": []}, "at least one"), (True, "omega0 must be a number")],
)
def test_bad_param_specs_are_refused(bad, message):
    with pytest.raises(ValueError, match=message):
        as_param_spec("omega0", bad)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(omega0=1.0, gamma=1.0), "underdamped"),
        (dict(omega0=1.0, gamma=2.0), "underdamped"),
        (dict(omega0={"range": [1, 4]}, gamma={"range": [0, 1.5]}), "underdamped"),
        (dict(omega0=-1.0, gamma=0.0), "omega0 must be > 0"),
        (dict(gamma=-0.1), "gamma must be >= 0"),
        (dict(dt=0.0), "dt must be a finite number > 0"),
        (dict(dt=float("inf")), "dt must be a finite number > 0"),
        (dict(energy_range=(1.0, 0.5)), "energy_range"),
        (dict(energy_range=(-1.0, 0.5)), "energy_range"),
        (dict(dtype="int32"), "dtype"),
    ],
)
def test_bad_systems_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        OscillatorSystem(**kwargs)


@pytest.mark.unchecked_types
def test_bad_propagator_and_sampling_arguments():
    with pytest.raises(ValueError, match="underdamped"):
        propagator(1.0, 1.0, 0.1)
    with pytest.raises(ValueError, match="dt must be > 0"):
        propagator(2.0, 0.1, -0.1)
    with pytest.raises(ValueError, match="finite"):
        propagator(float("nan"), 0.1, 0.1)
    with pytest.raises(ValueError, match="underdamped"):
        check_underdamped(torch.tensor([2.0, 1.0]), torch.tensor([0.1, 1.5]))
    system = OscillatorSystem()
    with pytest.raises(ValueError, match="n_traj must be a positive integer"):
        system.sample(0, 5, seed=0)
    with pytest.raises(ValueError, match="exactly one of seed"):
        system.sample(2, 5)
    with pytest.raises(ValueError, match="initial must contain only finite"):
        evolve(torch.tensor([[float("nan"), 0.0]]), 2.0, 0.1, 0.1, 3)
    with pytest.raises(ValueError, match=r"states must have shape \[traj, step, 2\]"):
        Trajectories(torch.zeros(2, 3), torch.ones(2), torch.zeros(2), 0.1)
    with pytest.raises(ValueError, match="last dimension of 2"):
        energy(torch.zeros(3, 3), 1.0)


def test_energy_formula():
    states = torch.tensor([[1.0, 2.0]], dtype=torch.float64)
    assert float(energy(states, 3.0)[0]) == pytest.approx(0.5 * (4 + 9))
    assert math.isclose(float(damped_frequency(2.0, 0.1)), math.sqrt(4 - 0.01))


def test_update_products_are_per_step_labels_computed_from_the_states():
    traj = OscillatorSystem(omega0={"range": [1.0, 4.0]}, gamma={"range": [0.05, 0.3]}, dtype="float64").sample(8, 5, seed=3)
    labels = traj.labels()
    x, p = traj.states[..., 0].numpy(), traj.states[..., 1].numpy()
    w, g = traj.omega0.numpy()[:, None], traj.gamma.numpy()[:, None]
    assert_allclose(labels["omega0_sq_x"].numpy(), w**2 * x, rtol=1e-15)
    assert_allclose(labels["gamma_p"].numpy(), g * p, rtol=1e-15)
    assert_allclose(labels["acceleration"].numpy(), -(w**2) * x - 2 * g * p, rtol=1e-14)


def test_even_labels_do_not_change_when_the_states_flip_sign():
    traj = OscillatorSystem(omega0={"range": [1.0, 4.0]}, dtype="float64").sample(8, 5, seed=4)
    flipped = Trajectories(-traj.states, traj.omega0, traj.gamma, traj.dt)
    for name, value in traj.labels().items():
        sign = 1.0 if name in EVEN_LABELS else -1.0
        assert_allclose(flipped.labels()[name].numpy(), sign * value.numpy(), err_msg=name)


@pytest.mark.unchecked_types
def test_labels_in_first_state_units_do_not_change_when_the_states_are_scaled():
    """In units of the first state's norm, every label is unchanged by s → λs (the dynamics are
    linear): the units a ``scale_by_first_state`` model sees."""
    traj = OscillatorSystem(omega0={"range": [1.0, 4.0]}, gamma={"range": [0.05, 0.3]}, dtype="float64").sample(8, 5, seed=5)
    scaled = Trajectories(3.5 * traj.states, traj.omega0, traj.gamma, traj.dt)
    ours, theirs = traj.labels(first_state_units=True), scaled.labels(first_state_units=True)
    for name in ours:
        assert_allclose(theirs[name].numpy(), ours[name].numpy(), rtol=1e-12, err_msg=name)
    size = np.hypot(traj.states[:, 0, 0].numpy(), traj.states[:, 0, 1].numpy())
    x = traj.states[..., 0].numpy()
    assert_allclose(ours["energy"].numpy(), traj.energy.numpy() / size[:, None] ** 2, rtol=1e-14)
    assert_allclose(ours["omega0_sq_x"].numpy(), traj.omega0.numpy()[:, None] ** 2 * x / size[:, None], rtol=1e-14)
    assert_allclose(ours["omega0"].numpy(), traj.omega0.numpy())
    at_origin = Trajectories(torch.zeros(1, 3, 2, dtype=torch.float64), torch.tensor([2.0]), torch.tensor([0.1]), 0.1)
    with pytest.raises(ValueError, match="start at"):
        at_origin.labels(first_state_units=True)
    with pytest.raises(ValueError, match="first_state_units must be True or False"):
        traj.labels(first_state_units="yes")


def test_backward_evolution_retraces_the_forward_trajectory():
    omega0, gamma = torch.tensor([1.3, 3.7]), torch.tensor([0.1, 0.25])
    initial = torch.tensor([[0.4, -0.2], [-0.1, 0.9]], dtype=torch.float64)
    forward = evolve(initial, omega0, gamma, 0.1, 40)
    backward = evolve_backward(forward[:, -1], omega0, gamma, 0.1, 40)
    assert_allclose(backward.numpy(), forward.numpy(), atol=1e-13)
    assert torch.equal(backward[:, -1], forward[:, -1])


def test_in_context_least_squares_recovers_the_exact_propagator():
    # Three noiseless states (two transitions) determine K; scipy's expm is the independent truth.
    traj = OscillatorSystem(omega0={"range": [1.0, 4.0]}, gamma={"range": [0.0, 0.3]}, dtype="float64").sample(50, 3, seed=5)
    fitted = fit_propagator(traj.states).numpy()
    for i in range(50):
        w, g = float(traj.omega0[i]), float(traj.gamma[i])
        assert_allclose(fitted[i], expm(np.array([[0.0, 1.0], [-w * w, -2 * g]]) * 0.1), atol=1e-11)


def test_two_states_give_the_minimum_norm_map():
    states = torch.tensor([[[1.0, 0.0], [0.5, -0.3]]], dtype=torch.float64)
    fitted = fit_propagator(states)[0]
    # One transition from (1, 0): K's first column is fixed, the minimum-norm K has a zero second column.
    assert_allclose(fitted.numpy(), [[0.5, 0.0], [-0.3, 0.0]], atol=1e-15)


def test_least_squares_map_is_numpys_least_squares_solution():
    # numpy's lstsq (an SVD solver) is the independent reference, on full-rank and rank-deficient systems alike.
    rng = np.random.default_rng(3)
    current, following = rng.normal(size=(6, 9, 2)), rng.normal(size=(6, 9, 3))
    current[1, 1:] = 0.0  # one nonzero row: rank 1
    current[2] = 0.0  # rank 0
    current[3, :, 1] = 2.5 * current[3, :, 0]  # parallel columns: rank 1
    current[4, :, 1] = current[4, :, 0] * (1 + 1e-7 * rng.normal(size=9))  # nearly parallel (cond ≈ 1e7): left to the pseudo-inverse
    fitted = least_squares_map(torch.from_numpy(current), torch.from_numpy(following)).numpy()
    for i in range(6):
        expected = np.linalg.lstsq(current[i], following[i], rcond=None)[0].T  # minimum-norm where rank-deficient
        # the ill-conditioned system's answer is only determined to about cond·ε relative
        assert_allclose(fitted[i], expected, **({"rtol": 1e-6} if i == 4 else {"atol": 1e-13}))
    # batch dimensions of any depth
    assert least_squares_map(torch.ones(2, 3, 5, 2, dtype=torch.float64), torch.ones(2, 3, 5, 1, dtype=torch.float64)).shape == (2, 3, 1, 2)


def test_parameters_are_read_back_from_a_propagator():
    omega0, gamma = torch.tensor([1.0, 2.5, 4.0], dtype=torch.float64), torch.tensor([0.0, 0.1, 0.3], dtype=torch.float64)
    found = parameters_from_propagator(propagator(omega0, gamma, 0.1), 0.1)
    assert_allclose(found["omega0"].numpy(), omega0.numpy(), rtol=1e-12)
    assert_allclose(found["gamma"].numpy(), gamma.numpy(), atol=1e-12)
    # A reflection is no rotation: no frequency is made up for it.
    assert torch.isnan(parameters_from_propagator(torch.diag(torch.tensor([1.0, -1.0])), 0.1)["omega0"])


def test_swap_pairs_share_the_final_state_and_differ_in_omega0():
    system = OscillatorSystem(omega0={"range": [1.0, 4.0]}, gamma=0.1, dtype="float64")
    a, b = system.sample_swap_pairs(64, 40, seed=6, min_change=0.5)
    assert torch.equal(a.states[:, -1], b.states[:, -1])
    assert bool(((a.omega0 - b.omega0).abs() >= 0.5).all())
    assert bool(((b.omega0 >= 1.0) & (b.omega0 <= 4.0)).all())
    # Both contexts follow their own oscillator exactly and start inside the training energies.
    for traj in (a, b):
        assert_allclose(evolve(traj.states[:, 0], traj.omega0, traj.gamma, 0.1, 40).numpy(), traj.states.numpy(), atol=1e-12)
        start = energy(traj.states[:, 0], traj.omega0)
        assert bool(((start >= 0.0) & (start <= 1.0)).all())


def test_swap_pairs_refuse_a_fixed_parameter():
    with pytest.raises(ValueError, match="vary='omega0'.*spans \\[2, 2\\]"):
        OscillatorSystem(omega0=2.0).sample_swap_pairs(4, 10, seed=0)
    with pytest.raises(ValueError, match="vary must be one of"):
        OscillatorSystem(omega0={"range": [1.0, 4.0]}).sample_swap_pairs(4, 10, seed=0, vary="dt")


def test_swap_pairs_can_also_share_the_size_of_their_first_state():
    system = OscillatorSystem(omega0={"range": [1.0, 4.0]}, gamma={"range": [0.05, 0.3]}, dtype="float64")
    a, b = system.sample_swap_pairs(128, 40, seed=7, match_first_norm=True)
    assert torch.equal(a.states[:, -1], b.states[:, -1])
    assert_allclose(torch.linalg.vector_norm(a.states[:, 0], dim=-1).numpy(), torch.linalg.vector_norm(b.states[:, 0], dim=-1).numpy(),
                    rtol=1e-12)
    assert bool(((a.omega0 - b.omega0).abs() >= 0.5).all())
    for traj in (a, b):
        assert_allclose(evolve(traj.states[:, 0], traj.omega0, traj.gamma, 0.1, 40).numpy(), traj.states.numpy(), atol=1e-12)
        start = energy(traj.states[:, 0], traj.omega0)
        assert bool(((start >= 0.0) & (start <= 1.0)).all())
