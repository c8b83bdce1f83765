"""The invariants study end to end on a tiny configuration, its spec checks, and its figures."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import sympy
from matplotlib.figure import Figure

from physlens.plots.invariants import plot_bottleneck_matches, plot_formula_front, plot_latent_vs_invariant
from physlens.probes.symbolic import FormulaCandidate
from physlens.studies import STUDY_KINDS, StudySpecError, run_study

TINY = """
[study]
name = "tiny-invariants"
kind = "invariants"
seed = 0

[orbits]
n_train = 200
n_test = 50
states_per_orbit = 8

[siamese]
d_hidden = 16
steps = 60
batch_size = 128
n_test_pairs = 500
n_seeds = 2

[latent]
n_distill = 300

[bottleneck]
steps = 30
batch_size = 64
d_hidden = 8
n_test = 200

[fma]
n_models = 4
epochs = 30
n_train = 100
n_val = 100

[transformer]
enabled = false

[distill]
max_terms = 2
unary = []
"""


def test_tiny_study_writes_report_metrics_and_figures(tmp_path: Path) -> None:
    assert STUDY_KINDS["invariants"] == "physlens.studies.invariants"
    spec = tmp_path / "tiny.toml"
    spec.write_text(TINY)
    out = run_study(spec, output_root=tmp_path / "runs", progress=False)
    metrics = json.loads((out / "metrics.json").read_text())
    siamese = metrics["siamese"]
    for key in ("test_accuracy", "train_accuracy", "latent_linear_r2_L", "coef_ratio", "distilled"):
        assert key in siamese
    assert 0.0 <= siamese["test_accuracy"] <= 1.0
    assert metrics["orbits"]["max_drift_L"] < 1e-10
    assert set(metrics["bottleneck"]["raw"]) == {"ω0", "ω0²", "Ω", "energy"}
    assert metrics["fma"]  # at least one mode was distilled
    report = (out / "report.md").read_text()
    assert "Siamese" in report and "bottleneck" in report and "F = m·a" in report
    # every accuracy beside a random-init tower's, with its interval
    assert set(siamese["control_accuracy"]) == {"train", "test", "test_gap_pairs"}
    assert all(0.0 <= value <= 1.0 for value in siamese["control_accuracy"].values())
    assert "random-init tower (control)" in report and "Wilson" in report
    # the slides' protocol, and the latent against every conserved quantity, over seeds, beside its controls
    assert siamese["min_gap"] == 0.0 and "the slides' protocol" in report
    assert set(siamese["invariant_r2"]) == {"trained tower", "random-init tower (control)", "energy-only latent (control)"}
    assert siamese["invariant_r2"]["energy-only latent (control)"]["E"] > 0.999
    assert len(siamese["seeds"]) == 2 and 0.0 <= siamese["pure_L_share"] <= 1.0
    assert "Runge–Lenz" in report and "What the network is told" in report
    for name in ("latent_vs_L", "siamese_formula_front", "bottleneck_vs_candidates", "loss_curves"):
        assert (out / "figures" / f"{name}.png").is_file()


def test_study_refuses_unknown_keys(tmp_path: Path) -> None:
    spec = tmp_path / "bad.toml"
    spec.write_text(TINY.replace("d_hidden = 16", "d_hidden = 16\nwidth = 3"))
    with pytest.raises(StudySpecError, match="unknown keys"):
        run_study(spec, output_root=tmp_path / "runs", progress=False)
    spec.write_text(TINY.replace("[orbits]", "[orbits]\nenergy_range = [-0.5, 0.2]"))
    with pytest.raises(StudySpecError, match="bound orbits"):
        run_study(spec, output_root=tmp_path / "runs", progress=False)
    spec.write_text(TINY.replace("n_seeds = 2", "n_seeds = 0"))
    with pytest.raises(StudySpecError, match="n_seeds"):
        run_study(spec, output_root=tmp_path / "runs", progress=False)
    spec.write_text(TINY.replace("n_seeds = 2", "n_seeds = 2\nmin_gap = -0.1"))
    with pytest.raises(StudySpecError, match="min_gap"):
        run_study(spec, output_root=tmp_path / "runs", progress=False)
    for key, line in (("degree", "n_distill = 300\ndegree = 0"), ("n_distill", "n_distill = 0")):  # refused before training
        spec.write_text(TINY.replace("n_distill = 300", line))
        with pytest.raises(StudySpecError, match=rf"\[latent\] {key}"):
            run_study(spec, output_root=tmp_path / "runs", progress=False)
    spec.write_text(TINY + "\n[extra]\nx = 1\n")
    with pytest.raises(StudySpecError, match="unknown sections"):
        run_study(spec, output_root=tmp_path / "runs", progress=False)


def test_plots_return_figures_and_check_input() -> None:
    rng = np.random.default_rng(0)
    invariant = rng.normal(size=200)
    assert isinstance(plot_latent_vs_invariant(3 * invariant + 1, invariant, color=invariant**2, color_name="E"), Figure)
    with pytest.raises(ValueError, match="same length"):
        plot_latent_vs_invariant(invariant[:10], invariant)
    x = sympy.Symbol("x")
    front = [FormulaCandidate(sympy.Float(0.5), 1, 1.0, 1.0), FormulaCandidate(2 * x, 3, 1e-3, 1e-3)]
    assert isinstance(plot_formula_front(front, selected=front[1], title="t"), Figure)
    with pytest.raises(ValueError, match="at least one formula"):
        plot_formula_front([])
    assert isinstance(plot_bottleneck_matches(invariant, {"a": invariant, "b": -invariant}), Figure)
    with pytest.raises(ValueError, match="200 values"):
        plot_bottleneck_matches(invariant, {"a": invariant[:5]})


def test_distill_settings_reach_every_formula_and_are_checked_before_training(tmp_path: Path) -> None:
    spec = tmp_path / "one_term.toml"
    spec.write_text(TINY.replace("[distill]\nmax_terms = 2\nunary = []", "[distill]\nmax_terms = 1\nmax_degree = 2\nunary = []"))
    out = run_study(spec, output_root=tmp_path / "runs", progress=False)
    metrics = json.loads((out / "metrics.json").read_text())
    m, a = sympy.symbols("m a")
    for mode, entry in metrics["fma"].items():
        formula = sympy.sympify(entry["formula"], locals={"m": m, "a": a})
        assert len([t for t in sympy.Add.make_args(formula) if t.free_symbols]) <= 1, (mode, formula)  # [distill] max_terms
        assert "Max" in entry["exact_form"]  # the exact form is written from the hidden units, whatever [distill] says
    report = (out / "report.md").read_text()
    assert "at most 1 term," in report
    for bad, message in (("unary = []", "unary = ['tan']"), ("max_terms = 2", "max_terms = 0")):
        spec.write_text(TINY.replace(bad, message))
        with pytest.raises(StudySpecError, match=r"\[distill\]"):
            run_study(spec, output_root=tmp_path / "bad", progress=False)
    # a bad setting of a later section is refused before the Siamese tower trains
    spec.write_text(TINY.replace("[transformer]\nenabled = false", "[transformer]\nenabled = true\nsteps = 0"))
    with pytest.raises(StudySpecError, match=r"\[transformer\]"):
        run_study(spec, output_root=tmp_path / "bad", progress=False)
    spec.write_text(TINY.replace("n_models = 4", "n_models = 0"))
    with pytest.raises(StudySpecError, match=r"\[fma\]"):
        run_study(spec, output_root=tmp_path / "bad", progress=False)
