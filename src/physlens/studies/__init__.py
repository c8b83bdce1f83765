"""Runnable studies: a TOML file names a system, a model, a training recipe and the analyses to run.

Each study kind is a module with ``run(spec, out_dir, *, progress) -> None`` that writes
``report.md``, ``metrics.json`` and ``figures/`` into ``out_dir`` (and, if it can continue from its
checkpoints, accepts ``resume=True``). Before anything is claimed or trained, the whole study file
is checked: the kind's ``check_study(spec)`` or ``parse_study(spec)`` (every table, key, type and
range), else every table against the kind's declared key tables (``SECTIONS``), each value's type
strictly (see :func:`section`).

A run is built in ``.partial-<name>/`` next to its final directory, claimed exclusively and locked
while it runs, and renamed to ``<name>/`` only when complete. Ctrl-C (or a crash) after a
checkpoint was written keeps it, and :func:`resume_run` (``physlens run --resume``) continues it;
:func:`list_runs` (``physlens runs``) says which runs are complete, running, resumable or
interrupted.
"""

from __future__ import annotations

import codecs
import contextlib
import errno
import hashlib
import importlib
import inspect
import json
import os
import re
import secrets
import socket
import sys
import time
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from threadpoolctl import threadpool_limits

from physlens._io import (
    PARTIAL_PREFIX,
    RUN_FILE,
    DirectoryBusy,
    DirectoryTaken,
    NotARegularFile,
    RETIRED,
    RunDirectory,
    atomic_write_bytes,
    is_partial,
    lock_holder,
    read_bounded,
    read_run_record,
    recover_run,
    set_aside,
    staging_for,
)
from physlens._progress import (
    PROGRESS_FILE,
    ProgressSink,
    beating_while_quiet,
    progress_line,
    read_progress,
    reporting_progress,
)
from physlens._validation import did_you_mean
from physlens.studies.report import Report, StudySpecError, format_number, read_metrics, section

STUDY_KINDS: dict[str, str] = {
    "oscillator": "physlens.studies.oscillator",
    "fma": "physlens.studies.fma",
    "invariants": "physlens.studies.invariants",
}
"""Study kind (``[study] kind`` in the TOML file) → module that runs it."""

MAX_STUDY_BYTES = 4 << 20
"""The largest study file read: study files are a few kilobytes, and a device or a runaway file must not be read whole."""

MAX_NAME_LENGTH = 100
"""The longest ``[study] name``: a run's internal names (``.partial-old-<name>.<hex>``, ``<name>-<n>``, a
sweep's ``<trial>-<hash>``) add to it, and a file name has at most 255 bytes."""

CHECKPOINT_DIR = "checkpoints"
"""Where a run keeps its resumable training checkpoints, inside its directory."""


class RunInterrupted(KeyboardInterrupt):
    """A run was interrupted (Ctrl-C); ``target`` is the run, ``staging`` where its partial state
    is, ``resumable`` whether a checkpoint was kept to continue from."""

    def __init__(self, target: Path, staging: Path, resumable: bool) -> None:
        self.target, self.staging, self.resumable = target, staging, resumable
        if resumable:
            message = (f"interrupted; the checkpoints are kept in {str(staging)!r}: continue with "
                       f"`physlens run --resume {target}`")
        else:
            message = "interrupted before any checkpoint was written; nothing was kept"
        super().__init__(message)


def _in_file(file: Path, error: StudySpecError) -> StudySpecError:
    """``error`` with the study file's name in front (same class, so callers catch it as before)."""
    text = str(error)
    prefix = f"study file {str(file)!r}"
    return error if text.startswith(prefix) else type(error)(f"{prefix}: {text}")


