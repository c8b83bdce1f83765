"""The System / TrajectoryBatch protocols: every built-in system implements them, and a user's system
(the pendulum of docs/tutorials/pendulum.py, defined outside the library) trains, evaluates, probes
and runs under a study file without any change to physlens."""

from __future__ import annotations

import copy
import importlib
import json
import math
import sys
import tomllib
from pathlib import Path

import pytest
import torch
from numpy.testing import assert_allclose

from physlens.models.transformer import OscillatorTransformer, TransformerConfig
from physlens.probes.linear_probe import probe_sweep
from physlens.studies import run_spec
from physlens.studies.oscillator import build_system, parse_study
from physlens.studies.report import StudySpecError
from physlens.systems import (
    CentralPotentialSystem,
    ExactlySolvable,
    OscillatorSystem,
    System,
    TrajectoryBatch,
    Uniform,
    check_system,
    import_system_class,
)
from physlens.training.evaluation import CURRENT_STATE, IN_CONTEXT, LINEAR_AR, MODEL, ORACLE, evaluate_task, float64_system
from physlens.training.trainer import TrainConfig, train

ROOT = Path(__file__).resolve().parents[1]
PENDULUM_KIND = "docs.tutorials.pendulum:PendulumSystem"


@pytest.fixture
def pendulum_module(monkeypatch: pytest.MonkeyPatch):
    """The tutorial's pendulum module, imported from the repository root."""
    monkeypatch.syspath_prepend(str(ROOT))
    return importlib.import_module("docs.tutorials.pendulum")


def test_built_in_systems_and_their_batches_implement_the_protocols(pendulum_module) -> None:
    systems = [OscillatorSystem(), CentralPotentialSystem(), pendulum_module.PendulumSystem()]
    for system in systems:
        assert isinstance(system, System), type(system).__name__
        batch = system.sample(3, 4, seed=0)
        assert isinstance(batch, TrajectoryBatch), type(batch).__name__
        assert batch.states.shape == (3, 4, system.state_dim)
        restored = type(system).from_dict(json.loads(json.dumps(system.to_dict())))
        assert restored.to_dict() == system.to_dict()
        assert_allclose(restored.sample(3, 4, seed=5).states, system.sample(3, 4, seed=5).states)
    assert isinstance(OscillatorSystem(), ExactlySolvable)
    assert not isinstance(pendulum_module.PendulumSystem(), ExactlySolvable)
    assert not isinstance(torch.zeros(2, 3, 2), TrajectoryBatch)


def test_to_draws_the_same_trajectories_in_another_dtype() -> None:
    system = OscillatorSystem(omega0=Uniform(1.0, 4.0), dtype="float32")
    wide = system.to(dtype=torch.float64)
    assert wide.dtype == "float64" and system.dtype == "float32"
    assert wide.sample(5, 6, seed=3).states.dtype == torch.float64
    assert_allclose(wide.sample(5, 6, seed=3).states.float(), system.sample(5, 6, seed=3).states)
    assert float64_system(system).to_dict() == wide.to_dict()
    assert CentralPotentialSystem().to(dtype="float64").sample(2, 3, seed=0).states.dtype == torch.float64


def test_the_oracle_of_an_exactly_solvable_system_is_its_propagator() -> None:
    traj = OscillatorSystem(omega0=Uniform(1.0, 4.0), dtype="float64").sample(4, 5, seed=1)
    predicted = OscillatorSystem().exact_predictor(traj)(traj.states[:, :3])[:, 0]
    assert_allclose(predicted, traj.states[:, 3], atol=1e-13)


def test_orbits_on_a_grid_have_next_steps_and_random_times_do_not() -> None:
    system = CentralPotentialSystem(dtype="float64")
    inputs, targets = system.sample(2, 5, seed=0).inputs_targets()
    assert inputs.shape == targets.shape == (2, 4, 4)
    with pytest.raises(ValueError, match="random times"):
        system.sample(2, 5, seed=0, random_times=True).inputs_targets()
    low = system.sample(200, 2, seed=0, energy_range=(-0.8, -0.7)).energy
    assert float(low.max()) <= -0.7 + 1e-9


