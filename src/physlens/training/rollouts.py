"""Autoregressive rollout with a sliding window, and the per-step relative error of a rollout.

The error is ‖pred − true‖ / ‖true‖ over the whole state at each step, not the pointwise x-ratio,
which spikes whenever x crosses zero.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor, nn

from physlens._validation import check_finite, check_positive_int, check_shape
from physlens.models.components import MLP, Attention, Block
from physlens.models.transformer import OscillatorTransformer, _first_state_size
from physlens.systems.base import System, TrajectoryBatch
from physlens.training._compile import compile_or_eager

ROLLOUT_CHUNK = 128
"""Trajectories a rollout step of the transformer handles at once: its activations then stay in cache."""


def _hooked(module: nn.Module) -> bool:
    """Whether anything would see or change ``module``'s activations: a hook on it or on any submodule, or a global one."""
    if nn.modules.module._global_forward_hooks or nn.modules.module._global_forward_pre_hooks:
        return True
    return any(m._forward_hooks or m._forward_pre_hooks for m in module.modules())


@dataclass(frozen=True)
class ResidualPush:
    """A constant vector added to ``blocks.{layer}.hook_resid_mid`` (after the block's attention, before its MLP)
    at window position ``position``, or at every position with ``position=None``: a steering push."""

    layer: int  # the block whose resid_mid is pushed
    vector: Tensor  # [d_model], added as is (in the model's dtype)
    position: int | None  # window position of the push; None: every position


def last_position_step(model: Callable[[Tensor], Tensor], *, push: ResidualPush | None = None) -> Callable[[Tensor], Tensor] | None:
    """``model(states)[:, -1:]`` computed without what the last position does not need, or ``None`` where that
    cannot be done safely.

    For an :class:`~physlens.models.transformer.OscillatorTransformer` built from the stock components, with
    no hook attached anywhere: the last block's query, attention output and MLP are computed at the last
    position only (the keys and values at every position), each block's query, key and value projections
    are one matrix product, the heads attend with ``scaled_dot_product_attention``, and the attention
    output and the MLP's biases are added inside their matrix products (``addmm``). The result equals
    the hooked forward up to float rounding. Anything else — another predictor, a model with a hook (an
    ablation or a steering push), a subclass with its own attention or MLP — gives ``None``: call the model.

    ``push`` adds a vector to one block's ``hook_resid_mid``, as a forward hook that adds it in place would,
    so a steered rollout need not run the hooked forward. A push at a position outside the window
    raises ValueError.
    """
    if type(model) is not OscillatorTransformer or _hooked(model):
        return None
    blocks = list(model.blocks)
    if not all(type(b) is Block and type(b.attn) is Attention and (b.attn_only or type(b.mlp) is MLP) for b in blocks):
        return None
    if push is not None:
        if not 0 <= push.layer < len(blocks):
            raise ValueError(f"push.layer must be a block of the model (0..{len(blocks) - 1}), got {push.layer}")
        if push.vector.shape != (model.cfg.d_model,):
            raise ValueError(f"push.vector must have shape [{model.cfg.d_model}] (d_model), got {list(push.vector.shape)}")
    cfg = model.cfg
    heads, d_head = cfg.n_heads, cfg.d_head

    def joined(attn: Attention) -> tuple[Tensor, Tensor | None, Tensor]:
        weight = torch.cat([attn.W_Q, attn.W_K, attn.W_V])  # [3·head, d_model, d_head]
        weight = weight.permute(1, 0, 2).reshape(cfg.d_model, 3 * heads * d_head)  # [d_model, (qkv head d_head)]
        bias = torch.cat([attn.b_Q, attn.b_K, attn.b_V]).reshape(-1) if cfg.attn_bias else None
        return weight.detach(), bias, attn.W_O.detach().reshape(heads * d_head, cfg.d_model)

    weights = [joined(block.attn) for block in blocks]
    mlps = [None if block.attn_only else tuple(p.detach() for p in (block.mlp.W_in, block.mlp.b_in, block.mlp.W_out, block.mlp.b_out))
            for block in blocks]

    @torch.no_grad()
    def step(states: Tensor) -> Tensor:
        batch, n_pos, _ = states.shape
        scale = None
        if cfg.scale_by_first_state:  # as the model does: states in units of the first state's size, scaled back at the end
            scale = _first_state_size(states)
            states = states / scale
        resid = model.embed(states)
        if cfg.positional_embedding:
            resid = resid + model.W_pos[:n_pos]
        allowed = blocks[0].attn.mask[:n_pos, :n_pos]  # [q, k]
        full_causal = cfg.causal and cfg.attn_window is None
        for index, (block, (w_qkv, b_qkv, w_o), mlp) in enumerate(zip(blocks, weights, mlps)):
            last = index == len(blocks) - 1
            qkv = block.ln1(resid) @ w_qkv
            if b_qkv is not None:
                qkv = qkv + b_qkv
            q, k, v = qkv.view(batch, n_pos, 3, heads, d_head).permute(2, 0, 3, 1, 4)  # each [batch, head, pos, d_head]
            if last:  # only the last position's output is read: its query alone
                q, resid = q[:, :, -1:], resid[:, -1:]
                z = F.scaled_dot_product_attention(q, k, v, attn_mask=None if full_causal else allowed[-1:])
            else:
                z = F.scaled_dot_product_attention(q, k, v, is_causal=full_causal, attn_mask=None if full_causal else allowed)
            rows = resid.shape[1]
            # addmm adds its first argument to the fp32 (or fp64) product once, as `+` after `@` would
            flat = torch.addmm(resid.reshape(-1, cfg.d_model), z.transpose(1, 2).reshape(-1, heads * d_head), w_o)  # [batch·rows, d_model]
            if push is not None and push.layer == index:  # the block's resid_mid
                flat = _pushed(flat.view(batch, rows, cfg.d_model), push, n_pos).view(-1, cfg.d_model)
            if mlp is not None:
                w_in, b_in, w_out, b_out = mlp
                hidden = F.gelu(torch.addmm(b_in, block.ln2(flat), w_in))  # MLP.act_fn: the exact GELU
                flat = flat + torch.addmm(b_out, hidden, w_out)
            resid = flat.view(batch, rows, cfg.d_model)
        output = model.unembed(model.ln_final(resid))
        return output if scale is None else output * scale

    def chunked(states: Tensor) -> Tensor:
        if len(states) <= ROLLOUT_CHUNK:
            return step(states)
        return torch.cat([step(part) for part in states.split(ROLLOUT_CHUNK)])

    return chunked


