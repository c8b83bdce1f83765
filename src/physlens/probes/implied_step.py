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
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from physlens._validation import check_finite, check_positive_float, check_positive_int
from physlens.systems.oscillator import propagator

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
    for _ in range(refinements + 1):
        candidates = lows[:, None] + (highs - lows)[:, None] * torch.linspace(0, 1, grid, dtype=torch.float64)  # [batch, grid]
        kernel = propagator(candidates, gamma_t[:, None], dt)  # [batch, grid, 2, 2]
        landed = torch.einsum("bgij,bj->bgi", kernel, states)
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


__all__ = ["OMEGA_MAX", "implied_omega0_from_step", "implied_omega0_metric", "implied_omega0_of_model"]
