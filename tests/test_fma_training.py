"""Batched full-batch Adam: hand-written gradients, member == standalone training, snapshots, bad input.

Every backend (the fused CPU kernel and the eager torch step) is checked against :func:`train_mlp`,
autograd + ``torch.optim.Adam`` on one network, which shares no code with either.
"""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from numpy.testing import assert_allclose

from physlens.models.mlp import EnsembleConfig, MLPConfig, MLPEnsemble, TinyMLP
from physlens.systems.fma import fma_split, fma_splits
from physlens.training import _fused
from physlens.training import ensemble as ensemble_training
from physlens.training.ensemble import (
    EnsembleTrainConfig,
    ensemble_loss_and_grads,
    fused_loss_and_grads,
    train_ensemble,
    train_mlp,
)

NAMES = ("W_in", "b_in", "W_out", "b_out")
BACKENDS = ["fused", "eager"]


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


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("width", [1, 2, 3])
def test_member_trained_in_ensemble_equals_network_trained_alone(width, backend, monkeypatch):
    seeds = [11, 12, 13, 14]
    config = EnsembleTrainConfig(epochs=300, lr=1e-2, backend=backend)
    # Small blocks so the chunked paths (several model blocks per step or per kernel call) are tested.
    monkeypatch.setattr(ensemble_training, "CACHE_FLOATS", 2 * width * 64)
    monkeypatch.setattr(ensemble_training, "FUSED_CHUNK", 3)
    data = fma_splits(seeds, n_train=64, n_val=32, dtype="float64")
    ensemble = MLPEnsemble(EnsembleConfig(seeds=seeds, d_hidden=width, dtype="float64"))
    result = train_ensemble(ensemble, data, config, progress=False)
    assert result.backend == backend
    for i, s in enumerate(seeds):
        alone = TinyMLP(MLPConfig(d_hidden=width, seed=s, dtype="float64"))
        reference = train_mlp(alone, fma_split(s, n_train=64, n_val=32, dtype="float64"), config)
        member = ensemble.member(i)
        for name in NAMES:
            assert_allclose(getattr(member, name).detach(), getattr(alone, name).detach(), rtol=1e-9, atol=1e-11)
        assert_allclose(result.val_loss[i].item(), reference.val_loss, rtol=1e-9)
        assert_allclose(result.train_loss[:, i], reference.train_loss, rtol=1e-9)


