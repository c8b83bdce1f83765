"""Activation patching for continuous inputs, on top of ``transformer_lens.patching``.

Clean and corrupted runs share the initial state but differ in ω0 (or γ). A clean activation is
patched into the corrupted run at one site (layer × position, or layer × head); the metric is the
normalised recovery of the clean prediction, 1 − ‖y_patched − y_clean‖ / ‖y_corrupted − y_clean‖.
Results are TransformerLens ``PatchingResult`` objects, with standard errors, bootstrap intervals
and permutation p-values.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd
import torch
from jaxtyping import Float
from torch import Tensor
from transformer_lens import patching as tl_patching
from transformer_lens.patching import PatchingResult
from transformer_lens.utilities import get_act_name

from physlens._validation import check_batch, check_choice, check_nonnegative_int, check_positive_float, check_positive_int
from physlens.probes.activations import Positions, capture_activations, check_hooks, model_device, resolve_positions
from physlens.systems.oscillator import OscillatorSystem, Trajectories, check_underdamped, evolve

SITES = ("resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out", "pre", "post", "z", "result", "q", "k", "v", "pattern")
"""Patchable activations: residual stream, layer outputs, MLP neurons (``pre``/``post``), and per head
``z`` / ``result`` / ``q`` / ``k`` / ``v`` and the attention ``pattern`` (patched by query position)."""
HEAD_SITES = ("z", "result", "q", "k", "v", "pattern")
"""The sites with a head axis, patched per head."""


def patching_pairs(
    system: OscillatorSystem,
    n_pairs: int,
    n_steps: int,
    *,
    vary: str = "omega0",
    min_change: float = 0.5,
    seed: int,
) -> tuple[Trajectories, Trajectories]:
    """Clean/corrupted trajectory pairs with the same initial state and a different ``vary`` parameter.

    Both parameters are drawn from the system's spec; the corrupted value is redrawn until it
    differs from the clean one by at least ``min_change`` (so the spec must span more than that).
    """
    check_choice("vary", vary, ("omega0", "gamma"))
    n_pairs = check_positive_int("n_pairs", n_pairs)
    min_change = check_positive_float("min_change", min_change)
    clean = system.sample(n_pairs, n_steps, seed=check_nonnegative_int("seed", seed))
    spec = system.omega0 if vary == "omega0" else system.gamma
    low, high = spec.bounds
    if high - low < min_change:
        raise ValueError(f"the system's {vary} spec spans [{low:g}, {high:g}], narrower than min_change={min_change:g}; nothing to corrupt")
    generator = torch.Generator().manual_seed(seed + 1)
    original = (clean.omega0 if vary == "omega0" else clean.gamma).double().cpu()
    corrupted = original.clone()
    todo = torch.ones(n_pairs, dtype=torch.bool)
    for _ in range(1000):
        draw = spec.sample(int(todo.sum()), generator=generator, dtype=torch.float64, device="cpu")
        corrupted[todo] = draw
        todo = (corrupted - original).abs() < min_change
        if not bool(todo.any()):
            break
    else:
        raise ValueError(f"could not draw {vary} values {min_change:g} away from the clean ones; widen the spec or lower min_change")
    omega0 = corrupted if vary == "omega0" else clean.omega0.double().cpu()
    gamma = corrupted if vary == "gamma" else clean.gamma.double().cpu()
    check_underdamped(omega0, gamma)
    states = evolve(clean.states[:, 0].double().cpu(), omega0, gamma, clean.dt, n_steps)
    corrupt = Trajectories(states, omega0, gamma, clean.dt).to(device=clean.states.device, dtype=clean.states.dtype)
    return clean, corrupt


def recovery(patched: Tensor, clean: Tensor, corrupted: Tensor) -> Tensor:
    """Per-example normalised recovery 1 − ‖patched − clean‖ / ‖corrupted − clean‖ (1: clean restored, 0: no change)."""
    gap = torch.linalg.vector_norm((corrupted - clean).flatten(1), dim=1)
    return 1 - torch.linalg.vector_norm((patched - clean).flatten(1), dim=1) / gap


@contextlib.contextmanager
def _quiet_tqdm(progress: bool) -> Iterator[None]:
    """TransformerLens's patching loop always shows a tqdm bar and reads TQDM_* settings only at
    import, so silencing it means swapping its module-level ``tqdm`` for the duration of the call."""
    if progress:
        yield
        return
    original = tl_patching.tqdm
    tl_patching.tqdm = functools.partial(original, disable=True)
    try:
        yield
    finally:
        tl_patching.tqdm = original


def _setter(site: str, per_position: bool, per_head: bool):
    def patch(corrupted: Tensor, index: Sequence[int], clean: Tensor) -> Tensor:
        position = index[1] if per_position else slice(None)
        if site == "pattern":  # [batch, head, query, key]: the position is the query's
            corrupted[:, index[-1], position] = clean[:, index[-1], position]
        elif per_head:  # [batch, pos, head, ...]
            corrupted[:, position, index[-1]] = clean[:, position, index[-1]]
        else:  # [batch, pos, ...]
            corrupted[:, position] = clean[:, position]
        return corrupted

    return patch


@dataclasses.dataclass
class SweepPlan:
    """The cells of a sweep: which hook of which layer, at which position and head."""

    site: str
    names: list[str]  # hook name of every swept layer
    index_df: pd.DataFrame  # one row per cell: layer [, pos] [, head]
    per_position: bool
    per_head: bool

    def cell_slice(self, row: pd.Series) -> tuple:
        """Index of the cell's part of the hook's activation (batch axis kept whole)."""
        position = int(row["pos"]) if self.per_position else slice(None)
        if self.site == "pattern":
            return (slice(None), int(row["head"]), position)
        if self.per_head:
            return (slice(None), position, int(row["head"]))
        return (slice(None), position)


def plan_sweep(
    model: Any, n_pos: int, *, site: str, positions: Positions = "all", per_position: bool = True, layers: Sequence[int] | None = None
) -> SweepPlan:
    """Check a sweep's arguments against ``model`` and list its cells (what :func:`patching_sweep` and
    :func:`~physlens.probes.attribution.attribution_patching_sweep` patch, in the same order)."""
    check_choice("site", site, SITES)
    n_layers = model.cfg.n_layers
    layers = list(range(n_layers)) if layers is None else [int(layer) for layer in layers]
    if any(not 0 <= layer < n_layers for layer in layers):
        raise ValueError(f"layers must lie in 0..{n_layers - 1}, got {layers}")
    names = [get_act_name(site, layer=layer) for layer in layers]
    check_hooks(model, names)
    pos = resolve_positions(positions, n_pos) if per_position else None
    per_head = site in HEAD_SITES
    rows = []
    for layer in layers:
        for p in pos if per_position else [None]:
            for head in range(model.cfg.n_heads) if per_head else [None]:
                rows.append([v for v in (layer, p, head) if v is not None])
    columns = ["layer"] + (["pos"] if per_position else []) + (["head"] if per_head else [])
    return SweepPlan(site, names, pd.DataFrame(rows, columns=columns), per_position, per_head)


def recovery_metric(
    model: Any, clean_inputs: Tensor, corrupted_inputs: Tensor, output_position: int | None = -1
) -> Callable[[Tensor], Tensor]:
    """The metric of :func:`patching_sweep`: ``output ↦`` :func:`recovery` of the prediction at
    ``output_position`` (None: every position) between the model's clean and corrupted outputs.

    Refuses pairs whose clean and corrupted predictions coincide (recovery is undefined there).
    """
    if clean_inputs.shape != corrupted_inputs.shape:
        raise ValueError(f"clean and corrupted inputs must have the same shape, got {list(clean_inputs.shape)} and {list(corrupted_inputs.shape)}")
    if output_position is not None:
        output_position = resolve_positions(output_position, clean_inputs.shape[1])[0]
    with torch.no_grad():
        clean_out = model(clean_inputs)
        corrupted_out = model(corrupted_inputs)

    def select(y: Tensor) -> Tensor:
        return y[:, output_position] if output_position is not None else y

    gap = torch.linalg.vector_norm((select(corrupted_out) - select(clean_out)).flatten(1), dim=1)
    if bool((gap <= 1e-12 * torch.linalg.vector_norm(select(clean_out).flatten(1), dim=1).clamp_min(1e-30)).any()):
        raise ValueError("some clean/corrupted pairs give identical predictions, so recovery is undefined for them; drop those pairs")

    def metric(output: Tensor) -> Tensor:
        return recovery(select(output), select(clean_out), select(corrupted_out))

    return metric


def patching_sweep(
    model: Any,
    clean_inputs: Tensor,
    corrupted_inputs: Tensor,
    *,
    site: str = "resid_pre",
    positions: Positions = "all",
    per_position: bool = True,
    layers: Sequence[int] | None = None,
    output_position: int | None = -1,
    metric: Callable[[Tensor], Tensor] | None = None,
    device: str | torch.device | None = None,
    progress: bool = False,
) -> PatchingResult:
    """Patch ``site`` from the clean run into the corrupted run, cell by cell.

    Cells are layer × position (``per_position``; positions from ``positions``) or whole layers at
    every position (``per_position=False``), times head for the :data:`HEAD_SITES` (the attention
    ``pattern`` is patched by query position). The metric is :func:`recovery` of the prediction at
    ``output_position`` (None: every position), or ``metric`` (model output → one value per
    example) when given. Returns TransformerLens's ``PatchingResult`` (per example, with
    ``baseline`` = the metric of the unpatched corrupted run, 0 for recovery), whose ``index_df``
    names the cells.
    """
    check_choice("site", site, SITES)
    check_batch("clean_inputs", clean_inputs)
    check_batch("corrupted_inputs", corrupted_inputs)
    if clean_inputs.shape != corrupted_inputs.shape:
        raise ValueError(f"clean and corrupted inputs must have the same shape, got {list(clean_inputs.shape)} and {list(corrupted_inputs.shape)}")
    device = torch.device(device) if device is not None else model_device(model)
    clean_inputs, corrupted_inputs = clean_inputs.to(device), corrupted_inputs.to(device)
    plan = plan_sweep(model, clean_inputs.shape[1], site=site, positions=positions, per_position=per_position, layers=layers)
    if metric is None:
        metric = recovery_metric(model, clean_inputs, corrupted_inputs, output_position)
    elif not callable(metric):
        raise TypeError(f"metric must be a function of the model output, got {type(metric).__name__}")
    with torch.no_grad():
        clean_cache = capture_activations(model, clean_inputs, plan.names, None)
    with torch.no_grad(), _quiet_tqdm(progress):
        return tl_patching.generic_activation_patch(
            model,
            corrupted_inputs,
            clean_cache,
            metric,
            _setter(site, per_position, plan.per_head),
            site,
            index_df=plan.index_df,
            reduce="none",
            baseline=True,
        )


@dataclass
class GroupPatching:
    """Recovery when a whole group of positions is patched at once, for every layer.

    ``recovery[group]`` is ``[layer, example]``: the :func:`recovery` of the last-position
    prediction with ``site`` patched at the group's positions of that layer.
    """

    site: str
    layers: list[int]
    groups: dict[str, list[int]]  # group name -> the positions patched together
    recovery: dict[str, Tensor]  # group name -> [layer, example]

    def mean(self, group: str) -> Tensor:
        """Mean recovery per layer."""
        return self.recovery[group].mean(dim=1)

    def stderr(self, group: str) -> Tensor:
        """Standard error of the mean recovery per layer."""
        values = self.recovery[group]
        return values.std(dim=1) / values.shape[1] ** 0.5

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary: mean and standard error per group and layer."""
        return {"site": self.site, "layers": self.layers, "groups": self.groups,
                "mean": {g: self.mean(g).tolist() for g in self.groups}, "stderr": {g: self.stderr(g).tolist() for g in self.groups}}


