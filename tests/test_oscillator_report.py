"""The main job's report says what its task table can and cannot show, with numbers from its own metrics."""

from __future__ import annotations

import json

import numpy as np
import pytest

from physlens.studies import load_study
from physlens.studies.oscillator import _propagator_extended, analyse_trained, oracle_round_off, parse_study, run
from physlens.systems import OscillatorSystem, propagator
from physlens.studies.report import format_number
from physlens.training.evaluation import CURRENT_STATE, LINEAR_AR, evaluate_task, fit_linear_references

MAIN = """
[study]
name = "main_tiny"
kind = "oscillator"
seed = 0

[system]
omega0 = 2.0
gamma = 0.1
dt = 0.1
energy_range = [0.0, 1.0]
dtype = "float64"

[model]
preset = "OLA"
attn_window = 1
n_ctx = 8
dtype = "float64"

[training]
steps = 300
batch_size = 64
seq_len = 8
lr = 1e-2
schedule = "cosine"
min_lr = 1e-5
loss_positions = "all"

[evaluation]
rollout_steps = 60
n_trajectories = 32
context_len = 1
energy_range = [1.0, 5.0]
target_error = 1e-5
target_error_ood = 1e-5
"""


@pytest.fixture(scope="module")
def main_run(tmp_path_factory):
    directory = tmp_path_factory.mktemp("main")
    (directory / "study.toml").write_text(MAIN)
    run(load_study(directory / "study.toml"), directory / "out", progress=False)
    return (directory / "out" / "report.md").read_text(), json.loads((directory / "out" / "metrics.json").read_text())


def test_the_analysis_phase_of_a_study_without_analyses_is_its_task_evaluation(tmp_path):
    study = parse_study(load_study_text(MAIN, tmp_path))
    report = analyse_trained(study, study.model, None, progress=False)
    timings = report.timings
    assert timings["evaluation_s"] > 0 and timings["evaluation_cpu_s"] > 0
    assert "analyses" not in timings  # this study has none: the phase is the task evaluation
    assert timings["analysis_phase_s"] == timings["evaluation_s"]
    assert "## Setup" not in "\n".join(report.lines)  # no training result given: no setup section
    assert "## Does the model do its task?" in "\n".join(report.lines)


def test_the_analysis_phase_adds_up_its_sections(tmp_path):
    spec = MAIN + """
[analyses]
run = ["weights", "swap"]

[analyses.swap]
n_pairs = 8
"""
    spec = spec.replace('omega0 = 2.0', 'omega0 = { range = [1.0, 4.0] }').replace('attn_window = 1\n', '')
    study = parse_study(load_study_text(spec, tmp_path))
    report = analyse_trained(study, study.model, None, progress=False)
    timings = report.timings
    assert list(timings["analyses"]) == list(timings["analyses_cpu_s"]) == ["weights", "swap"]
    assert timings["analysis_phase_s"] == pytest.approx(timings["evaluation_s"] + sum(timings["analyses"].values()))
    assert timings["analysis_phase_cpu_s"] == pytest.approx(timings["evaluation_cpu_s"] + sum(timings["analyses_cpu_s"].values()))


def load_study_text(text: str, directory) -> dict:
    (directory / "study.toml").write_text(text)
    return load_study(directory / "study.toml")


def test_the_report_says_why_the_two_linear_rows_are_identical(main_run):
    text, metrics = main_run
    answers = metrics["what_it_answers"]
    assert answers["linear_ar_minus_current_state_max"] == 0.0  # one state of context: the same fitted map
    assert f"Why the '{LINEAR_AR}' and '{CURRENT_STATE}' rows are identical" in text
    assert "`[evaluation] context_len = 1`" in text
    assert f"trajectory and step is {format_number(answers['linear_ar_minus_current_state_max'])}." in text


def test_the_report_says_there_is_nothing_to_beat_and_why_the_oracle_errs(main_run):
    text, metrics = main_run
    answers = metrics["what_it_answers"]
    predictors = metrics["task_in_distribution"]["predictors"]
    assert answers["oracle_error"] == predictors["oracle: exact propagator"]["rollout_median"]["60"]["estimate"]
    assert answers["linear_ar_error"] == predictors[LINEAR_AR]["rollout_median"]["60"]["estimate"]
    assert "There is no reference to beat here beyond round-off" in text
    assert f"the fitted linear AR's median error at step 60 is {format_number(answers['linear_ar_error'])}" in text
    round_off = answers["oracle_round_off"]
    # the report's oracle row is the float64 propagator stepped in float64
    assert round_off["float64_propagator_float64_steps"] == pytest.approx(answers["oracle_error"], rel=0.05)
    # in extended precision throughout, the error falls to the truth's own float64 rounding
    assert round_off["extended_propagator_extended_steps"] < round_off["float64_propagator_extended_steps"]
    assert f"Why the model can beat the oracle at step 60" in text
    assert f"Its median error at step 60 is {format_number(round_off['float64_propagator_float64_steps'])}" in text
    assert round_off["extended_propagator_extended_steps"] == pytest.approx(round_off["float64_truth_rounding"], rel=0.05)
    assert f"the propagator itself in extended precision gives {format_number(round_off['extended_propagator_extended_steps'])}" in text
    assert f"its largest entry is off the exact e^{{AΔt}} by {format_number(round_off['float64_propagator_max_entry_error'])}" in text
    # the window-1 model's own map, read off its weights, is reported beside the oracle's
    assert f"largest entry is off e^{{AΔt}} by {format_number(round_off['learned_map_max_entry_error'])}" in text
    verb = "beats" if answers["model_error"] < answers["oracle_error"] else "does not beat"
    assert f"it {verb} the oracle by" in text


def test_the_report_says_the_ood_check_is_passed_by_any_linear_model(main_run):
    text, metrics = main_run
    answers = metrics["what_it_answers"]
    assert "The out-of-distribution check is passed by any linear model" in text
    assert f"reaches {format_number(answers['ood_linear_ar_error'])}" in text
    assert answers["ood_linear_ar_error"] < 1e-10  # the fitted linear map never saw these energies and is still exact


def test_the_extended_propagator_is_the_float64_one_to_its_rounding():
    exact = _propagator_extended(2.0, 0.1, 0.1)
    rounded = propagator(2.0, 0.1, 0.1).double().numpy()
    assert exact.dtype == np.longdouble
    assert float(np.abs(rounded - exact).max()) < 4e-16


def test_oracle_round_off_needs_fixed_parameters():
    system = OscillatorSystem(omega0={"range": [1.0, 4.0]}, gamma=0.1, dtype="float64")
    references = fit_linear_references(system, 1, seed=0, n_traj=16)
    evaluation = evaluate_task(lambda s: s[:, -1:], system, n_traj=4, context_len=1, n_steps=3, seed=0, references=references,
                               n_resamples=10)
    with pytest.raises(ValueError, match="fixed omega0 and gamma"):
        oracle_round_off(system, evaluation)
