"""The checkpoints the tutorials load are the models their study files train."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from physlens.studies import load_study
from physlens.studies.oscillator import parse_study
from physlens.training import load_checkpoint

ROOT = Path(__file__).resolve().parents[1]

SHIPPED = [
    ("docs/tutorials/models/oscillator_variable", "probes/oscillator_variable.toml"),
    ("docs/tutorials/models/oscillator_variable_gamma", "probes/oscillator_variable_gamma.toml"),
    ("docs/tutorials/models/oscillator_variable_unscaled", "probes/oscillator_variable_unscaled.toml"),
]


@pytest.mark.parametrize(("checkpoint", "study_file"), SHIPPED)
def test_tutorial_checkpoint_is_the_study_default(checkpoint: str, study_file: str) -> None:
    """A tutorial that loads a shipped checkpoint describes the study's default: same architecture,
    same number of training steps, same study name (and the checkpoint's digests verify)."""
    model, metadata = load_checkpoint(ROOT / checkpoint)
    study = parse_study(load_study(ROOT / study_file))
    shipped = dataclasses.asdict(model.cfg)
    expected = dataclasses.asdict(study.model.cfg)
    for key in ("device",):
        shipped.pop(key, None)
        expected.pop(key, None)
    assert shipped == expected, f"{checkpoint} no longer matches {study_file}: retrain it with physlens run {study_file}"
    assert metadata["steps"] == study.train_config.steps
    assert metadata["study"] == study.name
