"""Full-batch Adam for thousands of tiny F = m·a networks at once, and the one-network reference.

:func:`train_ensemble` trains every member of an :class:`MLPEnsemble` on its own fixed split. Two
implementations do the same arithmetic:

* ``"fused"`` (CPU): one compiled kernel (numba) runs every epoch of one network while its data
  sits in cache — a single pass over the points gives the loss and all gradient sums, then Adam
  updates the network's parameters — and moves on to the next network. It is within a small factor
  of what the core's arithmetic allows.
* ``"eager"`` (any device, the reference): gradients written out by hand for the stacked tensors
  (no autograd graph), computed on cache-sized blocks of members, and one ``torch.optim.Adam``
  stepping all members; ``compile=True`` fuses that step with ``torch.compile``, which is the
  path for GPUs.

Both are exact Adam per member, because Adam acts element by element and each member's loss only
touches its own parameters. :func:`train_mlp` trains one :class:`TinyMLP` the plain way (autograd +
Adam) and is what both are tested against: same seed, same data, same result to float round-off.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor
from tqdm.auto import tqdm

from physlens._validation import (
    check_choice,
    check_nonnegative_int,
    check_positive_float,
    check_positive_int,
)
from physlens.models.mlp import PARAM_NAMES, DeepMLPEnsemble, MLPEnsemble, TinyMLP
from physlens.systems.base import SupervisedSplit, check_supervised_split
from physlens.training import _compile, _fused
from physlens.training._divergence import TrainingDiverged, check_loss, diverged_members, loss_reference

CACHE_FLOATS = 1 << 17
"""Size (in values) of one [model, h, n] temporary per block of models in the eager and compiled steps."""

BACKENDS = ("auto", "fused", "eager")
"""How :func:`train_ensemble` runs: the fused CPU kernel, the eager torch step, or the fused one where it can run."""

FUSED_CHUNK = 64
"""Networks per call of the fused kernel (the unit of progress and of work shared between threads)."""


@dataclass
class EnsembleTrainConfig:
    """Training recipe shared by the ensemble and the one-network reference (the seed's defaults)."""

    epochs: int = 4000
    """Full-batch Adam steps."""
    lr: float = 1e-3
    """Adam learning rate."""
    beta1: float = 0.9
    """Adam first-moment decay."""
    beta2: float = 0.999
    """Adam second-moment decay."""
    eps: float = 1e-8
    """Adam denominator guard."""
    snapshot_every: int = 0
    """Keep every member's parameters every k epochs (0: only start and end)."""
    compile: bool = False
    """torch.compile the eager step: the GPU path (eager, with a warning, where no compiler exists)."""
    backend: str = "auto"
    """The training step: "fused" (CPU kernel), "eager" (torch, any device) or "auto" (fused where it can run)."""

    def __post_init__(self) -> None:
        check_positive_int("epochs", self.epochs)
        check_choice("backend", self.backend, BACKENDS)
        if self.compile and self.backend == "fused":
            raise ValueError("compile=True compiles the eager step; it cannot be combined with backend='fused'")
        check_positive_float("lr", self.lr)
        for name in ("beta1", "beta2"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
                raise ValueError(f"{name} must be a number in [0, 1), got {value!r}")
        check_positive_float("eps", self.eps)
        check_nonnegative_int("snapshot_every", self.snapshot_every)

    def snapshot_epochs(self) -> list[int]:
        """Epochs after which parameters are kept: 0 (the initialisation), every k, and the last."""
        every = self.snapshot_every or self.epochs
        return sorted({0, *range(every, self.epochs, every), self.epochs})


@dataclass
class EnsembleTrainResult:
    """What :func:`train_ensemble` returns; the ensemble itself is trained in place."""

    ensemble: MLPEnsemble
    train_loss: Float[Tensor, "epoch model"]  # full-batch training MSE before each step
    final_train_loss: Float[Tensor, " model"]  # training MSE after the last step
    val_loss: Float[Tensor, " model"]  # validation MSE after the last step
    snapshot_epochs: list[int] = field(default_factory=list)  # epochs at which parameters were kept
    snapshots: dict[str, Tensor] = field(default_factory=dict)  # name -> [snapshot, model, ...] on the CPU
    backend: str = "eager"  # what ran the epochs: "fused", "eager" or "compiled"
    train_seconds: float = 0.0  # wall time of the epochs alone (no set-up, no compilation, no final evaluation)
    train_cpu_seconds: float = 0.0  # process CPU time of the same


def ensemble_loss_and_grads(
    W_in: Float[Tensor, "model d_in h"],
    b_in: Float[Tensor, "model h"],
    W_out: Float[Tensor, "model h 1"],
    b_out: Float[Tensor, "model 1"],
    inputs_t: Float[Tensor, "model d_in n"],
    targets: Float[Tensor, "model n"],
) -> tuple[Float[Tensor, " model"], tuple[Tensor, Tensor, Tensor, Tensor]]:
    """Each member's MSE on its own data and its gradient, written out for the stacked tensors.

    ``inputs_t`` is the inputs transposed to ``[model, d_in, n]`` so the data axis is contiguous.
    The ReLU's derivative at 0 is taken as 0, as autograd does.
    """
    n = targets.shape[1]
    pre = torch.baddbmm(b_in.unsqueeze(2), W_in.transpose(1, 2), inputs_t)  # [model, h, n]
    post = pre.clamp_min(0)
    out = torch.baddbmm(b_out.unsqueeze(2), W_out.transpose(1, 2), post).squeeze(1)  # [model, n]
    err = out - targets
    loss = err.square().mean(1)
    d_out = err * (2.0 / n)  # [model, n]
    grad_b_out = d_out.sum(1, keepdim=True)
    grad_W_out = torch.bmm(post, d_out.unsqueeze(2))  # [model, h, 1]
    d_pre = (W_out * d_out.unsqueeze(1)) * (pre > 0)  # [model, h, n]
    grad_W_in = torch.bmm(inputs_t, d_pre.transpose(1, 2))  # [model, d_in, h]
    grad_b_in = d_pre.sum(2)
    return loss, (grad_W_in, grad_b_in, grad_W_out, grad_b_out)


def fused_loss_and_grads(
    W_in: Float[Tensor, "model d_in h"],
    b_in: Float[Tensor, "model h"],
    W_out: Float[Tensor, "model h 1"],
    b_out: Float[Tensor, "model 1"],
    inputs_t: Float[Tensor, "model d_in n"],
    targets: Float[Tensor, "model n"],
) -> tuple[Float[Tensor, " model"], tuple[Tensor, Tensor, Tensor, Tensor]]:
    """:func:`ensemble_loss_and_grads` written with pointwise ops and reductions over the data only.

    Every quantity is a pointwise function of one data point followed by a sum over points, so
    ``torch.compile`` can fuse the whole step into a few loops that read the data once instead of
    materialising ``[model, h, n]`` temporaries; this is the step ``compile=True`` uses.
    """
    n, d_in = targets.shape[1], inputs_t.shape[1]
    columns = [inputs_t[:, None, d, :] for d in range(d_in)]  # each [model, 1, n]
    pre = b_in[:, :, None] + sum(W_in[:, d, :, None] * columns[d] for d in range(d_in))  # [model, h, n]
    post = pre.clamp_min(0)
    err = (post * W_out).sum(1) + b_out - targets  # [model, n]
    loss = (err * err).mean(1)
    d_out = err * (2.0 / n)
    grad_b_out = d_out.sum(1, keepdim=True)
    grad_W_out = (post * d_out[:, None, :]).sum(2, keepdim=True)
    d_pre = torch.where(pre > 0, W_out * d_out[:, None, :], 0.0)
    grad_W_in = torch.stack([(d_pre * columns[d]).sum(2) for d in range(d_in)], dim=1)
    return loss, (grad_W_in, d_pre.sum(2), grad_W_out, grad_b_out)


@torch.no_grad()
def ensemble_mse(ensemble: MLPEnsemble, inputs: Float[Tensor, "model n d_in"], targets: Float[Tensor, "model n 1"]) -> Tensor:
    """Each member's mean squared error on its own ``inputs``/``targets``: ``[model]``."""
    return (ensemble(inputs) - targets).square().mean(dim=(1, 2))


def _check_data(data: SupervisedSplit, model_dtype: torch.dtype, n_models: int | None, d_in: int) -> None:
    check_supervised_split(data, "data")
    if data.n_models != n_models:
        expected = f"stacked splits [model, n, {d_in}]" if n_models else f"one network's split [n, {d_in}]"
        raise ValueError(f"data must hold {expected} for {n_models or 1} model(s), got n_models={data.n_models}")
    if data.train_inputs.dtype != model_dtype:
        raise ValueError(f"data must have the model's dtype {model_dtype}, got {data.train_inputs.dtype}")
    if data.train_inputs.shape[-1] != d_in:
        raise ValueError(f"data must have the model's d_in = {d_in} input columns, got {data.train_inputs.shape[-1]}")


def fused_unavailable_reason(ensemble: MLPEnsemble) -> str | None:
    """Why ``backend="fused"`` cannot train ``ensemble`` here (``None`` when it can)."""
    if ensemble.device.type != "cpu":
        return f"the fused kernel runs on the CPU and the ensemble is on {ensemble.device}"
    if ensemble.W_in.dtype not in (torch.float32, torch.float64):
        return f"the fused kernel handles float32 and float64, not {ensemble.W_in.dtype}"
    if ensemble.cfg.d_in * ensemble.cfg.d_hidden > _fused.MAX_HIDDEN_INPUTS:
        return f"d_in * d_hidden = {ensemble.cfg.d_in * ensemble.cfg.d_hidden} exceeds the fused kernel's {_fused.MAX_HIDDEN_INPUTS}"
    return _fused.fused_unavailable_reason()


def select_backend(ensemble: MLPEnsemble, config: EnsembleTrainConfig) -> str:
    """The implementation :func:`train_ensemble` uses: ``"fused"``, ``"eager"`` or ``"compiled"``.

    ``backend="auto"`` picks the fused kernel where it can run, and otherwise the eager step with a
    warning that says why (on a GPU the eager step is the intended path and no warning is given).
    ``backend="fused"`` raises instead of falling back. ``compile=True`` asks for the eager step
    compiled by ``torch.compile``, and gets the eager one, with a warning, where no compiler exists.
    """
    if config.compile:
        reason = _compile.compiler_unavailable_reason(ensemble.device)
        if reason is None:
            return "compiled"
        warnings.warn(f"train_ensemble uses the eager step: {reason}", stacklevel=3)
        return "eager"
    if config.backend == "eager":
        return "eager"
    reason = fused_unavailable_reason(ensemble)
    if reason is None:
        return "fused"
    if config.backend == "fused":
        raise RuntimeError(f"backend='fused' cannot train this ensemble: {reason}")
    if ensemble.device.type == "cpu":
        warnings.warn(f"train_ensemble uses the slower eager step: {reason}", stacklevel=3)
    return "eager"


def _flat_parameters(params: list[Tensor], n_models: int) -> np.ndarray:
    """The members' parameters side by side, ``[model, param]``, as a writable numpy copy for a fused kernel."""
    return torch.cat([p.detach().reshape(n_models, -1) for p in params], dim=1).numpy().copy()


def _write_back(params: list[Tensor], theta: np.ndarray) -> None:
    """Copy the rows of ``theta`` (as :func:`_flat_parameters` laid them out) back into ``params``, in place."""
    with torch.no_grad():
        for p, row in zip(params, torch.from_numpy(theta).split([p[0].numel() for p in params], dim=1)):
            p.copy_(row.reshape(p.shape))


def _run_in_chunks(n_models: int, run: Callable[[slice], None], desc: str, progress: bool) -> tuple[float, float]:
    """Call ``run`` on slices of at most ``FUSED_CHUNK`` members, side by side on the torch threads (the fused
    kernels release the GIL); returns the (wall, CPU) seconds it took."""

    def one(start: int) -> int:
        part = slice(start, min(start + FUSED_CHUNK, n_models))
        run(part)
        return part.stop - part.start

    starts = range(0, n_models, FUSED_CHUNK)
    workers = min(torch.get_num_threads(), len(starts))
    clock = time.perf_counter(), time.process_time()
    with tqdm(total=n_models, desc=desc, disable=not progress, leave=False) as bar:
        if workers > 1:
            with ThreadPoolExecutor(workers) as pool:
                for done in pool.map(one, starts):
                    bar.update(done)
        else:
            for start in starts:
                bar.update(one(start))
    return time.perf_counter() - clock[0], time.process_time() - clock[1]


def _train_fused(
    ensemble: MLPEnsemble, inputs_t: Tensor, targets: Tensor, config: EnsembleTrainConfig, progress: bool
) -> tuple[Tensor, list[Tensor], tuple[float, float]]:
    """Train with the fused kernel; returns losses [epoch, model], flat snapshots after epoch 0 and (wall, CPU) seconds."""
    params = [getattr(ensemble, name) for name in PARAM_NAMES]
    n_models, epochs = ensemble.n_models, config.epochs
    theta = _flat_parameters(params, n_models)  # [model, param]
    later = config.snapshot_epochs()[1:]
    snap_at = np.full(epochs, -1, dtype=np.int64)
    snap_at[np.array(later) - 1] = np.arange(len(later))
    losses = np.empty((n_models, epochs), dtype=theta.dtype)
    snaps = np.empty((n_models, len(later), theta.shape[1]), dtype=theta.dtype)
    exp_avg, exp_avg_sq = np.zeros_like(theta), np.zeros_like(theta)
    x, y = inputs_t.numpy(), targets.numpy()
    _fused.prepare(ensemble.cfg.d_in, ensemble.cfg.d_hidden, theta.dtype)  # compile (or load) before the clock starts

    def run(part: slice) -> None:
        _fused.train_networks(
            theta[part], x[part], y[part], d_in=ensemble.cfg.d_in, d_hidden=ensemble.cfg.d_hidden, epochs=epochs,
            lr=config.lr, beta1=config.beta1, beta2=config.beta2, eps=config.eps, snap_at=snap_at,
            losses=losses[part], snaps=snaps[part], exp_avg=exp_avg[part], exp_avg_sq=exp_avg_sq[part],
        )  # fmt: skip

    seconds = _run_in_chunks(n_models, run, "ensemble (fused)", progress)
    _write_back(params, theta)
    flat_snaps = [torch.from_numpy(snaps[:, k]) for k in range(len(later))]
    return torch.from_numpy(losses).T.contiguous(), flat_snaps, seconds


def _train_torch(
    ensemble: MLPEnsemble, inputs_t: Tensor, targets: Tensor, config: EnsembleTrainConfig, compiled: bool, progress: bool
) -> tuple[Tensor, dict[str, list[Tensor]], tuple[float, float]]:
    """Train with the eager (or torch.compile'd) step; returns losses [epoch, model], snapshots after epoch 0 and (wall, CPU) seconds."""
    params = [getattr(ensemble, name) for name in PARAM_NAMES]
    optimizer = torch.optim.Adam(params, lr=config.lr, betas=(config.beta1, config.beta2), eps=config.eps)
    step: Callable = torch.compile(fused_loss_and_grads, dynamic=False) if compiled else ensemble_loss_and_grads
    # Eager ops stream [model, h, n] temporaries through memory, and so does the compiled step once
    # its temporaries outgrow the cache; in blocks of models that fit in cache both run several times
    # faster. A GPU wants the whole ensemble in one launch.
    n_models, width, n_points = ensemble.n_models, ensemble.cfg.d_hidden, targets.shape[1]
    on_cpu = ensemble.device.type == "cpu"
    block = max(1, CACHE_FLOATS // (width * n_points)) if on_cpu else n_models
    grads = [torch.empty_like(p) for p in params]
    snapshot_at = set(config.snapshot_epochs()[1:])
    snapshots: dict[str, list[Tensor]] = {name: [] for name in PARAM_NAMES}
    losses = torch.empty(config.epochs, n_models, dtype=targets.dtype, device=targets.device)
    if compiled:  # compile outside the clock, on a throw-away copy
        with torch.no_grad():
            step(*(p.detach()[:block].clone() for p in params), inputs_t[:block], targets[:block])
    clock = time.perf_counter(), time.process_time()
    for epoch in tqdm(range(config.epochs), desc="ensemble", disable=not progress, leave=False):
        with torch.no_grad():
            for start in range(0, n_models, block):
                part = slice(start, start + block)
                loss, part_grads = step(*(p.detach()[part] for p in params), inputs_t[part], targets[part])
                losses[epoch, part] = loss
                for g, part_g in zip(grads, part_grads):
                    g[part] = part_g
        for p, g in zip(params, grads):
            p.grad = g
        optimizer.step()
        if epoch + 1 in snapshot_at:
            for name, p in zip(PARAM_NAMES, params):
                snapshots[name].append(p.detach().to("cpu", copy=True))
    if targets.device.type == "cuda":
        torch.cuda.synchronize(targets.device)
    seconds = time.perf_counter() - clock[0], time.process_time() - clock[1]
    for p in params:
        p.grad = None
    return losses.cpu(), snapshots, seconds


def train_ensemble(
    ensemble: MLPEnsemble, data: SupervisedSplit, config: EnsembleTrainConfig | None = None, *, progress: bool = True
) -> EnsembleTrainResult:
    """Train every member of ``ensemble`` in place on its own split by full-batch Adam.

    ``data`` is any :class:`~physlens.systems.base.SupervisedSplit` stacked ``[model, n, d_in]``
    with one split per member (e.g. from :func:`~physlens.systems.fma.fma_splits`, or a user's own
    task); it is moved to the ensemble's device. ``config.backend`` chooses the
    implementation (see :func:`select_backend`); every one gives each member the result of training
    it alone with :func:`train_mlp`, to float round-off. Raises :class:`TrainingDiverged` (a
    ``FloatingPointError``) naming the members whose loss stopped being finite or rose far above its
    start, checked on the recorded losses after the epochs (the kernels themselves are not slowed).
    """
    config = config or EnsembleTrainConfig()
    if not isinstance(ensemble, MLPEnsemble):
        raise TypeError(f"ensemble must be an MLPEnsemble, got {type(ensemble).__name__}")
    _check_data(data, ensemble.W_in.dtype, ensemble.n_models, ensemble.cfg.d_in)
    backend = select_backend(ensemble, config)
    data = data.to(device=ensemble.device)
    inputs_t = data.train_inputs.transpose(1, 2).contiguous()  # [model, d_in, n]
    targets = data.train_targets.squeeze(-1).contiguous()  # [model, n]
    start = {name: getattr(ensemble, name).detach().to("cpu", copy=True) for name in PARAM_NAMES}
    if backend == "fused":
        losses, flat_snaps, seconds = _train_fused(ensemble, inputs_t, targets, config, progress)
        sizes = [start[name][0].numel() for name in PARAM_NAMES]
        later = {name: [] for name in PARAM_NAMES}
        for flat in flat_snaps:
            for name, part in zip(PARAM_NAMES, flat.split(sizes, dim=1)):
                later[name].append(part.reshape(start[name].shape).clone())
    else:
        losses, later, seconds = _train_torch(ensemble, inputs_t, targets, config, backend == "compiled", progress)
    final_train = ensemble_mse(ensemble, data.train_inputs, data.train_targets)
    val = ensemble_mse(ensemble, data.val_inputs, data.val_targets)
    _check_ensemble_divergence(losses, final_train.cpu(), targets, ensemble, config)
    return EnsembleTrainResult(
        ensemble=ensemble,
        train_loss=losses,
        final_train_loss=final_train.cpu(),
        val_loss=val.cpu(),
        snapshot_epochs=config.snapshot_epochs(),
        snapshots={name: torch.stack([start[name], *later[name]]) for name in PARAM_NAMES},
        backend=backend,
        train_seconds=seconds[0],
        train_cpu_seconds=seconds[1],
    )


def _check_ensemble_divergence(
    losses: Tensor, final_train: Tensor, targets: Tensor, ensemble: MLPEnsemble | DeepMLPEnsemble, config: EnsembleTrainConfig
) -> None:
    """Raise :class:`TrainingDiverged` naming the members (and seeds) whose loss stopped being finite or
    rose far above its start; read from the recorded losses, so the kernels run unchanged."""
    scale = targets.square().mean(dim=1).cpu().to(losses.dtype)  # [model]: the loss of predicting zero
    first = torch.nan_to_num(losses[0], nan=0.0, posinf=0.0)
    references = torch.maximum(first, scale).clamp_min(float(torch.finfo(losses.dtype).tiny))
    members, steps = diverged_members(torch.cat([losses, final_train[None]]), references)
    if members.numel():
        shown = members[:10].tolist()
        raise TrainingDiverged(
            f"training diverged for {members.numel()} of {ensemble.n_models} networks: members {shown} "
            f"(seeds {[ensemble.cfg.seeds[i] for i in shown]}), first at epochs {steps[:10].tolist()}; "
            f"their loss stopped being finite or rose far above its start; lower lr (now {config.lr:g})"
        )


@dataclass
class MLPTrainResult:
    """What :func:`train_mlp` returns; the model itself is trained in place."""

    model: TinyMLP
    train_loss: Float[Tensor, " epoch"]  # full-batch training MSE before each step
    final_train_loss: float  # training MSE after the last step
    val_loss: float  # validation MSE after the last step


def train_mlp(model: TinyMLP, data: SupervisedSplit, config: EnsembleTrainConfig | None = None) -> MLPTrainResult:
    """Train one :class:`TinyMLP` in place the plain way: autograd and ``torch.optim.Adam``, full batch.

    This is the reference the ensemble is checked against, and the baseline of the speed benchmark.
    """
    config = config or EnsembleTrainConfig()
    if not isinstance(model, TinyMLP):
        raise TypeError(f"model must be a TinyMLP, got {type(model).__name__}")
    _check_data(data, model.W_in.dtype, None, model.cfg.d_in)
    data = data.to(device=model.device)
    params = [getattr(model, name) for name in PARAM_NAMES]
    optimizer = torch.optim.Adam(params, lr=config.lr, betas=(config.beta1, config.beta2), eps=config.eps)
    losses = torch.empty(config.epochs, dtype=data.train_targets.dtype)
    for epoch in range(config.epochs):
        optimizer.zero_grad()
        loss = (model(data.train_inputs) - data.train_targets).square().mean()
        loss.backward()
        optimizer.step()
        losses[epoch] = loss.detach()
    with torch.no_grad():
        final_train = (model(data.train_inputs) - data.train_targets).square().mean().item()
        val = (model(data.val_inputs) - data.val_targets).square().mean().item()
    reference = loss_reference(float(losses[0]), data.train_targets.square().mean().item())
    members, steps = diverged_members(torch.cat([losses, torch.tensor([final_train], dtype=losses.dtype)])[:, None],
                                      torch.tensor([reference], dtype=losses.dtype))
    if members.numel():
        step = int(steps[0])
        check_loss(float(losses[step]) if step < config.epochs else final_train, step, reference,
                   hint=f"lower lr (now {config.lr:g})")
    return MLPTrainResult(model=model, train_loss=losses, final_train_loss=final_train, val_loss=val)


__all__ = [
    "EnsembleTrainConfig",
    "EnsembleTrainResult",
    "MLPTrainResult",
    "BACKENDS",
    "ensemble_loss_and_grads",
    "ensemble_mse",
    "fused_loss_and_grads",
    "fused_unavailable_reason",
    "select_backend",
    "train_ensemble",
    "train_mlp",
]
