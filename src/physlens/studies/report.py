"""Study reports and study-file reading: markdown + metrics.json + figures, and strict TOML sections.

A study builds a :class:`Report` while it runs and writes it once at the end into the (staging)
output directory; the CLI renames that directory into place only when the study finished.
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
from matplotlib.figure import Figure

from physlens._io import read_bounded
from physlens._validation import did_you_mean


class StudySpecError(ValueError):
    """A study file is malformed: unknown section or key, wrong type, or a value out of range."""


class TomlTypes(tuple):
    """The TOML types a study key accepts (a tuple of types, as :func:`section` takes), plus, for an
    array, the types of its items and its length (``None``: any length)."""

    items: tuple[type, ...] | None
    length: int | None

    def __new__(cls, types: Sequence[type], items: Sequence[type] | None = None, length: int | None = None) -> TomlTypes:
        made = super().__new__(cls, tuple(types))
        made.items = None if items is None else tuple(items)
        made.length = length
        return made

    def __reduce__(self) -> tuple[Any, ...]:  # pickling (sweep tasks travel to worker processes)
        return (TomlTypes, (tuple(self), self.items, self.length))


def _value_error(name: str, key: str, types: Sequence[type], value: Any) -> StudySpecError:
    given = f"the string {value!r}" if isinstance(value, str) else f"{value!r} ({type(value).__name__})"
    return StudySpecError(f"[{name}] {key} must be {_type_names(types)}, got {given}")


def _check_value(name: str, key: str, types: tuple[type, ...], value: Any) -> None:
    if float in types:
        types = (*types, int)
    if (isinstance(value, bool) and bool not in types) or not isinstance(value, types):
        raise _value_error(name, key, types, value)
    if isinstance(value, float) and not math.isfinite(value):
        raise StudySpecError(f"[{name}] {key} must be a finite number, got {value!r}")


def section(spec: Mapping[str, Any], name: str, allowed: Mapping[str, type | tuple[type, ...]], *, required: bool = False) -> dict[str, Any]:
    """Return table ``[name]`` of a study file, refusing keys outside ``allowed`` and values of the wrong type.

    ``allowed`` maps each key to the accepted type(s); ``float`` also accepts ints, ``int`` never
    accepts a bool or a float (``steps = 1e12`` is refused), no key accepts a string for a number or a
    bool (``causal = "false"`` is refused), and numbers must be finite. A :class:`TomlTypes` entry
    also checks an array's items and length. Every error names the section and the key.
    """
    if name not in spec:
        if required:
            raise StudySpecError(f"study file needs a [{name}] section")
        return {}
    table = spec[name]
    if not isinstance(table, Mapping):
        raise StudySpecError(f"[{name}] must be a table, got {type(table).__name__}")
    unknown = sorted(set(table) - set(allowed))
    if unknown:
        raise StudySpecError(f"[{name}] has unknown keys {unknown}; {did_you_mean(unknown, allowed, listing='allowed keys are')}")
    checked = {}
    for key, value in table.items():
        accepted = allowed[key] if isinstance(allowed[key], tuple) else (allowed[key],)
        _check_value(name, key, tuple(accepted), value)
        items, length = getattr(accepted, "items", None), getattr(accepted, "length", None)
        if isinstance(value, list) and length is not None and len(value) != length:
            raise StudySpecError(f"[{name}] {key} must be a list of {length} items, got {value!r}")
        if isinstance(value, list) and items is not None:
            for item in value:
                try:
                    _check_value(name, key, items, item)
                except StudySpecError:
                    finite = "finite " if float in items else ""
                    raise StudySpecError(
                        f"[{name}] {key} must be a list of {finite}{_type_names(items)} items, got {value!r}") from None
        checked[key] = value
    return checked


_TOML_TYPES = (bool, int, float, str, list, dict)


def _toml_types(hint: Any) -> tuple[type, ...]:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        accepted: list[type] = []
        items, length = None, None
        for arg in typing.get_args(hint):
            part = _toml_types(arg)
            accepted += [t for t in part if t not in accepted]
            if getattr(part, "items", None) is not None and (items is None or part.length is not None):
                items, length = part.items, part.length  # a fixed length (tuple[float, float] | list[float]) wins
        return TomlTypes(accepted, items, length) if items is not None else tuple(accepted)
    if hint in _TOML_TYPES:
        return (hint,)
    if origin in (tuple, list) or hint in (tuple, list):
        args = typing.get_args(hint)
        if origin is tuple and args and args[-1] is not Ellipsis:
            item_types = tuple(dict.fromkeys(t for arg in args for t in _toml_types(arg)))
            return TomlTypes((list,), item_types or None, len(args))
        if args:
            item_types = tuple(dict.fromkeys(_toml_types(args[0])))
            return TomlTypes((list,), item_types or None)
        return (list,)
    if origin is dict or hint is dict:
        return (dict,)
    return ()  # None and non-TOML classes (e.g. a ParamSpec object) cannot be written in a study file


def dataclass_schema(cls: type, *, exclude: Sequence[str] = ()) -> dict[str, tuple[type, ...]]:
    """The keys a study table may set for dataclass ``cls`` and the TOML types each accepts, read
    from the field annotations: ``bool`` only for bools, numbers for ``float``, ``str | int`` for a
    field that takes either, arrays for tuples and lists (with their item types and, for a
    fixed-size tuple, their length, as a :class:`TomlTypes`). For use with :func:`section`."""
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"cls must be a dataclass, got {cls!r}")
    hints = typing.get_type_hints(cls)
    schema = {}
    for f in dataclasses.fields(cls):
        if not f.init or f.name in exclude or f.name.startswith("_"):
            continue
        accepted = _toml_types(hints[f.name])
        if not accepted:
            raise TypeError(f"field {cls.__name__}.{f.name} has no TOML type ({hints[f.name]!r}); exclude it")
        schema[f.name] = accepted
    return schema


def _type_names(types: Sequence[type]) -> str:
    return " or ".join(sorted({t.__name__ for t in types}))


NON_FINITE_KEY = "non_finite"
"""Top-level key of a ``metrics.json`` listing the values written as ``null`` because they were not finite."""


def json_safe(value: Any, non_finite: list[dict[str, Any]] | None = None, path: tuple[str | int, ...] = ()) -> Any:
    """``value`` as plain JSON: numbers stay numbers, arrays and tensors become lists, and a NaN or
    infinity becomes ``null``, recorded in ``non_finite`` (when a list is given) as
    ``{"path": [key or index, ...], "value": "nan" | "inf" | "-inf"}``, so the file stays valid
    JSON and says which values were not finite."""
    if isinstance(value, float) and not math.isfinite(value):
        if non_finite is not None:
            non_finite.append({"path": list(path), "value": "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")})
        return None
    if isinstance(value, Mapping):
        return {str(k): json_safe(v, non_finite, (*path, str(k))) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v, non_finite, (*path, i)) for i, v in enumerate(value)]
    if hasattr(value, "item") and callable(value.item) and getattr(value, "ndim", 1) == 0:
        return json_safe(value.item(), non_finite, path)
    if hasattr(value, "tolist"):
        return json_safe(value.tolist(), non_finite, path)
    return value


def metrics_json(metrics: Mapping[str, Any]) -> str:
    """The text of a ``metrics.json``: sorted keys, non-finite values as ``null`` and listed under
    ``"non_finite"`` (see :func:`json_safe`); :func:`read_metrics` reads it back with them restored."""
    non_finite: list[dict[str, Any]] = []
    payload = json_safe(dict(metrics), non_finite)
    if non_finite:
        payload[NON_FINITE_KEY] = sorted(non_finite, key=lambda entry: json.dumps(entry["path"]))
    return json.dumps(payload, indent=2, sort_keys=True, allow_nan=False) + "\n"


MAX_METRICS_BYTES = 256 << 20
"""The largest ``metrics.json`` read back (a study's is at most a few megabytes)."""


def read_metrics(path: str | Path) -> dict[str, Any]:
    """A ``metrics.json`` as the study computed it: the values listed under ``"non_finite"`` are
    floats again (``nan``, ``inf``, ``-inf``) and the list itself is dropped. Only a regular file is
    read, and only up to :data:`MAX_METRICS_BYTES` (a FIFO or a device is refused, not waited on)."""
    metrics = json.loads(read_bounded(path, MAX_METRICS_BYTES, what="metrics file"))
    entries = metrics.pop(NON_FINITE_KEY, None) if isinstance(metrics, dict) else None
    for entry in entries or []:
        *parents, last = entry["path"]
        node = metrics
        for part in parents:
            node = node[part]
        node[last] = float(entry["value"])
    return metrics


def format_number(value: float | int | None, digits: int = 3) -> str:
    """A compact human-readable number: 3 significant digits, scientific when tiny or huge."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if isinstance(value, (int,)) and not isinstance(value, bool):
        return str(value)
    value = float(value)
    if value != 0 and (abs(value) < 1e-2 or abs(value) >= 1e5):
        return f"{value:.{digits - 1}e}"
    return f"{value:.{digits}g}"


@dataclass
class Report:
    """Markdown report, metrics and figures of one study run."""

    title: str
    lines: list[str] = field(default_factory=list)
    metrics: dict[str, Any] = field(default_factory=dict)
    figures: dict[str, bytes] = field(default_factory=dict)  # name -> PNG
    timings: dict[str, Any] = field(default_factory=dict)  # wall times, kept out of metrics.json so it is reproducible

    def heading(self, text: str, level: int = 2) -> None:
        """Add a markdown heading."""
        self.lines += ["#" * level + " " + text, ""]

    def paragraph(self, text: str) -> None:
        """Add a paragraph of markdown text."""
        self.lines += [text, ""]

    def bullets(self, items: Sequence[str]) -> None:
        """Add a bulleted list."""
        self.lines += [f"- {item}" for item in items] + [""]

    def table(self, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        """Add a markdown table; numbers are formatted with :func:`format_number`."""
        def cell(value: Any) -> str:
            return format_number(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else str(value)

        self.lines.append("| " + " | ".join(header) + " |")
        self.lines.append("|" + "|".join("---" for _ in header) + "|")
        self.lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
        self.lines.append("")

    def figure(self, name: str, fig: Figure, caption: str) -> None:
        """Attach ``fig`` (saved as ``figures/{name}.png``) with a caption. The figure is rendered to
        PNG now and closed, so a report with many figures does not keep them all open."""
        if name in self.figures:
            raise ValueError(f"figure name {name!r} is already used in this report")
        png = io.BytesIO()
        fig.savefig(png, format="png", dpi=110, bbox_inches="tight")
        plt.close(fig)
        self.figures[name] = png.getvalue()
        self.lines += [f"![{caption}](figures/{name}.png)", "", f"*{caption}*", ""]

    def write(self, directory: str | Path) -> None:
        """Write ``report.md``, ``metrics.json``, ``timings.json`` and ``figures/*.png`` into ``directory``
        (the PNGs rendered when they were attached). Non-finite numbers are written as ``null`` and
        listed under ``"non_finite"`` (see :func:`metrics_json`)."""
        out = Path(directory)
        (out / "figures").mkdir(parents=True, exist_ok=True)
        for name, png in self.figures.items():
            (out / "figures" / f"{name}.png").write_bytes(png)
        (out / "report.md").write_text("# " + self.title + "\n\n" + "\n".join(self.lines).rstrip() + "\n")
        (out / "metrics.json").write_text(metrics_json(self.metrics))
        (out / "timings.json").write_text(metrics_json(self.timings))


__all__ = [
    "MAX_METRICS_BYTES", "NON_FINITE_KEY", "Report", "StudySpecError", "TomlTypes", "dataclass_schema", "format_number", "json_safe", "metrics_json",
    "read_metrics", "section",
]
