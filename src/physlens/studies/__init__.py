"""Runnable studies: a TOML file names a system, a model, a training recipe and the analyses to run.

Each study kind is a module with ``run(spec, out_dir, *, progress) -> None`` that writes
``report.md``, ``metrics.json`` and ``figures/`` into ``out_dir``.
"""

from __future__ import annotations

import importlib
import os
import re
import time
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from physlens._io import atomic_directory
from physlens.studies.report import Report, StudySpecError, format_number, section

STUDY_KINDS: dict[str, str] = {
    "oscillator": "physlens.studies.oscillator",
    "fma": "physlens.studies.fma",
    "invariants": "physlens.studies.invariants",
}
"""Study kind (``[study] kind`` in the TOML file) → module that runs it."""


def load_study(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Parse and check the ``[study]`` header of a study file; the rest is checked by the study kind.

    A ``[sweep]`` table (read by ``physlens sweep``) is left out of the returned spec, so the file
    still runs as one ordinary study.
    """
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"study file {str(file)!r} does not exist")
    try:
        spec = tomllib.loads(file.read_text())
    except tomllib.TOMLDecodeError as error:
        raise StudySpecError(f"study file {str(file)!r} is not valid TOML: {error}") from None
    spec.pop("sweep", None)
    check_study_header(spec)
    return spec


def check_study_header(spec: Mapping[str, Any]) -> dict[str, Any]:
    """Check the ``[study]`` table of a parsed study (name, kind, seed, description, threads) and return it."""
    header = section(spec, "study", {"name": str, "kind": str, "seed": int, "description": str, "threads": int},
                     required=True)
    for key in ("name", "kind"):
        if key not in header:
            raise StudySpecError(f"[study] needs a {key!r} key")
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", header["name"]) or header["name"].startswith("."):
        raise StudySpecError(f"[study] name must be letters, digits, '_', '-' or '.', got {header['name']!r}")
    if header.get("threads", 0) < 0:
        raise StudySpecError(f"[study] threads must be >= 0 (0 leaves torch's setting), got {header['threads']}")
    if header["kind"] not in STUDY_KINDS:
        raise StudySpecError(f"[study] kind must be one of {sorted(STUDY_KINDS)}, got {header['kind']!r}")
    return header


def _free_directory(root: Path, name: str) -> Path:
    candidate, index = root / name, 1
    while candidate.exists():
        candidate, index = root / f"{name}-{index}", index + 1
    return candidate


def run_study(
    path: str | os.PathLike[str],
    *,
    output_root: str | os.PathLike[str] = "runs",
    overwrite: bool = False,
    progress: bool = True,
    threads: int | None = None,
) -> Path:
    """Run the study file at ``path`` and return the directory holding its report.

    Results go to ``{output_root}/{name}``; if that exists, to ``{name}-1``, ``{name}-2``… unless
    ``overwrite`` is set, so an earlier run is never replaced silently. The directory appears only
    when the study has finished: an interrupted run leaves a ``.partial-`` directory, never a
    report that looks complete.

    ``[study] threads`` (or ``threads`` here, which wins) sets torch's intra-op thread count for
    the run and restores it afterwards: the models are tiny, and on a busy machine extra threads
    cost far more in contention than they gain.
    """
    spec = load_study(path)
    name = spec["study"]["name"]
    root = Path(output_root)
    target = root / name if overwrite else _free_directory(root, name)
    # The study file travels with the run: load_run rebuilds the study from it.
    return run_spec(spec, target, overwrite=overwrite, progress=progress, threads=threads,
                    extra_files={"study.toml": Path(path).read_text()})


def run_spec(
    spec: Mapping[str, Any],
    directory: str | os.PathLike[str],
    *,
    overwrite: bool = False,
    progress: bool = True,
    threads: int | None = None,
    extra_files: Mapping[str, str] | None = None,
) -> Path:
    """Run an already parsed study (a dict as :func:`load_study` returns) into exactly ``directory``.

    What :func:`run_study` does after reading the file, for callers that build or change the spec
    themselves (a sweep's trials): the directory appears only when the study has finished, and
    an existing one is an error unless ``overwrite`` is set. ``extra_files`` (name → text) are
    written into the directory before the study starts, so they travel with the run.
    """
    check_study_header(spec)
    target = Path(directory)
    module = importlib.import_module(STUDY_KINDS[spec["study"]["kind"]])
    threads = spec["study"].get("threads", 0) if threads is None else threads
    if threads < 0:
        raise ValueError(f"threads must be >= 0 (0 leaves torch's setting), got {threads}")
    previous_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    start = time.perf_counter()
    try:
        with atomic_directory(target, overwrite=overwrite) as staging:
            for name, text in (extra_files or {}).items():
                (staging / name).write_text(text)
            module.run(dict(spec), staging, progress=progress)
            elapsed = time.perf_counter() - start
            (staging / "run_time.txt").write_text(f"{elapsed:.1f} s\n")
    finally:
        torch.set_num_threads(previous_threads)
    return target


from physlens.studies.runs import LoadedRun, load_run  # noqa: E402  (after run_spec: runs imports the study kinds)

__all__ = [
    "STUDY_KINDS", "LoadedRun", "Report", "StudySpecError", "check_study_header", "format_number", "load_run",
    "load_study", "run_spec", "run_study", "section",
]
