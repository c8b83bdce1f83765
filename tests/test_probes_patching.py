"""Activation patching on continuous inputs, through transformer_lens.patching."""

from __future__ import annotations

import pytest
import torch
from transformer_lens.patching import PatchingResult

from physlens.models import OscillatorTransformer, TransformerConfig
from physlens.probes.patching import patching_grid, patching_pairs, patching_sweep, recovery
from physlens.systems import OscillatorSystem, Uniform


@pytest.fixture
def model() -> OscillatorTransformer:
    cfg = TransformerConfig(d_model=4, n_layers=2, n_heads=2, d_head=2, n_ctx=8, causal=False, attn_only=False, dtype="float64")
    return OscillatorTransformer(cfg).eval()


@pytest.fixture
def pairs():
    system = OscillatorSystem(omega0=Uniform(1.0, 4.0), gamma=Uniform(0.0, 0.2), dtype="float64")
    return patching_pairs(system, 12, 8, vary="omega0", seed=0)


def test_pairs_share_initial_state_and_differ_in_omega0(pairs):
    clean, corrupted = pairs
    torch.testing.assert_close(clean.states[:, 0], corrupted.states[:, 0])
    torch.testing.assert_close(clean.gamma, corrupted.gamma)
    assert bool(((clean.omega0 - corrupted.omega0).abs() >= 0.5).all())


def test_patching_every_position_recovers_clean_output_exactly(model, pairs):
    clean, corrupted = pairs
    for site in ("resid_pre", "resid_mid"):  # the whole residual stream fixes everything after it
        result = patching_sweep(model, clean.states, corrupted.states, site=site, per_position=False, output_position=None)
        assert isinstance(result, PatchingResult)
        torch.testing.assert_close(result.values, torch.ones_like(result.values))
    result = patching_sweep(model, clean.states, corrupted.states, site="resid_post", per_position=False)
    torch.testing.assert_close(result.values, torch.ones_like(result.values))  # layer 0's output is layer 1's input
    partial = patching_sweep(model, clean.states, corrupted.states, site="attn_out", per_position=False)
    assert bool((partial.values < 1 - 1e-6).all())  # one write leaves the corrupted embedding in the stream
    torch.testing.assert_close(result.baseline, torch.zeros_like(result.baseline))


def test_per_position_cells_and_statistics(model, pairs):
    clean, corrupted = pairs
    result = patching_sweep(model, clean.states, corrupted.states, site="attn_out", positions=[0, 3, 7])
    assert list(result.index_df.columns) == ["layer", "pos"] and len(result.index_df) == 6
    assert result.values.shape == (6, 12)
    # position 0 holds the shared initial state in layer 0's input, but attention has mixed it already
    grid, columns = patching_grid(result)
    assert columns == ["layer", "pos"] and grid.shape == (2, 3)
    assert result.stderr().shape == (6,)
    low, high = result.bootstrap_ci(n_resamples=50)
    assert bool((low <= high).all())
    assert result.permutation_pvalue(n_permutations=50).shape == (6,)


def test_window_one_model_patching_a_position_recovers_that_position_only():
    cfg = TransformerConfig(d_model=4, n_layers=2, n_heads=2, d_head=2, n_ctx=8, attn_window=1, dtype="float64")
    model = OscillatorTransformer(cfg).eval()
    system = OscillatorSystem(omega0=Uniform(1.0, 4.0), dtype="float64")
    clean, corrupted = patching_pairs(system, 6, 8, seed=1)
    last = patching_sweep(model, clean.states, corrupted.states, site="resid_pre", positions=[6, 7], layers=[1])
    torch.testing.assert_close(last.values[1], torch.ones(6, dtype=last.values.dtype))  # pos 7 drives the last output
    torch.testing.assert_close(last.values[0], torch.zeros(6, dtype=last.values.dtype))


def test_recovery_and_errors(model, pairs):
    clean, corrupted = pairs
    c, k = torch.zeros(3, 2), torch.ones(3, 2)
    torch.testing.assert_close(recovery(c, c, k), torch.ones(3))
    torch.testing.assert_close(recovery(k, c, k), torch.zeros(3))
    with pytest.raises(ValueError, match="identical predictions"):
        patching_sweep(model, clean.states, clean.states)
    with pytest.raises(ValueError, match="site must be one of"):
        patching_sweep(model, clean.states, corrupted.states, site="embed")
    with pytest.raises(ValueError, match="out of range"):
        patching_sweep(model, clean.states, corrupted.states, positions=[9])
    with pytest.raises(ValueError, match="layers must lie"):
        patching_sweep(model, clean.states, corrupted.states, layers=[2])
    with pytest.raises(ValueError, match="nothing to corrupt"):
        patching_pairs(OscillatorSystem(dtype="float64"), 4, 8, seed=0)
