"""The promises of issue 22 that broke under attack, each kept by a test: special files never hang a
command, a blow-up in the last step is caught, a resume continues only the run it belongs to, and an
unverifiable checkpoint loads only when asked to."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch

from physlens.cli import main
from physlens.studies import RunInterrupted, run_study
from physlens.training import TrainingDiverged
from physlens.training.checkpoints import CheckpointError, load_checkpoint
from tests.test_run_safety import STUDY, _interrupt_after_checkpoint, _one_line, _study

SRC = Path(__file__).resolve().parents[1] / "src"


def _physlens(*argv: str, timeout: float = 60) -> subprocess.CompletedProcess:
    """The CLI in a child process, so that a hang fails the test instead of stalling the suite."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [os.environ.get("PYTHONPATH"), str(SRC)])), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "physlens.cli", *argv], capture_output=True, text=True, timeout=timeout,
                          env=env, stdin=subprocess.DEVNULL)


def _cli(capsys, *argv: str) -> tuple[int, str]:
    code = main(list(argv))
    return code, capsys.readouterr().err


def _interrupted(tmp_path: Path, monkeypatch, text: str = STUDY, root: str = "runs") -> Path:
    """An oscillator run interrupted (Ctrl-C) right after its step-20 checkpoint; returns its staging directory."""
    study = _study(tmp_path, text, name=f"{root}.toml")
    with monkeypatch.context() as patch:
        _interrupt_after_checkpoint(patch, 20)
        with pytest.raises(RunInterrupted):
            run_study(study, output_root=tmp_path / root, progress=False)
    return tmp_path / root / ".partial-tiny"


# --- 1. a FIFO in a run directory never hangs a command ------------------------------------------------------


def test_a_fifo_in_a_run_directory_hangs_no_command(tmp_path):
    """Before: `physlens runs`, `run` and `--resume` blocked forever opening the FIFO."""
    runs = tmp_path / "runs"
    (runs / ".partial-x").mkdir(parents=True)
    os.mkfifo(runs / ".partial-x" / ".lock")
    (runs / ".partial-y").mkdir()
    os.mkfifo(runs / ".partial-y" / "run.json")
    listed = _physlens("runs", str(runs))
    assert listed.returncode == 0, listed.stderr
    assert "x " in listed.stdout and "y " in listed.stdout
    for name in ("x", "y"):
        resumed = _physlens("run", "--resume", str(runs / name))
        assert resumed.returncode == 2 and resumed.stderr.startswith("physlens: error: "), resumed.stderr
    study = tmp_path / "study.toml"
    study.write_text(STUDY.replace('name = "tiny"', 'name = "x"').replace("steps = 40", "steps = 2")
                     .replace("checkpoint_every = 20", "checkpoint_every = 1"))
    ran = _physlens("run", str(study), "--output", str(runs), "--quiet", timeout=120)
    assert ran.returncode == 0, ran.stderr
    assert (runs / "x-1" / "report.md").is_file()  # x is taken by the directory holding the FIFO


def test_special_files_are_refused_by_type_before_any_read(tmp_path):
    """Before: a study file that is a FIFO or /dev/zero "does not exist" (or was read without bound)."""
    fifo = tmp_path / "study.toml"
    os.mkfifo(fifo)
    for path in (fifo, Path("/dev/zero")):
        result = _physlens("run", str(path), "--output", str(tmp_path / "runs"))
        assert result.returncode == 2, result.stderr
        line = result.stderr.strip()
        assert "not a regular file" in line and str(path) in line and "\n" not in line
    runs = tmp_path / "runs"
    (runs / "z").mkdir(parents=True)
    (runs / "z" / "report.md").write_text("")
    (runs / "z" / "metrics.json").write_text("{}")
    (runs / "z" / "run.json").symlink_to("/dev/zero")
    listed = _physlens("runs", str(runs))
    assert listed.returncode == 0 and "z " in listed.stdout, listed.stderr


# --- 3. a blow-up in the last optimiser step is a divergence -------------------------------------------------


def test_a_blow_up_in_the_last_step_is_caught(tmp_path, capsys):
    """Before: steps = 1, lr = 1e3 exited 0 with final_train_loss 0.409 and next_step_mse 2.8e13: the loss is
    measured before each update, so the last update was never checked."""
    text = (STUDY.replace("steps = 40", "steps = 1").replace("lr = 1e-2", "lr = 1e3\nmin_lr = 0")
            .replace("checkpoint_every = 20\n", ""))
    code, err = _cli(capsys, "run", str(_study(tmp_path, text)), "--output", str(tmp_path / "runs"), "--quiet")
    assert code == 2 and "diverged" in _one_line(err) and "at step 1" in err
    assert list((tmp_path / "runs").iterdir()) == []


