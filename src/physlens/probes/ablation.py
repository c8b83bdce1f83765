"""Zero, mean and resample ablation of heads, attention layers and MLPs, scored on loss and rollout.

An ablation replaces one component's output with zero, with its mean over reference inputs, or
with its value on another (random) reference input, and measures how much the next-step loss and
the autoregressive rollout error grow. Components are addressed through TransformerLens hook names,
so any ``HookedRootModule`` with ``blocks.{l}.attn.hook_z`` / ``hook_result``, ``blocks.{l}.hook_attn_out``
and ``blocks.{l}.hook_mlp_out`` works.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from physlens._validation import check_batch, check_choice, check_nonnegative_int
from physlens.probes.activations import capture_activations, check_hooks, model_device
from physlens.training.rollouts import relative_error, rollout
from physlens.training.trainer import loss_slice

METHODS = ("zero", "mean", "resample")


@dataclass(frozen=True)
class Component:
    """One ablatable part of a model: a head (``kind="head"``), an attention layer or an MLP."""

    kind: str  # "head", "attn" or "mlp"
    layer: int
    head: int | None = None  # only for kind="head"

    def __post_init__(self) -> None:
        check_choice("kind", self.kind, ("head", "attn", "mlp"))
        check_nonnegative_int("layer", self.layer)
        if (self.kind == "head") != (self.head is not None):
            raise ValueError(f"head must be given exactly for kind='head', got kind={self.kind!r}, head={self.head!r}")

    def hook_name(self, head_hook: str = "z") -> str:
        """The hook whose activation this component's ablation replaces."""
        if self.kind == "head":
            return f"blocks.{self.layer}.attn.hook_{head_hook}"
        return f"blocks.{self.layer}.hook_{self.kind}_out"


def ablation_hook(component: Component, method: str, reference: Tensor | None = None, *, generator: torch.Generator | None = None) -> Callable[[Tensor, Any], Tensor]:
    """A forward hook that ablates ``component`` in place of its activation.

    ``reference`` is the component's activation on reference inputs (``[n_ref, pos, ...]``), needed
    for ``mean`` (replaced by its mean over examples, per position) and ``resample`` (each example
    gets a random reference example's activation; draws from ``generator``).
    """
    check_choice("method", method, METHODS)
    if method != "zero" and reference is None:
        raise ValueError(f"method={method!r} needs reference activations")
    if method == "resample" and generator is None:
        raise ValueError("resample ablation needs a torch.Generator for its draws")
    mean = reference.mean(dim=0) if method == "mean" else None

    def hook(activation: Tensor, hook: Any) -> Tensor:
        n_pos = activation.shape[1]
        if method != "zero" and n_pos > reference.shape[1]:
            raise ValueError(f"reference activations cover {reference.shape[1]} positions, the run has {n_pos}")
        out = activation.clone()
        where = (slice(None), slice(None), component.head) if component.kind == "head" else (slice(None),)
        if method == "zero":
            out[where] = 0
        elif method == "mean":
            replacement = mean[:n_pos].to(out)
            out[where] = replacement[:, component.head] if component.kind == "head" else replacement
        else:
            rows = torch.randint(reference.shape[0], (out.shape[0],), generator=generator, device=generator.device).to(reference.device)
            replacement = reference[rows, :n_pos].to(out)
            out[where] = replacement[:, :, component.head] if component.kind == "head" else replacement
        return out

    return hook


def model_components(model: Any, *, heads: bool = True, layers: bool = True) -> list[Component]:
    """Every head, attention layer and (when the model has them) MLP of ``model``, in layer order."""
    cfg = model.cfg
    components = []
    for layer in range(cfg.n_layers):
        if heads:
            components += [Component("head", layer, h) for h in range(cfg.n_heads)]
        if layers:
            components.append(Component("attn", layer))
            if f"blocks.{layer}.hook_mlp_out" in model.hook_dict:
                components.append(Component("mlp", layer))
    return components


def next_step_loss(pred: Tensor, target: Tensor, loss_positions: str | int = "last") -> Tensor:
    """Per-example mean squared error of next-step predictions on the scored positions
    (``"last"``, ``"all"`` or the first scored position ``k``, as in training)."""
    scored = loss_slice(loss_positions, pred.shape[1])
    return ((pred[:, scored] - target[:, scored]) ** 2).mean(dim=(1, 2))


