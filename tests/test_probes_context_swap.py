"""Context-swap test and steering on predictors with known answers: the exact dynamics and a model that reads ω0."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from numpy.testing import assert_allclose

from physlens.models.base import HookPoint
from physlens.models.linear import LinearAutoregressive
from physlens.models.reference import InContextLeastSquares
from physlens.probes.context_swap import context_swap_test
from physlens.probes.steering import fit_probe_direction, model_fingerprint, steering_sweep
from physlens.systems import OscillatorSystem, fit_propagator, parameters_from_propagator, propagator
from transformer_lens.HookedRootModule import HookedRootModule

SYSTEM = OscillatorSystem(omega0={"range": [1.0, 4.0]}, gamma=0.1, dt=0.1, dtype="float64")


def test_the_exact_dynamics_have_swap_slope_one():
    a, b = SYSTEM.sample_swap_pairs(64, 12, seed=1)
    result = context_swap_test(InContextLeastSquares(), a, b, n_resamples=300)
    assert result.slope.estimate == pytest.approx(1.0, abs=1e-9)
    assert result.r2 == pytest.approx(1.0, abs=1e-9)
    assert result.slope.low <= 1.0 <= result.slope.high and result.n_pairs == 64


def test_a_model_that_ignores_the_context_has_swap_slope_zero():
    a, b = SYSTEM.sample_swap_pairs(32, 12, seed=2)
    current_only = LinearAutoregressive(window=1).fit(SYSTEM.sample(64, 20, seed=3).states)
    result = context_swap_test(current_only, a, b, n_resamples=300)
    assert result.slope.estimate == pytest.approx(0.0, abs=1e-12)


def test_swap_test_refuses_pairs_that_do_not_share_the_final_state():
    a, _ = SYSTEM.sample_swap_pairs(8, 12, seed=4)
    other = SYSTEM.sample(8, 12, seed=5)
    with pytest.raises(ValueError, match="same state"):
        context_swap_test(InContextLeastSquares(), a, other)


class ReadsOmega(HookedRootModule):
    """Infers ω0 from its context by least squares, exposes the estimate (plus junk features) at
    ``hook_omega``, and steps the last state with the exact propagator of the estimate."""

    def __init__(self, gamma: float = 0.1, dt: float = 0.1, n_junk: int = 7) -> None:
        super().__init__()
        self.gamma = torch.nn.Parameter(torch.tensor(gamma, dtype=torch.float64), requires_grad=False)
        self.register_buffer("junk", torch.linspace(1.0, 2.0, n_junk, dtype=torch.float64))
        self.dt = dt
        self.hook_omega = HookPoint()  # [batch, pos, 1 + n_junk]
        self.setup()

    def forward(self, states: torch.Tensor) -> torch.Tensor:
        omega = parameters_from_propagator(fit_propagator(states), self.dt)["omega0"]  # [batch]
        energy = states[:, -1].pow(2).sum(-1, keepdim=True)  # varies, but the model never reads it
        features = torch.cat([omega[:, None], energy * self.junk], dim=-1)
        features = self.hook_omega(features[:, None].expand(-1, states.shape[1], -1).clone())
        kernel = propagator(features[:, -1, 0], self.gamma, self.dt)
        return torch.einsum("bij,bj->bi", kernel, states[:, -1])[:, None]


def test_steering_along_the_omega_direction_shifts_the_frequency_one_for_one():
    # The model re-reads ω0 from a window that fills with its own steered steps, so the shift grows
    # slowly along a rollout: a short rollout from a long context measures the push itself.
    model = ReadsOmega()
    train = SYSTEM.sample(200, 40, seed=6)
    direction = fit_probe_direction(model, train, "hook_omega", 39, "omega0", seq_len=40, seed=0, alphas=[1e-8])
    assert direction.cv_r2 > 0.999
    contexts = SYSTEM.sample(24, 40, seed=7)
    result = steering_sweep(model, direction, contexts, [-0.3, 0.0, 0.3, 0.6], n_steps=4, n_resamples=300)
    assert result.slope.estimate == pytest.approx(1.0, abs=0.1)
    assert abs(result.control_slope.estimate) < 0.9 * result.slope.estimate
    assert_allclose(result.to_dict()["median_omega0_shift"], [-0.3, 0.0, 0.3, 0.6], atol=0.06)
    # Pushing at every position changes nothing here: the model reads its estimate at the last one only.
    everywhere = steering_sweep(model, direction, contexts, [-0.3, 0.0, 0.3, 0.6], n_steps=4, positions="all", n_resamples=300)
    assert everywhere.slope.estimate == pytest.approx(result.slope.estimate, rel=1e-9)
    with pytest.raises(ValueError, match="positions must be one of"):
        steering_sweep(model, direction, contexts, [0.0, 0.3], positions="last")


def test_steering_with_a_probe_from_another_model_is_refused():
    fitted_on = ReadsOmega(gamma=0.1)
    other = ReadsOmega(gamma=0.2)
    assert model_fingerprint(fitted_on) != model_fingerprint(other)
    direction = fit_probe_direction(fitted_on, SYSTEM.sample(50, 10, seed=8), "hook_omega", 9, "omega0", seq_len=10)
    with pytest.raises(ValueError, match="fitted on another model"):
        steering_sweep(other, direction, SYSTEM.sample(4, 10, seed=9), [0.0, 0.1])
    with pytest.raises(ValueError, match="alphas must hold 0"):
        steering_sweep(fitted_on, direction, SYSTEM.sample(4, 10, seed=9), [0.1, 0.2])


@pytest.mark.parametrize("positions", ["probe", "all"])
def test_steering_a_transformer_at_resid_mid_equals_steering_through_the_hook(positions):
    # The unhooked rollout step adds the push itself; any other hook on the model sends the sweep through
    # the hooked forward, whose hook adds it in place: the independent reference.
    from physlens.models.transformer import OscillatorTransformer, TransformerConfig

    cfg = TransformerConfig(n_layers=2, d_model=8, n_heads=2, d_head=4, n_ctx=12, dtype="float64", seed=3, causal=True,
                            attn_only=False, positional_embedding=True, scale_by_first_state=True)
    model = OscillatorTransformer(cfg).eval()
    direction = fit_probe_direction(model, SYSTEM.sample(64, 12, seed=1), "blocks.0.hook_resid_mid", 11, "omega0", seq_len=12)
    contexts = SYSTEM.sample(16, 12, seed=2)
    alphas = [-0.5, 0.0, 0.5, 1.0]
    fast = steering_sweep(model, direction, contexts, alphas, n_steps=6, positions=positions, n_resamples=200)
    with model.hooks(fwd_hooks=[("hook_embed", lambda activation, hook: activation)]):
        hooked = steering_sweep(model, direction, contexts, alphas, n_steps=6, positions=positions, n_resamples=200)
    assert_allclose(fast.omega0_shift, hooked.omega0_shift, rtol=1e-8, atol=1e-10)
    assert_allclose(fast.control_shift, hooked.control_shift, rtol=1e-8, atol=1e-10)
    assert np.nanmax(abs(fast.omega0_shift)) > 1e-3  # the push did act (an untrained model: most rollouts are no rotation, NaN)
