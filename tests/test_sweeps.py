"""Sweeps: reading and checking a sweep, running its trials on worker processes, failures, resuming
after a kill, and the aggregated table and report."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from physlens.cli import main
from physlens.studies import load_study, run_study
from physlens.sweeps import (
    Finding,
    Metric,
    SweepError,
    SweepSpecError,
    load_sweep,
    lookup,
    median_interval,
    parse_set_option,
    run_sweep,
)
from physlens.sweeps._toml import dump_toml
from physlens.sweeps.metrics import Headlines, parse_path

ROOT = Path(__file__).resolve().parents[1]

# A window-1 OLA trained for 60 steps: a few seconds per trial, most of it the report's figures.
TINY = """
[study]
name = "tiny"
kind = "oscillator"
seed = 1

[system]
omega0 = 2.0
gamma = 0.1
dtype = "float64"

[model]
preset = "OLA"
attn_window = 1
n_ctx = 4
dtype = "float64"

[training]
steps = 60
seq_len = 4
lr = 3e-2
loss_positions = "all"
checkpoint_every = 20

[evaluation]
rollout_steps = 10
n_trajectories = 4
context_len = 1
energy_range = [1.0, 5.0]
target_error = 1e-1
"""

# Two seeds of a model that works and of one whose context (n_ctx 2) is shorter than its training
# sequences: train() refuses the second, so half the trials fail while the others finish.
SWEEP = TINY + """
[sweep]
name = "tiny-sweep"
seeds = 2

[sweep.grid]
model.n_ctx = [4, 2]
"""


def _write(tmp_path: Path, text: str, name: str = "study.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def _science(table: pd.DataFrame) -> pd.DataFrame:
    """The table without wall-clock columns, which differ between any two runs."""
    timing = [c for c in table.columns if "time" in c or "seconds" in c]
    return table.drop(columns=timing).sort_values("trial").reset_index(drop=True)


# --- reading a sweep ---------------------------------------------------------------------------------------


def test_set_options_parse_as_toml_values():
    assert parse_set_option("model.n_layers=2,4") == (("model", "n_layers"), [2, 4])
    assert parse_set_option("training.lr=1e-3,3e-3") == (("training", "lr"), [1e-3, 3e-3])
    assert parse_set_option("model.preset=nLA,OLA") == (("model", "preset"), ["nLA", "OLA"])
    assert parse_set_option("model.causal=false") == (("model", "causal"), [False])
    assert parse_set_option("system.energy_range=[0.0, 1.0],[0.0, 2.0]")[1] == [[0.0, 1.0], [0.0, 2.0]]
    assert parse_set_option('system.omega0={range = [1.0, 4.0]},2.0')[1] == [{"range": [1.0, 4.0]}, 2.0]
    assert parse_set_option('model.preset="a,b",c')[1] == ["a,b", "c"]
    for bad in ("model.n_layers", "n_layers=2", "model.n_layers=2,,4", "model..x=1"):
        with pytest.raises(SweepSpecError):
            parse_set_option(bad)


@pytest.mark.parametrize(
    "option, message",
    [
        ("model.n_layers=two", r"--set model.n_layers: model.n_layers must be an integer, got the string 'two'"),
        ("training.lr=abc", r"training.lr must be a number, got the string 'abc'"),
        ("model.causal=False", r"model.causal must be a boolean .*, got the string 'False'"),
        ('model.causal="false"', r"model.causal must be a boolean"),
        ("model.n_layers=2.5", r"model.n_layers must be an integer, got 2.5"),
        ("model.n_layer=2", r"model.n_layer is not a key of this oscillator study .*'n_layers'"),
        ("evaluation.rollout_stepz=2", r"evaluation.rollout_stepz is not a key"),
        ('evaluation.energy_range=["a", "b"]', r"evaluation.energy_range holds numbers in the study file"),
        ("study.name=other", r"cannot vary study.name"),
        ("model=2", r"not a study key"),
    ],
)
def test_overrides_are_type_checked_against_the_study(tmp_path, option, message):
    with pytest.raises(SweepSpecError, match=message):
        load_sweep(_write(tmp_path, TINY), set_options=[option])


def test_overrides_never_change_a_setting_silently(tmp_path):
    sweep = load_sweep(_write(tmp_path, TINY), seeds=3, set_options=["training.lr=1,2", "model.d_model=4", "training.steps=5"])
    assert [t.spec["training"]["lr"] for t in sweep.trials[::3]] == [1.0, 2.0]
    assert all(isinstance(t.spec["training"]["lr"], float) for t in sweep.trials)  # the study declares a float
    assert all(t.spec["model"]["d_model"] == 4 and t.spec["training"]["steps"] == 5 for t in sweep.trials)
    assert [t.seed for t in sweep.trials] == [1, 2, 3, 1, 2, 3]  # seeds count from [study] seed
    assert sweep.trials[0].spec["system"] == tomllib.loads(TINY)["system"]  # untouched tables stay as written
    assert len({t.name for t in sweep.trials}) == 6


def test_every_study_kind_declares_its_keys_to_sweeps():
    """The sweep reads each kind's keys and types from its study module; a renamed key table shows here."""
    from physlens.studies import STUDY_KINDS
    from physlens.sweeps import study_schema

    expected = {
        "oscillator": {("model",): ("n_layers", int), ("training",): ("lr", float), ("system",): ("omega0", dict),
                       ("evaluation",): ("rollout_steps", int), ("analyses", "probes"): ("n_folds", int)},
        "fma": {("train",): ("epochs", int), ("data",): ("distribution", str), ("widths",): ("widths", list),
                ("scan",): ("n_random", int)},
        "invariants": {("siamese",): ("steps", int), ("bottleneck",): ("enabled", bool), ("distill",): ("unary", list)},
    }
    assert set(expected) == set(STUDY_KINDS)
    for kind, tables in expected.items():
        schema = study_schema(kind)
        assert schema[("study",)]["seed"] == frozenset({int})
        for table, (key, kind_type) in tables.items():
            assert kind_type in schema[table][key], (kind, table, key)
    assert study_schema("oscillator")[("model",)]["causal"] == frozenset({bool})
    assert study_schema("oscillator")[("training",)]["grad_clip"] == frozenset({float})  # float | None: TOML has no None


