"""The sweep report: what was swept, which trials failed, the findings seed by seed, and each
headline metric against the swept keys with its median and bootstrap interval over seeds."""

from __future__ import annotations

import io
import json
import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from physlens._io import atomic_write_bytes, atomic_write_text
from physlens.studies.report import format_number
from physlens.sweeps.aggregate import CONFIDENCE, TrialRecord
from physlens.sweeps.metrics import Headlines
from physlens.sweeps.spec import SEED_KEY, SweepSpec, key_text

MAX_SERIES = 12
"""A metric with more series than this (matches × settings of the other keys) gets a table but no figure."""


def _values_text(values: Sequence[Any]) -> str:
    return ", ".join(json.dumps(v) if not isinstance(v, (int, float)) or isinstance(v, bool) else format(v, "g") for v in values)


def _seeds_text(seeds: Sequence[int]) -> str:
    if len(seeds) > 2 and list(seeds) == list(range(seeds[0], seeds[0] + len(seeds))):
        return f"{seeds[0]}–{seeds[-1]}"
    return ", ".join(str(s) for s in seeds)


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    def cell(value: Any) -> str:
        if isinstance(value, (int, float, np.floating, np.integer)) and not isinstance(value, bool):
            return format_number(float(value) if isinstance(value, (float, np.floating)) else int(value))
        return str(value).replace("|", "\\|")

    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return lines + [""]


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")[:60] or "metric"


def _positions(frame: pd.DataFrame, axes: list[str]) -> pd.DataFrame:
    """Add ``_x`` (the first swept key, or else the first key the path matched) and ``_series``
    (the rest of the matched keys and the other swept keys) to a summary or values frame."""
    frame = frame.copy()
    parts = frame["match"].astype(str).str.split(" / ")
    if axes:
        frame["_x"] = frame[axes[0]].astype(str)
        rest = [frame["match"].astype(str).where(frame["match"] != "", None)] + [axis + "=" + frame[axis].astype(str) for axis in axes[1:]]
    else:
        frame["_x"] = parts.str[0]
        rest = [parts.str[1:].str.join(" / ").where(parts.str.len() > 1, None)]
    frame["_series"] = pd.concat(rest, axis=1).apply(lambda row: ", ".join(v for v in row if isinstance(v, str) and v), axis=1)
    return frame


def _figure(summary: pd.DataFrame, values: pd.DataFrame, axes: list[str], title: str, keys: Sequence[str] = ()) -> Any:
    """Per-seed values (dots) and the median with its interval (bars) against the first swept key
    (or, with no swept key but the seed, against the first key the metric's path matched)."""
    import matplotlib.pyplot as plt

    summary, values = _positions(summary, axes), _positions(values, axes)
    x_labels = list(dict.fromkeys(summary["_x"]))
    series = list(dict.fromkeys(summary["_series"]))
    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    for index, name in enumerate(series):
        group = summary[summary["_series"] == name]
        offset = 0.06 * (index - 0.5 * (len(series) - 1))
        xs = np.array([x_labels.index(x) for x in group["_x"]], dtype=float) + offset
        low = (group["median"] - group["ci_low"]).clip(lower=0).fillna(0)
        high = (group["ci_high"] - group["median"]).clip(lower=0).fillna(0)
        line = ax.errorbar(xs, group["median"], yerr=[low, high], marker="o", capsize=3, label=name or None)
        points = values[values["_series"] == name]
        ax.scatter(np.array([x_labels.index(x) for x in points["_x"]], dtype=float) + offset, points["value"], s=10, alpha=0.4,
                   color=line[0].get_color(), linewidths=0)
    finite = values["value"].to_numpy(dtype=float)
    finite = finite[np.isfinite(finite)]
    if finite.size and finite.min() > 0 and finite.max() / finite.min() > 100:
        ax.set_yscale("log")
    ax.set_xticks(range(len(x_labels)), x_labels)
    ax.set_xlabel(axes[0] if axes else (keys[0] if keys else "matched key"))
    ax.set_ylabel("median and interval (dots: seeds)", fontsize=8)
    ax.set_title(title, fontsize=9)
    if any(series):
        names = [*(keys if axes else keys[1:]), *axes[1:]]
        ax.legend(fontsize=7, title=" / ".join(names) or None, title_fontsize=7)
    fig.tight_layout()
    return fig


