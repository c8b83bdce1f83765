"""The closed-form linear autoregressive model and linear surrogates of trained models."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.linear_model import LinearRegression

from physlens.models import OscillatorTransformer, TransformerConfig
from physlens.models.linear import LinearAutoregressive, sliding_windows
from physlens.probes.surrogate import LinearSurrogate
from physlens.systems import OscillatorSystem, Uniform, propagator
from physlens.training.rollouts import relative_error, rollout


def test_window_one_fit_recovers_exact_propagator():
    data = OscillatorSystem(omega0=2.0, gamma=0.1, dtype="float64").sample(20, 30, seed=0)
    model = LinearAutoregressive(window=1).fit(data.states)
    torch.testing.assert_close(model.coef_[0].T, propagator(2.0, 0.1, 0.1), rtol=0, atol=1e-12)
    torch.testing.assert_close(model.intercept_, torch.zeros(2, dtype=torch.float64), rtol=0, atol=1e-12)
    pred = rollout(model, data.states[:, :1], 29)
    assert float(relative_error(pred, data.states[:, 1:]).max()) < 1e-10


def test_matches_sklearn_least_squares_on_windows():
    data = OscillatorSystem(omega0=Uniform(1.0, 4.0), dtype="float64").sample(40, 12, seed=1)
    windows, targets = sliding_windows(data.states, 3)
    assert windows.shape == (40 * 9, 3, 2)
    torch.testing.assert_close(windows[1], data.states[0, 1:4])
    torch.testing.assert_close(targets[1], data.states[0, 4])
    ours = LinearAutoregressive(window=3).fit(data.states)
    design = np.c_[windows.reshape(len(windows), -1).numpy(), np.ones(len(windows))]
    solution, *_ = np.linalg.lstsq(design, targets.numpy(), rcond=None)
    np.testing.assert_allclose(ours.predict(windows).numpy(), design @ solution, atol=1e-8)
    # scikit-learn's LinearRegression lands on a worse least-squares fit of these nearly collinear windows
    sklearn_sse = ((LinearRegression().fit(design[:, :-1], targets.numpy()).predict(design[:, :-1]) - targets.numpy()) ** 2).sum()
    assert float(((ours.predict(windows) - targets) ** 2).sum()) <= sklearn_sse
    assert ours(data.states[:, :5]).shape == (40, 3, 2)
    torch.testing.assert_close(ours(data.states[:, :5])[:, -1], ours.predict(data.states[:, 2:5]))


def test_linear_model_errors():
    with pytest.raises(ValueError, match="more than window"):
        LinearAutoregressive(window=5).fit(torch.zeros(3, 5, 2, dtype=torch.float64))
    with pytest.raises(ValueError, match="finite"):
        LinearAutoregressive(window=1).fit(torch.full((3, 5, 2), float("nan")))
    with pytest.raises(RuntimeError, match="not fitted"):
        LinearAutoregressive().predict(torch.zeros(1, 1, 2))


def test_surrogate_of_window_one_model_is_exact():
    cfg = TransformerConfig(d_model=4, n_layers=2, n_heads=2, d_head=2, n_ctx=6, attn_window=1, dtype="float64")
    model = OscillatorTransformer(cfg).eval()
    data = OscillatorSystem(dtype="float64").sample(30, 6, seed=2)
    surrogate = LinearSurrogate(window=1).fit(model, data.states)
    assert surrogate.fit_r2_ == pytest.approx(1.0, abs=1e-12)
    fidelity = surrogate.fidelity(model, data.states, 15, threshold=1e-6)
    assert fidelity.divergence_step is None
    assert float(fidelity.divergence.max()) < 1e-9
    with torch.no_grad():
        gap = model(data.states[:, :1])[:, 0] - surrogate.predict(data.states[:, :1])  # the same affine map
    assert float(gap.abs().max()) < 1e-12


def test_surrogate_of_nonlinear_model_diverges():
    cfg = TransformerConfig(d_model=8, n_layers=2, n_heads=2, d_head=4, n_ctx=6, causal=False, attn_only=False, dtype="float64")
    model = OscillatorTransformer(cfg).eval()
    system = OscillatorSystem(omega0=Uniform(1.0, 4.0), energy_range=(0.5, 2.0), dtype="float64")
    surrogate = LinearSurrogate().fit(model, system.sample(200, 6, seed=3).states)
    fidelity = surrogate.fidelity(model, system.sample(20, 6, seed=4).states, 10, threshold=1e-3)
    assert fidelity.one_step_r2 < 1 - 1e-6
    assert fidelity.divergence_step is not None
    assert set(fidelity.to_dict()) >= {"one_step_r2", "divergence", "divergence_step"}


def test_spectral_radius_of_the_exact_propagator_is_the_damping():
    """A window-1 fit of ẋ = p, ṗ = −ω0²x − 2γp is e^{AΔt}: its eigenvalues have modulus e^{−γΔt}
    (scipy's expm as the reference)."""
    from scipy.linalg import expm

    omega0, gamma, dt = 2.0, 0.1, 0.1
    model = LinearAutoregressive(window=1).fit(OscillatorSystem(omega0=omega0, gamma=gamma, dt=dt, dtype="float64").sample(20, 30, seed=0).states)
    reference = np.abs(np.linalg.eigvals(expm(np.array([[0.0, 1.0], [-(omega0**2), -2 * gamma]]) * dt))).max()
    assert model.spectral_radius() == pytest.approx(reference, rel=1e-9)
    assert reference == pytest.approx(np.exp(-gamma * dt), rel=1e-12)


def test_spectral_radius_of_a_scalar_recurrence_is_its_largest_root():
    """x_{t+1} = Σ c_k x_{t−w+1+k}: the companion matrix's eigenvalues are the roots of
    z^w − c_{w−1} z^{w−1} − … − c_0 (numpy's roots as the reference), here one of them outside
    the unit circle."""
    rng = np.random.default_rng(np.random.SeedSequence(5))
    c = np.array([0.5, -0.2, 1.3])  # oldest first
    x = rng.normal(size=(8, 3))
    states = [x[:, i] for i in range(3)]
    for _ in range(9):
        states.append(sum(c[k] * states[-3 + k] for k in range(3)))
    trajectories = torch.tensor(np.stack(states, axis=1)[..., None])
    model = LinearAutoregressive(window=3).fit(trajectories)
    np.testing.assert_allclose(model.coef_[:, 0, 0].numpy(), c, atol=1e-9)
    reference = np.abs(np.roots([1.0, -c[2], -c[1], -c[0]])).max()
    assert reference > 1
    assert model.spectral_radius() == pytest.approx(reference, rel=1e-8)
    with pytest.raises(ValueError, match="maps 2 to 1"):
        LinearAutoregressive(window=1).fit(torch.zeros(4, 1, 2, dtype=torch.float64), torch.randn(4, 1, dtype=torch.float64)).spectral_radius()


def test_fidelity_reports_the_surrogates_stability():
    cfg = TransformerConfig(d_model=4, n_layers=2, n_heads=2, d_head=2, n_ctx=6, attn_window=1, dtype="float64")
    model = OscillatorTransformer(cfg).eval()
    data = OscillatorSystem(dtype="float64").sample(30, 6, seed=2)
    fidelity = LinearSurrogate(window=1).fit(model, data.states).fidelity(model, data.states, 5)
    assert fidelity.spectral_radius == pytest.approx(LinearSurrogate(window=1).fit(model, data.states).linear_.spectral_radius())
    assert fidelity.surrogate_stable == (fidelity.spectral_radius < 1)
    assert fidelity.to_dict()["spectral_radius"] == fidelity.spectral_radius
