"""The ω0 a single predicted step implies: the frequency whose exact step from the same state lands
nearest the prediction, and patching scored by how far it moves toward the clean run's.

A prediction ŷ from the state s is read as ``argmin_ω ‖K(ω, γ) s − ŷ‖`` with γ known (the system's
damping): for an exact model it is the trajectory's ω0, and for a model that infers ω0 from the
context and steps with it, it is the ω0 the model inferred. Patching a site from a clean context
into a corrupted one (the same final state s, a different ω0) and reading the implied ω0 of the
last prediction says how much of the inferred ω0 that site carries.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from physlens._validation import check_finite, check_positive_float, check_positive_int
from physlens.stats import Interval, paired_interval

OMEGA_MAX = 10.0
"""The highest frequency searched by default (the variable-ω0 studies draw ω0 from [1, 4]); the lowest
is just above the largest γ, where the oscillator stops being underdamped."""


def implied_omega0_from_step(
    states: Float[Tensor, "batch 2"],
    predictions: Float[Tensor, "batch 2"],
    *,
    gamma: float | Float[Tensor, " batch"],
    dt: float,
    omega_range: tuple[float, float] | None = None,
    grid: int = 2001,
    refinements: int = 4,
) -> Float[Tensor, " batch"]:
    """Per row, the ω0 in ``omega_range`` whose exact step from ``states`` lands nearest ``predictions``.

    A grid search of ``grid`` points, then ``refinements`` rounds of a finer grid around the best
    point (each 1000× finer), in float64. ``gamma`` is the known damping rate (a number or one per row);
    ``omega_range`` defaults to (just above the largest γ, :data:`OMEGA_MAX`).
    """
    states = torch.as_tensor(states).to(torch.float64)
    predictions = torch.as_tensor(predictions).to(torch.float64)
    if states.ndim != 2 or states.shape[-1] != 2 or predictions.shape != states.shape:
        raise ValueError(f"states and predictions must both be [batch, 2], got {list(states.shape)} and {list(predictions.shape)}")
    check_finite("states", states)
    check_finite("predictions", predictions)
    dt = check_positive_float("dt", dt)
    grid = check_positive_int("grid", grid)
    gamma_t = torch.as_tensor(gamma, dtype=torch.float64).expand(states.shape[0]).cpu()
    if omega_range is None:
        omega_range = (float(gamma_t.max()) * (1 + 1e-6) + 1e-9, OMEGA_MAX)
    low, high = (float(v) for v in omega_range)
    if not 0 < low < high or bool((gamma_t >= low).any()):
        raise ValueError(f"omega_range must satisfy gamma < low < high (underdamped throughout), got {omega_range!r} with gamma up to {float(gamma_t.max()):g}")
    states, predictions = states.cpu(), predictions.cpu()
    lows, highs = torch.full_like(gamma_t, low), torch.full_like(gamma_t, high)
    best = lows
    # The exact step of every candidate, as propagator() computes it, but without the 2×2 matrices: only the
    # landing point is needed, and e^{−γΔt} and γ² are the same for every candidate of a row.
    gamma_c, decay = gamma_t[:, None], torch.exp(-gamma_t * dt)[:, None, None]  # [batch, 1], [batch, 1, 1]
    x, p = states[:, None, 0], states[:, None, 1]  # [batch, 1]
    for _ in range(refinements + 1):
        candidates = lows[:, None] + (highs - lows)[:, None] * torch.linspace(0, 1, grid, dtype=torch.float64)  # [batch, grid]
        omega = torch.sqrt(candidates**2 - gamma_c**2)
        cos, sin = torch.cos(omega * dt), torch.sin(omega * dt)
        rows = decay * torch.stack([cos + gamma_c / omega * sin, sin / omega, -(candidates**2) / omega * sin,
                                    cos - gamma_c / omega * sin], dim=-1)  # [batch, grid, K00 K01 K10 K11]
        landed = torch.stack([rows[..., 0] * x + rows[..., 1] * p, rows[..., 2] * x + rows[..., 3] * p], dim=-1)
        miss = (landed - predictions[:, None]).square().sum(-1)
        best = candidates.gather(1, miss.argmin(dim=1, keepdim=True))[:, 0]
        step = (highs - lows) / (grid - 1)
        lows, highs = (best - step).clamp_min(low), (best + step).clamp_max(high)
    return best


def implied_omega0_metric(
    model: Callable[[Tensor], Tensor],
    clean_inputs: Float[Tensor, "batch pos 2"],
    corrupted_inputs: Float[Tensor, "batch pos 2"],
    *,
    gamma: float | Float[Tensor, " batch"],
    dt: float,
    min_gap: float = 1e-3,
    omega_range: tuple[float, float] | None = None,
) -> Callable[[Tensor], Tensor]:
    """A patching metric (``output ↦`` one value per pair): the recovery of the implied ω0 of the
    last prediction, ``(ω̂(patched) − ω̂(corrupted)) / (ω̂(clean) − ω̂(corrupted))``.

    Clean and corrupted contexts must end in the same state (as swap pairs do), so the implied ω0
    differs only through what the model inferred from the context. Pairs whose clean and corrupted
    implied ω0 differ by less than ``min_gap`` are refused: recovery is undefined there.
    """
    if clean_inputs.shape != corrupted_inputs.shape or clean_inputs.ndim != 3:
        raise ValueError(f"clean and corrupted inputs must be [batch, pos, 2] of one shape, got {list(clean_inputs.shape)} and {list(corrupted_inputs.shape)}")
    final = clean_inputs[:, -1]
    if not torch.allclose(final.double(), corrupted_inputs[:, -1].double(), rtol=1e-5, atol=1e-7):
        raise ValueError("clean and corrupted contexts must end in the same state (use OscillatorSystem.sample_swap_pairs)")

    def read(output: Tensor) -> Tensor:
        return implied_omega0_from_step(final.detach(), output[:, -1].detach(), gamma=gamma, dt=dt, omega_range=omega_range)

    with torch.no_grad():
        clean, corrupted = read(model(clean_inputs)), read(model(corrupted_inputs))
    gap = clean - corrupted
    if bool((gap.abs() < min_gap).any()):
        raise ValueError(f"{int((gap.abs() < min_gap).sum())} pairs have clean and corrupted implied ω0 within min_gap={min_gap:g}; "
                         "recovery is undefined for them: drop those pairs")

    def metric(output: Tensor) -> Tensor:
        return ((read(output) - corrupted) / gap).to(output.dtype).to(output.device)

    return metric


def implied_omega0_of_model(model: Any, inputs: Float[Tensor, "batch pos 2"], *, gamma: float | Tensor, dt: float) -> Tensor:
    """The implied ω0 of ``model``'s last prediction from each context of ``inputs``."""
    with torch.no_grad():
        output = model(inputs)
    return implied_omega0_from_step(inputs[:, -1], output[:, -1], gamma=gamma, dt=dt)