def group_patching(
    model: Any,
    clean_inputs: Float[Tensor, "batch pos d_in"],
    corrupted_inputs: Float[Tensor, "batch pos d_in"],
    groups: dict[str, Sequence[int]],
    *,
    site: str = "resid_pre",
    layers: Sequence[int] | None = None,
) -> GroupPatching:
    """Patch ``site`` from the clean run into the corrupted run at a whole group of positions at
    once, layer by layer, and measure the recovery of the last-position prediction.

    With pairs that share their final state, patching every position but the last at layer l asks
    how much of the difference still lives in the context at l; patching only the last position
    asks how much has already been gathered there. The two curves show where the information moves.
    """
    check_choice("site", site, tuple(s for s in SITES if s not in HEAD_SITES))
    n_layers = model.cfg.n_layers
    layers = list(range(n_layers)) if layers is None else [int(layer) for layer in layers]
    if any(not 0 <= layer < n_layers for layer in layers):
        raise ValueError(f"layers must lie in 0..{n_layers - 1}, got {layers}")
    if not groups:
        raise ValueError("groups must name at least one group of positions")
    resolved = {name: resolve_positions(list(positions), clean_inputs.shape[1]) for name, positions in groups.items()}
    device = model_device(model)
    clean_inputs, corrupted_inputs = clean_inputs.to(device), corrupted_inputs.to(device)
    metric = recovery_metric(model, clean_inputs, corrupted_inputs)
    names = [get_act_name(site, layer=layer) for layer in layers]
    check_hooks(model, names)
    with torch.no_grad():
        clean_cache = capture_activations(model, clean_inputs, names, None)
    out: dict[str, Tensor] = {}
    for group, positions in resolved.items():
        index = torch.tensor(positions, device=device)
        rows = []
        for name in names:
            def patch(activation: Tensor, hook: Any, name: str = name) -> Tensor:
                activation[:, index] = clean_cache[name][:, index]
                return activation

            with torch.no_grad(), model.hooks(fwd_hooks=[(name, patch)]):
                rows.append(metric(model(corrupted_inputs)).detach().cpu())
        out[group] = torch.stack(rows)
    return GroupPatching(site=site, layers=layers, groups=resolved, recovery=out)


