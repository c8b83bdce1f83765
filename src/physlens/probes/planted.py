"""Calibration of probes, patching, attribution, steering and ablation on organisms with a planted answer.

Each analysis runs unchanged on :class:`~physlens.models.planted.PlantedOrganism` (ω0 at a known head
and direction) and on its null twin (no ω0 anywhere); the answer it should give follows from the
construction, and :func:`calibration_rows` sets what each one found beside it, over a few seeds.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from transformer_lens.patching import PatchingResult

from physlens._validation import check_choice, check_nonnegative_int, check_positive_int
from physlens.models.planted import PlantedConfig, PlantedOrganism
from physlens.models.transformer import OscillatorTransformer, TransformerConfig
from physlens.probes.ablation import Component, ablation_sweep, model_components
from physlens.probes.attribution import attribution_patching_sweep, patching_agreement
from physlens.probes.linear_probe import ProbeResult, probe_sweep
from physlens.probes.patching import group_patching, patching_sweep
from physlens.probes.steering import ProbeDirection, SteeringResult, fit_probe_direction, steering_sweep
from physlens.systems.oscillator import OscillatorSystem
from physlens.systems.params import Uniform

ORGANISMS = ("planted", "latest-window", "null")
"""Organisms :func:`calibration_rows` runs on: ω0 planted in layer 0 head 0 from the first three
states (with a distractor head in layer 1 that writes the same estimate where nothing reads it); the
same with the estimate taken from the three latest states; and the null organism."""

ANALYSES = ("probes", "activation patching", "attribution patching", "group patching", "steering", "steering (distractor site)", "mean ablation")
"""Analyses :func:`calibration_rows` calibrates, each on every organism."""

CLAIM_R2 = 0.5
"""A probe claims a site when its held-out R² exceeds this …"""
CLAIM_SELECTIVITY = 0.2
"""… and exceeds both controls (random-init model, shuffled labels) by at least this much."""
CLAIM_RECOVERY = 0.5
"""A patching cell is claimed when its mean recovery is at least this large in magnitude."""
HARM_FACTOR = 2.0
"""An ablated component matters when the loss exceeds this multiple of the unablated loss …"""
HARM_FLOOR = 1e-10
"""… plus this floor (the organisms are exact, so their unablated loss is round-off)."""
PATCHING_SITES = ("resid_pre", "attn_out", "mlp_out", "z")
"""Sites the patching calibration sweeps: per layer × position, and per head (``z``, all positions at once)."""


def omega0_system(dtype: str = "float64") -> OscillatorSystem:
    """The variable-ω0 system of the study: ω0 ~ U[1, 4] per trajectory, γ = 0.1, Δt = 0.1."""
    return OscillatorSystem(omega0=Uniform(1.0, 4.0), gamma=0.1, dt=0.1, dtype=dtype)


def make_organism(name: str, *, n_ctx: int = 16, seed: int = 0, dtype: str = "float64") -> PlantedOrganism:
    """One of :data:`ORGANISMS`, with its frame drawn from ``seed``."""
    check_choice("name", name, ORGANISMS)
    if name == "null":
        return PlantedOrganism(PlantedConfig(n_ctx=n_ctx, channel="none", seed=seed, dtype=dtype))
    source = 0 if name == "planted" else None
    return PlantedOrganism(PlantedConfig(n_ctx=n_ctx, source_start=source, distractor_layer=1, distractor_head=1, seed=seed, dtype=dtype))


def random_transformer_control(model: PlantedOrganism, seed: int = 12345) -> OscillatorTransformer:
    """A randomly initialised :class:`OscillatorTransformer` with the organism's widths, as a probe's
    random-init control (a re-seeded organism is no control: it carries ω0 along another direction)."""
    cfg = model.cfg
    return OscillatorTransformer(TransformerConfig(
        d_model=cfg.d_model, n_layers=cfg.n_layers, n_heads=cfg.n_heads, d_head=cfg.d_head, n_ctx=cfg.n_ctx, attn_only=False,
        d_mlp=cfg.d_mlp, seed=check_nonnegative_int("seed", seed), dtype=cfg.dtype, device=cfg.device,
    ))


def residual_hooks(model: PlantedOrganism) -> list[str]:
    """Every hook of ``model`` shaped like the residual stream: the embedding, then per layer
    resid_pre, attn_out, resid_mid, mlp_out and resid_post."""
    stages = ("resid_pre", "attn_out", "resid_mid", "mlp_out", "resid_post")
    return ["hook_embed"] + [f"blocks.{layer}.hook_{stage}" for layer in range(model.cfg.n_layers) for stage in stages]


def _writes(model: PlantedOrganism) -> list[int]:
    """Layers whose attention writes an ω0 estimate into the residual stream (planted head, distractor)."""
    cfg = model.cfg
    layers = [cfg.planted_layer] if cfg.channel == "planted" else []
    return layers + ([cfg.distractor_layer] if cfg.distractor_layer is not None else [])


def expected_probe_sites(model: PlantedOrganism, hooks: Sequence[str], positions: Sequence[int]) -> set[tuple[str, int]]:
    """The (hook, position) sites where ω0 is linearly readable by construction: residual hooks at or
    after a layer whose attention writes an estimate (the planted head or the distractor), at positions
    where the estimate is written. Nothing else carries ω0 linearly: the states are odd under s → −s,
    and so is the stepper's output K(ω̂)·s."""
    writes = _writes(model)
    expected = set()
    written = set(model.channel_positions(max(positions) + 1)) if positions else set()
    for hook in hooks:
        parts = hook.split(".")
        if parts[0] != "blocks" or len(parts) != 3:
            continue  # hook_embed: the states only
        layer, stage = int(parts[1]), parts[2].removeprefix("hook_")
        carries = {
            "resid_pre": any(w < layer for w in writes),
            "attn_out": layer in writes,
            "resid_mid": any(w <= layer for w in writes),
            "resid_post": any(w <= layer for w in writes),
        }.get(stage, False)
        if carries:
            expected |= {(hook, p) for p in positions if p in written}
    return expected