def _pushed(resid: Tensor, push: ResidualPush, n_pos: int) -> Tensor:
    """``resid`` (the window's last ``resid.shape[1]`` positions of ``n_pos``) with ``push`` added where it lands."""
    if push.position is not None and not 0 <= push.position < n_pos:
        raise ValueError(f"the window has {n_pos} positions; the push sits at position {push.position}")
    resid = resid.clone()
    vector = push.vector.to(resid)
    if push.position is None:
        resid += vector
    elif push.position >= n_pos - resid.shape[1]:  # the position is among those computed here
        resid[:, push.position - (n_pos - resid.shape[1])] += vector
    return resid


def predictor_placement(predictor: Callable[[Tensor], Tensor], like: Tensor) -> tuple[torch.dtype, torch.device]:
    """The dtype and device ``predictor`` takes its inputs in: those of its first parameter, or ``like``'s for a
    predictor without parameters (a reference such as in-context least squares, a plain function)."""
    parameters = list(predictor.parameters()) if hasattr(predictor, "parameters") else []
    return (parameters[0].dtype, parameters[0].device) if parameters else (like.dtype, like.device)


@torch.no_grad()
def rollout(
    model: Callable[[Tensor], Tensor],
    context: Float[Tensor, "batch t0 d"],
    n_steps: int,
    *,
    window: int | None = None,
    compile: bool = False,
    fast: bool = False,
) -> Float[Tensor, "batch n_steps d"]:
    """Feed the model its own predictions for ``n_steps`` steps, starting from ``context``.

    At every step the model sees the last ``window`` states (default: the context length, i.e. a
    window as long as the context it was given) and its prediction at the last position is
    appended. Returns only the predicted states. ``compile=True`` runs the model through
    ``torch.compile`` (every step has the same shape, so it compiles once; eager, with a warning,
    where no compiler exists): worth it for long rollouts, not for a few steps.

    ``fast=True`` (eager only) steps an unhooked transformer through :func:`last_position_step`,
    which skips the work the last position does not need and equals the model's forward pass to
    float rounding, not bit for bit. Leave it off where this rollout is compared with one under a
    hook (an ablation against its baseline): the hooked rollout takes the model's forward pass, and
    the two would then differ by rounding even where the hook changes nothing.
    """
    if context.ndim != 3:
        raise ValueError(f"context must have shape [batch, t0, d], got {list(context.shape)}")
    check_finite("context", context)
    n_steps = check_positive_int("n_steps", n_steps)
    window = check_positive_int("window", window) if window is not None else context.shape[1]
    n_ctx = getattr(getattr(model, "cfg", None), "n_ctx", None)
    if n_ctx is not None and window > n_ctx:
        raise ValueError(f"window must be <= the model's n_ctx ({n_ctx}), got {window}")
    if context.shape[1] < window:
        raise ValueError(f"context must hold at least window={window} states, got {context.shape[1]}")
    history = context[:, -window:]
    step = compile_or_eager(model, context.device, "rollout") if compile else model
    if fast and step is model:  # eager, asked for or where nothing compiles
        step = last_position_step(model) or model
    predictions = []
    for _ in range(n_steps):
        next_state = step(history)[:, -1:]
        predictions.append(next_state)
        history = torch.cat([history[:, 1:], next_state], dim=1)
    return torch.cat(predictions, dim=1)