def test_the_final_step_check_changes_no_good_run(tmp_path):
    from physlens.training.loop import optimise

    weight = torch.nn.Parameter(torch.tensor([1.0]))
    optimizer = torch.optim.SGD([weight], lr=0.1)
    losses = optimise([weight], optimizer, lambda step: (weight - 0.5).pow(2).sum(), steps=3, progress=False,
                      final_loss=lambda: (weight - 0.5).pow(2).sum())
    assert len(losses) == 3 and losses[-1] < losses[0]
    blown = torch.optim.SGD([weight], lr=1e6)
    with pytest.raises(TrainingDiverged, match="at step 1"):
        optimise([weight], blown, lambda step: (weight - 0.5).pow(2).sum(), steps=1, progress=False,
                 final_loss=lambda: (weight - 0.5).pow(2).sum())


@pytest.mark.parametrize("blow_up", ["huge", "nan"])
def test_a_model_broken_after_its_last_checked_loss_gets_no_report(tmp_path, monkeypatch, capsys, blow_up):
    """Before: a model that left training broken (here its weights scaled by 1e8 or one set to NaN after the
    last loss was checked, as a blow-up the last batch did not show would leave it) exited 0 with a report of
    next-step MSE ~1e62, or with a bootstrap error naming no model."""
    import physlens.studies.oscillator as oscillator

    train = oscillator.train

    def train_then_break(model, *args, **kwargs):
        result = train(model, *args, **kwargs)
        with torch.no_grad():
            for parameter in model.parameters():
                parameter.mul_(1e8) if blow_up == "huge" else parameter.fill_(float("nan"))
        return result

    monkeypatch.setattr(oscillator, "train", train_then_break)
    text = STUDY.replace("steps = 40", "steps = 2").replace("checkpoint_every = 20\n", "")
    code, err = _cli(capsys, "run", str(_study(tmp_path, text)), "--output", str(tmp_path / "runs"), "--quiet")
    line = _one_line(err)
    assert code == 2 and "the model diverged" in line and "held-out trajectories" in line, line
    assert list((tmp_path / "runs").iterdir()) == []  # nothing that looks like a result, nothing to resume


# --- 4–6. a resume continues only the run it belongs to ------------------------------------------------------


def test_resume_refuses_a_checkpoint_copied_from_another_run(tmp_path, monkeypatch, capsys):
    """Before: a checkpoint of an ω0 = 3 run copied into an ω0 = 2 run resumed with rc 0 and other metrics."""
    ours = _interrupted(tmp_path, monkeypatch)
    theirs = _interrupted(tmp_path, monkeypatch, STUDY.replace("omega0 = 2.0", "omega0 = 3.0"), root="other")
    shutil.rmtree(ours / "checkpoints" / "step_0000020")
    shutil.copytree(theirs / "checkpoints" / "step_0000020", ours / "checkpoints" / "step_0000020")
    code, err = _cli(capsys, "run", "--resume", str(tmp_path / "runs" / "tiny"), "--quiet")
    assert code == 2 and "was not written by this run" in _one_line(err) and "step_0000020" in err
    assert ours.is_dir()  # refused, not deleted


def test_resume_refuses_an_edited_training_state(tmp_path, monkeypatch, capsys):
    """Before: state.json's step edited 20 → 30 resumed with rc 0 and a report claiming 40 steps where 30 ran."""
    staging = _interrupted(tmp_path, monkeypatch)
    state = staging / "checkpoints" / "step_0000020" / "state.json"
    state.write_text(state.read_text().replace('"step": 20', '"step": 30'))
    code, err = _cli(capsys, "run", "--resume", str(tmp_path / "runs" / "tiny"), "--quiet")
    assert code == 2 and "state.json' does not match the digest" in _one_line(err)


def test_resume_refuses_an_edited_study(tmp_path, monkeypatch, capsys):
    """Before: the kept study.toml edited (ω0 2 → 3) resumed with rc 0, reporting ω0 = 3 for a model whose first
    20 steps trained on ω0 = 2."""
    staging = _interrupted(tmp_path, monkeypatch)
    kept = staging / "study.toml"
    kept.write_text(kept.read_text().replace("omega0 = 2.0", "omega0 = 3.0"))
    code, err = _cli(capsys, "run", "--resume", str(tmp_path / "runs" / "tiny"), "--quiet")
    line = _one_line(err)
    assert code == 2 and "study.toml' changed after the run" in line and "Refusing to resume" in line
    record = json.loads((staging / "run.json").read_text())
    digests = record["input_digests"]  # editing run.json to match is caught by the checkpoints' run key
    import hashlib

    digests["study.toml"] = hashlib.sha256(kept.read_bytes()).hexdigest()
    (staging / "run.json").write_text(json.dumps(record))
    code, err = _cli(capsys, "run", "--resume", str(tmp_path / "runs" / "tiny"), "--quiet")
    assert code == 2 and "run key" in _one_line(err)


