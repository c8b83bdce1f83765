"""The shape every trajectory system has: what training, evaluation, rollout and probes may ask of it.

A system samples labelled batches of trajectories from a generator, moves to a device and dtype,
and describes itself as JSON; nothing downstream asks which system it was given. A user's system
plugs in from one file: implement these protocols and name the class in a study's
``[system] kind = "package.module:Class"``.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Iterator, Mapping
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


__all__ = ["ExactlySolvable", "System", "TrajectoryBatch", "check_system", "dtype_name", "import_system_class", "moved_copy"]
