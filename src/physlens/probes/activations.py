"""Collect hooked activations in chunks, keeping only the requested hooks and positions, with labels.

Works on any TransformerLens ``HookedRootModule``: activations are captured by forward hooks, so
memory grows with what is kept (hooks × positions × features × examples), never with the model.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Union

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from physlens._validation import check_batch, check_finite, check_positive_int, did_you_mean
from physlens.systems.base import TrajectoryBatch

Positions = Union[str, int, np.integer, Sequence[Union[int, np.integer]], np.ndarray, Tensor, None]
"""``"all"``, one position, a list of positions (negative counts from the end; numpy integers, arrays
and tensors of them too), or ``None`` for activations without a position axis (the whole activation
is kept)."""

QUERY_AXIS_HOOKS = ("hook_pattern", "hook_attn_scores")
"""Hooks shaped ``[batch, head, q, k]``: their position axis is the query axis (2), not axis 1."""


def position_axis(name: str) -> int:
    """The axis of hook ``name``'s activation that indexes positions (the query axis for patterns)."""
    return 2 if name.rsplit(".", 1)[-1] in QUERY_AXIS_HOOKS else 1


def resolve_positions(positions: object, n_pos: int) -> list[int] | None:
    """Turn a position selection into sorted-as-given non-negative indices, refusing any out of range.

    It is the check of the :data:`Positions` a caller was given, so it takes any object and refuses
    what is not a selection of positions by name."""
    if positions is None:
        return None
    if isinstance(positions, str):
        if positions != "all":
            raise ValueError(f"positions must be 'all', an int, a list of ints or None, got {positions!r}")
        return list(range(n_pos))
    if isinstance(positions, (np.ndarray, Tensor)) and positions.ndim == 0:
        positions = positions.item()
    if isinstance(positions, (np.ndarray, Tensor)):
        positions = positions.tolist()
    if isinstance(positions, (int, np.integer)):
        items = [positions]
    else:
        try:
            items = list(positions)
        except TypeError:
            raise ValueError(f"positions must be 'all', an int, a list of ints or None, got {positions!r}") from None
    if not items:
        raise ValueError("positions must select at least one position")
    resolved = []
    for p in items:
        if isinstance(p, (bool, np.bool_)) or not isinstance(p, (int, np.integer)):
            raise ValueError(f"positions must be integers, got {p!r}")
        p = int(p)
        if not -n_pos <= p < n_pos:
            raise ValueError(f"position {p} is out of range for sequences of {n_pos} positions (valid: {-n_pos}..{n_pos - 1})")
        resolved.append(p % n_pos)
    if len(set(resolved)) != len(resolved):
        raise ValueError(f"positions must not repeat, got {items}")
    return resolved


def check_hooks(model: Any, names: str | Sequence[str]) -> list[str]:
    """Return ``names`` as a list, raising a ``ValueError`` listing valid names if one is not a hook of ``model``."""
    names = [names] if isinstance(names, str) else list(names)
    if not names:
        raise ValueError("names must list at least one hook name")
    hook_dict = getattr(model, "hook_dict", None)
    if hook_dict is None:
        raise TypeError(f"model must be a TransformerLens HookedRootModule (with hook_dict), got {type(model).__name__}")
    unknown = [n for n in names if n not in hook_dict]
    if unknown:
        raise ValueError(f"unknown hook names {unknown} for {type(model).__name__}; {did_you_mean(unknown, hook_dict)}")
    if len(set(names)) != len(names):
        raise ValueError(f"hook names must not repeat, got {names}")
    return names


def model_device(model: Any) -> torch.device:
    """Device of the model's first parameter (CPU for a parameterless model)."""
    parameter = next(iter(model.parameters()), None)
    return parameter.device if parameter is not None else torch.device("cpu")


def model_dtype(model: Any) -> torch.dtype:
    """Floating dtype of the model's first parameter (the default dtype for a parameterless model)."""
    parameter = next(iter(model.parameters()), None)
    return parameter.dtype if parameter is not None else torch.get_default_dtype()


def as_inputs(data: TrajectoryBatch | Tensor, seq_len: int | None = None) -> Tensor:
    """Model inputs from trajectories (their first ``seq_len`` states) or a ready tensor."""
    states = data.states if isinstance(data, TrajectoryBatch) else data
    if not isinstance(states, Tensor):
        raise TypeError(f"data must be a trajectory batch (physlens.systems.TrajectoryBatch) or a tensor, got {type(data).__name__}")
    if seq_len is not None:
        seq_len = check_positive_int("seq_len", seq_len)
        if states.ndim < 2 or states.shape[1] < seq_len:
            raise ValueError(f"data must hold at least seq_len={seq_len} positions, got shape {list(states.shape)}")
        states = states[:, :seq_len]
    return states


def select_labels(labels: Mapping[str, Tensor], n: int, positions: list[int] | None) -> dict[str, Tensor]:
    """Check labels (``[n]`` per example, or ``[n, step]`` per position) and keep the selected positions."""
    selected = {}
    for name, value in labels.items():
        value = torch.as_tensor(value)
        if value.ndim == 0 or value.shape[0] != n:
            raise ValueError(f"label {name!r} must have one entry per example ({n}), got shape {list(value.shape)}")
        if value.ndim == 2 and positions is not None:
            if value.shape[1] <= max(positions):
                raise ValueError(f"label {name!r} has {value.shape[1]} steps but position {max(positions)} was selected")
            value = value[:, positions]
        elif value.ndim > 2 or (value.ndim == 2 and positions is None):
            raise ValueError(f"label {name!r} must be [n] or [n, step] (with positions selected), got shape {list(value.shape)}")
        selected[name] = value
    return selected


