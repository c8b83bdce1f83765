"""Next-step training on fresh oscillator batches: AdamW, LR schedule, checkpoints, exact resume.

The leakage rule lives here: a model whose attention can see later positions must not be trained
with a loss on every position, because position t would read its own target (the state at t + 1).
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from physlens._validation import (
    check_bool_fields,
    check_choice,
    check_positive_float,
    check_positive_int,
)
from physlens.models.base import HookedModel
from physlens.systems.base import System, TrajectoryBatch, check_system
from physlens.training._compile import compile_or_eager
from physlens.training._divergence import DIVERGENCE_FACTOR, TrainingDiverged
from physlens.training.loop import DivergenceGuard, TrainingConfig, TrainingResult, optimise
from physlens.training.checkpoints import (
    CheckpointError,
    latest_checkpoint,
    load_checkpoint,
    load_state,
    optimizer_state_from_flat,
    optimizer_state_to_flat,
    save_checkpoint,
)


class LeakageError(ValueError):
    """Training setup that would let a position read its own target."""


@dataclass
class TrainConfig(TrainingConfig):
    """How to train a next-step model on an oscillator system."""

    steps: int = 2000
    """Optimizer steps."""
    batch_size: int = 256
    """Trajectories per step, drawn fresh every step."""
    seq_len: int = 40
    """Positions per training sequence (T); must be <= the model's n_ctx."""
    lr: float = 1e-3
    """Peak learning rate."""
    min_lr: float = 0.0
    """Final learning rate of the cosine schedule."""
    schedule: str = "constant"
    """The learning-rate schedule: "constant", or "cosine" (decays lr -> min_lr over the steps)."""
    warmup_steps: int = 0
    """Linear warm-up from 0 to lr."""
    weight_decay: float = 0.0
    """AdamW decoupled decay; 0 because decay biases an exact linear solution."""
    betas: tuple[float, float] = (0.9, 0.999)
    """AdamW moment decay rates."""
    loss_positions: str | int = "last"
    """Positions the loss scores: "last" (the final position only), "all" (every position) or k (positions k.., skipping the first k)."""
    allow_leakage: bool = False
    """Permit "all" on a model that sees the future (warns loudly)."""
    fixed_dataset: int | None = None
    """If set, draw this many trajectories once and sample batches from them."""
    grad_clip: float | None = None
    """Clip the global gradient norm to this value."""
    seed: int = 0
    """Seeds the batch stream (the model's init has its own seed in its config)."""
    checkpoint_every: int | None = None
    """Save a resumable checkpoint every this many steps."""
    log_every: int = 50
    """Update the progress bar every this many steps."""
    compile: bool = False
    """torch.compile the forward and backward pass (eager, with a warning, where no compiler exists)."""
    fused_optimizer: bool = False
    """Step with ``torch.optim.AdamW(fused=True)``: one kernel for every parameter instead of a loop over
    them. The same update to round-off, so a run with it is not bit-identical to one without."""
    presample_steps: int = 1
    """Draw the batches of this many steps in one call of the system's sampler (one call per step when 1,
    the default). Draws a different stream of trajectories than the default, from the same seed."""
    curriculum: tuple[tuple[int, int], ...] = ()
    """Phases of shorter context before the full ``seq_len``: ``[[steps, length], ...]``; the first
    ``steps`` steps train on the first ``length`` positions of each batch, the next phase's steps on
    its length, and so on; the remaining steps on ``seq_len``. Early steps are cheaper, and a model
    first learns the dynamics that short contexts already determine."""

    def check_recipe(self) -> None:
        """Check the schedule, the loss positions, the optional limits and the curriculum (the counts and
        the learning rate are checked by :class:`~physlens.training.loop.TrainingConfig`)."""
        check_bool_fields(self)
        for name in ("min_lr", "weight_decay"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"{name} must be a number, got {value!r}")
        if not (math.isfinite(self.min_lr) and 0 <= self.min_lr <= self.lr):
            raise ValueError(f"min_lr must be in [0, lr={self.lr}], got {self.min_lr!r}")
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise ValueError(f"weight_decay must be a finite number >= 0, got {self.weight_decay!r}")
        if (not isinstance(self.betas, (tuple, list)) or len(self.betas) != 2
                or not all(isinstance(b, (int, float)) and not isinstance(b, bool) and 0 <= b < 1 for b in self.betas)):
            raise ValueError(f"betas must be two numbers in [0, 1), got {self.betas!r}")
        self.betas = (float(self.betas[0]), float(self.betas[1]))
        check_choice("schedule", self.schedule, ("constant", "cosine"))
        check_loss_positions(self.loss_positions, self.seq_len)
        if self.fixed_dataset is not None:
            check_positive_int("fixed_dataset", self.fixed_dataset)
        if self.grad_clip is not None:
            check_positive_float("grad_clip", self.grad_clip)
        if self.checkpoint_every is not None:
            check_positive_int("checkpoint_every", self.checkpoint_every)
        check_positive_int("presample_steps", self.presample_steps)
        if self.presample_steps > 1 and self.checkpoint_every is not None and self.checkpoint_every % self.presample_steps:
            raise ValueError(
                f"checkpoint_every={self.checkpoint_every} must be a multiple of presample_steps={self.presample_steps}: "
                "a checkpoint between two draws would lose the batches drawn ahead, and its resume would differ"
            )
        if isinstance(self.curriculum, (str, bytes)) or not isinstance(self.curriculum, (tuple, list)):
            raise ValueError(f"curriculum must be a list of [steps, length] pairs, got {self.curriculum!r}")
        phases = []
        for phase in self.curriculum:
            if isinstance(phase, (str, bytes)) or not isinstance(phase, (tuple, list)) or len(phase) != 2:
                raise ValueError(f"curriculum must be a list of [steps, length] pairs, got {self.curriculum!r}")
            steps, length = check_positive_int("curriculum steps", phase[0]), check_positive_int("curriculum length", phase[1])
            if length > self.seq_len:
                raise ValueError(f"curriculum length must be <= seq_len={self.seq_len}, got {length}")
            check_loss_positions(self.loss_positions, length)
            phases.append((steps, length))
        self.curriculum = tuple(phases)

    def seq_len_at(self, step: int) -> int:
        """Positions trained on at optimizer step ``step`` (0-based): a curriculum phase's length, else ``seq_len``."""
        end = 0
        for steps, length in self.curriculum:
            end += steps
            if step < end:
                return length
        return self.seq_len

    def lr_at(self, step: int) -> float:
        """Learning rate used for optimizer step ``step`` (0-based)."""
        if step < self.warmup_steps:
            return self.lr * (step + 1) / self.warmup_steps
        if self.schedule == "constant":
            return self.lr
        progress = (step - self.warmup_steps) / max(1, self.steps - self.warmup_steps)
        return self.min_lr + 0.5 * (self.lr - self.min_lr) * (1 + math.cos(math.pi * progress))


