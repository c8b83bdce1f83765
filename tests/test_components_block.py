"""The block component is x + attn(ln1(x)), then + mlp(ln2(·)), and refuses a norm with nothing to feed."""

from __future__ import annotations

import pytest
import torch

from physlens.models.components import MLP, Attention, Block, LayerNorm
from physlens.models.transformer_config import TransformerConfig


def _randomised(norm: LayerNorm, seed: int) -> LayerNorm:
    with torch.no_grad():
        norm.w.uniform_(0.5, 2.0, generator=torch.Generator().manual_seed(seed))
        norm.b.uniform_(-1.0, 1.0, generator=torch.Generator().manual_seed(seed + 1))
    return norm


def test_block_adds_attention_then_mlp_each_through_its_norm(seed: int) -> None:
    cfg = TransformerConfig(d_model=6, n_heads=2, d_head=3, n_ctx=5, attn_only=False, layer_norm=True, dtype="float64")
    generator = torch.Generator().manual_seed(seed)
    attn, mlp = Attention(cfg, generator), MLP(cfg, generator)
    ln1, ln2 = _randomised(LayerNorm(cfg), 1), _randomised(LayerNorm(cfg), 3)
    block = Block(attn, mlp, ln1, ln2)
    x = torch.randn(2, 5, 6, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    mid = x + attn(x, ln1)
    torch.testing.assert_close(block(x), mid + mlp(ln2(mid)), rtol=1e-12, atol=1e-12)


def test_attention_only_block_and_identity_norms(seed: int) -> None:
    cfg = TransformerConfig(d_model=4, n_heads=1, d_head=2, n_ctx=5, dtype="float64")
    attn = Attention(cfg, torch.Generator().manual_seed(seed))
    block = Block(attn)
    x = torch.randn(2, 5, 4, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    torch.testing.assert_close(block(x), x + attn(x), rtol=1e-12, atol=1e-12)
    assert not hasattr(block, "mlp") and not hasattr(block, "hook_resid_mid")
    with pytest.raises(ValueError, match="ln2"):
        Block(attn, ln2=LayerNorm(cfg))
