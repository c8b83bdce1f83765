"""Argument checks shared by every layer of physlens.

Each helper raises a ``ValueError`` (or ``TypeError``) whose message names the argument and what was
expected, so bad input fails at the boundary instead of deep inside a computation.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import typing
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import torch


def did_you_mean(unknown: Sequence[str], valid: Iterable[str], *, listing: str = "valid names are") -> str:
    """The end of an "unknown name" message: ``did you mean 'steps'?`` for each name in ``unknown`` that
    resembles a valid one (``difflib.get_close_matches``), so a misspelling is answered with its
    correction; only when some name resembles none are all the valid names listed, after ``listing``."""
    valid = sorted(str(name) for name in valid)
    matches = {name: difflib.get_close_matches(str(name), valid, n=1) for name in unknown}
    found = [(name, close[0]) for name, close in matches.items() if close]
    parts = []
    if found:
        if len(unknown) == 1:
            parts.append(f"did you mean {found[0][1]!r}?")
        else:
            parts.append("did you mean " + ", ".join(f"{close!r} for {name!r}" for name, close in found) + "?")
    if len(found) < len(unknown):
        parts.append(f"{listing} {valid}")
    return "; ".join(parts)


def check_positive_int(name: str, value: Any) -> int:
    """Return ``value`` as an int, or raise if it is not a positive integer."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def check_nonnegative_int(name: str, value: Any) -> int:
    """Return ``value`` as an int, or raise if it is not a non-negative integer."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
    return int(value)


def _not_a_number(value: Any) -> bool:
    """Strings and bools convert to floats, but a number was not what was given: refuse them."""
    return isinstance(value, (str, bytes, bool, np.bool_))


def check_positive_float(name: str, value: Any) -> float:
    """Return ``value`` as a float, or raise if it is not a finite number > 0 (a string or bool is not a number)."""
    if _not_a_number(value):
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}") from None
    if not math.isfinite(number) or number <= 0:
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return number


def check_finite_float(name: str, value: Any) -> float:
    """Return ``value`` as a float, or raise if it is not a finite number (a string or bool is not a number)."""
    if _not_a_number(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a finite number, got {value!r}") from None
    if not math.isfinite(number):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    return number


def check_bool(name: str, value: Any) -> bool:
    """Return ``value`` if it is a bool, or raise: ``"false"`` or ``0`` are not ``False``."""
    if not isinstance(value, (bool, np.bool_)):
        raise ValueError(f"{name} must be True or False, got {value!r}")
    return bool(value)


def check_bool_fields(config: Any) -> None:
    """Raise unless every field of dataclass ``config`` annotated ``bool`` holds a bool (a string
    such as ``"false"`` is truthy, and would silently turn the setting on)."""
    hints = typing.get_type_hints(type(config))
    for f in dataclasses.fields(config):
        if hints.get(f.name) is bool:
            check_bool(f.name, getattr(config, f.name))


def check_finite(name: str, array: torch.Tensor | np.ndarray) -> None:
    """Raise if ``array`` holds a NaN or an infinity."""
    finite = torch.isfinite(array).all() if isinstance(array, torch.Tensor) else np.isfinite(array).all()
    if not bool(finite):
        raise ValueError(f"{name} must contain only finite values (found NaN or inf)")


def check_batch(name: str, array: torch.Tensor) -> torch.Tensor:
    """Raise unless ``array`` is a real-valued tensor with at least one example (a non-empty first
    axis) and only finite values: an empty batch gives empty results that fail far from here, a NaN
    makes every score NaN (or, compared, equal), and a complex tensor would lose its imaginary part."""
    if not isinstance(array, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(array).__name__}")
    if array.is_complex():
        raise ValueError(f"{name} must be real-valued, got a complex tensor ({array.dtype}); its imaginary part would be lost")
    if array.ndim == 0 or array.shape[0] == 0:
        raise ValueError(f"{name} must hold at least one example, got shape {list(array.shape)}")
    check_finite(name, array)
    return array


def check_shape(name: str, array: torch.Tensor | np.ndarray, expected: tuple[int | None, ...], meaning: str) -> None:
    """Raise unless ``array`` has ``len(expected)`` dims and matches every non-``None`` size.

    ``meaning`` spells the axes for the message, e.g. ``"[batch, pos, 2]"``.
    """
    shape = tuple(array.shape)
    if len(shape) != len(expected) or any(e is not None and e != s for e, s in zip(expected, shape)):
        raise ValueError(f"{name} must have shape {meaning}, got {list(shape)}")


def check_choice(name: str, value: Any, choices: tuple[Any, ...]) -> Any:
    """Raise unless ``value`` is one of ``choices``."""
    if value not in choices:
        raise ValueError(f"{name} must be one of {list(choices)}, got {value!r}")
    return value


def resolve_dtype(dtype: str | torch.dtype) -> torch.dtype:
    """Turn ``"float32"``/``"float64"`` (or a torch dtype) into a floating torch dtype."""
    if isinstance(dtype, torch.dtype):
        resolved = dtype
    else:
        resolved = getattr(torch, str(dtype).removeprefix("torch."), None)
    if not isinstance(resolved, torch.dtype) or not resolved.is_floating_point:
        raise ValueError(f"dtype must be a floating torch dtype such as 'float32' or 'float64', got {dtype!r}")
    return resolved


def dtype_name(dtype: torch.dtype) -> str:
    """The short name of a torch dtype, as stored in configs (``torch.float64`` -> ``"float64"``)."""
    return str(dtype).removeprefix("torch.")
