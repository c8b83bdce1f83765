"""Runs that are never lost, never misstated, never fail late: exclusive run directories, checks before
training, divergence, verified checkpoints, resume after Ctrl-C or a kill, one-line CLI errors."""

from __future__ import annotations

import errno
import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from physlens._io import DirectoryBusy, RunDirectory, atomic_directory, rename_noreplace
from physlens.cli import main
from physlens.studies import RunInterrupted, StudySpecError, list_runs, resume_run, run_study
from physlens.studies.report import Report
from physlens.training import TrainingDiverged

STUDY = """
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
steps = 40
seq_len = 4
lr = 1e-2
loss_positions = "all"
schedule = "cosine"
checkpoint_every = 20

[evaluation]
rollout_steps = 10
n_trajectories = 8
context_len = 1
"""


def _study(tmp_path: Path, text: str = STUDY, name: str = "study.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def _cli(capsys, *argv: str) -> tuple[int, str]:
    code = main(list(argv))
    return code, capsys.readouterr().err


def _one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("physlens: ") and "Traceback" not in err, err
    return lines[0]


# --- 1. two runs never own one name, and nothing replaces a directory that appeared meanwhile -----------


def test_a_run_started_while_another_runs_gets_its_own_directory(tmp_path, monkeypatch, capsys):
    """Before: both runs printed runs/tiny/report.md and exited 0, and the one that finished last replaced the
    other's results. Here the second run starts (and finishes) while the first is training."""
    import physlens.studies.oscillator as oscillator

    study = _study(tmp_path)
    argv = ["run", str(study), "--output", str(tmp_path / "runs"), "--quiet"]
    real_train = oscillator.train
    inner_codes = []

    def train_while_another_runs(*args, **kwargs):
        if not inner_codes:
            inner_codes.append(None)
            inner_codes[0] = main(argv)
        return real_train(*args, **kwargs)

    monkeypatch.setattr(oscillator, "train", train_while_another_runs)
    assert main(argv) == 0 and inner_codes == [0]
    runs = tmp_path / "runs"
    printed = capsys.readouterr().out.splitlines()
    assert printed == [f"report written to {runs / 'tiny-1' / 'report.md'}", f"report written to {runs / 'tiny' / 'report.md'}"]
    assert sorted(p.name for p in runs.iterdir()) == ["tiny", "tiny-1"]
    # timings live in timings.json, so the same study gives the same metrics.json bytes
    assert (runs / "tiny" / "metrics.json").read_bytes() == (runs / "tiny-1" / "metrics.json").read_bytes()


@pytest.mark.slow
def test_two_concurrent_processes_running_one_study_get_two_directories(tmp_path):
    """The issue's reproduction: two `physlens run` of one study with one --output, at the same time."""
    study = _study(tmp_path)
    command = [sys.executable, "-m", "physlens.cli", "run", str(study), "--output", str(tmp_path / "runs"), "--quiet"]
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    processes = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=environment)
                 for _ in range(2)]
    outputs = [process.communicate(timeout=300) for process in processes]
    assert [process.returncode for process in processes] == [0, 0], outputs
    runs = tmp_path / "runs"
    assert {out.strip() for out, _ in outputs} == {f"report written to {runs / name / 'report.md'}" for name in ("tiny", "tiny-1")}
    assert sorted(p.name for p in runs.iterdir()) == ["tiny", "tiny-1"]


def test_a_claimed_name_is_owned_by_one_run(tmp_path):
    first = RunDirectory.claim(tmp_path / "run")
    with pytest.raises(DirectoryBusy, match="is being written by pid"):
        RunDirectory.claim(tmp_path / "run")
    with pytest.raises(DirectoryBusy):
        RunDirectory.claim(tmp_path / "run", overwrite=True)  # --overwrite does not take a live run's name
    (first.staging / "result.txt").write_text("mine")
    assert first.finish() == tmp_path / "run"
    assert (tmp_path / "run" / "result.txt").read_text() == "mine"
    with pytest.raises(FileExistsError):
        RunDirectory.claim(tmp_path / "run")


