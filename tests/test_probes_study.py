"""The oscillator study's [analyses]: strict options checked before training, every analysis on a tiny
model, Findings led by the task verdict, and load_run reopening a finished run."""

from __future__ import annotations

import json

import pytest
import torch

from physlens.models import OscillatorTransformer, TransformerConfig
from physlens.studies import StudySpecError, run_study
from physlens.studies.oscillator import parse_study
from physlens.studies.oscillator_analyses import AnalysisContext, parse_analyses, run_analyses
from physlens.studies.report import Report
from physlens.studies.runs import load_run
from physlens.systems import OscillatorSystem, Uniform
from physlens.training.evaluation import Check, TaskVerdict
from physlens.stats import Interval

TINY = {
    "run": ["weights", "algorithms", "swap", "probes", "steering", "ablation", "patching", "saliency", "surrogate"],
    "algorithms": {"n_trajectories": 16, "horizon": 3, "n_reference_trajectories": 32},
    "swap": {"n_pairs": 12},
    "probes": {"hooks": ["hook_embed", "resid_post"], "targets": ["omega0", "gamma", "energy", "omega0_sq_x"],
               "n_trajectories": 40, "n_permutations": 5, "sites": [["blocks.1.hook_resid_post", 5]], "nonlinear": False},
    "steering": {"hooks": ["blocks.0.hook_resid_mid"], "position": 5, "n_trajectories": 6, "n_probe_trajectories": 40, "n_steps": 4},
    "ablation": {"methods": ["zero"], "n_trajectories": 16, "rollout_trajectories": 4, "rollout_steps": 3},
    "patching": {"n_pairs": 6, "position_stride": 3},
    "saliency": {"n_trajectories": 3},
    "surrogate": {"n_trajectories": 40, "rollout_trajectories": 4, "rollout_steps": 5},
}
SYSTEM = OscillatorSystem(omega0=Uniform(1.0, 4.0), gamma=0.1, dtype="float64")


def _model() -> OscillatorTransformer:
    cfg = TransformerConfig(d_model=4, n_layers=2, n_heads=2, d_head=2, n_ctx=6, causal=True, attn_only=False,
                            positional_embedding=True, dtype="float64", seed=11)
    return OscillatorTransformer(cfg).eval()


def _failing_verdict() -> TaskVerdict:
    return TaskVerdict(checks=(Check("median error at step 5 ≤ 0.2", Interval(3.0, 2.0, 4.0, 0.95, 8), False, "median error"),), horizon=5)


def test_every_analysis_runs_and_findings_lead_with_the_verdict(tmp_path):
    model = _model()
    options = parse_analyses(TINY, model, SYSTEM, 6)
    assert list(options) == TINY["run"]
    report = Report("tiny")
    ctx = AnalysisContext(model=model, system=SYSTEM, seq_len=6, loss_positions="all", seed=0, progress=False,
                          verdict=_failing_verdict(), report=report)
    run_analyses(ctx, options)
    analyses = report.metrics["analyses"]
    assert set(TINY["run"]) <= set(analyses)
    assert analyses["probes"]["skipped_constant_targets"] == ["gamma"]
    text = "\n".join(report.lines)
    findings = text[text.index("### Findings"):]
    assert findings.splitlines()[2].startswith("- **The model fails its task (fails 1 of 1 criteria)**")
    assert "Context swap: with the final state fixed" in findings
    assert "Strongest of 3 random-init copies at each pre-registered site" in text  # the probe's control is the strongest copy
    assert {"random-init control 1", "random-init control 2"} <= set(report.metrics["analyses"]["seeds"])
    # An untrained model's rollouts are no oscillation: steering says why it cannot read a frequency.
    assert "Steering was skipped at every site" in findings
    assert "skipped" in analyses["steering"]["sites"]["blocks.0.hook_resid_mid@5"]
    nested = analyses["probes"]["model"]["summary"]["omega0"]["nested_r2"]
    assert f"the nested R² is {nested:.3g}" in findings or "nested R² is" in findings
    # Every analysis drew from its own named stream, and the streams are recorded for load_run.
    seeds = analyses["seeds"]
    assert {"probes trajectories", "swap pairs", "random-init control"} <= set(seeds)
    assert len(set(seeds.values())) == len(seeds)
    report.write(tmp_path)
    json.loads((tmp_path / "metrics.json").read_text())
    for figure in ("algorithms", "context_swap", "probe_r2_omega0"):
        assert (tmp_path / "figures" / f"{figure}.png").exists()


