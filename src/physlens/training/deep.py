"""Full-batch Adam for stacks of F = m·a networks with several hidden layers.

:func:`train_deep_ensemble` trains every member of a :class:`~physlens.models.mlp.DeepMLPEnsemble`
on its own fixed split with the same recipe as :func:`~physlens.training.train_ensemble` (the
seed's: full-batch Adam on the mean squared error). Gradients are written out by hand for the
stacked tensors (:func:`deep_loss_and_grads`, checked against autograd in the tests), and one
``torch.optim.Adam`` steps all members, which is exact because members share no parameters and
Adam acts element by element.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from jaxtyping import Float
from torch import Tensor
from tqdm.auto import tqdm

from physlens.models.mlp import DeepMLPEnsemble
from physlens.systems.fma import FmaSplit
from physlens.training.ensemble import EnsembleTrainConfig, _check_ensemble_divergence


@dataclass
class DeepTrainResult:
    """What :func:`train_deep_ensemble` returns; the ensemble itself is trained in place."""

    ensemble: DeepMLPEnsemble
    train_loss: Float[Tensor, "epoch model"]  # full-batch training MSE before each step
    final_train_loss: Float[Tensor, " model"]  # training MSE after the last step
    val_loss: Float[Tensor, " model"]  # validation MSE after the last step


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


def train_deep_ensemble(
    ensemble: DeepMLPEnsemble, data: FmaSplit, config: EnsembleTrainConfig | None = None, *, progress: bool = True
) -> DeepTrainResult:
    """Train every member of ``ensemble`` in place on its own split by full-batch Adam.

    ``data`` must hold one split per member (``[model, n, 2]``). ``config`` is the ensemble recipe
    (epochs, learning rate, Adam's betas and eps); snapshots and ``compile`` are not supported here
    and are refused. Raises :class:`~physlens.training.TrainingDiverged` (a ``FloatingPointError``), as
    every training path does, naming the members whose loss stopped being finite or rose far above its start.
    """
    config = config or EnsembleTrainConfig()
    if not isinstance(ensemble, DeepMLPEnsemble):
        raise TypeError(f"ensemble must be a DeepMLPEnsemble, got {type(ensemble).__name__}")
    if config.compile or config.snapshot_every:
        raise ValueError("train_deep_ensemble supports neither compile nor snapshot_every; set both to their defaults")
    if not isinstance(data, FmaSplit) or data.n_models != ensemble.n_models:
        raise ValueError(f"data must be an FmaSplit with one split per member ({ensemble.n_models}), got {type(data).__name__}")
    dtype = ensemble.layers[0].W.dtype
    if data.train_inputs.dtype != dtype:
        raise ValueError(f"data must have the model's dtype {dtype}, got {data.train_inputs.dtype}")
    data = data.to(device=ensemble.device)
    inputs_t = data.train_inputs.transpose(1, 2).contiguous()  # [model, d_in, n]
    targets = data.train_targets.squeeze(-1).contiguous()  # [model, n]
    pairs = [(layer.W, layer.b) for layer in ensemble.layers]
    params = [p for pair in pairs for p in pair]
    optimizer = torch.optim.Adam(params, lr=config.lr, betas=(config.beta1, config.beta2), eps=config.eps)
    losses = torch.empty(config.epochs, ensemble.n_models, dtype=dtype, device=data.train_inputs.device)
    for epoch in tqdm(range(config.epochs), desc="deep ensemble", disable=not progress, leave=False):
        with torch.no_grad():
            loss, grads = deep_loss_and_grads([(W.detach(), b.detach()) for W, b in pairs], inputs_t, targets)
        for (W, b), (grad_W, grad_b) in zip(pairs, grads):
            W.grad, b.grad = grad_W, grad_b
        optimizer.step()
        losses[epoch] = loss
    for p in params:
        p.grad = None
    final_train = _mse(ensemble, data.train_inputs, data.train_targets)
    val = _mse(ensemble, data.val_inputs, data.val_targets)
    _check_ensemble_divergence(losses.cpu(), final_train.cpu(), targets, ensemble, config)
    return DeepTrainResult(ensemble=ensemble, train_loss=losses.cpu(), final_train_loss=final_train.cpu(), val_loss=val.cpu())


__all__ = ["DeepTrainResult", "deep_loss_and_grads", "train_deep_ensemble"]
