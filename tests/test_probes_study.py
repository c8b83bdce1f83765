"""The oscillator study's [analyses] runner: strict schema, every analysis on a tiny model, Findings."""

from __future__ import annotations

import json

import pytest
import torch

from physlens.models import OscillatorTransformer, TransformerConfig
from physlens.studies.oscillator import StudyContext
from physlens.studies.oscillator_analyses import parse_analyses, run_analyses, with_acceleration
from physlens.studies.report import Report, StudySpecError, format_number
from physlens.systems import OscillatorSystem, Uniform

TINY = {
    "run": ["weights", "probes", "ablation", "patching", "saliency", "surrogate"],
    "batch_size": 64,
    "probes": {"hooks": ["hook_embed", "resid_post"], "targets": ["omega0", "omega0_sq", "gamma", "energy", "acceleration"], "n_trajectories": 40},
    "ablation": {"methods": ["zero"], "n_trajectories": 16, "rollout_trajectories": 4, "rollout_steps": 3},
    "patching": {"n_pairs": 6, "position_stride": 3},
    "saliency": {"n_trajectories": 3},
    "surrogate": {"n_trajectories": 40, "rollout_trajectories": 4, "rollout_steps": 5},
}


def context(tmp_path=None) -> StudyContext:
    cfg = TransformerConfig(d_model=4, n_layers=2, n_heads=2, d_head=2, n_ctx=6, causal=False, dtype="float64")
    system = OscillatorSystem(omega0=Uniform(1.0, 4.0), gamma=0.1, dtype="float64")
    return StudyContext(model=OscillatorTransformer(cfg).eval(), system=system, seq_len=6, loss_positions="last",
                        eval_energy_range=(1.0, 5.0), seed=0, progress=False, device="cpu")


def test_every_analysis_runs_and_findings_come_from_numbers(tmp_path):
    report = Report("tiny")
    run_analyses(context(), TINY, report)
    analyses = report.metrics["analyses"]
    assert set(TINY["run"]) <= set(analyses)
    assert analyses["probes"]["skipped_constant_targets"] == ["gamma"]
    best = analyses["probes"]["best"]["omega0"]
    text = "\n".join(report.lines)
    assert "### Findings" in text
    assert f"with held-out R² {format_number(best['r2'])}" in text  # the sentence quotes the computed metric
    assert "Of the frequency parametrisations" in text
    assert "The acceleration" in text
    report.write(tmp_path)
    json.loads((tmp_path / "metrics.json").read_text())
    assert (tmp_path / "figures" / "probe_r2_omega0.png").exists()


@pytest.mark.parametrize(
    "spec",
    [
        {"run": ["probes", "dance"]},
        {"run": ["probes"], "probes": {"hooks": ["resid_post"], "colour": "red"}},
        {"run": ["probes"], "ablation": {"methods": ["zero"]}},
        {"run": ["probes"], "probes": {"n_trajectories": 0}},
        {"run": "probes"},
    ],
)
def test_schema_is_strict(spec):
    with pytest.raises(StudySpecError):
        parse_analyses(spec)


def test_defaults_fill_in():
    run, batch_size, options = parse_analyses({"run": ["weights"]})
    assert run == ["weights"] and batch_size == 256 and options["weights"]["rtol"] == 1e-3


def test_acceleration_label_matches_the_equation_of_motion():
    data = OscillatorSystem(omega0=Uniform(1.0, 4.0), gamma=0.2, dtype="float64").sample(5, 30, seed=0)
    acceleration = with_acceleration(data)["acceleration"]
    velocity = data.states[:, :, 1]  # p = ẋ for m = 1
    central = (velocity[:, 2:] - velocity[:, :-2]) / (2 * data.dt)
    torch.testing.assert_close(central, acceleration[:, 1:-1], rtol=0, atol=0.05 * float(acceleration.abs().max()))
