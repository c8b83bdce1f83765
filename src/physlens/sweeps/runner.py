"""Run a sweep's trials on local worker processes or as Ray tasks, into one sweep directory.

Layout of ``{output_root}/{sweep name}/``::

    sweep.json          the sweep's definition (rewritten by every run of the sweep)
    trials/<trial>/     one ordinary run per trial (report.md, metrics.json, figures/, checkpoints)
                        plus study.toml (the trial's complete study) and trial.json
    failures/<trial>.json   the error and traceback of a trial that failed (removed once it succeeds)
    results.csv, results.parquet, summary.csv, report.md, figures/   the aggregation

A trial's directory appears only when the trial has finished, so rerunning the sweep skips
finished trials and runs interrupted or failed ones again; a trial interrupted after a checkpoint
(its ``trials/.partial-<trial>`` kept, as ``physlens run`` keeps an interrupted run) continues from
that checkpoint, on the local backend. The directory name ends in a hash of
the trial's complete study: a directory is only ever written by a trial of exactly that study. An
exclusive lock on the sweep directory keeps a second process from running the same sweep at once.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
import traceback
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pandas as pd

from physlens._io import (
    MAX_RECORD_BYTES,
    atomic_directory,
    atomic_write_json,
    is_partial,
    open_regular,
    read_bounded,
    read_run_record,
    staging_for,
)
from physlens.studies import STUDY_KINDS
from physlens.sweeps.spec import SweepSpec, Trial, key_text, spec_hash

BACKENDS = ("local", "ray")
"""Where trials run: ``local`` worker processes, or ``ray`` tasks (embedded Ray or a cluster)."""

WORKER_DEATHS_ALLOWED = 1
"""A trial whose worker process dies is run again this many times before it counts as failed."""


class SweepError(RuntimeError):
    """A sweep cannot run: its directory is busy or holds another study, or a backend is missing."""


@dataclass(frozen=True)
class TrialTask:
    """What a worker needs to run one trial (picklable; no file of the driver is read)."""

    name: str  # the trial's directory name
    spec: dict[str, Any]  # the complete study
    files: dict[str, str]  # extra files written into the run directory (study.toml, trial.json)
    directory: str | None  # where to write the run; None: return its files to the driver instead
    threads: int  # torch threads for the trial
    resume: bool = False  # continue the trial's interrupted run in .partial-<trial>, if there is one


@dataclass
class TrialOutcome:
    """What came back from one trial."""

    name: str  # the trial's directory name
    ok: bool  # the study finished and its directory is complete
    seconds: float  # wall time of the trial in its worker
    worker: str  # host:pid that ran it
    error: str | None = None  # "ExceptionType: message" when the trial failed
    traceback: str | None = None  # the worker's traceback when the trial failed
    files: dict[str, bytes] | None = None  # the run's files, when the worker could not write them itself


def _close_figures() -> None:
    import matplotlib.pyplot as plt

    plt.close("all")


def execute_trial(task: TrialTask) -> TrialOutcome:
    """Run one trial with :func:`physlens.studies.run_spec` and report how it went; never raises for
    an error of the study itself (that is the outcome), only for interrupts."""
    from physlens.studies import run_spec

    start = time.perf_counter()
    worker = f"{socket.gethostname()}:{os.getpid()}"
    files = None
    try:
        if task.directory is not None:
            run_spec(task.spec, task.directory, progress=False, threads=task.threads, extra_files=task.files,
                     resume=task.resume)
        else:
            with tempfile.TemporaryDirectory(prefix="physlens-trial-") as scratch:
                out = run_spec(task.spec, Path(scratch) / task.name, progress=False, threads=task.threads, extra_files=task.files)
                files = {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}
    except Exception as error:  # noqa: BLE001 - a failing trial is a result, reported with its traceback
        return TrialOutcome(task.name, False, time.perf_counter() - start, worker,
                            error=f"{type(error).__name__}: {error}", traceback=traceback.format_exc())
    finally:
        _close_figures()
    return TrialOutcome(task.name, True, time.perf_counter() - start, worker, files=files)


def _die_with(driver: int) -> None:
    """End this worker as soon as the sweep's driver process ``driver`` ends, however it ends.

    A worker's parent is the fork server, not the driver, so the parent-death signal alone does not
    reach it when the driver is killed (the fork server can outlive it): an orphaned worker would go
    on finishing its trial outside the sweep's lock, racing the rerun that holds it. A daemon thread
    waits on a pidfd of the driver (polls its pid where pidfds do not exist) and kills the worker.
    """
    import select
    import threading

    try:
        handle = os.pidfd_open(driver)
    except ProcessLookupError:
        os._exit(1)
    except (AttributeError, OSError):
        handle = None

    def alive() -> bool:
        try:
            os.kill(driver, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True

    def watch() -> None:
        if handle is not None:
            select.select([handle], [], [])  # readable once the driver has exited
        else:
            while alive():
                time.sleep(0.5)
        os.kill(os.getpid(), signal.SIGKILL)

    threading.Thread(target=watch, name="physlens-sweep-driver-watch", daemon=True).start()


def _init_worker(driver: int | None = None) -> None:
    """One torch thread per worker process (the trials are tiny and the processes share the cores),
    matplotlib's non-interactive backend (a trial saves its figures and never shows one), and the
    worker ends with the driver ``driver`` (and, on Linux, with its parent) instead of running on orphaned."""
    for variable in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[variable] = "1"
    if driver is not None:
        _die_with(driver)
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass
    import matplotlib
    import torch

    matplotlib.use("Agg")
    torch.set_num_threads(1)


# --- the sweep directory -------------------------------------------------------------------------------


@contextmanager
def _locked(directory: Path) -> Iterator[None]:
    import fcntl

    directory.mkdir(parents=True, exist_ok=True)
    handle = os.fdopen(open_regular(directory / ".lock", os.O_RDWR | os.O_CREAT | os.O_APPEND), "a+")
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read(256).strip() or "another process"
            raise SweepError(f"sweep directory {str(directory)!r} is in use by {holder}; wait for it to finish") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
        handle.flush()
        yield
    finally:
        handle.close()


def _check_definition(directory: Path, sweep: SweepSpec) -> None:
    path = directory / "sweep.json"
    if path.is_file():
        try:
            earlier = json.loads(read_bounded(path, MAX_RECORD_BYTES, what="sweep definition"))
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError, ValueError, OSError):
            raise SweepError(f"{path} is not a readable JSON file; is this a sweep directory?") from None
        if earlier.get("base_hash") != spec_hash(sweep.base):
            raise SweepError(
                f"{str(directory)!r} holds sweep {earlier.get('name')!r} of a different study (the study file "
                f"{earlier.get('study_path')!r} or its [sweep] set changed since); give this sweep another name (--name) "
                "or another --output, so the two never share trials"
            )
    elif directory.exists() and any(p.name != ".lock" for p in directory.iterdir()):
        raise SweepError(f"{str(directory)!r} exists and is not a sweep directory (no sweep.json); choose another --name or --output")


def trial_status(directory: Path, trial: Trial) -> str:
    """``finished``, ``failed`` (a failure record and no run) or ``missing`` (never run, or interrupted)."""
    run = directory / "trials" / trial.name
    if run.is_dir():
        record = run / "trial.json"
        try:
            saved = json.loads(read_bounded(record, MAX_RECORD_BYTES, what="trial record"))
        except (OSError, ValueError, RecursionError):
            raise SweepError(f"{run} has no readable trial.json: it is not a trial of this sweep; move it away") from None
        if saved.get("spec_hash") != trial.spec_hash:
            raise SweepError(f"{run} holds a trial of another study (its spec hash differs); move it away")
        return "finished"
    return "failed" if (directory / "failures" / f"{trial.name}.json").is_file() else "missing"


def _trial_files(sweep: SweepSpec, trial: Trial) -> dict[str, str]:
    record = {
        "sweep": sweep.name,
        "trial": trial.name,
        "overrides": {key_text(k): v for k, v in trial.overrides.items()},
        "seed": trial.seed,
        "spec_hash": trial.spec_hash,
    }
    return {"study.toml": trial.study_toml(), "trial.json": json.dumps(record, indent=2, sort_keys=True) + "\n"}


# --- backends --------------------------------------------------------------------------------------------


def _worker_context(preload: list[str]) -> Any:
    """A forkserver context whose server imports ``preload`` once, so workers start in milliseconds
    with torch and the study module loaded; spawn where there is no forkserver. Never plain fork:
    forking a process in which torch has started threads can deadlock."""
    import multiprocessing

    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(preload)  # takes effect when this process first starts its fork server
    return context


def _run_local(tasks: list[TrialTask], workers: int, record: Callable[[TrialOutcome], None], preload: list[str]) -> None:
    if workers == 0:
        for task in tasks:
            record(execute_trial(task))
        return
    context = _worker_context(preload)
    pending = deque(tasks)
    deaths: dict[str, int] = {}
    while pending:
        broken = False
        pool = ProcessPoolExecutor(max_workers=workers, mp_context=context, initializer=_init_worker,
                                   initargs=(os.getpid(),))
        running: dict[Future, TrialTask] = {}
        try:
            while (pending or running) and not broken:
                while pending and len(running) < workers:  # at most one trial queued per worker
                    task = pending.popleft()
                    running[pool.submit(execute_trial, task)] = task
                done, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in done:
                    task = running.pop(future)
                    try:
                        record(future.result())
                    except BrokenProcessPool:
                        broken = True
                        running[future] = task
            if broken:  # a worker died: every trial it may have been running is retried or failed
                for task in running.values():
                    if task.directory is not None and Path(task.directory).is_dir():  # it finished; its result was lost
                        record(TrialOutcome(task.name, True, float("nan"), "local"))
                        continue
                    deaths[task.name] = deaths.get(task.name, 0) + 1
                    if deaths[task.name] > WORKER_DEATHS_ALLOWED:
                        record(TrialOutcome(task.name, False, float("nan"), "local",
                                            error=f"its worker process died {deaths[task.name]} times while it ran"))
                    else:
                        pending.appendleft(replace(task, resume=True))  # from the checkpoints it left
        except BaseException:  # an interrupt: stop the workers too, or they would finish their trials unlocked
            for process in list(getattr(pool, "_processes", {}).values()):
                process.terminate()
            pool.shutdown(wait=False, cancel_futures=True)
            raise
        else:
            pool.shutdown(wait=not broken)


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))  # the cores this process may use (a container may have fewer)
    except AttributeError:
        return os.cpu_count() or 1


def import_ray() -> Any:
    """Import Ray, or raise :class:`SweepError` saying how to install it."""
    try:
        import ray
    except ImportError:
        raise SweepError("the ray backend needs Ray: pip install 'physlens[ray]' (or pip install ray)") from None
    return ray


def _run_ray(tasks: list[TrialTask], workers: int | None, address: str | None, gpus: float,
             record: Callable[[TrialOutcome], None]) -> None:
    ray = import_ray()
    started = not ray.is_initialized()
    if started:
        options: dict[str, Any] = {"include_dashboard": False, "logging_level": logging.WARNING}
        if address is None and not os.environ.get("RAY_ADDRESS"):
            options["num_cpus"] = workers or _cores()
        ray.init(address=address, **options)
    remote = ray.remote(num_cpus=1, num_gpus=gpus, max_retries=WORKER_DEATHS_ALLOWED)(execute_trial)
    refs = {remote.remote(task): task for task in tasks}
    try:
        while refs:
            done, _ = ray.wait(list(refs), num_returns=1)
            for ref in done:
                task = refs.pop(ref)
                try:
                    outcome = ray.get(ref)
                except ray.exceptions.RayError as error:  # the worker died, or Ray could not run the task
                    outcome = TrialOutcome(task.name, False, float("nan"), "ray", error=f"{type(error).__name__}: {error}")
                record(outcome)
    except BaseException:
        for ref in refs:
            ray.cancel(ref, force=True)
        raise
    finally:
        if started:
            ray.shutdown()


# --- the sweep ---------------------------------------------------------------------------------------------


def _resumable_trials(trials_dir: Path, trials: list[Trial]) -> set[str]:
    """Names of the trials whose interrupted run waits in ``.partial-<trial>`` with a checkpoint to resume from."""
    from physlens.studies import CHECKPOINT_DIR
    from physlens.training.checkpoints import latest_checkpoint

    return {t.name for t in trials if read_run_record(staging_for(trials_dir / t.name)) is not None
            and latest_checkpoint(staging_for(trials_dir / t.name) / CHECKPOINT_DIR) is not None}


def _remove_partials(trials_dir: Path, keep: set[str] = frozenset()) -> None:
    """Delete what interrupted trials left behind, except the runs of the trials in ``keep``, which
    resume (only ever called while holding the sweep's lock)."""
    kept = {staging_for(trials_dir / name).name for name in keep}
    for leftover in trials_dir.iterdir():
        if is_partial(leftover) and leftover.name not in kept:
            shutil.rmtree(leftover, ignore_errors=True) if leftover.is_dir() else leftover.unlink(missing_ok=True)


@dataclass
class SweepResult:
    """What :func:`run_sweep` did and where it put it."""

    directory: Path  # the sweep directory
    table: pd.DataFrame  # one row per trial (also results.csv / results.parquet)
    n_trials: int  # trials in the sweep
    n_finished: int  # trials with a complete run directory now
    n_skipped: int  # of which were finished before this call
    failures: dict[str, str] = field(default_factory=dict)  # trial name → error, for trials that failed
    seconds: float = 0.0  # wall time of this call

    @property
    def report(self) -> Path:
        """The sweep report."""
        return self.directory / "report.md"


def run_sweep(
    sweep: SweepSpec,
    *,
    output_root: str | os.PathLike[str] = "runs",
    backend: str = "local",
    workers: int | None = None,
    address: str | None = None,
    progress: bool = True,
    threads: int = 1,
    gpus_per_trial: float = 0.0,
) -> SweepResult:
    """Run every trial of ``sweep`` that has not finished, then write the table and the sweep report.

    ``backend="local"`` runs trials on ``workers`` worker processes (default: one per core, at most
    one per trial; ``0`` runs them one after another in this process); ``backend="ray"`` runs them
    as Ray tasks — on the cluster at ``address``, or on a Ray started here with ``workers`` CPUs
    when no address is given (an already initialised Ray is used as it is). Each trial uses
    ``threads`` torch threads; ``gpus_per_trial`` is what each Ray task asks of the cluster (Ray
    hides GPUs from tasks that ask for none; local workers all see every device). A failed trial is recorded with its error and the others go on; a
    rerun skips finished trials and runs the others again.
    """
    from tqdm.auto import tqdm

    from physlens.sweeps.aggregate import write_outputs

    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {list(BACKENDS)}, got {backend!r}")
    if workers is not None and (workers < 0 or (backend == "ray" and workers == 0)):
        raise ValueError(f"workers must be >= 1 (or 0 for the local backend: run in this process), got {workers}")
    if address is not None and backend != "ray":
        raise ValueError("address is for the ray backend; add backend='ray' (--backend ray)")
    if threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    if gpus_per_trial < 0 or (gpus_per_trial and backend != "ray"):
        raise ValueError(f"gpus_per_trial must be >= 0 and is for the ray backend, got {gpus_per_trial} with backend {backend!r}")
    if backend == "ray":
        import_ray()
    start = time.perf_counter()
    directory = Path(output_root) / sweep.name
    trials = sweep.trials
    with _locked(directory):
        _check_definition(directory, sweep)
        atomic_write_json(directory / "sweep.json", sweep.to_dict())
        trials_dir, failures_dir = directory / "trials", directory / "failures"
        trials_dir.mkdir(exist_ok=True)
        ship = backend == "ray"
        resumable = set() if ship else _resumable_trials(trials_dir, trials)
        _remove_partials(trials_dir, keep=resumable)
        status = {t.name: trial_status(directory, t) for t in trials}
        todo = [t for t in trials if status[t.name] != "finished"]
        n_skipped = len(trials) - len(todo)
        tasks = [TrialTask(t.name, t.spec, _trial_files(sweep, t), None if ship else str(trials_dir / t.name), threads,
                           resume=t.name in resumable) for t in todo]
        failures: dict[str, str] = {}
        bar = tqdm(total=len(trials), initial=n_skipped, desc=f"sweep {sweep.name}", unit="trial", disable=not progress)

        by_name = {t.name: t for t in trials}

        def finished_meanwhile(name: str) -> bool:
            """A trial that failed only because its run appeared meanwhile, complete (its worker
            finished it after all): it is finished, not failed."""
            try:
                return name in by_name and trial_status(directory, by_name[name]) == "finished"
            except SweepError:
                return False

        def record(outcome: TrialOutcome) -> None:
            failure_file = failures_dir / f"{outcome.name}.json"
            if not outcome.ok and outcome.files is None and finished_meanwhile(outcome.name):
                outcome = replace(outcome, ok=True, error=None, traceback=None)
            if outcome.ok:
                if outcome.files is not None:
                    with atomic_directory(trials_dir / outcome.name) as staging:
                        for relative, data in outcome.files.items():
                            (staging / relative).parent.mkdir(parents=True, exist_ok=True)
                            (staging / relative).write_bytes(data)
                failure_file.unlink(missing_ok=True)
            else:
                failures[outcome.name] = outcome.error or "failed"
                atomic_write_json(failure_file, {"trial": outcome.name, "error": outcome.error, "traceback": outcome.traceback,
                                                 "worker": outcome.worker, "seconds": outcome.seconds})
                if progress:
                    bar.write(f"trial {outcome.name} failed: {outcome.error}")
            bar.update(1)
            bar.set_postfix(failed=len(failures))

        try:
            if tasks:
                if backend == "local":
                    n_workers = min(len(tasks), workers if workers is not None else _cores())
                    _run_local(tasks, n_workers, record, [__name__, STUDY_KINDS[sweep.kind], "physlens.sweeps._forkserver_preload"])
                else:
                    _run_ray(tasks, workers, address, gpus_per_trial, record)
        finally:
            bar.close()
            _remove_partials(trials_dir, keep=set() if ship else _resumable_trials(trials_dir, trials))
            table = write_outputs(directory, sweep, backend=backend, seconds=time.perf_counter() - start)
    n_finished = int((table["status"] == "finished").sum())
    return SweepResult(directory, table, len(trials), n_finished, n_skipped, failures, time.perf_counter() - start)


__all__ = ["BACKENDS", "SweepError", "SweepResult", "TrialOutcome", "TrialTask", "execute_trial", "import_ray", "run_sweep",
           "trial_status"]