def read_study_text(path: str | os.PathLike[str]) -> str:
    """The text of a study file, refusing with a message naming the file anything that is not a
    UTF-8 text file (a directory, a binary file, UTF-16)."""
    file = Path(path)
    if file.is_dir():
        raise IsADirectoryError(
            f"{str(file)!r} is a directory, not a study file; give a study TOML file (e.g. probes/oscillator.toml), "
            f"or continue an interrupted run with `physlens run --resume {file}`"
        )
    if not os.path.lexists(file):
        raise FileNotFoundError(f"study file {str(file)!r} does not exist")
    try:
        data = read_bounded(file, MAX_STUDY_BYTES, what="study file")
    except NotARegularFile as error:
        raise StudySpecError(f"study file {error.strerror}; give a study TOML file") from None
    except FileNotFoundError:  # a dangling link
        raise FileNotFoundError(f"study file {str(file)!r} does not exist") from None
    for bom, encoding in ((codecs.BOM_UTF32_LE, "UTF-32"), (codecs.BOM_UTF32_BE, "UTF-32"),
                          (codecs.BOM_UTF16_LE, "UTF-16"), (codecs.BOM_UTF16_BE, "UTF-16")):
        if data.startswith(bom):
            raise StudySpecError(f"study file {str(file)!r} is {encoding} text; TOML files must be UTF-8: save it as UTF-8")
    data = data.removeprefix(codecs.BOM_UTF8)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise StudySpecError(
            f"study file {str(file)!r} is not UTF-8 text (byte {error.start} cannot be decoded); is it a binary file?"
        ) from None
    if "\x00" in text:
        raise StudySpecError(f"study file {str(file)!r} contains NUL bytes: it is a binary file (or UTF-16), not a TOML file")
    return text


def _parse_study_text(text: str, file: Path) -> dict[str, Any]:
    try:
        spec = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise StudySpecError(f"study file {str(file)!r} is not valid TOML: {error}") from None
    except RecursionError:
        raise StudySpecError(f"study file {str(file)!r} nests its arrays or tables too deeply to read") from None
    spec.pop("sweep", None)
    try:
        check_study_header(spec)
    except StudySpecError as error:
        raise _in_file(file, error) from None
    return spec


