"""What a sweep is: a study, the keys it varies (a grid, a list of settings, seeds) and its trials.

A sweep is read from a study file's ``[sweep]`` table, or from a sweep file whose ``[sweep]`` names
the study by path, plus what the command line adds (``--seeds 8 --set model.n_layers=2,4``).
Every value is checked against the study before anything runs: a key the study does not have, or
a value of the wrong type for it, is an error that names the key.
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
import os
import re
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from physlens._validation import did_you_mean
from physlens.studies import STUDY_KINDS, StudySpecError, check_study_header, read_study_text
from physlens.sweeps._toml import dump_toml


class SweepSpecError(StudySpecError):
    """A sweep is malformed: an unknown study key, a value of the wrong type, a clash between axes."""


Key = tuple[str, ...]
TomlTypes = frozenset[type]
SEED_KEY: Key = ("study", "seed")
SWEEP_KEYS = {"name", "study", "description", "seeds", "grid", "settings", "set"}
FIXED_STUDY_KEYS = {("study", "name"), ("study", "kind"), ("study", "threads")}
_NAME = re.compile(r"[A-Za-z0-9_.-]+")


def key_text(key: Key) -> str:
    """The dotted form of a study key, as written on the command line (``model.n_layers``)."""
    return ".".join(key)


def _split_key(text: str, where: str) -> Key:
    parts = tuple(text.split("."))
    if len(parts) < 2 or not all(parts):
        raise SweepSpecError(f"{where}: {text!r} is not a study key; write it as section.key (e.g. model.n_layers)")
    return parts


# --- what the study kinds accept --------------------------------------------------------------------


def _declared_types(value: Any) -> TomlTypes:
    types = value if isinstance(value, tuple) else (value,)
    return frozenset(list if t is tuple else t for t in types)


def _table_types(table: Mapping[str, Any] | None) -> dict[str, TomlTypes] | None:
    return None if table is None else {k: _declared_types(v) for k, v in table.items()}


def _oscillator_schema() -> dict[Key, dict[str, TomlTypes] | None]:
    from physlens.studies import oscillator, oscillator_analyses

    schema: dict[Key, dict[str, TomlTypes] | None] = {
        ("system",): _table_types(oscillator.SYSTEM_KEYS),
        ("model",): _table_types(oscillator.MODEL_KEYS),
        ("training",): _table_types(oscillator.TRAINING_KEYS),
        ("evaluation",): _table_types(oscillator.EVALUATION_KEYS),
        ("analyses",): {"run": frozenset({list})},
    }
    for name, analysis in oscillator_analyses.ANALYSES.items():
        schema[("analyses", name)] = _table_types(analysis.keys)
    return schema


def _declared_sections(kind: str) -> dict[Key, dict[str, TomlTypes] | None]:
    from physlens.studies import study_sections

    return {(table,): _table_types(keys) for table, keys in (study_sections(kind) or {}).items()}


_SCHEMAS: dict[str, Any] = {
    "oscillator": _oscillator_schema,
    "fma": lambda: _declared_sections("fma"),
    "invariants": lambda: _declared_sections("invariants"),
}
"""Study kind → the keys each of its tables accepts and their TOML types, read from the study modules
(their key tables and config dataclasses), so a sweep can check a key the study file leaves at
its default. A table the module no longer declares falls back to the keys present in the file."""

STUDY_HEADER_TYPES: dict[str, TomlTypes] = {"name": frozenset({str}), "kind": frozenset({str}), "seed": frozenset({int}),
                                            "description": frozenset({str}), "threads": frozenset({int})}


def study_schema(kind: str) -> dict[Key, dict[str, TomlTypes]]:
    """The tables of study ``kind`` and, for each, its keys and their accepted TOML value types."""
    if kind not in STUDY_KINDS:
        raise SweepSpecError(f"[study] kind must be one of {sorted(STUDY_KINDS)}, got {kind!r}")
    builder = _SCHEMAS.get(kind)
    tables = builder() if builder is not None else {}
    schema = {k: v for k, v in tables.items() if v is not None}
    schema[("study",)] = dict(STUDY_HEADER_TYPES)
    return schema


def _lookup(spec: Mapping[str, Any], key: Key) -> tuple[bool, Any]:
    node: Any = spec
    for part in key:
        if not isinstance(node, Mapping) or part not in node:
            return False, None
        node = node[part]
    return True, node


def _value_types(value: Any) -> TomlTypes:
    return frozenset({dict if isinstance(value, Mapping) else list if isinstance(value, list) else type(value)})


def _type_words(types: TomlTypes) -> str:
    words = {bool: "a boolean (true or false)", int: "an integer", float: "a number", str: "a string",
             list: "an array", dict: "a table"}
    return " or ".join(sorted(words[t] for t in types if t in words))


def check_value(kind: str, base: Mapping[str, Any], key: Key, value: Any, where: str) -> Any:
    """Check that ``value`` may be given to study key ``key`` and return it (an integer becomes a
    float where the study expects a number); raise :class:`SweepSpecError` naming the key if not.

    The accepted types come from the study kind's declared keys (:func:`study_schema`), or, for a
    key the kind does not declare, from the value the study file gives it.
    """
    text = key_text(key)
    if key in FIXED_STUDY_KEYS:
        raise SweepSpecError(f"{where}: a sweep cannot vary {text} (trials keep the study's name and kind and run one thread each)")
    schema = study_schema(kind)
    present, current = _lookup(base, key)
    table = schema.get(key[:-1])
    if table is not None and key[-1] in table:
        types = table[key[-1]]
    elif present and not isinstance(current, Mapping):
        types = _value_types(current)
    else:
        section, name = key_text(key[:-1]), key[-1]
        if table is not None:
            known = sorted(table)
        else:
            found, node = _lookup(base, key[:-1])
            known = sorted(k for k in node if not isinstance(node[k], Mapping)) if found and isinstance(node, Mapping) else []
        hint = f"; [{section}] keys are {known}" if known else ""
        raise SweepSpecError(f"{where}: {text} is not a key of this {kind} study ({name!r} unknown in [{section}]{hint})")
    if isinstance(value, bool):
        ok = bool in types
    elif isinstance(value, int):
        ok = int in types or float in types
        if ok and int not in types:
            value = float(value)
    elif isinstance(value, Mapping):
        ok = dict in types
    else:
        ok = type(value) in types
    if not ok:
        given = f"the string {value!r}" if isinstance(value, str) else repr(value)
        raise SweepSpecError(f"{where}: {text} must be {_type_words(types)}, got {given}")
    if isinstance(value, list) and present and isinstance(current, list) and current:
        families = {_family(v) for v in current}
        if len(families) == 1:
            expected = families.pop()
            accepted = {expected, "integer"} if expected == "number" else {expected}
            bad = [v for v in value if _family(v) not in accepted]
            if bad:
                raise SweepSpecError(f"{where}: {text} holds {expected}s in the study file ({current!r}); got {bad[0]!r} in {value!r}")
            if expected == "number":
                value = [float(v) for v in value]
    return value


def _family(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    return {str: "string", list: "array", dict: "table"}.get(type(value), type(value).__name__)


# --- the sweep ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Trial:
    """One run of a sweep: the base study with some keys replaced."""

    name: str  # directory name under trials/: the varied values, then a hash of the whole study
    overrides: dict[Key, Any]  # every key the sweep sets for this trial (study.seed included)
    spec: dict[str, Any]  # the complete study this trial runs
    spec_hash: str  # sha256 of the complete study; equal hashes mean the same computation

    @property
    def seed(self) -> int:
        """The trial's ``[study] seed``."""
        return int(self.spec["study"].get("seed", 0))

    def study_toml(self) -> str:
        """The trial's complete study file: ``physlens run`` on it repeats the trial."""
        return dump_toml(self.spec)


