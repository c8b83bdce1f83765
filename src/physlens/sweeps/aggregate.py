"""Gather a sweep's trials into one table and write the sweep report.

The table has one row per trial: its name and status, the swept keys, its run time and error,
and every number (and short string) of its ``metrics.json`` as a column named by its key path. The
report puts each headline metric of the study kind (:data:`physlens.sweeps.HEADLINES`) against the
swept keys with its median over seeds and a bootstrap interval, and lists the findings that hold
in every seed apart from those that do not.
"""

from __future__ import annotations

import io
import json
import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from physlens import stats
from physlens._io import atomic_write_bytes, atomic_write_text, read_bounded
from physlens.studies.report import read_metrics
from physlens.sweeps.metrics import HEADLINES, Headlines, lookup
from physlens.sweeps.spec import SEED_KEY, SweepSpec, Trial, key_text

CONFIDENCE = 0.95
"""Confidence level of the bootstrap intervals in sweep reports."""

N_RESAMPLES = 2000
"""Bootstrap resamples per interval."""


@dataclass
class TrialRecord:
    """A trial as found on disk."""

    trial: Trial  # the trial's definition
    status: str  # "finished", "failed" or "missing"
    metrics: dict[str, Any] | None  # its metrics.json, when finished
    error: str | None  # its error, when failed
    run_time_s: float | None  # wall time of the run (run_time.txt), when finished


def collect(directory: str | Path, sweep: SweepSpec) -> list[TrialRecord]:
    """The records of every trial of ``sweep`` in the sweep directory ``directory``."""
    from physlens.sweeps.runner import trial_status

    root = Path(directory)
    records = []
    for trial in sweep.trials:
        status = trial_status(root, trial)
        metrics = error = run_time = None
        if status == "finished":
            run = root / "trials" / trial.name
            metrics = read_metrics(run / "metrics.json")  # non-finite values restored from their null + flag
            try:
                run_time = float(read_bounded(run / "run_time.txt", 1024, what="run time").split()[0])
            except (OSError, ValueError, IndexError):
                run_time = None
        elif status == "failed":
            try:
                record = json.loads(read_bounded(root / "failures" / f"{trial.name}.json", 1 << 20, what="failure record"))
                error = record.get("error") if isinstance(record, dict) else None
            except (OSError, ValueError, RecursionError):  # a FIFO, a huge or a damaged record is read no further
                error = "(its failure record cannot be read)"
        records.append(TrialRecord(trial, status, metrics, error, run_time))
    return records


def _path_key(key: str) -> str:
    return f'"{key}"' if "." in key else key


