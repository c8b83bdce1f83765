"""The ``[analyses.patching]`` section: activation patching between contexts that share their final state,
whole position groups first, then single cells, with attribution patching beside it."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from physlens.models.base import HookedModel
from physlens.plots.evidence import plot_group_patching
from physlens.plots.probes import plot_patching
from physlens.probes.attribution import attribution_patching_sweep, patching_agreement
from physlens.probes.patching import group_patching, patching_grid, patching_sweep
from physlens.studies.oscillator_analyses.common import AnalysisContext, _check_positive, _check_varies, _error
from physlens.studies.report import format_number
from physlens.systems.oscillator import OscillatorSystem


ATTRIBUTION_AGREEMENT = 0.9
"""Attribution patching may rank cells in place of exact patching only where the lower end of the
interval of its Pearson correlation with exact patching reaches this."""


def check(opts: dict[str, Any], model: HookedModel, system: OscillatorSystem, seq_len: int) -> None:
    """Check the ``[analyses.patching]`` options ``opts`` against ``model``, ``system`` and ``seq_len`` before any training."""
    _check_positive("patching", opts, ("n_pairs", "position_stride"))
    _check_varies("patching", system, opts["vary"], opts["min_change"])
    bad = [s for s in opts["sites"] if f"blocks.0.hook_{s}" not in model.hook_dict]
    if bad:
        raise _error("patching", "sites", f"{bad} do not exist in this model")
    if opts["head_site"] and f"blocks.0.attn.hook_{opts['head_site']}" not in model.hook_dict:
        raise _error("patching", "head_site", f"{opts['head_site']!r} does not exist in this model (use 'z' or 'result')")


def run(ctx: AnalysisContext, opts: dict[str, Any]) -> None:
    """Patch position groups and single cells from clean into corrupted runs and add the section."""
    model, report = ctx.model, ctx.report
    # A model that measures states in units of its first state's size must see the same final state in
    # both runs: the pairs then share the first state's size as well.
    scaled = model.cfg.scale_by_first_state
    clean, corrupted = ctx.system.sample_swap_pairs(opts["n_pairs"], ctx.seq_len, seed=ctx.stream("patching pairs"),
                                                    vary=opts["vary"], min_change=opts["min_change"], match_first_norm=scaled)
    clean, corrupted = clean.to(dtype=ctx.dtype), corrupted.to(dtype=ctx.dtype)
    stride = opts["position_stride"]
    positions = list(range(ctx.seq_len - 1, -1, -stride))[::-1]
    report.heading("Activation patching", level=3)
    report.paragraph(
        f"{len(clean.states)} clean/corrupted pairs **share their final state** and differ in {opts['vary']} (by ≥ "
        f"{format_number(opts['min_change'])}), so the prediction can change only through what the model inferred from the "
        "earlier states: patching shows where that information flows, not where the current state is copied."
        + (" The model measures states in units of its first state's size, so the pairs also share that size." if scaled else "")
        + " Metric: recovery 1 − ‖y_patched − y_clean‖/‖y_corrupted − y_clean‖ of the last-position prediction (1 = clean restored)."
    )
    last = ctx.seq_len - 1
    with torch.no_grad():
        gap = torch.linalg.vector_norm(model(clean.states)[:, -1] - model(corrupted.states)[:, -1], dim=-1)
        size = torch.linalg.vector_norm(model(clean.states)[:, -1], dim=-1).clamp_min(1e-30)
    blind = int((gap <= 1e-12 * size).sum())
    if blind:
        # Recovery is undefined for such pairs; a model that ignores the context gives nothing else.
        share = "every pair" if blind == len(gap) else f"{blind} of {len(gap)} pairs"
        report.paragraph(f"Patching skipped: for {share} the model's last prediction is the same in both runs, so there is "
                         "no difference for a patch to recover.")
        ctx.findings.append(f"Patching: for {share} the clean and corrupted contexts give the same last prediction, so the "
                            f"prediction does not depend on what differs ({opts['vary']}) there: nothing to localise.")
        ctx.metrics["patching"] = {"skipped": "identical predictions", "n_identical_pairs": blind, "n_pairs": len(gap)}
        return
    groups = group_patching(model, clean.states, corrupted.states,
                            {"every position but the last": list(range(last)), "the last position only": [last]}, site="resid_pre")
    rows = [[layer] + [f"{format_number(float(groups.mean(g)[i]))} ± {format_number(float(groups.stderr(g)[i]))}" for g in groups.groups]
            for i, layer in enumerate(groups.layers)]
    report.paragraph("First, whole groups of positions at once: the residual stream entering each layer, patched at every "
                     "position but the last (the context that differs) or at the last position only (the shared final state, "
                     "plus whatever earlier layers gathered there).")
    report.table(["layer (resid_pre)"] + [f"recovery, {g}" for g in groups.groups], rows)
    report.figure("patching_groups", plot_group_patching(groups), "Recovery per layer when the context, or the last position, is patched whole.")
    out, agreement_rows, agreement_lows, largest = {"groups": groups.to_dict()}, [], [], 0.0
    sites = list(opts["sites"]) + ([opts["head_site"]] if opts["head_site"] else [])
    for site in sites:
        per_position = site not in ("z", "result")
        try:
            result = patching_sweep(model, clean.states, corrupted.states, site=site, positions=positions, per_position=per_position,
                                    progress=ctx.progress)
        except ValueError as error:
            report.paragraph(f"Patching {site} skipped: {error}.")
            ctx.findings.append(f"Patching {site} was skipped: {error}.")
            continue
        grid, columns = patching_grid(result)
        stderr, _ = patching_grid(result, "stderr")
        estimate = attribution_patching_sweep(model, clean.states, corrupted.states, site=site, positions=positions,
                                              per_position=per_position)
        agreement = patching_agreement(result, estimate, seed=ctx.stream(f"patching {site} agreement")) if len(result.index_df) >= 3 else None
        out[site] = {"columns": columns, "mean": grid.tolist(), "stderr": stderr.tolist(),
                     "index": result.index_df.values.tolist(),
                     "p_value": result.permutation_pvalue(n_permutations=500, seed=ctx.stream(f"patching {site} permutations")).tolist(),
                     "attribution_agreement": agreement.to_dict() if agreement is not None else None}
        if agreement is not None:
            agreement_lows.append((site, float(agreement.pearson_interval[0])))
            agreement_rows.append([site, agreement.n_cells, f"{format_number(agreement.pearson)} [{format_number(agreement.pearson_interval[0])}, "
                                   f"{format_number(agreement.pearson_interval[1])}]", agreement.spearman, agreement.max_abs_error])
        report.figure(f"patching_{site}", plot_patching(result, title=f"patching {site} ({opts['vary']} corrupted, final state shared)"),
                      f"Mean recovery when patching {site} from the clean run one cell at a time (positions every {stride} steps), "
                      f"per {' × '.join(columns)}.")
        flat = torch.nan_to_num(grid, nan=-np.inf)
        cell = np.unravel_index(int(torch.argmax(flat)), tuple(grid.shape))
        where = ", ".join(f"{c} {result.index_df[c].sort_values().unique()[i]}" for c, i in zip(columns, cell))
        ctx.findings.append(f"Patching {site}: the best single cell ({where}) recovers {format_number(float(grid[cell]))} ± "
                            f"{format_number(float(stderr[cell]))} of the clean prediction.")
        largest = max(largest, float(grid.abs().nan_to_num(0).max()))
    context, final = (groups.mean(g) for g in groups.groups)
    ctx.findings.append(
        "Patching whole groups of positions: at layer 0 the context (every position but the last) carries a recovery of "
        f"{format_number(float(context[0]))}; by the last layer the last position alone carries "
        f"{format_number(float(final[-1]))} — " + ("the difference moves from the context into the last position across the layers."
                                                   if float(final[-1]) > float(final[0]) + 0.2 else "it does not gather in the last position.")
    )
    if agreement_rows:
        note = (" Single cells recover little here (at most {}), so these correlations compare mostly noise."
                .format(format_number(largest)) if largest < 0.1 else "")
        report.paragraph("Attribution patching (the gradient estimate, one backward pass for every cell) against the exact "
                         "patching above, on the same pairs: correlation of the per-cell mean recoveries, 95 % interval from "
                         "resampling pairs." + note)
        report.table(["site", "cells", "Pearson [95 % CI]", "Spearman", "largest error of a cell mean"], agreement_rows)
        poor = [site for site, low in agreement_lows if low < ATTRIBUTION_AGREEMENT]
        if poor:
            ctx.findings.append(
                f"Attribution patching agrees poorly with exact patching at {', '.join(poor)} (the lower end of the Pearson interval "
                f"is below {ATTRIBUTION_AGREEMENT:g}): here it cannot stand in for exact patching to rank cells, whatever it is "
                "recommended for elsewhere."
            )
    ctx.metrics["patching"] = out
