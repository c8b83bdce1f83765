"""Full-batch Adam for stacks of F = m·a networks with several hidden layers.

:func:`train_deep_ensemble` trains every member of a :class:`~physlens.models.mlp.DeepMLPEnsemble`
on its own fixed split with the same recipe as :func:`~physlens.training.train_ensemble` (the
seed's: full-batch Adam on the mean squared error), through the same training loop and with the
same two kinds of backend. On the CPU a fused numba kernel (generated for the network's widths, as
for one hidden layer) runs a long chunk of epochs of one network while its data sit in cache.
Elsewhere, and where the kernel cannot run, the eager step writes the gradients out by hand for the
stacked tensors (:func:`deep_loss_and_grads`, checked against autograd in the tests), and one
``torch.optim.Adam`` steps all members, which is exact because members share no parameters and Adam
acts element by element.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from physlens.models.mlp import DeepMLPEnsemble
from physlens.systems.base import SupervisedSplit, check_supervised_split
from physlens.training import _fused
from physlens.training.ensemble import (
    EnsembleTrainConfig,
    _fused_chunk_epochs,
    _fused_or_eager,
    _FusedSteps,
    _HandGradientSteps,
    member_guard,
)
from physlens.training.loop import TrainingResult, chunk_steps, train_loop


@dataclass
class DeepTrainResult(TrainingResult):
    """What :func:`train_deep_ensemble` returns; the ensemble itself is trained in place."""

    LOSSES_FIELD: ClassVar[str] = "train_loss"

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
    return _fused_or_eager(config.backend, ensemble, deep_fused_unavailable_reason, "train_deep_ensemble")


def _fused_steps(
    ensemble: DeepMLPEnsemble, params: list[Tensor], inputs_t: Tensor, targets: Tensor, config: EnsembleTrainConfig
) -> _FusedSteps:
    """The fused kernel as the training loop's backend."""
    widths = ensemble.cfg.widths
    x, y = inputs_t.numpy(), targets.numpy()
    _fused.prepare_deep(widths, params[0].detach().numpy().dtype)  # compile (or load) before the clock starts

    def kernel(part: slice, theta: np.ndarray, m: np.ndarray, v: np.ndarray, start: int, stop: int, losses: np.ndarray) -> None:
        _fused.train_deep_networks(
            theta, x[part], y[part], widths=widths, epochs=stop - start, first_epoch=start, lr=config.lr,
            beta1=config.beta1, beta2=config.beta2, eps=config.eps, losses=losses, exp_avg=m, exp_avg_sq=v,
        )  # fmt: skip

    return _FusedSteps(params, ensemble.n_models, kernel, _fused_chunk_epochs(config.epochs, targets.shape[1]))


def _eager_steps(
    ensemble: DeepMLPEnsemble, params: list[Tensor], inputs_t: Tensor, targets: Tensor, config: EnsembleTrainConfig
) -> _HandGradientSteps:
    """Hand-written gradients (:func:`deep_loss_and_grads`) and one ``torch.optim.Adam`` as the training loop's backend."""
    pairs = [(layer.W, layer.b) for layer in ensemble.layers]

    @torch.no_grad()
    def loss_and_grads() -> tuple[Tensor, list[Tensor]]:
        loss, grads = deep_loss_and_grads([(W.detach(), b.detach()) for W, b in pairs], inputs_t, targets)
        return loss, [g for pair in grads for g in pair]

    return _HandGradientSteps(params, config, loss_and_grads, chunk_steps(config.epochs))


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
    params = [t for layer in ensemble.layers for t in (layer.W, layer.b)]
    make_steps = _fused_steps if backend == "fused" else _eager_steps
    chunks: list[Tensor] = []
    run = train_loop(
        make_steps(ensemble, params, inputs_t, targets, config), steps=config.epochs,
        guard=member_guard(targets, ensemble, config.lr), after_chunk=lambda start, stop, losses: chunks.append(losses),
        final_loss=lambda: _mse(ensemble, data.train_inputs, data.train_targets).cpu(), progress=progress,
        desc="deep ensemble" if backend != "fused" else "deep ensemble (fused)",
    )  # fmt: skip
    return DeepTrainResult(
        ensemble=ensemble, train_loss=torch.cat(chunks), final_train_loss=run.final_loss,
        val_loss=_mse(ensemble, data.val_inputs, data.val_targets).cpu(), backend=backend,
        train_seconds=run.train_seconds, train_cpu_seconds=run.train_cpu_seconds,
    )  # fmt: skip

__all__ = ["DeepTrainResult", "deep_fused_unavailable_reason", "deep_loss_and_grads", "select_deep_backend", "train_deep_ensemble"]
