"""Full-batch Adam for stacks of F = m·a networks with several hidden layers.

:func:`train_deep_ensemble` trains every member of a :class:`~physlens.models.mlp.DeepMLPEnsemble`
on its own fixed split with the same recipe as :func:`~physlens.training.train_ensemble` (the
seed's: full-batch Adam on the mean squared error). On the CPU a fused numba kernel (generated for
the network's widths, as for one hidden layer) runs every epoch of one network while its data sit
in cache. Elsewhere, and where the kernel cannot run, the eager step writes the gradients out by
hand for the stacked tensors (:func:`deep_loss_and_grads`, checked against autograd in the tests),
and one ``torch.optim.Adam`` steps all members, which is exact because members share no parameters
and Adam acts element by element.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor
from tqdm.auto import tqdm

from physlens.models.mlp import DeepMLPEnsemble
from physlens.systems.base import SupervisedSplit, check_supervised_split
from physlens.training import _fused
from physlens.training.ensemble import (
    EnsembleTrainConfig,
    _check_ensemble_divergence,
    _flat_parameters,
    _run_in_chunks,
    _write_back,
)


@dataclass
class DeepTrainResult:
    """What :func:`train_deep_ensemble` returns; the ensemble itself is trained in place."""

    ensemble: DeepMLPEnsemble
    train_loss: Float[Tensor, "epoch model"]  # full-batch training MSE before each step
    final_train_loss: Float[Tensor, " model"]  # training MSE after the last step
    val_loss: Float[Tensor, " model"]  # validation MSE after the last step
    backend: str = "eager"  # what ran the epochs: "fused" or "eager"
    train_seconds: float = 0.0  # wall time of the epochs alone (no set-up, no compilation, no final evaluation)
    train_cpu_seconds: float = 0.0  # process CPU time of the same


def deep_loss_and_grads(
    layers: list[tuple[Tensor, Tensor]], inputs_t: Float[Tensor, "model d_in n"], targets: Float[Tensor, "model n"]
) -> tuple[Float[Tensor, " model"], list[tuple[Tensor, Tensor]]]:
    """Each member's MSE on its own data and its gradient with respect to every ``(W, b)``.

    ``layers`` holds ``W`` ``[model, fan_in, fan_out]`` and ``b`` ``[model, fan_out]`` per layer;
    every layer but the last is followed by a ReLU, whose derivative at 0 is taken as 0 (as autograd
    does). ``inputs_t`` is the inputs transposed to ``[model, d_in, n]``: activations are kept as
    ``[model, width, n]``, so the data axis is contiguous and the batched products stay fast for
    the tiny widths of these networks.
    """
    activations, pres = [inputs_t], []
    for index, (W, b) in enumerate(layers):
        pre = torch.baddbmm(b.unsqueeze(2), W.transpose(1, 2), activations[-1])  # [model, fan_out, n]
        pres.append(pre)
        activations.append(pre.clamp_min(0) if index < len(layers) - 1 else pre)
    err = activations[-1].squeeze(1) - targets  # [model, n]
    loss = err.square().mean(1)
    delta = (err * (2.0 / targets.shape[1])).unsqueeze(1)  # [model, 1, n]
    grads: list[tuple[Tensor, Tensor]] = []
    for index in range(len(layers) - 1, -1, -1):
        grads.append((torch.bmm(activations[index], delta.transpose(1, 2)), delta.sum(2)))
        if index:
            delta = torch.bmm(layers[index][0], delta).masked_fill_(pres[index - 1] <= 0, 0.0)  # [model, fan_in, n]
    return loss, grads[::-1]


@torch.no_grad()
def _mse(ensemble: DeepMLPEnsemble, inputs: Tensor, targets: Tensor) -> Tensor:
    return (ensemble(inputs) - targets).square().mean(dim=(1, 2))


def deep_fused_unavailable_reason(ensemble: DeepMLPEnsemble) -> str | None:
    """Why the fused kernel cannot train ``ensemble`` here (``None`` when it can)."""
    dtype = ensemble.layers[0].W.dtype
    if ensemble.device.type != "cpu":
        return f"the fused kernel runs on the CPU and the ensemble is on {ensemble.device}"
    if dtype not in (torch.float32, torch.float64):
        return f"the fused kernel handles float32 and float64, not {dtype}"
    n_params = _fused.deep_param_count(ensemble.cfg.widths)
    if n_params > _fused.MAX_DEEP_PARAMS:
        return f"{n_params} parameters per network exceed the fused kernel's {_fused.MAX_DEEP_PARAMS}"
    return _fused.fused_unavailable_reason()


def select_deep_backend(ensemble: DeepMLPEnsemble, config: EnsembleTrainConfig) -> str:
    """The implementation :func:`train_deep_ensemble` uses: ``"fused"`` or ``"eager"``.

    As for one hidden layer: ``backend="auto"`` picks the fused kernel where it can run and otherwise
    the eager step, with a warning on the CPU that says why; ``backend="fused"`` raises instead.
    """
    if config.backend == "eager":
        return "eager"
    reason = deep_fused_unavailable_reason(ensemble)
    if reason is None:
        return "fused"
    if config.backend == "fused":
        raise RuntimeError(f"backend='fused' cannot train this ensemble: {reason}")
    if ensemble.device.type == "cpu":
        warnings.warn(f"train_deep_ensemble uses the slower eager step: {reason}", stacklevel=3)
    return "eager"


def _train_fused(ensemble: DeepMLPEnsemble, inputs_t: Tensor, targets: Tensor, config: EnsembleTrainConfig, progress: bool
                 ) -> tuple[Tensor, tuple[float, float]]:
    """Train with the fused kernel, in place; returns the losses [epoch, model] and (wall, CPU) seconds."""
    params = [t for layer in ensemble.layers for t in (layer.W, layer.b)]
    n_models, widths = ensemble.n_models, ensemble.cfg.widths
    theta = _flat_parameters(params, n_models)
    losses = np.empty((n_models, config.epochs), dtype=theta.dtype)
    exp_avg, exp_avg_sq = np.zeros_like(theta), np.zeros_like(theta)
    x, y = inputs_t.numpy(), targets.numpy()
    _fused.prepare_deep(widths, theta.dtype)  # compile (or load) before the clock starts

    def run(part: slice) -> None:
        _fused.train_deep_networks(
            theta[part], x[part], y[part], widths=widths, epochs=config.epochs, lr=config.lr, beta1=config.beta1,
            beta2=config.beta2, eps=config.eps, losses=losses[part], exp_avg=exp_avg[part], exp_avg_sq=exp_avg_sq[part],
        )  # fmt: skip

    seconds = _run_in_chunks(n_models, run, "deep ensemble (fused)", progress)
    _write_back(params, theta)
    return torch.from_numpy(losses).T.contiguous(), seconds


def _train_eager(ensemble: DeepMLPEnsemble, inputs_t: Tensor, targets: Tensor, config: EnsembleTrainConfig, progress: bool
                 ) -> tuple[Tensor, tuple[float, float]]:
    """Train with hand-written gradients and one ``torch.optim.Adam``; the losses [epoch, model] and (wall, CPU) seconds."""
    pairs = [(layer.W, layer.b) for layer in ensemble.layers]
    params = [p for pair in pairs for p in pair]
    optimizer = torch.optim.Adam(params, lr=config.lr, betas=(config.beta1, config.beta2), eps=config.eps)
    losses = torch.empty(config.epochs, ensemble.n_models, dtype=targets.dtype, device=targets.device)
    clock = time.perf_counter(), time.process_time()
    for epoch in tqdm(range(config.epochs), desc="deep ensemble", disable=not progress, leave=False):
        with torch.no_grad():
            loss, grads = deep_loss_and_grads([(W.detach(), b.detach()) for W, b in pairs], inputs_t, targets)
        for (W, b), (grad_W, grad_b) in zip(pairs, grads):
            W.grad, b.grad = grad_W, grad_b
        optimizer.step()
        losses[epoch] = loss
    losses = losses.cpu()  # waits for a GPU to finish before the clock stops
    seconds = time.perf_counter() - clock[0], time.process_time() - clock[1]
    for p in params:
        p.grad = None
    return losses, seconds


def train_deep_ensemble(
    ensemble: DeepMLPEnsemble, data: SupervisedSplit, config: EnsembleTrainConfig | None = None, *, progress: bool = True
) -> DeepTrainResult:
    """Train every member of ``ensemble`` in place on its own split by full-batch Adam.

    ``data`` is any :class:`~physlens.systems.base.SupervisedSplit` holding one split per member
    (``[model, n, d_in]``). ``config`` is the ensemble recipe
    (epochs, learning rate, Adam's betas and eps, and ``backend``: see :func:`select_deep_backend`;
    the fused kernel and the eager step agree to round-off); snapshots and ``compile`` are not
    supported here and are refused. Raises :class:`~physlens.training.TrainingDiverged` (a
    ``FloatingPointError``), as every training path does, naming the members whose loss stopped
    being finite or rose far above its start.
    """
    config = config or EnsembleTrainConfig()
    if not isinstance(ensemble, DeepMLPEnsemble):
        raise TypeError(f"ensemble must be a DeepMLPEnsemble, got {type(ensemble).__name__}")
    if config.compile or config.snapshot_every:
        raise ValueError("train_deep_ensemble supports neither compile nor snapshot_every; set both to their defaults")
    check_supervised_split(data, "data")
    if data.n_models != ensemble.n_models:
        raise ValueError(f"data must hold one split per member ({ensemble.n_models}), got n_models={data.n_models}")
    dtype = ensemble.layers[0].W.dtype
    if data.train_inputs.dtype != dtype:
        raise ValueError(f"data must have the model's dtype {dtype}, got {data.train_inputs.dtype}")
    if data.train_inputs.shape[-1] != ensemble.cfg.d_in:
        raise ValueError(f"data must have the model's d_in = {ensemble.cfg.d_in} input columns, got {data.train_inputs.shape[-1]}")
    backend = select_deep_backend(ensemble, config)
    data = data.to(device=ensemble.device)
    inputs_t = data.train_inputs.transpose(1, 2).contiguous()  # [model, d_in, n]
    targets = data.train_targets.squeeze(-1).contiguous()  # [model, n]
    train = _train_fused if backend == "fused" else _train_eager
    losses, seconds = train(ensemble, inputs_t, targets, config, progress)
    final_train = _mse(ensemble, data.train_inputs, data.train_targets)
    val = _mse(ensemble, data.val_inputs, data.val_targets)
    _check_ensemble_divergence(losses, final_train.cpu(), targets, ensemble, config)
    return DeepTrainResult(
        ensemble=ensemble, train_loss=losses, final_train_loss=final_train.cpu(), val_loss=val.cpu(), backend=backend,
        train_seconds=seconds[0], train_cpu_seconds=seconds[1],
    )  # fmt: skip


__all__ = ["DeepTrainResult", "deep_fused_unavailable_reason", "deep_loss_and_grads", "select_deep_backend", "train_deep_ensemble"]
