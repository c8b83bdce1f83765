"""What a one-neuron bottleneck carries: how much the decoder needs it, and which quantity of the
oscillator (ω0, ω0², Ω, the energy) it matches, as it is and folded about its median."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch

from physlens.models.siamese import BottleneckNetwork
from physlens.probes.invariants import QuantityMatch, match_quantities
from physlens.systems.oscillator import Trajectories
from physlens.training.invariants import oscillator_windows


@dataclass(frozen=True)
class BottleneckMatches:
    """A bottleneck neuron against candidate quantities, as it is and folded about its median."""

    raw: list[QuantityMatch]
    """The neuron's value against each candidate, best isotonic R² first."""
    folded: list[QuantityMatch]
    """|value − median| against each candidate, best isotonic R² first."""
    centre: float
    """The median the folded neuron is measured from."""


def bottleneck_matches(code: np.ndarray, candidates: Mapping[str, np.ndarray]) -> BottleneckMatches:
    """Match a bottleneck neuron ``code`` [n] with each candidate quantity [n], as it is and folded.

    A window and its mirror image (x, p) → (−x, −p) share ω0; an encoder may encode ω0 with a sign
    that flips between them, and |code − median| then carries ω0 alone: a neuron ±ω0 with random
    signs matches ω0 only when folded.
    """
    raw = match_quantities(code, candidates)
    centre = float(np.median(code))
    folded = match_quantities(np.abs(code - centre), candidates)
    return BottleneckMatches(raw, folded, centre)


@dataclass(frozen=True)
class BottleneckAnalysis:
    """A trained bottleneck network on held-out oscillator windows."""

    code: np.ndarray
    """The bottleneck neuron on each test window [n]."""
    candidates: dict[str, np.ndarray]
    """The quantities it is matched with: ω0, ω0², Ω and the energy of the window's last state."""
    mse: float
    """Test MSE of the prediction."""
    mse_mean_bottleneck: float
    """Test MSE with the bottleneck replaced by its mean over the test windows."""
    target_variance: float
    """Variance of the targets: the MSE of predicting their mean."""
    matches: BottleneckMatches
    """The neuron against the candidates."""


def analyse_bottleneck(
    model: BottleneckNetwork, trajectories: Trajectories, window: int, *, generator: torch.Generator
) -> BottleneckAnalysis:
    """Run ``model`` on the first ``window`` states of each trajectory, with a query state drawn by
    ``generator`` (:func:`~physlens.training.invariants.oscillator_windows`); score its prediction
    with the bottleneck as it is and mean-ablated, and match the neuron with the oscillator's
    quantities. A neuron the decoder ignores gives the same MSE both ways."""
    inputs, side, target = oscillator_windows(trajectories, window, generator=generator)
    with torch.no_grad():
        prediction, cache = model.run_with_cache(inputs, side, names_filter="hook_bottleneck")
        code = cache["hook_bottleneck"][:, 0].double().numpy()
        blank = model.run_with_hooks(inputs, side, fwd_hooks=[("hook_bottleneck", lambda act, hook: act.mean(0, keepdim=True).expand_as(act))])
    labels = {k: v.double().numpy() for k, v in trajectories.labels().items()}
    candidates = {
        "ω0": labels["omega0"], "ω0²": labels["omega0_sq"], "Ω": labels["Omega"],
        "energy": labels["energy"][:, window - 1],
    }
    return BottleneckAnalysis(
        code=code, candidates=candidates, mse=float(((prediction - target) ** 2).mean()),
        mse_mean_bottleneck=float(((blank - target) ** 2).mean()), target_variance=float(target.var()),
        matches=bottleneck_matches(code, candidates),
    )


__all__ = ["BottleneckAnalysis", "BottleneckMatches", "analyse_bottleneck", "bottleneck_matches"]
