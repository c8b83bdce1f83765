"""The one training loop of physlens: what differs between models (data, loss, optimiser, the kernel
that takes the steps) is passed in, and the loop owns what every run shares.

:func:`train_loop` drives a :class:`StepBackend` through the steps in chunks: the backend runs a
chunk and returns the loss before each of its steps, a :class:`LossCheck` (the divergence guard)
checks them, the backend applies the chunk, and the loop counts steps, shows a progress bar, reports
to the run's progress file (:func:`physlens._progress.report_step`), times the steps and checks the
loss after the last one. The torch step path (:func:`optimise`: the transformer, the Siamese tower,
the bottleneck network, one F = m·a network) takes one step per chunk, checked before its update;
the full-batch ensembles' numba kernels run hundreds or thousands of epochs per chunk while a
network's data sit in cache, and their eager torch steps a twentieth of the run (see
:mod:`physlens.training.ensemble`). Every recipe derives from :class:`TrainingConfig`, which validates
it, and every result from :class:`TrainingResult`.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol, runtime_checkable

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from physlens._progress import progress_requested, report_step
from physlens._validation import check_nonnegative_int, check_positive_float, check_positive_int
from physlens.training._divergence import TrainingDiverged, check_loss, diverged_members, loss_reference

PROGRESS_REPORTS = 20
"""Chunks a run of many steps is cut into, at least, where its backend takes several steps per call."""


@runtime_checkable
class StepBackend(Protocol):
    """How a chunk of training steps is taken: the part of training that differs between implementations.

    ``run(start, stop)`` computes steps ``start … stop − 1`` and returns the loss before each, on the
    CPU: ``[stop − start]`` for one model, ``[stop − start, member]`` for an ensemble. ``apply()`` makes
    them count: the torch step computes its loss in ``run`` and updates the parameters in ``apply``,
    so the loop checks a loss before its update; a kernel that runs a chunk natively has updated its
    own copy of the parameters in ``run`` and writes them back to the model in ``apply``.
    """

    chunk_steps: int  # steps per call of run

    def run(self, start: int, stop: int) -> Tensor:
        """Take steps ``start … stop − 1``; the loss before each."""
        ...

    def apply(self) -> None:
        """Update the model's parameters with the chunk just run."""
        ...


@runtime_checkable
class LossCheck(Protocol):
    """The divergence guard of :func:`train_loop`: it sees every chunk's losses and the loss after the last step."""

    def check(self, start: int, losses: Tensor) -> None:
        """Check the losses of the steps from ``start`` on (raise :class:`TrainingDiverged`, or note them)."""
        ...

    def check_final(self, step: int, loss: Tensor) -> None:
        """Check the loss after the last step (``step`` is the number of steps) and raise for anything noted."""
        ...


@dataclass
class DivergenceGuard:
    """How :func:`optimise` recognises a diverged run (see :func:`~physlens.training.check_loss`).

    The reference is the larger of the first loss and ``target_scale()`` — the loss of predicting
    zero on the first batch — evaluated at the first step checked.
    """

    what: str = "training"  # named in the error
    hint: str = "lower the learning rate"  # what to try, named in the error
    target_scale: Callable[[], float] | None = None  # the zero predictor's loss on the first batch, if known


class SingleLossCheck:
    """The guard of one model: stops at the first step whose loss is not finite or has risen far above its
    reference (:class:`DivergenceGuard`), before that step's update is applied.

    ``earlier`` holds the losses of steps already taken (a resumed run): its first is the reference,
    as in an uninterrupted run.
    """

    def __init__(self, guard: DivergenceGuard, earlier: list[float] | None = None) -> None:
        self.guard = guard
        self.earlier = earlier or []
        self.reference: float | None = None

    def check(self, start: int, losses: Tensor) -> None:
        """Raise :class:`TrainingDiverged` at the first of ``losses`` (steps ``start …``) that diverged."""
        for offset, value in enumerate(losses.tolist()):
            if self.reference is None:
                scale = self.guard.target_scale() if self.guard.target_scale is not None else 0.0
                self.reference = loss_reference(self.earlier[0] if self.earlier else value, scale)
            check_loss(value, start + offset, self.reference, what=self.guard.what, hint=self.guard.hint)

    def check_final(self, step: int, loss: Tensor) -> None:
        """Raise :class:`TrainingDiverged` if the loss after the last update diverged."""
        value = float(loss)
        if self.reference is None:  # pragma: no cover - at least one step ran, so the reference is set
            self.reference = loss_reference(self.earlier[0] if self.earlier else value)
        check_loss(value, step, self.reference, what=self.guard.what, hint=self.guard.hint)