def write_report(
    directory: Path,
    sweep: SweepSpec,
    records: Sequence[TrialRecord],
    values: pd.DataFrame,
    summary: pd.DataFrame,
    findings: pd.DataFrame,
    headlines: Headlines,
    *,
    backend: str,
    seconds: float | None,
    notes: Sequence[str] = (),
) -> Path:
    """Write ``report.md`` and ``figures/*.png`` of a sweep into ``directory`` and return the report's path."""
    import matplotlib.pyplot as plt

    axes = [key_text(k) for k in sweep.axes if k != SEED_KEY]
    status = pd.Series([r.status for r in records])
    n_finished, n_failed = int((status == "finished").sum()), int((status == "failed").sum())
    n_missing = len(records) - n_finished - n_failed
    lines = [f"# Sweep {sweep.name}", ""]
    if sweep.description:
        lines += [sweep.description, ""]
    what = [f"study: `{sweep.study_path}` (kind `{sweep.kind}`, study name `{sweep.base['study']['name']}`)"]
    for key, options in sweep.grid.items():
        what.append(f"grid: `{key_text(key)}` ∈ {{{_values_text(options)}}}")
    for index, setting in enumerate(sweep.settings):
        what.append(f"setting {index + 1}: " + ", ".join(f"`{key_text(k)}` = {_values_text([v])}" for k, v in setting.items()))
    if sweep.seeds is not None:
        what.append(f"seeds ([study] seed): {_seeds_text(sweep.seeds)}")
    for key, value in sweep.fixed.items():
        what.append(f"every trial: `{key_text(key)}` = {_values_text([value])}")
    what.append(f"{len(records)} trials: {n_finished} finished, {n_failed} failed, {n_missing} not run or interrupted")
    if seconds is not None:
        what.append(f"this run of the sweep: backend `{backend}`, {seconds:.1f} s wall time")
    lines += [f"- {item}" for item in what] + [""]
    lines += [f"> {note}" for note in notes] + ([""] if notes else [])

    if n_failed or n_missing:
        lines += ["## Trials without results", ""]
        rows = [[r.trial.name, r.status, r.error or "—"] for r in records if r.status != "finished"]
        lines += _table(["trial", "status", "error"], rows)
        lines += ["Each failure's traceback is in `failures/<trial>.json`; run the sweep again to retry these trials.", ""]

    lines += ["## Findings, seed by seed", ""]
    if findings.empty:
        lines += ["No findings are declared for this study kind.", ""]
    else:
        def setting_text(row: pd.Series) -> str:
            return ", ".join(f"{a}={row[a]}" for a in axes) or "all trials"

        checked = (findings["holds"] + findings["fails"]).groupby(findings["finding"]).transform("sum") > 0
        every = findings[checked & findings["every_seed"]]
        measured = findings[checked & ~findings["every_seed"]]
        unmeasured = findings[~checked]
        lines += ["### Hold in every seed", ""]
        lines += [f"- {row['finding']} — {setting_text(row)}: {row['holds']} of {row['n_seeds']} seeds" for _, row in every.iterrows()] or ["- none"]
        lines += ["", "### Do not hold in every seed", ""]
        lines += [
            f"- {row['finding']} — {setting_text(row)}: holds in {row['holds']} of {row['n_seeds']} seeds, fails in {row['fails']}"
            + (f", not measured in {row['not_measured']}" if row["not_measured"] else "")
            + (f", {row['unfinished']} without results" if row["unfinished"] else "")
            for _, row in measured.iterrows()
        ] or ["- none"]
        if not unmeasured.empty:
            lines += ["", "### Not measured by these trials", ""]
            lines += sorted({f"- {row['finding']}" for _, row in unmeasured.iterrows()})
        lines += [""]

    lines += ["## Headline metrics", ""]
    lines += [
        f"Median over seeds with a {int(CONFIDENCE * 100)} % percentile-bootstrap interval of the median; with few seeds "
        "the interval is coarse (with 2 seeds it spans them). Dots in the figures are single seeds.", "",
    ]
    figures_dir = directory / "figures"
    figures_dir.mkdir(exist_ok=True)
    for old in figures_dir.glob("*.png"):
        old.unlink()
    absent = []
    for index, metric in enumerate(headlines.metrics):
        part = summary[(summary["metric"] == metric.label) & (summary["path"] == metric.path)]
        if part.empty:
            absent.append(metric)
            continue
        lines += [f"### {metric.label}", "", f"`{metric.path}`" + (" (as fractions of the networks)" if metric.normalize else ""), ""]
        has_match = (part["match"] != "").any()
        match_header = " / ".join(metric.keys) or "matched key"
        header = [*axes, *([match_header] if has_match else []), "seeds", "median", f"{int(CONFIDENCE * 100)} % interval", "min", "max"]
        rows = []
        for _, row in part.iterrows():
            interval = "—" if math.isnan(row["ci_low"]) else f"[{format_number(row['ci_low'])}, {format_number(row['ci_high'])}]"
            rows.append([*(row[a] for a in axes), *([row["match"]] if has_match else []), row["n_seeds"], row["median"], interval,
                         row["min"], row["max"]])
        lines += _table(header, rows)
        part_values = values[(values["metric"] == metric.label) & (values["path"] == metric.path)]
        n_series = _positions(part, axes)["_series"].nunique()
        if n_series <= MAX_SERIES and (axes or has_match):
            fig = _figure(part, part_values, axes, metric.label, metric.keys)
            name = f"{index:02d}_{_slug(metric.label)}"
            buffer = io.BytesIO()
            fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
            plt.close(fig)
            atomic_write_bytes(figures_dir / f"{name}.png", buffer.getvalue())
            lines += [f"![{metric.label}](figures/{name}.png)", ""]
    if absent:
        lines += ["## Declared but not in any trial's metrics.json", ""]
        lines += [f"- {m.label} (`{m.path}`)" for m in absent]
        lines += ["", "A study that does not run that analysis has no such number; if it should, the key path in "
                  "`physlens.sweeps.HEADLINES` needs updating.", ""]
    lines += [
        "## Files", "",
        "- `results.csv` / `results.parquet`: one row per trial — the swept keys, the seed, the status, and every number "
        "of the trial's `metrics.json` under its key path",
        "- `summary.csv`: the tables above; `findings.csv`: the findings per setting",
        "- `trials/<trial>/`: each trial's own run (report, metrics, figures, checkpoints) and its complete `study.toml`",
        "",
    ]
    path = directory / "report.md"
    atomic_write_text(path, "\n".join(lines).rstrip() + "\n")
    return path


__all__ = ["MAX_SERIES", "write_report"]