def patching_grid(result: PatchingResult, statistic: str = "mean") -> tuple[Tensor, list[str]]:
    """Reshape a sweep's per-cell ``mean`` (or ``stderr``) into a dense grid over its index columns.

    Works on flat sweeps (``index_df``, as :func:`patching_sweep` returns) and grid-shaped ones
    (``axis_names``, as the ``get_act_patch_*`` sweeps return). Returns ``(grid, column_names)``;
    e.g. ``[layer, pos]`` or ``[layer, head]``. Cells not swept are NaN.
    """
    check_choice("statistic", statistic, ("mean", "stderr"))
    if result.has_metric_axis:
        raise ValueError(f"result holds several metrics {result.metric_names}; pick one with result[name]")
    values = result.mean() if statistic == "mean" else result.stderr()
    values = values.reshape(len(result.index_df))  # a grid-shaped sweep (axis_names) flattens in index_df's order
    columns = list(result.index_df.columns)
    levels = [sorted(result.index_df[c].unique().tolist()) for c in columns]
    grid = torch.full([len(lv) for lv in levels], float("nan"), dtype=values.dtype)
    for cell, (_, row) in enumerate(result.index_df.iterrows()):
        grid[tuple(levels[i].index(int(row[c])) for i, c in enumerate(columns))] = values[cell].cpu()
    return grid, columns


