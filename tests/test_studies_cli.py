"""Study files and the ``physlens run`` command: reports, strict parsing, never losing earlier runs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from physlens.cli import main
from physlens.studies import StudySpecError, load_study, run_study

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
steps = 600
seq_len = 4
lr = 1e-2
loss_positions = "all"
schedule = "cosine"
checkpoint_every = 300

[evaluation]
rollout_steps = 50
n_trajectories = 8
context_len = 1
energy_range = [1.0, 5.0]
target_error = 1e-2
target_error_ood = 1e-2
"""


def _write(tmp_path: Path, text: str, name: str = "study.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_study_writes_report_metrics_figures_and_checkpoints(tmp_path):
    out = run_study(_write(tmp_path, TINY), output_root=tmp_path / "runs", progress=False)
    assert out == tmp_path / "runs" / "tiny"
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["verdict"]["works"] is True
    assert [c["requirement"] for c in metrics["verdict"]["checks"]] == [
        "median error at step 50 ≤ 0.01", "median error at step 50 ≤ 0.01 (out of distribution)"]
    assert metrics["task_out_of_distribution"]["predictors"]["model"]["rollout_median"]["50"]["estimate"] < 1e-2
    assert metrics["linear_map"]["max_abs_map_error"] < 1e-4
    report = (out / "report.md").read_text()
    assert report.index("## Does the model do its task?") < report.index("## Setup")
    assert "**Yes.**" in report and "exact propagator" in report
    assert {p.name for p in (out / "figures").iterdir()} == {
        "loss_curve.png", "rollout_phase_space.png", "rollout_error_in_distribution.png", "rollout_error_out_of_distribution.png"}
    assert (out / "model" / "model.safetensors").is_file()
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step_0000300", "step_0000600"]


def test_a_second_run_never_replaces_the_first(tmp_path):
    study = _write(tmp_path, TINY.replace("steps = 600", "steps = 20"))
    first = run_study(study, output_root=tmp_path / "runs", progress=False)
    stamp = (first / "metrics.json").read_text()
    second = run_study(study, output_root=tmp_path / "runs", progress=False)
    assert second.name == "tiny-1" and (first / "metrics.json").read_text() == stamp
    third = run_study(study, output_root=tmp_path / "runs", overwrite=True, progress=False)
    assert third == first


def test_an_interrupted_study_leaves_nothing_that_looks_like_a_result(tmp_path, monkeypatch):
    import physlens.studies.oscillator as oscillator

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(oscillator, "evaluate_task", killed)
    with pytest.raises(KeyboardInterrupt):
        run_study(_write(tmp_path, TINY.replace("steps = 600", "steps = 20")), output_root=tmp_path / "runs", progress=False)
    assert not (tmp_path / "runs" / "tiny").exists()
    assert all(p.name.startswith(".partial-") for p in (tmp_path / "runs").iterdir())


@pytest.mark.parametrize(
    "mutation, message",
    [
        (lambda s: s.replace('kind = "oscillator"', 'kind = "nope"'), "kind must be one of"),
        (lambda s: s.replace("[study]\n", ""), r"unknown sections|needs a \[study\]"),
        (lambda s: s.replace('name = "tiny"', 'name = "../x"'), "name must be"),
        (lambda s: s.replace("steps = 600", "stepz = 300"), r"\[training\] has unknown keys \['stepz'\]"),
        (lambda s: s.replace("steps = 600", 'steps = "many"'), r"\[training\] steps must be int"),
        (lambda s: s.replace("lr = 1e-2", 'lr = "1e-2"'), r"\[training\] lr must be float or int"),
        (lambda s: s.replace('loss_positions = "all"', 'loss_positions = "all"\nallow_leakage = "false"'),
         r"\[training\] allow_leakage must be bool"),
        (lambda s: s.replace("attn_window = 1", 'attn_window = 1\ncausal = "false"'), r"\[model\] causal must be bool"),
        (lambda s: s.replace("rollout_steps = 50", "rollout_steps = 0"), r"\[evaluation\] rollout_steps must be >= 1"),
        (lambda s: s.replace("target_error = 1e-2", "target_error = -1.0"), r"\[evaluation\] target_error must be > 0"),
        (lambda s: s.replace("target_error = 1e-2", "target_error = -1"), r"\[evaluation\] target_error must be > 0"),
        (lambda s: s.replace("steps = 600", "steps = 1e12"), r"\[training\] steps must be int, got 1000000000000.0"),
        (lambda s: s.replace("lr = 1e-2", "lr = nan"), r"\[training\] lr must be a finite number"),
        (lambda s: s.replace("lr = 1e-2", "lr = 1e-2\nbetas = [0.9, \"0.99\"]"), r"\[training\] betas must be a list of finite"),
        (lambda s: s.replace("lr = 1e-2", "lr = 1e-2\nbetas = [0.9]"), r"\[training\] betas must be a list of 2 items"),
        (lambda s: s.replace("energy_range = [1.0, 5.0]", "energy_range = [1.0, 5.0]\nrollout_steps = 3"),
         "Cannot overwrite a value|not valid TOML"),
        (lambda s: s.replace("energy_range = [1.0, 5.0]\n", ""), r"target_error_ood needs energy_range"),
        (lambda s: s.replace("target_error = 1e-2", 'must_beat = ["linear"]'), r"must_beat names unknown references \['linear'\]"),
        (lambda s: s.replace('loss_positions = "all"', "loss_positions = 4"), "loss_positions=4 starts beyond the sequence"),
        (lambda s: s.replace('dtype = "float64"\n\n[training]', 'dtype = "float32"\n\n[training]'), "differs from \\[system\\] dtype"),
        (lambda s: s.replace("gamma = 0.1", "gamma = 3.0"), "underdamped"),
        (lambda s: s.replace('preset = "OLA"', 'preset = "XL"'), "preset must be one of"),
        (lambda s: s.replace("[evaluation]", "[evalution]"), "unknown sections"),
        (lambda s: s.replace('loss_positions = "all"', 'loss_positions = "all"\nsteps2 = 1'), "unknown keys"),
        (lambda s: s + "\n[model]\n", "not valid TOML"),
    ],
)
def test_malformed_study_files_are_refused(tmp_path, mutation, message):
    study = _write(tmp_path, mutation(TINY))
    with pytest.raises(StudySpecError, match=message) as caught:
        run_study(study, output_root=tmp_path / "runs", progress=False)
    assert str(study) in str(caught.value)  # the message names the file
    assert not (tmp_path / "runs").exists()  # refused before anything was claimed or trained


def test_cli_runs_a_study_and_reports_errors(tmp_path, capsys):
    study = _write(tmp_path, TINY.replace("steps = 600", "steps = 20"))
    assert main(["run", str(study), "--output", str(tmp_path / "runs"), "--quiet"]) == 0
    assert "report written to" in capsys.readouterr().out
    assert main(["run", str(tmp_path / "missing.toml"), "--output", str(tmp_path / "runs")]) == 2
    assert "does not exist" in capsys.readouterr().err
    bad = _write(tmp_path, TINY.replace('kind = "oscillator"', 'kind = "x"'), "bad.toml")
    assert main(["run", str(bad), "--output", str(tmp_path / "runs")]) == 2


def test_shipped_study_files_parse():
    import tomllib

    from physlens.studies.oscillator import parse_study

    root = Path(__file__).resolve().parents[1] / "probes"
    files = sorted(root.glob("*.toml"))
    assert files, "probes/ must hold the runnable studies"
    for file in files:
        spec = load_study(file)
        assert spec["study"]["name"]
        if spec["study"]["kind"] == "oscillator":  # every option checked, as before training; GPU recipes on the CPU
            parse_study(tomllib.loads(file.read_text().replace('"cuda"', '"cpu"')))


def _blas_thread_counts():
    from threadpoolctl import threadpool_info

    return [pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas"]


def test_thread_count_is_applied_for_the_run_and_restored(tmp_path, monkeypatch):
    import torch
    from threadpoolctl import threadpool_limits

    import physlens.studies.oscillator as oscillator

    seen, seen_blas = [], []
    real_train = oscillator.train

    def recording_train(*args, **kwargs):
        seen.append(torch.get_num_threads())
        seen_blas.append(_blas_thread_counts())
        return real_train(*args, **kwargs)

    monkeypatch.setattr(oscillator, "train", recording_train)
    before = torch.get_num_threads()
    study = _write(tmp_path, TINY.replace("steps = 600", "steps = 5").replace("seed = 1", "seed = 1\nthreads = 1"))
    with threadpool_limits(2, user_api="blas"):  # numpy's BLAS as a multi-core machine would have it
        blas_before = _blas_thread_counts()
        run_study(study, output_root=tmp_path / "runs", progress=False)
        blas_after = _blas_thread_counts()
    assert seen == [1] and torch.get_num_threads() == before
    assert seen_blas[0] and set(seen_blas[0]) == {1}  # numpy's BLAS ran on one thread too
    assert blas_after == blas_before
    with pytest.raises(StudySpecError, match="threads must be >= 0"):
        run_study(_write(tmp_path, TINY.replace("seed = 1", "seed = 1\nthreads = -2"), "bad.toml"), output_root=tmp_path / "runs")
