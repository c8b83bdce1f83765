"""Noise-injection curves, the algorithm match and the calibration table, on organisms with planted algorithms."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from numpy.testing import assert_allclose

from physlens.models.organisms import (
    ARFilterOrganism,
    BlendOrganism,
    ContextBlindOrganism,
    FiniteDifferenceOrganism,
    LeastSquaresOrganism,
    observation_scale,
)
from physlens.models.transformer import OscillatorTransformer, preset_config
from physlens.probes.algorithm_match import (
    MATCH_DISTANCE,
    NO_MATCH,
    Candidate,
    build_candidates,
    candidate_name,
    curve_distance,
    curve_shape_distance,
    evaluate_candidates,
    identify_algorithm,
    identify_oscillator_algorithm,
)
from physlens.probes.algorithms import compare_algorithms, fit_ar_candidates
from physlens.probes.calibration import CALIBRATED_ANALYSES, calibrate_analyses, planted_organisms
from physlens.probes.context_swap import context_swap_test
from physlens.probes.noise_curves import check_sigmas, noise_curve, smallest_representable_sigma
from physlens.systems import OscillatorSystem, propagator

SYSTEM = OscillatorSystem(omega0={"range": [1.0, 4.0]}, gamma=0.1, dt=0.1, dtype="float64")
SIGMAS = (0.0, 1e-3, 1e-2, 1e-1)


@pytest.fixture(scope="module")
def data():
    return SYSTEM.sample(48, 41, seed=21)


@pytest.fixture(scope="module")
def candidates():
    """Every candidate with k = 2 … 40, evaluated once under one noise draw."""
    return evaluate_candidates(build_candidates(SYSTEM, range(2, 41), seed=22, n_reference_trajectories=128),
                               SYSTEM.sample(64, 41, seed=23), seed=24)


# --- noise curves ----------------------------------------------------------------------------------

def test_noise_curve_of_a_fixed_map_is_its_error_on_the_noisy_last_state(data):
    organism = ContextBlindOrganism.from_system(SYSTEM)
    curve = noise_curve(organism, data, SIGMAS, seed=5)
    context, truth = data.states[:, :40], data.states[:, 40]
    draw = torch.randn(context.shape, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    kernel = propagator(2.5, 0.1, 0.1)
    for i, sigma in enumerate(SIGMAS):
        last = context[:, -1] + sigma * observation_scale(context)[:, None] * draw[:, -1]
        predicted = last @ kernel.T
        expected = (torch.linalg.vector_norm(predicted - truth, dim=-1) / torch.linalg.vector_norm(truth, dim=-1)).median()
        assert curve.error[i] == pytest.approx(float(expected), rel=1e-12)
    # Regressed on the states it saw, its map is its one fixed map at every σ.
    true_kernel = propagator(data.omega0, data.gamma, 0.1)
    expected_map = float((torch.linalg.matrix_norm(kernel - true_kernel) / torch.linalg.matrix_norm(true_kernel)).median())
    assert_allclose(curve.kernel_error, expected_map, rtol=1e-9)
    summary = curve.to_dict()
    assert summary["gain"][0] is None and summary["n_trajectories"] == 48 and json.dumps(summary)


def test_exact_algorithms_differ_only_under_noise_and_at_very_different_rates(data):
    curves = {name: noise_curve(organism, data, SIGMAS, seed=6) for name, organism in {
        "ls3": LeastSquaresOrganism(3), "ls5": LeastSquaresOrganism(5), "ls20": LeastSquaresOrganism(20),
        "ls40": LeastSquaresOrganism(40), "fd": FiniteDifferenceOrganism.from_system(SYSTEM)}.items()}
    for name in ("ls3", "ls5", "ls20", "ls40"):
        assert curves[name].error[0] < 1e-12  # clean, every least-squares window from 3 states is exact
    assert curves["fd"].error[0] > 1e-4  # finite differences are not: their truncation bias
    gain = {name: curve.gain()[2] for name, curve in curves.items()}  # error / σ at σ = 1 %
    assert gain["ls3"] > gain["ls5"] > gain["ls20"] > gain["ls40"]
    assert gain["ls3"] > 3 * gain["ls20"] and gain["fd"] > 3 * gain["ls20"]
    # The last state's own noise sets the floor: even least squares over 40 states errs by about σ.
    assert 0.5 < gain["ls40"] < 2


def test_a_float32_model_refuses_noise_below_its_resolution(data):
    model = OscillatorTransformer(preset_config("OLA", seed=0))
    floor = smallest_representable_sigma(data.states[:, :40], torch.float32)
    assert floor == pytest.approx(smallest_representable_sigma(data.states[:, :40], torch.float64) * 2.0**29, rel=1e-9)
    assert 1e-7 < floor < 1e-4
    with pytest.raises(ValueError, match=r"sigmas \[1e-08\] are below the resolution of the model's dtype torch.float32"):
        noise_curve(model, data, [0.0, 1e-8, 1e-2], seed=0)
    curve = noise_curve(model, data, [0.0, 1e-3], seed=0)  # representable: runs, in the model's own dtype
    assert curve.dtype == "float32" and np.isfinite(curve.error).all()
    assert check_sigmas([0.0, 1e-10], data.states, torch.float64) == [0.0, 1e-10]
    for bad in (-0.1, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="sigmas must be a finite number >= 0"):
            noise_curve(LeastSquaresOrganism(5), data, [bad], seed=0)
    with pytest.raises(ValueError, match="at least one"):
        check_sigmas([], data.states, torch.float64)


# --- the algorithm match --------------------------------------------------------------------------

@pytest.mark.parametrize("organism, planted", [
    (LeastSquaresOrganism(5, noise=0.003, seed=1), "least squares k=5"),
    (LeastSquaresOrganism(20, noise=0.003, seed=2), "least squares k=20"),
    (LeastSquaresOrganism(20), "least squares k=20"),
    (ARFilterOrganism.fit(SYSTEM, 10, fit_seed=99, n_traj=128), "AR k=10"),
    (FiniteDifferenceOrganism.from_system(SYSTEM, noise=0.003, seed=3), "finite differences"),
    (ContextBlindOrganism.from_system(SYSTEM), "context-blind"),
    (BlendOrganism(LeastSquaresOrganism(5), LeastSquaresOrganism(20)), NO_MATCH),
])
def test_the_match_names_the_planted_algorithm_and_its_context(candidates, organism, planted):
    match = identify_algorithm(organism, candidates)
    assert match.verdict == planted, match.sentence()
    if planted != NO_MATCH:
        # A clear win: the next candidate (for least squares, a neighbouring k) leaves at least twice as much unexplained.
        runner_up, runner_up_distance = match.runner_up()
        assert match.distance[planted] <= MATCH_DISTANCE / 2 and runner_up_distance > 2 * match.distance[planted]
        assert planted in match.sentence()
    else:
        assert match.distance[match.best] > MATCH_DISTANCE or match.map_match[match.best] > MATCH_DISTANCE
        assert match.sentence().startswith("no candidate")
    summary = match.to_dict()
    assert summary["verdict"] == planted and json.dumps(summary)


def test_the_match_says_none_rather_than_a_wrong_algorithm_when_the_models_own_noise_is_large(candidates):
    # The limit of its power: with observation noise of 3 % of its own, a third of the largest injected σ, least
    # squares over 20 states is no longer matched mistake for mistake (1 % still is) — but nothing else is named either.
    assert identify_algorithm(LeastSquaresOrganism(20, noise=0.01, seed=7), candidates).verdict == "least squares k=20"
    match = identify_algorithm(LeastSquaresOrganism(20, noise=0.03, seed=7), candidates)
    assert match.verdict == NO_MATCH
    assert match.families[match.best] == "least squares" and 18 <= match.windows[match.best] <= 24
    assert MATCH_DISTANCE < match.distance[match.best] < 2 * MATCH_DISTANCE


@pytest.mark.parametrize("window, low, high", [(5, 5, 5), (10, 9, 11), (20, 17, 26)])
def test_the_noise_curve_alone_reads_off_the_effective_context(candidates, window, low, high):
    # Without pairing mistakes, the shape of the curve still tells short contexts apart exactly and long ones roughly.
    match = identify_algorithm(LeastSquaresOrganism(window, noise=0.003, seed=window), candidates)
    k, shape = match.effective_context()
    assert low <= k <= high and shape < 0.05
    assert match.shape_distance["finite differences"] > 10 * shape and match.shape_distance["least squares k=3"] > 10 * shape
    assert match.to_dict()["effective_context"]["least_squares_k"] == k
    with pytest.raises(ValueError, match="family must be one of"):
        match.effective_context("transformer")


def test_curve_shape_distance_is_the_log_ratio_of_the_noise_added_errors(data):
    a = noise_curve(LeastSquaresOrganism(5), data, SIGMAS, seed=2)
    b = noise_curve(LeastSquaresOrganism(5, noise=0.003, seed=1), data, SIGMAS, seed=2)
    assert curve_shape_distance(a, a) == 0.0
    rms_a, rms_b = a.rms_error(), b.rms_error()
    assert rms_a[0] < 1e-13 and rms_b[0] > 1e-3  # clean: only the noisy organism errs
    noise_dominated = rms_b[1:] >= 2 * rms_b[0]
    ratio = np.log(np.sqrt(rms_b[1:] ** 2 - rms_b[0] ** 2) / np.sqrt(rms_a[1:] ** 2 - rms_a[0] ** 2))[noise_dominated]
    assert curve_shape_distance(b, a) == pytest.approx(float(np.sqrt(np.mean(ratio**2))), rel=1e-12)
    assert np.isnan(curve_shape_distance(noise_curve(LeastSquaresOrganism(5), data, SIGMAS[1:], seed=2),
                                         noise_curve(LeastSquaresOrganism(6), data, SIGMAS[1:], seed=2)))  # no σ = 0


def test_the_old_comparison_cannot_see_the_least_squares_organism(data):
    # compare_algorithms scores shared error on clean data, where least squares is exact: it explains none of the
    # noisy organism's mistakes and names no candidate, which is why identify_algorithm injects noise.
    fits = fit_ar_candidates(SYSTEM, [5, 20], seed=3, n_traj=64)
    old = compare_algorithms(LeastSquaresOrganism(20, noise=0.003, seed=2), data, [5, 20], fits, horizon=5)
    assert old.best_match(rollout=False) == [None, None]
    assert "no candidate" in old.verdict()


def test_curve_distance_is_zero_for_the_same_algorithm_and_refuses_other_noise(data):
    a = noise_curve(LeastSquaresOrganism(7), data, SIGMAS, seed=1)
    b = noise_curve(LeastSquaresOrganism(7), data, SIGMAS, seed=1)
    prediction, kernel = curve_distance(a, b)
    assert np.isnan(prediction[0]) and np.isnan(kernel[0])  # clean, an exact model's only errors are rounding
    assert_allclose(prediction[1:], 0.0) and assert_allclose(kernel[1:], 0.0)
    with pytest.raises(ValueError, match="same trajectories, sigmas, start and seed"):
        curve_distance(a, noise_curve(LeastSquaresOrganism(7), data, SIGMAS, seed=2))


def test_the_one_call_comparison_on_a_float32_system():
    # As a study calls it: a float32 system (the comparison runs in float64), a short context, a few k.
    system = OscillatorSystem(omega0={"range": [1.0, 4.0]}, gamma=0.1, dt=0.1)
    match, candidates = identify_oscillator_algorithm(LeastSquaresOrganism(6, noise=0.003, seed=0, n_ctx=12), system, seed=5,
                                                      context_length=12, context_lengths=[3, 5, 6, 7, 12], n_trajectories=32)
    assert match.verdict == "least squares k=6"
    assert candidates.trajectories.states.dtype == torch.float64 and candidates.start == 6
    again, _ = identify_oscillator_algorithm(LeastSquaresOrganism(6, noise=0.003, seed=0, n_ctx=12), system, seed=5,
                                             context_length=12, context_lengths=[3, 5, 6, 7, 12], n_trajectories=32)
    assert again.distance == match.distance


def test_candidates_and_match_arguments_are_checked(candidates):
    assert candidate_name("AR", 4) == "AR k=4" and candidate_name("finite differences") == "finite differences"
    with pytest.raises(ValueError, match="family must be one of"):
        candidate_name("transformer", 3)
    with pytest.raises(ValueError, match="context_lengths must lie in 2..n_ctx=40"):
        build_candidates(SYSTEM, [1, 5], seed=0)
    with pytest.raises(ValueError, match="context_lengths"):
        build_candidates(SYSTEM, [41], seed=0)
    ls = LeastSquaresOrganism(3)
    with pytest.raises(ValueError, match="distinct names"):
        evaluate_candidates([Candidate("x", "least squares", 3, ls), Candidate("x", "least squares", 3, ls)], SYSTEM.sample(4, 11, seed=0), seed=0)
    with pytest.raises(ValueError, match="threshold must be a finite number > 0"):
        identify_algorithm(ls, candidates, threshold=0)
    assert candidates.start == 20 and json.dumps(candidates.to_dict())


# --- the context-swap test on organisms ------------------------------------------------------------

def test_swap_test_separates_the_context_blind_organism_but_not_finite_differences():
    # What the swap test measures: whether the prediction moves as ω0 does when the context changes and the final
    # state does not. Finite differences over 3 states do that too, within their truncation bias of about 1 %, so the
    # swap test tells reading ω0 from not reading it, not least squares from another way of reading it.
    a, b = SYSTEM.sample_swap_pairs(32, 12, seed=7)
    blind = context_swap_test(ContextBlindOrganism.from_system(SYSTEM), a, b, n_resamples=300)
    fd = context_swap_test(FiniteDifferenceOrganism.from_system(SYSTEM), a, b, n_resamples=300)
    ls = context_swap_test(LeastSquaresOrganism(5, noise=0.003, seed=1), a, b, n_resamples=300)
    assert blind.slope.estimate == 0.0
    assert 0.97 < fd.slope.estimate < 1.0 and fd.slope.excludes(1.0) and fd.r2 > 0.99
    assert ls.slope.low <= 1.0 <= ls.slope.high


# --- the calibration table --------------------------------------------------------------------------

def test_calibration_table_every_analysis_right_on_every_organism():
    ks = [2, 3, 4, 5, 6, 8, 10, 12, 15, 19, 20, 21, 25, 30, 40]
    table = calibrate_analyses(SYSTEM, [0, 1], n_trajectories=48, context_lengths=ks, n_swap_pairs=24, n_resamples=200)
    organisms = [p.name for p in planted_organisms(SYSTEM, seed=0)]
    assert [(row.analysis, row.organism) for row in table.rows] == [(a, o) for a in CALIBRATED_ANALYSES for o in organisms]
    wrong = [(row.analysis, row.organism, row.verdicts) for row in table.rows if not all(row.right)]
    assert not wrong and table.all_right
    assert all(row.power == 1.0 and row.false_positive_rate == 0.0 for row in table.rows)
    markdown = table.markdown()
    assert markdown.count("\n") == len(table.rows) + 1 and "| algorithm match | least squares k=20, 0.3 % noise | least squares k=20 |" in markdown
    assert json.loads(json.dumps(table.to_dict()))["all_right"] is True


def test_calibration_counts_a_wrong_verdict_as_a_false_positive(monkeypatch):
    # If the match always named least squares over 5 states, every other organism's row would show it.
    import physlens.probes.calibration as calibration

    class AlwaysLeastSquares5:
        verdict, best, distance, map_match = "least squares k=5", "least squares k=5", {"least squares k=5": 0.0}, {"least squares k=5": 0.0}

        def runner_up(self):
            return "least squares k=5", 0.0

    monkeypatch.setattr(calibration, "identify_algorithm", lambda organism, candidates: AlwaysLeastSquares5())
    table = calibrate_analyses(SYSTEM, [3], n_trajectories=16, context_lengths=[5, 20], n_swap_pairs=8, n_resamples=50)
    rows = {row.organism: row for row in table.rows if row.analysis == "algorithm match"}
    assert rows["least squares k=5, 0.3 % noise"].power == 1.0
    assert rows["finite differences"].power == 0.0 and rows["finite differences"].false_positive_rate == 1.0
    assert rows["blend of least squares k=5 and k=20"].false_positive_rate == 1.0 and not table.all_right
    with pytest.raises(ValueError, match="seeds must hold"):
        calibrate_analyses(SYSTEM, [])