def test_overwrite_refuses_a_name_another_run_is_writing(tmp_path):
    holder = RunDirectory.claim(tmp_path / "runs" / "tiny")
    try:
        with pytest.raises(DirectoryBusy, match="is being written by"):
            run_study(_study(tmp_path), output_root=tmp_path / "runs", overwrite=True, progress=False)
    finally:
        holder.release(keep=False)


def test_atomic_directory_never_replaces_a_target_that_appeared_meanwhile(tmp_path):
    """Before: the final os.replace swapped out a directory created while the block ran."""
    target = tmp_path / "result"
    with pytest.raises(FileExistsError):
        with atomic_directory(target) as staging:
            (staging / "new.txt").write_text("new")
            target.mkdir()
            (target / "theirs.txt").write_text("theirs")
    assert [p.name for p in target.iterdir()] == ["theirs.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["result"]  # the staging directory is gone
    source = tmp_path / "a"
    source.mkdir()
    with pytest.raises(FileExistsError):
        rename_noreplace(source, target)


def test_run_directories_and_files_are_world_readable(tmp_path):
    """Before: mkdtemp/mkstemp made run directories 0700 and atomically written files 0600."""
    previous = os.umask(0o022)
    try:
        with atomic_directory(tmp_path / "ckpt") as staging:
            (staging / "x").write_text("x")
        from physlens._io import atomic_write_text

        atomic_write_text(tmp_path / "file.txt", "x")
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "ckpt").stat().st_mode) == 0o755
    assert stat.S_IMODE((tmp_path / "file.txt").stat().st_mode) == 0o644


# --- 3. divergence stops training with a message and a non-zero exit; nothing is written -----------------


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_a_diverging_run_exits_non_zero_and_writes_nothing(tmp_path, capsys, dtype):
    """Before: lr = 1e6 in float64 exited 0 with a normal report (final loss 7.6e29, rollout errors "inf");
    in float32 the NaN loss came out as a traceback."""
    text = STUDY.replace("lr = 1e-2", "lr = 1e6").replace('"float64"', f'"{dtype}"')
    code, err = _cli(capsys, "run", str(_study(tmp_path, text)), "--output", str(tmp_path / "runs"), "--quiet")
    assert code == 2
    assert "diverged" in _one_line(err) and "lr" in err
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


# --- 5. every option is checked before training -----------------------------------------------------------


@pytest.mark.parametrize(
    "mutation, message",
    [
        (lambda s: s.replace("rollout_steps = 10", "rollout_steps = 0"), r"\[evaluation\] rollout_steps must be >= 1"),
        (lambda s: s + '\n[analyses]\nrun = ["probes"]\n[analyses.probes]\nhooks = ["nope"]\n', r"\[analyses.probes\] hooks"),
        (lambda s: s + '\n[analyses]\nrun = ["probes"]\n[analyses.probes]\nn_trajectories = "many"\n', r"n_trajectories must be int"),
    ],
)
def test_bad_options_fail_before_training_with_the_file_section_and_key(tmp_path, monkeypatch, mutation, message):
    """Before: [evaluation] rollout_steps = 0 failed after all the training steps, naming no key."""
    import physlens.studies.oscillator as oscillator

    def no_training(*args, **kwargs):
        raise AssertionError("training started before the study file was checked")

    monkeypatch.setattr(oscillator, "train", no_training)
    study = _study(tmp_path, mutation(STUDY))
    with pytest.raises(StudySpecError, match=message) as caught:
        run_study(study, output_root=tmp_path / "runs", progress=False)
    assert str(study) in str(caught.value)
    assert not (tmp_path / "runs").exists()  # nothing was claimed


# --- 6. interruptions keep checkpoints; --resume ends where an uninterrupted run ends ----------------------


def _interrupt_after_checkpoint(monkeypatch, step: int) -> None:
    import physlens.training.trainer as trainer

    real_save = trainer._save

    def save_then_stop(directory, saved_step, *args, **kwargs):
        real_save(directory, saved_step, *args, **kwargs)
        if saved_step == step:
            raise KeyboardInterrupt

    monkeypatch.setattr(trainer, "_save", save_then_stop)


