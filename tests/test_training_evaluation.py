"""Task evaluation against references: the oracle and in-context least squares are exact, intervals decide verdicts."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from numpy.testing import assert_allclose
from scipy.linalg import expm

from physlens.models.linear import LinearAutoregressive
from physlens.models.reference import ExactStep, InContextLeastSquares
from physlens.systems import OscillatorSystem
from physlens.training.evaluation import (
    CURRENT_STATE,
    IN_CONTEXT,
    TaskCriteria,
    LINEAR_AR,
    MODEL,
    ORACLE,
    evaluate_task,
    fit_linear_references,
    float64_system,
)
from physlens.training.rollouts import rollout

SYSTEM = OscillatorSystem(omega0={"range": [1.0, 4.0]}, gamma=0.1, dt=0.1, dtype="float32")


def test_exact_step_applies_each_trajectorys_own_propagator():
    traj = float64_system(SYSTEM).sample(6, 4, seed=1)
    predicted = ExactStep(traj.omega0, traj.gamma, traj.dt)(traj.states[:, :3])[:, 0]
    for i in range(6):
        w, g = float(traj.omega0[i]), float(traj.gamma[i])
        truth = expm(np.array([[0.0, 1.0], [-w * w, -2 * g]]) * 0.1) @ traj.states[i, 2].numpy()
        assert_allclose(predicted[i].numpy(), truth, atol=1e-13)


def test_in_context_least_squares_rolls_out_exactly_from_three_states():
    traj = float64_system(SYSTEM).sample(16, 3 + 100, seed=2)
    path = rollout(InContextLeastSquares(), traj.states[:, :3], 100)
    assert float((path - traj.states[:, 3:]).abs().max()) < 1e-9


def test_in_context_least_squares_refuses_a_window_without_a_transition():
    with pytest.raises(ValueError, match="window must be >= 2"):
        InContextLeastSquares(window=1)
    with pytest.raises(ValueError, match="at least 4 position"):
        InContextLeastSquares(window=4)(torch.zeros(2, 3, 2))


class _Persistence(torch.nn.Module):
    """Predicts that nothing moves: the next state equals the current one (a model that fails)."""

    def __init__(self) -> None:
        super().__init__()
        self.unused = torch.nn.Parameter(torch.zeros(1))

    def forward(self, states: torch.Tensor) -> torch.Tensor:
        return states + 0 * self.unused


def test_evaluation_scores_references_on_the_same_trajectories_and_judges_by_intervals():
    references = fit_linear_references(SYSTEM, 10, seed=3, n_traj=256)
    oracle_model = _OracleFromContext()
    evaluation = evaluate_task(oracle_model, SYSTEM, n_traj=64, context_len=10, n_steps=30, seed=4,
                               references=references, n_resamples=500)
    assert set(evaluation.scores) == {MODEL, ORACLE, IN_CONTEXT, LINEAR_AR, CURRENT_STATE}
    # The oracle and in-context least squares are exact (float64); the fitted references are not.
    assert evaluation.rollout_median(ORACLE).estimate < 1e-12
    assert evaluation.rollout_median(IN_CONTEXT).estimate < 1e-9
    assert evaluation.rollout_median(CURRENT_STATE).estimate > 1e-2
    verdict = evaluation.judge(TaskCriteria(max_rollout_error=1e-6))
    assert verdict.works
    assert [c.requirement for c in verdict.checks] == [
        "median error at step 30 ≤ 1e-06",
        f"beats {LINEAR_AR} at step 30",
        f"beats {CURRENT_STATE} at step 30",
    ]
    failing = evaluate_task(_Persistence().double(), SYSTEM, n_traj=64, context_len=10, n_steps=30, seed=4,
                            references=references, n_resamples=500)
    failed = failing.judge(TaskCriteria(horizon=10))
    assert not failed.works and failed.status == "fails 2 of 2 criteria"
    assert [c.requirement for c in failed.checks if not c.passed] == [f"beats {LINEAR_AR} at step 10", f"beats {CURRENT_STATE} at step 10"]
    # The same seed gives the same trajectories, so the references score identically in both runs.
    assert_allclose(failing.scores[LINEAR_AR].rollout_error, evaluation.scores[LINEAR_AR].rollout_error)


def test_mse_is_the_mean_over_trajectories_and_components():
    references = fit_linear_references(SYSTEM, 5, seed=3, n_traj=64)
    evaluation = evaluate_task(_Persistence(), SYSTEM, n_traj=32, context_len=5, n_steps=2, seed=8, references=references,
                               n_resamples=200)
    traj = float64_system(SYSTEM).sample(32, 7, seed=evaluation.seeds["trajectories"])
    expected = float((traj.states[:, 4].float().double() - traj.states[:, 5]).pow(2).mean())
    assert evaluation.next_step_mse(MODEL).estimate == pytest.approx(expected, rel=1e-6)


def test_bad_horizons_and_mismatched_references_are_refused():
    references = fit_linear_references(SYSTEM, 5, seed=3, n_traj=64)
    evaluation = evaluate_task(_Persistence(), SYSTEM, n_traj=8, context_len=5, n_steps=3, seed=8, references=references,
                               n_resamples=100)
    with pytest.raises(ValueError, match="horizon must be a rollout step in 1..3"):
        evaluation.rollout_median(MODEL, 4)
    with pytest.raises(ValueError, match="predictor must be one of"):
        evaluation.rollout_median("transformer")
    with pytest.raises(ValueError, match="reads 5 states but context_len is 6"):
        evaluate_task(_Persistence(), SYSTEM, n_traj=8, context_len=6, n_steps=3, seed=8, references=references)


class _OracleFromContext(torch.nn.Module):
    """In-context least squares wrapped as a float64 module: a 'model' that does the task perfectly."""

    def __init__(self) -> None:
        super().__init__()
        self.unused = torch.nn.Parameter(torch.zeros(1, dtype=torch.float64))

    def forward(self, states: torch.Tensor) -> torch.Tensor:
        return InContextLeastSquares()(states) + 0 * self.unused


def test_linear_references_are_closed_form_fits_in_float64():
    references = fit_linear_references(SYSTEM, 4, seed=9, n_traj=64, windows_per_traj=5)
    assert isinstance(references[LINEAR_AR], LinearAutoregressive) and references[LINEAR_AR].window == 4
    assert references[LINEAR_AR].coef_.dtype == torch.float64 and references[CURRENT_STATE].window == 1


def test_exact_references_need_not_be_beaten_and_no_criterion_is_not_success():
    fixed = OscillatorSystem(omega0=2.0, gamma=0.1, dt=0.1, dtype="float64")
    references = fit_linear_references(fixed, 1, seed=3, n_traj=32)
    evaluation = evaluate_task(_OracleFromContext(), fixed, n_traj=16, context_len=3, n_steps=20, seed=5,
                               references=fit_linear_references(fixed, 3, seed=3, n_traj=32), n_resamples=200)
    assert references[CURRENT_STATE].window == 1
    # With a fixed ω0 the fitted linear maps are the exact answer: nothing is left to beat.
    assert evaluation.judge(TaskCriteria()).status == "no criterion"
    assert not evaluation.judge(TaskCriteria()).works
    assert evaluation.judge(TaskCriteria(max_rollout_error=1e-9)).works


def test_criteria_are_checked():
    with pytest.raises(ValueError, match="must_beat names unknown references"):
        TaskCriteria(must_beat=("linear baseline",))
    with pytest.raises(ValueError, match="max_rollout_error must be a finite number > 0"):
        TaskCriteria(max_rollout_error=-1.0)


class _Scaled(torch.nn.Module):
    """The persistence model with its output multiplied by ``factor``: a model whose weights blew up."""

    def __init__(self, factor: float) -> None:
        super().__init__()
        self.factor = torch.nn.Parameter(torch.tensor(factor, dtype=torch.float64))

    def forward(self, states: torch.Tensor) -> torch.Tensor:
        return states * self.factor


@pytest.mark.parametrize("factor, message", [(float("nan"), "not finite on 16 of 16"), (float("inf"), "not finite on 16 of 16"),
                                             (1e3, "more than 10000 times that of predicting zero")])
def test_a_model_that_blew_up_is_refused_instead_of_scored(factor, message):
    """Persistence scaled by s predicts s·x for a next state near x: its MSE is about (s − 1)² times the zero
    predictor's, so s = 1e3 is ~1e6 times it, and a NaN or infinite output is no measurement at all."""
    from physlens.training import TrainingDiverged

    references = fit_linear_references(SYSTEM, 2, seed=3, n_traj=32)
    with pytest.raises(TrainingDiverged, match=message):
        evaluate_task(_Scaled(factor), SYSTEM, n_traj=16, context_len=2, n_steps=3, seed=8, references=references,
                      n_resamples=50)
    unguarded = evaluate_task(_Scaled(factor), SYSTEM, n_traj=16, context_len=2, n_steps=3, seed=8, references=references,
                              n_resamples=50, guard=False)
    assert not np.isfinite(unguarded.scores[MODEL].one_step_squared_error).all() or unguarded.next_step_mse().estimate > 1e4
    # A bad model that is not broken is scored: s = 50 gives (s − 1)² ≈ 2.4e3 times the zero predictor's MSE.
    assert evaluate_task(_Scaled(50.0), SYSTEM, n_traj=16, context_len=2, n_steps=3, seed=8, references=references,
                         n_resamples=50).next_step_mse().estimate > 0


