"""Hooked networks: every intermediate activation is a TransformerLens ``HookPoint``."""

from physlens.models.base import MODEL_REGISTRY, HookedModel, register_model
from physlens.models.cache import HookedModelCache
from physlens.models.linear import LinearAutoregressive, sliding_windows
from physlens.models.reference import ExactStep, InContextLeastSquares
from physlens.models.organisms import (
    AR_TRAINING_STEPS,
    ARFilterOrganism,
    BlendOrganism,
    ContextBlindOrganism,
    FiniteDifferenceOrganism,
    LeastSquaresOrganism,
    Organism,
    OrganismConfig,
    add_observation_noise,
    check_noise,
    fit_ar_filters,
    observation_scale,
    spec_mean,
)
from physlens.models.siamese import BottleneckConfig, BottleneckNetwork, SiameseConfig, SiameseTower
from physlens.models.transformer import (
    PRESETS,
    OscillatorTransformer,
    TransformerConfig,
    attention_mask,
    preset_config,
)
from physlens.models.mlp import (
    DeepEnsembleConfig,
    DeepMLPEnsemble,
    EnsembleConfig,
    MLPConfig,
    MLPEnsemble,
    TinyMLP,
    init_deep_parameters,
    init_mlp_parameters,
    seed_recipe_start,
)

__all__ = [
    "DeepEnsembleConfig",
    "DeepMLPEnsemble",
    "EnsembleConfig",
    "ExactStep",
    "InContextLeastSquares",
    "AR_TRAINING_STEPS",
    "ARFilterOrganism",
    "BlendOrganism",
    "ContextBlindOrganism",
    "FiniteDifferenceOrganism",
    "LeastSquaresOrganism",
    "Organism",
    "OrganismConfig",
    "add_observation_noise",
    "check_noise",
    "fit_ar_filters",
    "observation_scale",
    "spec_mean",
    "LinearAutoregressive",
    "sliding_windows",
    "MLPConfig",
    "MLPEnsemble",
    "TinyMLP",
    "init_deep_parameters",
    "init_mlp_parameters",
    "seed_recipe_start",
    "BottleneckConfig",
    "BottleneckNetwork",
    "SiameseConfig",
    "SiameseTower",
    "MODEL_REGISTRY",
    "PRESETS",
    "HookedModel",
    "HookedModelCache",
    "OscillatorTransformer",
    "TransformerConfig",
    "attention_mask",
    "preset_config",
    "register_model",
]