def relative_error(pred: Float[Tensor, "batch step d"], true: Float[Tensor, "batch step d"]) -> Float[Tensor, "batch step"]:
    """‖pred − true‖ / ‖true‖ over the state components, at every step.

    A non-finite prediction (a diverged rollout) counts as an infinite error, so medians and
    maxima rank it last instead of turning into NaN.
    """
    if pred.shape != true.shape:
        raise ValueError(f"pred and true must have the same shape, got {list(pred.shape)} and {list(true.shape)}")
    norm = torch.linalg.vector_norm(true, dim=-1)
    if bool((norm == 0).any()):
        raise ValueError("true contains a zero state, where the relative error is undefined")
    error = torch.linalg.vector_norm(pred - true, dim=-1) / norm
    return torch.where(torch.isnan(error), torch.full_like(error, float("inf")), error)


@dataclass
class RolloutEvaluation:
    """A rollout from held-out trajectories with its per-step relative error."""

    trajectories: TrajectoryBatch  # the true trajectories (context followed by the rolled-out part)
    context_len: int  # how many true states the model was given
    predicted: Tensor  # [traj, n_steps, 2]
    error: Tensor  # [traj, n_steps] relative error per step

    @property
    def true(self) -> Tensor:
        """The true states over the rolled-out steps, [traj, n_steps, 2]."""
        return self.trajectories.states[:, self.context_len :]

    def median_error(self) -> Tensor:
        """Median over trajectories of the relative error, per step: [n_steps]."""
        return self.error.median(dim=0).values

    def summary(self) -> dict[str, float]:
        """Headline numbers: median error at the last step, over all steps, and the worst trajectory."""
        return {
            "median_final_error": float(self.error[:, -1].median()),
            "median_error_all_steps": float(self.error.median()),
            "mean_error_all_steps": float(self.error.mean()),
            "max_final_error": float(self.error[:, -1].max()),
            "n_trajectories": int(self.error.shape[0]),
            "n_steps": int(self.error.shape[1]),
        }


def evaluate_rollout(
    model: Callable[[Tensor], Tensor],
    system: System,
    *,
    n_traj: int,
    n_steps: int,
    context_len: int,
    seed: int,
    energy_range: tuple[float, float] | None = None,
) -> RolloutEvaluation:
    """Roll ``model`` out for ``n_steps`` from the first ``context_len`` true states of fresh
    trajectories (energies in ``energy_range``, e.g. beyond the training range) and score every step."""
    context_len = check_positive_int("context_len", context_len)
    n_steps = check_positive_int("n_steps", n_steps)
    trajectories = system.sample(n_traj, context_len + n_steps, seed=seed, energy_range=energy_range)
    dtype = next(model.parameters()).dtype
    device = next(model.parameters()).device
    trajectories = trajectories.to(device=device, dtype=dtype)
    predicted = rollout(model, trajectories.states[:, :context_len], n_steps)
    error = relative_error(predicted, trajectories.states[:, context_len:])
    check_shape("error", error, (n_traj, n_steps), f"[{n_traj}, {n_steps}]")
    return RolloutEvaluation(trajectories, context_len, predicted, error)


__all__ = ["ROLLOUT_CHUNK", "ResidualPush", "RolloutEvaluation", "evaluate_rollout", "last_position_step", "predictor_placement", "relative_error", "rollout"]
