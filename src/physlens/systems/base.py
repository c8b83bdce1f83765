"""The shape every system has: what training, evaluation, rollout and probes may ask of it.

A system samples labelled batches of trajectories from a generator, moves to a device and dtype,
and describes itself as JSON; nothing downstream asks which system it was given. A user's system
plugs in from one file: implement these protocols and name the class in a study's
``[system] kind = "package.module:Class"``. Supervised tasks (inputs → one target, as F = m·a) have
their own pair of protocols, :class:`SupervisedSystem` and the :class:`SupervisedSplit` the MLP
trainers read.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Callable, Protocol, runtime_checkable

import torch
from torch import Tensor


@runtime_checkable
class TrajectoryBatch(Protocol):
    """A batch of trajectories with their physical labels.

    ``states[i, k]`` is the state of trajectory ``i`` at time ``k·dt`` (``[traj, step, state_dim]``).
    """

    states: Tensor  # [traj, step, state_dim]
    dt: float  # time between stored states

    def __len__(self) -> int:
        """Number of trajectories."""
        ...

    @property
    def n_steps(self) -> int:
        """Number of stored steps per trajectory."""
        ...

    def labels(self) -> dict[str, Tensor]:
        """Every label, per trajectory ``[traj]`` or per step ``[traj, step]``."""
        ...

    def subset(self, index: Tensor | slice) -> TrajectoryBatch:
        """The trajectories selected by ``index`` (a slice, a boolean mask or integer indices)."""
        ...

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> TrajectoryBatch:
        """A copy on ``device`` and/or in ``dtype``."""
        ...

    def inputs_targets(self) -> tuple[Tensor, Tensor]:
        """Next-step pairs: inputs ``states[:, :-1]`` and targets ``states[:, 1:]``."""
        ...


@runtime_checkable
class System(Protocol):
    """A family of dynamical systems to sample labelled trajectories from.

    ``sample`` takes exactly one of ``seed`` or ``generator``, so every draw is reproducible;
    ``energy_range`` overrides the training range of initial energies (out-of-distribution sets).
    ``to_dict`` is JSON-ready and ``from_dict`` reads it back.
    """

    dt: float  # time between stored states
    dtype: str  # dtype of sampled states ("float32", "float64")
    device: str  # where sampled tensors live
    energy_range: tuple[float, float]  # initial energies of training trajectories
    state_dim: int  # components of one state

    def sample(
        self,
        n_traj: int,
        n_steps: int,
        *,
        seed: int | None = None,
        generator: torch.Generator | None = None,
        energy_range: tuple[float, float] | None = None,
    ) -> TrajectoryBatch:
        """Draw ``n_traj`` labelled trajectories of ``n_steps`` states each."""
        ...

    def batches(
        self, batch_size: int, n_steps: int, *, seed: int | None = None, generator: torch.Generator | None = None
    ) -> Iterator[TrajectoryBatch]:
        """An endless stream of fresh batches from one seeded generator."""
        ...

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | str | None = None) -> System:
        """The same family sampled on ``device`` and/or in ``dtype``: identical draws for the same seed."""
        ...

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready description, readable back with ``from_dict``."""
        ...

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> System:
        """The system ``to_dict`` described."""
        ...


@runtime_checkable
class ExactlySolvable(Protocol):
    """A system whose every trajectory's exact next state is known: it offers an oracle predictor."""

    def exact_predictor(self, trajectories: TrajectoryBatch) -> Callable[[Tensor], Tensor]:
        """A predictor called like a model on ``[batch, pos, state_dim]`` contexts of ``trajectories``
        that returns the exact next state after the last position, ``[batch, 1, state_dim]``."""
        ...


@runtime_checkable
class SupervisedSplit(Protocol):
    """A fixed train/validation split of a supervised task: what the MLP trainers read.

    Tensors are ``[n, d_in]`` inputs and ``[n, 1]`` targets for one network, or ``[model, n, d_in]``
    and ``[model, n, 1]`` when each member of an ensemble has its own split, all of one dtype.
    """

    train_inputs: Tensor  # [*model, n_train, d_in]
    train_targets: Tensor  # [*model, n_train, 1]
    val_inputs: Tensor  # [*model, n_val, d_in]
    val_targets: Tensor  # [*model, n_val, 1]

    @property
    def n_models(self) -> int | None:
        """Number of stacked splits, or ``None`` for a single network's split."""
        ...

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | str | None = None) -> SupervisedSplit:
        """The same split on ``device`` and/or in ``dtype``."""
        ...