class MemberLossCheck:
    """The guard of an ensemble: notes, per member, the first step whose loss is not finite or above
    :data:`~physlens.training._divergence.DIVERGENCE_FACTOR` times its reference (the larger of its first
    loss and ``target_scale[member]``, the loss of predicting zero), and after the last step raises one
    :class:`TrainingDiverged` naming every member that diverged, worded by ``describe(members, steps)``.

    It lets the chunks run on rather than stopping at the first diverged member, so that the error names
    them all, and a kernel is never slowed by checks inside it.
    """

    def __init__(self, target_scale: Tensor, describe: Callable[[Tensor, Tensor], str]) -> None:
        self.target_scale = target_scale
        self.describe = describe
        self.references: Tensor | None = None
        self.first_bad = torch.full(target_scale.shape, -1, dtype=torch.long)  # [member]: first diverged step, or -1

    def check(self, start: int, losses: Tensor) -> None:
        """Note the members whose losses ``[step, member]`` (steps ``start …``) diverged."""
        if self.references is None:
            first = torch.nan_to_num(losses[0], nan=0.0, posinf=0.0)
            scale = self.target_scale.to(losses.dtype)
            self.references = torch.maximum(first, scale).clamp_min(float(torch.finfo(losses.dtype).tiny))
        members, steps = diverged_members(losses, self.references)
        new = self.first_bad[members] < 0
        self.first_bad[members[new]] = start + steps[new]

    def check_final(self, step: int, loss: Tensor) -> None:
        """Note the members whose loss after the last step diverged, then raise for all noted."""
        self.check(step, loss[None])
        members = (self.first_bad >= 0).nonzero().flatten()
        if members.numel():
            raise TrainingDiverged(self.describe(members, self.first_bad[members]))


@dataclass
class LoopRun:
    """What :func:`train_loop` measured besides the losses it passed on."""

    final_loss: Tensor | None  # the loss after the last step (None when no step ran or none was asked for)
    train_seconds: float  # wall time of the backend's calls alone (no set-up, checks, reports or final loss)
    train_cpu_seconds: float  # process CPU time of the same


def chunk_steps(total: int, at_least: int = 1) -> int:
    """Steps per chunk for a run of ``total`` steps: enough that the run is reported about
    :data:`PROGRESS_REPORTS` times, and at least ``at_least``."""
    return max(at_least, math.ceil(total / PROGRESS_REPORTS), 1)


