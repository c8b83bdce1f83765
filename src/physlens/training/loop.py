"""The one optimisation loop of the torch training paths: what differs between models is passed in.

A step draws its data and computes its loss (``step_loss``), the divergence guard checks the
loss, the optimiser steps, and ``after_step`` may checkpoint. The transformer, the Siamese tower and
the bottleneck network all train through :func:`optimise`; the full-batch MLP ensembles keep their
vectorised kernels (one program for thousands of networks, divergence checked per member at the end).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from physlens._validation import check_nonnegative_int, check_positive_int
from physlens.training._divergence import check_loss, loss_reference
from physlens._progress import report_step


@dataclass
class DivergenceGuard:
    """How :func:`optimise` recognises a diverged run (see :func:`~physlens.training.check_loss`).

    The reference is the larger of the first loss and ``target_scale()`` — the loss of predicting
    zero on the first batch — evaluated at the first step checked.
    """

    what: str = "training"  # named in the error
    hint: str = "lower the learning rate"  # what to try, named in the error
    target_scale: Callable[[], float] | None = None  # the zero predictor's loss on the first batch, if known


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
    """
    steps = check_nonnegative_int("steps", steps)
    start_step = check_nonnegative_int("start_step", start_step)
    log_every = check_positive_int("log_every", log_every)
    guard = guard or DivergenceGuard()
    losses = [] if losses is None else losses
    reference = None
    bar = tqdm(total=steps, initial=start_step, disable=not progress, desc=desc, leave=False)
    for step in range(start_step, steps):
        if before_step is not None:
            before_step(step)
        loss = step_loss(step)
        value = float(loss.detach())
        if reference is None:
            scale = guard.target_scale() if guard.target_scale is not None else 0.0
            reference = loss_reference(losses[0] if losses else value, scale)
        check_loss(value, step, reference, what=guard.what, hint=guard.hint)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if grad_clip is not None:
            nn.utils.clip_grad_norm_(parameters, grad_clip)
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        losses.append(value)
        if (step + 1) % log_every == 0:
            bar.set_postfix(loss=f"{value:.3e}")
            bar.update(log_every)
        if after_step is not None:
            after_step(step, value)
        report_step(step + 1, steps, value, desc)  # to the run's progress file, when a run opened one
    bar.close()
    if final_loss is not None and start_step < steps:
        with torch.no_grad():
            value = float(final_loss().detach())
        if reference is None:  # pragma: no cover - at least one step ran, so the reference is set
            reference = loss_reference(losses[0] if losses else value)
        check_loss(value, steps, reference, what=guard.what, hint=guard.hint)
    return losses


__all__ = ["DivergenceGuard", "optimise"]
