"""Activation patching for continuous inputs, on top of ``transformer_lens.patching``.

Clean and corrupted runs share the initial state but differ in ω0 (or γ). A clean activation is
patched into the corrupted run at one site (layer × position, or layer × head); the metric is the
normalised recovery of the clean prediction, 1 − ‖y_patched − y_clean‖ / ‖y_corrupted − y_clean‖.
Results are TransformerLens ``PatchingResult`` objects, with standard errors, bootstrap intervals
and permutation p-values.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator, Sequence
from typing import Any

import pandas as pd
import torch
from torch import Tensor
from transformer_lens import patching as tl_patching
from transformer_lens.patching import PatchingResult
from transformer_lens.utilities import get_act_name

from physlens._validation import check_choice, check_nonnegative_int, check_positive_float, check_positive_int
from physlens.probes.activations import Positions, capture_activations, check_hooks, model_device, resolve_positions
from physlens.systems.oscillator import OscillatorSystem, Trajectories, check_underdamped, evolve

SITES = ("resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out", "z", "result")
"""Patchable activations: residual stream, layer outputs, and per-head ``z`` / ``result``."""
HEAD_SITES = ("z", "result")


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


def _setter(per_position: bool, per_head: bool):
    def patch(corrupted: Tensor, index: Sequence[int], clean: Tensor) -> Tensor:
        position = index[1] if per_position else slice(None)
        if per_head:
            head = index[-1]
            corrupted[:, position, head] = clean[:, position, head]
        else:
            corrupted[:, position] = clean[:, position]
        return corrupted

    return patch


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
    device: str | torch.device | None = None,
    progress: bool = False,
) -> PatchingResult:
    """Patch ``site`` from the clean run into the corrupted run, cell by cell.

    Cells are layer × position (``per_position``; positions from ``positions``) or whole layers at
    every position (``per_position=False``), times head for ``z`` / ``result``. The metric is
    :func:`recovery` of the prediction at ``output_position`` (None: every position). Returns
    TransformerLens's ``PatchingResult`` (per example, with ``baseline`` = the unpatched corrupted
    run, recovery 0), whose ``index_df`` names the cells.
    """
    check_choice("site", site, SITES)
    if clean_inputs.shape != corrupted_inputs.shape:
        raise ValueError(f"clean and corrupted inputs must have the same shape, got {list(clean_inputs.shape)} and {list(corrupted_inputs.shape)}")
    device = torch.device(device) if device is not None else model_device(model)
    clean_inputs, corrupted_inputs = clean_inputs.to(device), corrupted_inputs.to(device)
    n_pos = clean_inputs.shape[1]
    n_layers = model.cfg.n_layers
    layers = list(range(n_layers)) if layers is None else [int(layer) for layer in layers]
    if any(not 0 <= layer < n_layers for layer in layers):
        raise ValueError(f"layers must lie in 0..{n_layers - 1}, got {layers}")
    names = [get_act_name(site, layer=layer) for layer in layers]
    check_hooks(model, names)
    pos = resolve_positions(positions, n_pos) if per_position else None
    if output_position is not None:
        output_position = resolve_positions(output_position, n_pos)[0]
    rows = []
    per_head = site in HEAD_SITES
    for layer in layers:
        for p in pos if per_position else [None]:
            for head in range(model.cfg.n_heads) if per_head else [None]:
                rows.append([v for v in (layer, p, head) if v is not None])
    columns = ["layer"] + (["pos"] if per_position else []) + (["head"] if per_head else [])
    index_df = pd.DataFrame(rows, columns=columns)
    with torch.no_grad():
        clean_cache = capture_activations(model, clean_inputs, names, None)
        clean_out = model(clean_inputs)
        corrupted_out = model(corrupted_inputs)
    select = (lambda y: y[:, output_position]) if output_position is not None else (lambda y: y)
    gap = torch.linalg.vector_norm((select(corrupted_out) - select(clean_out)).flatten(1), dim=1)
    if bool((gap <= 1e-12 * torch.linalg.vector_norm(select(clean_out).flatten(1), dim=1).clamp_min(1e-30)).any()):
        raise ValueError("some clean/corrupted pairs give identical predictions, so recovery is undefined for them; drop those pairs")

    def metric(output: Tensor) -> Tensor:
        return recovery(select(output), select(clean_out), select(corrupted_out))

    with torch.no_grad(), _quiet_tqdm(progress):
        return tl_patching.generic_activation_patch(
            model,
            corrupted_inputs,
            clean_cache,
            metric,
            _setter(per_position, per_head),
            site,
            index_df=index_df,
            reduce="none",
            baseline=True,
        )


def patching_grid(result: PatchingResult, statistic: str = "mean") -> tuple[Tensor, list[str]]:
    """Reshape a sweep's per-cell ``mean`` (or ``stderr``) into a dense grid over its index columns.

    Returns ``(grid, column_names)``; e.g. ``[layer, pos]`` or ``[layer, head]``. Cells not swept are NaN.
    """
    check_choice("statistic", statistic, ("mean", "stderr"))
    values = result.mean() if statistic == "mean" else result.stderr()
    columns = list(result.index_df.columns)
    levels = [sorted(result.index_df[c].unique().tolist()) for c in columns]
    grid = torch.full([len(lv) for lv in levels], float("nan"), dtype=values.dtype)
    for cell, (_, row) in enumerate(result.index_df.iterrows()):
        grid[tuple(levels[i].index(int(row[c])) for i, c in enumerate(columns))] = values[cell].cpu()
    return grid, columns


__all__ = ["HEAD_SITES", "SITES", "PatchingResult", "patching_grid", "patching_pairs", "patching_sweep", "recovery"]
