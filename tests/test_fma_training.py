"""Batched full-batch Adam: hand-written gradients, member == standalone training, snapshots, bad input."""

from __future__ import annotations

import pytest
import torch
from numpy.testing import assert_allclose

from physlens.models.mlp import EnsembleConfig, MLPConfig, MLPEnsemble, TinyMLP
from physlens.systems.fma import fma_split, fma_splits
from physlens.training import ensemble as ensemble_training
from physlens.training.ensemble import (
    EnsembleTrainConfig,
    ensemble_loss_and_grads,
    fused_loss_and_grads,
    train_ensemble,
    train_mlp,
)

NAMES = ("W_in", "b_in", "W_out", "b_out")


def test_hand_written_gradients_equal_autograd(torch_gen):
    n_models, width, n = 5, 3, 40
    params = [
        torch.randn(n_models, 2, width, generator=torch_gen, dtype=torch.float64),
        torch.randn(n_models, width, generator=torch_gen, dtype=torch.float64),
        torch.randn(n_models, width, 1, generator=torch_gen, dtype=torch.float64),
        torch.randn(n_models, 1, generator=torch_gen, dtype=torch.float64),
    ]
    x = torch.rand(n_models, 2, n, generator=torch_gen, dtype=torch.float64)
    y = x[:, 0] * x[:, 1]
    loss, grads = ensemble_loss_and_grads(*params, x, y)
    fused_loss, fused_grads = fused_loss_and_grads(*params, x, y)
    leaves = [p.clone().requires_grad_() for p in params]
    pre = torch.einsum("mdn,mdh->mnh", x, leaves[0]) + leaves[1][:, None, :]
    out = torch.relu(pre) @ leaves[2] + leaves[3][:, None, :]
    reference = (out[..., 0] - y).square().mean(dim=1)
    auto = torch.autograd.grad(reference.sum(), leaves)
    assert_allclose(loss, reference.detach(), rtol=1e-12)
    assert_allclose(fused_loss, reference.detach(), rtol=1e-12)
    for g, f, a in zip(grads, fused_grads, auto):
        assert_allclose(g, a, rtol=1e-10, atol=1e-14)
        assert_allclose(f, a, rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("width", [2, 3])
def test_member_trained_in_ensemble_equals_network_trained_alone(width, monkeypatch):
    seeds = [11, 12, 13, 14]
    config = EnsembleTrainConfig(epochs=300, lr=1e-2)
    # Small cache blocks so the chunked path (several model blocks per step) is what is tested.
    monkeypatch.setattr(ensemble_training, "CACHE_FLOATS", 2 * width * 64)
    data = fma_splits(seeds, n_train=64, n_val=32, dtype="float64")
    ensemble = MLPEnsemble(EnsembleConfig(seeds=seeds, d_hidden=width, dtype="float64"))
    result = train_ensemble(ensemble, data, config, progress=False)
    for i, s in enumerate(seeds):
        alone = TinyMLP(MLPConfig(d_hidden=width, seed=s, dtype="float64"))
        reference = train_mlp(alone, fma_split(s, n_train=64, n_val=32, dtype="float64"), config)
        member = ensemble.member(i)
        for name in NAMES:
            assert_allclose(getattr(member, name).detach(), getattr(alone, name).detach(), rtol=1e-9, atol=1e-11)
        assert_allclose(result.val_loss[i].item(), reference.val_loss, rtol=1e-9)
        assert_allclose(result.train_loss[:, i], reference.train_loss, rtol=1e-9)


def test_float32_member_stays_close_to_float32_standalone():
    seeds = [5, 6]
    config = EnsembleTrainConfig(epochs=200)
    ensemble = MLPEnsemble(EnsembleConfig(seeds=seeds))
    train_ensemble(ensemble, fma_splits(seeds, n_train=128, n_val=16), config, progress=False)
    alone = TinyMLP(MLPConfig(seed=6))
    train_mlp(alone, fma_split(6, n_train=128, n_val=16), config)
    for name in NAMES:
        assert_allclose(getattr(ensemble.member(1), name).detach(), getattr(alone, name).detach(), rtol=1e-4, atol=1e-5)


def test_training_lowers_loss_and_keeps_snapshots():
    seeds = list(range(6))
    config = EnsembleTrainConfig(epochs=400, lr=1e-2, snapshot_every=100)
    ensemble = MLPEnsemble(EnsembleConfig(seeds=seeds, dtype="float64"))
    start = {name: getattr(ensemble, name).detach().clone() for name in NAMES}
    result = train_ensemble(ensemble, fma_splits(seeds, n_train=64, n_val=64, dtype="float64"), config, progress=False)
    assert result.snapshot_epochs == [0, 100, 200, 300, 400]
    assert result.snapshots["W_in"].shape == (5, 6, 2, 2)
    assert torch.equal(result.snapshots["b_in"][0], start["b_in"])
    assert torch.equal(result.snapshots["W_out"][-1], ensemble.W_out.detach())
    assert bool((result.final_train_loss < result.train_loss[0]).all())
    assert result.train_loss.shape == (400, 6)


def test_bad_training_input_is_refused():
    ensemble = MLPEnsemble(EnsembleConfig(seeds=[0, 1]))
    with pytest.raises(ValueError, match="2 model"):
        train_ensemble(ensemble, fma_splits([0, 1, 2], n_train=8, n_val=4), EnsembleTrainConfig(epochs=1), progress=False)
    with pytest.raises(ValueError, match="dtype"):
        train_ensemble(ensemble, fma_splits([0, 1], n_train=8, n_val=4, dtype="float64"), progress=False)
    with pytest.raises(TypeError, match="FmaSplit"):
        train_ensemble(ensemble, {"train_inputs": torch.zeros(2, 8, 2)}, progress=False)
    with pytest.raises(TypeError, match="MLPEnsemble"):
        train_ensemble(TinyMLP(MLPConfig()), fma_splits([0], n_train=8, n_val=4), progress=False)
    with pytest.raises(ValueError, match="one network's split"):
        train_mlp(TinyMLP(MLPConfig()), fma_splits([0], n_train=8, n_val=4))
    for bad in (0, -5):
        with pytest.raises(ValueError, match="epochs must be a positive integer"):
            EnsembleTrainConfig(epochs=bad)
    with pytest.raises((ValueError, TypeError), match="epochs"):  # TypeError under runtime type checking
        EnsembleTrainConfig(epochs=1.5)
    with pytest.raises(ValueError, match="beta2"):
        EnsembleTrainConfig(beta2=1.0)


@pytest.mark.slow
def test_compiled_step_trains_like_the_eager_step():
    seeds = [1, 2, 3]
    config = dict(epochs=100, lr=1e-2)
    data = fma_splits(seeds, n_train=64, n_val=16, dtype="float64")
    eager = MLPEnsemble(EnsembleConfig(seeds=seeds, dtype="float64"))
    compiled = MLPEnsemble(EnsembleConfig(seeds=seeds, dtype="float64"))
    train_ensemble(eager, data, EnsembleTrainConfig(**config), progress=False)
    train_ensemble(compiled, data, EnsembleTrainConfig(**config, compile=True), progress=False)
    for name in NAMES:
        assert_allclose(getattr(compiled, name).detach(), getattr(eager, name).detach(), rtol=1e-8, atol=1e-10)


def test_deep_gradients_equal_autograd(torch_gen):
    from physlens.training.deep import deep_loss_and_grads

    n_models, n = 4, 30
    widths = [2, 3, 2, 1]
    layers = [
        (torch.randn(n_models, a, b, generator=torch_gen, dtype=torch.float64, requires_grad=True),
         torch.randn(n_models, b, generator=torch_gen, dtype=torch.float64, requires_grad=True))
        for a, b in zip(widths[:-1], widths[1:])
    ]  # fmt: skip
    inputs = torch.rand(n_models, n, 2, generator=torch_gen, dtype=torch.float64)
    targets = inputs.prod(-1, keepdim=True)
    hidden = inputs
    for k, (W, b) in enumerate(layers):
        hidden = torch.baddbmm(b.unsqueeze(1), hidden, W)
        if k < len(layers) - 1:
            hidden = torch.relu(hidden)
    per_model = (hidden - targets).square().mean(dim=(1, 2))
    per_model.sum().backward()
    loss, grads = deep_loss_and_grads(
        [(W.detach(), b.detach()) for W, b in layers], inputs.transpose(1, 2).contiguous(), targets[..., 0]
    )
    assert_allclose(loss, per_model.detach(), rtol=1e-12)
    for (W, b), (grad_W, grad_b) in zip(layers, grads):
        assert_allclose(grad_W, W.grad, rtol=1e-10, atol=1e-12)
        assert_allclose(grad_b, b.grad, rtol=1e-10, atol=1e-12)


def test_deep_ensemble_members_train_like_standalone_networks():
    from physlens.models.mlp import DeepEnsembleConfig, DeepMLPEnsemble
    from physlens.training.deep import train_deep_ensemble

    seeds = [2, 5]
    config = EnsembleTrainConfig(epochs=60, lr=1e-2)
    data = fma_splits(seeds, n_train=48, n_val=16, dtype="float64")
    ensemble = DeepMLPEnsemble(DeepEnsembleConfig(seeds=seeds, d_hidden=[3, 2], dtype="float64"))
    result = train_deep_ensemble(ensemble, data, config, progress=False)
    assert result.train_loss.shape == (60, 2) and bool((result.final_train_loss < result.train_loss[0]).all())
    for i, s in enumerate(seeds):  # the reference: one network, autograd, torch.optim.Adam
        alone = DeepMLPEnsemble(DeepEnsembleConfig(seeds=[s], d_hidden=[3, 2], dtype="float64"))
        optimizer = torch.optim.Adam(alone.parameters(), lr=1e-2)
        split = data.member(i)
        for _ in range(60):
            optimizer.zero_grad()
            (alone(split.train_inputs[None]) - split.train_targets[None]).square().mean().backward()
            optimizer.step()
        for (W, b), (W_ref, b_ref) in zip(ensemble.layer_parameters(), alone.layer_parameters()):
            assert_allclose(W[i], W_ref[0], rtol=1e-9, atol=1e-12)
            assert_allclose(b[i], b_ref[0], rtol=1e-9, atol=1e-12)
    with pytest.raises(ValueError, match="neither compile nor snapshot_every"):
        train_deep_ensemble(ensemble, data, EnsembleTrainConfig(epochs=2, snapshot_every=1), progress=False)
    with pytest.raises(TypeError, match="DeepMLPEnsemble"):
        train_deep_ensemble(MLPEnsemble(EnsembleConfig(seeds=seeds)), data, progress=False)
    with pytest.raises(ValueError, match="one split per member"):
        train_deep_ensemble(ensemble, fma_splits([1], n_train=8, n_val=2, dtype="float64"), progress=False)