@pytest.mark.parametrize("backend", BACKENDS)
def test_float32_member_stays_close_to_float32_standalone(backend):
    seeds = [5, 6]
    config = EnsembleTrainConfig(epochs=200, backend=backend)
    ensemble = MLPEnsemble(EnsembleConfig(seeds=seeds))
    train_ensemble(ensemble, fma_splits(seeds, n_train=128, n_val=16), config, progress=False)
    alone = TinyMLP(MLPConfig(seed=6))
    train_mlp(alone, fma_split(6, n_train=128, n_val=16), config)
    for name in NAMES:
        assert_allclose(getattr(ensemble.member(1), name).detach(), getattr(alone, name).detach(), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_training_lowers_loss_and_keeps_snapshots(backend):
    seeds = list(range(6))
    config = EnsembleTrainConfig(epochs=400, lr=1e-2, snapshot_every=100, backend=backend)
    ensemble = MLPEnsemble(EnsembleConfig(seeds=seeds, dtype="float64"))
    start = {name: getattr(ensemble, name).detach().clone() for name in NAMES}
    result = train_ensemble(ensemble, fma_splits(seeds, n_train=64, n_val=64, dtype="float64"), config, progress=False)
    assert result.snapshot_epochs == [0, 100, 200, 300, 400]
    assert result.snapshots["W_in"].shape == (5, 6, 2, 2)
    assert torch.equal(result.snapshots["b_in"][0], start["b_in"])
    assert torch.equal(result.snapshots["W_out"][-1], ensemble.W_out.detach())
    assert bool((result.final_train_loss < result.train_loss[0]).all())
    assert result.train_loss.shape == (400, 6)
    assert result.train_seconds > 0


def test_fused_and_eager_snapshots_agree():
    seeds = [3, 8, 21]
    data = fma_splits(seeds, n_train=50, n_val=10, dtype="float64")
    results = {}
    for backend in BACKENDS:
        ensemble = MLPEnsemble(EnsembleConfig(seeds=seeds, d_hidden=3, dtype="float64"))
        config = EnsembleTrainConfig(epochs=250, lr=5e-3, snapshot_every=60, backend=backend)
        results[backend] = train_ensemble(ensemble, data, config, progress=False)
    fused, eager = results["fused"], results["eager"]
    assert fused.snapshot_epochs == eager.snapshot_epochs == [0, 60, 120, 180, 240, 250]
    for name in NAMES:
        assert fused.snapshots[name].shape == eager.snapshots[name].shape
        assert_allclose(fused.snapshots[name], eager.snapshots[name], rtol=1e-10, atol=1e-12)
    assert_allclose(fused.train_loss, eager.train_loss, rtol=1e-10)
    assert_allclose(fused.val_loss, eager.val_loss, rtol=1e-10)


def _adam_reference(params, x, y, epochs, lr):
    """Autograd + torch.optim.Adam on one network with d_in inputs: x [n, d_in], y [n]."""
    leaves = [p.clone().requires_grad_() for p in params]
    optimizer = torch.optim.Adam(leaves, lr=lr)
    losses = []
    for _ in range(epochs):
        optimizer.zero_grad()
        out = torch.relu(x @ leaves[0] + leaves[1]) @ leaves[2] + leaves[3]
        loss = (out[:, 0] - y).square().mean()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return [p.detach() for p in leaves], np.array(losses)


def _kernel_adam(params, x, y, epochs, lr, snap_epoch):
    """The fused kernel on the network ``params`` (x [n, d_in], y [n]): its parameters, loss curve and the snapshot
    after ``snap_epoch``."""
    d_in, width = params[0].shape
    theta = torch.cat([p.reshape(-1) for p in params]).numpy()[None].copy()
    snap_at = np.full(epochs, -1, dtype=np.int64)
    snap_at[snap_epoch] = 0
    losses, snaps = np.empty((1, epochs)), np.empty((1, 1, theta.shape[1]))
    _fused.train_networks(
        theta, x.T.contiguous().numpy()[None], y.numpy()[None], d_in=d_in, d_hidden=width, epochs=epochs, lr=lr,
        beta1=0.9, beta2=0.999, eps=1e-8, snap_at=snap_at, losses=losses, snaps=snaps,
        exp_avg=np.zeros_like(theta), exp_avg_sq=np.zeros_like(theta),
    )  # fmt: skip
    return theta[0], losses[0], snaps[0, 0]


def _random_problem(n, d_in, width, torch_gen):
    """``n`` float64 inputs in [-0.5, 1.5)^d_in, targets sin(Σx) + x₀², and random parameters of one network."""
    x = torch.rand(n, d_in, generator=torch_gen, dtype=torch.float64) * 2 - 0.5
    y = torch.sin(x.sum(1)) + x[:, 0] ** 2
    params = [
        torch.randn(d_in, width, generator=torch_gen, dtype=torch.float64),
        torch.randn(width, generator=torch_gen, dtype=torch.float64) * 0.3,
        torch.randn(width, 1, generator=torch_gen, dtype=torch.float64) * 0.5,
        torch.randn(1, generator=torch_gen, dtype=torch.float64),
    ]
    return x, y, params


@pytest.mark.parametrize(("d_in", "width"), [(1, 4), (3, 2), (2, 7)])
def test_fused_kernel_equals_autograd_adam_for_other_shapes(d_in, width, torch_gen):
    """The generated kernel for any number of inputs and hidden units, on data of another function."""
    epochs, lr = 120, 2e-2
    x, y, params = _random_problem(37, d_in, width, torch_gen)
    reference, reference_losses = _adam_reference(params, x, y, epochs, lr)
    theta, losses, snap = _kernel_adam(params, x, y, epochs, lr, snap_epoch=49)
    assert_allclose(theta, torch.cat([p.reshape(-1) for p in reference]).numpy(), rtol=1e-9, atol=1e-11)
    assert_allclose(losses, reference_losses, rtol=1e-9)
    assert not np.array_equal(snap, theta)  # a snapshot from the middle of training


def test_fused_kernel_uses_every_thread_without_changing_results(monkeypatch):
    seeds = list(range(7))
    data = fma_splits(seeds, n_train=40, n_val=8)
    monkeypatch.setattr(ensemble_training, "FUSED_CHUNK", 2)
    trained = []
    for threads in (1, 2):
        previous = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            ensemble = MLPEnsemble(EnsembleConfig(seeds=seeds))
            train_ensemble(ensemble, data, EnsembleTrainConfig(epochs=50, backend="fused"), progress=False)
        finally:
            torch.set_num_threads(previous)
        trained.append(ensemble)
    for name in NAMES:
        assert torch.equal(getattr(trained[0], name), getattr(trained[1], name))


def test_auto_falls_back_to_eager_with_a_message_when_the_kernel_cannot_run(monkeypatch):
    monkeypatch.setattr(_fused, "fused_unavailable_reason", lambda: "numba is not installed (pip install numba)")
    seeds = [1, 2]
    data = fma_splits(seeds, n_train=32, n_val=8)
    with pytest.warns(UserWarning, match="eager step: numba is not installed"):
        result = train_ensemble(MLPEnsemble(EnsembleConfig(seeds=seeds)), data, EnsembleTrainConfig(epochs=5), progress=False)
    assert result.backend == "eager"
    with pytest.raises(RuntimeError, match="backend='fused' cannot train this ensemble: numba is not installed"):
        train_ensemble(MLPEnsemble(EnsembleConfig(seeds=seeds)), data, EnsembleTrainConfig(epochs=5, backend="fused"), progress=False)


def test_auto_picks_the_fused_kernel_only_where_it_can_run():
    config = EnsembleTrainConfig()
    assert ensemble_training.select_backend(MLPEnsemble(EnsembleConfig(seeds=[0])), config) == "fused"
    half = MLPEnsemble(EnsembleConfig(seeds=[0], dtype="bfloat16"))
    assert "bfloat16" in ensemble_training.fused_unavailable_reason(half)
    with pytest.warns(UserWarning, match="bfloat16"):
        assert ensemble_training.select_backend(half, config) == "eager"
    assert ensemble_training.select_backend(half, EnsembleTrainConfig(backend="eager")) == "eager"


def test_bad_training_input_is_refused():
    ensemble = MLPEnsemble(EnsembleConfig(seeds=[0, 1]))
    with pytest.raises(ValueError, match="2 model"):
        train_ensemble(ensemble, fma_splits([0, 1, 2], n_train=8, n_val=4), EnsembleTrainConfig(epochs=1), progress=False)
    with pytest.raises(ValueError, match="dtype"):
        train_ensemble(ensemble, fma_splits([0, 1], n_train=8, n_val=4, dtype="float64"), progress=False)
    with pytest.raises(TypeError, match="SupervisedSplit"):
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
    with pytest.raises(ValueError, match="backend must be one of"):
        EnsembleTrainConfig(backend="numba")
    with pytest.raises(ValueError, match="compile=True"):
        EnsembleTrainConfig(compile=True, backend="fused")


@pytest.mark.slow
@pytest.mark.unchecked_types
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


@pytest.mark.slow
def test_fused_kernel_gives_the_same_bits_compiled_afresh_or_loaded_from_the_cache(tmp_path):
    """A study must not change with the state of the kernel cache: one process compiles the kernel
    into an empty cache, a second loads it from there, and both train to identical float32 parameters."""
    script = (
        "import torch; torch.set_num_threads(1)\n"
        "from physlens.models.mlp import EnsembleConfig, MLPEnsemble\n"
        "from physlens.systems.fma import fma_splits\n"
        "from physlens.training.ensemble import EnsembleTrainConfig, train_ensemble\n"
        "seeds = list(range(8)); e = MLPEnsemble(EnsembleConfig(seeds=seeds, d_hidden=8))\n"
        "train_ensemble(e, fma_splits(seeds, n_train=512, n_val=8), EnsembleTrainConfig(epochs=2000, backend='fused'), progress=False)\n"
        "print(torch.cat([p.detach().flatten() for p in e.parameters()]).numpy().tobytes().hex())\n"
    )
    env = {**os.environ, "PHYSLENS_CACHE_DIR": str(tmp_path)}
    runs = [subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True) for _ in range(2)]
    assert list(tmp_path.glob("fused/*.py")), "the first run should have written the kernel to the cache"
    assert runs[0].stdout == runs[1].stdout


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


