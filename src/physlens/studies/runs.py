"""Reopen a finished oscillator run for research code: the trained model, its system, the parsed study, the seeds.

``load_run("runs/oscillator_variable")`` rebuilds everything from the run directory alone — the
study file copied into it, the checkpoint and ``metrics.json`` — so an analysis can be repeated or
extended on exactly the model and random streams the report used.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from physlens.models.transformer import OscillatorTransformer
from physlens.studies.oscillator import OscillatorStudy, parse_study
from physlens.systems.base import System
from physlens.training.checkpoints import load_checkpoint


@dataclass
class LoadedRun:
    """A finished oscillator run, ready for more analysis."""

    directory: Path
    study: OscillatorStudy  # the parsed study file; ``study.model`` is the trained model
    seeds: dict[str, int]  # every named random stream the run drew from: the study's and each analysis's
    metrics: dict[str, Any]  # the run's metrics.json

    @property
    def model(self) -> OscillatorTransformer:
        """The trained model, in eval mode."""
        return self.study.model

    @property
    def system(self) -> System:
        """The system the model was trained on."""
        return self.study.system


def load_run(run_dir: str | os.PathLike[str]) -> LoadedRun:
    """Load the oscillator run in ``run_dir`` (as written by ``physlens run``).

    The study file is parsed again with the current code (so its options are checked as before) and
    its freshly initialised model is replaced by the saved weights, which must match its config.
    """
    directory = Path(run_dir)
    files = {name: directory / name for name in ("study.toml", "metrics.json", "model")}
    missing = [name for name, path in files.items() if not path.exists()]
    if missing:
        raise FileNotFoundError(f"{str(directory)!r} is not a complete physlens run: missing {missing}")
    from physlens.studies import load_study  # the package imports this module

    spec = load_study(files["study.toml"])  # read as `physlens run` reads it (a [sweep] table left out)
    kind = spec["study"]["kind"]
    if kind != "oscillator":
        raise ValueError(f"load_run reopens oscillator runs; {str(directory)!r} holds a {kind!r} study")
    study = parse_study(spec)
    model, _ = load_checkpoint(files["model"], device=study.model.cfg.device)
    if not isinstance(model, OscillatorTransformer) or model.config_dict() != study.model.config_dict():
        raise ValueError(f"the checkpoint in {str(files['model'])!r} does not match the model its study.toml describes")
    study.model = model.eval()
    metrics = json.loads(files["metrics.json"].read_text())
    seeds = {**metrics.get("seeds", {}), **metrics.get("analyses", {}).get("seeds", {})}
    return LoadedRun(directory=directory, study=study, seeds=seeds, metrics=metrics)


__all__ = ["LoadedRun", "load_run"]