CARRIER_SHARE = 0.8
"""A component "carries" the inferred ω0 when patching it alone restores at least this share of the
clean run's implied ω0 (mean recovery over pairs)."""


def _slope(shift: np.ndarray, gap: np.ndarray, axis: int = -1) -> np.ndarray | np.floating:
    """Least-squares slope through the origin of ``shift`` on ``gap``: Σ shift·gap / Σ gap²."""
    return (shift * gap).sum(axis=axis) / (gap * gap).sum(axis=axis)


@dataclass
class ImpliedPatching:
    """Implied-ω0 recovery when one component is patched from the clean run into the corrupted one.

    Per pair, ``patched[name]`` is the implied ω0 of the last prediction with ``name`` patched, beside
    ``clean`` and ``corrupted``. A component's recovery is the slope of ω̂_patched − ω̂_corrupted on
    ω̂_clean − ω̂_corrupted over pairs (through the origin: Σ shift·gap / Σ gap², stable where single
    pairs are noisy, and signed as the gap is), with a bootstrap interval over pairs. Names are ``"L{l} resid_pre @ last"`` (the residual stream entering layer l
    at the last position only), ``"L{l} attn_out"``, ``"L{l} mlp_out"`` (the whole layer's output at
    every position) and ``"L{l}H{h}"`` (one head's z at every position).
    """

    patched: dict[str, np.ndarray]  # component -> [pair] implied ω0 with that component patched
    clean: np.ndarray  # [pair]
    corrupted: np.ndarray  # [pair]
    kinds: dict[str, str]  # component -> "last position" | "layer output" | "head"
    seed: int = 0  # of the bootstrap

    @property
    def n_pairs(self) -> int:
        """Number of clean/corrupted pairs."""
        return int(self.clean.shape[0])

    def recovery(self, name: str) -> Interval:
        """Recovery of the implied ω0 with ``name`` patched, with a 95 % bootstrap interval over pairs."""
        return paired_interval(_slope, self.patched[name] - self.corrupted, self.clean - self.corrupted,
                               n_resamples=1000, seed=self.seed, vectorized=True)

    def carriers(self, share: float = CARRIER_SHARE, kinds: tuple[str, ...] = ("layer output", "head")) -> list[str]:
        """Components of ``kinds`` whose patch alone restores at least ``share`` of the implied ω0 (the
        lower end of the interval), best first. Components that write into the stream (layer outputs
        and heads) by default; the last position's residual stream says where ω0 has been gathered,
        not who computed it."""
        found = {n: self.recovery(n) for n in self.patched if self.kinds[n] in kinds}
        return sorted((n for n, r in found.items() if r.low >= share), key=lambda n: found[n].estimate, reverse=True)

    def gathered_from(self, share: float = CARRIER_SHARE) -> str | None:
        """The first layer whose input at the last position alone restores ``share`` of the implied
        ω0 (the lower end of the interval), or None: where the inferred ω0 has been gathered into the
        position that predicts."""
        for name in self.patched:
            if self.kinds[name] == "last position" and self.recovery(name).low >= share:
                return name
        return None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary."""
        return {"n_pairs": self.n_pairs, "recovery": {n: self.recovery(n).to_dict() for n in self.patched}, "kinds": self.kinds,
                "carriers": self.carriers(), "gathered_from": self.gathered_from(),
                "clean_minus_corrupted": float(np.mean(self.clean - self.corrupted))}


def implied_omega0_patching(
    model: Any, clean_inputs: Float[Tensor, "batch pos 2"], corrupted_inputs: Float[Tensor, "batch pos 2"], *,
    gamma: float | Tensor, dt: float, seed: int = 0, progress: bool = False,
) -> ImpliedPatching:
    """Patch every layer's input at the last position, every layer's attention and MLP output and
    every head's z (at every position) from the clean run into the corrupted one, and read the
    implied ω0 of the last prediction (:func:`implied_omega0_from_step`) each time.

    Clean and corrupted contexts must end in the same state (swap pairs), so the implied ω0 differs
    only through what the model inferred from the context. ``model`` needs TransformerLens-style
    hooks ``blocks.{l}.hook_resid_pre``, ``hook_attn_out``, ``hook_mlp_out`` (when it has MLPs) and
    ``attn.hook_z``, and a ``cfg`` with ``n_layers``.
    """
    from physlens.probes.patching import patching_sweep  # patching imports activations, which import probes here

    if clean_inputs.shape != corrupted_inputs.shape or clean_inputs.ndim != 3:
        raise ValueError(f"clean and corrupted inputs must be [batch, pos, 2] of one shape, got {list(clean_inputs.shape)} and {list(corrupted_inputs.shape)}")
    final = clean_inputs[:, -1]
    if not torch.allclose(final.double(), corrupted_inputs[:, -1].double(), rtol=1e-5, atol=1e-7):
        raise ValueError("clean and corrupted contexts must end in the same state (use OscillatorSystem.sample_swap_pairs)")

    def read(output: Tensor) -> Tensor:
        return implied_omega0_from_step(final.detach(), output[:, -1].detach(), gamma=gamma, dt=dt).to(output.dtype)

    with torch.no_grad():
        clean, corrupted = read(model(clean_inputs)), read(model(corrupted_inputs))
    if float((clean - corrupted).abs().max()) < 1e-6:
        raise ValueError("the model's implied ω0 is the same for every clean and corrupted context: its last prediction does not "
                         "depend on the ω0 of the context, so there is nothing to localise")
    last = clean_inputs.shape[1] - 1
    patched: dict[str, np.ndarray] = {}
    kinds: dict[str, str] = {}
    n_layers, hook_names = model.cfg.n_layers, set(model.hook_dict)

    def add(result: Any, names: list[str], kind: str) -> None:
        for name, row in zip(names, result.values):  # [cell, example] (reduce="none")
            patched[name], kinds[name] = row.detach().double().cpu().numpy(), kind

    result = patching_sweep(model, clean_inputs, corrupted_inputs, site="resid_pre", positions=[last], metric=read, progress=progress)
    add(result, [f"L{layer} resid_pre @ last" for layer in range(n_layers)], "last position")
    for site in ("attn_out", "mlp_out"):
        if all(f"blocks.{layer}.hook_{site}" in hook_names for layer in range(n_layers)):
            result = patching_sweep(model, clean_inputs, corrupted_inputs, site=site, per_position=False, metric=read, progress=progress)
            add(result, [f"L{layer} {site}" for layer in range(n_layers)], "layer output")
    result = patching_sweep(model, clean_inputs, corrupted_inputs, site="z", per_position=False, metric=read, progress=progress)
    add(result, [f"L{int(r['layer'])}H{int(r['head'])}" for _, r in result.index_df.iterrows()], "head")
    return ImpliedPatching(patched, clean.double().cpu().numpy(), corrupted.double().cpu().numpy(), kinds, seed=seed)


__all__ = ["CARRIER_SHARE", "ImpliedPatching", "implied_omega0_patching", "OMEGA_MAX", "implied_omega0_from_step", "implied_omega0_metric", "implied_omega0_of_model"]
