"""The block's MLP: Linear → activation → Linear, hooked before and after the activation.

A subclass changes the nonlinearity by overriding :meth:`MLP.act_fn`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor, nn
from transformer_lens.hook_points import HookPoint

from physlens.models.components.parameters import ComponentConfig, init_weight, zeros_parameter


class MLP(nn.Module):
    """Linear → GELU → Linear, of width ``cfg.d_mlp``; biases start at zero.

    ``W_in`` then ``W_out`` are drawn from ``generator``; with ``generator=None`` they start at zero,
    for a model that sets them itself.
    """

    def __init__(self, cfg: ComponentConfig, generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.W_in = init_weight((cfg.d_model, cfg.d_mlp), cfg.d_model, generator, cfg)
        self.b_in = zeros_parameter((cfg.d_mlp,), cfg)
        self.W_out = init_weight((cfg.d_mlp, cfg.d_model), cfg.d_mlp, generator, cfg)
        self.b_out = zeros_parameter((cfg.d_model,), cfg)
        self.hook_pre = HookPoint()  # [batch, pos, d_mlp]
        self.hook_post = HookPoint()  # [batch, pos, d_mlp]

    def forward(self, resid: Float[Tensor, "batch pos d_model"]) -> Float[Tensor, "batch pos d_model"]:
        """``act_fn(resid @ W_in + b_in) @ W_out + b_out``."""
        pre = self.hook_pre(resid @ self.W_in + self.b_in)
        post = self.hook_post(self.act_fn(pre))
        return post @ self.W_out + self.b_out

    def act_fn(self, pre: Float[Tensor, "batch pos d_mlp"]) -> Float[Tensor, "batch pos d_mlp"]:
        """The nonlinearity between the two layers: the exact (erf) GELU."""
        return F.gelu(pre)


__all__ = ["MLP"]
