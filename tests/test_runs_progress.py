"""Long runs are not silent: training writes a progress file that `physlens runs` shows, and --quiet prints a
heartbeat line at most once a minute."""

from __future__ import annotations

import functools
import json

import pytest
import torch

import physlens.studies as studies
from physlens._io import RunDirectory
from physlens._progress import (
    PROGRESS_FILE,
    ProgressSink,
    estimate_eta,
    format_duration,
    progress_line,
    progress_requested,
    read_progress,
    report_step,
    reporting_progress,
)
from physlens.cli import main
from physlens.studies import list_runs
from tests.test_run_safety import STUDY


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_the_file_is_throttled_the_eta_extrapolates_and_the_heartbeat_waits_a_minute(tmp_path):
    clock, lines = _Clock(), []
    sink = ProgressSink(path=tmp_path / PROGRESS_FILE, heartbeat=lines.append, clock=clock)
    sink.update(1, 100, 0.5)  # the first step: written at once, no rate yet
    first = read_progress(tmp_path / PROGRESS_FILE)
    assert (first["phase"], first["step"], first["total"], first["loss"], first["eta_s"]) == ("training", 1, 100, 0.5, None)
    clock.now = 1.0
    sink.update(3, 100, 0.25)  # within 2 s of the last write: not rewritten
    assert read_progress(tmp_path / PROGRESS_FILE)["step"] == 1
    clock.now = 5.0
    sink.update(11, 100, 0.125)  # 10 steps in 5 s, 89 to go: 44.5 s
    assert read_progress(tmp_path / PROGRESS_FILE)["eta_s"] == pytest.approx(44.5)
    assert lines == []
    clock.now = 60.0
    sink.update(90, 100, float("nan"))  # 89 steps in 60 s since the first: 10 to go take 6.7 s
    clock.now = 61.0
    sink.update(100, 100, 0.1)  # the last step is always written
    assert read_progress(tmp_path / PROGRESS_FILE)["step"] == 100 and read_progress(tmp_path / PROGRESS_FILE)["eta_s"] == 0
    assert lines == ["training step 90/100, loss ?, ETA 7 s"]  # one line a minute, a NaN loss shown as '?'


def test_helpers_say_what_they_promise(tmp_path):
    assert estimate_eta((0, 0.0), (0, 0.0), 10) is None and estimate_eta((10, 1.0), (20, 3.0), 120) == pytest.approx(20.0)
    assert [format_duration(s) for s in (None, 45.0, 600.0, 3 * 3600.0)] == ["?", "45 s", "10 min", "3.0 h"]
    assert progress_line("siamese", 5, 10, 3.14159e-6, 61.0) == "siamese step 5/10, loss 3.14e-06, ETA 61 s"
    assert read_progress(tmp_path / "missing.json") is None
    (tmp_path / "bad.json").write_text('{"step": "5"}')
    assert read_progress(tmp_path / "bad.json") is None


def test_training_loops_report_only_inside_a_run_that_asked(tmp_path):
    from physlens.training.loop import optimise

    weight = torch.nn.Parameter(torch.tensor([1.0]))
    step_loss = lambda step: (weight - 0.5).pow(2).sum()  # noqa: E731
    optimise([weight], torch.optim.SGD([weight], lr=0.1), step_loss, steps=3, progress=False)
    report_step(1, 2, 0.5)  # no run asked: nothing happens, nothing is written
    assert not progress_requested()
    seen = []
    with reporting_progress(ProgressSink(heartbeat=seen.append, heartbeat_interval=0.0)):
        assert progress_requested()
        optimise([weight], torch.optim.SGD([weight], lr=0.1), step_loss, steps=3, progress=False, desc="tower")
    assert [line.split(",")[0] for line in seen] == ["tower step 1/3", "tower step 2/3", "tower step 3/3"]
    optimise([weight], torch.optim.SGD([weight], lr=0.1), step_loss, steps=1, progress=False)
    assert len(seen) == 3 and not any(tmp_path.iterdir())