@pytest.mark.parametrize(
    "spec, message",
    [
        ({"run": ["probes", "dance"]}, "run must list distinct analyses"),
        ({"run": ["probes"], "probes": {"hooks": ["resid_post"], "colour": "red"}}, "unknown keys"),
        ({"run": ["probes"], "ablation": {"methods": ["zero"]}}, "is not in \\[analyses\\] run"),
        ({"run": ["probes"], "probes": {"n_trajectories": 0}}, "n_trajectories: must be >= 1"),
        ({"run": ["probes"], "probes": {"sites": [["blocks.7.hook_resid_post", 0]]}}, "do not exist in this model"),
        ({"run": ["probes"], "probes": {"sites": [["blocks.0.hook_resid_post", 6]]}}, "outside the 6 positions"),
        ({"run": ["probes"], "probes": {"n_folds": 2}}, "n_folds: must be >= 3"),
        ({"run": ["steering"], "steering": {"position": 6}}, "steering\\] position: 6 is outside the 6 positions"),
        ({"run": ["steering"], "steering": {"positions": "every"}}, "positions: must be 'probe'"),
        ({"run": ["steering"], "steering": {"alphas": [0.1, 0.2]}}, "alphas: must be a list of numbers holding 0"),
        ({"run": ["algorithms"], "algorithms": {"context_lengths": [1, 2]}}, "context_lengths: must lie in 2..6"),
        ({"run": "probes"}, "run must be list"),
    ],
)
def test_bad_options_are_refused_before_training(spec, message):
    with pytest.raises(StudySpecError, match=message):
        parse_analyses(spec, _model(), SYSTEM, 6)


def test_a_swap_test_on_a_fixed_omega0_system_is_refused():
    fixed = OscillatorSystem(omega0=2.0, gamma=0.1, dtype="float64")
    with pytest.raises(StudySpecError, match=r"\[analyses.swap\] vary: the system's omega0 spans \[2, 2\]"):
        parse_analyses({"run": ["swap"]}, _model(), fixed, 6)
    with pytest.raises(StudySpecError, match=r"\[analyses.patching\] vary"):
        parse_analyses({"run": ["patching"]}, _model(), fixed, 6)


def test_the_mechanism_analysis_reports_its_calibration_match_implied_map_and_patching():
    cfg = TransformerConfig(d_model=4, n_layers=2, n_heads=2, d_head=2, n_ctx=24, causal=True, attn_only=False, dtype="float64", seed=5)
    model = OscillatorTransformer(cfg).eval()
    options = parse_analyses({"run": ["mechanism"], "mechanism": {"n_trajectories": 16, "n_pairs": 12, "calibration_seeds": 1}},
                             model, SYSTEM, 24)
    report = Report("tiny")
    ctx = AnalysisContext(model=model, system=SYSTEM, seq_len=24, loss_positions="all", seed=0, progress=False, report=report)
    run_analyses(ctx, options)
    mechanism = report.metrics["analyses"]["mechanism"]
    assert mechanism["calibration"]["all_right"]  # every calibrated analysis gave the planted answer
    assert mechanism["match"]["verdict"] == "none"  # an untrained network runs none of the candidate algorithms
    assert set(mechanism["patching"]["recovery"]) >= {"L0 resid_pre @ last", "L1 attn_out", "L1 mlp_out", "L1H1"}
    assert mechanism["patching"]["recovery"]["L0 resid_pre @ last"]["estimate"] == pytest.approx(0.0, abs=1e-5)  # the shared final state
    text = "\n".join(report.lines)
    assert "How it predicts" in text[text.index("### Findings"):].splitlines()[2]  # the mechanism answer leads the findings