def test_ctrl_c_keeps_checkpoints_says_how_to_resume_and_resume_matches_an_uninterrupted_run(tmp_path, monkeypatch, capsys):
    """Before: Ctrl-C deleted the staging directory, checkpoints included, with a traceback."""
    study = _study(tmp_path)
    straight = run_study(study, output_root=tmp_path / "straight", progress=False)
    with monkeypatch.context() as patch:
        _interrupt_after_checkpoint(patch, 20)
        code, err = _cli(capsys, "run", str(study), "--output", str(tmp_path / "runs"), "--quiet")
    assert code == 130
    assert f"physlens run --resume {tmp_path / 'runs' / 'tiny'}" in _one_line(err)
    staging = tmp_path / "runs" / ".partial-tiny"
    assert sorted(p.name for p in (staging / "checkpoints").iterdir()) == ["step_0000020"]
    assert [(r.name, r.status) for r in list_runs(tmp_path / "runs")] == [("tiny", "resumable")]
    code, err = _cli(capsys, "run", "--resume", str(tmp_path / "runs" / "tiny"), "--quiet")
    assert code == 0, err
    resumed = tmp_path / "runs" / "tiny"
    for name in ("metrics.json", "model/model.safetensors"):
        assert (resumed / name).read_bytes() == (straight / name).read_bytes()
    assert not staging.exists()
    assert [(r.name, r.status) for r in list_runs(tmp_path / "runs")] == [("tiny", "complete")]
    code, err = _cli(capsys, "run", "--resume", str(resumed))
    assert code == 2 and "is a complete run" in _one_line(err)


def test_an_interrupt_before_any_checkpoint_leaves_nothing(tmp_path, monkeypatch):
    import physlens.studies.oscillator as oscillator

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(oscillator, "train", killed)
    with pytest.raises(RunInterrupted, match="before any checkpoint"):
        run_study(_study(tmp_path), output_root=tmp_path / "runs", progress=False)
    assert list((tmp_path / "runs").iterdir()) == []


