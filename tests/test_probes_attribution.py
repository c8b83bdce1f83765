"""Attribution patching: exact where the model is linear, the derivative of patching everywhere, and
close to exact patching on a trained variable-ω0 model (slow)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats
from transformer_lens.patching import PatchingResult

from physlens.models import OscillatorTransformer, TransformerConfig
from physlens.probes import (
    activation_gradients,
    attribution_patching_all_sites,
    attribution_patching_sweep,
    patching_agreement,
    patching_pairs,
    patching_sweep,
)
from physlens.probes.patching import SITES, plan_sweep, recovery_metric
from physlens.systems import OscillatorSystem, Uniform


@pytest.fixture(scope="module")
def pairs():
    system = OscillatorSystem(omega0=Uniform(1.0, 4.0), dtype="float64")
    clean, corrupted = patching_pairs(system, 6, 6, seed=2)
    return clean.states, corrupted.states


def _model(**overrides) -> OscillatorTransformer:
    base = dict(d_model=4, n_layers=2, n_heads=2, d_head=2, n_ctx=8, causal=False, attn_only=False, dtype="float64", seed=5)
    return OscillatorTransformer(TransformerConfig(**{**base, **overrides}))


def test_exact_on_a_linear_model_with_a_linear_metric(pairs):
    # window 1: every softmax is 1, so the output is linear in every activation (q, k and the
    # pattern change nothing, and attribution patching says so)
    model = _model(attn_window=1, attn_only=True)
    clean, corrupted = pairs

    def metric(out):
        return out[:, -1, 0] - 2 * out[:, 2, 1]

    estimates = attribution_patching_all_sites(model, clean, corrupted, metric=metric)
    assert set(estimates) == {"resid_pre", "resid_post", "attn_out", "z", "result", "q", "k", "v", "pattern"}  # no MLP sites
    for site, estimate in estimates.items():
        exact = patching_sweep(model, clean, corrupted, site=site, metric=metric)
        assert estimate.index_df.equals(exact.index_df)
        torch.testing.assert_close(estimate.baseline, exact.baseline.double(), atol=1e-6, rtol=0)
        torch.testing.assert_close(estimate.values, exact.values.double(), atol=1e-6, rtol=0)  # exact is float32


@pytest.mark.parametrize("site", ["resid_pre", "attn_out", "pre", "z", "k", "pattern"])
def test_estimate_is_the_derivative_of_patching_along_the_clean_direction(pairs, site):
    """d/dε metric(a_corrupted + ε (a_clean − a_corrupted)) at ε = 0, by central differences."""
    model = _model()
    clean, corrupted = pairs
    estimate = attribution_patching_sweep(model, clean, corrupted, site=site, positions=[1, 5])
    plan = plan_sweep(model, clean.shape[1], site=site, positions=[1, 5])
    metric = recovery_metric(model, clean, corrupted, -1)
    _, clean_cache = model.run_with_cache(clean)
    eps = 1e-6
    for cell, (_, row) in enumerate(plan.index_df.iterrows()):
        name = plan.names[list(plan.index_df["layer"].unique()).index(row["layer"])]
        index = plan.cell_slice(row)

        def nudged(step):
            def hook(activation, hook):
                shifted = activation.clone()
                shifted[index] += step * (clean_cache[name][index] - activation[index])
                return shifted

            with torch.no_grad():
                return metric(model.run_with_hooks(corrupted, fwd_hooks=[(name, hook)]))

        derivative = (nudged(eps) - nudged(-eps)) / (2 * eps)
        torch.testing.assert_close(estimate.values[cell], derivative, atol=1e-6, rtol=1e-5)


def test_result_layout_matches_patching_sweep(pairs):
    model = _model()
    clean, corrupted = pairs
    estimate = attribution_patching_sweep(model, clean, corrupted, site="result", per_position=False, layers=[1])
    exact = patching_sweep(model, clean, corrupted, site="result", per_position=False, layers=[1])
    assert isinstance(estimate, PatchingResult) and estimate.values.shape == exact.values.shape == (2, 6)
    assert list(estimate.index_df.columns) == ["layer", "head"]
    torch.testing.assert_close(estimate.baseline, torch.zeros(6, dtype=torch.float64))
    assert estimate.stderr().shape == (2,)
    everything = attribution_patching_all_sites(model, clean, corrupted)
    assert list(everything) == list(SITES)  # the model has every site


def test_activation_gradients_match_autograd(pairs):
    model = _model()
    clean, _ = pairs

    def metric(out):
        return out[:, -1].pow(2).sum(-1)

    acts, grads = activation_gradients(model, clean, metric, ["blocks.1.hook_resid_pre", "blocks.0.attn.hook_pattern"])
    shift = {}

    def add_zero(activation, hook):
        shift["zero"] = torch.zeros_like(activation, requires_grad=True)
        return activation + shift["zero"]

    total = metric(model.run_with_hooks(clean, fwd_hooks=[("blocks.1.hook_resid_pre", add_zero)])).sum()
    torch.testing.assert_close(grads["blocks.1.hook_resid_pre"], torch.autograd.grad(total, shift["zero"])[0])
    assert acts["blocks.0.attn.hook_pattern"].shape == (6, 2, 6, 6)
    assert all(p.grad is None for p in model.parameters())
    with torch.no_grad(), pytest.raises(ValueError, match="needs autograd"):
        activation_gradients(model, clean, metric, ["hook_embed"])
    with pytest.raises(ValueError, match="one value per example"):
        activation_gradients(model, clean, lambda out: out.sum(), ["hook_embed"])


def test_agreement_statistics_against_numpy_and_scipy():
    rng = np.random.default_rng(0)
    values = torch.tensor(rng.normal(size=(7, 5)))

    def result(v):
        return PatchingResult(values=v, axis_names=[], index_df=__import__("pandas").DataFrame({"layer": range(7)}), metric_names=["metric"], reduced=False)

    noisy = values + 0.1 * torch.tensor(rng.normal(size=(7, 5)))
    agreement = patching_agreement(result(values), result(noisy))
    means, noisy_means = values.mean(1).numpy(), noisy.mean(1).numpy()
    assert agreement.pearson == pytest.approx(np.corrcoef(means, noisy_means)[0, 1])
    assert agreement.spearman == pytest.approx(stats.spearmanr(means, noisy_means).statistic)
    assert agreement.pearson_examples == pytest.approx(np.corrcoef(values.numpy().ravel(), noisy.numpy().ravel())[0, 1])
    assert agreement.max_abs_error == pytest.approx(np.abs(means - noisy_means).max())
    assert (agreement.n_cells, agreement.n_examples) == (7, 5)
    low, high = agreement.pearson_interval
    assert -1 <= low <= high <= 1
    # the interval resamples examples: recompute it by hand with the same draws
    picks = np.random.default_rng(3).integers(0, 5, size=(200, 5))
    by_hand = [np.corrcoef(values.numpy()[:, p].mean(1), noisy.numpy()[:, p].mean(1))[0, 1] for p in picks]
    assert patching_agreement(result(values), result(noisy), n_resamples=200, seed=3, confidence=0.9).pearson_interval == pytest.approx(
        tuple(np.quantile(by_hand, [0.05, 0.95]))
    )
    assert patching_agreement(result(values), result(2 * values + 1)).pearson == pytest.approx(1.0)
    with pytest.raises(ValueError, match="same cells"):
        patching_agreement(result(values), result(values[:, :4]))


@pytest.mark.unchecked_types
def test_bad_arguments_are_refused(pairs):
    model = _model()
    clean, corrupted = pairs
    with pytest.raises(ValueError, match="same shape"):
        attribution_patching_sweep(model, clean, corrupted[:, :4])
    with pytest.raises(ValueError, match="site must be one of"):
        attribution_patching_sweep(model, clean, corrupted, site="embed")
    with pytest.raises(ValueError, match="sites must be a non-empty list"):
        attribution_patching_all_sites(model, clean, corrupted, sites="z")
    with pytest.raises(ValueError, match="identical predictions"):
        attribution_patching_sweep(model, clean, clean)
    with pytest.raises(ValueError, match="unknown hook names"):
        attribution_patching_sweep(_model(attn_only=True), clean, corrupted, site="mlp_out")


@pytest.mark.slow
def test_attribution_patching_tracks_exact_patching_on_a_trained_model():
    """A two-layer causal transformer with MLPs trained on ω0 ~ U[1, 4]; per-site correlation of the
    per-cell mean recoveries of attribution and exact patching on the same pairs (printed)."""
    from physlens.training import TrainConfig, train

    torch.manual_seed(0)
    system = OscillatorSystem(omega0=Uniform(1.0, 4.0), gamma=0.1, dt=0.1, energy_range=(0.0, 1.0), dtype="float64")
    model = _model(d_model=16, d_head=8, n_ctx=20, causal=True, seed=1)
    train(model, system, TrainConfig(steps=600, batch_size=128, lr=1e-2, seq_len=20, loss_positions="all",
                                     schedule="cosine", warmup_steps=60, grad_clip=1.0, seed=2), progress=False)
    clean, corrupted = patching_pairs(system, 32, 20, seed=3)
    estimates = attribution_patching_all_sites(model, clean.states, corrupted.states)
    pearson = {}
    for site in SITES:
        agreement = patching_agreement(patching_sweep(model, clean.states, corrupted.states, site=site), estimates[site])
        pearson[site] = agreement.pearson
        print(f"{site}: pearson {agreement.pearson:.3f}, spearman {agreement.spearman:.3f}, max |error| {agreement.max_abs_error:.3f}")
    # the residual stream and the value path track exact patching; k (tiny effects) does not
    assert min(pearson[site] for site in ("resid_pre", "resid_mid", "resid_post", "v")) > 0.95, pearson