@pytest.mark.parametrize(
    "spec, message",
    [
        ({"run": ["mechanism"], "mechanism": {"sigmas": [0.01, 0.1]}}, "sigmas: must include 0"),
        ({"run": ["mechanism"], "mechanism": {"sigmas": [0.0, -0.1]}}, "sigmas: must be a list of at least 2 finite"),
        ({"run": ["mechanism"], "mechanism": {"threshold": 1.5}}, "threshold: must lie in"),
        ({"run": ["mechanism"], "mechanism": {"calibration_seeds": 0}}, "calibration_seeds: must be >= 1"),
    ],
)
def test_bad_mechanism_options_are_refused_before_training(spec, message):
    cfg = TransformerConfig(d_model=4, n_layers=1, n_heads=1, d_head=4, n_ctx=24, dtype="float64")
    with pytest.raises(StudySpecError, match=message):
        parse_analyses(spec, OscillatorTransformer(cfg), SYSTEM, 24)
    with pytest.raises(StudySpecError, match="needs a context of at least 21 states"):
        parse_analyses({"run": ["mechanism"]}, _model(), SYSTEM, 6)


STUDY = """
[study]
name = "reopen"
kind = "oscillator"
seed = 3

[system]
omega0 = { range = [1.0, 4.0] }
dtype = "float64"

[model]
preset = "nLA"
n_layers = 1
d_model = 4
d_head = 2
n_ctx = 6
causal = true
dtype = "float64"

[training]
steps = 5
seq_len = 6
loss_positions = 2

[evaluation]
rollout_steps = 4
n_trajectories = 8
target_error = 0.5

[analyses]
run = ["swap"]

[analyses.swap]
n_pairs = 8
"""


def test_load_run_returns_the_trained_model_system_study_and_seeds(tmp_path):
    path = tmp_path / "study.toml"
    path.write_text(STUDY)
    out = run_study(path, output_root=tmp_path / "runs", progress=False)
    loaded = load_run(out)
    assert not loaded.model.training
    assert loaded.system.to_dict()["omega0"] == {"range": [1.0, 4.0]}
    assert loaded.study.train_config.loss_positions == 2
    metrics = json.loads((out / "metrics.json").read_text())
    assert loaded.seeds["model init"] == metrics["seeds"]["model init"] and "swap pairs" in loaded.seeds
    # The reloaded weights are the trained ones: they differ from a fresh init and reproduce the report's swap test.
    fresh = parse_study(__import__("tomllib").loads(STUDY)).model
    assert not torch.equal(fresh.W_E, loaded.model.W_E)
    from physlens.probes.context_swap import context_swap_test

    a, b = loaded.system.sample_swap_pairs(8, 6, seed=loaded.seeds["swap pairs"])
    slope = context_swap_test(loaded.model, a, b, seed=loaded.seeds["swap bootstrap"]).slope.estimate
    assert slope == pytest.approx(metrics["analyses"]["swap"]["model"]["slope"]["estimate"], rel=1e-9)
    with pytest.raises(FileNotFoundError, match="not a complete physlens run"):
        load_run(tmp_path)


ENERGY = {"run": ["energy"], "energy": {"hooks": ["hook_embed", "resid_post"], "positions": [2, 5], "n_trajectories": 40, "n_folds": 3,
                                        "n_controls": 2, "rollout_trajectories": 8, "rollout_steps": 12}}


def _energy_context(model) -> AnalysisContext:
    return AnalysisContext(model=model, system=SYSTEM, seq_len=6, loss_positions="all", seed=0, progress=False, report=Report("tiny"))


def test_the_energy_analysis_probes_the_physical_energy_at_every_site_beside_its_controls():
    from physlens.probes.baselines import input_baseline_r2
    from physlens.seeding import stream_seed

    model = _model()
    ctx = _energy_context(model)
    run_analyses(ctx, parse_analyses(ENERGY, model, SYSTEM, 6))
    energy = ctx.report.metrics["analyses"]["energy"]
    assert set(energy) == {"energy", "decay"}  # physical units: no first-state label
    sites = energy["energy"]["sites"]
    assert len(sites) == 3 * 2  # hook_embed and two resid_post, at two positions
    # The input baseline is the independent function on the same trajectories, at the site's position.
    data = SYSTEM.sample(40, 6, seed=stream_seed(0, "energy trajectories"))
    expected = input_baseline_r2(data.states, data.energy[:, 5], position=5, last_k=3, n_folds=3, seed=stream_seed(0, "energy probes"))
    assert sites["hook_embed@5"]["input_baseline_r2"] == pytest.approx(expected, rel=1e-9)
    # The embedding is linear in the state and the energy quadratic, so no linear probe there can read it,
    # while quadratic features of the input give it (γ and ω0 fixed per trajectory: ω0²x² is a quadratic of two states).
    assert sites["hook_embed@5"]["r2"] < 0.5 < expected
    assert sites["hook_embed@5"]["selectivity_over_baseline"] < 0
    assert energy["decay"]["n_steps"] == 12 and energy["decay"]["n_trajectories"] == 8
    text = "\n".join(ctx.report.lines)
    assert "shuffled-label R²" in text and "Energy decay along rollouts" in text
    assert ctx.findings[-1].startswith("Energy: the physical energy's best site is")


