"""When can a linear probe work? The parity of activations under s → −s, and even features for even targets.

The oscillator's data are symmetric: a trajectory and its negative (−x, −p) are equally likely and
share ω0, γ and energy. Split an activation f into its even part (f(s) + f(−s))/2 and odd part. On
symmetric data the odd part is uncorrelated with every even label, so a linear probe for ω0, γ or
energy has exactly the population R² of a probe on the even part alone. A site whose even share of
variance is ~0 (a model with no biases and odd non-linearities is odd everywhere) cannot be read
linearly for an even target, however well the model works: say so, and probe even features
instead — attention patterns (q·k is even when q and k are odd) or quadratic features of the
activation.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from physlens._validation import check_nonnegative_int, check_positive_int
from physlens.probes.activations import capture_activations, check_hooks, model_device, model_dtype
from physlens.probes.selection import Site, site_features
from physlens.systems.oscillator import EVEN_LABELS

ODD_TOLERANCE = 1e-3
"""A site whose even share of variance is below this (an even part under ~3 % of the activation's
spread) is treated as odd: a linear probe for an even label can use only that sliver."""


@dataclass
class ParityReport:
    """Even share of variance of every site under s → −s."""

    sites: list[Site]
    even_share: np.ndarray  # [site] var(even part) / var(activation) on the symmetrised data
    tolerance: float  # sites below it count as odd

    def is_odd(self, site: Site) -> bool:
        """True when ``site``'s even share is below the tolerance."""
        return bool(self.even_share[self.sites.index(site)] < self.tolerance)

    def odd_sites(self) -> list[Site]:
        """Every site that is odd within the tolerance."""
        return [s for s, share in zip(self.sites, self.even_share) if share < self.tolerance]

    def linear_readout_possible(self, site: Site, target: str) -> bool:
        """False exactly when ``target`` is even and ``site`` is odd."""
        return not (target in EVEN_LABELS and self.is_odd(site))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {"sites": [list(s) for s in self.sites], "even_share": self.even_share.tolist(), "tolerance": self.tolerance,
                "odd_sites": [list(s) for s in self.odd_sites()]}


def parity_report(model: Any, inputs: Tensor, hooks: Sequence[str], positions: Any = "all", *, tolerance: float = ODD_TOLERANCE) -> ParityReport:
    """Even share of variance of every (hook, position) site on ``inputs`` and their negatives."""
    if not 0 <= tolerance < 1:
        raise ValueError(f"tolerance must be in [0, 1), got {tolerance!r}")
    plus, sites = site_features(model, inputs, hooks, positions)
    minus, _ = site_features(model, -inputs, hooks, positions)
    plus, minus = plus.double(), minus.double()
    even = 0.5 * (plus + minus)  # [n, site, d]
    both = torch.cat([plus, minus])
    even_var = (even - even.mean(dim=0)).pow(2).sum(dim=(0, 2)) / even.shape[0]
    total_var = (both - both.mean(dim=0)).pow(2).sum(dim=(0, 2)) / both.shape[0]
    share = torch.where(total_var > 0, even_var / total_var.clamp_min(torch.finfo(total_var.dtype).tiny), torch.zeros_like(total_var))
    return ParityReport(sites, share.cpu().numpy(), float(tolerance))


def pattern_features(model: Any, inputs: Tensor, layer: int, query: int) -> Tensor:
    """Attention weights of every head of ``layer`` at query position ``query``, flattened: ``[n, head·key]``.

    Scores q·k are even in the states when q and k are odd, so patterns can carry even labels
    (ω0, energy) that an odd residual stream cannot offer a linear probe.
    """
    name = f"blocks.{check_nonnegative_int('layer', layer)}.attn.hook_pattern"
    check_hooks(model, [name])
    query = check_nonnegative_int("query", query)
    if query >= inputs.shape[1]:
        raise ValueError(f"query must be < the number of positions ({inputs.shape[1]}), got {query}")
    with torch.no_grad():
        pattern = capture_activations(model, inputs.to(device=model_device(model), dtype=model_dtype(model)), [name], [query])[name]
    return pattern.reshape(inputs.shape[0], -1)  # [n, 1, head, key] → [n, head·key]


def quadratic_features(features: Tensor, n_components: int = 8) -> Tensor:
    """The top ``n_components`` principal components z of ``features [n, d]`` and all products z_i z_j (i ≤ j).

    Products of odd quantities are even, so these features can carry even labels at an odd site.
    The components are fitted without labels, so using all samples leaks nothing into a probe.
    """
    features = torch.as_tensor(features, dtype=torch.float64)
    if features.ndim != 2:
        raise ValueError(f"features must be [n, d], got {list(features.shape)}")
    n_components = check_positive_int("n_components", n_components)
    centred = features - features.mean(dim=0)
    _, _, vh = torch.linalg.svd(centred, full_matrices=False)
    z = centred @ vh[: min(n_components, vh.shape[0])].T
    i, j = torch.triu_indices(z.shape[1], z.shape[1])
    return torch.cat([z, z[:, i] * z[:, j]], dim=1)


__all__ = ["ODD_TOLERANCE", "ParityReport", "parity_report", "pattern_features", "quadratic_features"]