def test_a_diverging_deep_ensemble_raises_training_diverged_naming_its_members():
    from physlens.models.mlp import DeepEnsembleConfig, DeepMLPEnsemble
    from physlens.training import TrainingDiverged
    from physlens.training.deep import train_deep_ensemble

    seeds = [2, 5]
    data = fma_splits(seeds, n_train=48, n_val=16, dtype="float64")
    ensemble = DeepMLPEnsemble(DeepEnsembleConfig(seeds=seeds, d_hidden=[3, 2], dtype="float64"))
    with pytest.raises(TrainingDiverged, match=r"training diverged for \d of 2 networks: members \[.*\] \(seeds"):
        train_deep_ensemble(ensemble, data, EnsembleTrainConfig(epochs=40, lr=1e6), progress=False)


@pytest.mark.parametrize("hidden", [[2, 2], [3, 2]])
def test_the_fused_deep_kernel_trains_like_the_eager_step(hidden):
    from physlens.models.mlp import DeepEnsembleConfig, DeepMLPEnsemble
    from physlens.training.deep import train_deep_ensemble

    seeds = list(range(8))
    data = fma_splits(seeds, n_train=256, n_val=16, dtype="float64")
    results = {}
    for backend in ("fused", "eager"):
        ensemble = DeepMLPEnsemble(DeepEnsembleConfig(seeds=seeds, d_hidden=hidden, dtype="float64"))
        results[backend] = train_deep_ensemble(ensemble, data, EnsembleTrainConfig(epochs=3000, backend=backend), progress=False)
    fused, eager = results["fused"], results["eager"]
    assert (fused.backend, eager.backend) == ("fused", "eager")
    assert_allclose(fused.train_loss, eager.train_loss, rtol=1e-9, atol=0)  # the whole loss curve
    assert_allclose(fused.val_loss, eager.val_loss, rtol=1e-9, atol=0)
    for (W, b), (W_ref, b_ref) in zip(fused.ensemble.layer_parameters(), eager.ensemble.layer_parameters()):
        assert_allclose(W, W_ref, rtol=1e-9, atol=1e-12)
        assert_allclose(b, b_ref, rtol=1e-9, atol=1e-12)
    assert bool((fused.train_loss[-1] <= fused.train_loss[0]).all())  # and they did train
    assert float(fused.train_loss[-1].median()) < 0.1 * float(fused.train_loss[0].median())