def test_a_scale_equivariant_model_reports_energy_in_first_state_units_under_its_own_name():
    from physlens.studies.oscillator_analyses import FIRST_STATE_UNITS, probe_label_name
    from physlens.systems.oscillator import LABEL_DEGREE

    assert set(FIRST_STATE_UNITS) == set(LABEL_DEGREE)  # every label that scales with the states has a name in those units
    cfg = TransformerConfig(d_model=4, n_layers=2, n_heads=2, d_head=2, n_ctx=6, causal=True, attn_only=False,
                            positional_embedding=True, scale_by_first_state=True, dtype="float64", seed=11)
    model = OscillatorTransformer(cfg).eval()
    ctx = _energy_context(model)
    options = parse_analyses({**ENERGY, "run": ["probes", "energy"],
                              "probes": {"targets": ["omega0", "energy"], "n_trajectories": 40, "n_permutations": 2, "nonlinear": False,
                                         "sites": [["blocks.1.hook_resid_post", 5]], "n_controls": 1}}, model, SYSTEM, 6)
    run_analyses(ctx, options)
    analyses = ctx.report.metrics["analyses"]
    assert set(analyses["energy"]) == {"energy", "energy_over_first_state_sq", "decay", "physical_from_first_state_units_r2"}
    # what E/‖s0‖² alone explains of the physical energy: the independent fit, on the same trajectories
    from physlens.probes.linear_probe import LinearProbe
    from physlens.seeding import stream_seed

    data = SYSTEM.sample(40, 6, seed=stream_seed(0, "energy trajectories"))
    ratio = data.labels(first_state_units=True)["energy"][:, 5, None].numpy()
    expected = LinearProbe(n_folds=3, seed=stream_seed(0, "energy probes")).fit(ratio, data.energy[:, 5].numpy()).cv_r2_
    assert analyses["energy"]["physical_from_first_state_units_r2"]["r2"] == pytest.approx(expected, rel=1e-9)
    assert set(analyses["probes"]["pre_registered"]["blocks.1.hook_resid_post@5"]) == {"omega0", "energy_over_first_state_sq"}
    assert probe_label_name("energy", True) == "energy_over_first_state_sq" and probe_label_name("energy", False) == "energy"
    with pytest.raises(ValueError, match="label must be one of"):
        probe_label_name("temperature", True)
    text = "\n".join(ctx.report.lines)
    assert "physical energy is not representable" in ctx.findings[-1]
    assert "| energy |" not in text  # the probes table never calls E/‖s0‖² the energy


@pytest.mark.parametrize(
    "change, message",
    [
        ({"n_folds": 1}, "n_folds: must be >= 2"),
        ({"rollout_steps": 1}, "rollout_steps: must be >= 2"),
        ({"hooks": ["resid_sideways"]}, "do not exist in this model"),
        ({"positions": [9]}, "outside the 6 positions"),
        ({"n_trajectories": 4}, "n_trajectories: must be at least"),
    ],
)
def test_bad_energy_options_are_refused_before_training(change, message):
    with pytest.raises(StudySpecError, match=message):
        parse_analyses({"run": ["energy"], "energy": {**ENERGY["energy"], **change}}, _model(), SYSTEM, 6)


