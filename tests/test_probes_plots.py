"""Probe figures: each returns a Figure with the expected panels."""

from __future__ import annotations

import matplotlib
import pytest
import torch
from matplotlib.figure import Figure

from physlens.models import OscillatorTransformer, TransformerConfig
from physlens.plots.probes import (
    plot_ablation_grid,
    plot_attention_patterns,
    plot_patching,
    plot_probe_r2,
    plot_rollout,
    plot_saliency,
)
from physlens.probes.ablation import ablation_sweep
from physlens.probes.linear_probe import probe_sweep
from physlens.probes.patching import patching_pairs, patching_sweep
from physlens.probes.input_attribution import saliency, saliency_matrix
from physlens.systems import OscillatorSystem, Uniform

matplotlib.use("Agg")


@pytest.fixture(scope="module")
def setup():
    cfg = TransformerConfig(d_model=4, n_layers=2, n_heads=2, d_head=2, n_ctx=6, causal=False, dtype="float64")
    model = OscillatorTransformer(cfg).eval()
    system = OscillatorSystem(omega0=Uniform(1.0, 4.0), dtype="float64")
    return model, system


def test_probe_and_ablation_figures(setup):
    model, system = setup
    data = system.sample(30, 7, seed=0)
    result = probe_sweep(model, data, ["hook_embed", "blocks.1.hook_resid_post"], seq_len=6, targets=["omega0", "energy"])
    fig = plot_probe_r2(result, "omega0")
    assert isinstance(fig, Figure) and len(fig.axes) == 4  # model, control, shuffled, colour bar
    inputs, targets = data.inputs_targets()
    ablation = ablation_sweep(model, inputs, targets, rollout_context=data.states[:, :6], rollout_truth=data.states[:, 6:])
    assert isinstance(plot_ablation_grid(ablation), Figure)
    assert isinstance(plot_ablation_grid(ablation, metric="rollout_error"), Figure)
    with pytest.raises(ValueError, match="metric"):
        plot_ablation_grid(ablation, metric="accuracy")


def test_patching_saliency_attention_rollout_figures(setup):
    model, system = setup
    clean, corrupted = patching_pairs(system, 8, 6, seed=1)
    per_cell = patching_sweep(model, clean.states, corrupted.states, site="resid_pre", positions=[0, 5])
    per_layer = patching_sweep(model, clean.states, corrupted.states, site="attn_out", per_position=False)
    assert isinstance(plot_patching(per_cell), Figure)
    fig = plot_patching(per_layer)
    assert "CI" in fig.axes[0].get_title()
    jac = saliency(model, clean.states[:3])
    assert isinstance(plot_saliency(saliency_matrix(jac)), Figure)
    _, cache = model.run_with_cache(clean.states, names_filter=["blocks.0.attn.hook_pattern"])
    fig = plot_attention_patterns(cache["blocks.0.attn.hook_pattern"].mean(0))
    assert len(fig.axes) == 3  # two heads and a colour bar
    fig = plot_rollout(clean.states[0], {"model": clean.states[0] + 0.01, "diverged": clean.states[0] * 1e30})
    assert len(fig.axes) == 2
    bound = 3 * float(clean.states[0, :, 0].abs().max())
    assert fig.axes[0].get_ylim() == pytest.approx((-bound, bound))  # the truth's scale, not the blow-up's
    with pytest.raises(ValueError, match="shape"):
        plot_rollout(clean.states[0], {"model": torch.zeros(3, 2)})