@dataclass
class SweepSpec:
    """A sweep: the base study, the keys it varies and the trials that result."""

    name: str  # directory name of the sweep under the output root
    study_path: Path | None  # the study file the sweep was read from (None when built in Python)
    base: dict[str, Any]  # the study every trial starts from ([sweep] removed)
    fixed: dict[Key, Any] = field(default_factory=dict)  # keys set to one value in every trial
    grid: dict[Key, list[Any]] = field(default_factory=dict)  # keys whose values are crossed
    settings: list[dict[Key, Any]] = field(default_factory=list)  # explicit combinations (crossed with the grid)
    seeds: list[int] | None = None  # study seeds, crossed with everything else
    description: str = ""

    @property
    def kind(self) -> str:
        """The study kind of every trial."""
        return self.base["study"]["kind"]

    @cached_property
    def axes(self) -> list[Key]:
        """The keys that vary between trials, in declaration order (the seed last)."""
        keys: list[Key] = []
        for setting in self.settings:
            keys += [k for k in setting if k not in keys]
        keys += [k for k in self.grid if k not in keys]
        if self.seeds is not None and SEED_KEY not in keys:
            keys.append(SEED_KEY)
        return [k for k in keys if len({_canonical(t.overrides.get(k)) for t in self.trials}) > 1 or k == SEED_KEY]

    @cached_property
    def trials(self) -> list[Trial]:
        """Every trial: settings × grid × seeds, each with its full study and directory name
        (computed once: build a new :class:`SweepSpec` rather than changing this one)."""
        return _expand(self)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready description (written to ``sweep.json``)."""
        return {
            "name": self.name,
            "study_path": None if self.study_path is None else str(self.study_path),
            "kind": self.kind,
            "description": self.description,
            "base_hash": spec_hash(self.base),
            "fixed": {key_text(k): v for k, v in self.fixed.items()},
            "grid": {key_text(k): v for k, v in self.grid.items()},
            "settings": [{key_text(k): v for k, v in s.items()} for s in self.settings],
            "seeds": self.seeds,
            "axes": [key_text(k) for k in self.axes],
            "trials": [{"name": t.name, "overrides": {key_text(k): v for k, v in t.overrides.items()}} for t in self.trials],
        }


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def spec_hash(spec: Mapping[str, Any]) -> str:
    """sha256 of a study's canonical JSON: the same hash means the same study."""
    return hashlib.sha256(_canonical(spec).encode()).hexdigest()


