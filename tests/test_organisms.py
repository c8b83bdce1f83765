"""Model organisms and the implied-parameter readout, against analytic and independent references."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
import torch
from numpy.testing import assert_allclose

from physlens.models.organisms import (
    AR_TRAINING_STEPS,
    ARFilterOrganism,
    BlendOrganism,
    ContextBlindOrganism,
    FiniteDifferenceOrganism,
    LeastSquaresOrganism,
    add_observation_noise,
    check_noise,
    fit_ar_filters,
    observation_scale,
    spec_mean,
)
from physlens.probes.implied import (
    default_start,
    implied_kernel,
    implied_parameters,
    parameter_directions,
    predict_all_positions,
    predictor_dtype,
    readout_from_predictions,
)
from physlens.systems import Choice, Fixed, OscillatorSystem, Trajectories, Uniform, propagator
from physlens.training.rollouts import rollout

SYSTEM = OscillatorSystem(omega0={"range": [1.0, 4.0]}, gamma=0.1, dt=0.1, dtype="float64")


@pytest.fixture(scope="module")
def data():
    return SYSTEM.sample(32, 41, seed=1)


@pytest.fixture(scope="module")
def contexts(data):
    return Trajectories(data.states[:, :40], data.omega0, data.gamma, data.dt)


def _relative(pred, truth):
    return (torch.linalg.vector_norm(pred - truth, dim=-1) / torch.linalg.vector_norm(truth, dim=-1))


def _scipy_kernel(omega0: float, gamma: float, dt: float) -> np.ndarray:
    return scipy.linalg.expm(np.array([[0.0, 1.0], [-omega0**2, -2 * gamma]]) * dt)


def test_least_squares_is_exact_from_three_states_at_every_position(data):
    context, truth = data.states[:, :40], data.states[:, 1:]
    for k in (3, 5, 20, 40):
        error = _relative(LeastSquaresOrganism(k)(context), truth)
        assert float(error[:, 2:].max()) < 1e-11, k
    # Two states give the minimum-norm map, which is not K: the first two positions are no better than that.
    assert float(_relative(LeastSquaresOrganism(2)(context), truth)[:, 1:].median()) > 1e-3


def test_least_squares_at_each_position_uses_only_the_last_k_states(data):
    # Changing a state more than k steps back leaves the prediction unchanged; changing one inside the window does not.
    states = data.states[:, :30].clone()
    organism = LeastSquaresOrganism(5, noise=0.0)
    base = organism(states)
    states[:, 20] += 0.5
    moved = organism(states)
    unaffected = [t for t in range(30) if t < 20 or t > 24]
    assert_allclose(moved[:, unaffected], base[:, unaffected], atol=1e-12)
    assert float((moved[:, 24] - base[:, 24]).abs().max()) > 1e-3


def test_observation_noise_has_the_stated_size_and_is_reproducible(data):
    states = data.states[:, :40]
    generator = torch.Generator().manual_seed(0)
    noisy = add_observation_noise(states, 0.01, generator)
    ratio = (noisy - states).pow(2).mean(dim=(1, 2)).sqrt() / observation_scale(states)
    assert float(ratio.mean()) == pytest.approx(0.01, rel=0.05)
    assert add_observation_noise(states, 0.0, generator) is states
    a = LeastSquaresOrganism(5, noise=0.003, seed=4)(states)
    b = LeastSquaresOrganism(5, noise=0.003, seed=4)(states)
    c = LeastSquaresOrganism(5, noise=0.003, seed=5)(states)
    assert torch.equal(a, b) and not torch.equal(a, c)
    # 0.3 % noise on 5 states costs about a per cent of the next state; on 20 states much less.
    error5 = float(_relative(a[:, -1], data.states[:, 40]).median())
    error20 = float(_relative(LeastSquaresOrganism(20, noise=0.003, seed=4)(states)[:, -1], data.states[:, 40]).median())
    assert 0.002 < error5 < 0.03 and error20 < error5


def test_finite_differences_bias_matches_the_second_difference_formula():
    # Undamped, the estimate is ω̂0² = 2(1 − cos ω0Δt)/Δt² exactly (D1 ⟂ nothing: γ = 0 removes it).
    system = OscillatorSystem(omega0={"values": [1.0, 2.5, 4.0]}, gamma=0.0, dt=0.1, dtype="float64")
    data = system.sample(12, 10, seed=2)
    organism = FiniteDifferenceOrganism(gamma=0.0, omega0_prior=2.5)
    estimate = organism.estimate_omega0(data.states)
    expected = torch.sqrt(2 * (1 - torch.cos(data.omega0 * 0.1)) / 0.1**2)
    assert_allclose(estimate[:, 2:], expected[:, None].expand(-1, 8), rtol=1e-9)
    assert_allclose(estimate[:, :2], 2.5)
    # Damped: the estimate is close to ω0, biased low by about (ω0Δt)²/24 relative.
    damped = SYSTEM.sample(64, 10, seed=3)
    estimate = FiniteDifferenceOrganism.from_system(SYSTEM).estimate_omega0(damped.states)[:, -1]
    relative = (estimate - damped.omega0) / damped.omega0
    assert float(relative.max()) < 0 and float((relative + (damped.omega0 * 0.1) ** 2 / 24).abs().max()) < 2e-3


def test_context_blind_steps_with_the_mean_omega0(data):
    organism = ContextBlindOrganism.from_system(SYSTEM)
    assert organism.omega0 == pytest.approx(2.5) and organism.gamma == pytest.approx(0.1)
    kernel = torch.as_tensor(_scipy_kernel(2.5, 0.1, 0.1))
    assert_allclose(organism(data.states[:, :40]), torch.einsum("ij,bpj->bpi", kernel, data.states[:, :40]), atol=1e-14)


def test_ar_organism_is_the_fitted_filter_and_shorter_filters_at_the_start(data):
    filters = fit_ar_filters(SYSTEM, 6, seed=3, n_traj=64)
    assert sorted(filters) == [1, 2, 3, 4, 5, 6]
    organism = ARFilterOrganism(filters, 6)
    out = organism(data.states[:, :40])
    assert_allclose(out[:, 5:], filters[6](data.states[:, :40]), atol=1e-12)
    for t in range(5):
        assert_allclose(out[:, t], filters[t + 1](data.states[:, : t + 1])[:, -1], atol=1e-12)
    assert float(_relative(out[:, -1], data.states[:, 40]).median()) < 1e-4
    with pytest.raises(ValueError, match="lack the AR fits"):
        ARFilterOrganism({1: filters[1], 3: filters[3]}, 3)
    with pytest.raises(ValueError, match="n_steps must exceed"):
        fit_ar_filters(SYSTEM, AR_TRAINING_STEPS, seed=0)


def test_blend_averages_its_parts(data):
    a, b = LeastSquaresOrganism(2), ContextBlindOrganism.from_system(SYSTEM)
    blend = BlendOrganism(a, b, weight=0.25)
    states = data.states[:, :12]
    assert_allclose(blend(states), 0.25 * a(states) + 0.75 * b(states), atol=1e-14)
    with pytest.raises(ValueError, match="weight"):
        BlendOrganism(a, b, weight=1.5)


def test_organisms_behave_like_models_hooks_rollout_and_dtype(data):
    organism = LeastSquaresOrganism(5)
    out, cache = organism.run_with_cache(data.states[:, :10].float())
    assert out.dtype == torch.float32 and cache["hook_kernel"].shape == (32, 10, 2, 2)
    # It computes in float64 on the float32-rounded states: K is right to the float32 rounding of its input.
    assert cache["hook_kernel"].dtype == torch.float64
    assert_allclose(cache["hook_kernel"][:, -1], propagator(data.omega0, data.gamma, 0.1), atol=1e-5)
    fd_cache = FiniteDifferenceOrganism.from_system(SYSTEM).run_with_cache(data.states[:, :10])[1]
    assert fd_cache["hook_omega0"].shape == (32, 10)
    path = rollout(organism, data.states[:, :10], 5)
    assert float(_relative(path, data.states[:, 10:15]).max()) < 1e-9
    assert predictor_dtype(organism) == (torch.float64, torch.device("cpu"))
    assert organism.to_dict()["window"] == 5 and organism.to_dict()["family"] == "least squares"


@pytest.mark.unchecked_types  # passes wrong types or shapes on purpose, to check physlens's own message
@pytest.mark.parametrize("make, match", [
    (lambda: LeastSquaresOrganism(41), "window must be <= the context n_ctx=40"),
    (lambda: LeastSquaresOrganism(50, n_ctx=40), "window"),
    (lambda: LeastSquaresOrganism(1), "window must be >= 2"),
    (lambda: LeastSquaresOrganism(5, noise=-0.1), "noise must be a finite number >= 0"),
    (lambda: LeastSquaresOrganism(5, noise=float("nan")), "noise must be a finite number >= 0"),
    (lambda: LeastSquaresOrganism(5, noise=float("inf")), "noise"),
    (lambda: LeastSquaresOrganism(5, noise="0.1"), "noise"),
    (lambda: ARFilterOrganism({}, 41), "window must be <= the context"),
    (lambda: FiniteDifferenceOrganism(gamma=0.5, omega0_prior=0.2), "underdamped"),
    (lambda: ContextBlindOrganism(2.0, 0.1, noise=-1), "noise"),
])
def test_bad_organism_arguments_are_refused_by_name(make, match):
    with pytest.raises(ValueError, match=match):
        make()


@pytest.mark.unchecked_types  # passes wrong types or shapes on purpose, to check physlens's own message
def test_organisms_refuse_inputs_longer_than_their_context():
    with pytest.raises(ValueError, match="n_ctx is 8"):
        LeastSquaresOrganism(3, n_ctx=8)(torch.zeros(1, 9, 2, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"\[batch, pos, 2\]"):
        LeastSquaresOrganism(3)(torch.zeros(1, 9, 3))
    assert check_noise("noise", 0) == 0.0


def test_spec_means():
    assert spec_mean(Fixed(2.0)) == 2.0 and spec_mean(Uniform(1.0, 4.0)) == 2.5 and spec_mean(Choice((1.0, 2.0, 6.0))) == 3.0
    with pytest.raises(TypeError):
        spec_mean(2.0)


# --- the implied-parameter readout ---------------------------------------------------------------

def test_implied_omega0_of_least_squares_is_the_true_omega0_as_scipy_logm_reads_it(data, contexts):
    result = implied_parameters(LeastSquaresOrganism(20), contexts.subset(slice(0, 16)))
    for i in range(16):
        generator = scipy.linalg.logm(result.kernel[i]) / 0.1  # A = [[0, 1], [−ω0², −2γ]]
        assert_allclose(generator.real, [[0.0, 1.0], [-float(data.omega0[i]) ** 2, -0.2]], atol=1e-7)
        assert_allclose(result.kernel[i], _scipy_kernel(float(data.omega0[i]), 0.1, 0.1), atol=1e-11)
    assert_allclose(result.omega0, data.omega0[:16].numpy(), rtol=1e-9)
    assert_allclose(result.gamma, 0.1, rtol=1e-7)
    assert result.omega0_rmse < 1e-9 and result.omega0_r2 > 1 - 1e-12 and result.n_invalid == 0
    assert float(result.kernel_error.max()) < 1e-11 and float(result.fit_residual.max()) < 1e-11


def test_implied_omega0_of_the_context_blind_organism_is_its_one_omega0(data, contexts):
    result = implied_parameters(ContextBlindOrganism.from_system(SYSTEM), contexts)
    assert_allclose(result.omega0, 2.5, rtol=1e-9)
    assert result.omega0_r2 < 0.05  # it reads nothing: R² ≈ 0 (negative: the mean of a U[1, 4] draw is not exactly 2.5)
    # Its map error is a pure ω0 shift: all of it lies along ∂K/∂ω0, and the first-order shift is 2.5 − ω0.
    assert result.parameter_share > 0.99
    near = np.abs(2.5 - result.true_omega0) < 0.2
    assert_allclose(result.along_parameters[near, 0], 2.5 - result.true_omega0[near], atol=0.02)
    summary = result.to_dict()
    assert summary["omega0_r2"] == result.omega0_r2 and summary["n_trajectories"] == len(data)


def test_parameter_directions_are_the_derivatives_of_scipy_expm():
    omega0, gamma = torch.tensor([1.3, 3.7], dtype=torch.float64), torch.tensor([0.1, 0.05], dtype=torch.float64)
    directions = parameter_directions(omega0, gamma, 0.1)
    for i in range(2):
        h = 1e-5
        d_omega = (_scipy_kernel(float(omega0[i]) + h, float(gamma[i]), 0.1) - _scipy_kernel(float(omega0[i]) - h, float(gamma[i]), 0.1)) / (2 * h)
        d_gamma = (_scipy_kernel(float(omega0[i]), float(gamma[i]) + h, 0.1) - _scipy_kernel(float(omega0[i]), float(gamma[i]) - h, 0.1)) / (2 * h)
        assert_allclose(directions[i, ..., 0], d_omega, atol=1e-8)
        assert_allclose(directions[i, ..., 1], d_gamma, atol=1e-8)


def test_a_shifted_map_is_read_as_that_shift(data):
    # A predictor stepping with K(ω0 + 0.05, γ + 0.02): implied ω0 and γ move by exactly that, all along the parameter directions.
    states = data.states[:, :30]
    kernel = propagator(data.omega0 + 0.05, data.gamma + 0.02, 0.1)
    predictions = torch.einsum("bij,bpj->bpi", kernel, states)
    result = readout_from_predictions(states, predictions, data.omega0, data.gamma, 0.1)
    assert_allclose(result.omega0 - result.true_omega0, 0.05, atol=1e-9)
    assert_allclose(result.gamma, 0.12, atol=1e-9)
    assert result.parameter_share > 0.999
    assert_allclose(result.along_parameters, np.tile([0.05, 0.02], (len(data), 1)), atol=2e-3)


def test_the_readout_uses_the_second_half_of_the_context_by_default(contexts):
    # A causal predictor's early positions carry its least informed guesses. Planted: the prior (mean-ω0) step until
    # 10 states have been seen, least squares after. From position 2 the readout mixes the prior in; by default it does not.
    assert default_start(40) == 20 and default_start(3) == 1
    prior, exact = ContextBlindOrganism.from_system(SYSTEM), LeastSquaresOrganism(20)

    def late_reader(states):
        informed = (torch.arange(states.shape[1]) >= 9)[None, :, None]
        return torch.where(informed, exact(states), prior(states))

    late, early = implied_parameters(late_reader, contexts), implied_parameters(late_reader, contexts, start=2)
    assert late.start == 20 and early.start == 2
    assert late.omega0_rmse < 1e-9 and early.omega0_rmse > 0.1


@pytest.mark.unchecked_types  # passes wrong types or shapes on purpose, to check physlens's own message
def test_readout_input_checks(data):
    states = data.states[:, :10]
    with pytest.raises(ValueError, match="at least 2 positions from start=9"):
        implied_kernel(states, states, start=9)
    with pytest.raises(ValueError, match="same|shape"):
        implied_kernel(states, states[:, :5])
    with pytest.raises(ValueError, match="every position"):
        predict_all_positions(lambda s: s[:, -1:], states)


DAMPED = OscillatorSystem(omega0={"range": [1.0, 4.0]}, gamma={"range": [0.05, 0.3]}, dt=0.1, dtype="float64")


def test_implied_gamma_of_least_squares_on_a_damped_system_is_the_true_gamma():
    # γ varies per trajectory: a predictor that reads K off the context implies each trajectory's own γ.
    contexts = DAMPED.sample(64, 40, seed=3)
    readout = implied_parameters(LeastSquaresOrganism(20), contexts)
    assert_allclose(readout.gamma, contexts.gamma.numpy(), atol=1e-9)
    assert readout.rmse("gamma") < 1e-9
    assert readout.r2("gamma") > 1 - 1e-12
    assert readout.r2("omega0") > 1 - 1e-12


def test_implied_gamma_of_a_context_blind_organism_is_its_one_gamma():
    # Stepping every trajectory with the mean γ: the readout returns that γ everywhere, so it explains
    # none of the spread (R² ≤ 0) and its RMSE is the spread of the true γ about the mean.
    contexts = DAMPED.sample(64, 40, seed=3)
    readout = implied_parameters(ContextBlindOrganism.from_system(DAMPED), contexts)
    assert_allclose(readout.gamma, np.full(64, spec_mean(DAMPED.gamma)), atol=1e-9)
    truth = contexts.gamma.numpy()
    assert readout.r2("gamma") <= 0
    assert readout.rmse("gamma") == pytest.approx(float(np.sqrt(np.mean((truth - truth.mean()) ** 2 + (truth.mean() - 0.175) ** 2))), rel=1e-6)


def test_readout_parameter_names_are_checked(contexts):
    readout = implied_parameters(LeastSquaresOrganism(5), contexts)
    with pytest.raises(ValueError, match="parameter must be"):
        readout.rmse("Omega")
    # γ is fixed in SYSTEM: its R² is undefined, not a number that looks like a finding.
    assert np.isnan(readout.r2("gamma"))
