"""Fitting models, rolling them out, and saving them as safetensors + JSON checkpoints."""

from physlens.training.checkpoints import (
    latest_checkpoint,
    load_checkpoint,
    load_state,
    read_checkpoint_config,
    save_checkpoint,
)

__all__ = ["latest_checkpoint", "load_checkpoint", "load_state", "read_checkpoint_config", "save_checkpoint"]