@dataclass
class TrainResult(TrainingResult):
    """What a training run produced besides the trained model (which is trained in place)."""

    config: TrainConfig
    losses: list[float] = field(default_factory=list)  # training loss at every step
    learning_rates: list[float] = field(default_factory=list)  # learning rate at every step
    wall_time: float = 0.0  # seconds spent in this call (not counting resumed-from runs)
    resumed_from: int | None = None  # step of the checkpoint this run resumed from

    @property
    def final_loss(self) -> float:
        """Mean training loss over the last 1% of steps (at least one)."""
        tail = max(1, len(self.losses) // 100)
        return float(sum(self.losses[-tail:]) / tail)


def check_loss_positions(loss_positions: Any, seq_len: int | None = None) -> str | int:
    """Return ``loss_positions`` if it is ``"last"``, ``"all"`` or a first scored position ``k >= 0``
    (below ``seq_len`` when given), else raise a ``ValueError`` naming the argument."""
    if isinstance(loss_positions, str):
        return check_choice("loss_positions", loss_positions, ("last", "all"))
    if isinstance(loss_positions, bool) or not isinstance(loss_positions, int) or loss_positions < 0:
        raise ValueError(
            f"loss_positions must be 'last', 'all' or the first scored position (an int >= 0), got {loss_positions!r}"
        )
    if seq_len is not None and loss_positions >= seq_len:
        raise ValueError(
            f"loss_positions={loss_positions} starts beyond the sequence: seq_len={seq_len} gives positions "
            f"0..{seq_len - 1}, so the first scored position must be <= {seq_len - 1}"
        )
    return loss_positions


def loss_slice(loss_positions: str | int, n_pos: int) -> slice:
    """The positions a next-step loss scores: ``"last"`` → the final one, ``"all"`` → every one,
    ``k`` → positions ``k..n_pos-1`` (the first ``k`` have too little context to infer ω0)."""
    loss_positions = check_loss_positions(loss_positions, n_pos)
    if loss_positions == "last":
        return slice(n_pos - 1, n_pos)
    return slice(0 if loss_positions == "all" else loss_positions, n_pos)


def check_leakage(model: nn.Module, config: TrainConfig) -> None:
    """Refuse (or, with ``allow_leakage``, loudly warn about) a loss on positions other than the last
    for a model that can attend to later positions."""
    if loss_slice(config.loss_positions, config.seq_len).start == config.seq_len - 1:
        return
    sees_future = getattr(getattr(model, "cfg", None), "sees_future", None)
    if sees_future is False:
        return
    reason = (
        f"loss_positions={config.loss_positions!r} on a model whose attention can see later positions (no causal mask and "
        "attn_window > 1 or unset) lets position t read its own target, the state at t + 1, from the input: "
        "the loss can reach zero without learning any dynamics"
    )
    if sees_future is None:
        reason = "cannot tell whether this model sees later positions (its cfg has no sees_future); " + reason
    if not config.allow_leakage:
        raise LeakageError(reason + ". Use loss_positions='last', a causal mask, attn_window=1, or set allow_leakage=True.")
    warnings.warn("TARGET LEAKAGE: " + reason + " (allowed by allow_leakage=True).", stacklevel=3)


def _batch_loss(model: nn.Module, batch: TrajectoryBatch, loss_positions: str | int, n_pos: int | None = None) -> Tensor:
    inputs, targets = batch.inputs_targets()
    if n_pos is not None and n_pos < inputs.shape[1]:  # a curriculum phase: the first n_pos positions
        inputs, targets = inputs[:, :n_pos], targets[:, :n_pos]
    scored = loss_slice(loss_positions, inputs.shape[1])
    return (model(inputs)[:, scored] - targets[:, scored]).pow(2).mean()


def _to_model(batch: TrajectoryBatch, model: nn.Module) -> TrajectoryBatch:
    parameter = next(model.parameters())
    return batch.to(device=parameter.device, dtype=parameter.dtype)


def train(
    model: HookedModel,
    system: System,
    config: TrainConfig,
    *,
    checkpoint_dir: str | os.PathLike[str] | None = None,
    resume: bool = False,
    progress: bool = True,
    run_key: str | None = None,
) -> TrainResult:
    """Train ``model`` in place on next-step prediction of ``system``'s trajectories.

    Every step draws a fresh batch of ``seq_len + 1``-step trajectories from a generator seeded by
    ``config.seed`` (or samples from one fixed dataset if ``config.fixed_dataset`` is set). With
    ``checkpoint_dir`` and ``config.checkpoint_every`` the run saves resumable checkpoints
    ``step_XXXXXXX``; ``resume=True`` continues from the latest one and ends bit-for-bit where an
    uninterrupted run would. Resuming from a ``checkpoint_dir`` that does not exist, or that holds
    files but no checkpoint, is an error; an empty one starts from step 0. ``run_key`` (a run's
    identity) is written into every checkpoint, and resuming refuses a checkpoint that carries
    another key (one copied from another run, or written for an edited study).

    Training stops with :class:`TrainingDiverged` (a ``FloatingPointError``) as soon as the loss is
    not finite or exceeds ``DIVERGENCE_FACTOR`` (10⁴) times its start (the larger of the first loss
    and the loss of predicting zero), including after the last step (the last batch scored again).
    """
    if not isinstance(config, TrainConfig):
        raise TypeError(f"config must be a TrainConfig, got {type(config).__name__}")
    check_system(system)
    n_ctx = getattr(getattr(model, "cfg", None), "n_ctx", None)
    if n_ctx is not None and config.seq_len > n_ctx:
        raise ValueError(f"seq_len must be <= the model's n_ctx ({n_ctx}), got {config.seq_len}")
    check_leakage(model, config)
    if config.checkpoint_every is not None and checkpoint_dir is None:
        raise ValueError("checkpoint_every is set but no checkpoint_dir was given")
    if resume and checkpoint_dir is None:
        raise ValueError("resume=True needs the checkpoint_dir to resume from")
    found = _checkpoint_to_resume(Path(checkpoint_dir)) if resume else None

    optimizer = torch.optim.AdamW(
        model.parameters(), lr=config.lr, betas=config.betas, weight_decay=config.weight_decay,
        **({"fused": True} if config.fused_optimizer else {}),
    )
    generator = torch.Generator().manual_seed(config.seed)
    dataset = None
    if config.fixed_dataset is not None:
        dataset = _to_model(system.sample(config.fixed_dataset, config.seq_len + 1, generator=generator), model)
    result = TrainResult(config=config)
    start_step = 0

    if found is not None:
        start_step = _restore(found, model, optimizer, generator, result, config, run_key)
        result.resumed_from = start_step

    forward = compile_or_eager(model, next(model.parameters()).device, "training") if config.compile else model
    batches: list[TrajectoryBatch] = []  # the current step's batch (the guard's zero-predictor loss reads the first)
    drawn: list[TrajectoryBatch] = []  # batches drawn ahead (presample_steps > 1), taken first to last

    def set_lr(step: int) -> None:
        for group in optimizer.param_groups:
            group["lr"] = config.lr_at(step)

    def step_loss(step: int) -> Tensor:
        if dataset is not None:
            batch = dataset.subset(torch.randint(len(dataset), (config.batch_size,), generator=generator))
        elif config.presample_steps == 1:
            batch = _to_model(system.sample(config.batch_size, config.seq_len + 1, generator=generator), model)
        else:
            if not drawn:
                block = _to_model(system.sample(config.presample_steps * config.batch_size, config.seq_len + 1, generator=generator), model)
                size = config.batch_size
                drawn.extend(block.subset(slice(k * size, (k + 1) * size)) for k in range(config.presample_steps - 1, -1, -1))
            batch = drawn.pop()
        batches[:] = [batch]
        return _batch_loss(forward, batch, config.loss_positions, config.seq_len_at(step))

    def record(step: int, loss: float) -> None:
        result.learning_rates.append(config.lr_at(step))
        if config.checkpoint_every is not None and (step + 1) % config.checkpoint_every == 0:
            _save(Path(checkpoint_dir), step + 1, model, optimizer, generator, result, config, run_key)

    guard = DivergenceGuard(hint="lower [training] lr, add warmup_steps or set grad_clip",
                            target_scale=lambda: _target_scale(batches[0], config))
    started = time.perf_counter()
    model.train()
    optimise(list(model.parameters()), optimizer, step_loss, steps=config.steps, start_step=start_step, losses=result.losses,
             guard=guard, before_step=set_lr, after_step=record,
             final_loss=lambda: _batch_loss(forward, batches[0], config.loss_positions, config.seq_len_at(config.steps - 1)), grad_clip=config.grad_clip, progress=progress,
             desc="training", log_every=config.log_every)
    model.eval()
    result.wall_time = time.perf_counter() - started
    return result


def _target_scale(batch: TrajectoryBatch, config: TrainConfig) -> float:
    """The loss of predicting zero on ``batch``: the mean square of the scored targets."""
    _, targets = batch.inputs_targets()
    return float(targets[:, loss_slice(config.loss_positions, targets.shape[1])].pow(2).mean())


def _checkpoint_to_resume(directory: Path) -> Path | None:
    """The checkpoint ``train(resume=True)`` continues from: the latest in ``directory``, or ``None``
    (start from step 0) when the directory holds nothing yet but leftovers of an interrupted save.
    A directory that does not exist, or holds other things but no checkpoint, is an error: resuming
    from the wrong place must not silently start from scratch."""
    if not directory.exists():
        raise FileNotFoundError(f"checkpoint_dir {str(directory)!r} does not exist, so there is nothing to resume from")
    if not directory.is_dir():
        raise NotADirectoryError(f"checkpoint_dir {str(directory)!r} is not a directory")
    found = latest_checkpoint(directory)
    if found is None:
        others = sorted(p.name for p in directory.iterdir() if not p.name.startswith("."))
        if others:
            raise FileNotFoundError(
                f"checkpoint_dir {str(directory)!r} holds no step_* checkpoint to resume from (it holds {others[:5]}); "
                "is it the right directory?"
            )
    return found


def _save(
    directory: Path, step: int, model: HookedModel, optimizer: torch.optim.Optimizer,
    generator: torch.Generator, result: TrainResult, config: TrainConfig, run_key: str | None,
) -> None:
    tensors, optimizer_json = optimizer_state_to_flat(optimizer)
    tensors["generator_state"] = generator.get_state()
    state_json = {
        "step": step,
        "optimizer": optimizer_json,
        "train_config": dataclasses.asdict(config),
        "losses": result.losses,
        "learning_rates": result.learning_rates,
    }
    save_checkpoint(
        directory / f"step_{step:07d}", model, metadata={"step": step, **({"run": run_key} if run_key else {})},
        state_tensors=tensors, state_json=state_json,
        overwrite=True,
    )


def _restore(
    path: Path, model: HookedModel, optimizer: torch.optim.Optimizer, generator: torch.Generator,
    result: TrainResult, config: TrainConfig, run_key: str | None = None,
) -> int:
    saved_model, metadata = load_checkpoint(path, device=next(model.parameters()).device)
    if run_key is not None and metadata.get("run") != run_key:
        raise CheckpointError(
            f"checkpoint {str(path)!r} was not written by this run (it belongs to another run, or to this run before "
            "its study was edited); refusing to resume from it"
        )
    if saved_model.config_dict() != model.config_dict():
        raise ValueError(f"checkpoint {str(path)!r} holds a model with a different config; cannot resume")
    tensors, state_json = load_state(path)
    missing = [name for name, present in (("state.safetensors", "generator_state" in tensors),
                                          ("state.json", {"step", "train_config", "optimizer"} <= set(state_json)))
               if not present]
    if missing:
        raise CheckpointError(f"checkpoint {str(path)!r} holds no resumable training state ({' and '.join(missing)} "
                              "missing or incomplete); it cannot be resumed from")
    if (not isinstance(state_json["step"], int) or state_json["step"] != metadata.get("step", state_json["step"])
            or path.name != f"step_{state_json['step']:07d}"):
        raise CheckpointError(f"checkpoint {str(path)!r}: its state.json says step {state_json['step']!r}, which is not "
                              "the step it was saved at; refusing to resume from it")
    saved_config = dict(state_json["train_config"])
    saved_config["betas"] = tuple(saved_config["betas"])
    saved_config.setdefault("compile", False)  # checkpoints written before the option existed
    for name in ("fused_optimizer", "presample_steps", "curriculum"):  # the same, for these options
        saved_config.setdefault(name, getattr(TrainConfig, name))
    saved_config["curriculum"] = tuple(tuple(phase) for phase in saved_config["curriculum"])
    if saved_config != dataclasses.asdict(config):
        raise ValueError(f"checkpoint {str(path)!r} was written with a different TrainConfig; cannot resume")
    model.load_state_dict(saved_model.state_dict())
    optimizer.load_state_dict(optimizer_state_from_flat(tensors, state_json["optimizer"]))
    generator.set_state(tensors["generator_state"])
    result.losses = list(state_json["losses"])
    result.learning_rates = list(state_json["learning_rates"])
    return int(state_json["step"])


def config_from_dict(values: dict[str, Any]) -> TrainConfig:
    """A :class:`TrainConfig` from a plain dict (e.g. a study file's ``[training]`` table)."""
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"unknown training options {unknown}; expected some of {sorted(known)}")
    values = dict(values)
    if "betas" in values:
        values["betas"] = tuple(values["betas"])
    if isinstance(values.get("curriculum"), list):
        values["curriculum"] = tuple(tuple(phase) if isinstance(phase, list) else phase for phase in values["curriculum"])
    return TrainConfig(**values)


__all__ = [
    "DIVERGENCE_FACTOR",
    "LeakageError",
    "TrainingDiverged",
    "TrainConfig",
    "TrainResult",
    "check_leakage",
    "check_loss_positions",
    "config_from_dict",
    "loss_slice",
    "train",
]
