"""The oscillator transformer's parts, one per file, as TransformerLens lays out its components.

Each owns its weights and its hook points; a model file only assembles them (the oscillator
transformer, the planted organism).
"""

from physlens.models.components.attention import Attention, attention_mask
from physlens.models.components.block import Block
from physlens.models.components.embed import Embed, PosEmbed, Unembed
from physlens.models.components.layer_norm import LayerNorm
from physlens.models.components.mlp import MLP
from physlens.models.components.parameters import ComponentConfig, init_weight, zeros_parameter

__all__ = [
    "MLP",
    "Attention",
    "Block",
    "ComponentConfig",
    "Embed",
    "LayerNorm",
    "PosEmbed",
    "Unembed",
    "attention_mask",
    "init_weight",
    "zeros_parameter",
]