def apply_overrides(base: Mapping[str, Any], overrides: Mapping[Key, Any]) -> dict[str, Any]:
    """A deep copy of ``base`` with each key of ``overrides`` set (missing tables are created)."""
    spec = copy.deepcopy(dict(base))
    for key, value in overrides.items():
        node = spec
        for part in key[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise SweepSpecError(f"{key_text(key)}: {part!r} is a value in the study, not a table")
            node = child
        node[key[-1]] = copy.deepcopy(value)
    return spec


def _slug(value: Any) -> str:
    text = value if isinstance(value, str) else _canonical(value)
    if isinstance(value, (int, float)) and not isinstance(value, bool) and re.fullmatch(r"[-+]?[0-9A-Za-z.+-]+", text):
        return text[:24]  # a number keeps its sign: steps = -1 is not named steps=1
    text = re.sub(r"[^A-Za-z0-9_.+-]+", "-", text).strip("-.")
    return text[:24] or "x"


def _expand(sweep: SweepSpec) -> list[Trial]:
    seeds = sweep.seeds if sweep.seeds is not None else [None]
    grid_keys = list(sweep.grid)
    combos = list(itertools.product(*(sweep.grid[k] for k in grid_keys))) if grid_keys else [()]
    raw: list[dict[Key, Any]] = []
    for setting in sweep.settings or [{}]:
        for combo in combos:
            for seed in seeds:
                overrides = {**sweep.fixed, **setting, **dict(zip(grid_keys, combo))}
                if seed is not None:
                    overrides[SEED_KEY] = seed
                raw.append(overrides)
    varying = [k for k in dict.fromkeys(k for o in raw for k in o) if len({_canonical(o.get(k)) for o in raw}) > 1]
    if SEED_KEY in varying:
        varying = [k for k in varying if k != SEED_KEY] + [SEED_KEY]
    trials, seen = [], {}
    for overrides in raw:
        spec = apply_overrides(sweep.base, overrides)
        digest = spec_hash(spec)
        if digest in seen:
            same = ", ".join(f"{key_text(k)}={_canonical(v)}" for k, v in overrides.items())
            raise SweepSpecError(f"two trials of sweep {sweep.name!r} would run the same study ({same}); remove the repeated value")
        slug = "_".join(f"{k[-1] if k != SEED_KEY else 'seed'}={_slug(overrides[k])}" for k in varying if k in overrides)
        name = f"{slug[:100]}-{digest[:10]}" if slug else f"trial-{digest[:10]}"
        seen[digest] = name
        trials.append(Trial(name=name, overrides=overrides, spec=spec, spec_hash=digest))
    return trials


# --- reading a sweep ------------------------------------------------------------------------------------


def parse_set_option(text: str) -> tuple[Key, list[Any]]:
    """Parse one ``--set KEY=V1,V2,...`` option into the key and its values.

    Each value is read as a TOML value (``2``, ``1e-3``, ``true``, ``"text"``, ``[0.0, 1.0]``,
    ``{range = [1.0, 4.0]}``); a value that is not valid TOML is taken as a bare string, so
    ``model.preset=nLA,OLA`` works. Commas inside brackets, braces or quotes do not split.
    """
    if "=" not in text:
        raise SweepSpecError(f"--set {text!r}: expected KEY=VALUE[,VALUE...], e.g. model.n_layers=2,4")
    name, _, rest = text.partition("=")
    key = _split_key(name.strip(), f"--set {text!r}")
    pieces, depth, quote, start = [], 0, None, 0
    for index, char in enumerate(rest):
        if quote:
            if char == quote and rest[index - 1] != "\\":
                quote = None
        elif char in "\"'":
            quote = char
        elif char in "[{":
            depth += 1
        elif char in "]}":
            depth -= 1
        elif char == "," and depth == 0:
            pieces.append(rest[start:index])
            start = index + 1
    pieces.append(rest[start:])
    values = []
    for piece in pieces:
        piece = piece.strip()
        if not piece:
            raise SweepSpecError(f"--set {text!r}: an empty value; separate values with commas, e.g. {name}=2,4")
        try:
            values.append(tomllib.loads(f"v = {piece}")["v"])
        except tomllib.TOMLDecodeError:
            values.append(piece)
    return key, values


def _flatten(table: Mapping[str, Any], schema: Mapping[Key, Any], base: Mapping[str, Any], where: str,
             prefix: Key = ()) -> dict[Key, Any]:
    """Dotted study keys of a (possibly nested) TOML table: descend while the path names a table of the study."""
    out: dict[Key, Any] = {}
    for name, value in table.items():
        key = prefix + tuple(name.split("."))
        is_table = key in schema or any(k[: len(key)] == key and len(k) > len(key) for k in schema)
        if not is_table:
            found, node = _lookup(base, key)
            declared = schema.get(key[:-1], {})
            is_table = found and isinstance(node, Mapping) and key[-1] not in declared
        if isinstance(value, Mapping) and is_table:
            out.update(_flatten(value, schema, base, where, key))
        else:
            if len(key) < 2:
                raise SweepSpecError(f"{where}: {name!r} is not a study key; write it as section.key (e.g. model.n_layers)")
            out[key] = value
    return out


MAX_TRIALS = 10_000
"""The most trials one sweep may have: more is a typo (seeds = 1e9), and expanding it would not finish."""


def _seeds(value: Any, base_seed: int, where: str) -> list[int]:
    expected = "a positive integer (that many seeds from [study] seed on) or a list of distinct seeds >= 0"
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 1:
            raise SweepSpecError(f"{where} must be {expected}, got {value}")
        if value > MAX_TRIALS:
            raise SweepSpecError(f"{where} must be at most {MAX_TRIALS} (a sweep has at most {MAX_TRIALS} trials), got {value}")
        return list(range(base_seed, base_seed + value))
    if isinstance(value, list) and value and all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value):
        if len(set(value)) != len(value):
            raise SweepSpecError(f"{where} lists a seed twice: {value}")
        return list(value)
    raise SweepSpecError(f"{where} must be {expected}, got {value!r}")