def claimed_probe_sites(result: ProbeResult, target: str = "omega0") -> set[tuple[str, int]]:
    """The sites a probe sweep claims carry ``target``: held-out R² above :data:`CLAIM_R2` and above
    every control it ran by :data:`CLAIM_SELECTIVITY`."""
    t = result.target_index(target)
    r2 = result.r2[..., t]
    keep = r2 > CLAIM_R2
    for control in (result.control_r2, result.shuffled_r2):
        if control is not None:
            keep &= r2 - control[..., t] > CLAIM_SELECTIVITY
    return {(result.hooks[h], result.positions[p]) for h, p in zip(*np.nonzero(keep))}


def expected_patching_cells(model: PlantedOrganism, site: str, n_pos: int) -> tuple[set[tuple[int, int]], set[tuple[int, int]]]:
    """``(required, allowed)`` cells of a patching sweep of ``site`` with pairs that share their final
    state, scored on the last position's prediction.

    Required: the cells that carry the whole difference (the planted write and everything after it
    on the way to the output at the last position) — patching one restores the clean prediction.
    Allowed: those plus the states the channel is estimated from (patching one of them moves the
    estimate, by any amount). A cell outside ``allowed`` is off the causal graph: its recovery is 0.
    Cells are ``(layer, pos)`` for resid_pre / attn_out / mlp_out and ``(layer, head)`` for z / result.
    """
    check_choice("site", site, ("resid_pre", "attn_out", "mlp_out", "z", "result"))
    cfg, last = model.cfg, check_positive_int("n_pos", n_pos) - 1
    if cfg.channel != "planted":
        return set(), set()
    layer = cfg.planted_layer
    if site in ("z", "result"):
        cells = {(layer, cfg.planted_head)}
        return cells, set(cells)
    if site == "attn_out":
        cells = {(layer, last)}
        return cells, set(cells)
    if site == "mlp_out":
        cells = {(cfg.n_layers - 1, last)}
        return cells, set(cells)
    required = {(later, last) for later in range(layer + 1, cfg.n_layers)}
    sources = model.source_positions(last) or []
    return required, required | {(early, p) for early in range(layer + 1) for p in sources}