# TransformerLens's named sweeps, with positions counted on the input's axis 1. --------------------

_POSITION_AXES = ("pos", "dest_pos", "src_pos")
_HEAD_AXES = ("head", "head_index")


def _axis_sizes(model: Any, corrupted_tokens: Tensor, axes: Sequence[str]) -> list[int]:
    position_axis = getattr(model, "input_position_axis", None)
    if position_axis is None and set(axes) & set(_POSITION_AXES):
        raise ValueError(f"{type(model).__name__} takes inputs without positions, so a sweep over positions does not apply")
    if not isinstance(corrupted_tokens, Tensor) or (position_axis is not None and corrupted_tokens.ndim <= position_axis):
        raise ValueError(f"corrupted_tokens must be the model's input tensor [batch, pos, ...], got {getattr(corrupted_tokens, 'shape', type(corrupted_tokens).__name__)}")
    sizes = {"layer": model.cfg.n_layers}
    sizes.update({axis: model.cfg.n_heads for axis in _HEAD_AXES})
    if position_axis is not None:
        sizes.update({axis: int(corrupted_tokens.shape[position_axis]) for axis in _POSITION_AXES})
    return [sizes[axis] for axis in axes]


def _transformer_lens_sweep(name: str) -> Callable[..., Any]:
    """``transformer_lens.patching.<name>`` with its cells laid out from the model's own axes."""
    helper = getattr(tl_patching, name)
    setter = helper.keywords["patch_setter"]
    activation_name = helper.keywords["activation_name"]
    axes = tuple(helper.keywords["index_axis_names"])

    def sweep(
        model: Any,
        corrupted_tokens: Tensor,
        clean_cache: Any,
        patching_metric: Any,
        *,
        reduce: str = "scalar",
        baseline: bool = False,
        return_index_df: bool = False,
    ) -> Any:
        sizes = _axis_sizes(model, corrupted_tokens, axes)
        index_df = tl_patching.make_df_from_ranges(sizes, list(axes))
        out = tl_patching.generic_activation_patch(
            model, corrupted_tokens, clean_cache, patching_metric, setter, activation_name,
            index_df=index_df, return_index_df=return_index_df, reduce=reduce, baseline=baseline,
        )
        if isinstance(out, PatchingResult):
            lead = 1 if out.has_metric_axis else 0
            tail = out.values.shape[lead + 1 :]
            values = out.values.reshape(*out.values.shape[:lead], *sizes, *tail)
            return dataclasses.replace(out, values=values, axis_names=list(axes))
        if return_index_df:
            values, index_df = out
            return values.reshape(sizes), index_df
        return out.reshape(sizes)

    sweep.__name__ = sweep.__qualname__ = name
    sweep.__module__ = __name__
    sweep.__doc__ = (
        f"``transformer_lens.patching.{name}`` with positions counted on the input's axis 1 (the model's "
        f"``input_position_axis``), not its last axis; same arguments and results, over axes {list(axes)}.\n\n"
        f"TransformerLens's description:\n{helper.__doc__ or ''}"
    )
    return sweep