def _read_toml(file: Path, what: str) -> dict[str, Any]:
    """A sweep's TOML file, read as a study file is (a regular UTF-8 file, within a bound: a FIFO or a
    device is refused, not waited on or read whole), with every failure one error naming the file."""
    try:
        text = read_study_text(file)
    except StudySpecError as error:
        raise SweepSpecError(str(error).replace("study file", what, 1)) from None
    except FileNotFoundError:
        raise FileNotFoundError(f"{what} {str(file)!r} does not exist") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise SweepSpecError(f"{what} {str(file)!r} is not valid TOML: {error}") from None
    except RecursionError:
        raise SweepSpecError(f"{what} {str(file)!r} nests its arrays or tables too deeply to read") from None


def load_sweep(
    path: str | os.PathLike[str],
    *,
    seeds: int | Sequence[int] | None = None,
    set_options: Sequence[str] = (),
    name: str | None = None,
) -> SweepSpec:
    """Read a sweep from a study file (its optional ``[sweep]`` table) or a sweep file, plus the
    command line's ``--seeds`` and ``--set`` options, and check every value against the study.

    A sweep file holds only a ``[sweep]`` table whose ``study`` names the study file, relative to
    the sweep file. ``[sweep]`` keys: ``name``, ``description``, ``seeds`` (a count from the study's
    seed on, or a list), ``grid`` (key → list of values, crossed), ``settings`` (a list of tables,
    each one combination of values) and ``set`` (key → one value for every trial). Keys are study
    keys written ``section.key`` (``model.n_layers``, ``analyses.probes.n_folds``). On the command
    line, ``--set key=v1,v2`` adds a grid axis (one value: a fixed setting) and replaces the file's
    entry for that key; ``seeds`` replaces the file's ``seeds``.
    """
    file = Path(path)
    document = _read_toml(file, "sweep or study file")
    table = document.get("sweep", {})
    if not isinstance(table, Mapping):
        raise SweepSpecError(f"{file}: [sweep] must be a table")
    unknown = sorted(set(table) - SWEEP_KEYS)
    if unknown:
        raise SweepSpecError(f"{file}: [sweep] has unknown keys {unknown}; {did_you_mean(unknown, SWEEP_KEYS, listing='allowed keys are')}")
    if "study" in table:
        others = sorted(set(document) - {"sweep"})
        if others:
            raise SweepSpecError(f"{file}: a sweep file names its study in [sweep] study and holds no other tables, found {others}")
        if not isinstance(table["study"], str):
            raise SweepSpecError(f"{file}: [sweep] study must be the path of a study file, got {table['study']!r}")
        study_path = (file.parent / table["study"]).resolve()
        if not os.path.lexists(study_path):
            raise FileNotFoundError(f"{file}: [sweep] study {table['study']!r} does not exist (looked for {study_path})")
        base = _read_toml(study_path, "study file")
        if "sweep" in base:
            raise SweepSpecError(f"{file}: its study {str(study_path)!r} has a [sweep] table of its own; sweep one or the other")
    else:
        study_path, base = file.resolve(), {k: v for k, v in document.items() if k != "sweep"}
    check_study_header(base)
    kind = base["study"]["kind"]
    schema = study_schema(kind)
    where = f"{file} [sweep]"
    for key in ("name", "description"):
        if key in table and not isinstance(table[key], str):
            raise SweepSpecError(f"{where} {key} must be a string, got {table[key]!r}")

    def checked(key: Key, value: Any, context: str) -> Any:
        return check_value(kind, base, key, value, context)

    fixed: dict[Key, Any] = {}
    if "set" in table:
        if not isinstance(table["set"], Mapping):
            raise SweepSpecError(f"{where} set must be a table of study keys")
        for key, value in _flatten(table["set"], schema, base, f"{where} set").items():
            fixed[key] = checked(key, value, f"{where} set")
    grid: dict[Key, list[Any]] = {}
    if "grid" in table:
        if not isinstance(table["grid"], Mapping):
            raise SweepSpecError(f"{where} grid must be a table of study keys, each with a list of values")
        for key, values in _flatten(table["grid"], schema, base, f"{where} grid").items():
            if not isinstance(values, list) or not values:
                raise SweepSpecError(f"{where} grid: {key_text(key)} must be a non-empty list of values, got {values!r}")
            grid[key] = [checked(key, v, f"{where} grid") for v in values]
    settings: list[dict[Key, Any]] = []
    if "settings" in table:
        if not isinstance(table["settings"], list) or not table["settings"] or not all(isinstance(s, Mapping) for s in table["settings"]):
            raise SweepSpecError(f"{where} settings must be a non-empty list of tables ([[sweep.settings]])")
        for index, entry in enumerate(table["settings"]):
            context = f"{where} settings[{index}]"
            flat = _flatten(entry, schema, base, context)
            if not flat:
                raise SweepSpecError(f"{context} is empty")
            settings.append({k: checked(k, v, context) for k, v in flat.items()})
    sweep_seeds = _seeds(table["seeds"], base["study"].get("seed", 0), f"{where} seeds") if "seeds" in table else None

    for option in set_options:
        key, values = parse_set_option(option)
        context = f"--set {key_text(key)}"
        values = [checked(key, v, context) for v in values]
        fixed.pop(key, None)
        grid.pop(key, None)
        settings = [{k: v for k, v in s.items() if k != key} for s in settings]
        if len(values) == 1:
            fixed[key] = values[0]
        else:
            grid[key] = values
    settings = [s for s in settings if s] if any(settings) else []
    if seeds is not None:
        sweep_seeds = _seeds(list(seeds) if not isinstance(seeds, int) else seeds, base["study"].get("seed", 0), "--seeds")

    for key, values in grid.items():
        texts = [_canonical(v) for v in values]
        repeated = sorted({t for t in texts if texts.count(t) > 1})
        if repeated:
            raise SweepSpecError(f"{where} grid: {key_text(key)} lists {', '.join(repeated)} more than once")
    setting_keys = {k for s in settings for k in s}
    for a, b, label in ((fixed, grid, "set and grid"), (fixed, setting_keys, "set and settings"), (grid, setting_keys, "grid and settings")):
        both = sorted(key_text(k) for k in set(a) & set(b))
        if both:
            raise SweepSpecError(f"{where}: {', '.join(both)} appear in both {label}; give each key in one place")
    if sweep_seeds is not None and (SEED_KEY in grid or SEED_KEY in setting_keys or SEED_KEY in fixed):
        raise SweepSpecError(f"{where}: study.seed is swept and seeds is given too; use one or the other")

    sweep_name = name if name is not None else table.get("name", f"{base['study']['name']}-sweep")
    if not _NAME.fullmatch(sweep_name) or sweep_name.startswith("."):
        raise SweepSpecError(f"sweep name must be letters, digits, '_', '-' or '.', got {sweep_name!r}")
    n_trials = max(1, len(settings)) * len(sweep_seeds or [None])
    for values in grid.values():
        n_trials *= len(values)
    if n_trials > MAX_TRIALS:
        raise SweepSpecError(f"{where}: the grid, settings and seeds make {n_trials} trials, more than {MAX_TRIALS}; "
                             "sweep fewer values")
    sweep = SweepSpec(
        name=sweep_name, study_path=study_path, base=base, fixed=fixed, grid=grid, settings=settings,
        seeds=sweep_seeds, description=table.get("description", ""),
    )
    for trial in sweep.trials:
        check_study_header(trial.spec)
        _check_values(trial, where)
    return sweep