def claimed_patching_cells(result: PatchingResult, threshold: float = CLAIM_RECOVERY) -> set[tuple[int, ...]]:
    """Cells of a per-example sweep whose mean recovery is at least ``threshold`` in magnitude."""
    means = result.mean().reshape(len(result.index_df)).detach().cpu()
    rows = result.index_df.to_numpy()
    return {tuple(int(v) for v in rows[i]) for i in range(len(rows)) if abs(float(means[i])) >= threshold}


def expected_ablation_components(model: PlantedOrganism) -> set[Component]:
    """Components whose ablation destroys accuracy by construction: the planted head and its layer's
    attention (when the channel is planted), and the stepper (the last MLP, which writes the output)."""
    cfg = model.cfg
    out = {Component("mlp", cfg.n_layers - 1)}
    if cfg.channel == "planted":
        out |= {Component("head", cfg.planted_layer, cfg.planted_head), Component("attn", cfg.planted_layer)}
    return out


def expected_steering_slope(model: PlantedOrganism, direction: ProbeDirection) -> float | None:
    """The slope dω0/dα that :func:`~physlens.probes.steering.steering_sweep` must find along
    ``direction``, from the construction; None where the construction gives no closed form.

    The stepper reads ω̂ = ω̄ + c/gain off the channel direction e, so a push u·α at a residual hook
    before the last MLP moves the ω0 of every rollout step by α·(u·e)/gain — when the estimate itself
    comes from fixed context positions (``source_start``) that the rollout window still holds. When it
    comes from the three latest states, the model re-estimates ω0 from its own steered rollout and the
    push compounds: no closed form (None). The formula holds for a push without components along the
    state and output directions, which also move the rollout (a probe fitted where ω0 is readable
    has next to none; one fitted where it is not, as on the null organism, may be nothing else).
    """
    cfg = model.cfg
    parts = direction.hook.split(".")
    stage = parts[-1].removeprefix("hook_")
    residual = direction.hook == "hook_embed" or (len(parts) == 3 and stage in ("resid_pre", "attn_out", "resid_mid", "mlp_out", "resid_post"))
    if not residual:
        return None
    if len(parts) == 3:
        layer = int(parts[1])
        after_stepper = layer == cfg.n_layers - 1 and stage in ("mlp_out", "resid_post")
        if after_stepper:
            return None
    if cfg.source_start is None and cfg.channel == "planted":
        return None
    push = direction.unit_push.to(model.channel_direction)
    return float(push.reshape(-1) @ model.channel_direction) / cfg.channel_gain


def _rates(found: set, required: set, allowed: set, universe: set) -> dict[str, Any]:
    off_graph = universe - allowed
    return {
        "power": len(found & required) / len(required) if required else math.nan,
        "false_positive_rate": len(found - allowed) / len(off_graph) if off_graph else math.nan,
        "correct": required <= found and found <= allowed,
    }


def _mean(values: list[float]) -> float:
    finite = [v for v in values if not (isinstance(v, float) and math.isnan(v))]
    return float(np.mean(finite)) if finite else math.nan


def _summary(analysis: str, organism: str, expected: str, per_seed: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "analysis": analysis,
        "organism": organism,
        "expected": expected,
        "found": "; ".join(f"seed {s['seed']}: {s['found']}" for s in per_seed),
        "correct": all(s["correct"] for s in per_seed),
        "power": _mean([s.get("power", math.nan) for s in per_seed]),
        "false_positive_rate": _mean([s.get("false_positive_rate", math.nan) for s in per_seed]),
        "n_seeds": len(per_seed),
        "per_seed": per_seed,
    }