@pytest.mark.slow
def test_a_killed_run_resumes_from_its_checkpoints(tmp_path, capsys):
    """Before: SIGKILL left checkpoints in a randomly named .partial- directory nothing could resume from.
    (The same state as Ctrl-C leaves, which the fast test above resumes; here a real process is killed.)"""
    text = (STUDY.replace("steps = 40", "steps = 600").replace("checkpoint_every = 20", "checkpoint_every = 5")
            .replace("seq_len = 4", "seq_len = 4\nbatch_size = 8"))
    study = _study(tmp_path, text)
    runs = tmp_path / "runs"
    command = [sys.executable, "-m", "physlens.cli", "run", str(study), "--output", str(runs), "--quiet"]
    process = subprocess.Popen(command, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline and process.poll() is None:
            if list(runs.glob(".partial-tiny/checkpoints/step_0000005")):
                break
            time.sleep(0.01)
        assert process.poll() is None, "the run ended before it could be killed"
        statuses = [(r.name, r.status) for r in list_runs(runs)]
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    assert statuses == [("tiny", "running")]
    assert [(r.name, r.status) for r in list_runs(runs)] == [("tiny", "resumable")]
    code, err = _cli(capsys, "run", "--resume", str(runs / "tiny"), "--quiet")
    assert code == 0, err
    straight = run_study(study, output_root=tmp_path / "straight", progress=False)
    assert (runs / "tiny" / "metrics.json").read_bytes() == (straight / "metrics.json").read_bytes()


def test_resume_refuses_what_it_cannot_continue(tmp_path, capsys):
    code, err = _cli(capsys, "run", "--resume", str(tmp_path / "nothing"))
    assert code == 2 and "no interrupted run" in _one_line(err)
    (tmp_path / ".partial-legacy").mkdir()  # left by an older physlens: no run.json, no study.toml
    with pytest.raises(ValueError, match="cannot be resumed: delete it"):
        resume_run(tmp_path / "legacy", progress=False)
    holder = RunDirectory.claim(tmp_path / "busy")
    holder.write_record(status="running", inputs=["study.toml"])
    (holder.staging / "study.toml").write_text(STUDY)
    try:
        code, err = _cli(capsys, "run", "--resume", str(tmp_path / "busy"))
        assert code == 2 and "still running" in _one_line(err)
    finally:
        holder.release(keep=False)


# --- 7. every expected failure is one line and exit status 2 -------------------------------------------------


def _fail_in_training(error: BaseException):
    def fail(*args, **kwargs):
        raise error

    return fail


@pytest.mark.parametrize(
    "error, expected",
    [
        (PermissionError(errno.EACCES, "Permission denied", "/runs/tiny/report.md"), "Permission denied: '/runs/tiny/report.md'"),
        (OSError(errno.ENOSPC, "No space left on device", "/runs/x"), "No space left on device"),
        (FloatingPointError("overflow in the loss"), "FloatingPointError: overflow in the loss"),
        (RuntimeError("CUDA out of memory"), "RuntimeError: CUDA out of memory"),
    ],
)
def test_failures_during_a_run_are_one_line_and_exit_2(tmp_path, monkeypatch, capsys, error, expected):
    """Before: a read-only or full output directory, FloatingPointError and RuntimeError came out as tracebacks."""
    import physlens.studies.oscillator as oscillator

    monkeypatch.setattr(oscillator, "train", _fail_in_training(error))
    code, err = _cli(capsys, "run", str(_study(tmp_path)), "--output", str(tmp_path / "runs"), "--quiet")
    assert code == 2 and expected in _one_line(err)
    assert list((tmp_path / "runs").iterdir()) == []  # no checkpoint yet: nothing kept


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root writes into read-only directories")
def test_a_read_only_output_directory_is_one_line(tmp_path, capsys):
    runs = tmp_path / "runs"
    runs.mkdir()
    runs.chmod(0o555)
    try:
        code, err = _cli(capsys, "run", str(_study(tmp_path)), "--output", str(runs), "--quiet")
    finally:
        runs.chmod(0o755)
    assert code == 2 and "Permission denied" in _one_line(err)


def test_input_problems_are_one_line_naming_the_file(tmp_path, capsys):
    """Before: an output path under a file, a binary or UTF-16 study file and a directory in place of a
    study file gave tracebacks or messages that named nothing ("does not exist")."""
    study = _study(tmp_path)
    for output in (study / "runs", study):
        code, err = _cli(capsys, "run", str(study), "--output", str(output), "--quiet")
        assert code == 2 and f"{str(study)!r} is a file, so no run directory can be made under it" in _one_line(err)
    utf16 = tmp_path / "utf16.toml"
    utf16.write_bytes(STUDY.encode("utf-16"))
    code, err = _cli(capsys, "run", str(utf16))
    assert code == 2 and "utf16.toml" in err and "UTF-16" in _one_line(err)
    binary = tmp_path / "binary.toml"
    binary.write_bytes(bytes(range(256)))
    code, err = _cli(capsys, "run", str(binary))
    assert code == 2 and "binary.toml" in err and "not UTF-8" in _one_line(err)
    code, err = _cli(capsys, "run", str(tmp_path))
    assert code == 2 and "is a directory, not a study file" in _one_line(err)
    code, err = _cli(capsys, "run", str(_study(tmp_path, STUDY.replace('n_ctx = 4', 'n_ctx = 4\ndevice = "gpu0"'), "dev.toml")))
    assert code == 2 and "[model] device must be a torch device" in _one_line(err)
    if not torch.cuda.is_available():  # a GPU recipe on a machine without one: refused before any model is built
        code, err = _cli(capsys, "run", str(_study(tmp_path, STUDY.replace('n_ctx = 4', 'n_ctx = 4\ndevice = "cuda"'), "gpu.toml")))
        assert code == 2 and "[model] device 'cuda' is not available on this machine" in _one_line(err)


def _resumable_run(tmp_path: Path, monkeypatch) -> Path:
    with monkeypatch.context() as patch:
        _interrupt_after_checkpoint(patch, 20)
        with pytest.raises(RunInterrupted):
            run_study(_study(tmp_path), output_root=tmp_path / "runs", progress=False)
    return tmp_path / "runs" / ".partial-tiny" / "checkpoints" / "step_0000020"


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda c: (c / "model.safetensors").write_bytes((c / "model.safetensors").read_bytes()[:40]),
         "model.safetensors' does not match the digest"),
        (lambda c: (c / "config.json").write_text((c / "config.json").read_text()[:50]), "config.json' is not valid JSON"),
        (lambda c: (c / "config.json").write_text("[1, 2]"), "config.json' must hold a JSON object"),
        (lambda c: (c / "state.safetensors").write_bytes(b"\x00" * 8), "state.safetensors' does not match the digest"),
    ],
)
def test_a_damaged_checkpoint_stops_a_resume_with_the_file_named(tmp_path, monkeypatch, capsys, damage, message):
    """Before: a truncated safetensors said "header too small", a truncated or non-object config.json raised
    JSONDecodeError or AttributeError, naming no file."""
    damage(_resumable_run(tmp_path, monkeypatch))
    code, err = _cli(capsys, "run", "--resume", str(tmp_path / "runs" / "tiny"), "--quiet")
    assert code == 2 and message in _one_line(err)
    assert "the checkpoints are kept" in err  # a failed resume loses nothing