def test_sweep_table_in_a_study_file_grid_settings_and_command_line(tmp_path):
    text = TINY + """
[sweep]
seeds = [5, 9]
set = { "training.steps" = 7 }
settings = [{ model = { n_ctx = 4 }, "training.seq_len" = 4 }, { "model.n_ctx" = 8, "training.seq_len" = 8 }]

[sweep.grid]
training.lr = [1e-2, 2e-2]
"""
    path = _write(tmp_path, text)
    sweep = load_sweep(path)
    assert sweep.name == "tiny-sweep" and len(sweep.trials) == 2 * 2 * 2
    assert {(t.spec["model"]["n_ctx"], t.spec["training"]["seq_len"]) for t in sweep.trials} == {(4, 4), (8, 8)}
    assert {t.seed for t in sweep.trials} == {5, 9} and all(t.spec["training"]["steps"] == 7 for t in sweep.trials)
    # the command line replaces the file's entry for a key, and --seeds the file's seeds
    again = load_sweep(path, seeds=1, set_options=["training.lr=0.5"], name="other")
    assert again.name == "other" and len(again.trials) == 2 and {t.spec["training"]["lr"] for t in again.trials} == {0.5}
    # `physlens run` on the same file runs the base study once
    assert "sweep" not in load_study(path)


@pytest.mark.parametrize(
    "sweep_table, message",
    [
        ("grid = { \"model.n_ctx\" = [4, 4] }", "lists 4 more than once"),
        ("grid = { \"model.n_ctx\" = 4 }", "must be a non-empty list"),
        ("set = { \"model.n_ctx\" = 4 }\ngrid = { \"model.n_ctx\" = [4, 8] }", "appear in both set and grid"),
        ("seeds = 2\ngrid = { \"study.seed\" = [1, 2] }", "study.seed is swept and seeds is given"),
        ("seeds = 0", r"\[sweep\] seeds must be a positive integer"),
        ("seeds = [1, 1]", "lists a seed twice"),
        ("sedes = 2", r"\[sweep\] has unknown keys \['sedes'\]"),
        ("name = \"../x\"", "sweep name must be"),
        ("settings = []", "settings must be a non-empty list"),
    ],
)
def test_malformed_sweep_tables_are_refused(tmp_path, sweep_table, message):
    with pytest.raises(SweepSpecError, match=message):
        load_sweep(_write(tmp_path, TINY + "\n[sweep]\n" + sweep_table + "\n"))