def train_loop(
    backend: StepBackend,
    *,
    steps: int,
    guard: LossCheck,
    start_step: int = 0,
    after_chunk: Callable[[int, int, Tensor], None] | None = None,
    final_loss: Callable[[], Tensor] | None = None,
    progress: bool = True,
    desc: str = "training",
    log_every: int = 1,
) -> LoopRun:
    """Take steps ``start_step … steps − 1`` with ``backend``, a chunk at a time, and check every loss.

    Each chunk: ``losses = backend.run(start, stop)``, ``guard.check(start, losses)``,
    ``backend.apply()``, the progress bar (every ``log_every`` steps), ``after_chunk(start, stop,
    losses)`` (record the losses, checkpoint) and :func:`~physlens._progress.report_step` with the
    chunk's last loss (the members' median for an ensemble), from the calling thread. After the last
    chunk, ``final_loss()`` (the loss after the last update, computed without a gradient) goes to
    ``guard.check_final`` and is returned.
    """
    steps = check_nonnegative_int("steps", steps)
    start_step = check_nonnegative_int("start_step", start_step)
    log_every = check_positive_int("log_every", log_every)
    bar = tqdm(total=steps, initial=start_step, disable=not progress, desc=desc, leave=False)
    wall = cpu = 0.0  # of the backend's calls alone: the steps, not the loop's checks and reports
    for start in range(start_step, steps, backend.chunk_steps):
        stop = min(start + backend.chunk_steps, steps)
        clock = time.perf_counter(), time.process_time()
        losses = backend.run(start, stop)
        wall, cpu = wall + time.perf_counter() - clock[0], cpu + time.process_time() - clock[1]
        guard.check(start, losses)
        clock = time.perf_counter(), time.process_time()
        backend.apply()
        wall, cpu = wall + time.perf_counter() - clock[0], cpu + time.process_time() - clock[1]
        shown = not bar.disable and stop // log_every > start // log_every
        if shown or progress_requested():  # summarise only for someone who looks: a torch step is short
            last = float(losses[-1]) if losses.dim() == 1 else float(losses[-1].nanmedian())
        if shown:
            bar.set_postfix(loss=f"{last:.3e}")
            bar.update((stop // log_every - start // log_every) * log_every)
        if after_chunk is not None:
            after_chunk(start, stop, losses)
        if progress_requested():
            report_step(stop, steps, last, desc)  # to the run's progress file
    bar.close()
    final = None
    if final_loss is not None and start_step < steps:
        with torch.no_grad():
            final = final_loss().detach()
        guard.check_final(steps, final)
    return LoopRun(final_loss=final, train_seconds=wall, train_cpu_seconds=cpu)


class OptimiserSteps:
    """The torch step as a :class:`StepBackend`: one step per chunk, autograd and a ``torch.optim`` optimiser.

    ``run`` calls ``before_step(step)`` and ``step_loss(step)``; ``apply`` zeroes the gradients,
    back-propagates, clips them to ``grad_clip`` (if set), steps the optimiser and the scheduler.
    """

    chunk_steps = 1

    def __init__(
        self,
        parameters: list[nn.Parameter] | list[Tensor],
        optimizer: torch.optim.Optimizer,
        step_loss: Callable[[int], Tensor],
        *,
        before_step: Callable[[int], None] | None = None,
        grad_clip: float | None = None,
        scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    ) -> None:
        self.parameters, self.optimizer, self.step_loss = parameters, optimizer, step_loss
        self.before_step, self.grad_clip, self.scheduler = before_step, grad_clip, scheduler
        self.loss: Tensor | None = None

    def run(self, start: int, stop: int) -> Tensor:
        """Compute the loss of step ``start`` (a chunk is one step), keeping its graph for :meth:`apply`."""
        if self.before_step is not None:
            self.before_step(start)
        self.loss = self.step_loss(start)
        return torch.tensor([float(self.loss.detach())], dtype=torch.float64)

    def apply(self) -> None:
        """Back-propagate the loss of the step just run and update the parameters."""
        self.optimizer.zero_grad(set_to_none=True)
        self.loss.backward()
        if self.grad_clip is not None:
            nn.utils.clip_grad_norm_(self.parameters, self.grad_clip)
        self.optimizer.step()
        if self.scheduler is not None:
            self.scheduler.step()
        self.loss = None


def optimise(
    parameters: list[nn.Parameter] | list[Tensor],
    optimizer: torch.optim.Optimizer,
    step_loss: Callable[[int], Tensor],
    *,
    steps: int,
    start_step: int = 0,
    losses: list[float] | None = None,
    guard: DivergenceGuard | None = None,
    before_step: Callable[[int], None] | None = None,
    after_step: Callable[[int, float], None] | None = None,
    final_loss: Callable[[], Tensor] | None = None,
    grad_clip: float | None = None,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    progress: bool = True,
    desc: str = "training",
    log_every: int = 1,
) -> list[float]:
    """Run optimiser steps ``start_step … steps − 1`` and return the loss of every step taken (appended to ``losses``).

    Each step: ``before_step(step)`` (e.g. set the learning rate), ``loss = step_loss(step)``, the
    divergence check (:class:`~physlens.training.TrainingDiverged` on a loss that is not finite or
    has risen far above its reference), ``zero_grad``, ``backward``, optional gradient clipping to
    ``grad_clip``, ``optimizer.step()``, ``scheduler.step()``, then ``after_step(step, loss)``.
    ``losses`` holds the losses of steps already taken (a resumed run): the first of them is the
    divergence reference, as in an uninterrupted run. A step's loss is computed before its update,
    so the last update would go unchecked: ``final_loss()`` (the loss after the last step, e.g. of
    its batch again) is checked too, without a gradient, and is not appended to ``losses``.
    This is :func:`train_loop` with :class:`OptimiserSteps` and a :class:`SingleLossCheck`.
    """
    losses = [] if losses is None else losses
    backend = OptimiserSteps(parameters, optimizer, step_loss, before_step=before_step, grad_clip=grad_clip, scheduler=scheduler)

    def record(start: int, stop: int, chunk: Tensor) -> None:
        (value,) = chunk.tolist()
        losses.append(value)
        if after_step is not None:
            after_step(start, value)

    check = SingleLossCheck(guard or DivergenceGuard(), losses)
    train_loop(backend, steps=steps, guard=check, start_step=start_step, after_chunk=record, final_loss=final_loss,
               progress=progress, desc=desc, log_every=log_every)
    return losses


def _check_unit_interval(name: str, value: Any) -> None:
    if not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
        raise ValueError(f"{name} must be a number in [0, 1), got {value!r}")


FIELD_CHECKS: dict[str, Callable[[str, Any], Any]] = {
    **dict.fromkeys(("steps", "epochs", "batch_size", "seq_len", "window", "log_every"), check_positive_int),
    **dict.fromkeys(("seed", "warmup_steps", "snapshot_every"), check_nonnegative_int),
    **dict.fromkeys(("lr", "eps", "margin"), check_positive_float),
    **dict.fromkeys(("beta1", "beta2"), _check_unit_interval),
}
"""How :class:`TrainingConfig` checks a field by its name, whichever recipe holds it: a step count or a
batch size is a positive integer, a seed a non-negative one, a learning rate a positive number, and so on."""


@dataclass
class TrainingConfig:
    """The base of every training recipe: :class:`~physlens.training.TrainConfig` (the transformer),
    :class:`~physlens.training.EnsembleTrainConfig` (the F = m·a ensembles and :func:`~physlens.training.train_mlp`),
    :class:`~physlens.training.SiameseTrainConfig` and :class:`~physlens.training.BottleneckTrainConfig`.

    Validation lives here: on construction every field named in :data:`FIELD_CHECKS` (``steps`` or
    ``epochs``, ``lr``, ``seed``, ``batch_size``, …) is checked by its rule, in field order, and then
    :meth:`check_recipe` checks what is particular to the recipe. The shared fields are declared by each
    recipe, each with its own default and meaning, so that every recipe lists its fields in the order a
    reader needs them (a dataclass puts a base's fields first).
    """

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            check = FIELD_CHECKS.get(f.name)
            if check is not None:
                check(f.name, getattr(self, f.name))
        self.check_recipe()

    def check_recipe(self) -> None:
        """Check (and normalise) the fields particular to this recipe; raise a ``ValueError`` naming the field."""


@dataclass
class TrainingResult:
    """The base of every training result: :class:`~physlens.training.TrainResult`,
    :class:`~physlens.training.EnsembleTrainResult`, :class:`~physlens.training.MLPTrainResult`,
    :class:`~physlens.training.DeepTrainResult` and :class:`~physlens.training.SiameseTrainResult`.

    Each keeps its loss curve under its own long-standing name (``losses`` or ``train_loss``, named by
    ``LOSSES_FIELD``); :attr:`loss_curve` reads any of them the same way.
    """

    LOSSES_FIELD: ClassVar[str] = "losses"  # the field that holds the loss before every step

    @property
    def loss_curve(self) -> Tensor:
        """The loss before every step taken: ``[step]``, or ``[step, member]`` for an ensemble."""
        losses = getattr(self, self.LOSSES_FIELD)
        return losses if isinstance(losses, Tensor) else torch.tensor(losses, dtype=torch.float64)


__all__ = [
    "FIELD_CHECKS",
    "TrainingConfig",
    "TrainingResult",
    "DivergenceGuard",
    "LoopRun",
    "LossCheck",
    "MemberLossCheck",
    "OptimiserSteps",
    "PROGRESS_REPORTS",
    "SingleLossCheck",
    "StepBackend",
    "chunk_steps",
    "optimise",
    "train_loop",
]