def test_version_and_runs_listing(tmp_path, capsys):
    with pytest.raises(SystemExit) as caught:
        main(["--version"])
    assert caught.value.code == 0
    from importlib.metadata import version

    assert capsys.readouterr().out.strip() == f"physlens {version('physlens')}"
    assert main(["runs", str(tmp_path)]) == 0 and "no runs" in capsys.readouterr().out
    holder = RunDirectory.claim(tmp_path / "live")
    try:
        (tmp_path / "old").mkdir()
        for name in ("report.md", "metrics.json"):
            (tmp_path / "old" / name).write_text("{}")
        assert main(["runs", str(tmp_path)]) == 0
        listed = capsys.readouterr().out.splitlines()[1:]  # after the header row
        assert [line.split()[:2] for line in listed] == [["live", "running"], ["old", "complete"]]
    finally:
        holder.release(keep=False)
    code, err = _cli(capsys, "runs", str(tmp_path / "missing"))
    assert code == 2 and "is not a directory of runs" in _one_line(err)


# --- 8. the smaller holes ----------------------------------------------------------------------------------


def test_non_finite_metrics_are_null_with_a_flag(tmp_path):
    """Before: an infinite value was written as the string "inf" (and a NaN as a bare null)."""
    from physlens.studies.report import read_metrics

    report = Report("t")
    computed = {"error": float("inf"), "rows": [1.0, float("nan")], "nested": {"low": -float("inf"), "ok": 2},
                "blocks.0.hook": torch.tensor([1.5, float("inf")])}
    report.metrics.update(computed)
    report.write(tmp_path)
    text = (tmp_path / "metrics.json").read_text()
    metrics = json.loads(text)
    assert "Infinity" not in text and "NaN" not in text and '"inf"' not in text.split('"non_finite"')[0]
    assert metrics["error"] is None and metrics["rows"] == [1.0, None] and metrics["nested"] == {"low": None, "ok": 2}
    assert metrics["blocks.0.hook"] == [1.5, None]
    assert sorted((tuple(e["path"]), e["value"]) for e in metrics["non_finite"]) == [
        (("blocks.0.hook", 1), "inf"), (("error",), "inf"), (("nested", "low"), "-inf"), (("rows", 1), "nan")]
    restored = read_metrics(tmp_path / "metrics.json")
    assert restored["error"] == float("inf") and restored["nested"]["low"] == -float("inf")
    assert restored["blocks.0.hook"] == [1.5, float("inf")] and restored["rows"][0] == 1.0 and restored["rows"][1] != restored["rows"][1]
    assert "non_finite" not in restored