def test_a_sweep_file_names_its_study_by_path(tmp_path):
    (tmp_path / "studies").mkdir()
    _write(tmp_path / "studies", TINY, "tiny.toml")
    sweeps = tmp_path / "sweeps"
    sweeps.mkdir()
    path = _write(sweeps, '[sweep]\nname = "by-path"\nstudy = "../studies/tiny.toml"\nseeds = 2\n', "s.toml")
    sweep = load_sweep(path)
    assert sweep.study_path == (tmp_path / "studies" / "tiny.toml").resolve() and len(sweep.trials) == 2
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_sweep(_write(sweeps, '[sweep]\nstudy = "nope.toml"\n', "bad.toml"))
    with pytest.raises(SweepSpecError, match="holds no other tables"):
        load_sweep(_write(sweeps, '[sweep]\nstudy = "../studies/tiny.toml"\n[model]\nn_ctx = 2\n', "bad2.toml"))


def test_shipped_sweeps_read_and_check_against_their_studies():
    files = sorted((ROOT / "probes" / "sweeps").glob("*.toml"))
    assert {f.name for f in files} >= {"oscillator_variable_layers.toml", "fma_widths.toml"}
    for file in files:
        sweep = load_sweep(file)
        assert sweep.study_path.is_file() and sweep.seeds and len(sweep.seeds) >= 4
        assert len({t.name for t in sweep.trials}) == len(sweep.trials) >= 8
    layers = load_sweep(ROOT / "probes" / "sweeps" / "oscillator_variable_layers.toml")
    assert {s[("model", "n_layers")] for s in layers.settings} == {2, 4} and layers.kind == "oscillator"
    # Every trial of a shipped oscillator sweep is a valid study: each depth pre-registers a probe site it has.
    from physlens.studies.oscillator import parse_study

    for file in files:
        sweep = load_sweep(file)
        if sweep.kind == "oscillator":
            for trial in sweep.trials[:: max(1, len(sweep.trials) // 4)] + sweep.trials[-1:]:
                parse_study(trial.spec)


def test_study_files_write_back_as_equal_toml():
    for path in sorted((ROOT / "probes").glob("*.toml")):
        spec = load_study(path)
        assert tomllib.loads(dump_toml(spec)) == spec
    tricky = {"a": {"x": 1e-5, "big": 1.5e300, "neg": -0.0, "inf": math.inf, "s": 'quote " and \\ and ω\n',
                    "dotted.key": [1, [2.5, "x"], {"range": [1.0, 4.0]}], "t": True},
              "b": {"nested": {"deeper": {"k": 1}}}}
    assert tomllib.loads(dump_toml(tricky)) == tricky


# --- metrics and findings --------------------------------------------------------------------------------


def test_key_paths_match_wildcards_indices_and_quoted_keys():
    metrics = {"a": {"b": 1, "c": [1.0, 2.0, 3.0], "flag": True, "name": "x"},
               "counts": {"1": 3, "2.5": 1, "3": 4}, "wide": {"3": {"counts": {"0": 2}}, "4": {"counts": {"1": 5}}}}
    assert parse_path('counts."2.5".x') == ("counts", "2.5", "x")
    assert lookup(metrics, "a.b") == {(): 1.0}
    assert lookup(metrics, "a.c.-1") == {(): 3.0} and lookup(metrics, "a.c.5") == {}
    assert lookup(metrics, "a.flag") == {(): 1.0} and lookup(metrics, "a.name") == {} and lookup(metrics, "a.c") == {}
    assert lookup(metrics, 'counts."2.5"') == {(): 1.0}
    assert lookup(metrics, "wide.*.counts.*") == {("3", "0"): 2.0, ("4", "1"): 5.0}
    assert lookup(metrics, "missing.path") == {}
    with pytest.raises(ValueError):
        parse_path("a..b")


def test_findings_check_one_trial():
    metrics = {"loss": 0.5, "base": 1.0, "ok": True, "slope": 0.95, "counts": {"1": 2}}
    assert Finding("beats", "loss", "<", "base").check(metrics) is True
    assert Finding("beats", "loss", ">", 0.7).check(metrics) is False
    assert Finding("ok", "ok", "==", True).check(metrics) is True
    assert Finding("near one", "slope", "in", (0.9, 1.1)).check(metrics) is True
    assert Finding("absent", "nope", ">", 0).check(metrics) is None
    assert Finding("count", "counts.3", ">", 0, absent=0.0).check(metrics) is False
    with pytest.raises(ValueError, match="must name one number"):
        Finding("x", "counts.*", ">", 0)
    with pytest.raises(ValueError, match="op must be one of"):
        Finding("x", "loss", "=>", 0)


def test_median_interval_is_the_percentile_bootstrap_of_the_median():
    rng = np.random.default_rng(3)
    data = rng.lognormal(size=9)
    median, low, high = median_interval(data)
    assert median == pytest.approx(np.median(data))
    # an independent percentile bootstrap written out with numpy
    resampled = np.median(data[rng.integers(0, data.size, size=(20000, data.size))], axis=1)
    reference = np.percentile(resampled, [2.5, 97.5])
    spread = data.max() - data.min()
    assert abs(low - reference[0]) < 0.05 * spread and abs(high - reference[1]) < 0.05 * spread
    assert low <= median <= high
    assert median_interval([2.0, 2.0, 2.0]) == (2.0, 2.0, 2.0)
    one = median_interval([4.0])
    assert one[0] == 4.0 and math.isnan(one[1]) and math.isnan(one[2])


# --- running sweeps --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def local_sweep(tmp_path_factory):
    """The SWEEP run uninterrupted on two local worker processes."""
    root = tmp_path_factory.mktemp("local")
    study = _write(root, SWEEP)
    result = run_sweep(load_sweep(study), output_root=root / "runs", workers=2, progress=False)
    return study, result


def test_local_sweep_runs_every_trial_as_an_ordinary_run(local_sweep):
    study, result = local_sweep
    table = result.table
    assert result.n_trials == 4 and result.n_finished == 2 and len(result.failures) == 2
    assert list(table.columns[:4]) == ["trial", "status", "seed", "model.n_ctx"]
    assert sorted(zip(table["model.n_ctx"], table["seed"], table["status"])) == [
        (2, 1, "failed"), (2, 2, "failed"), (4, 1, "finished"), (4, 2, "finished")]
    failed = table[table["status"] == "failed"]
    assert failed["error"].str.contains("seq_len must be <= the model's n_ctx").all()
    assert failed["headline.rollout_error"].isna().all()
    for name in table.loc[table["status"] == "finished", "trial"]:
        run = result.directory / "trials" / name
        assert {"report.md", "metrics.json", "study.toml", "trial.json", "model", "checkpoints"} <= {p.name for p in run.iterdir()}
        metrics = json.loads((run / "metrics.json").read_text())
        row = table[table["trial"] == name].iloc[0]
        assert row["headline.rollout_error"] == metrics["headline"]["rollout_error"]
        assert row["model_config.n_ctx"] == 4 and json.loads((run / "trial.json").read_text())["seed"] == row["seed"]
    for name in failed["trial"]:
        record = json.loads((result.directory / "failures" / f"{name}.json").read_text())
        assert "Traceback" in record["traceback"] and "seq_len" in record["error"]
    parquet = pd.read_parquet(result.directory / "results.parquet")
    csv = pd.read_csv(result.directory / "results.csv")
    assert list(parquet.columns) == list(table.columns) == list(csv.columns)
    assert np.allclose(parquet["final_train_loss"], table["final_train_loss"], equal_nan=True)
    report = result.report.read_text()
    assert "## Trials without results" in report and "seq_len must be" in report
    assert "model.n_ctx" in report and "final training loss" in report and "### Hold in every seed" in report


def test_a_trial_reruns_from_its_own_study_file(local_sweep, tmp_path):
    _, result = local_sweep
    name = result.table.loc[result.table["status"] == "finished", "trial"].iloc[0]
    trial = result.directory / "trials" / name
    again = run_study(trial / "study.toml", output_root=tmp_path, progress=False)
    # Timings live in timings.json, so the metrics of the same study are the same bytes.
    assert (trial / "metrics.json").read_bytes() == (again / "metrics.json").read_bytes()


def test_rerunning_skips_finished_trials_and_retries_failed_ones(local_sweep):
    study, result = local_sweep
    stamps = {p: p.stat().st_mtime_ns for p in (result.directory / "trials").glob("*/metrics.json")}
    again = run_sweep(load_sweep(study), output_root=result.directory.parent, workers=0, progress=False)
    assert again.n_skipped == 2 and again.n_finished == 2 and set(again.failures) == set(result.failures)
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    pd.testing.assert_frame_equal(_science(again.table), _science(result.table))


def test_a_sweep_killed_midway_resumes_to_the_uninterrupted_table(local_sweep, tmp_path):
    study, reference = local_sweep
    output = tmp_path / "runs"
    # --workers 0 runs the trials inside the sweep process, so the kill lands in a trial's training
    command = [sys.executable, "-m", "physlens.cli", "sweep", str(study), "--output", str(output), "--workers", "0", "--quiet"]
    process = subprocess.Popen(command, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    trials = output / "tiny-sweep" / "trials"
    deadline = time.monotonic() + 120
    try:
        # kill once one trial has finished and the next is training (its checkpoints are being written)
        while time.monotonic() < deadline and process.poll() is None:
            finished = [p for p in trials.glob("*") if p.is_dir() and not p.name.startswith(".")] if trials.is_dir() else []
            training = list(trials.glob(".partial-*/checkpoints/step_*")) if trials.is_dir() else []
            if finished and training:
                break
            time.sleep(0.02)
        assert process.poll() is None, "the sweep ended before it could be interrupted"
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    assert list(trials.glob(".partial-*")), "the kill should leave an interrupted trial behind"
    resumed = run_sweep(load_sweep(study), output_root=output, workers=0, progress=False)
    assert resumed.n_skipped >= 1 and not list(trials.glob(".partial-*"))
    pd.testing.assert_frame_equal(_science(resumed.table), _science(reference.table))


def test_a_worker_killed_midway_is_replaced_and_its_trial_run_again(local_sweep, tmp_path):
    import multiprocessing
    import threading

    study, reference = local_sweep
    output = tmp_path / "runs"
    trials = output / "tiny-sweep" / "trials"
    outcome: dict = {}
    thread = threading.Thread(target=lambda: outcome.update(
        result=run_sweep(load_sweep(study), output_root=output, workers=1, progress=False)))
    thread.start()
    killed = None
    deadline = time.monotonic() + 120
    while killed is None and thread.is_alive() and time.monotonic() < deadline:
        if trials.is_dir() and list(trials.glob(".partial-*/checkpoints/step_*")):  # a trial is training
            workers = multiprocessing.active_children()
            if workers:
                killed = workers[0].pid
                os.kill(killed, signal.SIGKILL)
        time.sleep(0.01)
    thread.join(timeout=180)
    assert killed is not None, "no trial was caught training"
    result = outcome["result"]
    assert result.n_finished == 2 and len(result.failures) == 2  # only the trials that fail by themselves
    pd.testing.assert_frame_equal(_science(result.table), _science(reference.table))


def test_two_sweeps_never_share_a_directory(local_sweep, tmp_path):
    from physlens.sweeps.runner import _locked

    study, result = local_sweep
    with _locked(result.directory):
        with pytest.raises(SweepError, match="is in use by pid"):
            run_sweep(load_sweep(study), output_root=result.directory.parent, workers=0, progress=False)
    changed = _write(tmp_path, SWEEP.replace("gamma = 0.1", "gamma = 0.2"))
    with pytest.raises(SweepError, match="of a different study"):
        run_sweep(load_sweep(changed), output_root=result.directory.parent, workers=0, progress=False)
    # the same keys on another study give other trial directories
    assert not {t.name for t in load_sweep(changed).trials} & {t.name for t in load_sweep(study).trials}
    (tmp_path / "runs" / "tiny-sweep").mkdir(parents=True)
    (tmp_path / "runs" / "tiny-sweep" / "notes.txt").write_text("mine")
    with pytest.raises(SweepError, match="is not a sweep directory"):
        run_sweep(load_sweep(study), output_root=tmp_path / "runs", workers=0, progress=False)


def test_the_sweep_report_marks_findings_that_hold_in_every_seed(local_sweep, tmp_path, monkeypatch):
    import shutil

    import physlens.sweeps.aggregate as aggregate
    from physlens.sweeps import write_outputs

    study, result = local_sweep
    headlines = Headlines(
        metrics=(Metric("training loss", "final_train_loss"), Metric("never there", "no.such.key")),
        findings=(Finding("the loss is finite", "final_train_loss", "<", 1e30),
                  Finding("the loss is below 1e-12", "final_train_loss", "<", 1e-12),
                  Finding("unmeasured", "no.such.key", ">", 0)),
    )
    monkeypatch.setitem(aggregate.HEADLINES, "oscillator", headlines)
    directory = tmp_path / "copy"
    shutil.copytree(result.directory, directory)
    table = write_outputs(directory, load_sweep(study))
    report = (directory / "report.md").read_text()
    every, rest = report.split("### Hold in every seed")[1].split("### Do not hold in every seed")
    not_every, unmeasured = rest.split("### Not measured")
    assert "the loss is finite" in every and "model.n_ctx=4: 2 of 2 seeds" in every
    assert "the loss is finite (final_train_loss < 1e+30) — model.n_ctx=2: holds in 0 of 2 seeds, fails in 0, 2 without results" in not_every
    assert "the loss is below 1e-12 (final_train_loss < 1e-12) — model.n_ctx=4: holds in 0 of 2 seeds, fails in 2" in not_every
    assert "unmeasured" in unmeasured
    assert "never there (`no.such.key`)" in report.split("## Declared but not in any trial")[1]
    summary = pd.read_csv(directory / "summary.csv")
    assert summary["model.n_ctx"].tolist() == [4] and summary["n_seeds"].tolist() == [2]
    losses = table.loc[table["status"] == "finished", "final_train_loss"]
    assert summary["median"].iloc[0] == pytest.approx(losses.median())
    assert summary["min"].iloc[0] == losses.min() and summary["max"].iloc[0] == losses.max()
    assert list((directory / "figures").glob("*.png"))


def test_cli_sweep_exit_codes_and_errors(tmp_path, capsys):
    study = _write(tmp_path, TINY.replace("steps = 60", "steps = 3").replace("checkpoint_every = 20", "checkpoint_every = 3"))
    out = str(tmp_path / "runs")
    assert main(["sweep", str(study), "--seeds", "2", "--set", "training.lr=1e-2,2e-2", "--output", out, "--dry-run"]) == 0
    assert "4 trials" in capsys.readouterr().out
    assert main(["sweep", str(study), "--set", "model.n_layers=two", "--output", out]) == 2
    assert "model.n_layers must be an integer, got the string 'two'" in capsys.readouterr().err
    assert main(["sweep", str(study), "--address", "auto", "--output", out]) == 2
    assert "address is for the ray backend" in capsys.readouterr().err
    assert main(["sweep", str(study), "--set", "model.n_ctx=2", "--workers", "0", "--quiet", "--output", out]) == 1
    captured = capsys.readouterr()
    assert "0 of 1 trials finished" in captured.out and "seq_len must be" in captured.err
    assert main(["sweep", str(study), "--set", "training.lr=1e-2", "--workers", "0", "--quiet", "--output", out]) == 0


def test_ray_missing_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)
    study = _write(tmp_path, TINY)
    with pytest.raises(SweepError, match=r"pip install 'physlens\[ray\]'"):
        run_sweep(load_sweep(study), output_root=tmp_path / "runs", backend="ray", progress=False)
    assert not (tmp_path / "runs").exists()


def test_mode_frequencies_count_absent_modes_as_zero(tmp_path):
    """Counts become fractions per trial, a mode missing from a trial's counts is 0 there, and the
    report's median is the median of those fractions (trials written by hand, no study run)."""
    from physlens.sweeps import headline_values, write_outputs
    from physlens.sweeps.aggregate import collect
    from physlens.sweeps.runner import _trial_files

    study = _write(tmp_path, (ROOT / "probes" / "fma.toml").read_text())
    sweep = load_sweep(study, seeds=3)
    counts = [{"1": 6, "3": 2}, {"1": 4, "2": 4}, {"3": 8}]
    for trial, count in zip(sweep.trials, counts):
        run = tmp_path / "runs" / sweep.name / "trials" / trial.name
        run.mkdir(parents=True)
        for name, text in _trial_files(sweep, trial).items():
            (run / name).write_text(text)
        (run / "metrics.json").write_text(json.dumps({"width2": {"counts": {"function": count}},
                                                      "wider": {"3": {"counts": count}, "4": {"counts": {"0": 1}}}}))
    directory = tmp_path / "runs" / sweep.name
    headlines = Headlines(metrics=(Metric("modes", "width2.counts.function.*", normalize=True),
                                   Metric("kinks", "wider.*.counts.*", normalize=True, keys=("width", "kinks"))), findings=())
    values = headline_values(collect(directory, sweep), sweep, headlines)
    modes = values[values["metric"] == "modes"].pivot(index="seed", columns="match", values="value")
    expected = pd.DataFrame(counts).fillna(0).astype(float)
    expected = expected.div(expected.sum(axis=1), axis=0)[["1", "2", "3"]]
    np.testing.assert_allclose(modes[["1", "2", "3"]].to_numpy(), expected.to_numpy())
    kinks = values[values["metric"] == "kinks"]
    assert set(kinks["match"]) == {"3 / 1", "3 / 2", "3 / 3", "4 / 0"}
    assert (kinks.loc[kinks["match"] == "4 / 0", "value"] == 1.0).all()
    table = write_outputs(directory, sweep)
    assert table["status"].tolist() == ["finished"] * 3 and "wider.3.counts.1" in table.columns
    report = (directory / "report.md").read_text()  # the fma kind's own headlines, with their matched keys named
    assert "| mode | seeds | median |" in report and "| width / kinks | seeds | median |" in report


def test_trials_run_with_one_torch_thread_whatever_the_study_says(tmp_path, monkeypatch):
    import torch

    import physlens.studies.oscillator as oscillator

    seen = []
    real_train = oscillator.train

    def recording_train(*args, **kwargs):
        seen.append(torch.get_num_threads())
        return real_train(*args, **kwargs)

    monkeypatch.setattr(oscillator, "train", recording_train)
    text = TINY.replace("seed = 1", "seed = 1\nthreads = 2").replace("steps = 60", "steps = 2").replace("checkpoint_every = 20", "checkpoint_every = 2")
    before = torch.get_num_threads()
    run_sweep(load_sweep(_write(tmp_path, text), seeds=2), output_root=tmp_path / "runs", workers=0, progress=False)
    assert seen == [1, 1] and torch.get_num_threads() == before


# --- issue 22: workers die with their driver; a rerun never calls a finished trial failed ----------------------


def _holder_pid(lock: Path) -> int | None:
    try:
        text = lock.read_text()
    except OSError:
        return None
    return int(text.split()[1]) if text.startswith("pid ") else None


def _gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")  # exited, waiting to be reaped
    except OSError:
        return True


def test_killing_the_sweep_driver_ends_its_workers(tmp_path):
    """Before: kill -9 of the driver orphaned its workers (their parent is the fork server, which outlived the
    driver): they finished trials outside the sweep's lock while a rerun held it, and never exited."""
    long = TINY.replace("steps = 60", "steps = 200000").replace("checkpoint_every = 20", "checkpoint_every = 10")
    study = _write(tmp_path, long + '\n[sweep]\nname = "long"\nseeds = 2\n')
    output = tmp_path / "runs"
    command = [sys.executable, "-m", "physlens.cli", "sweep", str(study), "--output", str(output), "--workers", "2", "--quiet"]
    process = subprocess.Popen(command, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               env={**os.environ, "OMP_NUM_THREADS": "1"})
    trials = output / "long" / "trials"
    workers: set[int] = set()
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and process.poll() is None and len(workers) < 2:
            workers = {pid for lock in trials.glob(".partial-*/.lock") if (pid := _holder_pid(lock)) and pid != process.pid}
            time.sleep(0.05)
        assert len(workers) == 2, "the workers never started their trials"
        os.kill(process.pid, signal.SIGKILL)  # the driver alone, as `kill -9 <pid>` does
        process.wait(timeout=30)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not all(_gone(pid) for pid in workers):
            time.sleep(0.05)
        survivors = [pid for pid in workers if not _gone(pid)]
    finally:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        process.wait(timeout=30)
    assert survivors == [], f"workers {survivors} outlived their driver"


def test_a_trial_finished_meanwhile_is_not_called_failed(local_sweep, tmp_path, monkeypatch):
    """Before: a rerun whose trial had been finished meanwhile (by an orphaned worker) exited 1 calling it failed
    with FileExistsError."""
    import shutil

    import physlens.sweeps.runner as runner

    study, reference = local_sweep
    output = tmp_path / "runs"
    shutil.copytree(reference.directory, output / reference.directory.name)
    finished = reference.table.loc[reference.table["status"] == "finished", "trial"].iloc[0]
    trials = output / reference.directory.name / "trials"
    shutil.rmtree(trials / finished)
    real = runner.execute_trial

    def finished_by_another(task):
        if task.name != finished:
            return real(task)
        shutil.copytree(reference.directory / "trials" / finished, trials / finished)
        return runner.TrialOutcome(task.name, False, 0.0, "test", error=f"FileExistsError: {task.directory!r} already exists")

    monkeypatch.setattr(runner, "execute_trial", finished_by_another)
    result = run_sweep(load_sweep(study), output_root=output, workers=0, progress=False)
    assert finished not in result.failures and result.n_finished == 2


@pytest.mark.parametrize(
    "sweep_table, message",
    [
        ("[sweep.grid]\ntraining.steps = [60, -1]", r"\[training\] with training.steps = -1 is invalid: steps must be"),
        ("[sweep.grid]\ntraining.lr = [1e-2, nan]", "training.lr = nan can never be a setting"),
        ("seeds = 1000000000", "seeds must be at most 10000"),
        ("seeds = 100\n[sweep.grid]\ntraining.lr = [" + ", ".join(f"{i}e-3" for i in range(1, 201)) + "]",
         "make 20000 trials, more than 10000"),
    ],
    ids=["steps-negative", "lr-nan", "seeds-1e9", "too-many-trials"],
)
def test_sweep_values_no_trial_could_run_are_refused_up_front(tmp_path, capsys, sweep_table, message):
    """Before: steps = -1 and lr = nan failed trial by trial (the -1 trial named "steps=1"), and seeds = 1e9 gave no
    answer after 10 minutes."""
    import re as regex

    study = _write(tmp_path, TINY + "\n[sweep]\n" + sweep_table + "\n")
    started = time.monotonic()
    code = main(["sweep", str(study), "--output", str(tmp_path / "runs"), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and regex.search(message, err), err
    assert time.monotonic() - started < 30 and not (tmp_path / "runs").exists()


def test_a_negative_swept_number_keeps_its_sign_in_the_trial_name(tmp_path):
    sweep = load_sweep(_write(tmp_path, TINY + "\n[sweep]\n[sweep.grid]\nevaluation.target_error = [0.1, 0.2]\n"
                                              "system.gamma = [0.1, -0.0]\n"))
    assert any("gamma=-0.0" in trial.name for trial in sweep.trials), [t.name for t in sweep.trials]


def test_fifos_in_a_sweep_directory_hang_nothing(tmp_path):
    """Before: a FIFO as the sweep's .lock, sweep.json or a trial's trial.json blocked `physlens sweep` forever."""
    study = _write(tmp_path, TINY + '\n[sweep]\nname = "f"\nseeds = 1\n')
    sweep_dir = tmp_path / "runs" / "f"
    sweep_dir.mkdir(parents=True)
    os.mkfifo(sweep_dir / ".lock")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [os.environ.get("PYTHONPATH"), str(ROOT / "src")]))}
    command = [sys.executable, "-m", "physlens.cli", "sweep", str(study), "--output", str(tmp_path / "runs"), "--workers", "0",
               "--quiet"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120, env=env, stdin=subprocess.DEVNULL)
    assert result.returncode == 2 and "a FIFO, not a regular file" in result.stderr, result.stderr
    (sweep_dir / ".lock").unlink()
    os.mkfifo(sweep_dir / "sweep.json")
    result = subprocess.run(command, capture_output=True, text=True, timeout=120, env=env, stdin=subprocess.DEVNULL)
    assert result.returncode == 2 and "is not a sweep directory" in result.stderr, result.stderr


def test_collecting_a_sweep_waits_on_no_fifo(local_sweep, tmp_path):
    """Before: a FIFO as a finished trial's metrics.json or run_time.txt blocked the sweep's table forever."""
    import shutil

    from physlens.studies.report import read_metrics
    from physlens.sweeps.aggregate import collect

    study, reference = local_sweep
    copy = tmp_path / "copy"
    shutil.copytree(reference.directory, copy)
    finished = sorted(reference.table.loc[reference.table["status"] == "finished", "trial"])
    failed = sorted(reference.table.loc[reference.table["status"] == "failed", "trial"])
    (copy / "trials" / finished[0] / "run_time.txt").unlink()
    os.mkfifo(copy / "trials" / finished[0] / "run_time.txt")
    (copy / "failures" / f"{failed[0]}.json").write_text("[" * 100_000)
    records = {record.trial.name: record for record in collect(copy, load_sweep(study))}
    assert records[finished[0]].status == "finished" and records[finished[0]].run_time_s is None
    assert records[finished[1]].run_time_s is not None and records[failed[0]].error == "(its failure record cannot be read)"
    (copy / "trials" / finished[0] / "metrics.json").unlink()
    os.mkfifo(copy / "trials" / finished[0] / "metrics.json")
    with pytest.raises(OSError, match="is a FIFO, not a regular file"):
        read_metrics(copy / "trials" / finished[0] / "metrics.json")