@runtime_checkable
class SupervisedSystem(Protocol):
    """A supervised task to draw (inputs, targets) and fixed train/validation splits from.

    ``sample`` takes exactly one of ``seed`` or ``generator``; ``split(seed)`` is one network's
    fixed split and ``splits(seeds)`` stacks one per seed for an ensemble (member ``i`` equal to
    ``split(seeds[i])``). ``to_dict`` is JSON-ready and ``from_dict`` reads it back.
    """

    dtype: str  # dtype of sampled tensors ("float32", "float64")
    device: str  # where sampled tensors live

    def sample(
        self, n: int, *, seed: int | None = None, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor]:
        """Draw ``n`` inputs ``[n, d_in]`` and their targets ``[n, 1]``."""
        ...

    def split(self, seed: int, *, n_train: int = 8000, n_val: int = 2000) -> SupervisedSplit:
        """The fixed split of ``seed``: ``[n, ·]`` tensors for one network."""
        ...

    def splits(self, seeds: Sequence[int], *, n_train: int = 8000, n_val: int = 2000) -> SupervisedSplit:
        """Stacked splits ``[model, n, ·]``, one per seed."""
        ...

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | str | None = None) -> SupervisedSystem:
        """The same task sampled on ``device`` and/or in ``dtype``: identical draws for the same seed."""
        ...

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready description, readable back with ``from_dict``."""
        ...

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SupervisedSystem:
        """The task ``to_dict`` described."""
        ...


def dtype_name(dtype: torch.dtype | str) -> str:
    """``"float64"`` for ``torch.float64`` or ``"float64"``; other values are refused by name."""
    if isinstance(dtype, torch.dtype):
        return str(dtype).removeprefix("torch.")
    if isinstance(dtype, str):
        return dtype
    raise TypeError(f"dtype must be a torch.dtype or its name, got {type(dtype).__name__}")


def moved_copy(system: Any, device: torch.device | str | None = None, dtype: torch.dtype | str | None = None) -> Any:
    """``system`` rebuilt through ``to_dict``/``from_dict`` with ``device`` and/or ``dtype`` replaced: the
    ``to`` of a system whose description is its constructor's arguments (identical draws for a seed)."""
    options = system.to_dict()
    if device is not None:
        options["device"] = str(device)
    if dtype is not None:
        options["dtype"] = dtype_name(dtype)
    return type(system).from_dict(options)


def check_system(system: object, name: str = "system") -> System:
    """``system`` if it implements :class:`System`; else a ``TypeError`` naming what it lacks."""
    missing = [attr for attr in ("dt", "dtype", "device", "energy_range", "state_dim", "sample", "batches", "to",
                                 "to_dict", "from_dict") if not hasattr(system, attr)]
    if missing:
        raise TypeError(f"{name} must implement physlens.systems.System; {type(system).__name__} lacks {missing}")
    return system  # type: ignore[return-value]


SPLIT_TENSORS = ("train_inputs", "train_targets", "val_inputs", "val_targets")
"""The tensors of a :class:`SupervisedSplit`, in the order its constructor usually takes them."""