def test_trajectories_refuse_nan_states_and_overdamped_parameters():
    from physlens.systems.oscillator import Trajectories

    states, ones = torch.zeros(2, 3, 2), torch.ones(2)
    Trajectories(states, ones, 0.1 * ones, 0.1)
    with pytest.raises(ValueError, match="states must contain only finite values"):
        Trajectories(states.clone().index_fill_(0, torch.tensor([1]), float("nan")), ones, 0.1 * ones, 0.1)
    with pytest.raises(ValueError, match="underdamped"):
        Trajectories(states, ones, 2 * ones, 0.1)
    with pytest.raises(ValueError, match="omega0 must be > 0"):
        Trajectories(states, -ones, 0 * ones, 0.1)
    with pytest.raises(ValueError, match="dt must be"):
        Trajectories(states, ones, 0 * ones, float("nan"))


def test_add_hook_names_a_misspelt_hook_and_positions_accept_numpy_integers():
    """Before: add_hook raised a bare KeyError; numpy positions raised "'numpy.int64' object is not iterable"."""
    import numpy as np

    from physlens.models import OscillatorTransformer, TransformerConfig
    from physlens.probes.activations import collect_activations, resolve_positions

    model = OscillatorTransformer(TransformerConfig(n_ctx=6))
    with pytest.raises(ValueError, match=r"unknown hook name 'blocks.0.hook_resid_prex'.*did you mean"):
        model.add_hook("blocks.0.hook_resid_prex", lambda activation, hook: activation)
    model.add_hook("blocks.0.hook_resid_pre", lambda activation, hook: activation)
    model.reset_hooks()
    assert resolve_positions(np.int64(3), 6) == [3]
    assert resolve_positions(np.array([1, -1]), 6) == [1, 5]
    assert resolve_positions([np.int32(0), 2], 6) == [0, 2]
    with pytest.raises(ValueError, match="positions must be integers"):
        resolve_positions([np.float64(1.0)], 6)
    acts = collect_activations(model, torch.randn(3, 6, 2), ["blocks.0.hook_resid_pre"], positions=np.int64(2))
    assert acts.positions == [2] and acts.acts["blocks.0.hook_resid_pre"].shape[:2] == (3, 1)


def test_divergence_is_caught_in_every_training_loop():
    from physlens.models.mlp import EnsembleConfig, MLPEnsemble
    from physlens.models.siamese import BottleneckConfig, BottleneckNetwork, SiameseConfig, SiameseTower
    from physlens.systems import OscillatorSystem
    from physlens.systems.central import CentralPotentialSystem
    from physlens.systems.fma import fma_splits
    from physlens.training import (
        BottleneckTrainConfig, EnsembleTrainConfig, SiameseTrainConfig, train_bottleneck, train_ensemble, train_siamese,
    )

    data = fma_splits([0, 1, 2], "product", n_train=32, n_val=16, dtype="float64")
    for backend in ("fused", "eager"):
        ensemble = MLPEnsemble(EnsembleConfig(seeds=[0, 1, 2], d_hidden=2, dtype="float64"))
        try:
            with pytest.raises(TrainingDiverged, match=r"training diverged for \d of 3 networks"):
                train_ensemble(ensemble, data, EnsembleTrainConfig(epochs=30, lr=1e8, backend=backend), progress=False)
        except RuntimeError as error:  # no numba here: the fused backend cannot run at all
            assert backend == "fused" and "cannot train" in str(error)
    healthy = train_ensemble(MLPEnsemble(EnsembleConfig(seeds=[0, 1, 2], d_hidden=2, dtype="float64")), data,
                             EnsembleTrainConfig(epochs=30, lr=1e-2), progress=False)
    assert torch.isfinite(healthy.val_loss).all()
    orbits = CentralPotentialSystem().sample(16, 4, seed=0, random_times=True)
    with pytest.raises(TrainingDiverged, match="Siamese training diverged"):
        train_siamese(SiameseTower(SiameseConfig(d_hidden=8, dtype="float64")), orbits,
                      SiameseTrainConfig(steps=50, batch_size=16, lr=1e9), progress=False)
    system = OscillatorSystem(omega0=2.0, gamma=0.1, dtype="float64")
    with pytest.raises(TrainingDiverged, match="bottleneck training diverged"):
        train_bottleneck(BottleneckNetwork(BottleneckConfig(d_in=8, d_side=2, d_out=2, d_hidden=8, dtype="float64")),
                         system, BottleneckTrainConfig(steps=50, batch_size=16, lr=1e9), progress=False)