def flatten_metrics(metrics: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Scalar leaves of a nested metrics dict by key path (arrays are left out: they are not one number)."""
    out: dict[str, Any] = {}
    for key, value in metrics.items():
        path = prefix + _path_key(str(key))
        if isinstance(value, Mapping):
            out.update(flatten_metrics(value, path + "."))
        elif isinstance(value, (bool, int, float, str)) or value is None:
            out[path] = value
    return out


def _cell(value: Any) -> Any:
    return json.dumps(value, sort_keys=True) if isinstance(value, (list, dict)) else value


def _tidy_column(column: pd.Series) -> pd.Series:
    """One type per column, so the table writes to Parquet: numbers stay numbers (with "inf" strings
    as floats), booleans and strings stay, and a column that mixes kinds becomes strings."""
    values = [v for v in column if v is not None and not (isinstance(v, float) and math.isnan(v))]
    kinds = {"bool" if isinstance(v, bool) else "number" if isinstance(v, (int, float)) else
             "nonfinite" if v in ("inf", "-inf", "nan") else "string" for v in values}
    if kinds and kinds <= {"number", "nonfinite"}:
        if len(values) == len(column) and all(isinstance(v, int) for v in values):
            return column.astype("int64")
        return column.map(lambda v: math.nan if v is None else float(v)).astype(float)
    if len(kinds) > 1:
        return column.map(lambda v: None if v is None or (isinstance(v, float) and math.isnan(v)) else str(v))
    return column


def sweep_table(records: Sequence[TrialRecord], sweep: SweepSpec) -> pd.DataFrame:
    """One row per trial: ``trial``, ``status``, ``seed``, one column per swept key, ``run_time_s``,
    ``error``, then every scalar of the trial's ``metrics.json`` under its key path."""
    axes = [k for k in sweep.axes if k != SEED_KEY]
    rows = []
    for record in records:
        row: dict[str, Any] = {"trial": record.trial.name, "status": record.status, "seed": record.trial.seed}
        for key in axes:
            row[key_text(key)] = _cell(record.trial.overrides.get(key))
        row["run_time_s"] = record.run_time_s
        row["error"] = record.error
        rows.append((row, flatten_metrics(record.metrics) if record.metrics else {}))
    metric_columns = sorted({c for _, flat in rows for c in flat} - set(rows[0][0] if rows else ()))
    table = pd.DataFrame([{**row, **{c: flat.get(c) for c in metric_columns}} for row, flat in rows])
    if table.empty:
        return pd.DataFrame(columns=["trial", "status", "seed", *map(key_text, axes), "run_time_s", "error"])
    for column in table.columns:
        if column not in ("trial", "status"):
            table[column] = _tidy_column(table[column].astype(object).where(table[column].notna(), None))
    return table


def median_interval(values: Sequence[float] | np.ndarray, *, confidence: float = CONFIDENCE, seed: int = 0) -> tuple[float, float, float]:
    """Median of ``values`` (NaN dropped: failed trials) and a percentile-bootstrap interval for it,
    :func:`physlens.stats.median_interval`'s, as a tuple; NaN bounds with fewer than 2 values."""
    data = np.asarray([v for v in values if not math.isnan(v)], dtype=float)
    if data.size == 0:
        return math.nan, math.nan, math.nan
    if data.size < 2:
        return float(data[0]), math.nan, math.nan
    interval = stats.median_interval(data, confidence=confidence, n_resamples=N_RESAMPLES, seed=seed)
    return interval.estimate, interval.low, interval.high


def _setting(trial: Trial, axes: Sequence[tuple[str, ...]]) -> tuple[str, ...]:
    return tuple(_text(trial.overrides.get(k)) for k in axes)


def _text(value: Any) -> str:
    if isinstance(value, float):
        return format(value, "g")
    return value if isinstance(value, str) else json.dumps(value)


def headline_values(records: Sequence[TrialRecord], sweep: SweepSpec, headlines: Headlines) -> pd.DataFrame:
    """Long table of the headline metrics: one row per finished trial × metric × match of its path."""
    axes = [k for k in sweep.axes if k != SEED_KEY]
    rows = []
    for metric in headlines.metrics:
        found = {r.trial.name: lookup(r.metrics, metric.path) for r in records if r.status == "finished"}
        if metric.normalize:
            labels = {m for matches in found.values() for m in matches}
            for name, matches in found.items():
                groups = {m[:-1] for m in matches}
                filled = {m: matches.get(m, 0.0) for m in labels if m[:-1] in groups}
                totals = {g: sum(v for m, v in filled.items() if m[:-1] == g) for g in groups}
                found[name] = {m: (v / totals[m[:-1]] if totals[m[:-1]] else math.nan) for m, v in filled.items()}
        for record in records:
            for match, value in sorted(found.get(record.trial.name, {}).items()):
                rows.append({"metric": metric.label, "path": metric.path, "match": " / ".join(match),
                             **{key_text(k): v for k, v in zip(axes, _setting(record.trial, axes))},
                             "seed": record.trial.seed, "trial": record.trial.name, "value": value})
    return pd.DataFrame(rows)


def summarize(values: pd.DataFrame, sweep: SweepSpec) -> pd.DataFrame:
    """Median, bootstrap interval, min and max over seeds of each headline metric, per setting of the
    swept keys (the long table of :func:`headline_values` in, one row per metric × match × setting out)."""
    axes = [key_text(k) for k in sweep.axes if k != SEED_KEY]
    columns = ["metric", "path", "match", *axes, "n_seeds", "median", "ci_low", "ci_high", "min", "max"]
    if values.empty:
        return pd.DataFrame(columns=columns)
    rows = []
    for keys, group in values.groupby(["metric", "path", "match", *axes], sort=False, dropna=False):
        data = group["value"].to_numpy(dtype=float)
        median, low, high = median_interval(data)
        finite = data[~np.isnan(data)]
        rows.append({**dict(zip(["metric", "path", "match", *axes], keys)), "n_seeds": int(finite.size), "median": median,
                     "ci_low": low, "ci_high": high, "min": float(finite.min()) if finite.size else math.nan,
                     "max": float(finite.max()) if finite.size else math.nan})
    return pd.DataFrame(rows, columns=columns)


def check_findings(records: Sequence[TrialRecord], sweep: SweepSpec, headlines: Headlines) -> pd.DataFrame:
    """For each finding and setting of the swept keys: in how many seeds it holds, fails, is not
    measured, or could not be checked because the trial did not finish; and whether it holds in every seed."""
    axes = [k for k in sweep.axes if k != SEED_KEY]
    rows = []
    for finding in headlines.findings:
        groups: dict[tuple[str, ...], list[TrialRecord]] = {}
        for record in records:
            groups.setdefault(_setting(record.trial, axes), []).append(record)
        for setting, members in groups.items():
            results = [finding.check(r.metrics) if r.status == "finished" else "unfinished" for r in members]
            n_true = sum(r is True for r in results)
            n_false = sum(r is False for r in results)
            n_unknown = sum(r is None for r in results)
            n_unfinished = sum(r == "unfinished" for r in results)
            rows.append({"finding": finding.describe(), **{key_text(k): v for k, v in zip(axes, setting)},
                         "n_seeds": len(members), "holds": n_true, "fails": n_false, "not_measured": n_unknown,
                         "unfinished": n_unfinished, "every_seed": n_true == len(members)})
    return pd.DataFrame(rows)


def parquet_engine() -> str | None:
    """The installed pandas Parquet engine (``pyarrow`` or ``fastparquet``), or None."""
    import importlib.util

    for engine in ("pyarrow", "fastparquet"):
        if importlib.util.find_spec(engine) is not None:
            return engine
    return None


PARQUET_MISSING = "results.parquet not written: Parquet needs pyarrow; pip install 'physlens[parquet]' (results.csv holds the same table)"
"""What a sweep says when no Parquet engine is installed."""


def write_outputs(directory: str | Path, sweep: SweepSpec, *, backend: str = "local", seconds: float | None = None) -> pd.DataFrame:
    """Write ``results.csv``, ``results.parquet``, ``summary.csv``, ``findings.csv``, ``report.md`` and
    ``figures/`` of the sweep in ``directory`` from the trials found there; return the results table."""
    root = Path(directory)
    records = collect(root, sweep)
    table = sweep_table(records, sweep)
    atomic_write_text(root / "results.csv", table.to_csv(index=False))
    notes = []
    engine = parquet_engine()
    if engine is None:
        notes.append(PARQUET_MISSING)
        warnings.warn(PARQUET_MISSING, stacklevel=2)
    else:
        buffer = io.BytesIO()
        table.to_parquet(buffer, index=False, engine=engine)
        atomic_write_bytes(root / "results.parquet", buffer.getvalue())
    headlines = HEADLINES.get(sweep.kind, Headlines((), ()))
    values = headline_values(records, sweep, headlines)
    summary = summarize(values, sweep)
    findings = check_findings(records, sweep, headlines)
    atomic_write_text(root / "summary.csv", summary.to_csv(index=False))
    atomic_write_text(root / "findings.csv", findings.to_csv(index=False))
    from physlens.sweeps.report import write_report

    write_report(root, sweep, records, values, summary, findings, headlines, backend=backend, seconds=seconds, notes=notes)
    return table


__all__ = [
    "CONFIDENCE", "N_RESAMPLES", "PARQUET_MISSING", "TrialRecord", "check_findings", "collect", "flatten_metrics",
    "headline_values", "median_interval", "parquet_engine", "summarize", "sweep_table", "write_outputs",
]
