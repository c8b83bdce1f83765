"""Multi-head attention, hooked the TransformerLens way (``hook_q`` … ``hook_result``), and its mask.

Subclasses change what the heads compute by overriding two steps, as TransformerLens's attention
variants do: :meth:`Attention.apply_causal_mask` (which keys a query may see) and
:meth:`Attention.calculate_z_scores` (how a head mixes the values it attends to).
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import einops
import torch
from jaxtyping import Bool, Float
from torch import Tensor, nn
from transformer_lens.FactoredMatrix import FactoredMatrix
from transformer_lens.hook_points import HookPoint

from physlens.models.components.parameters import ComponentConfig, init_weight, zeros_parameter


def attention_mask(n_ctx: int, causal: bool, window: int | None, device: Any = None) -> Bool[Tensor, "q k"]:
    """Boolean [q, k] matrix of allowed attention edges for the given masking rules."""
    q = torch.arange(n_ctx, device=device)[:, None]
    k = torch.arange(n_ctx, device=device)[None, :]
    allowed = torch.ones(n_ctx, n_ctx, dtype=torch.bool, device=device)
    if causal:
        allowed &= k <= q
    if window is not None:
        allowed &= (q - k).abs() < window
    return allowed


class Attention(nn.Module):
    """Multi-head attention with per-head W_Q, W_K, W_V, W_O, scores scaled by √d_head, and biases
    b_Q, b_K, b_V on queries, keys and values only with ``cfg.attn_bias`` (no output bias b_O).

    Weights are drawn from ``generator`` (W_Q, W_K, W_V, then W_O); with ``generator=None`` they start
    at zero, for a model that sets them itself. Biases start at zero.
    """

    # False for a subclass that never splits its input per head: it then has no hook_q_input ... at all.
    splits_qkv_input: ClassVar[bool] = True

    def __init__(self, cfg: ComponentConfig, generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        h, d, e = cfg.n_heads, cfg.d_model, cfg.d_head
        self.W_Q = init_weight((h, d, e), d, generator, cfg)
        self.W_K = init_weight((h, d, e), d, generator, cfg)
        self.W_V = init_weight((h, d, e), d, generator, cfg)
        self.W_O = init_weight((h, e, d), h * e, generator, cfg)
        if cfg.attn_bias:
            self.add_qkv_biases()
        self.register_buffer("mask", attention_mask(cfg.n_ctx, cfg.causal, cfg.attn_window, cfg.device), persistent=False)
        self.hook_q = HookPoint()  # [batch, pos, head, d_head]
        self.hook_k = HookPoint()  # [batch, pos, head, d_head]
        self.hook_v = HookPoint()  # [batch, pos, head, d_head]
        self.hook_attn_scores = HookPoint()  # [batch, head, q, k], masked entries are -inf
        self.hook_pattern = HookPoint()  # [batch, head, q, k]
        self.hook_z = HookPoint()  # [batch, pos, head, d_head]
        self.hook_result = HookPoint()  # [batch, pos, head, d_model]: each head's write to the residual stream
        if self.splits_qkv_input:
            # Only with cfg.use_split_qkv_input: each head's own copy of the block input, before ln1.
            self.hook_q_input = HookPoint()  # [batch, pos, head, d_model]
            self.hook_k_input = HookPoint()  # [batch, pos, head, d_model]
            self.hook_v_input = HookPoint()  # [batch, pos, head, d_model]

    def forward(self, resid: Float[Tensor, "batch pos d_model"], norm: nn.Module | None = None) -> Float[Tensor, "batch pos d_model"]:
        """Attend over ``norm(resid)`` (``norm`` is the block's ln1; None: identity).

        With ``cfg.use_split_qkv_input`` every head's query, key and value read their own copy of
        ``resid`` (hooked as ``hook_q_input`` ...), so a path into one head can be patched alone.
        """
        norm = norm if norm is not None else nn.Identity()
        if self.cfg.use_split_qkv_input:
            # repeat gives a stride-0 view of resid: each hook gets its own copy, so an in-place edit of
            # one head's query input reaches neither the other heads, nor k and v, nor the residual stream.
            copies = einops.repeat(resid, "batch pos d_model -> batch pos head d_model", head=self.cfg.n_heads)
            inputs = [norm(hook(copies.clone())) for hook in (self.hook_q_input, self.hook_k_input, self.hook_v_input)]
            project = "batch pos head d_model, head d_model d_head -> batch pos head d_head"
        else:
            inputs = [norm(resid)] * 3
            project = "batch pos d_model, head d_model d_head -> batch pos head d_head"
        q, k, v = (einops.einsum(x, weight, project) for x, weight in zip(inputs, (self.W_Q, self.W_K, self.W_V)))
        if self.cfg.attn_bias:
            q, k, v = q + self.b_Q, k + self.b_K, v + self.b_V
        q, k, v = self.hook_q(q), self.hook_k(k), self.hook_v(v)
        scores = einops.einsum(q, k, "batch q head d_head, batch k head d_head -> batch head q k")
        scores = scores / math.sqrt(self.cfg.d_head)
        scores = self.hook_attn_scores(self.apply_causal_mask(scores))
        pattern = self.hook_pattern(torch.softmax(scores, dim=-1))
        z = self.hook_z(self.calculate_z_scores(v, pattern))
        result = self.hook_result(
            einops.einsum(z, self.W_O, "batch pos head d_head, head d_head d_model -> batch pos head d_model")
        )
        return result.sum(dim=2)

    def add_qkv_biases(self) -> None:
        """Give the attention zero biases ``b_Q``, ``b_K``, ``b_V`` (``[head, d_head]``), as parameters;
        they are added only while ``cfg.attn_bias`` is True, which the caller sets for the whole model."""
        for name in ("b_Q", "b_K", "b_V"):
            if name not in self._parameters:
                setattr(self, name, zeros_parameter((self.cfg.n_heads, self.cfg.d_head), self.cfg))

    def apply_causal_mask(self, scores: Float[Tensor, "batch head q k"]) -> Float[Tensor, "batch head q k"]:
        """The scores with every edge the mask forbids set to -inf (TransformerLens's name for this step)."""
        n_pos = scores.shape[-1]
        return scores.masked_fill(~self.mask[:n_pos, :n_pos], float("-inf"))

    def calculate_z_scores(
        self, v: Float[Tensor, "batch pos head d_head"], pattern: Float[Tensor, "batch head q k"]
    ) -> Float[Tensor, "batch pos head d_head"]:
        """Each head's values averaged with its attention pattern (TransformerLens's name for this step)."""
        return einops.einsum(pattern, v, "batch head q k, batch k head d_head -> batch q head d_head")

    @property
    def OV(self) -> FactoredMatrix:  # noqa: N802
        """Each head's OV circuit W_V W_O as a TransformerLens ``FactoredMatrix`` ``[head, d_model, d_model]``."""
        return FactoredMatrix(self.W_V, self.W_O)

    @property
    def QK(self) -> FactoredMatrix:  # noqa: N802
        """Each head's QK circuit W_Q W_Kᵀ as a TransformerLens ``FactoredMatrix`` ``[head, d_model, d_model]``."""
        return FactoredMatrix(self.W_Q, self.W_K.transpose(-2, -1))


__all__ = ["Attention", "attention_mask"]