def test_an_untouched_interrupted_run_still_resumes_byte_identically(tmp_path, monkeypatch, capsys):
    straight = run_study(_study(tmp_path), output_root=tmp_path / "straight", progress=False)
    _interrupted(tmp_path, monkeypatch)
    code, err = _cli(capsys, "run", "--resume", str(tmp_path / "runs" / "tiny"), "--quiet")
    assert code == 0, err
    for name in ("metrics.json", "model/model.safetensors"):  # report.md states the wall time
        assert (tmp_path / "runs" / "tiny" / name).read_bytes() == (straight / name).read_bytes()


# --- 7. a checkpoint without digests loads only when asked to ------------------------------------------------


def test_a_digest_downgrade_is_refused_without_the_opt_in(tmp_path, monkeypatch, capsys):
    """Before: format_version 1 with the digests removed and a weight byte flipped loaded with a UserWarning."""
    staging = _interrupted(tmp_path, monkeypatch)
    checkpoint = staging / "checkpoints" / "step_0000020"
    config = json.loads((checkpoint / "config.json").read_text())
    config["format_version"] = 1
    del config["digest"]
    (checkpoint / "config.json").write_text(json.dumps(config))
    weights = bytearray((checkpoint / "model.safetensors").read_bytes())
    weights[-1] ^= 0x01
    (checkpoint / "model.safetensors").write_bytes(bytes(weights))
    with pytest.raises(CheckpointError, match="has no digests .format version 1.*allow_unverified=True"):
        load_checkpoint(checkpoint)
    with pytest.warns(UserWarning, match="without digests"):
        load_checkpoint(checkpoint, allow_unverified=True)
    code, err = _cli(capsys, "run", "--resume", str(tmp_path / "runs" / "tiny"), "--quiet")
    assert code == 2 and "format version 1" in _one_line(err)


@pytest.mark.parametrize("missing", ["state.safetensors", "state.json"])
def test_a_missing_state_file_is_named(tmp_path, monkeypatch, capsys, missing):
    """Before: a KeyError traceback."""
    staging = _interrupted(tmp_path, monkeypatch)
    (staging / "checkpoints" / "step_0000020" / missing).unlink()
    code, err = _cli(capsys, "run", "--resume", str(tmp_path / "runs" / "tiny"), "--quiet")
    assert code == 2 and f"{missing}' is missing" in _one_line(err)


# --- 2. no crash point of a run's directory steps, or of --overwrite, loses a run ---------------------------


def _die_before_mutation(number: int) -> None:
    """From now on, this process dies (as from SIGKILL: no handler, no cleanup) just before its
    ``number``-th filesystem mutation (0: the first)."""
    import physlens._io as io_module

    count = [0]

    def counted(function):
        def call(*args, **kwargs):
            if count[0] == number:
                os._exit(86)
            count[0] += 1
            return function(*args, **kwargs)
        return call

    for name in ("mkdir", "rename", "replace", "unlink", "rmdir"):
        setattr(os, name, counted(getattr(os, name)))
    real_open = os.open
    opening = counted(real_open)
    os.open = lambda path, flags, *args, **kwargs: (opening if flags & (os.O_CREAT | os.O_TRUNC) else real_open)(
        path, flags, *args, **kwargs)
    if io_module._RENAMEAT2 is not None:
        io_module._RENAMEAT2 = counted(io_module._RENAMEAT2)


def _run_until_killed(target: Path, number: int, atomic_swap: bool) -> int:
    """In a forked child: claim ``target`` with overwrite, write a run into it and finish it, dying
    before mutation ``number``. Returns the child's exit status (0: it finished)."""
    import time

    import physlens._io as io_module
    from physlens._io import RunDirectory

    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            if not atomic_swap:
                io_module.exchange = lambda first, second: False
            _die_before_mutation(number)
            claim = RunDirectory.claim(target, overwrite=True)
            for name, text in (("who", "new"), ("report.md", "new"), ("metrics.json", "{}")):
                io_module.atomic_write_text(claim.staging / name, text)
            claim.write_record(status="running", run_id="new-run")
            claim.finish()
        except BaseException:
            os._exit(87)
        os._exit(0)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.005)
    os.kill(pid, 9)
    os.waitpid(pid, 0)
    raise AssertionError(f"the child killed at mutation {number} hung")


