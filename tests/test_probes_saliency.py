"""Saliency: Jacobians against the analytic linear map of a window-1 model and finite differences."""

from __future__ import annotations

import torch

from physlens.models import OscillatorTransformer, TransformerConfig
from physlens.probes.input_attribution import off_diagonal_fraction, saliency, saliency_matrix


def window_one_linear_map(model: OscillatorTransformer) -> torch.Tensor:
    """With attention to the current step only, every block maps r -> r (I + Σ_h W_V^h W_O^h)."""
    d = model.cfg.d_model
    matrix = model.W_E.detach()
    for block in model.blocks:
        ov = sum(block.attn.W_V[h] @ block.attn.W_O[h] for h in range(model.cfg.n_heads))
        matrix = matrix @ (torch.eye(d, dtype=matrix.dtype) + ov.detach())
    return matrix @ model.W_U.detach()  # y = x M


def test_window_one_saliency_is_block_diagonal_and_equals_linear_map():
    cfg = TransformerConfig(d_model=4, n_layers=2, n_heads=2, d_head=2, n_ctx=6, attn_window=1, dtype="float64")
    model = OscillatorTransformer(cfg).eval()
    inputs = torch.randn(5, 6, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    jac = saliency(model, inputs, batch_size=2)
    assert jac.shape == (5, 6, 2, 6, 2)
    eye = torch.eye(6, dtype=torch.bool)
    assert float(jac.permute(0, 2, 4, 1, 3)[..., ~eye].abs().max()) < 1e-14
    assert off_diagonal_fraction(jac) < 1e-20
    expected = window_one_linear_map(model).T  # ∂y_i/∂x_j = M[j, i]
    for t in range(6):
        torch.testing.assert_close(jac[:, t, :, t, :], expected.expand(5, 2, 2), rtol=0, atol=1e-12)


def test_full_attention_saliency_matches_finite_differences():
    cfg = TransformerConfig(d_model=4, n_layers=1, n_heads=2, d_head=2, n_ctx=5, causal=False, dtype="float64")
    model = OscillatorTransformer(cfg).eval()
    inputs = torch.randn(2, 5, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    jac = saliency(model, inputs)
    eps = 1e-6
    for s, j in ((0, 1), (3, 0)):
        bumped = inputs.clone()
        bumped[:, s, j] += eps
        with torch.no_grad():
            numeric = (model(bumped) - model(inputs)) / eps
        torch.testing.assert_close(jac[:, :, :, s, j], numeric, rtol=1e-4, atol=1e-5)
    assert off_diagonal_fraction(jac) > 0.01
    assert saliency_matrix(jac).shape == (10, 10)


class _CurrentState(torch.nn.Module):
    """Planted: each prediction is a fixed linear map of its own step only."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ torch.tensor([[0.9, -0.2], [0.3, 0.8]], dtype=x.dtype)


class _RunningMean(torch.nn.Module):
    """Planted: each prediction is the mean of every state so far (reads the whole causal context)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        counts = torch.arange(1, x.shape[1] + 1, dtype=x.dtype).reshape(1, -1, 1)
        return x.cumsum(dim=1) / counts


def test_the_off_diagonal_share_tells_a_map_of_the_current_state_from_one_of_the_context():
    inputs = torch.randn(3, 8, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    assert off_diagonal_fraction(saliency(_CurrentState(), inputs)) == 0.0
    # running mean: ∂y_t/∂x_s = I/(t+1) for s ≤ t, so ‖J_t‖² = 2/(t+1), of which 2/(t+1)² on the diagonal
    t = torch.arange(1, 9, dtype=torch.float64)
    expected = float(((2 / t) - (2 / t**2)).sum() / (2 / t).sum())
    assert abs(off_diagonal_fraction(saliency(_RunningMean(), inputs)) - expected) < 1e-12
    assert expected > 0.4  # 0.438 for 8 positions: far from the 0 of a current-state map
