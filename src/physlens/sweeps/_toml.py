"""Write a parsed study back as TOML, so every trial keeps the exact study file it ran.

The standard library reads TOML (``tomllib``) but does not write it. A study holds only what
``tomllib`` produced — tables, arrays, strings, integers, floats and booleans — so a small writer
covers it; :func:`dump_toml` output read back with ``tomllib`` equals its input (tested).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from typing import Any

_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


def _key(name: str) -> str:
    return name if _BARE_KEY.fullmatch(name) else json.dumps(name, ensure_ascii=False)


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)  # shortest text that reads back to the same float, always with '.' or 'e'
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)  # JSON string escapes are valid TOML basic strings
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{_key(str(k))} = {_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"cannot write {type(value).__name__} {value!r} as TOML")


def dump_toml(document: Mapping[str, Any]) -> str:
    """TOML text for ``document``: top-level tables as ``[name]`` sections, deeper tables inline."""
    lines = [f"{_key(str(k))} = {_value(v)}" for k, v in document.items() if not isinstance(v, Mapping)]
    for name, table in document.items():
        if not isinstance(table, Mapping):
            continue
        if lines:
            lines.append("")
        lines.append(f"[{_key(str(name))}]")
        lines += [f"{_key(str(k))} = {_value(v)}" for k, v in table.items()]
    return "\n".join(lines) + "\n"
