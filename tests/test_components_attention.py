"""The attention component against a hand-written softmax(QKᵀ/√d + mask)V·W_O in float64."""

from __future__ import annotations

import math

import pytest
import torch

from physlens.models.components import Attention, LayerNorm, attention_mask
from physlens.models.transformer_config import TransformerConfig


def _config(**overrides) -> TransformerConfig:
    return TransformerConfig(**{**dict(d_model=6, n_heads=2, d_head=3, n_ctx=7, dtype="float64"), **overrides})


def _by_hand(attn: Attention, x: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
    """Loops over examples and heads, one matrix product at a time."""
    out = torch.zeros_like(x)
    n_pos = x.shape[1]
    for b in range(x.shape[0]):
        for h in range(attn.cfg.n_heads):
            q, k, v = x[b] @ attn.W_Q[h], x[b] @ attn.W_K[h], x[b] @ attn.W_V[h]
            scores = q @ k.T / math.sqrt(attn.cfg.d_head)
            scores = scores + torch.where(allowed[:n_pos, :n_pos], 0.0, -math.inf).to(torch.float64)
            out[b] += torch.softmax(scores, dim=-1) @ v @ attn.W_O[h]
    return out


@pytest.mark.parametrize("masking", [dict(causal=True), dict(causal=False), dict(causal=False, attn_window=2), dict(causal=True, attn_window=3)])
def test_attention_is_the_hand_written_formula(masking: dict, seed: int) -> None:
    cfg = _config(**masking)
    attn = Attention(cfg, torch.Generator().manual_seed(seed))
    x = torch.randn(3, 6, cfg.d_model, generator=torch.Generator().manual_seed(seed + 1), dtype=torch.float64)
    allowed = attention_mask(cfg.n_ctx, cfg.causal, cfg.attn_window)
    torch.testing.assert_close(attn(x), _by_hand(attn, x, allowed), rtol=1e-12, atol=1e-12)


def test_the_norm_is_applied_to_what_queries_keys_and_values_read(seed: int) -> None:
    cfg = _config()
    attn, norm = Attention(cfg, torch.Generator().manual_seed(seed)), LayerNorm(cfg)
    with torch.no_grad():
        norm.w.uniform_(0.5, 2.0, generator=torch.Generator().manual_seed(2))
        norm.b.uniform_(-1.0, 1.0, generator=torch.Generator().manual_seed(3))
    x = torch.randn(2, 5, cfg.d_model, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    torch.testing.assert_close(attn(x, norm), _by_hand(attn, norm(x), attention_mask(cfg.n_ctx, True, None)), rtol=1e-12, atol=1e-12)


def test_split_qkv_input_leaves_the_output_as_it_was(seed: int) -> None:
    cfg = _config()
    attn = Attention(cfg, torch.Generator().manual_seed(seed))
    x = torch.randn(2, 5, cfg.d_model, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    joint = attn(x)
    cfg.use_split_qkv_input = True
    torch.testing.assert_close(attn(x), joint, rtol=1e-12, atol=1e-12)


def test_the_mask_allows_exactly_the_edges_its_rules_name() -> None:
    for causal in (True, False):
        for window in (None, 1, 3):
            allowed = attention_mask(6, causal, window)
            expected = [[(not causal or k <= q) and (window is None or abs(q - k) < window) for k in range(6)] for q in range(6)]
            assert allowed.tolist() == expected


def test_weights_are_drawn_in_order_or_start_at_zero() -> None:
    cfg = _config()
    attn = Attention(cfg, torch.Generator().manual_seed(0))
    generator = torch.Generator().manual_seed(0)
    first = torch.randn(cfg.n_heads, cfg.d_model, cfg.d_head, generator=generator, dtype=torch.float64) / math.sqrt(cfg.d_model)
    torch.testing.assert_close(attn.W_Q.detach(), first, rtol=0, atol=0)
    zero = Attention(cfg)
    assert all(not bool(getattr(zero, name).any()) for name in ("W_Q", "W_K", "W_V", "W_O"))


def test_a_subclass_changes_the_mask_and_the_mixing_through_their_steps(seed: int) -> None:
    """The two overridable steps are the ones the forward pass uses: a subclass that attends uniformly
    everywhere and doubles z gives twice the unmasked, uniform average of the values."""

    class Uniform(Attention):
        def apply_causal_mask(self, scores):
            return torch.zeros_like(scores)

        def calculate_z_scores(self, v, pattern):
            return 2 * super().calculate_z_scores(v, pattern)

    cfg = _config()
    attn = Uniform(cfg, torch.Generator().manual_seed(seed))
    x = torch.randn(2, 4, cfg.d_model, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    v = torch.einsum("bpd,hde->bphe", x, attn.W_V)
    expected = torch.einsum("bhe,hed->bd", 2 * v.mean(dim=1), attn.W_O)[:, None].expand(-1, 4, -1)
    torch.testing.assert_close(attn(x), expected, rtol=1e-12, atol=1e-12)


def test_ov_and_qk_are_the_products_of_the_weights(seed: int) -> None:
    attn = Attention(_config(), torch.Generator().manual_seed(seed))
    torch.testing.assert_close(attn.OV.AB, attn.W_V @ attn.W_O)
    torch.testing.assert_close(attn.QK.AB, attn.W_Q @ attn.W_K.transpose(-2, -1))


def test_query_key_and_value_biases_are_added_with_attn_bias(seed: int) -> None:
    cfg = _config(attn_bias=True)
    attn = Attention(cfg, torch.Generator().manual_seed(seed))
    assert not hasattr(Attention(_config(), torch.Generator().manual_seed(seed)), "b_Q")  # none without the flag
    generator = torch.Generator().manual_seed(seed + 2)
    with torch.no_grad():
        for name in ("b_Q", "b_K", "b_V"):
            getattr(attn, name).normal_(generator=generator)
    x = torch.randn(2, 5, cfg.d_model, generator=generator, dtype=torch.float64)
    allowed = attention_mask(cfg.n_ctx, True, None)
    expected = torch.zeros_like(x)
    for b in range(2):
        for h in range(cfg.n_heads):
            q, k, v = (x[b] @ getattr(attn, f"W_{n}")[h] + getattr(attn, f"b_{n}")[h] for n in "QKV")
            scores = (q @ k.T / math.sqrt(cfg.d_head)).masked_fill(~allowed[:5, :5], -math.inf)
            expected[b] += torch.softmax(scores, dim=-1) @ v @ attn.W_O[h]
    torch.testing.assert_close(attn(x), expected, rtol=1e-12, atol=1e-12)