@pytest.mark.parametrize("atomic_swap", [True, False], ids=["exchange", "move-aside"])
def test_no_kill_point_of_an_overwrite_loses_the_earlier_run(tmp_path, atomic_swap):
    """Before: --overwrite killed between moving the old run aside and renaming the new one left no runs/<name>;
    the old run sat in .partial-old-<name>.*, which `physlens runs` skipped and nothing restored, and six other
    kill points left empty leftovers. Here the process dies before each of its filesystem mutations in turn."""
    from physlens._io import exchange, recover_run
    from physlens.studies import list_runs

    if atomic_swap:
        probe = tmp_path / "probe"
        (probe / "a").mkdir(parents=True)
        (probe / "b").mkdir()
        if not exchange(probe / "a", probe / "b"):
            pytest.skip("no atomic exchange on this filesystem")
    for number in range(200):
        root = tmp_path / f"kill-{number}"
        target = root / "tiny"
        target.mkdir(parents=True)
        for name, text in (("who", "old"), ("report.md", "old"), ("metrics.json", "{}"),
                           ("run.json", json.dumps({"status": "complete", "run_id": "old-run"}))):
            (target / name).write_text(text)
        code = _run_until_killed(target, number, atomic_swap)
        assert code in (0, 86), f"the child failed at mutation {number} (exit {code})"
        who = (target / "who").read_text() if target.is_dir() else None
        if atomic_swap:
            assert who in ("old", "new"), f"killed before mutation {number}: runs/tiny holds {who!r}"
        aside = [info for info in list_runs(root) if info.status == "aside"]
        if who is None:  # only where no atomic swap exists: the earlier run is shown, and put back
            assert aside, f"killed before mutation {number}: no runs/tiny and nothing listed to recover"
        recover_run(target)
        who = (target / "who").read_text()
        assert who in ("old", "new")
        leftovers = sorted(p.name for p in root.iterdir() if p.name.startswith(".partial-old-"))
        assert leftovers == [], f"killed before mutation {number}: left {leftovers}"
        staging = root / ".partial-tiny"
        assert not staging.exists() or json.loads((staging / "run.json").read_text()).get("status") == "running" \
            if (staging / "run.json").exists() else True
        statuses = {(info.name, info.status) for info in list_runs(root)}
        assert ("tiny", "complete") in statuses and not {s for _, s in statuses} & {"aside"}, statuses
        if code == 0:
            assert who == "new" and sorted(p.name for p in root.iterdir()) == ["tiny"]
            assert number > 5
            break
    else:
        raise AssertionError("the run never finished")


# --- smaller promises: files on disk before the rename, a damaged checkpoints/ named ------------------------


def test_every_file_of_a_run_is_flushed_before_it_is_called_complete(tmp_path, monkeypatch):
    """Before: report.md, metrics.json and the figures were written with plain writes and renamed into place
    unflushed, so a power cut could leave a 'complete' run with empty files."""
    import physlens._io as io_module

    flushed: list[str] = []
    real_fsync = os.fsync

    def recording(fd):
        flushed.append(os.readlink(f"/proc/self/fd/{fd}"))
        return real_fsync(fd)

    monkeypatch.setattr(io_module.os, "fsync", recording)
    out = run_study(_study(tmp_path), output_root=tmp_path / "runs", progress=False)
    staging = str(tmp_path / "runs" / ".partial-tiny")
    for name in ("report.md", "metrics.json", "timings.json", "study.toml"):
        assert f"{staging}/{name}" in flushed, name
    figures = [p.name for p in (out / "figures").iterdir()]
    assert figures and all(f"{staging}/figures/{name}" in flushed for name in figures)


def test_a_checkpoints_entry_that_is_not_a_directory_is_named_and_the_run_kept(tmp_path, monkeypatch, capsys):
    """Before: "File exists" after training restarted from step 0."""
    staging = _interrupted(tmp_path, monkeypatch)
    shutil.rmtree(staging / "checkpoints")
    (staging / "checkpoints").write_text("")
    code, err = _cli(capsys, "run", "--resume", str(tmp_path / "runs" / "tiny"), "--quiet")
    assert code == 2 and "checkpoints' should be the run's directory of checkpoints" in _one_line(err)
    assert (staging / "study.toml").is_file()


