"""Progress of a long run for whoever watches it from outside: a small progress file, and a heartbeat line.

A run opens :func:`reporting_progress` around its training; every training loop reports its steps
with :func:`report_step`, which does nothing unless a run asked for progress. The file
(``progress.json`` in the run's directory, replaced atomically) holds the phase, the step, the loss
and an estimate of the time left, so ``physlens runs`` can show them; the heartbeat (a line at most
once a minute) is for runs started with ``--quiet``, whose progress bars are off.
"""

from __future__ import annotations

import json
import math
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from physlens._io import atomic_write_bytes, read_bounded

PROGRESS_FILE = "progress.json"
"""The progress file a run keeps in its directory while it trains."""
MAX_PROGRESS_BYTES = 1 << 16
"""The largest progress file read back: it holds a few numbers."""


@dataclass
class ProgressSink:
    """Where a run's training progress goes: ``path`` (a progress file, rewritten at most every
    ``file_interval`` seconds) and ``heartbeat`` (called with one line at most every
    ``heartbeat_interval`` seconds). ``clock`` (seconds, monotonic) is replaceable for tests."""

    path: Path | None = None  # the progress file, or None
    heartbeat: Callable[[str], None] | None = None  # receives a one-line summary, or None
    file_interval: float = 2.0  # seconds between rewrites of the file
    heartbeat_interval: float = 60.0  # seconds between heartbeat lines
    clock: Callable[[], float] = time.monotonic
    _phase: str = field(default="", init=False)
    _first: tuple[int, float] = field(default=(0, 0.0), init=False)  # step and time the phase was first seen here
    _written: float = field(default=-math.inf, init=False)
    _beat: float = field(default=math.nan, init=False)
    _started: float = field(default=math.nan, init=False)
    _last: str = field(default="", init=False)  # the last step's progress line

    def __post_init__(self) -> None:
        self._started = self.clock()

    def update(self, step: int, total: int, loss: float, phase: str = "training") -> None:
        """Record that ``step`` of ``total`` steps of ``phase`` finished with ``loss``."""
        now = self.clock()
        if phase != self._phase:
            self._phase, self._first, self._written = phase, (step, now), -math.inf
            if math.isnan(self._beat):
                self._beat = now
        eta = estimate_eta(self._first, (step, now), total)
        self._last = progress_line(phase, step, total, loss, eta)
        if self.path is not None and (now - self._written >= self.file_interval or step >= total):
            self._written = now
            payload = {"phase": phase, "step": step, "total": total, "loss": loss if math.isfinite(loss) else None,
                       "eta_s": eta, "updated": time.time(), "pid": os.getpid()}
            atomic_write_bytes(self.path, (json.dumps(payload, sort_keys=True) + "\n").encode())
        if self.heartbeat is not None and now - self._beat >= self.heartbeat_interval:
            self._beat = now
            self.heartbeat(self._last)

    def beat_if_quiet(self) -> bool:
        """Send a heartbeat line if none went out for ``heartbeat_interval`` seconds — the run is between
        training steps (evaluating, analysing, writing its report) or before its first — saying how long
        it has run and the last step it reported; return whether a line went out."""
        if self.heartbeat is None:
            return False
        now = self.clock()
        last = self._started if math.isnan(self._beat) else self._beat
        if now - last < self.heartbeat_interval:
            return False
        self._beat = now
        after = f"; last: {self._last}" if self._last else ""
        self.heartbeat(f"running for {format_duration(now - self._started)}{after}")
        return True


def estimate_eta(first: tuple[int, float], now: tuple[int, float], total: int) -> float | None:
    """Seconds left to reach ``total`` steps at the rate from ``first`` to ``now`` (each ``(step, time)``);
    ``None`` before there is a rate to extrapolate."""
    steps, seconds = now[0] - first[0], now[1] - first[1]
    if steps <= 0 or seconds <= 0:
        return None
    return max(total - now[0], 0) * seconds / steps


def format_duration(seconds: float | None) -> str:
    """``"45 s"``, ``"12 min"``, ``"3.5 h"``; ``"?"`` when unknown."""
    if seconds is None or not math.isfinite(seconds):
        return "?"
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def progress_line(phase: str, step: int, total: int, loss: float | None, eta: float | None) -> str:
    """One line: ``training step 1200/2000, loss 3.10e-06, ETA 40 s``."""
    shown = "?" if loss is None or not math.isfinite(loss) else f"{loss:.3g}"
    return f"{phase} step {step}/{total}, loss {shown}, ETA {format_duration(eta)}"


_SINK: ContextVar[ProgressSink | None] = ContextVar("physlens_progress", default=None)


@contextmanager
def reporting_progress(sink: ProgressSink) -> Iterator[ProgressSink]:
    """Send the training steps reported inside the ``with`` block (in this thread or task) to ``sink``."""
    token = _SINK.set(sink)
    try:
        yield sink
    finally:
        _SINK.reset(token)


@contextmanager
def beating_while_quiet(sink: ProgressSink, poll: float = 1.0) -> Iterator[ProgressSink]:
    """Inside the ``with`` block, a daemon thread calls ``sink.beat_if_quiet()`` every ``poll`` seconds, so
    a quiet run still says it is alive at most once a ``heartbeat_interval`` while no training step is
    reported (its analyses can take minutes). Does nothing when ``sink`` has no heartbeat."""
    if not (poll > 0 and math.isfinite(poll)):
        raise ValueError(f"poll must be a positive number of seconds, got {poll!r}")
    if sink.heartbeat is None:
        yield sink
        return
    stop = threading.Event()

    def watch() -> None:
        while not stop.wait(poll):
            sink.beat_if_quiet()

    thread = threading.Thread(target=watch, name="physlens-heartbeat", daemon=True)
    thread.start()
    try:
        yield sink
    finally:
        stop.set()
        thread.join()


def progress_requested() -> bool:
    """Whether a run opened a progress sink here, so that :func:`report_step` records steps (a loop can skip
    summarising its loss when nobody asked)."""
    return _SINK.get() is not None


def report_step(step: int, total: int, loss: float, phase: str = "training") -> None:
    """Report a finished training step to the run's progress sink, if it opened one (else nothing happens)."""
    sink = _SINK.get()
    if sink is not None:
        sink.update(step, total, loss, phase)


def read_progress(path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The progress file at ``path`` (regular files only, within a bound), or ``None`` if there is none
    or it cannot be read as one."""
    try:
        value = json.loads(read_bounded(path, MAX_PROGRESS_BYTES, what="progress file").decode("utf-8"))
    except (OSError, ValueError, RecursionError):
        return None
    keys = {"phase": str, "step": int, "total": int}
    if not isinstance(value, dict) or any(not isinstance(value.get(k), t) for k, t in keys.items()):
        return None
    return value


__all__ = [
    "PROGRESS_FILE", "ProgressSink", "beating_while_quiet", "estimate_eta", "format_duration", "progress_line", "progress_requested",
    "read_progress", "report_step",
    "reporting_progress",
]
