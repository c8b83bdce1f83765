"""Study reports and study-file reading: markdown + metrics.json + figures, and strict TOML sections.

A study builds a :class:`Report` while it runs and writes it once at the end into the (staging)
output directory; the CLI renames that directory into place only when the study finished.
"""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # studies run headless; figures are only ever saved
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402


class StudySpecError(ValueError):
    """A study file is malformed: unknown section or key, wrong type, or a value out of range."""


def section(spec: Mapping[str, Any], name: str, allowed: Mapping[str, type | tuple[type, ...]], *, required: bool = False) -> dict[str, Any]:
    """Return table ``[name]`` of a study file, refusing keys outside ``allowed`` and values of the wrong type.

    ``allowed`` maps each key to the accepted type(s); ``float`` also accepts ints.
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
        raise StudySpecError(f"[{name}] has unknown keys {unknown}; allowed keys are {sorted(allowed)}")
    checked = {}
    for key, value in table.items():
        types = allowed[key] if isinstance(allowed[key], tuple) else (allowed[key],)
        if float in types:
            types = (*types, int)
        if isinstance(value, bool) and bool not in types:
            raise StudySpecError(f"[{name}] {key} must be {_type_names(types)}, got {value!r}")
        if not isinstance(value, types):
            raise StudySpecError(f"[{name}] {key} must be {_type_names(types)}, got {value!r}")
        checked[key] = value
    return checked


_TOML_TYPES = (bool, int, float, str, list, dict)


def _toml_types(hint: Any) -> tuple[type, ...]:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return tuple(dict.fromkeys(t for arg in typing.get_args(hint) for t in _toml_types(arg)))
    if hint in _TOML_TYPES:
        return (hint,)
    if origin in (tuple, list) or hint in (tuple, list):
        return (list,)
    if origin is dict or hint is dict:
        return (dict,)
    return ()  # None and non-TOML classes (e.g. a ParamSpec object) cannot be written in a study file


def dataclass_schema(cls: type, *, exclude: Sequence[str] = ()) -> dict[str, tuple[type, ...]]:
    """The keys a study table may set for dataclass ``cls`` and the TOML types each accepts, read
    from the field annotations: ``bool`` only for bools, numbers for ``float``, ``str | int`` for a
    field that takes either, lists for tuples. For use with :func:`section`."""
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


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, Mapping):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if hasattr(value, "item") and callable(value.item) and getattr(value, "ndim", 1) == 0:
        return _json_safe(value.item())
    if hasattr(value, "tolist"):
        return _json_safe(value.tolist())
    return value


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
    figures: dict[str, Figure] = field(default_factory=dict)
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
        """Attach ``fig`` (saved as ``figures/{name}.png``) with a caption."""
        if name in self.figures:
            raise ValueError(f"figure name {name!r} is already used in this report")
        self.figures[name] = fig
        self.lines += [f"![{caption}](figures/{name}.png)", "", f"*{caption}*", ""]

    def write(self, directory: str | Path) -> None:
        """Write ``report.md``, ``metrics.json``, ``timings.json`` and ``figures/*.png`` into ``directory``
        and close the figures."""
        out = Path(directory)
        (out / "figures").mkdir(parents=True, exist_ok=True)
        for name, fig in self.figures.items():
            fig.savefig(out / "figures" / f"{name}.png", dpi=110, bbox_inches="tight")
            plt.close(fig)
        (out / "report.md").write_text("# " + self.title + "\n\n" + "\n".join(self.lines).rstrip() + "\n")
        (out / "metrics.json").write_text(json.dumps(_json_safe(self.metrics), indent=2, sort_keys=True) + "\n")
        (out / "timings.json").write_text(json.dumps(_json_safe(self.timings), indent=2, sort_keys=True) + "\n")


__all__ = ["Report", "StudySpecError", "dataclass_schema", "format_number", "section"]