@pytest.fixture
def default_sigint():
    """Python's own Ctrl-C handler for the test. A shell without job control starts a background command
    with SIGINT ignored (`nohup pytest &`), and a run rightly leaves a handler it did not expect alone, so
    these tests set the ordinary one first and restore what was there."""
    import signal

    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_a_ctrl_c_swallowed_inside_a_weakref_callback_still_interrupts_the_run(tmp_path, monkeypatch, default_sigint):
    """Before: 5 of 23 Ctrl-C landed in a weakref callback, where Python prints the KeyboardInterrupt and drops
    it, and the run finished with exit 0."""
    import gc
    import signal
    import weakref

    import physlens.studies.oscillator as oscillator

    real_train = oscillator.train

    def train_then_interrupted_in_a_callback(*args, **kwargs):
        result = real_train(*args, **kwargs)

        class Victim:
            pass

        def callback(reference):
            # to the main thread itself: os.kill lets the OS hand the signal to any thread, and a busy
            # machine can run that thread's handler after the few statements this test leaves it
            signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)
            sum(range(1000))  # the handler runs here, inside the callback, and its exception is dropped

        victim = Victim()
        keep = weakref.ref(victim, callback)
        del victim
        gc.collect()
        assert keep() is None
        return result

    monkeypatch.setattr(oscillator, "train", train_then_interrupted_in_a_callback)
    with pytest.raises(RunInterrupted):
        run_study(_study(tmp_path), output_root=tmp_path / "runs", progress=False)
    assert not (tmp_path / "runs" / "tiny").exists()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_a_ctrl_c_that_surfaces_as_another_error_is_an_interrupt(tmp_path, monkeypatch, default_sigint):
    """Before: a Ctrl-C landing in class creation surfaced as "RuntimeError: Error calling __set_name__" and the
    run exited 2 as if it had failed."""
    import signal

    import physlens.studies.oscillator as oscillator

    def interrupted_then_wrapped(*args, **kwargs):
        try:
            # to the main thread itself: os.kill lets the OS hand the signal to any thread, and a busy
            # machine can run that thread's handler after the few statements this test leaves it
            signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)
            sum(range(1000))
        except KeyboardInterrupt as error:
            raise RuntimeError("Error calling __set_name__ on 'Descriptor' instance") from error
        raise AssertionError("SIGINT was not delivered")

    monkeypatch.setattr(oscillator, "train", interrupted_then_wrapped)
    with pytest.raises(RunInterrupted):
        run_study(_study(tmp_path), output_root=tmp_path / "runs", progress=False)


def test_a_config_json_nested_too_deeply_is_named(tmp_path, monkeypatch, capsys):
    """Before: a RecursionError naming no file."""
    staging = _interrupted(tmp_path, monkeypatch)
    (staging / "checkpoints" / "step_0000020" / "config.json").write_text("[" * 100_000 + "]" * 100_000)
    code, err = _cli(capsys, "run", "--resume", str(tmp_path / "runs" / "tiny"), "--quiet")
    assert code == 2 and "config.json' nests its values too deeply" in _one_line(err)


def test_a_blow_up_in_the_last_step_of_the_invariant_networks_is_caught():
    """Before: the Siamese tower and the bottleneck network scored each step's loss before its update only, so
    a one-step run at a huge learning rate returned a broken network whose reported losses looked fine."""
    from physlens.models.siamese import BottleneckConfig, BottleneckNetwork, SiameseConfig, SiameseTower
    from physlens.systems import CentralPotentialSystem, OscillatorSystem
    from physlens.training import BottleneckTrainConfig, SiameseTrainConfig, train_bottleneck, train_siamese

    orbits = CentralPotentialSystem().sample(16, 4, seed=0, random_times=True)
    system = OscillatorSystem(omega0=2.0, gamma=0.1, dtype="float64")
    with pytest.raises(TrainingDiverged, match="Siamese training diverged.*at step 1"):
        train_siamese(SiameseTower(SiameseConfig(d_hidden=8, dtype="float64")), orbits,
                      SiameseTrainConfig(steps=1, batch_size=16, lr=1e9), progress=False)
    with pytest.raises(TrainingDiverged, match="bottleneck training diverged.*at step 1"):
        train_bottleneck(BottleneckNetwork(BottleneckConfig(d_in=8, d_side=2, d_out=2, d_hidden=8, dtype="float64")),
                         system, BottleneckTrainConfig(steps=1, batch_size=16, lr=1e9), progress=False)
    healthy = train_bottleneck(BottleneckNetwork(BottleneckConfig(d_in=8, d_side=2, d_out=2, d_hidden=8, dtype="float64")),
                               system, BottleneckTrainConfig(steps=3, batch_size=16, lr=1e-3), progress=False)
    assert len(healthy) == 3  # the final check adds no loss to the curve
