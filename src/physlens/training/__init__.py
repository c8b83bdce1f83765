"""Fitting models, rolling them out, and saving them as safetensors + JSON checkpoints."""

from physlens.training.checkpoints import (
    latest_checkpoint,
    load_checkpoint,
    load_state,
    optimizer_state_from_flat,
    optimizer_state_to_flat,
    read_checkpoint_config,
    save_checkpoint,
)
from physlens.training.invariants import (
    BottleneckTrainConfig,
    SiameseTrainConfig,
    SiameseTrainResult,
    StatePairs,
    contrastive_loss,
    make_pairs,
    oscillator_windows,
    pair_accuracy,
    train_bottleneck,
    train_siamese,
)
from physlens.training.rollout import RolloutEvaluation, evaluate_rollout, relative_error, rollout
from physlens.training.trainer import (
    LeakageError,
    TrainConfig,
    TrainResult,
    check_leakage,
    config_from_dict,
    train,
)

__all__ = [
    "BottleneckTrainConfig",
    "SiameseTrainConfig",
    "SiameseTrainResult",
    "StatePairs",
    "contrastive_loss",
    "make_pairs",
    "oscillator_windows",
    "pair_accuracy",
    "train_bottleneck",
    "train_siamese",
    "LeakageError",
    "RolloutEvaluation",
    "TrainConfig",
    "TrainResult",
    "check_leakage",
    "config_from_dict",
    "evaluate_rollout",
    "latest_checkpoint",
    "load_checkpoint",
    "load_state",
    "optimizer_state_from_flat",
    "optimizer_state_to_flat",
    "read_checkpoint_config",
    "relative_error",
    "rollout",
    "save_checkpoint",
    "train",
]
