"""What a component reads from its model's config, and how it makes its parameters.

Components take any config with these fields (the oscillator transformer's, the planted organism's),
and draw their weights from the model's one generator, in the order the model builds them.
"""

from __future__ import annotations

import math
from typing import Protocol, runtime_checkable

import torch
from torch import nn

from physlens._validation import resolve_dtype


@runtime_checkable
class ComponentConfig(Protocol):
    """The config fields the components read; a model's config dataclass provides them (as fields or properties)."""

    d_model: int  # width of the residual stream
    n_heads: int  # attention heads per block
    d_head: int  # width of each head's query/key/value space
    n_ctx: int  # longest sequence the model accepts
    dtype: str | torch.dtype  # parameter dtype
    device: str  # where parameters live

    @property
    def causal(self) -> bool:
        """Position q attends only to keys k <= q."""

    @property
    def attn_window(self) -> int | None:
        """Attend only to keys with |q - k| < window (None: no window)."""

    @property
    def d_mlp(self) -> int | None:
        """MLP width."""

    @property
    def use_split_qkv_input(self) -> bool:
        """Each head's query, key and value read their own copy of the block input."""

    @property
    def attn_bias(self) -> bool:
        """Queries, keys and values have biases b_Q, b_K, b_V."""


def init_weight(
    shape: tuple[int, ...], fan_in: int, generator: torch.Generator | None, cfg: ComponentConfig
) -> nn.Parameter:
    """A weight of ``shape`` drawn N(0, 1/fan_in) from ``generator`` in float64, then cast to ``cfg.dtype``
    (so a float32 and a float64 model of one seed hold the same draw); zeros when ``generator`` is None,
    for a model that sets its weights itself."""
    if generator is None:
        return zeros_parameter(shape, cfg)
    weights = torch.randn(shape, generator=generator, dtype=torch.float64) / math.sqrt(fan_in)
    return nn.Parameter(weights.to(dtype=resolve_dtype(cfg.dtype), device=cfg.device))


def zeros_parameter(shape: tuple[int, ...], cfg: ComponentConfig) -> nn.Parameter:
    """A parameter of ``shape`` filled with zeros, in ``cfg.dtype`` on ``cfg.device`` (a bias's start)."""
    return nn.Parameter(torch.zeros(shape, dtype=resolve_dtype(cfg.dtype), device=cfg.device))


__all__ = ["ComponentConfig", "init_weight", "zeros_parameter"]