def check_supervised_split(data: object, name: str = "data") -> SupervisedSplit:
    """``data`` if it implements :class:`SupervisedSplit` with consistent tensors; else an error naming ``name``.

    A ``TypeError`` names the attributes it lacks; a ``ValueError`` names the tensor whose shape or
    dtype disagrees with ``train_inputs`` (targets must have one column, the two inputs one width).
    """
    missing = [attr for attr in (*SPLIT_TENSORS, "n_models", "to") if not hasattr(data, attr)]
    if missing:
        raise TypeError(f"{name} must implement physlens.systems.SupervisedSplit, as FmaSplit does; "
                        f"{type(data).__name__} lacks {missing}")
    tensors = {attr: getattr(data, attr) for attr in SPLIT_TENSORS}
    for attr, tensor in tensors.items():
        if not isinstance(tensor, Tensor):
            raise TypeError(f"{name}.{attr} must be a torch.Tensor, got {type(tensor).__name__}")
    reference = tensors["train_inputs"]
    if reference.ndim not in (2, 3):
        raise ValueError(f"{name}.train_inputs must have shape [n, d_in] or [model, n, d_in], got {list(reference.shape)}")
    lead, width = tuple(reference.shape[:-2]), reference.shape[-1]
    for attr, tensor in tensors.items():
        columns = width if attr.endswith("inputs") else 1
        if tensor.ndim != reference.ndim or tuple(tensor.shape[:-2]) != lead or tensor.shape[-1] != columns:
            expected = f"[{'model, ' if lead else ''}n, {columns}]"
            raise ValueError(f"{name}.{attr} must have shape {expected} like train_inputs {list(reference.shape)}, "
                             f"got {list(tensor.shape)}")
        if tensor.dtype != reference.dtype:
            raise ValueError(f"{name}.{attr} must have dtype {reference.dtype} like train_inputs, got {tensor.dtype}")
    for kind in ("train", "val"):
        if tensors[f"{kind}_inputs"].shape[-2] != tensors[f"{kind}_targets"].shape[-2]:
            raise ValueError(f"{name}.{kind}_inputs has {tensors[f'{kind}_inputs'].shape[-2]} rows but "
                             f"{name}.{kind}_targets has {tensors[f'{kind}_targets'].shape[-2]}")
    stacked = lead[0] if lead else None
    if data.n_models != stacked:  # type: ignore[attr-defined]
        raise ValueError(f"{name}.n_models must be {stacked} for train_inputs of shape {list(reference.shape)}, "
                         f"got {data.n_models!r}")  # type: ignore[attr-defined]
    return data  # type: ignore[return-value]


def check_supervised_system(system: object, name: str = "system") -> SupervisedSystem:
    """``system`` if it implements :class:`SupervisedSystem`; else a ``TypeError`` naming what it lacks."""
    missing = [attr for attr in ("dtype", "device", "sample", "split", "splits", "to", "to_dict", "from_dict")
               if not hasattr(system, attr)]
    if missing:
        raise TypeError(f"{name} must implement physlens.systems.SupervisedSystem; {type(system).__name__} lacks {missing}")
    return system  # type: ignore[return-value]


def import_system_class(path: str) -> type:
    """The class named by ``"package.module:Class"``, checked to implement :class:`System`.

    The module is imported as Python would import it; if it is not found there, the working
    directory is tried too (as ``uvicorn`` and ``gunicorn`` do), so a study run from a project's
    folder finds that project's modules without installing them.
    """
    if not isinstance(path, str) or path.count(":") != 1 or not all(path.split(":")):
        raise ValueError(f"kind must be 'package.module:Class', got {path!r}")
    module_name, class_name = path.split(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        cwd = os.getcwd()
        if cwd in sys.path or error.name is None or not module_name.startswith(error.name):
            raise ValueError(f"kind {path!r}: cannot import module {module_name!r} ({error})") from None
        sys.path.insert(0, cwd)
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as retry:
            sys.path.remove(cwd)
            raise ValueError(f"kind {path!r}: cannot import module {module_name!r} from the Python path or from "
                             f"{cwd!r} ({retry})") from None
    cls = getattr(module, class_name, None)
    if not isinstance(cls, type):
        raise ValueError(f"kind {path!r}: module {module_name!r} has no class {class_name!r}")
    missing = [attr for attr in ("sample", "batches", "to", "to_dict", "from_dict") if not callable(getattr(cls, attr, None))]
    if missing:
        raise ValueError(f"kind {path!r}: {class_name} must implement physlens.systems.System; it lacks {missing}")
    return cls


__all__ = [
    "SPLIT_TENSORS",
    "ExactlySolvable",
    "SupervisedSplit",
    "SupervisedSystem",
    "System",
    "TrajectoryBatch",
    "check_supervised_split",
    "check_supervised_system",
    "check_system",
    "dtype_name",
    "import_system_class",
    "moved_copy",
]
