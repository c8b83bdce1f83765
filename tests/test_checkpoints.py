"""A checkpoint carries the system its model was trained on and the study that trained it, under its digest."""

from __future__ import annotations

import json

import pytest
import torch

from physlens.models import OscillatorTransformer, TransformerConfig
from physlens.systems import CentralPotentialSystem, OscillatorSystem
from physlens.training import LoadedCheckpoint, load_checkpoint, save_checkpoint
from physlens.training.checkpoints import CheckpointError

STUDY_TEXT = '[study]\nname = "x"  # a comment the text keeps\nkind = "oscillator"\n'


def _model() -> OscillatorTransformer:
    cfg = TransformerConfig(d_model=4, n_layers=1, n_heads=1, d_head=4, n_ctx=4, attn_only=True, dtype="float64")
    return OscillatorTransformer(cfg)


def test_the_system_and_study_round_trip_and_the_pair_still_unpacks(tmp_path):
    system = OscillatorSystem(omega0={"range": [1.0, 4.0]}, gamma=0.1, dt=0.05, energy_range=(0.0, 2.0), dtype="float64")
    model = _model()
    save_checkpoint(tmp_path / "ckpt", model, metadata={"steps": 3}, system=system, study=STUDY_TEXT)
    loaded = load_checkpoint(tmp_path / "ckpt")
    assert isinstance(loaded, LoadedCheckpoint)
    rebuilt, metadata = loaded  # the (model, metadata) pair every caller unpacks
    assert metadata == {"steps": 3} and loaded.metadata is metadata and loaded.model is rebuilt
    assert type(loaded.system) is OscillatorSystem and loaded.system.to_dict() == system.to_dict()
    assert loaded.study == STUDY_TEXT
    # The rebuilt system draws exactly the trajectories the original draws for a seed.
    assert torch.equal(loaded.system.sample(3, 5, seed=7).states, system.sample(3, 5, seed=7).states)
    torch.testing.assert_close(rebuilt(torch.ones(1, 2, 2, dtype=torch.float64)), model(torch.ones(1, 2, 2, dtype=torch.float64)))


def test_any_system_class_is_recorded_by_its_path(tmp_path):
    system = CentralPotentialSystem()
    save_checkpoint(tmp_path / "ckpt", _model(), system=system)
    loaded = load_checkpoint(tmp_path / "ckpt", device="cpu")
    assert loaded.system_record["class"] == "physlens.systems.central:CentralPotentialSystem"
    assert type(loaded.system) is CentralPotentialSystem and loaded.system.to_dict() == system.to_dict()
    assert loaded.study is None


def test_a_checkpoint_without_them_loads_with_none(tmp_path):
    save_checkpoint(tmp_path / "ckpt", _model(), metadata={"a": 1})
    assert "system" not in json.loads((tmp_path / "ckpt" / "config.json").read_text())
    loaded = load_checkpoint(tmp_path / "ckpt")
    assert loaded.system is None and loaded.system_record is None and loaded.study is None and loaded.metadata == {"a": 1}


def test_an_edited_system_is_refused_by_the_digest(tmp_path):
    save_checkpoint(tmp_path / "ckpt", _model(), system=OscillatorSystem(omega0=2.0, gamma=0.1))
    config_file = tmp_path / "ckpt" / "config.json"
    config = json.loads(config_file.read_text())
    config["system"]["options"]["omega0"] = 3.0
    config_file.write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="was changed after the checkpoint was written"):
        load_checkpoint(tmp_path / "ckpt")


@pytest.mark.unchecked_types
def test_what_is_not_a_system_or_study_text_is_refused_before_writing(tmp_path):
    with pytest.raises(TypeError, match="system must implement physlens.systems.System"):
        save_checkpoint(tmp_path / "a", _model(), system={"omega0": 2.0})
    with pytest.raises(TypeError, match=r"study must be the text of a study file \(str\), got dict"):
        save_checkpoint(tmp_path / "b", _model(), study={"study": {}})
    assert not any(tmp_path.iterdir())


def test_a_system_that_cannot_be_rebuilt_is_named(tmp_path):
    from physlens.training.checkpoints import _config_digest

    save_checkpoint(tmp_path / "ckpt", _model(), system=OscillatorSystem(omega0=2.0, gamma=0.1))
    config_file = tmp_path / "ckpt" / "config.json"
    config = json.loads(config_file.read_text())
    config["system"]["class"] = "no_such_module_anywhere:System"
    config["digest"]["config"] = _config_digest(config)  # consistently re-signed: a record of a class since removed
    config_file.write_text(json.dumps(config))
    loaded = load_checkpoint(tmp_path / "ckpt")
    with pytest.raises(CheckpointError, match="'no_such_module_anywhere:System' cannot be rebuilt"):
        loaded.system


def test_a_study_run_saves_its_model_with_its_system_and_study_file(tmp_path):
    from physlens.studies import run_study
    from tests.test_run_safety import STUDY

    study = tmp_path / "study.toml"
    study.write_text(STUDY.replace("steps = 40", "steps = 2").replace("checkpoint_every = 20\n", ""))
    out = run_study(study, output_root=tmp_path / "runs", progress=False)
    loaded = load_checkpoint(out / "model")
    assert loaded.study == study.read_text()
    assert loaded.system.to_dict() == OscillatorSystem(omega0=2.0, gamma=0.1, dtype="float64").to_dict()
