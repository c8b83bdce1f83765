"""The oscillator study's dispatch table: one module per ``[analyses.*]`` section, each entry checked and
run through the documented signatures, and each section runnable on its own on a tiny model."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import pytest

from physlens.models import OscillatorTransformer, TransformerConfig
from physlens.studies import oscillator_analyses
from physlens.studies.oscillator_analyses import ANALYSES, AnalysisContext, parse_analyses
from physlens.studies.report import Report
from physlens.systems import OscillatorSystem, Uniform

DAMPED = OscillatorSystem(omega0=Uniform(1.0, 4.0), gamma=Uniform(0.05, 0.3), dtype="float64")
TINY = {
    "weights": {},
    "algorithms": {"n_trajectories": 16, "horizon": 3, "n_reference_trajectories": 32},
    "swap": {"n_pairs": 12},
    "probes": {"hooks": ["hook_embed", "resid_post"], "targets": ["omega0", "energy"], "n_trajectories": 40, "n_permutations": 5,
               "sites": [["blocks.1.hook_resid_post", 5]], "nonlinear": False, "n_controls": 1},
    "energy": {"hooks": ["resid_post"], "positions": [5], "n_trajectories": 40, "n_folds": 3, "n_controls": 1,
               "rollout_trajectories": 8, "rollout_steps": 12},
    "steering": {"hooks": ["blocks.0.hook_resid_mid"], "position": 5, "n_trajectories": 6, "n_probe_trajectories": 40, "n_steps": 4},
    "ablation": {"methods": ["zero"], "n_trajectories": 16, "rollout_trajectories": 4, "rollout_steps": 3},
    "patching": {"n_pairs": 6, "position_stride": 3},
    "saliency": {"n_trajectories": 3},
    "surrogate": {"n_trajectories": 40, "rollout_trajectories": 4, "rollout_steps": 5},
    "mechanism": {"n_trajectories": 16, "n_pairs": 12, "calibration_seeds": 1},
}


def _model(n_ctx: int) -> OscillatorTransformer:
    cfg = TransformerConfig(d_model=4, n_layers=2, n_heads=2, d_head=2, n_ctx=n_ctx, causal=True, attn_only=False, dtype="float64", seed=5)
    return OscillatorTransformer(cfg).eval()


def test_the_dispatch_table_has_one_entry_per_section_module_and_calls_that_module():
    sections = {info.name for info in pkgutil.iter_modules(oscillator_analyses.__path__)} - {"common"}
    assert set(ANALYSES) == sections
    for name, analysis in ANALYSES.items():
        module = importlib.import_module(f"physlens.studies.oscillator_analyses.{name}")
        assert analysis.check is module.check and analysis.run is module.run, name


@pytest.mark.parametrize("name", list(ANALYSES))
def test_every_entry_has_the_documented_signature_and_a_docstring(name):
    analysis = ANALYSES[name]
    assert list(inspect.signature(analysis.check).parameters) == ["opts", "model", "system", "seq_len"]
    assert list(inspect.signature(analysis.run).parameters) == ["ctx", "opts"]
    assert f"[analyses.{name}]" in inspect.getdoc(analysis.check)
    assert inspect.getdoc(analysis.run) and inspect.getdoc(inspect.getmodule(analysis.run))
    assert set(analysis.defaults) <= set(analysis.keys)


def test_every_section_accepts_its_own_defaults():
    options = parse_analyses({}, _model(24), DAMPED, 24)
    assert list(options) == list(ANALYSES)
    assert all(options[name] == dict(ANALYSES[name].defaults) for name in ANALYSES)


def test_the_tiny_options_cover_every_section():
    assert set(TINY) == set(ANALYSES)


@pytest.mark.parametrize("name", list(ANALYSES))
def test_each_section_runs_on_its_own_and_writes_only_its_own_metrics(name):
    seq_len = 24 if name == "mechanism" else 6
    model = _model(seq_len)
    opts = parse_analyses({"run": [name], name: TINY[name]}, model, DAMPED, seq_len)[name]
    ctx = AnalysisContext(model=model, system=DAMPED, seq_len=seq_len, loss_positions="all", seed=0, progress=False,
                          report=Report("tiny"))
    ANALYSES[name].run(ctx, opts)
    assert set(ctx.metrics) == {name}
    assert any(line.startswith("### ") for line in ctx.report.lines)
    assert ctx.findings and ctx.seeds or name == "weights"  # weights draws no random stream