def test_check_model_errors_reads_the_mean_against_the_zero_predictor():
    from physlens.training import TrainingDiverged, check_model_errors
    from physlens.training.evaluation import PredictorScores

    def scores(squared: list[float]) -> PredictorScores:
        n = len(squared)
        return PredictorScores(np.asarray(squared), np.zeros(n), np.zeros((n, 1)))

    check_model_errors(scores([0.0, 2e4]), zero_mse=1.0)  # mean 1e4: at the limit, not above it
    with pytest.raises(TrainingDiverged, match=r"next-step MSE on held-out trajectories is 1\.5e\+04"):
        check_model_errors(scores([1e4, 2e4]), zero_mse=1.0)
    with pytest.raises(TrainingDiverged, match="not finite on 1 of 2"):
        check_model_errors(scores([0.0, float("nan")]), zero_mse=1.0)
    with pytest.raises(ValueError, match="zero_mse must be a finite number >= 0"):
        check_model_errors(scores([0.0]), zero_mse=float("nan"))


def test_the_next_step_error_is_the_predictors_own_prediction_from_the_context():
    from physlens.training.evaluation import score_predictor

    trajectories = float64_system(SYSTEM).sample(16, 9, seed=2)
    persistence = _Persistence().double()
    scores = score_predictor(persistence, trajectories, 5, 4)
    with torch.no_grad():
        predicted = persistence(trajectories.states[:, :5])[:, -1]
    expected = (predicted - trajectories.states[:, 5]).pow(2).mean(dim=-1)
    assert_allclose(scores.one_step_squared_error, expected.numpy(), rtol=1e-15)