def _check_values(trial: Trial, where: str) -> None:
    """Refuse up front a swept value that no trial could run with: a NaN anywhere, or a [training]
    table the oscillator's TrainConfig refuses by itself (steps = -1, lr = nan). Settings that only
    clash with another section (a context shorter than the training sequences) stay the trial's own
    failure, reported with the others."""
    for key, value in trial.overrides.items():
        if isinstance(value, float) and value != value:
            raise SweepSpecError(f"{where}: {key_text(key)} = nan can never be a setting (trial {trial.name})")
    if trial.spec["study"].get("kind") != "oscillator" or not any(key[0] == "training" for key in trial.overrides):
        return
    from physlens.training.trainer import config_from_dict

    training = dict(trial.spec.get("training", {}))
    training.pop("seed", None)
    try:
        config_from_dict(training)
    except (TypeError, ValueError) as error:
        swept = ", ".join(f"{key_text(k)} = {_canonical(v)}" for k, v in trial.overrides.items() if k[0] == "training")
        raise SweepSpecError(f"{where}: [training] with {swept} is invalid: {error}") from None


__all__ = [
    "SEED_KEY", "SweepSpec", "SweepSpecError", "Trial", "apply_overrides", "check_value", "key_text", "load_sweep",
    "parse_set_option", "spec_hash", "study_schema",
]
