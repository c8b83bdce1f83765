"""Algorithm comparison on predictors whose algorithm is known by construction."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from physlens.models.reference import InContextLeastSquares
from physlens.probes.algorithms import (
    CURRENT_STATE,
    LEAST_SQUARES,
    LINEAR_AR,
    ORACLE,
    compare_algorithms,
    fit_ar_candidates,
)
from physlens.systems import OscillatorSystem

SYSTEM = OscillatorSystem(omega0={"range": [1.0, 4.0]}, gamma=0.1, dt=0.1, dtype="float64")
KS = list(range(2, 13))


@pytest.fixture(scope="module")
def candidates():
    return fit_ar_candidates(SYSTEM, KS, seed=1, n_traj=256)


@pytest.fixture(scope="module")
def trajectories():
    return SYSTEM.sample(128, 12 + 10, seed=2)


class UsesARk:
    """A 'model' that is the fitted AR-k filter for whatever context length it is given."""

    def __init__(self, fits):
        self.fits = fits

    def __call__(self, states: torch.Tensor) -> torch.Tensor:
        return self.fits[states.shape[1]](states)[:, -1:]


def test_a_fixed_linear_filter_is_recognised_as_linear_ar(candidates, trajectories):
    result = compare_algorithms(UsesARk(candidates), trajectories, KS, candidates, horizon=10)
    np.testing.assert_allclose(result.shared[LINEAR_AR], 1.0, atol=1e-9)
    np.testing.assert_allclose(result.rollout_shared[LINEAR_AR], 1.0, atol=1e-9)
    np.testing.assert_allclose(result.model_rollout_error, result.rollout_error[LINEAR_AR], rtol=1e-9)
    assert result.matched_from(LINEAR_AR) == 2
    assert "linear AR-k" in result.verdict()


def test_a_model_that_ignores_the_context_is_recognised_as_current_state_only(candidates, trajectories):
    current = candidates[1]
    result = compare_algorithms(lambda s: current(s[:, -1:]), trajectories, KS, candidates, horizon=10)
    np.testing.assert_allclose(result.rollout_shared[CURRENT_STATE], 1.0, atol=1e-9)
    assert result.matched_from(CURRENT_STATE) == 2


def test_exact_candidates_explain_none_of_a_noisy_models_error(candidates, trajectories):
    # In-context least squares plus independent noise: from k = 3 least squares and the oracle are exact, so
    # they reproduce none of the model's mistakes; at k = 2 (minimum-norm least squares) they are its mistakes.
    generator = torch.Generator().manual_seed(3)

    def noisy(states: torch.Tensor) -> torch.Tensor:
        exact = InContextLeastSquares()(states)
        return exact + 1e-4 * torch.randn(exact.shape, generator=generator, dtype=exact.dtype)

    result = compare_algorithms(noisy, trajectories, KS, candidates, horizon=10)
    assert np.all(np.abs(result.shared[ORACLE]) < 0.05)
    assert np.all(np.abs(result.shared[LEAST_SQUARES][1:]) < 0.05)
    assert result.best_match(rollout=False)[0] == LEAST_SQUARES and result.best_match(rollout=False)[-1] is None
    # One step ahead the fitted filter is nearly exact from k = 3; over a rollout its errors compound.
    assert result.more_accurate_than(LINEAR_AR, rollout=False) == []
    assert result.rollout_error[LINEAR_AR][1] > result.model_rollout_error[1]


def test_context_lengths_are_checked(candidates, trajectories):
    with pytest.raises(ValueError, match="context_lengths must be >= 2"):
        compare_algorithms(UsesARk(candidates), trajectories, [1, 2], candidates)
    with pytest.raises(ValueError, match="must be <= 12"):
        compare_algorithms(UsesARk(candidates), trajectories, [13], candidates, horizon=10)
    with pytest.raises(ValueError, match="lack the AR fits for k = \\[20\\]"):
        compare_algorithms(UsesARk(candidates), SYSTEM.sample(4, 30, seed=0), [20], candidates, horizon=10)