def load_study(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Parse and check the ``[study]`` header of a study file; the rest is checked by :func:`check_spec`.

    A ``[sweep]`` table (read by ``physlens sweep``) is left out of the returned spec, so the file
    still runs as one ordinary study. Errors name the file.
    """
    file = Path(path)
    return _parse_study_text(read_study_text(file), file)


def check_study_header(spec: Mapping[str, Any]) -> dict[str, Any]:
    """Check the ``[study]`` table of a parsed study (name, kind, seed, description, threads) and return it."""
    header = section(spec, "study", {"name": str, "kind": str, "seed": int, "description": str, "threads": int},
                     required=True)
    for key in ("name", "kind"):
        if key not in header:
            raise StudySpecError(f"[study] needs a {key!r} key")
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", header["name"]) or header["name"].startswith("."):
        raise StudySpecError(f"[study] name must be letters, digits, '_', '-' or '.', got {header['name']!r}")
    if len(header["name"]) > MAX_NAME_LENGTH:
        raise StudySpecError(f"[study] name must be at most {MAX_NAME_LENGTH} characters (its run directory and the "
                             f"names physlens builds from it must fit a file name), got {len(header['name'])}")
    if header.get("seed", 0) < 0:
        raise StudySpecError(f"[study] seed must be >= 0, got {header['seed']}")
    if header.get("threads", 0) < 0:
        raise StudySpecError(f"[study] threads must be >= 0 (0 leaves torch's setting), got {header['threads']}")
    if header["kind"] not in STUDY_KINDS:
        raise StudySpecError(f"[study] kind {header['kind']!r} is not a study kind; "
                             f"{did_you_mean([header['kind']], STUDY_KINDS, listing='kind must be one of')}")
    return header


def study_sections(kind: str) -> dict[str, Mapping[str, Any]] | None:
    """The tables a study kind declares (table → key → accepted types), or ``None`` for a kind that
    checks its file with its own ``check_study``/``parse_study``."""
    declared = getattr(importlib.import_module(STUDY_KINDS[kind]), "SECTIONS", None)
    return dict(declared) if declared is not None else None


def _check_devices(spec: Mapping[str, Any]) -> None:
    """Refuse a ``device`` key (in any table) that names no device this machine has, before a model is built on it."""
    for table, values in spec.items():
        if not isinstance(values, Mapping) or not isinstance(values.get("device"), str):
            continue
        value = values["device"]
        try:
            device = torch.device(value)
        except (RuntimeError, ValueError):
            raise StudySpecError(f"[{table}] device must be a torch device such as 'cpu' or 'cuda', got {value!r}") from None
        if device.type not in ("cpu", "cuda", "mps"):
            raise StudySpecError(f"[{table}] device must be 'cpu', 'cuda' or 'mps' (the devices physlens trains on), got {value!r}")
        if device.type == "cuda" and (not torch.cuda.is_available()
                                      or (device.index is not None and device.index >= torch.cuda.device_count())):
            raise StudySpecError(f"[{table}] device {value!r} is not available on this machine "
                                 f"({torch.cuda.device_count()} CUDA device(s)); use 'cpu'")
        if device.type == "mps" and not torch.backends.mps.is_available():
            raise StudySpecError(f"[{table}] device {value!r} is not available on this machine; use 'cpu'")


def check_spec(spec: Mapping[str, Any]) -> None:
    """Check a whole parsed study — every table, key, type and range its kind can check without
    training — and raise :class:`StudySpecError` naming the section and key; nothing is written.

    A ``device`` that this machine does not have is refused in any table. A kind's module provides
    ``check_study(spec)`` or ``parse_study(spec)`` (the oscillator kind's parses every table into
    configs and checks every range), or declares its tables; then unknown
    tables, unknown keys and values of the wrong type are refused here (ranges are the kind's to
    check when it builds its configs).
    """
    header = check_study_header(spec)
    _check_devices(spec)
    module = importlib.import_module(STUDY_KINDS[header["kind"]])
    checker = getattr(module, "check_study", None) or getattr(module, "parse_study", None)
    if checker is not None:
        checker(dict(spec))
        return
    tables = study_sections(header["kind"]) or {}
    unknown = sorted(set(spec) - set(tables) - {"study"})
    if unknown:
        listing = f"a {header['kind']} study has"
        raise StudySpecError(f"unknown sections {unknown}; {did_you_mean(unknown, {'study', *tables}, listing=listing)}")
    for table, keys in tables.items():
        section(spec, table, keys)


def _checked(spec: Mapping[str, Any], file: Path | None) -> None:
    try:
        check_spec(spec)
    except StudySpecError as error:
        raise (_in_file(file, error) if file is not None else error) from None


def _threads(spec: Mapping[str, Any], threads: int | None) -> int:
    threads = spec["study"].get("threads", 0) if threads is None else threads
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 0:
        raise ValueError(f"threads must be an integer >= 0 (0 leaves torch's setting), got {threads!r}")
    return threads


def _blas_threads(threads: int) -> contextlib.AbstractContextManager[Any]:
    """numpy's BLAS (OpenBLAS, MKL) limited to ``threads`` threads while the context is open, then restored;
    0 leaves it as it is. Probes and fits of a study call numpy and scipy as much as torch: on their small
    matrices a BLAS that spreads over every core spends more CPU in its threads than it saves."""
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 0:
        raise ValueError(f"threads must be an integer >= 0 (0 leaves the BLAS setting), got {threads!r}")
    return threadpool_limits(threads, user_api="blas") if threads else contextlib.nullcontext()


def run_study(
    path: str | os.PathLike[str],
    *,
    output_root: str | os.PathLike[str] = "runs",
    overwrite: bool = False,
    progress: bool = True,
    threads: int | None = None,
    heartbeat: bool = False,
) -> Path:
    """Run the study file at ``path`` and return the directory holding its report.

    The whole file is checked first (:func:`check_spec`); errors name the file, the section and
    the key, and nothing is written. Results go to ``{output_root}/{name}``; if that name is taken
    (a finished run, or a run that is writing or was interrupted in ``.partial-{name}``), to
    ``{name}-1``, ``{name}-2``… unless ``overwrite`` is set, so an earlier run is never replaced
    silently and two runs never share a directory. The directory appears only when the study has
    finished; an interrupted run leaves ``.partial-{name}`` with its checkpoints, which
    :func:`resume_run` continues.

    ``[study] threads`` (or ``threads`` here, which wins) sets torch's intra-op thread count, and
    the thread count of numpy's BLAS (through threadpoolctl), for the run and restores both
    afterwards: the models are tiny, and on a busy machine extra threads cost far more in
    contention than they gain.

    While it trains, the run keeps ``progress.json`` (step, loss, time left) in its directory, which
    :func:`list_runs` reads; ``heartbeat`` also prints that as one line on stderr at most once a
    minute (for runs without progress bars).
    """
    file = Path(path)
    text = read_study_text(file)
    spec = _parse_study_text(text, file)
    _checked(spec, file)
    _threads(spec, threads)
    name = spec["study"]["name"]
    root = Path(output_root)
    if overwrite:
        claim = _claim_or_explain(root / name, overwrite=True)
    else:
        index = 0
        while True:
            candidate = root / (name if index == 0 else f"{name}-{index}")
            index += 1
            try:
                claim = RunDirectory.claim(candidate)
                break
            except DirectoryTaken:
                continue
    # The study file travels with the run: load_run and resume_run rebuild the study from it.
    return _execute(spec, claim, progress=progress, threads=threads, extra_files={"study.toml": text}, resume=False,
                    heartbeat=heartbeat)


def _claim_or_explain(target: Path, *, overwrite: bool) -> RunDirectory:
    try:
        return RunDirectory.claim(target, overwrite=overwrite)
    except DirectoryBusy as error:
        raise DirectoryBusy(error.errno, f"{error.strerror}; wait for it to finish or choose another name", error.filename) from None
    except DirectoryTaken as error:
        if target.exists() and not overwrite:
            raise FileExistsError(error.errno, f"path {str(target)!r} already exists; refusing to overwrite it "
                                               "(pass overwrite=True / --overwrite to replace it)", str(target)) from None
        raise DirectoryTaken(
            error.errno, f"{str(target)!r} has an interrupted run in {str(staging_for(target))!r}; continue it with "
                         f"`physlens run --resume {target}`, or delete that directory", str(target)) from None


def run_spec(
    spec: Mapping[str, Any],
    directory: str | os.PathLike[str],
    *,
    overwrite: bool = False,
    progress: bool = True,
    threads: int | None = None,
    extra_files: Mapping[str, str] | None = None,
    resume: bool = False,
) -> Path:
    """Run an already parsed study (a dict as :func:`load_study` returns) into exactly ``directory``.

    What :func:`run_study` does after reading the file, for callers that build or change the spec
    themselves (a sweep's trials): the study is checked completely first, the directory is
    claimed exclusively and appears only when the study has finished, and an existing one is an
    error unless ``overwrite`` is set. ``extra_files`` (name → text) are written into the
    directory before the study starts, so they travel with the run. With ``resume=True`` and an
    interrupted run of ``directory`` waiting in its ``.partial-`` directory, that run is continued
    from its last checkpoint instead (see :func:`resume_run`); without one, the study starts afresh.
    """
    target = Path(directory)
    staging = staging_for(target)
    if resume and staging.is_dir():
        if read_run_record(staging) is not None and (staging / "study.toml").is_file():
            return resume_run(target, progress=progress, threads=threads)
        if lock_holder(staging) is None:  # killed before it wrote anything to resume from: start afresh
            import shutil

            shutil.rmtree(staging, ignore_errors=True)
    _checked(spec, None)
    _threads(spec, threads)
    claim = _claim_or_explain(target, overwrite=overwrite)
    return _execute(spec, claim, progress=progress, threads=threads, extra_files=extra_files or {}, resume=False)


def resume_run(
    run_dir: str | os.PathLike[str], *, progress: bool = True, threads: int | None = None, heartbeat: bool = False
) -> Path:
    """Continue the interrupted run ``run_dir`` (the run's name, ``runs/<name>``, or its
    ``runs/.partial-<name>`` directory) from its last checkpoint and return the finished directory.

    The study is read again from the ``study.toml`` the run keeps, checked, and run with training
    resumed from the latest checkpoint, so the result is what an uninterrupted run gives (the
    metrics byte for byte). A run without checkpoints starts its training from step 0. A complete
    run, a directory that holds no run, or a run another process is writing is an error.
    ``heartbeat`` is :func:`run_study`'s.
    """
    path = Path(run_dir)
    staging = path if is_partial(path) else staging_for(path)
    target = staging.parent / staging.name.removeprefix(PARTIAL_PREFIX)
    if target.parent.is_dir() and recover_run(target) and not staging.is_dir() and target.is_dir():
        return target  # an interrupted --overwrite or final rename, finished or undone: the run is complete
    if not staging.is_dir():
        if path.is_dir() and (read_run_record(path) or {}).get("status") == "complete" or (path / "report.md").is_file():
            raise FileExistsError(f"{str(path)!r} is a complete run; there is nothing to resume")
        raise FileNotFoundError(f"there is no interrupted run at {str(path)!r} (no {str(staging)!r})")
    record = read_run_record(staging)
    if record is None or not (staging / "study.toml").is_file():
        raise ValueError(f"{str(staging)!r} holds no {RUN_FILE} or study.toml (it was left by an older physlens, or "
                         "by an interrupted write); it cannot be resumed: delete it")
    try:
        claim = RunDirectory.reopen(staging, overwrite=bool(record.get("overwrite", False)))
    except DirectoryBusy as error:
        raise DirectoryBusy(error.errno, f"{error.strerror}; it is still running", error.filename) from None
    try:
        file = staging / "study.toml"
        spec = _parse_study_text(read_study_text(file), file)
        _checked(spec, file)
        _threads(spec, threads)
        run_key = _check_identity(staging, record, spec)
        checkpoints = staging / CHECKPOINT_DIR
        if os.path.lexists(checkpoints) and (checkpoints.is_symlink() or not checkpoints.is_dir()):
            raise NotADirectoryError(errno.ENOTDIR, f"{str(checkpoints)!r} should be the run's directory of checkpoints but "
                                                    "is not a directory; move it away to resume", str(checkpoints))
    except BaseException:
        claim.release(keep=True)
        raise
    return _execute(spec, claim, progress=progress, threads=threads, extra_files={}, resume=True, run_key=run_key,
                    heartbeat=heartbeat)


class RunIdentityError(ValueError):
    """A run's inputs (its kept study file, a user's system class) changed after it started, so its
    checkpoints no longer belong to the study it would report: the run is not resumed."""


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _system_source(spec: Mapping[str, Any]) -> str:
    """The digest of the file that defines a user's system class (``[system] kind =
    "package.module:Class"``), so that editing it between an interruption and a resume is caught;
    empty for the built-in systems, which are part of physlens itself."""
    kind = spec.get("system", {}).get("kind") if isinstance(spec.get("system"), Mapping) else None
    if not isinstance(kind, str) or ":" not in kind:
        return ""
    from physlens.systems.base import import_system_class

    try:
        source = inspect.getsourcefile(import_system_class(kind))
        return _sha256(Path(source).read_bytes()) if source else ""
    except (OSError, TypeError, ValueError):
        return ""


def _input_digests(inputs: Mapping[str, bytes], spec: Mapping[str, Any]) -> dict[str, str]:
    digests = {name: _sha256(data) for name, data in sorted(inputs.items())}
    digests["[system] class source"] = _system_source(spec)
    return digests


def _run_key(run_id: str, digests: Mapping[str, str]) -> str:
    """A run's identity: its random id bound to the digest of every input it depends on. Written into
    every checkpoint the run saves, so a checkpoint of another run, or of this run before an input
    was edited, is refused on resume."""
    return _sha256(json.dumps({"run": run_id, "inputs": dict(digests)}, sort_keys=True).encode())


def _check_identity(staging: Path, record: Mapping[str, Any], spec: Mapping[str, Any]) -> str:
    """The run key of the interrupted run in ``staging``, after checking that its inputs are those it started with."""
    run_id, saved = record.get("run_id"), record.get("input_digests")
    if not isinstance(run_id, str) or not isinstance(saved, dict):
        raise RunIdentityError(f"{str(staging / RUN_FILE)!r} records no run identity (the run was started by an older "
                               "physlens, or the file was edited), so its checkpoints cannot be verified; it cannot be "
                               "resumed: delete it and run the study again")
    inputs = {name: read_bounded(staging / name, MAX_STUDY_BYTES, what="run input") for name in saved
              if not name.startswith("[")}
    now = _input_digests(inputs, spec)
    changed = sorted(name for name in set(saved) | set(now) if saved.get(name) != now.get(name))
    if changed:
        raise RunIdentityError(
            f"{', '.join(repr(str(staging / n)) if not n.startswith('[') else n for n in changed)} changed after the run "
            f"in {str(staging)!r} started; its first steps were trained on the original, so resuming would report "
            "settings it was not trained with. Refusing to resume: restore the original, or delete the run and start again"
        )
    if record.get("run_key") != _run_key(run_id, now):
        raise RunIdentityError(f"{str(staging / RUN_FILE)!r} was edited (its run key no longer matches its inputs); "
                               "refusing to resume")
    return _run_key(run_id, now)


def _resumable(staging: Path) -> bool:
    from physlens.training.checkpoints import latest_checkpoint

    return latest_checkpoint(staging / CHECKPOINT_DIR) is not None


def _clear_for_resume(staging: Path, keep: set[str]) -> None:
    """Remove what the interrupted attempt wrote besides its inputs and checkpoints (a half-written
    report, figures, the final model), so the resumed run writes everything afresh."""
    import shutil

    for child in staging.iterdir():
        if child.name in keep or child.name in {RUN_FILE, ".lock", CHECKPOINT_DIR}:
            continue
        shutil.rmtree(child) if child.is_dir() and not child.is_symlink() else child.unlink()
    checkpoints = staging / CHECKPOINT_DIR
    if checkpoints.is_dir():
        for leftover in checkpoints.iterdir():
            if is_partial(leftover):
                shutil.rmtree(leftover, ignore_errors=True) if leftover.is_dir() else leftover.unlink(missing_ok=True)


def _keep_after(error: BaseException, staging: Path) -> bool:
    """Whether a failed run's staging directory is kept: only when it holds a checkpoint to resume
    from, and never after a divergence or a bad study (resuming would repeat them)."""
    from physlens.training.trainer import TrainingDiverged

    if isinstance(error, (TrainingDiverged, StudySpecError)):
        return False
    return staging.is_dir() and _resumable(staging)


class _InterruptRecorder:
    """Remembers every Ctrl-C a run receives. Python raises KeyboardInterrupt wherever the signal lands,
    and where that is a weakref callback or a finaliser the exception is printed and dropped, so the run
    went on and finished with exit 0 (5 of 23 interrupts in an attack). The run checks the record
    before it calls itself complete."""

    def __init__(self) -> None:
        self.received = False
        self._previous: Any = None

    def install(self) -> None:
        import signal
        import threading

        if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
            return  # only the ordinary Ctrl-C handler is wrapped (a test harness or an application may have its own)
        self._previous = signal.getsignal(signal.SIGINT)

        def record(signum: int, frame: Any) -> None:
            self.received = True
            signal.default_int_handler(signum, frame)

        signal.signal(signal.SIGINT, record)

    def raise_if_swallowed(self) -> None:
        if self.received:
            raise KeyboardInterrupt

    def uninstall(self) -> None:
        if self._previous is not None:
            import signal

            signal.signal(signal.SIGINT, self._previous)
            self._previous = None


def _execute(
    spec: Mapping[str, Any], claim: RunDirectory, *, progress: bool, threads: int | None,
    extra_files: Mapping[str, str], resume: bool, run_key: str | None = None, heartbeat: bool = False,
) -> Path:
    previous_threads = torch.get_num_threads()
    staging = claim.staging
    interrupts = _InterruptRecorder()
    try:
        interrupts.install()
        module = importlib.import_module(STUDY_KINDS[spec["study"]["kind"]])
        threads = _threads(spec, threads)
        if threads:
            torch.set_num_threads(threads)
        start = time.perf_counter()
        if resume:
            record = read_run_record(staging) or {}
            _clear_for_resume(staging, set(record.get("inputs", ["study.toml"])))
            claim.write_record(status="running", resumed=time.strftime("%Y-%m-%dT%H:%M:%S%z"), pid=os.getpid(),
                               host=socket.gethostname())
        else:
            inputs = {name: text.encode("utf-8") for name, text in extra_files.items()}
            for name, data in inputs.items():
                atomic_write_bytes(staging / name, data)
            run_id = secrets.token_hex(16)
            digests = _input_digests(inputs, spec)
            run_key = _run_key(run_id, digests)
            claim.write_record(status="running", name=claim.target.name, study=spec["study"]["name"],
                               kind=spec["study"]["kind"], inputs=sorted(extra_files), overwrite=claim.overwrite,
                               run_id=run_id, input_digests=digests, run_key=run_key,
                               started=time.strftime("%Y-%m-%dT%H:%M:%S%z"), pid=os.getpid(), host=socket.gethostname())
        options: dict[str, Any] = {"progress": progress}
        parameters = inspect.signature(module.run).parameters
        if "resume" in parameters:
            options["resume"] = resume
        if "run_key" in parameters:
            options["run_key"] = run_key
        sink = ProgressSink(path=staging / PROGRESS_FILE, heartbeat=_heartbeat(claim.target.name) if heartbeat else None)
        with reporting_progress(sink), beating_while_quiet(sink), _blas_threads(threads):
            module.run(dict(spec), staging, **options)
        (staging / PROGRESS_FILE).unlink(missing_ok=True)  # a finished run has no progress to show
        elapsed = time.perf_counter() - start
        (staging / "run_time.txt").write_text(f"{elapsed:.1f} s\n")
        interrupts.raise_if_swallowed()
        return claim.finish()
    except BaseException as error:
        keep = _keep_after(error, staging)
        claim.release(keep=keep)
        # A Ctrl-C can also surface as another error (Python 3.11 wraps one that lands in class
        # creation in "RuntimeError: Error calling __set_name__"): it is an interrupt all the same.
        interrupted = isinstance(error, KeyboardInterrupt) or (interrupts.received and isinstance(error, Exception))
        if interrupted and not isinstance(error, RunInterrupted):
            raise RunInterrupted(claim.target, staging, keep) from None
        if keep and isinstance(error, Exception):
            error.add_note(f"the checkpoints are kept in {str(staging)!r}: continue with `physlens run --resume {claim.target}`")
        raise
    finally:
        interrupts.uninstall()
        torch.set_num_threads(previous_threads)


def _heartbeat(name: str) -> Callable[[str], None]:
    """Prints a run's progress line on stderr, named after the run."""

    def beat(line: str) -> None:
        print(f"physlens: {name}: {line}", file=sys.stderr, flush=True)

    return beat