def test_the_deep_ensemble_falls_back_to_the_eager_step_where_the_kernel_cannot_run(monkeypatch):
    from physlens.models.mlp import DeepEnsembleConfig, DeepMLPEnsemble
    from physlens.training import _fused
    from physlens.training.deep import train_deep_ensemble

    monkeypatch.setattr(_fused, "fused_unavailable_reason", lambda: "numba is not installed (pip install numba)")
    data = fma_splits([1], n_train=16, n_val=4, dtype="float64")
    make = lambda: DeepMLPEnsemble(DeepEnsembleConfig(seeds=[1], d_hidden=[2, 2], dtype="float64"))  # noqa: E731
    with pytest.warns(UserWarning, match="eager step: numba is not installed"):
        result = train_deep_ensemble(make(), data, EnsembleTrainConfig(epochs=3), progress=False)
    assert result.backend == "eager"
    with pytest.raises(RuntimeError, match="backend='fused' cannot train"):
        train_deep_ensemble(make(), data, EnsembleTrainConfig(epochs=3, backend="fused"), progress=False)


def test_the_deep_kernel_source_refuses_a_network_without_a_hidden_layer():
    from physlens.training._fused import deep_kernel_source, deep_param_count

    assert deep_param_count([2, 2, 2, 1]) == 15
    with pytest.raises(ValueError, match="at least one hidden layer"):
        deep_kernel_source([2, 1])


