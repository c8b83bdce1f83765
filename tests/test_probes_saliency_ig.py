"""Integrated gradients over input positions (through captum): exact on a linear model, complete on
a nonlinear one, and a clear error without captum."""

from __future__ import annotations

import sys

import pytest
import torch

from physlens.models import MLPConfig, OscillatorTransformer, TinyMLP, TransformerConfig
from physlens.probes import InputAttribution, integrated_gradients

pytest.importorskip("captum", reason="the captum extra is not installed")


def _states(batch: int = 4, pos: int = 6, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, pos, 2, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _model(**overrides) -> OscillatorTransformer:
    base = dict(d_model=6, n_layers=2, n_heads=2, d_head=3, n_ctx=8, causal=False, attn_only=False, dtype="float64", seed=2)
    return OscillatorTransformer(TransformerConfig(**{**base, **overrides}))


def test_linear_model_attributions_are_gradient_times_input_difference():
    model = _model(attn_window=1, attn_only=True, embed_bias=False, unembed_bias=False)
    x, baseline = _states(seed=1), _states(seed=2)
    result = integrated_gradients(model, x, output_position=4, output_component=1, baselines=baseline, n_steps=8)
    assert isinstance(result, InputAttribution) and result.attributions.shape == (4, 6, 2)
    jacobian = torch.autograd.functional.jacobian(lambda inputs: model(inputs)[:, 4, 1].sum(), x)  # constant for a linear map
    torch.testing.assert_close(result.attributions, jacobian * (x - baseline), atol=1e-9, rtol=1e-6)
    # window 1: only position 4 itself matters
    assert float(result.per_position[:, [0, 1, 2, 3, 5]].abs().max()) == 0.0


def test_attributions_are_complete_on_a_nonlinear_model():
    model = _model()
    x = _states(seed=3)
    result = integrated_gradients(model, x, output_position=-1, output_component=0, n_steps=64)
    with torch.no_grad():
        output, at_rest = model(x)[:, -1, 0], model(torch.zeros_like(x))[:, -1, 0]
    torch.testing.assert_close(result.output, output)
    torch.testing.assert_close(result.baseline_output, at_rest)
    totals = result.attributions.sum(dim=(1, 2))
    torch.testing.assert_close(result.completeness_error, totals - (output - at_rest), atol=1e-6, rtol=0)
    assert result.relative_completeness_error < 1e-6
    result.check_completeness(rtol=1e-6)
    assert result.output_position == 5 and result.per_position.shape == (4, 6)
    coarse = integrated_gradients(model, x, n_steps=2, method="riemann_left")
    with pytest.raises(ValueError, match="raise n_steps"):
        coarse.check_completeness(rtol=1e-6)


@pytest.mark.unchecked_types
def test_bad_arguments_are_refused():
    model = _model()
    x = _states()
    with pytest.raises(ValueError, match="output_position"):
        integrated_gradients(model, x, output_position=6)
    with pytest.raises(ValueError, match="output_component"):
        integrated_gradients(model, x, output_component=2)
    with pytest.raises(ValueError, match="baselines must have the inputs' shape"):
        integrated_gradients(model, x, baselines=x[:, :3])
    with pytest.raises(ValueError, match=r"inputs must have shape \[batch, pos, d_in\]"):
        integrated_gradients(model, x[0])
    with pytest.raises(ValueError, match="n_steps must be at least 2"):
        integrated_gradients(model, x, n_steps=1)
    # any model with [batch, pos, d_out] outputs works: the F = m·a MLP on one "position"; its ReLU
    # kinks slow the quadrature down to first order in the step, which the completeness error shows
    # (fixed inputs: the error at 1024 steps sits near 1/1024 and would straddle any tighter bound)
    mlp = TinyMLP(MLPConfig(dtype="float64"))
    inputs = torch.rand(3, 1, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    coarse, fine = (integrated_gradients(mlp, inputs, n_steps=n, method="riemann_trapezoid") for n in (16, 1024))
    assert fine.relative_completeness_error < coarse.relative_completeness_error / 16  # 64× the steps
    assert fine.relative_completeness_error < 2e-3


def test_missing_captum_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "captum", None)
    monkeypatch.setitem(sys.modules, "captum.attr", None)
    with pytest.raises(ImportError, match=r"pip install 'physlens\[captum\]'"):
        integrated_gradients(_model(), _states())
