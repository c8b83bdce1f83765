"""Energy along rollouts: an exact predictor's energy decays as the truth's, and the fitted rate tracks γ."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from physlens.models import ContextBlindOrganism, InContextLeastSquares
from physlens.probes.energy import decay_rate, probe_sites_beside_controls, rollout_energy_decay
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


def test_an_exact_rollout_follows_the_decay_law_as_closely_as_the_truth() -> None:
    # E(T)/E(0) of the truth differs from e^{−2γT} only by the oscillation of dE/dt; an exact predictor
    # reproduces the truth's ratio, so its distance from the law is the truth's.
    system = OscillatorSystem(omega0=Uniform(1.0, 4.0), gamma=Uniform(0.05, 0.3), dtype="float64")
    trajectories = system.sample(64, 20 + 120, seed=1)
    exact = rollout_energy_decay(InContextLeastSquares(), trajectories, context_len=20)
    np.testing.assert_allclose(exact.law_ratio(), np.exp(-2 * trajectories.gamma.numpy() * 119 * 0.1))
    assert exact.law_error("model") == pytest.approx(exact.law_error("truth"), rel=1e-6)
    assert exact.law_error("truth") < 0.5  # the law holds on average over several periods
    summary = exact.to_dict()
    assert summary["model_law_error"] == exact.law_error() and summary["median_true_ratio"] < 1
    with pytest.raises(ValueError, match="which must be"):
        exact.law_error("oracle")


def _sites(n: int) -> list[tuple[str, int]]:
    return [("hook", p) for p in range(n)]


def test_a_planted_label_is_found_and_noise_is_not() -> None:
    # Site 0 holds the label itself (R² ≈ 1), site 1 holds noise (R² ≈ 0); controls are noise too, so the
    # selectivity is ≈ 1 at site 0 and ≈ 0 at site 1, and the shuffled-label probe finds nothing anywhere.
    generator = torch.Generator().manual_seed(0)
    n = 256
    y = torch.randn(n, generator=generator, dtype=torch.float64)
    planted = torch.stack([torch.stack([y, torch.randn(n, generator=generator, dtype=torch.float64)], -1),
                           torch.randn(n, 2, generator=generator, dtype=torch.float64)], dim=1)  # [n, site, d]
    controls = [torch.randn(n, 2, 2, generator=generator, dtype=torch.float64) for _ in range(2)]
    result = probe_sites_beside_controls(planted, controls, y[:, None].expand(n, 2), _sites(2), label="planted",
                                         baseline_r2=np.array([0.2, 0.0]))
    assert result.r2[0] > 0.999 and abs(result.r2[1]) < 0.05
    assert result.control_r2.shape == (2, 2) and float(np.abs(result.control_r2).max()) < 0.05
    assert float(np.abs(result.shuffled_r2).max()) < 0.05
    assert result.selectivity[0] > 0.95 and abs(result.selectivity[1]) < 0.1
    assert result.selectivity_over_baseline[0] == pytest.approx(result.r2[0] - 0.2)
    assert result.best_site() == ("hook", 0)
    assert result.to_dict()["sites"]["hook@0"]["input_baseline_r2"] == 0.2


def test_a_label_the_input_already_gives_has_no_selectivity_over_the_baseline() -> None:
    # The physical energy at step t is a quadratic of the state: quadratic features of the last input
    # states give it exactly, so a site that holds it is no better than the input.
    system = OscillatorSystem(omega0=2.0, gamma=0.1, dtype="float64")
    data = system.sample(200, 6, seed=2)
    from physlens.probes.baselines import input_baseline_r2
    from physlens.probes.parity import quadratic_features

    y = data.energy[:, 5]
    baseline = input_baseline_r2(data.states, y, position=5, last_k=1)
    assert baseline > 0.999
    site = quadratic_features(data.states[:, 5])[:, None]  # a "site" that computes x², xp, p²
    result = probe_sites_beside_controls(site, [torch.randn(200, 1, site.shape[-1], dtype=torch.float64)], y[:, None],
                                         [("quadratic", 5)], label="energy", baseline_r2=np.array([baseline]))
    assert result.r2[0] > 0.999 and abs(result.selectivity_over_baseline[0]) < 1e-3


@pytest.mark.unchecked_types
@pytest.mark.parametrize(
    "change, match",
    [
        ({"y": torch.zeros(8, 3)}, "y must be"),
        ({"sites": _sites(1)}, "sites must name every site"),
        ({"control_features": []}, "control_features must hold"),
        ({"control_features": [torch.zeros(8, 1, 2)]}, "every control_features entry"),
        ({"baseline_r2": np.zeros(3)}, "baseline_r2 must hold one value per site"),
    ],
)
def test_site_probe_inputs_are_checked_by_name(change, match) -> None:
    arguments = {"features": torch.randn(8, 2, 2, dtype=torch.float64), "control_features": [torch.randn(8, 2, 2, dtype=torch.float64)],
                 "y": torch.randn(8, 2, dtype=torch.float64), "sites": _sites(2)}
    arguments.update(change)
    with pytest.raises(ValueError, match=match):
        probe_sites_beside_controls(arguments.pop("features"), **{k: v for k, v in arguments.items()}, label="x", n_folds=2)
