"""Full-batch Adam for thousands of tiny F = m·a networks at once, and the one-network reference.

:func:`train_ensemble` trains every member of an :class:`MLPEnsemble` on its own fixed split. Two
implementations do the same arithmetic:

* ``"fused"`` (CPU): one compiled kernel (numba) runs a long chunk of epochs of one network while
  its data sits in cache — a single pass over the points gives the loss and all gradient sums, then
  Adam updates the network's parameters — and moves on to the next network. It is within a small
  factor of what the core's arithmetic allows.
* ``"eager"`` (any device, the reference): gradients written out by hand for the stacked tensors
  (no autograd graph), computed on cache-sized blocks of members, and one ``torch.optim.Adam``
  stepping all members; ``compile=True`` fuses that step with ``torch.compile``, which is the
  path for GPUs.

Both are exact Adam per member, because Adam acts element by element and each member's loss only
touches its own parameters. Both are backends of the one training loop
(:func:`~physlens.training.loop.train_loop`), which takes the epochs in chunks and owns the divergence
guard, progress and timing. :func:`train_mlp` trains one :class:`TinyMLP` the plain way (autograd +
Adam, the loop's torch step) and is what both are tested against: same seed, same data, same result
to float round-off.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from physlens._validation import check_choice
from physlens.models.mlp import PARAM_NAMES, DeepMLPEnsemble, MLPEnsemble, TinyMLP
from physlens.systems.base import SupervisedSplit, check_supervised_split
from physlens.training import _compile, _fused
from physlens.training.loop import (
    DivergenceGuard,
    MemberLossCheck,
    OptimiserSteps,
    SingleLossCheck,
    TrainingConfig,
    TrainingResult,
    chunk_steps,
    train_loop,
)

CACHE_FLOATS = 1 << 17
"""Size (in values) of one [model, h, n] temporary per block of models in the eager and compiled steps."""

BACKENDS = ("auto", "fused", "eager")
"""How :func:`train_ensemble` runs: the fused CPU kernel, the eager torch step, or the fused one where it can run."""

FUSED_CHUNK = 64
"""Networks per call of the fused kernel (the unit of work shared between threads)."""

FUSED_CHUNK_POINT_EPOCHS = 1 << 22
"""Point-epochs (epochs × training points) a network runs per call of the fused kernel, at least. Between
calls the training loop checks the losses and reports progress, and a network's data leave the cache, to
be read from memory once more at its next call: at this many that read is well under 1 % of the work."""


@dataclass
class EnsembleTrainConfig(TrainingConfig):
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

    def check_recipe(self) -> None:
        """Check the backend and that ``compile`` asks for a step it can compile (the epochs, the learning
        rate and Adam's constants are checked by :class:`~physlens.training.loop.TrainingConfig`)."""
        check_choice("backend", self.backend, BACKENDS)
        if self.compile and self.backend == "fused":
            raise ValueError("compile=True compiles the eager step; it cannot be combined with backend='fused'")

    def snapshot_epochs(self) -> list[int]:
        """Epochs after which parameters are kept: 0 (the initialisation), every k, and the last."""
        every = self.snapshot_every or self.epochs
        return sorted({0, *range(every, self.epochs, every), self.epochs})


@dataclass
class EnsembleTrainResult(TrainingResult):
    """What :func:`train_ensemble` returns; the ensemble itself is trained in place."""

    LOSSES_FIELD: ClassVar[str] = "train_loss"

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
    return _fused_or_eager(config.backend, ensemble, fused_unavailable_reason, "train_ensemble")


def _fused_or_eager(backend: str, ensemble: Any, unavailable: Callable[[Any], str | None], trainer: str) -> str:
    """``"fused"`` or ``"eager"`` for ``backend`` (``"auto"``, ``"fused"`` or ``"eager"``): the fused
    kernel where ``unavailable(ensemble)`` gives no reason; otherwise ``backend="fused"`` raises and
    ``"auto"`` falls back to the eager step, with a warning naming ``trainer`` and the reason on the CPU."""
    if backend == "eager":
        return "eager"
    reason = unavailable(ensemble)
    if reason is None:
        return "fused"
    if backend == "fused":
        raise RuntimeError(f"backend='fused' cannot train this ensemble: {reason}")
    if ensemble.device.type == "cpu":
        warnings.warn(f"{trainer} uses the slower eager step: {reason}", stacklevel=4)
    return "eager"


def _flat_parameters(params: list[Tensor], n_models: int) -> np.ndarray:
    """The members' parameters side by side, ``[model, param]``, as a writable numpy copy for a fused kernel."""
    return torch.cat([p.detach().reshape(n_models, -1) for p in params], dim=1).numpy().copy()


def _write_back(params: list[Tensor], theta: np.ndarray) -> None:
    """Copy the rows of ``theta`` (as :func:`_flat_parameters` laid them out) back into ``params``, in place."""
    with torch.no_grad():
        for p, row in zip(params, torch.from_numpy(theta).split([p[0].numel() for p in params], dim=1)):
            p.copy_(row.reshape(p.shape))


def _in_member_groups(n_models: int, run: Callable[[slice], None]) -> None:
    """Call ``run`` on slices of at most ``FUSED_CHUNK`` members, side by side on the torch threads (the fused
    kernels release the GIL)."""
    starts = range(0, n_models, FUSED_CHUNK)
    workers = min(torch.get_num_threads(), len(starts))
    parts = [slice(start, min(start + FUSED_CHUNK, n_models)) for start in starts]
    if workers > 1:
        with ThreadPoolExecutor(workers) as pool:
            list(pool.map(run, parts))
    else:
        for part in parts:
            run(part)


_FusedKernel = Callable[[slice, np.ndarray, np.ndarray, np.ndarray, int, int, np.ndarray], None]
"""A fused kernel call: ``(members, theta, exp_avg, exp_avg_sq, start, stop, losses)`` trains these members'
rows of the flat parameters and Adam moments, in place, for epochs ``start … stop − 1``, writing their
losses ``[member, epoch]``."""


class _FusedSteps:
    """A fused numba kernel as the training loop's backend: each chunk is one kernel call per
    ``FUSED_CHUNK`` networks, which runs every epoch of the chunk for one network while its data sit in
    cache, then the next network's. The parameters and Adam's moments stay in flat numpy arrays between
    chunks and are written back to the model after each."""

    def __init__(self, params: list[Tensor], n_models: int, kernel: _FusedKernel, chunk_steps: int) -> None:
        self.params, self.n_models, self.kernel, self.chunk_steps = params, n_models, kernel, chunk_steps
        self.theta = _flat_parameters(params, n_models)  # [model, param]
        self.exp_avg, self.exp_avg_sq = np.zeros_like(self.theta), np.zeros_like(self.theta)

    def run(self, start: int, stop: int) -> Tensor:
        """Run epochs ``start … stop − 1`` of every network; their losses ``[epoch, model]``."""
        losses = np.empty((self.n_models, stop - start), dtype=self.theta.dtype)

        def members(part: slice) -> None:
            self.kernel(part, self.theta[part], self.exp_avg[part], self.exp_avg_sq[part], start, stop, losses[part])

        _in_member_groups(self.n_models, members)
        return torch.from_numpy(losses).T

    def apply(self) -> None:
        """Write the networks' parameters back into the model."""
        _write_back(self.params, self.theta)


class _HandGradientSteps:
    """Full-batch Adam on hand-written gradients as the training loop's backend (the eager and compiled
    steps): each epoch ``loss_and_grads()`` gives every member's loss and the gradient of each parameter,
    and one ``torch.optim.Adam`` steps all members, which is exact per member because members share no
    parameters and Adam acts element by element. ``after_epoch(epoch)`` may keep snapshots."""

    def __init__(
        self, params: list[Tensor], config: EnsembleTrainConfig, loss_and_grads: Callable[[], tuple[Tensor, list[Tensor]]],
        chunk_steps: int, after_epoch: Callable[[int], None] | None = None,
    ) -> None:  # fmt: skip
        self.params, self.loss_and_grads, self.chunk_steps, self.after_epoch = params, loss_and_grads, chunk_steps, after_epoch
        self.optimizer = torch.optim.Adam(params, lr=config.lr, betas=(config.beta1, config.beta2), eps=config.eps)

    def run(self, start: int, stop: int) -> Tensor:
        """Take epochs ``start … stop − 1``; their losses ``[epoch, model]`` on the CPU (which waits for a GPU)."""
        first = self.params[0]
        losses = torch.empty(stop - start, first.shape[0], dtype=first.dtype, device=first.device)
        for epoch in range(start, stop):
            loss, grads = self.loss_and_grads()
            for p, g in zip(self.params, grads):
                p.grad = g
            self.optimizer.step()
            losses[epoch - start] = loss
            if self.after_epoch is not None:
                self.after_epoch(epoch)
        return losses.cpu()

    def apply(self) -> None:
        """Drop the gradients the epochs left on the parameters (Adam has applied them)."""
        for p in self.params:
            p.grad = None


def _fused_chunk_epochs(epochs: int, n_points: int) -> int:
    """Epochs per chunk of the fused kernel: at least ``FUSED_CHUNK_POINT_EPOCHS`` point-epochs per network."""
    return chunk_steps(epochs, at_least=-(-FUSED_CHUNK_POINT_EPOCHS // n_points))


def member_guard(targets: Float[Tensor, "model n"], ensemble: MLPEnsemble | DeepMLPEnsemble, lr: float) -> MemberLossCheck:
    """The divergence guard of an ensemble trained on ``targets``: each member's reference is the larger of its
    first loss and its loss of predicting zero; the error names the members (and seeds) that diverged."""

    def describe(members: Tensor, steps: Tensor) -> str:
        shown = members[:10].tolist()
        return (
            f"training diverged for {members.numel()} of {ensemble.n_models} networks: members {shown} "
            f"(seeds {[ensemble.cfg.seeds[i] for i in shown]}), first at epochs {steps[:10].tolist()}; "
            f"their loss stopped being finite or rose far above its start; lower lr (now {lr:g})"
        )

    return MemberLossCheck(targets.square().mean(dim=1).cpu(), describe)


def train_ensemble(
    ensemble: MLPEnsemble, data: SupervisedSplit, config: EnsembleTrainConfig | None = None, *, progress: bool = True
) -> EnsembleTrainResult:
    """Train every member of ``ensemble`` in place on its own split by full-batch Adam.

    ``data`` is any :class:`~physlens.systems.base.SupervisedSplit` stacked ``[model, n, d_in]``
    with one split per member (e.g. from :func:`~physlens.systems.fma.fma_splits`, or a user's own
    task); it is moved to the ensemble's device. ``config.backend`` chooses the
    implementation (see :func:`select_backend`); every one gives each member the result of training
    it alone with :func:`train_mlp`, to float round-off. The epochs run through
    :func:`~physlens.training.loop.train_loop` in chunks, between which the loop reports progress.
    Raises :class:`~physlens.training.TrainingDiverged` (a ``FloatingPointError``) naming the members
    whose loss stopped being finite or rose far above its start, checked on the recorded losses after
    each chunk and raised after the last (the kernels themselves are not slowed).
    """
    config = config or EnsembleTrainConfig()
    if not isinstance(ensemble, MLPEnsemble):
        raise TypeError(f"ensemble must be an MLPEnsemble, got {type(ensemble).__name__}")
    _check_data(data, ensemble.W_in.dtype, ensemble.n_models, ensemble.cfg.d_in)
    backend = select_backend(ensemble, config)
    data = data.to(device=ensemble.device)
    inputs_t = data.train_inputs.transpose(1, 2).contiguous()  # [model, d_in, n]
    targets = data.train_targets.squeeze(-1).contiguous()  # [model, n]
    params = [getattr(ensemble, name) for name in PARAM_NAMES]
    initial = {name: p.detach().to("cpu", copy=True) for name, p in zip(PARAM_NAMES, params)}
    later = config.snapshot_epochs()[1:]
    if backend == "fused":
        stepper, read_snapshots = _fused_steps(ensemble, params, inputs_t, targets, config, later)
    else:
        stepper, read_snapshots = _torch_steps(ensemble, params, inputs_t, targets, config, later, backend == "compiled")
    chunks: list[Tensor] = []
    run = train_loop(
        stepper, steps=config.epochs, guard=member_guard(targets, ensemble, config.lr),
        after_chunk=lambda start, stop, losses: chunks.append(losses),
        final_loss=lambda: ensemble_mse(ensemble, data.train_inputs, data.train_targets).cpu(),
        progress=progress, desc="ensemble" if backend != "fused" else "ensemble (fused)",
    )  # fmt: skip
    snapshots = read_snapshots()
    return EnsembleTrainResult(
        ensemble=ensemble,
        train_loss=torch.cat(chunks),
        final_train_loss=run.final_loss,
        val_loss=ensemble_mse(ensemble, data.val_inputs, data.val_targets).cpu(),
        snapshot_epochs=config.snapshot_epochs(),
        snapshots={name: torch.stack([initial[name], *snapshots[name]]) for name in PARAM_NAMES},
        backend=backend,
        train_seconds=run.train_seconds,
        train_cpu_seconds=run.train_cpu_seconds,
    )


def _fused_steps(
    ensemble: MLPEnsemble, params: list[Tensor], inputs_t: Tensor, targets: Tensor, config: EnsembleTrainConfig, later: list[int]
) -> tuple[_FusedSteps, Callable[[], dict[str, list[Tensor]]]]:
    """The fused kernel's backend, and a function that reads the snapshots taken after ``later`` epochs."""
    n_models, epochs, d_in, d_hidden = ensemble.n_models, config.epochs, ensemble.cfg.d_in, ensemble.cfg.d_hidden
    snap_at = np.full(epochs, -1, dtype=np.int64)
    snap_at[np.array(later) - 1] = np.arange(len(later))
    n_params = sum(p[0].numel() for p in params)
    dtype = params[0].detach().numpy().dtype
    snaps = np.empty((n_models, len(later), n_params), dtype=dtype)
    x, y = inputs_t.numpy(), targets.numpy()
    _fused.prepare(d_in, d_hidden, dtype)  # compile (or load) before the clock starts

    def kernel(part: slice, theta: np.ndarray, m: np.ndarray, v: np.ndarray, start: int, stop: int, losses: np.ndarray) -> None:
        _fused.train_networks(
            theta, x[part], y[part], d_in=d_in, d_hidden=d_hidden, epochs=stop - start, first_epoch=start,
            lr=config.lr, beta1=config.beta1, beta2=config.beta2, eps=config.eps, snap_at=snap_at[start:stop],
            losses=losses, snaps=snaps[part], exp_avg=m, exp_avg_sq=v,
        )  # fmt: skip

    def read_snapshots() -> dict[str, list[Tensor]]:
        sizes = [p[0].numel() for p in params]
        taken: dict[str, list[Tensor]] = {name: [] for name in PARAM_NAMES}
        for k in range(len(later)):
            for name, p, part in zip(PARAM_NAMES, params, torch.from_numpy(snaps[:, k]).split(sizes, dim=1)):
                taken[name].append(part.reshape(p.shape).clone())
        return taken

    return _FusedSteps(params, n_models, kernel, _fused_chunk_epochs(epochs, targets.shape[1])), read_snapshots


def _torch_steps(
    ensemble: MLPEnsemble, params: list[Tensor], inputs_t: Tensor, targets: Tensor, config: EnsembleTrainConfig,
    later: list[int], compiled: bool,
) -> tuple[_HandGradientSteps, Callable[[], dict[str, list[Tensor]]]]:
    """The eager (or torch.compile'd) step's backend, and a function that reads the snapshots taken after ``later`` epochs."""
    step: Callable = torch.compile(fused_loss_and_grads, dynamic=False) if compiled else ensemble_loss_and_grads
    # Eager ops stream [model, h, n] temporaries through memory, and so does the compiled step once
    # its temporaries outgrow the cache; in blocks of models that fit in cache both run several times
    # faster. A GPU wants the whole ensemble in one launch.
    n_models, width, n_points = ensemble.n_models, ensemble.cfg.d_hidden, targets.shape[1]
    on_cpu = ensemble.device.type == "cpu"
    block = max(1, CACHE_FLOATS // (width * n_points)) if on_cpu else n_models
    grads = [torch.empty_like(p) for p in params]
    loss = torch.empty(n_models, dtype=targets.dtype, device=targets.device)
    snapshot_at = set(later)
    snapshots: dict[str, list[Tensor]] = {name: [] for name in PARAM_NAMES}
    if compiled:  # compile outside the clock, on a throw-away copy
        with torch.no_grad():
            step(*(p.detach()[:block].clone() for p in params), inputs_t[:block], targets[:block])

    @torch.no_grad()
    def loss_and_grads() -> tuple[Tensor, list[Tensor]]:
        for start in range(0, n_models, block):
            part = slice(start, start + block)
            loss[part], part_grads = step(*(p.detach()[part] for p in params), inputs_t[part], targets[part])
            for g, part_g in zip(grads, part_grads):
                g[part] = part_g
        return loss, grads

    def keep_snapshot(epoch: int) -> None:
        if epoch + 1 in snapshot_at:
            for name, p in zip(PARAM_NAMES, params):
                snapshots[name].append(p.detach().to("cpu", copy=True))

    return _HandGradientSteps(params, config, loss_and_grads, chunk_steps(config.epochs), keep_snapshot), lambda: snapshots


@dataclass
class MLPTrainResult(TrainingResult):
    """What :func:`train_mlp` returns; the model itself is trained in place."""

    LOSSES_FIELD: ClassVar[str] = "train_loss"

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

    def train_mse() -> Tensor:
        return (model(data.train_inputs) - data.train_targets).square().mean()

    guard = DivergenceGuard(hint=f"lower lr (now {config.lr:g})", target_scale=lambda: data.train_targets.square().mean().item())
    losses: list[float] = []
    run = train_loop(OptimiserSteps(params, optimizer, lambda epoch: train_mse()), steps=config.epochs,
                     guard=SingleLossCheck(guard), after_chunk=lambda start, stop, chunk: losses.extend(chunk.tolist()),
                     final_loss=train_mse, progress=False, desc="mlp")  # fmt: skip
    with torch.no_grad():
        val = (model(data.val_inputs) - data.val_targets).square().mean().item()
    curve = torch.tensor(losses, dtype=data.train_targets.dtype)
    return MLPTrainResult(model=model, train_loss=curve, final_train_loss=run.final_loss.item(), val_loss=val)

__all__ = [
    "EnsembleTrainConfig",
    "EnsembleTrainResult",
    "MLPTrainResult",
    "BACKENDS",
    "ensemble_loss_and_grads",
    "ensemble_mse",
    "fused_loss_and_grads",
    "fused_unavailable_reason",
    "member_guard",
    "select_backend",
    "train_ensemble",
    "train_mlp",
]
