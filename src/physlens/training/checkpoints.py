"""Checkpoints as safetensors + JSON: written atomically, verified on load, loaded without unpickling anything.

A checkpoint is a directory holding ``model.safetensors`` (weights), ``config.json`` (the model class,
its config, free-form metadata, optionally the system the model was trained on and the study file
that trained it, and SHA-256 digests) and optionally ``state.safetensors`` + ``state.json``
(optimizer, random-generator and training state, to resume a run exactly).

``config.json`` carries a digest of the weights file, of the state tensors, of ``state.json`` and of
its own content; loading checks all of them, so a checkpoint whose config was edited (``causal`` flipped, the dtype
changed) or whose weights were truncated or replaced is refused with a message naming the file,
instead of loading into a model that computes something else.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors_bytes
from safetensors.torch import save as save_safetensors_bytes

from physlens._io import NotARegularFile, atomic_directory, is_partial, open_regular, read_bounded
from physlens.models.base import MODEL_REGISTRY, HookedModel
from physlens.systems.base import System, check_system, import_system_class

FORMAT_VERSION = 2
"""Version 2 adds the digests; version-1 checkpoints (no digests) load only when asked to
(``allow_unverified=True``): otherwise removing the digests would be a way past every check."""
MAX_JSON_BYTES = 64 << 20
"""The largest config.json or state.json read (a long run's loss history is a few megabytes)."""
MODEL_FILE, CONFIG_FILE = "model.safetensors", "config.json"
STATE_FILE, STATE_JSON = "state.safetensors", "state.json"
DIGEST_KEY = "digest"
SYSTEM_KEY, STUDY_KEY = "system", "study"
"""Keys of config.json holding the system the model was trained on (``{"class": "module:Class", "options":
system.to_dict()}``) and the text of the study file that trained it; both optional (older checkpoints lack them)."""


class CheckpointError(ValueError):
    """A checkpoint is damaged or was changed after it was saved: it is refused rather than loaded."""


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _config_digest(config: dict[str, Any]) -> str:
    """Digest of everything in config.json except the digests themselves, in a canonical form."""
    content = {k: v for k, v in config.items() if k != DIGEST_KEY}
    return _sha256(json.dumps(content, sort_keys=True, separators=(",", ":"), allow_nan=True).encode())


def save_checkpoint(
    path: str | os.PathLike[str],
    model: HookedModel,
    *,
    metadata: dict[str, Any] | None = None,
    state_tensors: dict[str, torch.Tensor] | None = None,
    state_json: dict[str, Any] | None = None,
    overwrite: bool = False,
    system: System | None = None,
    study: str | None = None,
) -> Path:
    """Write ``model`` (and optional resumable state) to the directory ``path``, atomically.

    The directory appears only once every file in it is complete; an interrupted save leaves only a
    ``.partial-`` sibling that :func:`load_checkpoint` and :func:`latest_checkpoint` ignore.
    ``metadata`` must be JSON-serialisable; ``state_tensors`` go to ``state.safetensors`` and
    ``state_json`` to ``state.json``. ``system`` (the system the model was trained on, recorded as
    its class and ``to_dict()``) and ``study`` (the text of the study file that trained it) travel in
    ``config.json``, under its digest, so :func:`load_checkpoint` hands them back with the model.
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
    if system is not None:
        check_system(system)
        cls = type(system)
        config[SYSTEM_KEY] = {"class": f"{cls.__module__}:{cls.__qualname__}", "options": system.to_dict()}
    if study is not None:
        if not isinstance(study, str):
            raise TypeError(f"study must be the text of a study file (str), got {type(study).__name__}")
        config[STUDY_KEY] = study
    json.dumps(config)  # fail on metadata that is not JSON before touching the disk
    weights = {key: value.detach().contiguous().cpu() for key, value in model.state_dict().items()}
    weight_bytes = save_safetensors_bytes(weights)
    digest = {"config": _config_digest(config), MODEL_FILE: _sha256(weight_bytes)}
    state_bytes = None
    if state_tensors:
        tensors = {key: value.detach().contiguous().cpu() for key, value in state_tensors.items()}
        state_bytes = save_safetensors_bytes(tensors)
        digest[STATE_FILE] = _sha256(state_bytes)
    state_text = None
    if state_json is not None:
        state_text = json.dumps(state_json, indent=2, sort_keys=True) + "\n"
        digest[STATE_JSON] = _sha256(state_text.encode("utf-8"))
    config_text = json.dumps({**config, DIGEST_KEY: digest}, indent=2, sort_keys=True)
    with atomic_directory(path, overwrite=overwrite) as staging:
        (staging / MODEL_FILE).write_bytes(weight_bytes)
        (staging / CONFIG_FILE).write_text(config_text + "\n")
        if state_bytes is not None:
            (staging / STATE_FILE).write_bytes(state_bytes)
        if state_text is not None:
            (staging / STATE_JSON).write_bytes(state_text.encode("utf-8"))
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


def _read_json(file: Path, data: bytes | None = None) -> dict[str, Any]:
    try:
        value = json.loads((_read_file(file, MAX_JSON_BYTES) if data is None else data).decode("utf-8"))
    except RecursionError:
        raise CheckpointError(f"{str(file)!r} nests its values too deeply to read: the checkpoint is damaged") from None
    except UnicodeDecodeError:
        raise CheckpointError(f"{str(file)!r} is not UTF-8 text: the checkpoint is damaged") from None
    except json.JSONDecodeError as error:
        raise CheckpointError(f"{str(file)!r} is not valid JSON ({error}): the checkpoint is truncated or damaged") from None
    if not isinstance(value, dict):
        raise CheckpointError(f"{str(file)!r} must hold a JSON object, got {type(value).__name__}: the checkpoint is damaged")
    return value


def _read_file(file: Path, limit: int | None = None) -> bytes:
    """The bytes of a checkpoint file, which must be a regular file (a FIFO or a device is refused
    before it is read) and, with ``limit``, no larger than that."""
    try:
        if limit is not None:
            return read_bounded(file, limit, what="checkpoint file")
        with open(open_regular(file), "rb") as handle:
            return handle.read()
    except NotARegularFile as error:
        raise CheckpointError(f"{error.strerror}: the checkpoint is damaged") from None
    except FileNotFoundError:
        raise CheckpointError(f"{str(file)!r} is missing: the checkpoint is incomplete or damaged") from None


def _read_checked(directory: Path, name: str, config: dict[str, Any]) -> bytes:
    """The bytes of ``directory/name``, checked against the digest config.json holds for it."""
    file = directory / name
    data = _read_file(file)
    expected = config.get(DIGEST_KEY, {}).get(name)
    if expected is not None and _sha256(data) != expected:
        raise CheckpointError(
            f"{str(file)!r} does not match the digest saved in {CONFIG_FILE}: the file was truncated or changed "
            "after the checkpoint was written; refusing to load it"
        )
    return data


def _load_tensors(file: Path, data: bytes) -> dict[str, torch.Tensor]:
    try:
        return load_safetensors_bytes(data)
    except (SafetensorError, ValueError, RuntimeError) as error:
        raise CheckpointError(f"{str(file)!r} is not a readable safetensors file ({error}): it is truncated or damaged") from None


def read_checkpoint_config(path: str | os.PathLike[str], *, allow_unverified: bool = False) -> dict[str, Any]:
    """The JSON side of a checkpoint: model class, config, metadata and digests, verified.

    Raises :class:`CheckpointError` naming the file if ``config.json`` is not a JSON object or was
    changed after the checkpoint was saved. A version-1 checkpoint (written before digests) cannot
    be verified and is refused unless ``allow_unverified`` is set (then it loads with a warning).
    """
    directory = _check_dir(path)
    file = directory / CONFIG_FILE
    config = _read_json(file)
    version = config.get("format_version")
    if version not in (1, FORMAT_VERSION):
        raise CheckpointError(f"{str(file)!r}: format_version must be 1 or {FORMAT_VERSION}, got {version!r}")
    missing = [key for key in ("model_class", "config", "metadata") if key not in config]
    if missing or not isinstance(config["config"], dict):
        raise CheckpointError(f"{str(file)!r} lacks {missing or ['a config object']}: it is not a physlens checkpoint config")
    if version == 1:
        if not allow_unverified:
            raise CheckpointError(
                f"{str(file)!r} has no digests (format version 1), so nothing in the checkpoint can be verified; "
                "refusing to load it (pass allow_unverified=True if you trust where it came from)"
            )
        warnings.warn(f"{str(directory)!r} was written without digests (format version 1); its integrity cannot be checked",
                      stacklevel=3)
        return config
    digest = config.get(DIGEST_KEY)
    if not isinstance(digest, dict) or MODEL_FILE not in digest or "config" not in digest:
        raise CheckpointError(f"{str(file)!r} has no digests: it was edited or is damaged; refusing to load it")
    if _config_digest(config) != digest["config"]:
        raise CheckpointError(
            f"{str(file)!r} was changed after the checkpoint was written (its content no longer matches its digest); "
            "a model built from an edited config would not be the model these weights were trained as. Refusing to load it"
        )
    return config


class LoadedCheckpoint(tuple):
    """What :func:`load_checkpoint` returns: it unpacks as ``(model, metadata)``, and also carries what
    the checkpoint recorded of how the model was trained (``None`` where it recorded nothing, as
    checkpoints written before these were recorded).

    ``system_record`` is ``{"class": "module:Class", "options": system.to_dict()}``; :attr:`system`
    rebuilds the system from it. ``study`` is the text of the study file that trained the model.
    """

    def __new__(cls, model: HookedModel, metadata: dict[str, Any], system_record: dict[str, Any] | None = None,
                study: str | None = None, device: str | torch.device | None = None) -> LoadedCheckpoint:
        made = super().__new__(cls, (model, metadata))
        made.system_record, made.study, made._device = system_record, study, device
        return made

    @property
    def model(self) -> HookedModel:
        """The rebuilt model, in eval mode."""
        return self[0]

    @property
    def metadata(self) -> dict[str, Any]:
        """The free-form metadata saved with the model."""
        return self[1]

    @property
    def system(self) -> System | None:
        """The system the model was trained on, rebuilt with its class's ``from_dict`` (on the device the
        model was loaded to, when one was given); ``None`` when the checkpoint recorded none.

        A class outside physlens is imported by its module path, as a study's ``[system] kind`` is, so
        read this only from checkpoints you trust; ``system_record`` holds the same without importing.
        """
        if self.system_record is None:
            return None
        record = self.system_record
        try:
            cls = import_system_class(record["class"])
            system = cls.from_dict(record["options"])
        except (KeyError, TypeError, ValueError) as error:
            raise CheckpointError(f"the checkpoint's system {record.get('class')!r} cannot be rebuilt: {error}") from None
        return system.to(device=self._device) if self._device is not None else system


def load_checkpoint(
    path: str | os.PathLike[str], *, device: str | torch.device | None = None, allow_unverified: bool = False
) -> LoadedCheckpoint:
    """Rebuild the model saved at ``path`` and return ``(model, metadata)``, in eval mode as
    TransformerLens's loaders return models (training switches modes itself). Nothing is unpickled.
    ``allow_unverified`` admits a version-1 checkpoint, which has no digests to check.

    The returned pair is a :class:`LoadedCheckpoint`: its ``system`` is the system the model was
    trained on and its ``study`` the study file's text, when the checkpoint recorded them (``None``
    otherwise), so the model can be used without copying its settings by hand."""
    directory = _check_dir(path)
    config = read_checkpoint_config(directory, allow_unverified=allow_unverified)
    name = config["model_class"]
    if name not in MODEL_REGISTRY:
        raise ValueError(f"checkpoint's model_class {name!r} is unknown; registered: {sorted(MODEL_REGISTRY)}")
    model_config = dict(config["config"])
    if device is not None:
        model_config["device"] = str(device)
    model = MODEL_REGISTRY[name].from_config_dict(model_config)
    file = directory / MODEL_FILE
    weights = _load_tensors(file, _read_checked(directory, MODEL_FILE, config))
    expected = model.state_dict()
    for key, tensor in weights.items():
        if key in expected and tensor.dtype != expected[key].dtype:
            raise CheckpointError(
                f"{str(file)!r} holds {key} as {tensor.dtype} but {CONFIG_FILE} builds a model with {expected[key].dtype}; "
                "refusing to convert it"
            )
    try:
        model.load_state_dict(weights, strict=True)
    except RuntimeError as error:
        raise CheckpointError(f"{str(file)!r} does not fit the model {CONFIG_FILE} describes: {error}") from None
    system_record, study = config.get(SYSTEM_KEY), config.get(STUDY_KEY)
    file = directory / CONFIG_FILE
    if system_record is not None and (not isinstance(system_record, dict) or not isinstance(system_record.get("class"), str)
                                      or not isinstance(system_record.get("options"), dict)):
        raise CheckpointError(f"{str(file)!r}: {SYSTEM_KEY!r} must be an object with a 'class' string and an 'options' "
                              "object: the checkpoint is damaged")
    if study is not None and not isinstance(study, str):
        raise CheckpointError(f"{str(file)!r}: {STUDY_KEY!r} must be the text of a study file: the checkpoint is damaged")
    return LoadedCheckpoint(model.eval(), config["metadata"], system_record, study, device)


def load_state(
    path: str | os.PathLike[str], *, allow_unverified: bool = False
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The resumable training state of a checkpoint: ``(tensors, json)``; empty when none was saved.
    Both are checked against their digests in ``config.json``; a state file the digests list but
    the directory lacks is an error naming it."""
    directory = _check_dir(path)
    config = read_checkpoint_config(directory, allow_unverified=allow_unverified)
    listed = config.get(DIGEST_KEY, {})
    tensors: dict[str, torch.Tensor] = {}
    if STATE_FILE in listed or os.path.lexists(directory / STATE_FILE):
        tensors = _load_tensors(directory / STATE_FILE, _read_checked(directory, STATE_FILE, config))
    extra: dict[str, Any] = {}
    if STATE_JSON in listed or os.path.lexists(directory / STATE_JSON):
        extra = _read_json(directory / STATE_JSON, _read_checked(directory, STATE_JSON, config))
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
    "CheckpointError",
    "LoadedCheckpoint",
    "latest_checkpoint",
    "load_checkpoint",
    "load_state",
    "optimizer_state_from_flat",
    "optimizer_state_to_flat",
    "read_checkpoint_config",
    "save_checkpoint",
]
