"""Heatmaps label their cells with the real positions and layers swept, at integer ticks."""

from __future__ import annotations

import matplotlib
import pytest

from physlens.models import OscillatorTransformer, TransformerConfig
from physlens.plots.probes import plot_attention_patterns, plot_patching, plot_saliency
from physlens.probes import patching as pl_patching
from physlens.probes.patching import patching_pairs, patching_sweep
from physlens.probes.input_attribution import saliency, saliency_matrix
from physlens.systems import OscillatorSystem, Uniform

matplotlib.use("Agg")


def _ticks(axis) -> tuple[list[float], list[str]]:
    return list(axis.get_ticklocs()), [label.get_text() for label in axis.get_ticklabels()]


@pytest.fixture(scope="module")
def setup():
    cfg = TransformerConfig(d_model=4, n_layers=3, n_heads=2, d_head=2, n_ctx=40, causal=False, dtype="float64")
    model = OscillatorTransformer(cfg)
    clean, corrupted = patching_pairs(OscillatorSystem(omega0=Uniform(1.0, 4.0), dtype="float64"), 4, 40, seed=1)
    return model, clean.states, corrupted.states


def test_patching_heatmap_labels_real_positions_and_layers(setup):
    model, clean, corrupted = setup
    result = patching_sweep(model, clean, corrupted, site="resid_pre", positions=[30, 35, 39], layers=[1, 2])
    ax = plot_patching(result).axes[0]
    assert _ticks(ax.xaxis) == ([0, 1, 2], ["30", "35", "39"])
    assert _ticks(ax.yaxis) == ([0, 1], ["1", "2"])
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("pos", "layer")


def test_long_position_axes_are_thinned_but_stay_integer_and_real(setup):
    model, clean, corrupted = setup
    result = patching_sweep(model, clean, corrupted, site="z", positions=list(range(10, 40)), layers=[0])
    ax = plot_patching(result).axes[0]
    locations, labels = _ticks(ax.xaxis)
    assert all(float(loc).is_integer() for loc in locations) and len(locations) <= 12
    assert labels[0] == "10" and labels[-1] == "39" and labels == [str(10 + int(loc)) for loc in locations]
    assert "mean over head" in ax.get_title()


def test_grid_shaped_sweeps_plot_too(setup):
    model, clean, corrupted = setup
    _, cache = model.run_with_cache(clean[:, :6])
    result = pl_patching.get_act_patch_attn_head_out_all_pos(model, corrupted[:, :6], cache, lambda out: out[:, -1, 0], reduce="none")
    ax = plot_patching(result).axes[0]
    assert _ticks(ax.yaxis) == ([0, 1, 2], ["0", "1", "2"])
    assert ax.get_xlabel() == "head"


def test_saliency_and_attention_ticks_are_positions(setup):
    model, clean, _ = setup
    ax = plot_saliency(saliency_matrix(saliency(model, clean[:2, :5]))).axes[0]
    assert _ticks(ax.xaxis) == ([0, 2, 4, 6, 8], ["0", "1", "2", "3", "4"])
    _, cache = model.run_with_cache(clean[:, :3], names_filter="blocks.0.attn.hook_pattern")
    ax = plot_attention_patterns(cache["blocks.0.attn.hook_pattern"].mean(0)).axes[0]
    assert _ticks(ax.xaxis) == ([0, 1, 2], ["0", "1", "2"])
    assert _ticks(ax.yaxis) == ([0, 1, 2], ["0", "1", "2"])
