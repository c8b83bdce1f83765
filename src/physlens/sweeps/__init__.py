"""Sweeps: one study run over seeds and settings, on local worker processes or a Ray cluster.

``physlens sweep probes/x.toml --seeds 8 --set model.n_layers=2,4`` runs every combination as an
ordinary run (its own directory, report and checkpoints), then writes one table of every trial's
metrics and a report of each headline metric against the swept keys, over seeds.
"""

from physlens.sweeps.aggregate import (
    CONFIDENCE,
    TrialRecord,
    check_findings,
    collect,
    flatten_metrics,
    headline_values,
    median_interval,
    parquet_engine,
    summarize,
    sweep_table,
    write_outputs,
)
from physlens.sweeps.metrics import HEADLINES, Finding, Headlines, Metric, lookup, parse_path
from physlens.sweeps.runner import BACKENDS, SweepError, SweepResult, TrialOutcome, TrialTask, execute_trial, run_sweep
from physlens.sweeps.spec import (
    SweepSpec,
    SweepSpecError,
    Trial,
    apply_overrides,
    check_value,
    load_sweep,
    parse_set_option,
    spec_hash,
    study_schema,
)

__all__ = [
    "BACKENDS", "CONFIDENCE", "HEADLINES", "Finding", "Headlines", "Metric", "SweepError", "SweepResult", "SweepSpec",
    "SweepSpecError", "Trial", "TrialOutcome", "TrialRecord", "TrialTask", "apply_overrides", "check_findings",
    "check_value", "collect", "execute_trial", "flatten_metrics", "headline_values", "load_sweep", "lookup",
    "median_interval", "parquet_engine", "parse_path", "parse_set_option", "run_sweep", "spec_hash", "study_schema",
    "summarize", "sweep_table", "write_outputs",
]