get_act_patch_resid_pre = _transformer_lens_sweep("get_act_patch_resid_pre")
"""``transformer_lens.patching.get_act_patch_resid_pre`` for continuous inputs: ``[n_layers, pos]``."""
get_act_patch_resid_mid = _transformer_lens_sweep("get_act_patch_resid_mid")
"""``transformer_lens.patching.get_act_patch_resid_mid`` for continuous inputs: ``[n_layers, pos]``."""
get_act_patch_attn_out = _transformer_lens_sweep("get_act_patch_attn_out")
"""``transformer_lens.patching.get_act_patch_attn_out`` for continuous inputs: ``[n_layers, pos]``."""
get_act_patch_mlp_out = _transformer_lens_sweep("get_act_patch_mlp_out")
"""``transformer_lens.patching.get_act_patch_mlp_out`` for continuous inputs: ``[n_layers, pos]``."""
get_act_patch_attn_head_out_by_pos = _transformer_lens_sweep("get_act_patch_attn_head_out_by_pos")
"""``transformer_lens.patching.get_act_patch_attn_head_out_by_pos`` (``hook_z``): ``[n_layers, pos, n_heads]``."""
get_act_patch_attn_head_q_by_pos = _transformer_lens_sweep("get_act_patch_attn_head_q_by_pos")
"""``transformer_lens.patching.get_act_patch_attn_head_q_by_pos``: ``[n_layers, pos, n_heads]``."""
get_act_patch_attn_head_k_by_pos = _transformer_lens_sweep("get_act_patch_attn_head_k_by_pos")
"""``transformer_lens.patching.get_act_patch_attn_head_k_by_pos``: ``[n_layers, pos, n_heads]``."""
get_act_patch_attn_head_v_by_pos = _transformer_lens_sweep("get_act_patch_attn_head_v_by_pos")
"""``transformer_lens.patching.get_act_patch_attn_head_v_by_pos``: ``[n_layers, pos, n_heads]``."""
get_act_patch_attn_head_pattern_by_pos = _transformer_lens_sweep("get_act_patch_attn_head_pattern_by_pos")
"""``transformer_lens.patching.get_act_patch_attn_head_pattern_by_pos``: ``[n_layers, n_heads, dest_pos]``."""
get_act_patch_attn_head_pattern_dest_src_pos = _transformer_lens_sweep("get_act_patch_attn_head_pattern_dest_src_pos")
"""``transformer_lens.patching.get_act_patch_attn_head_pattern_dest_src_pos``: ``[n_layers, n_heads, dest_pos, src_pos]``."""
get_act_patch_attn_head_out_all_pos = _transformer_lens_sweep("get_act_patch_attn_head_out_all_pos")
"""``transformer_lens.patching.get_act_patch_attn_head_out_all_pos`` (the same cells): ``[n_layers, n_heads]``."""
get_act_patch_attn_head_q_all_pos = _transformer_lens_sweep("get_act_patch_attn_head_q_all_pos")
"""``transformer_lens.patching.get_act_patch_attn_head_q_all_pos`` (the same cells): ``[n_layers, n_heads]``."""
get_act_patch_attn_head_k_all_pos = _transformer_lens_sweep("get_act_patch_attn_head_k_all_pos")
"""``transformer_lens.patching.get_act_patch_attn_head_k_all_pos`` (the same cells): ``[n_layers, n_heads]``."""
get_act_patch_attn_head_v_all_pos = _transformer_lens_sweep("get_act_patch_attn_head_v_all_pos")
"""``transformer_lens.patching.get_act_patch_attn_head_v_all_pos`` (the same cells): ``[n_layers, n_heads]``."""
get_act_patch_attn_head_pattern_all_pos = _transformer_lens_sweep("get_act_patch_attn_head_pattern_all_pos")
"""``transformer_lens.patching.get_act_patch_attn_head_pattern_all_pos`` (the same cells): ``[n_layers, n_heads]``."""