def test_a_run_cut_into_small_uneven_chunks_ends_with_the_same_bits(monkeypatch):
    """The training loop runs the kernels and the eager steps in chunks; where the chunks fall changes nothing."""
    from physlens.models.mlp import DeepEnsembleConfig, DeepMLPEnsemble
    from physlens.training import loop
    from physlens.training.deep import train_deep_ensemble

    seeds = [3, 4, 5]
    data = fma_splits(seeds, n_train=40, n_val=8)
    config = dict(epochs=90, lr=1e-2, snapshot_every=25)
    runs = {}
    for small in (False, True):
        if small:  # fused chunks of 11 epochs, eager ones of 10; the last fused one shorter
            monkeypatch.setattr(ensemble_training, "FUSED_CHUNK_POINT_EPOCHS", 40 * 11)
            monkeypatch.setattr(ensemble_training, "FUSED_CHUNK", 2)
            monkeypatch.setattr(loop, "PROGRESS_REPORTS", 9)
            assert ensemble_training._fused_chunk_epochs(90, 40) == 11 and loop.chunk_steps(90) == 10
        for backend in ("fused", "eager"):
            ensemble = MLPEnsemble(EnsembleConfig(seeds=seeds))
            result = train_ensemble(ensemble, data, EnsembleTrainConfig(**config, backend=backend), progress=False)
            deep = DeepMLPEnsemble(DeepEnsembleConfig(seeds=seeds, d_hidden=[2, 2]))
            deep_result = train_deep_ensemble(deep, data, EnsembleTrainConfig(epochs=90, lr=1e-2, backend=backend), progress=False)
            runs[small, backend] = [result.train_loss, result.final_train_loss, *result.snapshots.values(),
                                    *(p.detach() for p in ensemble.parameters()), deep_result.train_loss,
                                    *(p.detach() for p in deep.parameters())]
    for backend in ("fused", "eager"):
        assert all(torch.equal(a, b) for a, b in zip(runs[False, backend], runs[True, backend], strict=True))


def test_an_ensemble_reports_its_progress_between_chunks_from_the_calling_thread(monkeypatch):
    from physlens._progress import ProgressSink, reporting_progress

    seen = []
    monkeypatch.setattr(ensemble_training, "FUSED_CHUNK", 1)  # one network per kernel call: worker threads where there are several
    data = fma_splits([0, 1, 2], n_train=32, n_val=8)
    with reporting_progress(ProgressSink(heartbeat=seen.append, heartbeat_interval=0.0)):
        for backend in ("fused", "eager"):
            train_ensemble(MLPEnsemble(EnsembleConfig(seeds=[0, 1, 2])), data, EnsembleTrainConfig(epochs=40, backend=backend),
                           progress=False)
    steps = [line.split(",")[0] for line in seen]
    assert steps[-1] == "ensemble step 40/40" and "ensemble (fused) step 40/40" in steps
    assert [s for s in steps if s.startswith("ensemble step")] == [f"ensemble step {k}/40" for k in range(2, 41, 2)]