@dataclass
class AblationResult:
    """Effect of ablating each component: next-step loss and rollout error, as [layer, head] grids.

    ``head_*`` arrays are ``[layer, head]``; ``attn_*`` and ``mlp_*`` are ``[layer]`` (``mlp_*`` is
    None for attention-only models). Rollout errors are the median over trajectories of the mean
    relative error over the rolled-out steps (None when no rollout was asked for).
    """

    method: str
    baseline_loss: float
    head_loss: np.ndarray
    attn_loss: np.ndarray
    mlp_loss: np.ndarray | None
    baseline_rollout_error: float | None = None
    head_rollout_error: np.ndarray | None = None
    attn_rollout_error: np.ndarray | None = None
    mlp_rollout_error: np.ndarray | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready arrays and scalars."""
        return {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in self.__dict__.items()}

    def most_important_head(self) -> tuple[int, int]:
        """(layer, head) whose ablation raises the loss most."""
        layer, head = np.unravel_index(int(np.argmax(self.head_loss)), self.head_loss.shape)
        return int(layer), int(head)


def ablation_sweep(
    model: Any,
    inputs: Tensor,
    targets: Tensor,
    *,
    method: str = "zero",
    reference: Tensor | None = None,
    components: Sequence[Component] | None = None,
    head_hook: str = "z",
    loss_positions: str | int = "last",
    rollout_context: Tensor | None = None,
    rollout_truth: Tensor | None = None,
    seed: int = 0,
    device: str | torch.device | None = None,
    progress: bool = False,
) -> AblationResult:
    """Ablate every component in turn (all heads, attention layers and MLPs by default).

    ``inputs [n, pos, d]`` and next-step ``targets`` score the loss; ``reference`` inputs (default:
    ``inputs``) provide the mean / resample activations. With ``rollout_context [m, t0, d]`` and
    ``rollout_truth [m, steps, d]`` every ablated model is also rolled out.
    """
    check_choice("method", method, METHODS)
    check_choice("head_hook", head_hook, ("z", "result"))
    check_batch("inputs", inputs)
    check_batch("targets", targets)
    if reference is not None:
        check_batch("reference", reference)
    if inputs.shape != targets.shape:
        raise ValueError(f"targets must match inputs' shape {list(inputs.shape)}, got {list(targets.shape)}")
    if (rollout_context is None) != (rollout_truth is None):
        raise ValueError("pass both rollout_context and rollout_truth, or neither")
    if rollout_context is not None:
        check_batch("rollout_context", rollout_context)
        check_batch("rollout_truth", rollout_truth)
    device = torch.device(device) if device is not None else model_device(model)
    inputs, targets = inputs.to(device), targets.to(device)
    reference = (inputs if reference is None else reference).to(device)
    components = list(components) if components is not None else model_components(model)
    names = sorted({c.hook_name(head_hook) for c in components})
    check_hooks(model, names)
    ref_acts = capture_activations(model, reference, names, None) if method != "zero" else {}
    generator = torch.Generator(device=device).manual_seed(check_nonnegative_int("seed", seed))
    n_steps = rollout_truth.shape[1] if rollout_truth is not None else 0

    def evaluate(hooks: list[tuple[str, Callable]]) -> tuple[float, float | None]:
        with torch.no_grad(), model.hooks(fwd_hooks=hooks):
            loss = float(next_step_loss(model(inputs), targets, loss_positions).mean())
            error = None
            if n_steps:
                pred = rollout(model, rollout_context.to(device), n_steps)
                per_traj = relative_error(pred, rollout_truth.to(device)).mean(dim=1)
                error = float(per_traj.median())
        return loss, error

    base_loss, base_error = evaluate([])
    cfg = model.cfg
    head_loss = np.full((cfg.n_layers, cfg.n_heads), np.nan)
    attn_loss = np.full(cfg.n_layers, np.nan)
    has_mlp = any(c.kind == "mlp" for c in components)
    mlp_loss = np.full(cfg.n_layers, np.nan) if has_mlp else None
    head_err, attn_err = head_loss.copy(), attn_loss.copy()
    mlp_err = mlp_loss.copy() if has_mlp else None
    for component in tqdm(components, desc=f"{method} ablation", disable=not progress, leave=False):
        name = component.hook_name(head_hook)
        hook = ablation_hook(component, method, ref_acts.get(name), generator=generator)
        loss, error = evaluate([(name, hook)])
        if component.kind == "head":
            head_loss[component.layer, component.head], head_err[component.layer, component.head] = loss, np.nan if error is None else error
        elif component.kind == "attn":
            attn_loss[component.layer], attn_err[component.layer] = loss, np.nan if error is None else error
        else:
            mlp_loss[component.layer], mlp_err[component.layer] = loss, np.nan if error is None else error
    return AblationResult(
        method=method,
        baseline_loss=base_loss,
        head_loss=head_loss,
        attn_loss=attn_loss,
        mlp_loss=mlp_loss,
        baseline_rollout_error=base_error,
        head_rollout_error=head_err if n_steps else None,
        attn_rollout_error=attn_err if n_steps else None,
        mlp_rollout_error=mlp_err if n_steps else None,
    )


__all__ = [
    "METHODS",
    "AblationResult",
    "Component",
    "ablation_hook",
    "ablation_sweep",
    "model_components",
    "next_step_loss",
]