# --- listing runs ------------------------------------------------------------------------------------------


@dataclass
class RunInfo:
    """One entry of :func:`list_runs`."""

    name: str  # the run's name (its final directory's name)
    path: Path  # where it is now: the run directory, or its .partial- directory
    status: str  # one of RUN_STATUSES
    kind: str | None  # the study kind, when known
    detail: str  # a short note: the latest checkpoint, who is running it, how to resume


RUN_STATUSES = ("complete", "running", "resumable", "interrupted", "aside", "sweep")
"""What :func:`list_runs` reports: a finished run; one being written by a live process; one interrupted
after a checkpoint (``physlens run --resume`` continues it); one interrupted before any checkpoint
(``--resume`` runs it again from the start, or it was left by an older physlens); a run an interrupted
``--overwrite`` or final rename left aside (``--resume``, or running the study again, puts it in place);
a sweep directory."""


def _checkpoint_detail(staging: Path) -> str:
    from physlens.training.checkpoints import latest_checkpoint

    found = latest_checkpoint(staging / CHECKPOINT_DIR)
    return f"last checkpoint at step {int(found.name.removeprefix('step_'))}" if found is not None else "no checkpoint"


def _running_detail(staging: Path) -> str:
    """Step, loss and time left of a running run, from its progress file (its checkpoints when it has none yet)."""
    found = read_progress(staging / PROGRESS_FILE)
    if found is None:
        return _checkpoint_detail(staging)
    eta, updated = found.get("eta_s"), found.get("updated")
    if isinstance(eta, (int, float)) and isinstance(updated, (int, float)):
        eta = max(float(eta) - max(time.time() - updated, 0.0), 0.0)  # the estimate was made when the file was written
    loss = found.get("loss") if isinstance(found.get("loss"), (int, float)) else None
    return progress_line(found["phase"], found["step"], found["total"], loss, eta if isinstance(eta, float) else None)