def test_runs_shows_step_loss_and_eta_of_a_running_run(tmp_path, capsys):
    holder = RunDirectory.claim(tmp_path / "live")
    try:
        (holder.staging / PROGRESS_FILE).write_text(json.dumps(
            {"phase": "training", "step": 1200, "total": 2000, "loss": 3.1e-6, "eta_s": 1e6, "updated": 0}))
        (info,) = list_runs(tmp_path)
        assert info.status == "running" and "training step 1200/2000, loss 3.1e-06, ETA 0 s" in info.detail
        import time

        (holder.staging / PROGRESS_FILE).write_text(json.dumps(
            {"phase": "training", "step": 1200, "total": 2000, "loss": 3.1e-6, "eta_s": 1200.0, "updated": time.time()}))
        assert main(["runs", str(tmp_path)]) == 0
        header, row = capsys.readouterr().out.splitlines()
        assert row.split()[:2] == ["live", "running"] and "step 1200/2000, loss 3.1e-06, ETA 20 min" in row
    finally:
        holder.release(keep=False)


def test_a_quiet_run_beats_and_leaves_no_progress_file(tmp_path, monkeypatch, capsys):
    import physlens.studies.oscillator as oscillator

    seen = {}
    train = oscillator.train

    def train_and_look(model, system, config, *, checkpoint_dir, **kwargs):
        result = train(model, system, config, checkpoint_dir=checkpoint_dir, **kwargs)
        seen.update(read_progress(checkpoint_dir.parent / PROGRESS_FILE))
        return result

    monkeypatch.setattr(oscillator, "train", train_and_look)
    monkeypatch.setattr(studies, "ProgressSink", functools.partial(ProgressSink, heartbeat_interval=0.0))
    study = tmp_path / "study.toml"
    study.write_text(STUDY)
    assert main(["run", str(study), "--output", str(tmp_path / "runs"), "--quiet"]) == 0
    err = [line for line in capsys.readouterr().err.splitlines() if ": running for " not in line]  # the idle beats aside
    assert len(err) == 40 and err[0].startswith("physlens: tiny: training step 1/40, loss ")
    assert err[-1].startswith("physlens: tiny: training step 40/40, loss ") and err[-1].endswith("ETA 0 s")
    assert seen["step"] == 40 and seen["total"] == 40
    assert not (tmp_path / "runs" / "tiny" / PROGRESS_FILE).exists()
    assert main(["run", str(study), "--output", str(tmp_path / "runs")]) == 0  # progress bars, no heartbeat lines
    assert "physlens: tiny" not in capsys.readouterr().err


def test_a_quiet_run_beats_between_training_steps_too():
    clock, lines = _Clock(), []
    sink = ProgressSink(heartbeat=lines.append, clock=clock)
    clock.now = 59.0
    assert not sink.beat_if_quiet()  # under a minute since the start
    clock.now = 60.0
    assert sink.beat_if_quiet() and lines == ["running for 60 s"]
    clock.now = 61.0
    sink.update(5, 10, 0.5)  # a step a second after the idle beat: no line yet
    clock.now = 100.0
    assert not sink.beat_if_quiet()
    clock.now = 125.0
    sink.update(10, 10, 0.25)  # a minute after the last line: the step's own beat
    clock.now = 180.0
    assert not sink.beat_if_quiet()  # 55 s after it
    clock.now = 185.0
    assert sink.beat_if_quiet()  # analysing after training: says how long, and the last step
    assert lines[1:] == ["training step 10/10, loss 0.25, ETA 0 s", "running for 3 min; last: training step 10/10, loss 0.25, ETA 0 s"]
    assert not ProgressSink(clock=clock).beat_if_quiet()  # no heartbeat asked: nothing to send


def test_the_beating_thread_speaks_while_the_run_is_busy_and_stops_after():
    import threading

    from physlens._progress import beating_while_quiet

    heard = threading.Event()
    lines = []

    def beat(line: str) -> None:
        lines.append(line)
        heard.set()

    sink = ProgressSink(heartbeat=beat, heartbeat_interval=0.0)
    with beating_while_quiet(sink, poll=0.01):
        assert heard.wait(timeout=60)  # no training step reported, and still a line
    count = len(lines)
    assert lines[0].startswith("running for ") and all(t.name != "physlens-heartbeat" for t in threading.enumerate())
    assert len(lines) == count
    with beating_while_quiet(ProgressSink(), poll=0.01):  # no heartbeat: no thread
        assert all(t.name != "physlens-heartbeat" for t in threading.enumerate())
    with pytest.raises(ValueError, match="poll"):
        with beating_while_quiet(sink, poll=0.0):
            pass
