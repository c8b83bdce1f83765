"""Ablation: zero/mean/resample hooks, silent heads, result grids."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from physlens.models import OscillatorTransformer, TransformerConfig
from physlens.probes.ablation import Component, ablation_hook, ablation_sweep, model_components, next_step_loss
from physlens.systems import OscillatorSystem, Uniform


@pytest.fixture
def model() -> OscillatorTransformer:
    cfg = TransformerConfig(d_model=4, n_layers=2, n_heads=2, d_head=2, n_ctx=8, causal=True, attn_only=False, dtype="float64")
    return OscillatorTransformer(cfg).eval()


@pytest.fixture
def data():
    return OscillatorSystem(omega0=Uniform(1.0, 4.0), dtype="float64").sample(24, 13, seed=3)


def test_zero_ablating_a_head_with_zero_w_o_changes_nothing(model, data):
    with torch.no_grad():
        model.blocks[1].attn.W_O[0] = 0
    inputs, targets = data.states[:, :8], data.states[:, 1:9]
    result = ablation_sweep(model, inputs, targets, method="zero", head_hook="result",
                            rollout_context=data.states[:, :8], rollout_truth=data.states[:, 8:])
    assert result.head_loss[1, 0] == result.baseline_loss
    assert result.head_rollout_error[1, 0] == result.baseline_rollout_error
    assert result.head_loss[0, 0] != result.baseline_loss
    assert result.head_loss.shape == (2, 2) and result.attn_loss.shape == (2,) and result.mlp_loss.shape == (2,)
    same_via_z = ablation_sweep(model, inputs, targets, method="zero", head_hook="z")
    np.testing.assert_allclose(same_via_z.head_loss, result.head_loss, rtol=1e-12)


def test_zero_ablating_every_component_equals_manual_computation(model, data):
    inputs, targets = data.states[:, :8], data.states[:, 1:9]
    result = ablation_sweep(model, inputs, targets, components=[Component("attn", 0)], loss_positions="all")
    with torch.no_grad(), model.hooks(fwd_hooks=[("blocks.0.hook_attn_out", lambda a, hook: torch.zeros_like(a))]):
        manual = float(next_step_loss(model(inputs), targets, "all").mean())
    assert result.attn_loss[0] == pytest.approx(manual, rel=1e-12)
    assert np.isnan(result.head_loss).all()


def test_mean_and_resample_replace_with_reference_values(model, data):
    inputs = data.states[:, :8]
    _, cache = model.run_with_cache(inputs, names_filter=["blocks.0.attn.hook_z"])
    reference = cache["blocks.0.attn.hook_z"]
    seen = {}

    def spy(activation, hook):
        seen["z"] = activation.clone()

    for method in ("mean", "resample"):
        hook = ablation_hook(Component("head", 0, 1), method, reference, generator=torch.Generator().manual_seed(0))
        with torch.no_grad(), model.hooks(fwd_hooks=[("blocks.0.attn.hook_z", hook), ("blocks.0.attn.hook_z", spy)]):
            model(inputs)
        torch.testing.assert_close(seen["z"][:, :, 0], reference[:, :, 0])  # other head untouched
        if method == "mean":
            torch.testing.assert_close(seen["z"][:, :, 1], reference[:, :, 1].mean(0).expand(24, 8, 2))
        else:
            for row in seen["z"][:, :, 1]:
                assert any(torch.equal(row, ref) for ref in reference[:, :, 1])


def test_components_and_errors(model, data):
    kinds = [c.kind for c in model_components(model)]
    assert kinds.count("head") == 4 and kinds.count("attn") == 2 and kinds.count("mlp") == 2
    with pytest.raises(ValueError, match="head must be given"):
        Component("attn", 0, 1)
    with pytest.raises(ValueError, match="needs reference"):
        ablation_hook(Component("attn", 0), "mean")
    with pytest.raises(ValueError, match="method must be one of"):
        ablation_sweep(model, data.states[:, :8], data.states[:, 1:9], method="noise")
    with pytest.raises(ValueError, match="targets must match"):
        ablation_sweep(model, data.states[:, :8], data.states[:, 1:8])