def list_runs(root: str | os.PathLike[str] = "runs") -> list[RunInfo]:
    """The runs under ``root`` with their status (see :data:`RUN_STATUSES`), sorted by name."""
    directory = Path(root)
    if not directory.is_dir():
        raise FileNotFoundError(f"{str(directory)!r} is not a directory of runs")
    found: list[RunInfo] = []
    for child in sorted(directory.iterdir()):
        if not child.is_dir():
            continue
        record = read_run_record(child) or {}
        if is_partial(child):
            name = child.name.removeprefix(PARTIAL_PREFIX)
            retired = RETIRED.fullmatch(child.name)
            if retired is not None:
                name = retired["name"]
                if (child / name).is_dir() and not (directory / name).exists():
                    found.append(RunInfo(name, child / name, "aside", None,
                                         f"set aside by an interrupted --overwrite; `physlens run --resume {directory / name}` "
                                         "puts it back"))
                continue  # otherwise an earlier run replaced by --overwrite, waiting to be deleted
            holder = lock_holder(child)
            if holder is None and record.get("status") == "complete":
                if record.get("retired_by"):
                    continue  # an earlier run swapped out by --overwrite, waiting to be deleted
                found.append(RunInfo(name, child, "aside", record.get("kind"),
                                     f"finished, but not yet moved into place; `physlens run --resume {directory / name}` "
                                     "finishes the move"))
                continue
            if holder is not None:
                found.append(RunInfo(name, child, "running", record.get("kind"), f"{holder}; {_running_detail(child)}"))
            elif record and (child / "study.toml").is_file():
                status = "resumable" if _resumable(child) else "interrupted"
                target = child.parent / name
                found.append(RunInfo(name, child, status, record.get("kind"),
                                     f"{_checkpoint_detail(child)}; continue with `physlens run --resume {target}`"))
            else:
                found.append(RunInfo(name, child, "interrupted", None, "left by an interrupted write; cannot be resumed"))
        elif (child / "sweep.json").is_file():
            trials = child / "trials"
            n = sum(1 for t in trials.iterdir() if t.is_dir() and not is_partial(t)) if trials.is_dir() else 0
            found.append(RunInfo(child.name, child, "sweep", None, f"{n} finished trial(s); see {child / 'report.md'}"))
        elif (child / "report.md").is_file() and (child / "metrics.json").is_file():
            kind = record.get("kind")
            if kind is None and (child / "study.toml").is_file():
                try:
                    kind = tomllib.loads(read_bounded(child / "study.toml", MAX_STUDY_BYTES).decode()).get("study", {}).get("kind")
                except (tomllib.TOMLDecodeError, UnicodeDecodeError, OSError, ValueError, RecursionError, AttributeError):
                    kind = None
            found.append(RunInfo(child.name, child, "complete", kind, str(child / "report.md")))
    return sorted(found, key=lambda info: (info.name, info.status))


from physlens.studies.runs import LoadedRun, load_run  # noqa: E402  (after run_spec: runs imports the study kinds)

__all__ = [
    "CHECKPOINT_DIR", "RUN_STATUSES", "STUDY_KINDS", "LoadedRun", "Report", "RunIdentityError", "RunInfo", "RunInterrupted",
    "StudySpecError", "check_spec", "check_study_header", "format_number", "list_runs", "load_run", "load_study",
    "read_metrics", "read_study_text", "resume_run", "run_spec", "run_study", "section", "study_sections",
]
