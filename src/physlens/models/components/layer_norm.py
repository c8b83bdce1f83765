"""LayerNorm with TransformerLens's hooks: the scale it divides by, and the normalised stream."""

from __future__ import annotations

import torch
from jaxtyping import Float
from torch import Tensor, nn
from transformer_lens.hook_points import HookPoint

from physlens._validation import resolve_dtype
from physlens.models.components.parameters import ComponentConfig, zeros_parameter


class LayerNorm(nn.Module):
    """LayerNorm over ``d_model`` (weight ``w`` starts at one, bias ``b`` at zero) with
    TransformerLens's ``hook_scale`` and ``hook_normalized``."""

    def __init__(self, cfg: ComponentConfig, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.w = nn.Parameter(torch.ones(cfg.d_model, dtype=resolve_dtype(cfg.dtype), device=cfg.device))
        self.b = zeros_parameter((cfg.d_model,), cfg)
        # With cfg.use_split_qkv_input, ln1 normalizes every head's own copy: [batch, pos, head, ...].
        self.hook_scale = HookPoint()  # [batch, pos, 1]
        self.hook_normalized = HookPoint()  # [batch, pos, d_model]

    def forward(self, x: Float[Tensor, "*batch d_model"]) -> Float[Tensor, "*batch d_model"]:
        """Centre ``x``, divide by its root mean square (plus ``eps``), then ``* w + b``."""
        x = x - x.mean(dim=-1, keepdim=True)
        scale = self.hook_scale((x.pow(2).mean(dim=-1, keepdim=True) + self.eps).sqrt())
        return self.hook_normalized(x / scale) * self.w + self.b

    def fold_into(self, readers: list[tuple[Tensor, Tensor | None]], center_weights: bool = True) -> None:
        """Fold ``w`` and ``b`` into the ``(weight, bias)`` pairs that read this norm's output, in place
        (weights ``[..., d_model, d_out]``, biases ``[..., d_out]``; readers may differ in shape),
        and leave the norm ``w = 1``, ``b = 0``: ``bias += b @ weight``, then ``weight *= w`` along
        ``d_model``, then (``center_weights``) ``weight -= weight.mean over d_model``. The readers'
        outputs are unchanged, the normalised stream having mean zero over ``d_model``. A ``None``
        bias means the reader has none, so ``b`` must be zero. Call it under ``torch.no_grad()``.
        """
        for weight, bias in readers:
            if bias is not None:
                bias += (self.b[:, None] * weight).sum(dim=-2)
            elif bool((self.b != 0).any()):
                raise ValueError("readers: a reader whose bias is None cannot take this norm's nonzero bias b; give it a bias first")
        for weight, _ in readers:
            weight *= self.w[:, None]
            if center_weights:
                weight -= weight.mean(dim=-2, keepdim=True)
        self.w.fill_(1.0)
        self.b.zero_()


__all__ = ["LayerNorm"]
