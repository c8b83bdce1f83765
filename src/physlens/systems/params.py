"""Per-trajectory parameter specifications: a fixed value, a uniform range, or a discrete list.

Systems draw one value per trajectory from a spec, so a study can say "ω0 = 2", "ω0 ~ U[1, 4]" or
"γ ∈ {0, 0.1}" with the same field.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Union

import torch

from physlens._validation import check_finite_float


@dataclass(frozen=True)
class Fixed:
    """Every trajectory gets ``value``."""

    value: float

    def __post_init__(self) -> None:
        check_finite_float("Fixed.value", self.value)

    @property
    def bounds(self) -> tuple[float, float]:
        """Smallest and largest value this spec can produce."""
        return (float(self.value), float(self.value))

    def sample(self, n: int, *, generator: torch.Generator, dtype: torch.dtype, device: torch.device | str) -> torch.Tensor:
        """Draw ``n`` values (all equal to ``value``)."""
        return torch.full((n,), float(self.value), dtype=dtype, device=device)


@dataclass(frozen=True)
class Uniform:
    """Each trajectory draws uniformly from ``[low, high]``."""

    low: float
    high: float

    def __post_init__(self) -> None:
        check_finite_float("Uniform.low", self.low)
        check_finite_float("Uniform.high", self.high)
        if self.high < self.low:
            raise ValueError(f"Uniform range must have low <= high, got [{self.low}, {self.high}]")

    @property
    def bounds(self) -> tuple[float, float]:
        """Smallest and largest value this spec can produce."""
        return (float(self.low), float(self.high))

    def sample(self, n: int, *, generator: torch.Generator, dtype: torch.dtype, device: torch.device | str) -> torch.Tensor:
        """Draw ``n`` values uniformly from ``[low, high]``."""
        u = torch.rand(n, generator=generator, dtype=torch.float64, device=generator.device)
        return (self.low + (self.high - self.low) * u).to(dtype=dtype, device=device)


@dataclass(frozen=True)
class Choice:
    """Each trajectory draws one of ``values`` with equal probability."""

    values: tuple[float, ...]

    def __post_init__(self) -> None:
        if len(self.values) == 0:
            raise ValueError("Choice.values must hold at least one value")
        for value in self.values:
            check_finite_float("Choice.values", value)

    @property
    def bounds(self) -> tuple[float, float]:
        """Smallest and largest value this spec can produce."""
        return (float(min(self.values)), float(max(self.values)))

    def sample(self, n: int, *, generator: torch.Generator, dtype: torch.dtype, device: torch.device | str) -> torch.Tensor:
        """Draw ``n`` values, each one of ``values`` with equal probability."""
        index = torch.randint(len(self.values), (n,), generator=generator, device=generator.device)
        table = torch.tensor(self.values, dtype=torch.float64, device=generator.device)
        return table[index].to(dtype=dtype, device=device)


ParamSpec = Union[Fixed, Uniform, Choice]
"""Any per-trajectory parameter specification: :class:`Fixed`, :class:`Uniform` or :class:`Choice`."""


def as_param_spec(name: str, spec: Any) -> ParamSpec:
    """Read a spec from a number, a spec object, or the TOML/JSON forms ``{"range": [lo, hi]}`` and
    ``{"values": [a, b, ...]}``.

    A bare list is refused on purpose: ``[1, 4]`` could mean a range or two values, and guessing
    would silently change the experiment.
    """
    if isinstance(spec, (Fixed, Uniform, Choice)):
        return spec
    if isinstance(spec, bool):
        raise ValueError(f"{name} must be a number, {{'range': [low, high]}} or {{'values': [...]}}, got {spec!r}")
    if isinstance(spec, (int, float)):
        if not math.isfinite(spec):
            raise ValueError(f"{name} must be finite, got {spec!r}")
        return Fixed(float(spec))
    if isinstance(spec, Mapping) and len(spec) == 1:
        ((key, value),) = spec.items()
        if key == "range" and isinstance(value, Sequence) and len(value) == 2:
            return Uniform(float(value[0]), float(value[1]))
        if key == "values" and isinstance(value, Sequence) and not isinstance(value, str):
            return Choice(tuple(float(v) for v in value))
    raise ValueError(
        f"{name} must be a number, {{'range': [low, high]}} or {{'values': [a, b, ...]}}, got {spec!r}"
    )


def spec_to_json(spec: ParamSpec) -> float | dict[str, list[float]]:
    """The inverse of :func:`as_param_spec`, for configs and reports."""
    if isinstance(spec, Fixed):
        return float(spec.value)
    if isinstance(spec, Uniform):
        return {"range": [float(spec.low), float(spec.high)]}
    return {"values": [float(v) for v in spec.values]}
