"""Input-feature baselines decode what is a low-order function of the last input states, and nothing else."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.linear_model import RidgeCV
from sklearn.model_selection import cross_val_score

from physlens.probes.baselines import input_baseline_r2, input_features
from physlens.systems import OscillatorSystem, Uniform


@pytest.fixture
def trajectories():
    return OscillatorSystem(omega0=Uniform(1.0, 4.0), dtype="float64").sample(600, 6, seed=0)


def test_features_are_the_monomials_of_the_window(trajectories) -> None:
    features = input_features(trajectories.states, position=4, last_k=2, degree=2)
    window = trajectories.states[:, 3:5].reshape(600, 4).numpy()
    assert features.shape == (600, 4 + 10)
    np.testing.assert_allclose(features[:, :4], window)
    np.testing.assert_allclose(features[:, 4], window[:, 0] ** 2)


def test_a_quadratic_of_the_input_is_decoded_and_noise_is_not(trajectories, rng: np.random.Generator) -> None:
    energy = trajectories.energy[:, 4]  # ½(p² + ω0² x²): quadratic in the states once ω0 is read off them
    per_unit = trajectories.labels(first_state_units=True)["energy"][:, 4]  # E / ‖s0‖²: ω0 and the phase alone
    r2_units = input_baseline_r2(trajectories.states, per_unit, position=4, scale_by_first_state=True)
    noise = input_baseline_r2(trajectories.states, rng.normal(size=600), position=4)
    assert r2_units > 0.9
    assert noise < 0.05
    # An independent reference: scikit-learn's RidgeCV on the same features, 5-fold.
    features = input_features(trajectories.states, position=4, scale_by_first_state=True)
    features = (features - features.mean(0)) / features.std(0)
    reference = cross_val_score(RidgeCV(alphas=np.logspace(-6, 3, 10)), features, per_unit.numpy(), cv=5).mean()
    assert abs(r2_units - reference) < 0.05
    assert input_baseline_r2(trajectories.states, energy, position=4) > 0.5


@pytest.mark.unchecked_types  # passes a label of the wrong length on purpose, to check physlens's own message
@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"position": 9}, "position must be"), ({"position": 1, "last_k": 3}, "last_k must be <= position"), ({"position": 4, "degree": 0}, "degree")],
)
def test_bad_arguments_are_named(trajectories, kwargs, message) -> None:
    with pytest.raises(ValueError, match=message):
        input_features(trajectories.states, **kwargs)
    with pytest.raises(ValueError, match="one value per trajectory"):
        input_baseline_r2(trajectories.states, torch.zeros(5), position=4)
