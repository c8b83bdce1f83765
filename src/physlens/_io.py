"""Atomic file and directory writes, and exclusively claimed run directories, so that interrupted or
concurrent work never leaves half-written results and never replaces someone else's.

Every file physlens saves goes through a temporary sibling that is fsynced and then renamed into
place; readers therefore see either the old complete file or the new complete file, never a torn one.
A directory is renamed into place only where nothing stands (``renameat2(RENAME_NOREPLACE)`` where
the kernel has it), so a result that appeared meanwhile is never replaced unless asked for.

A run directory (:class:`RunDirectory`) is claimed before any work starts: ``.partial-<name>`` is
created exclusively next to ``<name>`` and locked for as long as the run lives, so two runs can
never own one name; it becomes ``<name>`` only when the run is complete, its files flushed first. A
replaced run is swapped out in one step (``RENAME_EXCHANGE``), and :func:`recover_run` finishes or
undoes whatever a kill cut short, so ``<name>`` never goes missing.

Files physlens reads back (records, locks, study files, checkpoints) are opened without blocking and
refused unless they are regular files (:func:`open_regular`), and read up to a limit.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import json
import os
import re
import secrets
import shutil
import socket
import stat
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

PARTIAL_PREFIX = ".partial-"
LOCK_FILE = ".lock"
RUN_FILE = "run.json"
"""Inside a run directory: who claimed it, what it runs and, once finished, that it is complete."""


MAX_RECORD_BYTES = 1 << 20
"""The most a ``run.json`` (or a lock file) may hold; anything larger is not one physlens wrote."""


class NotARegularFile(OSError):
    """A path that should be a plain file is a FIFO, a device, a socket or a directory: refused by its
    type before anything is read from it (reading a FIFO blocks forever, a device never ends)."""


def _file_type(mode: int) -> str:
    for test, name in ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISSOCK, "a socket"), (stat.S_ISDIR, "a directory")):
        if test(mode):
            return name
    return "not a regular file"


def open_regular(path: str | os.PathLike[str], flags: int = os.O_RDONLY, mode: int = 0o666) -> int:
    """``os.open`` for a file that must be a regular file: opened without blocking (a FIFO would block
    an ordinary open until a writer came), its type checked on the open descriptor, and refused with
    :class:`NotARegularFile` naming the path when it is anything else. Returns a blocking descriptor."""
    fd = os.open(path, flags | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0), mode)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise NotARegularFile(errno.EINVAL, f"{str(path)!r} is {_file_type(info.st_mode)}, not a regular file; "
                                                "refusing to read it", str(path))
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def read_bounded(path: str | os.PathLike[str], limit: int, *, what: str = "file") -> bytes:
    """The bytes of the regular file ``path`` (see :func:`open_regular`), refusing one larger than
    ``limit`` bytes with a ``ValueError`` naming it, so a huge or endless file is never read whole."""
    with os.fdopen(open_regular(path), "rb") as handle:
        data = handle.read(limit + 1)
    if len(data) > limit:
        raise ValueError(f"{what} {str(path)!r} is larger than {limit} bytes; it is not a file physlens wrote or reads")
    return data


def _umask() -> int:
    """The process umask, read without changing it where /proc allows (changing it races with threads)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # some filesystems refuse to open directories; the rename is still atomic
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def fsync_tree(root: Path) -> None:
    """Flush every regular file under ``root`` and every directory in it to disk, so that a directory
    renamed into place afterwards holds complete files even after a power cut (files written with a
    plain ``write_text`` or ``savefig`` are otherwise only in the page cache)."""
    for directory, _, files in os.walk(root):
        for name in files:
            try:
                fd = open_regular(Path(directory) / name)
            except OSError:  # a link or a special file: nothing of ours to flush
                continue
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        _fsync_dir(Path(directory))


