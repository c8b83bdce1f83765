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
    """Parse and check the ``[study]`` header of a study file; the rest is checked by the study kind."""
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"study file {str(file)!r} does not exist")
    try:
        spec = tomllib.loads(file.read_text())
    except tomllib.TOMLDecodeError as error:
        raise StudySpecError(f"study file {str(file)!r} is not valid TOML: {error}") from None
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
    return spec


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
            (staging / "study.toml").write_bytes(Path(path).read_bytes())  # what load_run rebuilds the study from
            module.run(spec, staging, progress=progress)
            elapsed = time.perf_counter() - start
            (staging / "run_time.txt").write_text(f"{elapsed:.1f} s\n")
    finally:
        torch.set_num_threads(previous_threads)
    return target


from physlens.studies.runs import LoadedRun, load_run  # noqa: E402  (after run_study: runs imports the study kinds)

__all__ = ["STUDY_KINDS", "LoadedRun", "Report", "StudySpecError", "format_number", "load_run", "load_study", "run_study", "section"]