def test_check_system_names_what_is_missing() -> None:
    with pytest.raises(TypeError, match=r"lacks \['dt'"):
        check_system(object())


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("pendulum", "package.module:Class"),
        ("a:b:c", "package.module:Class"),
        ("no_such_module_xyz:Thing", "cannot import module 'no_such_module_xyz'"),
        ("docs.tutorials.pendulum:NoSuchClass", "has no class 'NoSuchClass'"),
        ("docs.tutorials.pendulum:PendulumTrajectories", r"must implement physlens.systems.System; it lacks \['sample'"),
    ],
)
def test_a_bad_kind_is_refused_by_name(kind: str, message: str, pendulum_module) -> None:
    with pytest.raises(ValueError, match=message):
        import_system_class(kind)


def test_a_module_in_the_working_directory_is_found(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "my_system_for_test.py").write_text(
        (ROOT / "docs" / "tutorials" / "pendulum.py").read_text()
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    cls = import_system_class("my_system_for_test:PendulumSystem")
    assert cls.__name__ == "PendulumSystem"
    sys.modules.pop("my_system_for_test", None)


def _pendulum_spec(steps: int = 4) -> dict:
    spec = tomllib.loads((ROOT / "docs" / "tutorials" / "pendulum.toml").read_text())
    spec["training"]["steps"] = steps
    spec["evaluation"].update(n_trajectories=16, rollout_steps=4, horizon=2)
    return spec


def test_a_study_builds_the_system_its_kind_names(pendulum_module) -> None:
    system = build_system({"kind": PENDULUM_KIND, "omega0": [1.0, 1.5], "gamma": 0.02})
    assert isinstance(system, pendulum_module.PendulumSystem) and system.omega0 == (1.0, 1.5)
    with pytest.raises(StudySpecError, match=r"\[system\] is invalid: unknown keys \['omega'\]"):
        build_system({"kind": PENDULUM_KIND, "omega": 2.0})
    with pytest.raises(StudySpecError, match=r"\[system\] kind must be a string"):
        build_system({"kind": 3})
    with pytest.raises(StudySpecError, match=r"\[system\] kind 'nope:X'"):
        build_system({"kind": "nope:X"})


def test_a_study_on_a_user_system_is_checked_before_training(pendulum_module) -> None:
    study = parse_study(_pendulum_spec())
    assert type(study.system).__name__ == "PendulumSystem"
    spec = _pendulum_spec()
    spec["model"]["d_in"] = 3
    with pytest.raises(StudySpecError, match="d_in = 3 but the system's states have 2 components"):
        parse_study(spec)
    spec = _pendulum_spec()
    spec["analyses"] = {"run": ["probes"]}
    with pytest.raises(StudySpecError, match=r"\[analyses\] are defined for the damped oscillator"):
        parse_study(spec)


def test_train_evaluate_and_probe_a_user_system(pendulum_module) -> None:
    system = pendulum_module.PendulumSystem(dtype="float64")
    model = OscillatorTransformer(TransformerConfig(n_layers=1, d_model=8, n_heads=1, d_head=8, n_ctx=6, dtype="float64"))
    result = train(model, system, TrainConfig(steps=5, batch_size=16, seq_len=6, loss_positions="last", seed=0), progress=False)
    assert len(result.losses) == 5 and all(math.isfinite(v) for v in result.losses)
    evaluation = evaluate_task(model, system, n_traj=8, context_len=6, n_steps=3, seed=0, n_resamples=50)
    assert ORACLE not in evaluation.scores  # no exact solution, so no oracle row
    assert list(evaluation.scores) == [MODEL, IN_CONTEXT, LINEAR_AR, CURRENT_STATE]
    data = system.sample(64, 6, seed=2)
    probes = probe_sweep(model, data, ["blocks.0.hook_resid_post"], targets=["omega0"], positions=[5], n_folds=3)
    assert probes.targets == ["omega0"] and probes.r2.shape == (1, 1, 1) and probes.control_r2 is not None


def test_a_user_system_runs_as_a_study(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)
    out = run_spec(copy.deepcopy(_pendulum_spec()), tmp_path / "pendulum", progress=False)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["system"]["kind"] == PENDULUM_KIND
    assert "PendulumSystem" in (out / "report.md").read_text()


def test_moved_copy_rebuilds_a_system_through_its_description() -> None:
    from physlens.systems.base import moved_copy

    system = CentralPotentialSystem(dtype="float32")
    moved = moved_copy(system, device="cpu", dtype=torch.float64)
    assert moved.to_dict() == {**system.to_dict(), "dtype": "float64"} and moved is not system
    assert moved_copy(system).to_dict() == system.to_dict()