def _make_dir(parent: Path, prefix: str) -> Path:
    """A new, uniquely named directory under ``parent`` with the permissions the umask gives (0755
    usually; ``tempfile.mkdtemp`` would make it 0700)."""
    for _ in range(100):
        candidate = parent / f"{prefix}{secrets.token_hex(4)}"
        try:
            os.mkdir(candidate)
        except FileExistsError:
            continue
        return candidate
    raise FileExistsError(f"could not create a temporary directory under {str(parent)!r}")


def _load_renameat2() -> Any:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
        function = libc.renameat2
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    function.restype = ctypes.c_int
    return function


_RENAMEAT2 = _load_renameat2()
_AT_FDCWD, _RENAME_NOREPLACE, _RENAME_EXCHANGE = -100, 1, 2
_UNSUPPORTED = (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.ENOTSUP)


def exchange(first: str | os.PathLike[str], second: str | os.PathLike[str]) -> bool:
    """Swap ``first`` and ``second`` in one atomic step (``renameat2`` with ``RENAME_EXCHANGE``), so
    that neither name is ever missing; ``False`` where the kernel or filesystem cannot."""
    if _RENAMEAT2 is None:
        return False
    if _RENAMEAT2(_AT_FDCWD, os.fsencode(first), _AT_FDCWD, os.fsencode(second), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in _UNSUPPORTED:
        return False
    raise OSError(code, os.strerror(code), str(first), None, str(second))


def rename_noreplace(source: str | os.PathLike[str], target: str | os.PathLike[str]) -> None:
    """Rename ``source`` to ``target``, raising ``FileExistsError`` if ``target`` exists.

    Atomic on Linux (``renameat2`` with ``RENAME_NOREPLACE``); elsewhere, or on a filesystem
    without it, the check and the rename are two steps.
    """
    source, target = Path(source), Path(target)
    if _RENAMEAT2 is not None:
        if _RENAMEAT2(_AT_FDCWD, os.fsencode(source), _AT_FDCWD, os.fsencode(target), _RENAME_NOREPLACE) == 0:
            return
        code = ctypes.get_errno()
        if code == errno.EEXIST or code == errno.ENOTEMPTY:
            raise FileExistsError(errno.EEXIST, f"{str(target)!r} appeared meanwhile; refusing to replace it", str(target))
        if code not in _UNSUPPORTED:
            raise OSError(code, os.strerror(code), str(source), None, str(target))
    if os.path.lexists(target):
        raise FileExistsError(errno.EEXIST, f"{str(target)!r} appeared meanwhile; refusing to replace it", str(target))
    os.rename(source, target)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (temporary file, fsync, rename) and return the path."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp_name = target.parent / f"{PARTIAL_PREFIX}{target.name}.{secrets.token_hex(4)}"
    fd = os.open(tmp_name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # 0644 under the usual umask
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, target)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    _fsync_dir(target.parent)
    return target


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Write UTF-8 ``text`` to ``path`` atomically and return the path."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike[str], payload: Any) -> Path:
    """Write ``payload`` as indented JSON to ``path`` atomically and return the path."""
    return atomic_write_text(path, json.dumps(payload, indent=2, sort_keys=True) + "\n")


@contextmanager
def atomic_directory(path: str | os.PathLike[str], *, overwrite: bool = False) -> Iterator[Path]:
    """Build a directory under a temporary name and rename it to ``path`` only if the block succeeds.

    Yields the temporary directory to write into. If the block raises (or the process dies), the
    final ``path`` is untouched and the partial directory carries the ``.partial-`` prefix, which
    :func:`is_partial` recognises so it is never mistaken for a result. Without ``overwrite`` an
    existing ``path`` is an error, checked before and again at the rename, so a directory that
    appeared meanwhile is never replaced; with ``overwrite=True`` an existing ``path`` is replaced
    only after the new one is complete.
    """
    target = Path(path)
    if target.exists() and not overwrite:
        raise FileExistsError(errno.EEXIST, f"path {str(target)!r} already exists; refusing to overwrite it", str(target))
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = _make_dir(target.parent, f"{PARTIAL_PREFIX}{target.name}.")
    try:
        yield staging
        _move_into_place(staging, target, overwrite=overwrite)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


RETIRED = re.compile(r"\.partial-old-(?P<name>.+)\.[0-9a-f]{8}")
"""Where a replaced directory waits to be deleted: ``.partial-old-<name>.<8 hex digits>``."""


def _retire(path: Path, name: str) -> None:
    """Delete ``path``, an earlier version of ``name``: renamed to a ``.partial-old-`` name first, so
    that a deletion cut short leaves something clearly garbage, never a half-deleted result."""
    retired = path.parent / f"{PARTIAL_PREFIX}old-{name}.{secrets.token_hex(4)}"
    try:
        os.rename(path, retired)
    except FileNotFoundError:  # retired meanwhile by a recovery
        return
    shutil.rmtree(retired, ignore_errors=True)


def _move_into_place(staging: Path, target: Path, *, overwrite: bool) -> None:
    if overwrite and os.path.lexists(target) and exchange(staging, target):
        _retire(staging, target.name)  # the exchange left the earlier one at the staging name
    elif overwrite and target.exists():  # no atomic exchange here: move the earlier one aside, then into place
        retired = _make_dir(target.parent, f"{PARTIAL_PREFIX}old-{target.name}.")
        os.replace(target, retired / target.name)
        try:
            rename_noreplace(staging, target)
        except BaseException:
            os.replace(retired / target.name, target)
            shutil.rmtree(retired, ignore_errors=True)
            raise
        shutil.rmtree(retired, ignore_errors=True)
    else:
        rename_noreplace(staging, target)
    _fsync_dir(target.parent)


def is_partial(path: str | os.PathLike[str]) -> bool:
    """True for files and directories left behind by an interrupted atomic write."""
    return Path(path).name.startswith(PARTIAL_PREFIX)


# --- run directories -----------------------------------------------------------------------------------


class DirectoryTaken(FileExistsError):
    """A run directory's name is already owned: by a finished run, or by a run that is (or was) writing it."""


class DirectoryBusy(DirectoryTaken):
    """A run directory is being written right now by a live process."""


def staging_for(target: str | os.PathLike[str]) -> Path:
    """Where the run that will become ``target`` is built: ``.partial-<name>`` next to it."""
    target = Path(target)
    return target.parent / f"{PARTIAL_PREFIX}{target.name}"


def target_for(staging: str | os.PathLike[str]) -> Path:
    """The run directory a ``.partial-<name>`` staging directory becomes when it is complete."""
    staging = Path(staging)
    if not is_partial(staging):
        raise ValueError(f"{str(staging)!r} is not a staging directory (no {PARTIAL_PREFIX!r} prefix)")
    return staging.parent / staging.name.removeprefix(PARTIAL_PREFIX)


def read_run_record(directory: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The ``run.json`` of a run or staging directory, or ``None`` when it has none or it is unreadable."""
    try:
        record = json.loads(read_bounded(Path(directory) / RUN_FILE, MAX_RECORD_BYTES, what=RUN_FILE))
    except (OSError, ValueError, RecursionError):
        return None
    return record if isinstance(record, dict) else None


def lock_holder(staging: str | os.PathLike[str]) -> str | None:
    """Who holds the lock of a staging directory right now (``"pid N on host"``), or ``None`` if nobody does."""
    import fcntl

    try:
        handle = os.fdopen(open_regular(Path(staging) / LOCK_FILE), "r")
    except OSError:
        return None
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return handle.read(256).strip() or "another process"
        except OSError:
            return None
        fcntl.flock(handle, fcntl.LOCK_UN)
    return None


class RunDirectory:
    """An exclusively claimed run directory, built as ``.partial-<name>`` and renamed to ``<name>``
    when complete.

    :meth:`claim` creates the staging directory exclusively (``mkdir`` fails if it exists) and
    locks it (``flock`` on ``.partial-<name>/.lock``) for as long as the object lives, so a second
    process can neither claim the same name nor resume it while the first runs. :meth:`reopen`
    locks an existing staging directory again to resume the run in it. :meth:`finish` renames it
    into place without replacing anything that appeared meanwhile (or replacing the earlier run,
    if it was claimed with ``overwrite``); :meth:`release` unlocks it and keeps or deletes it.
    """

    def __init__(self, target: Path, staging: Path, overwrite: bool, handle: Any) -> None:
        self.target = target
        self.staging = staging
        self.overwrite = overwrite
        self._handle = handle

    @staticmethod
    def _lock(staging: Path) -> Any:
        import fcntl

        handle = os.fdopen(open_regular(staging / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_APPEND), "a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read(256).strip() or "another process"
            handle.close()
            raise DirectoryBusy(errno.EBUSY, f"{str(staging)!r} is being written by {holder}", str(staging)) from None
        except BaseException:
            handle.close()
            raise
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
        handle.flush()
        return handle

    @classmethod
    def claim(cls, target: str | os.PathLike[str], *, overwrite: bool = False) -> RunDirectory:
        """Claim ``target`` for a new run. Raises :class:`DirectoryTaken` if ``target`` exists (and
        ``overwrite`` is not set) or another run owns its staging directory, live or interrupted."""
        target = Path(target)
        staging = staging_for(target)
        if target.parent.is_dir():
            recover_run(target)  # a finished run or an --overwrite that a kill cut short
        if target.exists() and not overwrite:
            raise DirectoryTaken(errno.EEXIST, f"{str(target)!r} already exists", str(target))
        for parent in (target.parent, *target.parent.parents):
            if parent.exists() and not parent.is_dir():
                raise NotADirectoryError(errno.ENOTDIR, f"{str(parent)!r} is a file, so no run directory can be made under it",
                                         str(parent))
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.mkdir(staging)
        except FileExistsError:
            holder = lock_holder(staging)
            if holder is not None:
                raise DirectoryBusy(errno.EBUSY, f"{str(target)!r} is being written by {holder}", str(target)) from None
            raise DirectoryTaken(
                errno.EEXIST, f"{str(target)!r} has an interrupted run in {str(staging)!r}", str(target)) from None
        try:
            handle = cls._lock(staging)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        claimed = cls(target, staging, overwrite, handle)
        if target.exists() and not overwrite:  # a run finished into this name between the check and the claim
            claimed.release(keep=False)
            raise DirectoryTaken(errno.EEXIST, f"{str(target)!r} already exists", str(target))
        return claimed

    @classmethod
    def reopen(cls, staging: str | os.PathLike[str], *, overwrite: bool = False) -> RunDirectory:
        """Lock the existing staging directory ``staging`` again, to resume the run it holds."""
        staging = Path(staging)
        if not staging.is_dir():
            raise FileNotFoundError(errno.ENOENT, f"{str(staging)!r} does not exist", str(staging))
        return cls(target_for(staging), staging, overwrite, cls._lock(staging))

    def write_record(self, **fields: Any) -> None:
        """Merge ``fields`` into the directory's ``run.json``."""
        record = read_run_record(self.staging) or {}
        record.update(fields)
        atomic_write_json(self.staging / RUN_FILE, record)

    def finish(self) -> Path:
        """Mark the run complete and rename it to its target; returns the target.

        With ``overwrite``, the earlier run and the new one are swapped in one step where the
        filesystem allows, so ``<name>`` always holds one of them; each is marked first (the earlier
        ``retired_by`` the new one's id, the new one ``replaces`` the earlier one's), so that
        :func:`recover_run` can finish or undo a replacement that a kill cut short.
        """
        record = read_run_record(self.staging) or {}
        run_id = record.get("run_id") or secrets.token_hex(16)
        marks: dict[str, Any] = {"run_id": run_id}
        if self.overwrite and self.target.is_dir():
            earlier = read_run_record(self.target) or {}
            marks["replaces"] = earlier.get("run_id") or secrets.token_hex(16)
            atomic_write_json(self.target / RUN_FILE, {**earlier, "run_id": marks["replaces"], "retired_by": run_id})
        fsync_tree(self.staging)  # report.md, metrics.json, figures: on disk before the run is called complete
        self.write_record(status="complete", finished=time.strftime("%Y-%m-%dT%H:%M:%S%z"), **marks)
        _move_into_place(self.staging, self.target, overwrite=self.overwrite)
        (self.target / LOCK_FILE).unlink(missing_ok=True)  # held until the run is in place, so no recovery races it
        self._close()
        return self.target

    def release(self, *, keep: bool) -> None:
        """Unlock the directory, keeping it (to resume later) or deleting it."""
        if not keep and self.staging.exists():
            shutil.rmtree(self.staging, ignore_errors=True)
        self._close()

    def _close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None


def set_aside(target: str | os.PathLike[str]) -> list[Path]:
    """What an ``--overwrite`` cut short left next to ``target``: replaced runs waiting to be deleted
    (``.partial-old-<name>.*``) and a finished run not yet moved into place."""
    target = Path(target)
    found = [child for child in (target.parent.iterdir() if target.parent.is_dir() else ())
             if (match := RETIRED.fullmatch(child.name)) and match["name"] == target.name]
    staging = staging_for(target)
    if (read_run_record(staging) or {}).get("status") == "complete" and lock_holder(staging) is None:
        found.append(staging)
    return sorted(found)


def recover_run(target: str | os.PathLike[str]) -> list[str]:
    """Finish or undo what a kill left of a run's last steps, so that ``target`` holds a complete run
    and nothing is left aside; returns what was done, in words.

    A finished run whose final rename was cut short is moved into place; a replacement cut short
    after the swap deletes the earlier run, before it completes the swap; an earlier run that was
    moved aside (where no atomic swap exists) while nothing stands at ``target`` is put back; empty
    leftovers are deleted. A staging directory whose run is still writing is never touched.
    """
    target = Path(target)
    done: list[str] = []
    staging = staging_for(target)
    record = read_run_record(staging) if staging.is_dir() else None
    if record is not None and record.get("status") == "complete" and lock_holder(staging) is None:
        current = read_run_record(target) if target.is_dir() else None
        if not os.path.lexists(target):
            rename_noreplace(staging, target)
            done.append(f"moved the finished run {str(staging)!r} into place")
        elif current is not None and record.get("retired_by") and record["retired_by"] == current.get("run_id"):
            _retire(staging, target.name)
            done.append(f"deleted the run {str(target)!r} replaced (its replacement is in place)")
        elif current is not None and record.get("replaces") and record["replaces"] == current.get("run_id"):
            _move_into_place(staging, target, overwrite=True)
            done.append(f"finished replacing {str(target)!r} with the run in {str(staging)!r}")
    for leftover in set_aside(target):
        if leftover == staging or not leftover.is_dir():
            continue
        if not os.path.lexists(target):
            inner = leftover / target.name  # moved aside whole, by one rename
            if inner.is_dir():
                rename_noreplace(inner, target)
                done.append(f"put back the run {str(target)!r} that an interrupted --overwrite had moved aside")
        shutil.rmtree(leftover, ignore_errors=True)
    if target.is_dir() and os.path.lexists(target / LOCK_FILE) and (read_run_record(target) or {}).get("status") == "complete":
        (target / LOCK_FILE).unlink(missing_ok=True)
    return done


__all__ = [
    "DirectoryBusy",
    "DirectoryTaken",
    "NotARegularFile",
    "RunDirectory",
    "atomic_directory",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
    "exchange",
    "fsync_tree",
    "is_partial",
    "lock_holder",
    "open_regular",
    "read_bounded",
    "read_run_record",
    "recover_run",
    "rename_noreplace",
    "set_aside",
    "staging_for",
    "target_for",
]