def _short(cells: set) -> str:
    return "{" + ", ".join(str(c) for c in sorted(cells)) + "}" if cells else "nothing"


def _probe_seed(model: PlantedOrganism, system: OscillatorSystem, seed: int, n_trajectories: int) -> dict[str, Any]:
    n_ctx = model.cfg.n_ctx
    hooks = residual_hooks(model)
    positions = sorted({0, 1, 2, n_ctx // 2, n_ctx - 1})
    data = system.sample(n_trajectories, n_ctx, seed=seed)
    result = probe_sweep(model, data, hooks, targets=["omega0"], positions=positions,
                         control_model=random_transformer_control(model, seed=10_000 + seed), seed=seed)
    found = claimed_probe_sites(result)
    expected = expected_probe_sites(model, hooks, positions)
    universe = {(h, p) for h in hooks for p in positions}
    best = float(np.max(result.r2))
    return {"seed": seed, "found": f"{len(found)} sites (best R² {best:.3f}, expected {len(expected)})", "best_r2": best,
            "max_control_r2": float(np.max(result.control_r2)), "max_shuffled_r2": float(np.max(result.shuffled_r2)),
            **_rates(found, expected, expected, universe)}


def _patching_seed(model: PlantedOrganism, system: OscillatorSystem, seed: int, n_pairs: int, attribution: bool) -> dict[str, Any]:
    n_ctx = model.cfg.n_ctx
    clean, corrupted = system.sample_swap_pairs(n_pairs, n_ctx, seed=seed)
    found_all, required_all, allowed_all, universe, agreement = set(), set(), set(), set(), []
    channel_recovery = math.nan
    for site in PATCHING_SITES:
        per_position = site != "z"
        try:
            exact = patching_sweep(model, clean.states, corrupted.states, site=site, per_position=per_position)
        except ValueError as error:  # clean and corrupted predictions coincide: nothing to recover
            if "identical predictions" not in str(error):
                raise
            required, allowed = expected_patching_cells(model, site, n_ctx)
            ok = not required
            return {"seed": seed, "found": "refused: the clean and corrupted predictions coincide", "correct": ok,
                    "power": math.nan if ok else 0.0, "false_positive_rate": 0.0}
        result = exact
        if attribution:
            result = attribution_patching_sweep(model, clean.states, corrupted.states, site=site, per_position=per_position)
            agreement.append(patching_agreement(exact, result, seed=seed).pearson if len(exact.index_df) >= 3 else math.nan)
        required, allowed = expected_patching_cells(model, site, n_ctx)
        cells = {(site, *c) for c in claimed_patching_cells(result)}
        found_all |= cells
        required_all |= {(site, *c) for c in required}
        allowed_all |= {(site, *c) for c in allowed}
        universe |= {(site, *(int(v) for v in row)) for row in result.index_df.to_numpy()}
        if site == "z":
            channel = result.mean().reshape(len(result.index_df))
            planted = [i for i, row in enumerate(result.index_df.to_numpy()) if (site, *row) in required_all]
            channel_recovery = float(channel[planted[0]]) if planted else math.nan
    out = {"seed": seed, "found": _short(found_all),
           "planted_head_recovery": channel_recovery, **_rates(found_all, required_all, allowed_all, universe)}
    if attribution:
        out["pearson_with_exact"] = agreement
    return out


def _group_seed(model: PlantedOrganism, system: OscillatorSystem, seed: int, n_pairs: int) -> dict[str, Any]:
    n_ctx = model.cfg.n_ctx
    last = n_ctx - 1
    clean, corrupted = system.sample_swap_pairs(n_pairs, n_ctx, seed=seed)
    try:
        groups = group_patching(model, clean.states, corrupted.states, {"context": list(range(last)), "last": [last]}, site="resid_pre")
    except ValueError as error:
        if "identical predictions" not in str(error):
            raise
        return {"seed": seed, "found": "refused: the clean and corrupted predictions coincide", "correct": model.cfg.channel != "planted"}
    context, final = groups.mean("context").numpy(), groups.mean("last").numpy()
    written = model.cfg.planted_layer  # the channel enters the last position in this layer's attention
    expected_context = np.array([1.0 if layer <= written else 0.0 for layer in groups.layers])
    correct = model.cfg.channel == "planted" and np.allclose(context, expected_context, atol=1e-6) and np.allclose(final, 1 - expected_context, atol=1e-6)
    return {"seed": seed, "found": f"context {np.round(context, 3).tolist()}, last position {np.round(final, 3).tolist()} by layer",
            "context_recovery": context.tolist(), "last_recovery": final.tolist(), "correct": bool(correct)}


def steering_claim(result: SteeringResult) -> str:
    """What a steering result claims, read as the oscillator study reads it: ``"reads"`` (the model
    reads the direction as ω0: the slope's interval lies above 0.5), ``"partial"`` (the slope is
    positive and above the random direction's interval) or ``"none"``."""
    slope, control = result.slope, result.control_slope
    if slope.low > 0.5:
        return "reads"
    if slope.low > 0 and slope.low > control.high:
        return "partial"
    return "none"


def _steering_seed(model: PlantedOrganism, system: OscillatorSystem, seed: int, n_trajectories: int, distractor_site: bool) -> dict[str, Any]:
    cfg = model.cfg
    n_ctx = cfg.n_ctx
    if distractor_site:
        if cfg.distractor_layer is None or cfg.distractor_layer == cfg.planted_layer:
            return {"seed": seed, "found": "no distractor-only site in this organism", "correct": True, "skipped": True}
        hook = f"blocks.{cfg.distractor_layer}.hook_attn_out"
    else:
        hook = f"blocks.{cfg.planted_layer}.hook_resid_mid"
    uses_channel = cfg.channel == "planted" and not distractor_site
    train = system.sample(n_trajectories, n_ctx, seed=seed)
    contexts = system.sample(32, n_ctx, seed=seed + 1)
    direction = fit_probe_direction(model, train, hook, n_ctx - 1, "omega0", seq_len=n_ctx, seed=seed)
    expected = expected_steering_slope(model, direction)
    try:
        result = steering_sweep(model, direction, contexts, [-0.5, -0.25, 0.0, 0.25, 0.5], n_steps=10, seed=seed)
    except ValueError as error:  # no readable frequency: the analysis claims nothing
        return {"seed": seed, "found": f"refused ({error})", "probe_r2": direction.cv_r2, "expected_slope": expected,
                "claim": "refused", "correct": not uses_channel}
    slope, claim = result.slope, steering_claim(result)
    if not uses_channel:
        # Nothing downstream reads the probed direction. Where the probe's direction carries ω0 (the
        # distractor) the slope must also vanish; on the null organism the probe has no signal and its
        # push only moves the current state, so only the claim is judged.
        correct = claim == "none" and (not distractor_site or abs(slope.estimate) <= 1e-3)
    elif expected is None:  # re-estimated from its own steered rollout: the push compounds beyond α
        correct = claim == "reads" and slope.low > 1.0
    else:
        correct = claim == "reads" and abs(slope.estimate - expected) <= 1e-3 * max(1.0, abs(expected))
    return {"seed": seed, "found": f"{claim}: slope {slope.format()} (random direction {result.control_slope.format()})",
            "claim": claim, "probe_r2": direction.cv_r2, "slope": slope.estimate, "slope_interval": [slope.low, slope.high],
            "slope_excludes_zero": not (slope.low <= 0 <= slope.high),
            "control_slope": result.control_slope.estimate, "control_interval": [result.control_slope.low, result.control_slope.high],
            "control_excludes_zero": not (result.control_slope.low <= 0 <= result.control_slope.high),
            "valid_fraction": result.valid_fraction, "expected_slope": expected, "correct": bool(correct)}


def _ablation_seed(model: PlantedOrganism, system: OscillatorSystem, seed: int, n_trajectories: int) -> dict[str, Any]:
    inputs, targets = system.sample(n_trajectories, model.cfg.n_ctx + 1, seed=seed).inputs_targets()
    result = ablation_sweep(model, inputs, targets, method="mean", seed=seed)
    components = model_components(model)
    losses = {}
    for c in components:
        losses[c] = float(result.head_loss[c.layer, c.head] if c.kind == "head" else (result.attn_loss if c.kind == "attn" else result.mlp_loss)[c.layer])
    found = {c for c, loss in losses.items() if loss > HARM_FACTOR * result.baseline_loss + HARM_FLOOR}
    expected = expected_ablation_components(model)
    names = {c: (f"L{c.layer}H{c.head}" if c.kind == "head" else f"L{c.layer} {c.kind}") for c in components}
    return {"seed": seed, "found": ", ".join(sorted(names[c] for c in found)) or "nothing", "baseline_loss": result.baseline_loss,
            "losses": {names[c]: v for c, v in losses.items()}, **_rates(found, expected, expected, set(components))}


EXPECTED = {
    ("probes", "planted"): "ω0 (R² ≈ 1) at every residual hook at or after layer 0's attention, from position 2 on; nothing elsewhere",
    ("probes", "latest-window"): "ω0 (R² ≈ 1) at every residual hook at or after layer 0's attention, from position 2 on; nothing elsewhere",
    ("probes", "null"): "nothing",
    ("activation patching", "planted"): "L0H0 (z), L0 attn_out and L1 resid_pre at the last position, the stepper; beside them only the three source states",
    ("activation patching", "latest-window"): "L0H0 (z), L0 attn_out and L1 resid_pre at the last position, the stepper; beside them only the three source states",
    ("activation patching", "null"): "nothing (the predictions of a pair coincide)",
    ("group patching", "planted"): "resid_pre: the context carries all at layer 0, the last position all from layer 1 on",
    ("group patching", "latest-window"): "resid_pre: the context carries all at layer 0, the last position all from layer 1 on",
    ("group patching", "null"): "nothing (the predictions of a pair coincide)",
    ("steering", "planted"): "slope (u·e)/gain ≈ 1: the stepper reads the channel",
    ("steering", "latest-window"): "slope > 1: the organism reads the channel but re-estimates ω0 from its own steered rollout, so the push compounds",
    ("steering", "null"): "no claim (or refused): nothing reads a direction carrying ω0",
    ("steering (distractor site)", "planted"): "slope 0: the distractor's direction is written, never read",
    ("steering (distractor site)", "latest-window"): "slope 0: the distractor's direction is written, never read",
    ("steering (distractor site)", "null"): "not applicable (no distractor)",
    ("mean ablation", "planted"): "L0H0, L0 attention and the stepper (L1 MLP) destroy accuracy; nothing else changes it",
    ("mean ablation", "latest-window"): "L0H0, L0 attention and the stepper (L1 MLP) destroy accuracy; nothing else changes it",
    ("mean ablation", "null"): "only the stepper (L1 MLP) matters",
}
EXPECTED.update({("attribution patching", organism): EXPECTED[("activation patching", organism)] for organism in ORGANISMS})


def calibration_rows(
    *,
    organisms: Sequence[str] = ORGANISMS,
    analyses: Sequence[str] = ANALYSES,
    seeds: Sequence[int] = (0, 1, 2),
    n_ctx: int = 16,
    n_trajectories: int = 128,
    n_pairs: int = 32,
) -> list[dict[str, Any]]:
    """Run every analysis on every organism for every seed (the seed draws the organism's frame and
    the data) and return one plain dict per analysis × organism.

    Each row holds ``analysis``, ``organism``, ``expected`` (from the construction), ``found`` (per
    seed), ``correct`` (on every seed), ``power`` (share of the cells, sites or components that carry
    the answer which the analysis claims; NaN where nothing is to be found), ``false_positive_rate``
    (share of those off the causal graph it claims; NaN where there are none), ``n_seeds`` and
    ``per_seed`` (the numbers behind each seed's verdict). Claims use :data:`CLAIM_R2`,
    :data:`CLAIM_SELECTIVITY`, :data:`CLAIM_RECOVERY`, :data:`HARM_FACTOR` and :data:`HARM_FLOOR`.
    """
    organisms, analyses = list(organisms), list(analyses)
    for name in organisms:
        check_choice("organisms", name, ORGANISMS)
    for name in analyses:
        check_choice("analyses", name, ANALYSES)
    seeds = [check_nonnegative_int("seeds", s) for s in seeds]
    if not seeds or not organisms or not analyses:
        raise ValueError("seeds, organisms and analyses must each name at least one entry")
    n_ctx = check_positive_int("n_ctx", n_ctx)
    if n_ctx < 14:
        raise ValueError(f"n_ctx must be >= 14 so that 10 steered rollout steps keep the source states in the window, got {n_ctx}")
    system = omega0_system()
    rows = []
    for organism in organisms:
        for analysis in analyses:
            per_seed = []
            for seed in seeds:
                model = make_organism(organism, n_ctx=n_ctx, seed=seed)
                if analysis == "probes":
                    per_seed.append(_probe_seed(model, system, seed, n_trajectories))
                elif analysis in ("activation patching", "attribution patching"):
                    per_seed.append(_patching_seed(model, system, seed, n_pairs, analysis == "attribution patching"))
                elif analysis == "group patching":
                    per_seed.append(_group_seed(model, system, seed, n_pairs))
                elif analysis.startswith("steering"):
                    per_seed.append(_steering_seed(model, system, seed, n_trajectories, analysis == "steering (distractor site)"))
                else:
                    per_seed.append(_ablation_seed(model, system, seed, n_trajectories))
            rows.append(_summary(analysis, organism, EXPECTED[(analysis, organism)], per_seed))
    return rows


def calibration_table(rows: Sequence[dict[str, Any]]) -> str:
    """A Markdown table of :func:`calibration_rows` (analysis, organism, expected, found, correct,
    power, false-positive rate, seeds), for the docs: every cell comes from the rows."""
    def number(value: Any) -> str:
        return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.2f}"

    def cell(text: Any) -> str:
        return str(text).replace("|", "\\|").replace("\n", " ")

    lines = ["| analysis | organism | expected | found | correct | power | false-positive rate | seeds |",
             "|---|---|---|---|---|---|---|---|"]
    for row in rows:
        missing = {"analysis", "organism", "expected", "found", "correct", "power", "false_positive_rate", "n_seeds"} - set(row)
        if missing:
            raise ValueError(f"rows must be calibration_rows output; a row lacks {sorted(missing)}")
        lines.append("| " + " | ".join([cell(row["analysis"]), cell(row["organism"]), cell(row["expected"]), cell(row["found"]),
                                        "yes" if row["correct"] else "**no**", number(row["power"]),
                                        number(row["false_positive_rate"]), str(row["n_seeds"])]) + " |")
    return "\n".join(lines) + "\n"


__all__ = [
    "ANALYSES",
    "CLAIM_R2",
    "CLAIM_RECOVERY",
    "CLAIM_SELECTIVITY",
    "HARM_FACTOR",
    "HARM_FLOOR",
    "ORGANISMS",
    "PATCHING_SITES",
    "calibration_rows",
    "calibration_table",
    "claimed_patching_cells",
    "claimed_probe_sites",
    "expected_ablation_components",
    "expected_patching_cells",
    "expected_probe_sites",
    "expected_steering_slope",
    "make_organism",
    "omega0_system",
    "random_transformer_control",
    "residual_hooks",
    "steering_claim",
]