def test_intervals_are_computed_once_and_never_for_replaced_scores():
    from physlens.stats import bootstrap_interval

    references = fit_linear_references(SYSTEM, 5, seed=3, n_traj=64)
    evaluation = evaluate_task(_Persistence(), SYSTEM, n_traj=32, context_len=5, n_steps=3, seed=8, references=references,
                               n_resamples=200)
    first = evaluation.rollout_median(MODEL, 2)
    assert evaluation.rollout_median(MODEL, 2) is first
    expected = bootstrap_interval(evaluation.scores[MODEL].rollout_error[:, 1], n_resamples=200, seed=evaluation.seeds["bootstrap"])
    assert (first.estimate, first.low, first.high) == (expected.estimate, expected.low, expected.high)
    difference = evaluation.rollout_difference(MODEL, LINEAR_AR)
    evaluation.scores[MODEL] = evaluation.scores[CURRENT_STATE]
    assert evaluation.rollout_median(MODEL, 2).estimate == evaluation.rollout_median(CURRENT_STATE, 2).estimate
    assert evaluation.rollout_difference(MODEL, LINEAR_AR).estimate != difference.estimate


def test_scale_equivariance_separates_a_model_that_divides_by_its_first_state_from_one_that_does_not():
    # Planted answers: the exact linear step and a model that divides by its first state's size scale with their
    # context (differences of rounding only); the same network reading physical units, and a predictor with a
    # constant offset, do not (differences of the size of their outputs' departure from linearity).
    from physlens.models import OscillatorTransformer, TransformerConfig
    from physlens.training.evaluation import ScaleCheck, scale_equivariance

    config = dict(d_model=16, d_head=8, n_heads=2, n_layers=2, n_ctx=8, d_in=2, attn_only=False, causal=True, d_mlp=32,
                  positional_embedding=True, seed=3)
    scaled = OscillatorTransformer(TransformerConfig(**config, scale_by_first_state=True)).eval()
    unscaled = OscillatorTransformer(TransformerConfig(**config, scale_by_first_state=False)).eval()

    class Offset(torch.nn.Module):
        def forward(self, states: torch.Tensor) -> torch.Tensor:
            return states + 0.1

    checks = {name: scale_equivariance(model, SYSTEM, n_traj=16, context_len=8, n_steps=10, seed=4, factor=3.0)
              for name, model in (("scaled", scaled), ("unscaled", unscaled), ("offset", Offset()))}
    assert checks["scaled"].max_difference < 1e-4
    assert checks["unscaled"].median_difference > 1e-2 and checks["offset"].median_difference > 1e-2
    # a power of two scales float numbers exactly: the scaled model's rollouts are then the same bits
    assert scale_equivariance(scaled, SYSTEM, n_traj=16, context_len=8, n_steps=10, seed=4, factor=2.0).max_difference == 0.0
    assert isinstance(checks["scaled"], ScaleCheck) and checks["scaled"].to_dict()["n_steps"] == 10
    with pytest.raises(ValueError, match="factor must be"):
        scale_equivariance(scaled, SYSTEM, n_traj=4, context_len=8, n_steps=2, seed=0, factor=1.0)
