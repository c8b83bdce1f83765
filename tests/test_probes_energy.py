"""Energy along rollouts: an exact predictor's energy decays as the truth's, and the fitted rate tracks γ."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from physlens.models import ContextBlindOrganism, InContextLeastSquares
from physlens.probes.energy import decay_rate, rollout_energy_decay
from physlens.systems import OscillatorSystem, Uniform


def test_decay_rate_of_an_exponential_is_its_rate() -> None:
    t = 0.1 * np.arange(50)
    energies = np.exp(-2 * np.array([0.1, 0.3])[:, None] * t) * 2.0
    np.testing.assert_allclose(decay_rate(energies, 0.1), [0.1, 0.3], atol=1e-12)
    with pytest.raises(ValueError, match="finite and positive"):
        decay_rate(np.zeros((1, 3)), 0.1)


def test_an_exact_predictor_decays_as_the_truth_and_a_context_blind_one_does_not() -> None:
    system = OscillatorSystem(omega0=Uniform(1.0, 4.0), gamma=Uniform(0.05, 0.3), dtype="float64")
    trajectories = system.sample(64, 20 + 120, seed=0)
    exact = rollout_energy_decay(InContextLeastSquares(), trajectories, context_len=20)
    assert exact.rmse() < 1e-8 and exact.r2() > 0.999999
    # the fit over 12 time units follows the label to the oscillation's bias
    assert np.sqrt(((exact.truth_gamma - exact.true_gamma) ** 2).mean()) < 0.02
    blind = rollout_energy_decay(ContextBlindOrganism.from_system(system, n_ctx=200), trajectories, context_len=20)
    assert blind.r2() < 0.5  # one γ (and ω0) for every trajectory: its decay cannot follow each one's
    with pytest.raises(ValueError, match="at least 2 steps past"):
        rollout_energy_decay(InContextLeastSquares(), trajectories, context_len=139)