def test_the_mechanism_analysis_reads_implied_gamma_beside_a_gamma_probe_when_gamma_varies():
    damped = OscillatorSystem(omega0=Uniform(1.0, 4.0), gamma=Uniform(0.05, 0.3), dtype="float64")
    cfg = TransformerConfig(d_model=4, n_layers=2, n_heads=2, d_head=2, n_ctx=24, causal=True, attn_only=False, dtype="float64", seed=5)
    model = OscillatorTransformer(cfg).eval()
    options = parse_analyses({"run": ["mechanism"], "mechanism": {"n_trajectories": 16, "n_pairs": 12, "calibration_seeds": 1}},
                             model, damped, 24)
    ctx = AnalysisContext(model=model, system=damped, seq_len=24, loss_positions="all", seed=0, progress=False, report=Report("tiny"))
    run_analyses(ctx, options)
    rows = ctx.report.metrics["analyses"]["mechanism"]["implied_beside_probes"]
    assert [row["parameter"] for row in rows] == ["omega0"] * 5 + ["gamma"] * 5
    implied = ctx.report.metrics["analyses"]["mechanism"]["implied"]
    assert rows[5]["rmse"] == implied["gamma_rmse"] and rows[5]["r2"] == implied["gamma_r2"]
    assert "Implied γ: RMSE" in ctx.findings[0]


def test_the_gamma_and_unscaled_study_files_run_the_sections_their_questions_need():
    import dataclasses
    from pathlib import Path

    from physlens.studies import load_study

    root = Path(__file__).resolve().parents[1]
    gamma = parse_study(load_study(root / "probes/oscillator_variable_gamma.toml"))
    assert {"mechanism", "energy"} <= set(gamma.analyses)
    variable = parse_study(load_study(root / "probes/oscillator_variable.toml"))
    unscaled = parse_study(load_study(root / "probes/oscillator_variable_unscaled.toml"))
    assert "energy" in unscaled.analyses and not unscaled.model.cfg.scale_by_first_state
    # the same study but for the one flag: same network, initialisation, budget and criteria
    assert dataclasses.asdict(unscaled.model.cfg) == {**dataclasses.asdict(variable.model.cfg), "scale_by_first_state": False}
    assert unscaled.train_config == variable.train_config
    # the same criteria; energies beyond training only where the model sees physical units (the scaled model's
    # report measures its scale equivariance instead)
    assert unscaled.evaluation == dataclasses.replace(variable.evaluation, energy_range=(1.0, 2.0))
    assert variable.evaluation.energy_range is None
    assert unscaled.system.to_dict() == variable.system.to_dict()


def test_a_report_renders_each_figure_when_attached_and_keeps_none_open(tmp_path):
    """A study attaches dozens of figures; each is rendered to PNG and closed at once, so matplotlib never
    holds more than one (its warning at 20 open figures reached users), and write() saves the same PNGs."""
    import matplotlib.pyplot as plt
    from PIL import Image

    plt.close("all")
    report = Report("many")
    for k in range(25):
        fig, ax = plt.subplots(figsize=(2, 1))
        ax.plot([0, 1], [0, k])
        report.figure(f"f{k}", fig, f"figure {k}")
        assert plt.get_fignums() == []
    report.write(tmp_path)
    files = sorted((tmp_path / "figures").glob("*.png"))
    assert len(files) == 25
    assert all(Image.open(f).format == "PNG" and Image.open(f).size[0] > 0 for f in files)
    assert (tmp_path / "report.md").read_text().count("](figures/f") == 25


def test_the_mlp_probe_runs_on_the_targets_nonlinear_names_and_refuses_others():
    model = _model()
    probes = {"targets": ["omega0", "omega0_sq"], "n_trajectories": 40, "n_permutations": 2, "sites": [["blocks.1.hook_resid_post", 5]],
              "n_controls": 1}
    ctx = AnalysisContext(model=model, system=SYSTEM, seq_len=6, loss_positions="all", seed=0, progress=False, report=Report("tiny"))
    run_analyses(ctx, parse_analyses({"run": ["probes"], "probes": {**probes, "nonlinear": ["omega0"]}}, model, SYSTEM, 6))
    mlp = [(m["features"], m["target"]) for m in ctx.report.metrics["analyses"]["probes"]["even_features"] if m["features"].startswith("MLP")]
    assert mlp == [("MLP probe, L1 resid_post @ 5", "omega0")]
    for wrong in (["energy"], [["omega0"]], [1]):
        with pytest.raises(StudySpecError, match=r"nonlinear: must be true, false or a list of the probed targets"):
            parse_analyses({"run": ["probes"], "probes": {**probes, "nonlinear": wrong}}, model, SYSTEM, 6)