_HEAD_TYPES = ["out", "q", "k", "v", "pattern"]
_BLOCK_TYPES = ["resid_pre", "attn_out", "mlp_out"]


def _stack_sweeps(results: list[Any], axis_order: Sequence[str], type_names: list[str]) -> Any:
    """Stack sweeps on a leading ``patch_type`` axis, as TransformerLens's ``*_every`` helpers do."""
    if all(isinstance(r, Tensor) for r in results):
        return torch.stack(results)
    if not all(isinstance(r, PatchingResult) for r in results):
        raise TypeError("cannot stack tensor and PatchingResult sweeps together")
    rename = {"head_index": "head", "dest_pos": "pos"}
    first = results[0]
    lead = 1 if first.has_metric_axis else 0
    values = []
    for r in results:
        names = [rename.get(n, n) for n in r.axis_names]
        order = list(range(lead)) + [lead + names.index(n) for n in axis_order]
        values.append(r.values.permute(*order, *range(lead + len(names), r.values.ndim)))
    stacked = torch.stack(values, dim=lead)
    cells = list(stacked.shape[lead : lead + 1 + len(axis_order)])
    return dataclasses.replace(
        first, values=stacked, axis_names=["patch_type", *axis_order],
        index_df=tl_patching.make_df_from_ranges(cells, ["patch_type", *axis_order]), patch_type_names=type_names,
    )


def _run_every(sweeps: Sequence[Callable[..., Any]], model: Any, corrupted_tokens: Tensor, clean_cache: Any, metric: Any, kwargs: dict) -> list[Any]:
    baseline = bool(kwargs.pop("baseline", False))
    results = [sweep(model, corrupted_tokens, clean_cache, metric, baseline=baseline and i == 0, **kwargs) for i, sweep in enumerate(sweeps)]
    if baseline:  # a tensor sweep carries no baseline: give every sweep the result form, as TransformerLens does
        results = [
            r if isinstance(r, PatchingResult)
            else PatchingResult(values=r, axis_names=list(axes), index_df=tl_patching.make_df_from_ranges(list(r.shape), list(axes)), metric_names=["metric"], reduced=True)
            for r, axes in zip(results, [_sweep_axes(s) for s in sweeps])
        ]
    return results


def _sweep_axes(sweep: Callable[..., Any]) -> list[str]:
    return list(getattr(tl_patching, sweep.__name__).keywords["index_axis_names"])


