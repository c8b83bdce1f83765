"""The fused kernel for networks wider than one pass's registers: a pass over the points per group of units.

Checked against the eager torch step and against autograd + ``torch.optim.Adam``, which share no code
with the kernel; and the kernel of the narrow networks is checked to be the single pass it was.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch
from numpy.testing import assert_allclose

from physlens.models.mlp import EnsembleConfig, MLPEnsemble
from physlens.systems.fma import fma_splits
from physlens.training import _fused
from physlens.training.ensemble import EnsembleTrainConfig, train_ensemble
from tests.test_fma_training import _adam_reference, _kernel_adam, _random_problem

NAMES = ("W_in", "b_in", "W_out", "b_out")


@pytest.mark.parametrize("width", [5, 8, 16])
def test_a_wide_fused_ensemble_trains_like_the_eager_step(width):
    """Snapshots, the whole loss curve and the validation loss, to float64 round-off."""
    assert width > _fused.ONE_PASS_MAX_HIDDEN  # the grouped kernel, not the single pass
    seeds = [3, 8, 21]
    data = fma_splits(seeds, n_train=200, n_val=20, dtype="float64")
    results = {}
    for backend in ("fused", "eager"):
        ensemble = MLPEnsemble(EnsembleConfig(seeds=seeds, d_hidden=width, dtype="float64"))
        config = EnsembleTrainConfig(epochs=250, lr=5e-3, snapshot_every=60, backend=backend)
        results[backend] = train_ensemble(ensemble, data, config, progress=False)
    fused, eager = results["fused"], results["eager"]
    assert (fused.backend, eager.backend) == ("fused", "eager")
    assert fused.snapshot_epochs == eager.snapshot_epochs == [0, 60, 120, 180, 240, 250]
    for name in NAMES:
        assert fused.snapshots[name].shape == eager.snapshots[name].shape
        assert_allclose(fused.snapshots[name], eager.snapshots[name], rtol=1e-10, atol=1e-12)
        assert_allclose(getattr(fused.ensemble, name).detach(), getattr(eager.ensemble, name).detach(), rtol=1e-10, atol=1e-12)
    assert_allclose(fused.train_loss, eager.train_loss, rtol=1e-10)
    assert_allclose(fused.val_loss, eager.val_loss, rtol=1e-10)
    assert bool((fused.final_train_loss < fused.train_loss[0]).all())  # and they did train


def _autograd_adam(params, x, y, epochs, lr):
    """Autograd + torch.optim.Adam on one network, as flat parameters, and the loss curve."""
    leaves, losses = _adam_reference(params, x, y, epochs, lr)
    return torch.cat([p.reshape(-1) for p in leaves]).numpy(), losses


@pytest.mark.parametrize(("d_in", "width"), [(1, 9), (3, 6), (2, 13)])
def test_the_grouped_kernel_equals_autograd_adam_for_other_shapes(d_in, width, torch_gen):
    """Other input counts, and widths whose last group of units is smaller than the others."""
    epochs, lr = 150, 2e-2
    x, y, params = _random_problem(41, d_in, width, torch_gen)
    reference, reference_losses = _autograd_adam(params, x, y, epochs, lr)
    theta, losses, snap = _kernel_adam(params, x, y, epochs, lr, snap_epoch=59)
    assert_allclose(theta, reference, rtol=1e-9, atol=1e-11)
    assert_allclose(losses, reference_losses, rtol=1e-9)
    assert_allclose(snap, _autograd_adam(params, x, y, 60, lr)[0], rtol=1e-9, atol=1e-11)


def test_a_wide_kernel_takes_the_relus_derivative_at_zero_as_zero_like_autograd(torch_gen):
    """Units 0 and 6 of 8 (in the first group of units and in a later one) have pre-activation x_0 − x_1:
    ≤ 0 at every point and exactly 0 at half of them. With derivative 0 at 0 they get no gradient and
    never move; with derivative 1 there they would."""
    width, n, epochs, lr = 8, 40, 30, 1e-2
    a = torch.rand(n, generator=torch_gen, dtype=torch.float64)
    x = torch.stack([a, torch.where(torch.arange(n) % 2 == 0, a, a + 0.25)], dim=1)  # x_0 = x_1 or x_0 < x_1
    y = torch.cos(3 * a)
    params = [
        torch.randn(2, width, generator=torch_gen, dtype=torch.float64),
        torch.rand(width, generator=torch_gen, dtype=torch.float64) + 0.5,
        torch.randn(width, 1, generator=torch_gen, dtype=torch.float64),
        torch.zeros(1, dtype=torch.float64),
    ]
    boundary = [0, 6]
    for j in boundary:
        params[0][:, j] = torch.tensor([1.0, -1.0])
        params[1][j] = 0.0
    assert bool(((x @ params[0] + params[1])[:, boundary] == 0).any(dim=0).all())
    reference, reference_losses = _autograd_adam(params, x, y, epochs, lr)
    theta, losses, _ = _kernel_adam(params, x, y, epochs, lr, snap_epoch=0)
    assert_allclose(theta, reference, rtol=1e-9, atol=1e-11)
    assert_allclose(losses, reference_losses, rtol=1e-9)
    start = torch.cat([p.reshape(-1) for p in params]).numpy()
    frozen = [d * width + j for d in range(2) for j in boundary] + [2 * width + j for j in boundary] + [3 * width + j for j in boundary]
    assert np.array_equal(theta[frozen], start[frozen])
    assert not np.array_equal(np.delete(theta, frozen), np.delete(start, frozen))  # the other units trained


NARROW_KERNEL_SHA256 = "027c97da8b813fd0df7d490d7f74365e84ea79d6d2c66d64a66405b9fa2e2850"
"""sha256 of ``kernel_source(2, 2)`` when the studies' width-2 results were computed. A change to the
kernel's source changes its results in the last bits (and its cache file): update this only on purpose."""


def test_narrow_kernels_keep_their_single_pass_and_wide_ones_take_a_pass_per_group():
    assert hashlib.sha256(_fused.kernel_source(2, 2).encode()).hexdigest() == NARROW_KERNEL_SHA256
    for d_in in (1, 2, 3):
        for width in range(1, _fused.ONE_PASS_MAX_HIDDEN + 1):
            source = _fused.kernel_source(d_in, width)
            assert source.count("for i in range(") == 1 and "err" not in source.replace("err²", "")
    group = _fused.GROUP_UNITS
    for width in (5, 8, 16):
        source = _fused.kernel_source(2, width)
        groups = -(-width // group)
        # the error summed by the groups after the first, then a pass of gradient sums per group
        assert source.count("for i in range(") == 2 * groups - 1
        lines = [line.strip() for line in source.splitlines()]
        assert lines.count("e = err[i]") == groups - 1 and lines.count("err[i] = e") == 1
        assert f"with d_in = 2, h = {width}, {group} hidden units per pass" in source
    assert _fused.kernel_source(2, 16) != _fused.kernel_source(2, 16, group=2)
    assert _fused.kernel_source(2, 4, group=2).count("for i in range(") == 3
    with pytest.raises(ValueError, match="positive number of hidden units"):
        _fused.kernel_source(2, 5, group=0)
