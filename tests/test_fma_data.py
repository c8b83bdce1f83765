"""F = m·a data: the two input distributions, per-seed splits, support corners, bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from numpy.testing import assert_allclose
from scipy import stats

from physlens.systems.fma import FmaSplit, fma_split, fma_splits, sample_fma, stream_seed, support_vertices


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