def capture_activations(model: Any, inputs: Tensor, names: Sequence[str], positions: list[int] | None) -> dict[str, Tensor]:
    """One hooked forward pass of ``inputs``: ``{hook: activation}`` at the resolved ``positions``
    (``[batch, n_pos, ...]``, or the whole activation when ``positions`` is None), detached."""
    index = torch.tensor(positions, device=inputs.device) if positions is not None else None
    captured: dict[str, Tensor] = {}

    def capture(activation: Tensor, hook: Any) -> None:
        if index is not None:
            axis = position_axis(hook.name)
            if activation.ndim <= axis:
                raise ValueError(f"hook {hook.name!r} has shape {list(activation.shape)} with no position axis; pass positions=None")
            activation = activation.index_select(axis, index)
            if axis != 1:
                activation = activation.movedim(axis, 1)
        captured[hook.name] = activation.detach()

    with torch.no_grad(), model.hooks(fwd_hooks=[(name, capture) for name in names]):
        model(inputs)
    return captured


def iter_activations(
    model: Any,
    inputs: Tensor,
    names: Sequence[str],
    *,
    positions: Positions = "all",
    batch_size: int = 1024,
    device: str | torch.device | None = None,
    progress: bool = False,
) -> Iterator[tuple[slice, dict[str, Tensor]]]:
    """Yield ``(rows, {hook: activation})`` chunk by chunk; each activation is ``[chunk, n_sel_pos, ...]``
    (or ``[chunk, ...]`` when ``positions`` is None), detached, on ``device``.

    ``device`` defaults to the model's device; inputs are moved there chunk by chunk.
    """
    names = check_hooks(model, names)
    batch_size = check_positive_int("batch_size", batch_size)
    if not isinstance(inputs, Tensor) or inputs.ndim < 2:
        raise ValueError(f"inputs must be a tensor [n, pos, ...], got {getattr(inputs, 'shape', type(inputs).__name__)}")
    device = torch.device(device) if device is not None else model_device(model)
    n = inputs.shape[0]
    pos = resolve_positions(positions, inputs.shape[1])
    starts = range(0, n, batch_size)
    for start in tqdm(starts, desc="activations", disable=not progress, leave=False):
        rows = slice(start, min(start + batch_size, n))
        yield rows, capture_activations(model, inputs[rows].to(device), names, pos)


@dataclass
class Activations:
    """Activations of some hooks at some positions, with the physical labels of every example."""

    acts: dict[str, Tensor]  # hook name -> [n, n_pos, ...] ([n, ...] when positions is None)
    positions: list[int] | None  # the kept positions, None when the position axis was not selected
    labels: dict[str, Tensor]  # label name -> [n] or [n, n_pos]

    def __len__(self) -> int:
        return next(iter(self.acts.values())).shape[0]

    def features(self, name: str) -> Tensor:
        """Hook ``name`` flattened to probe features: ``[n, n_pos, d]`` (``[n, 1, d]`` without positions)."""
        if name not in self.acts:
            raise ValueError(f"no activations for hook {name!r}; have {list(self.acts)}")
        act = self.acts[name]
        if self.positions is None:
            return act.reshape(act.shape[0], 1, -1)
        return act.reshape(act.shape[0], act.shape[1], -1)


def collect_activations(
    model: Any,
    data: TrajectoryBatch | Tensor,
    names: str | Sequence[str],
    *,
    positions: Positions = "all",
    labels: Mapping[str, Tensor] | None = None,
    seq_len: int | None = None,
    batch_size: int = 1024,
    device: str | torch.device | None = None,
    progress: bool = False,
) -> Activations:
    """Run ``data`` through ``model`` in chunks and keep hooks ``names`` at ``positions``.

    ``data`` is a tensor of inputs or a trajectory batch (:class:`~physlens.systems.TrajectoryBatch`, first ``seq_len``
    states; their ``labels()`` are attached unless ``labels`` is given). Labels per position
    (``[n, step]``, e.g. energy) are cut to the kept positions.
    """
    inputs = as_inputs(data, seq_len)
    if labels is None:
        labels = data.labels() if isinstance(data, TrajectoryBatch) else {}
    check_batch("inputs", inputs)
    pos = resolve_positions(positions, inputs.shape[1])
    kept = select_labels(labels, inputs.shape[0], pos)
    chunks: dict[str, list[Tensor]] = {}
    for _, acts in iter_activations(model, inputs, names, positions=positions, batch_size=batch_size, device=device, progress=progress):
        for name, act in acts.items():
            chunks.setdefault(name, []).append(act)
    return Activations({name: torch.cat(parts) for name, parts in chunks.items()}, pos, kept)


__all__ = [
    "Activations",
    "Positions",
    "as_inputs",
    "capture_activations",
    "check_hooks",
    "collect_activations",
    "iter_activations",
    "model_device",
    "model_dtype",
    "position_axis",
    "resolve_positions",
    "select_labels",
]
