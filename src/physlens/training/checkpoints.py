"""Checkpoints as safetensors + JSON: written atomically, loaded without unpickling anything.

A checkpoint is a directory holding ``model.safetensors`` (weights), ``config.json`` (the model class,
its config and free-form metadata) and optionally ``state.safetensors`` + ``state.json`` (optimizer,
random-generator and training state, to resume a run exactly).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load as load_safetensors_bytes
from safetensors.torch import save as save_safetensors_bytes

from physlens._io import atomic_directory, is_partial
from physlens.models.base import MODEL_REGISTRY, HookedModel

FORMAT_VERSION = 1
MODEL_FILE, CONFIG_FILE = "model.safetensors", "config.json"
STATE_FILE, STATE_JSON = "state.safetensors", "state.json"


def save_checkpoint(
    path: str | os.PathLike[str],
    model: HookedModel,
    *,
    metadata: dict[str, Any] | None = None,
    state_tensors: dict[str, torch.Tensor] | None = None,
    state_json: dict[str, Any] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write ``model`` (and optional resumable state) to the directory ``path``, atomically.

    The directory appears only once every file in it is complete; an interrupted save leaves only a
    ``.partial-`` sibling that :func:`load_checkpoint` and :func:`latest_checkpoint` ignore.
    ``metadata`` must be JSON-serialisable; ``state_tensors`` go to ``state.safetensors`` and
    ``state_json`` to ``state.json``.
    """
    if not isinstance(model, HookedModel):
        raise TypeError(f"model must be a physlens HookedModel, got {type(model).__name__}")
    name = type(model).__name__
    if MODEL_REGISTRY.get(name) is not type(model):
        raise ValueError(f"model class {name} is not registered with @register_model, so it could not be loaded back")
    config = {
        "format_version": FORMAT_VERSION,
        "model_class": name,
        "config": model.config_dict(),
        "metadata": metadata or {},
    }
    config_text = json.dumps(config, indent=2, sort_keys=True)  # fail before touching the disk
    weights = {key: value.detach().contiguous().cpu() for key, value in model.state_dict().items()}
    with atomic_directory(path, overwrite=overwrite) as staging:
        (staging / MODEL_FILE).write_bytes(save_safetensors_bytes(weights))
        (staging / CONFIG_FILE).write_text(config_text + "\n")
        if state_tensors:
            tensors = {key: value.detach().contiguous().cpu() for key, value in state_tensors.items()}
            (staging / STATE_FILE).write_bytes(save_safetensors_bytes(tensors))
        if state_json is not None:
            (staging / STATE_JSON).write_text(json.dumps(state_json, indent=2, sort_keys=True) + "\n")
        for child in staging.iterdir():
            with open(child, "rb") as handle:
                os.fsync(handle.fileno())
    return Path(path)


def _check_dir(path: str | os.PathLike[str]) -> Path:
    directory = Path(path)
    if is_partial(directory):
        raise ValueError(f"{str(directory)!r} is an interrupted, incomplete checkpoint; it cannot be loaded")
    if not (directory / CONFIG_FILE).is_file() or not (directory / MODEL_FILE).is_file():
        raise FileNotFoundError(f"path {str(directory)!r} is not a checkpoint: expected {CONFIG_FILE} and {MODEL_FILE}")
    return directory


def read_checkpoint_config(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The JSON side of a checkpoint: model class, config and metadata."""
    directory = _check_dir(path)
    config = json.loads((directory / CONFIG_FILE).read_text())
    if config.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"checkpoint format_version must be {FORMAT_VERSION}, got {config.get('format_version')!r}")
    return config


def load_checkpoint(
    path: str | os.PathLike[str], *, device: str | torch.device | None = None
) -> tuple[HookedModel, dict[str, Any]]:
    """Rebuild the model saved at ``path`` and return ``(model, metadata)``, in eval mode as
    TransformerLens's loaders return models (training switches modes itself). Nothing is unpickled."""
    directory = _check_dir(path)
    config = read_checkpoint_config(directory)
    name = config["model_class"]
    if name not in MODEL_REGISTRY:
        raise ValueError(f"checkpoint's model_class {name!r} is unknown; registered: {sorted(MODEL_REGISTRY)}")
    model_config = dict(config["config"])
    if device is not None:
        model_config["device"] = str(device)
    model = MODEL_REGISTRY[name].from_config_dict(model_config)
    weights = load_safetensors_bytes((directory / MODEL_FILE).read_bytes())
    model.load_state_dict(weights, strict=True)
    return model.eval(), config["metadata"]


def load_state(path: str | os.PathLike[str]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The resumable training state of a checkpoint: ``(tensors, json)``; empty when none was saved."""
    directory = _check_dir(path)
    tensors = load_safetensors_bytes((directory / STATE_FILE).read_bytes()) if (directory / STATE_FILE).is_file() else {}
    extra = json.loads((directory / STATE_JSON).read_text()) if (directory / STATE_JSON).is_file() else {}
    return tensors, extra


def latest_checkpoint(directory: str | os.PathLike[str], prefix: str = "step_") -> Path | None:
    """The complete checkpoint named ``{prefix}{step}`` with the highest step under ``directory``."""
    root = Path(directory)
    if not root.is_dir():
        return None
    found = []
    for child in root.iterdir():
        suffix = child.name.removeprefix(prefix)
        if child.is_dir() and child.name.startswith(prefix) and suffix.isdigit() and (child / CONFIG_FILE).is_file():
            found.append((int(suffix), child))
    return max(found)[1] if found else None


def optimizer_state_to_flat(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split an optimizer's state dict into tensors (for safetensors) and plain JSON, with no pickling."""
    state_dict = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for param_id, param_state in state_dict["state"].items():
        for key, value in param_state.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optimizer.{param_id}.{key}"] = value
            else:
                scalars.setdefault(str(param_id), {})[key] = value
    groups = [{k: v for k, v in group.items()} for group in state_dict["param_groups"]]
    return tensors, {"param_groups": groups, "scalars": scalars}


def optimizer_state_from_flat(tensors: dict[str, torch.Tensor], payload: dict[str, Any]) -> dict[str, Any]:
    """Inverse of :func:`optimizer_state_to_flat`: a state dict for ``optimizer.load_state_dict``."""
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        if key.startswith("optimizer."):
            _, param_id, name = key.split(".", 2)
            state.setdefault(int(param_id), {})[name] = value
    for param_id, values in payload.get("scalars", {}).items():
        state.setdefault(int(param_id), {}).update(values)
    return {"state": state, "param_groups": payload["param_groups"]}


__all__ = [
    "latest_checkpoint",
    "load_checkpoint",
    "load_state",
    "optimizer_state_from_flat",
    "optimizer_state_to_flat",
    "read_checkpoint_config",
    "save_checkpoint",
]
