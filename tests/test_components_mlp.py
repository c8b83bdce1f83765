"""The MLP component against the hand computation (exact GELU, 0.5·x·(1 + erf(x/√2)), in float64)."""

from __future__ import annotations

import math

import torch

from physlens.models.components import MLP
from physlens.models.transformer_config import TransformerConfig


def test_mlp_is_the_hand_computation(seed: int) -> None:
    cfg = TransformerConfig(d_model=4, d_mlp=9, attn_only=False, dtype="float64")
    mlp = MLP(cfg, torch.Generator().manual_seed(seed))
    with torch.no_grad():
        mlp.b_in.normal_(generator=torch.Generator().manual_seed(1))
        mlp.b_out.normal_(generator=torch.Generator().manual_seed(2))
    x = torch.randn(3, 5, 4, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    expected = torch.zeros(3, 5, 4, dtype=torch.float64)
    for b in range(3):
        for p in range(5):
            for j in range(9):
                pre = float((x[b, p] @ mlp.W_in[:, j] + mlp.b_in[j]).detach())
                expected[b, p] += 0.5 * pre * (1 + math.erf(pre / math.sqrt(2))) * mlp.W_out[j].detach()
            expected[b, p] += mlp.b_out.detach()
    torch.testing.assert_close(mlp(x), expected, rtol=1e-12, atol=1e-12)


def test_a_subclass_changes_the_nonlinearity_only(seed: int) -> None:
    class Linear(MLP):
        def act_fn(self, pre):
            return pre

    cfg = TransformerConfig(d_model=4, d_mlp=6, attn_only=False, dtype="float64")
    mlp = Linear(cfg, torch.Generator().manual_seed(seed))
    x = torch.randn(2, 3, 4, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    torch.testing.assert_close(mlp(x), x @ mlp.W_in @ mlp.W_out, rtol=1e-12, atol=1e-12)
    assert not bool(MLP(cfg).W_in.any()) and not bool(MLP(cfg).W_out.any())  # no generator: zeros