def get_act_patch_block_every(model: Any, corrupted_tokens: Tensor, clean_cache: Any, metric: Any, **kwargs: Any) -> Any:
    """``transformer_lens.patching.get_act_patch_block_every`` for continuous inputs: resid_pre,
    attn_out and mlp_out by layer and position, ``[3, n_layers, pos]`` (``reduce``/``baseline`` as there)."""
    if getattr(model.cfg, "attn_only", False):
        raise ValueError("get_act_patch_block_every patches mlp_out, and this model is attention-only (cfg.attn_only=True)")
    sweeps = (get_act_patch_resid_pre, get_act_patch_attn_out, get_act_patch_mlp_out)
    return _stack_sweeps(_run_every(sweeps, model, corrupted_tokens, clean_cache, metric, kwargs), ("layer", "pos"), _BLOCK_TYPES)


def get_act_patch_attn_head_all_pos_every(model: Any, corrupted_tokens: Tensor, clean_cache: Any, metric: Any, **kwargs: Any) -> Any:
    """``transformer_lens.patching.get_act_patch_attn_head_all_pos_every``: every head's output, q, k,
    v and pattern at all positions at once, ``[5, n_layers, n_heads]``."""
    sweeps = (
        get_act_patch_attn_head_out_all_pos, get_act_patch_attn_head_q_all_pos, get_act_patch_attn_head_k_all_pos,
        get_act_patch_attn_head_v_all_pos, get_act_patch_attn_head_pattern_all_pos,
    )
    return _stack_sweeps(_run_every(sweeps, model, corrupted_tokens, clean_cache, metric, kwargs), ("layer", "head"), _HEAD_TYPES)


def get_act_patch_attn_head_by_pos_every(model: Any, corrupted_tokens: Tensor, clean_cache: Any, metric: Any, **kwargs: Any) -> Any:
    """``transformer_lens.patching.get_act_patch_attn_head_by_pos_every`` for continuous inputs: every
    head's output, q, k, v and pattern by position, ``[5, n_layers, pos, n_heads]``."""
    sweeps = (
        get_act_patch_attn_head_out_by_pos, get_act_patch_attn_head_q_by_pos, get_act_patch_attn_head_k_by_pos,
        get_act_patch_attn_head_v_by_pos, get_act_patch_attn_head_pattern_by_pos,
    )
    results = _run_every(sweeps, model, corrupted_tokens, clean_cache, metric, kwargs)
    if isinstance(results[-1], Tensor):  # the pattern sweep is [layer, head, dest_pos]
        results[-1] = results[-1].transpose(-1, -2)
    return _stack_sweeps(results, ("layer", "pos", "head"), _HEAD_TYPES)


TRANSFORMER_LENS_SWEEPS = (
    "get_act_patch_resid_pre", "get_act_patch_resid_mid", "get_act_patch_attn_out", "get_act_patch_mlp_out",
    "get_act_patch_attn_head_out_by_pos", "get_act_patch_attn_head_q_by_pos", "get_act_patch_attn_head_k_by_pos",
    "get_act_patch_attn_head_v_by_pos", "get_act_patch_attn_head_pattern_by_pos", "get_act_patch_attn_head_pattern_dest_src_pos",
    "get_act_patch_attn_head_out_all_pos", "get_act_patch_attn_head_q_all_pos", "get_act_patch_attn_head_k_all_pos",
    "get_act_patch_attn_head_v_all_pos", "get_act_patch_attn_head_pattern_all_pos",
    "get_act_patch_block_every", "get_act_patch_attn_head_all_pos_every", "get_act_patch_attn_head_by_pos_every",
)
"""Every ``transformer_lens.patching`` sweep this module provides under the same name and signature."""


__all__ = [
    "HEAD_SITES",
    "SITES",
    "TRANSFORMER_LENS_SWEEPS",
    "GroupPatching",
    "PatchingResult",
    "SweepPlan",
    "group_patching",
    "patching_grid",
    "patching_pairs",
    "patching_sweep",
    "plan_sweep",
    "recovery",
    "recovery_metric",
    *TRANSFORMER_LENS_SWEEPS,
]
