"""F = m·a data: the two input distributions, per-seed splits, support corners, bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from numpy.testing import assert_allclose
from scipy import stats

from physlens.seeding import spawn_seeds
from physlens.systems.fma import (
    FmaSplit,
    fma_split,
    fma_splits,
    optimal_plane,
    plane_fit_val_mse,
    sample_fma,
    seed_recipe_split,
    segment_quadrature,
    stream_seed,
    support_vertices,
)


def test_product_distribution_has_uniform_product_and_seed_ranges(seed):
    inputs, targets = sample_fma(20000, "product", seed=seed, dtype="float64")
    assert_allclose(targets[:, 0], inputs[:, 0] * inputs[:, 1], rtol=1e-12)
    # F ~ U(0, 1): a KS test against the uniform law must not reject.
    assert stats.kstest(targets[:, 0].numpy(), "uniform").pvalue > 1e-3
    # Each coordinate is u ~ U(0.5, 1) or F/u with probability 1/2 each (the swap), so its mean is
    # (E[u] + E[F] E[1/u]) / 2 = (0.75 + 0.5 · 2 ln 2) / 2.
    expected = (0.75 + np.log(2.0)) / 2
    assert_allclose(inputs.mean(dim=0).numpy(), [expected, expected], atol=0.012)
    assert float(inputs.min()) >= 0 and float(inputs.max()) <= 2
    assert float(torch.minimum(inputs[:, 0], inputs[:, 1]).max()) <= 1.0 + 1e-12  # min(u, F/u) <= 1


def test_uniform_distribution_fills_the_unit_square(seed):
    inputs, targets = sample_fma(20000, "uniform", seed=seed, dtype="float64")
    assert float(inputs.min()) >= 0 and float(inputs.max()) <= 1
    assert stats.kstest(inputs[:, 0].numpy(), "uniform").pvalue > 1e-3
    # E[m·a] = 1/4 for independent uniforms.
    assert abs(float(targets.mean()) - 0.25) < 0.01


def test_support_vertices_bound_every_linear_function(seed, rng):
    for distribution in ("product", "uniform"):
        inputs, _ = sample_fma(5000, distribution, seed=seed, dtype="float64")
        corners = support_vertices(distribution)
        directions = torch.from_numpy(rng.normal(size=(2, 50)))
        # max of a linear function over the data never exceeds its max over the corners ...
        assert bool(((inputs @ directions).max(0).values <= (corners @ directions).max(0).values + 1e-12).all())
        # ... and the data come close to every corner (the hull is tight).
        distance = torch.cdist(corners, inputs).min(dim=1).values
        assert float(distance.max()) < 0.1


def test_splits_are_fixed_per_seed_and_stack(seed):
    a, b = fma_split(seed, n_train=64, n_val=16), fma_split(seed, n_train=64, n_val=16)
    assert torch.equal(a.train_inputs, b.train_inputs) and torch.equal(a.val_targets, b.val_targets)
    other = fma_split(seed + 1, n_train=64, n_val=16)
    assert not torch.equal(a.train_inputs, other.train_inputs)
    stacked = fma_splits([seed, seed + 1], n_train=64, n_val=16)
    assert stacked.n_models == 2 and a.n_models is None
    assert torch.equal(stacked.member(0).train_inputs, a.train_inputs)
    assert torch.equal(stacked.member(1).val_inputs, other.val_inputs)
    assert stacked.train_inputs.shape == (2, 64, 2) and stacked.val_targets.shape == (2, 16, 1)


def test_stack_is_the_inverse_of_member_and_refuses_splits_that_do_not_agree(seed):
    parts = [fma_split(seed + k, n_train=32, n_val=8) for k in range(3)]
    stacked = FmaSplit.stack(parts)
    assert stacked.n_models == 3 and stacked.distribution == "product"
    for k, part in enumerate(parts):
        for name in ("train_inputs", "train_targets", "val_inputs", "val_targets"):
            assert torch.equal(getattr(stacked.member(k), name), getattr(part, name))
    with pytest.raises(ValueError, match="non-empty sequence of one network's FmaSplit"):
        FmaSplit.stack([])
    with pytest.raises(ValueError, match="non-empty sequence of one network's FmaSplit"):
        FmaSplit.stack([stacked])  # already stacked
    with pytest.raises(ValueError, match=r"splits\[1\] has distribution 'product' and 16 / 8 points"):
        FmaSplit.stack([parts[0], fma_split(seed, n_train=16, n_val=8)])
    with pytest.raises(ValueError, match=r"splits\[1\] has distribution 'uniform'"):
        FmaSplit.stack([parts[0], fma_split(seed, "uniform", n_train=32, n_val=8)])


def test_data_and_init_streams_differ():
    assert stream_seed(5, 1) != stream_seed(5, 2)
    assert stream_seed(5, 1) != stream_seed(6, 1)


def test_bad_input_is_refused(seed):
    with pytest.raises(ValueError, match="n must be a positive integer"):
        sample_fma(0, seed=seed)
    with pytest.raises(ValueError, match="distribution must be one of"):
        sample_fma(10, "normal", seed=seed)
    with pytest.raises(ValueError, match="exactly one of seed"):
        sample_fma(10)
    with pytest.raises(ValueError, match="n_train must be a positive integer"):
        fma_split(seed, n_train=0)
    with pytest.raises((ValueError, TypeError), match="n_train"):  # TypeError under runtime type checking
        fma_split(seed, n_train=2.5)
    with pytest.raises(ValueError, match="seeds must hold"):
        fma_splits([])
    good = fma_split(seed, n_train=8, n_val=4)
    bad_inputs = good.train_inputs.clone()
    bad_inputs[3, 1] = float("nan")
    with pytest.raises(ValueError, match="train_inputs must contain only finite values"):
        FmaSplit(bad_inputs, good.train_targets, good.val_inputs, good.val_targets)
    with pytest.raises((ValueError, TypeError), match="val_targets"):  # TypeError under runtime shape checks
        FmaSplit(good.train_inputs, good.train_targets, good.val_inputs, good.val_targets[:, 0])
    with pytest.raises((ValueError, TypeError), match="rows|train_targets"):
        FmaSplit(good.train_inputs, good.train_targets[:5], good.val_inputs, good.val_targets)
    with pytest.raises(ValueError, match="member"):
        good.member(0)
    with pytest.raises(ValueError, match="index must be in"):
        fma_splits([1, 2], n_train=4, n_val=2).member(2)


def test_split_moves_between_dtypes(seed):
    split = fma_split(seed, n_train=8, n_val=4, dtype="float64")
    moved = split.to(dtype="float32")
    assert moved.train_inputs.dtype == torch.float32
    assert_allclose(moved.train_inputs.double(), split.train_inputs, rtol=1e-6)
    assert np.isclose(float(split.train_targets[0, 0]), float(split.train_inputs[0].prod()))


# ----------------------------------------------------------------- exact baselines and quadrature
def _numpy_product(n: int, rng: np.random.Generator) -> np.ndarray:
    force, u, swap = rng.random(n), 0.5 + 0.5 * rng.random(n), rng.random(n) < 0.5
    return np.stack([np.where(swap, u, force / u), np.where(swap, force / u, u)], axis=1)


def test_optimal_plane_matches_least_squares_on_a_large_independent_sample(rng):
    for distribution, points in (("product", _numpy_product(2_000_000, rng)), ("uniform", rng.random((2_000_000, 2)))):
        target = points[:, 0] * points[:, 1]
        design = np.c_[np.ones(len(points)), points]
        coef, *_ = np.linalg.lstsq(design, target, rcond=None)
        baseline = optimal_plane(distribution)
        assert_allclose(baseline.coef, coef, atol=3e-3)
        assert_allclose(baseline.mse, np.mean((design @ coef - target) ** 2), rtol=1e-2)
        assert_allclose(baseline.target_variance, target.var(), rtol=1e-2)
    assert optimal_plane("uniform").mse == pytest.approx(1 / 144, rel=1e-12)  # the seed's linear model: 0.0072
    assert optimal_plane("uniform").coef == pytest.approx((-0.25, 0.5, 0.5), abs=1e-12)
    assert optimal_plane("product").target_variance == pytest.approx(1 / 12, rel=1e-12)


def test_segment_quadrature_integrates_against_scipy():
    from scipy import integrate

    def along_segments(quadrature, g, n_t=4001):
        t = np.linspace(0.0, 1.0, n_t)
        points = quadrature.origins.numpy()[:, None, :] + t[None, :, None] * quadrature.directions.numpy()[:, None, :]
        return float(quadrature.weights.numpy() @ integrate.simpson(g(points[..., 0], points[..., 1]), x=t, axis=1))

    g = lambda m, a: np.maximum(0.0, 0.7 * m - 0.4 * a - 0.1) ** 2 + np.cos(m * a)  # noqa: E731
    # product: F ~ U(0, 1), u ~ U(1/2, 1) with density 2, half (F/u, u) and half (u, F/u)
    expected = 0.5 * sum(
        integrate.dblquad(lambda f, u, s=s: 2 * g(*((f / u, u) if s else (u, f / u))), 0.5, 1.0, 0.0, 1.0, epsabs=1e-11)[0] for s in (0, 1)
    )
    assert_allclose(along_segments(segment_quadrature("product", n_panels=128), g), expected, rtol=1e-6)
    expected = integrate.dblquad(lambda m, a: g(m, a), 0.0, 1.0, 0.0, 1.0, epsabs=1e-11)[0]
    assert_allclose(along_segments(segment_quadrature("uniform", n_panels=128), g), expected, rtol=1e-6)
    quadrature = segment_quadrature("product")
    assert quadrature.weights.sum().item() == pytest.approx(1.0, abs=1e-12)
    with pytest.raises(ValueError, match="n_panels must be a positive integer"):
        segment_quadrature(n_panels=0)


def test_per_seed_plane_fit_matches_numpy():
    data = fma_splits([3, 4], n_train=200, n_val=100, dtype="float64")
    expected = []
    for k in range(2):
        X = np.c_[np.ones(200), data.train_inputs[k].numpy()]
        coef, *_ = np.linalg.lstsq(X, data.train_targets[k, :, 0].numpy(), rcond=None)
        V = np.c_[np.ones(100), data.val_inputs[k].numpy()]
        expected.append(np.mean((V @ coef - data.val_targets[k, :, 0].numpy()) ** 2))
    assert_allclose(plane_fit_val_mse(data), expected, rtol=1e-10)
    with pytest.raises(TypeError, match="SupervisedSplit"):
        plane_fit_val_mse({"train_inputs": 1})


# ------------------------------------------------------------------------ independent seed streams
def test_no_two_sets_of_networks_share_an_initialisation_or_a_split():
    from physlens.models.mlp import EnsembleConfig, MLPEnsemble
    from physlens.probes.scan import flatten_parameters

    seeds = spawn_seeds(0, {"width2": 96, "scan_random": 48, "test_random": 48, "seed_size": 16, "uniform": 16})
    inits = np.concatenate([flatten_parameters(MLPEnsemble(EnsembleConfig(seeds=s, dtype="float64"))) for s in seeds.values()])
    assert len(np.unique(inits, axis=0)) == len(inits)
    splits = fma_splits([s for v in seeds.values() for s in v], n_train=4, n_val=1, dtype="float64").train_inputs.reshape(-1, 8)
    assert len(np.unique(splits.numpy(), axis=0)) == len(splits)


# -------------------------------------------------------------------------------- the seed's recipe
def test_seed_recipe_split_replays_the_seeds_global_generator_draws():
    """The seed's train.py after set_all_seeds(seed), transcribed with the global generators."""
    import random

    seed = 2813536937
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    Y = torch.rand(10000)
    X = torch.empty(10000, 2)
    X[:, 0] = Y / (torch.rand(10000) * (1 - 0.5) + 0.5)
    X[:, 1] = Y / X[:, 0]
    mask = torch.rand(10000) < 0.5
    swap_vals = X[:, 0][mask]
    X[:, 0][mask] = X[:, 1][mask]
    X[:, 1][mask] = swap_vals
    order = np.random.permutation(range(X.shape[0]))
    layer0, layer1 = torch.nn.Linear(2, 2), torch.nn.Linear(2, 1)  # the network is built after the data
    split = seed_recipe_split(seed, torch.Generator().manual_seed(seed))
    assert torch.equal(split.train_inputs, X[order[:8000]]) and torch.equal(split.val_targets, Y[order[8000:], None])
    from physlens.models.mlp import seed_recipe_start

    model, again = seed_recipe_start(seed)
    assert torch.equal(again.train_inputs, split.train_inputs)
    assert torch.equal(model.W_in.detach(), layer0.weight.detach().T) and torch.equal(model.b_in.detach(), layer0.bias.detach())
    assert torch.equal(model.W_out.detach(), layer1.weight.detach().T) and torch.equal(model.b_out.detach(), layer1.bias.detach())
    with pytest.raises(TypeError, match="generator"):
        seed_recipe_split(seed, 3)
