"""Hooked networks: every intermediate activation is a TransformerLens ``HookPoint``."""

from physlens.models.base import MODEL_REGISTRY, HookedModel, register_model
from physlens.models.transformer import (
    PRESETS,
    OscillatorTransformer,
    TransformerConfig,
    attention_mask,
    preset_config,
)

__all__ = [
    "MODEL_REGISTRY",
    "PRESETS",
    "HookedModel",
    "OscillatorTransformer",
    "TransformerConfig",
    "attention_mask",
    "preset_config",
    "register_model",
]
