"""Probe statistics that survive selection: nested cross-validation over sites and a permutation null of the maximum.

"The best of 120 sites has R² 0.03" is not an R²: the site was chosen by the same folds that score it.
Two honest numbers replace it:

- **nested CV R²**: for every outer fold, the site and the ridge penalty are chosen by an inner
  cross-validation on the other folds only, and the chosen probe is scored on the outer fold;
- **a permutation null of the maximum**: labels are shuffled across trajectories many times and the
  maximum over sites of the cross-validated R² is recomputed, so the observed maximum gets a p-value.

Both come from per-fold sufficient statistics of one :class:`~physlens.probes.linear_probe.RidgeProbeSweep`
fit, so nested CV costs one eigendecomposition per site and training set, and permutations ride
along as extra target columns.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from physlens._validation import check_nonnegative_int, check_positive_int
from physlens.probes.activations import capture_activations, check_hooks, model_device, model_dtype, resolve_positions
from physlens.probes.linear_probe import DEFAULT_ALPHAS, RidgeProbeSweep, grouped_folds

Site = tuple[str, int]
"""A probe site: (hook name, position)."""


def site_features(model: Any, inputs: Tensor, hooks: Sequence[str], positions: Any = "all") -> tuple[Tensor, list[Site]]:
    """Activations of every (hook, position) site as one matrix ``[n, site, d]`` (hooks must share a width).

    Sites are ordered hook-major: all positions of the first hook, then the next hook's.
    """
    hooks = check_hooks(model, list(hooks))
    pos = resolve_positions(positions, inputs.shape[1])
    if pos is None:
        raise ValueError("positions must select positions ('all', an int or a list), not None")
    with torch.no_grad():
        acts = capture_activations(model, inputs.to(device=model_device(model), dtype=model_dtype(model)), hooks, pos)
    blocks = [acts[h].reshape(inputs.shape[0], len(pos), -1) for h in hooks]
    widths = {h: b.shape[-1] for h, b in zip(hooks, blocks)}
    if len(set(widths.values())) != 1:
        raise ValueError(f"hooks must share one feature width to be compared as sites, got {widths}")
    return torch.cat(blocks, dim=1), [(h, p) for h in hooks for p in pos]


@dataclass
class SiteSelection:
    """Probes at every site for every target, with honest statistics for the choice of site.

    Arrays are ``[site, target]`` or ``[target]``; ``null_max`` is ``[permutation, target]``.
    """

    sites: list[Site]
    targets: list[str]
    cv_r2: np.ndarray  # [site, t] cross-validated R² per site (choosing its maximum is selection-biased)
    nested_r2: np.ndarray  # [t] R² with site and α chosen inside each outer training set
    chosen_sites: list[list[Site]]  # [t][fold] the site the inner CV chose for each outer fold
    null_max: np.ndarray  # [permutation, t] max over sites of the CV R² with labels shuffled across trajectories
    n_samples: int

    def target_index(self, target: str) -> int:
        """Index of ``target``."""
        if target not in self.targets:
            raise ValueError(f"target must be one of {self.targets}, got {target!r}")
        return self.targets.index(target)

    def best_site(self, target: str) -> Site:
        """The site with the highest cross-validated R² (for display: its R² is selection-biased)."""
        return self.sites[int(np.argmax(self.cv_r2[:, self.target_index(target)]))]

    def max_r2(self, target: str) -> float:
        """The maximum over sites of the cross-validated R²."""
        return float(self.cv_r2[:, self.target_index(target)].max())

    def p_value(self, target: str) -> float:
        """Permutation p-value of the maximum over sites: (1 + #null ≥ observed) / (1 + #permutations)."""
        t = self.target_index(target)
        null = self.null_max[:, t]
        return float((1 + np.sum(null >= self.max_r2(target))) / (1 + len(null)))

    def null_quantile(self, target: str, q: float = 0.95) -> float:
        """Quantile ``q`` of the permutation null of the maximum."""
        return float(np.quantile(self.null_max[:, self.target_index(target)], q))

    def r2_at(self, site: Site, target: str) -> float:
        """Cross-validated R² at a fixed (pre-registered) site: no selection, so no bias."""
        if site not in self.sites:
            raise ValueError(f"site {site} was not probed; probed sites are hooks {sorted({h for h, _ in self.sites})} at positions {sorted({p for _, p in self.sites})}")
        return float(self.cv_r2[self.sites.index(site), self.target_index(target)])

    def summary(self, target: str) -> dict[str, Any]:
        """The honest numbers for one target."""
        t = self.target_index(target)
        hook, position = self.best_site(target)
        return {
            "target": target, "nested_r2": float(self.nested_r2[t]), "max_r2": self.max_r2(target),
            "best_hook": hook, "best_position": position, "p_value_of_max": self.p_value(target),
            "null_max_95": self.null_quantile(target), "n_permutations": int(self.null_max.shape[0]),
            "chosen_sites": [list(s) for s in self.chosen_sites[t]],
        }

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {"sites": [list(s) for s in self.sites], "targets": self.targets, "cv_r2": self.cv_r2.tolist(),
                "n_samples": self.n_samples, "summary": {t: self.summary(t) for t in self.targets}}


def _train_stats(stats: Any, excluded: Sequence[int], columns: slice) -> tuple[Tensor, ...]:
    keep = [k for k in range(stats.n_folds) if k not in excluded]
    n = stats.count[keep].sum()
    sx, sy = stats.sum_x[keep].sum(0), stats.sum_y[keep].sum(0)[..., columns]
    xx, xy = stats.xx[keep].sum(0), stats.xy[keep].sum(0)[..., columns]
    mean_x, mean_y = sx / n, sy / n
    gram = xx - n * mean_x[..., :, None] * mean_x[..., None, :]
    cross = xy - n * mean_x[..., :, None] * mean_y[..., None, :]
    return 0.5 * (gram + gram.transpose(-1, -2)), cross, mean_x, mean_y


def _ridge_path(gram: Tensor, cross: Tensor, alphas: Sequence[float]) -> Tensor:
    """Weights ``[alpha, site, d, t]`` for every α from one eigendecomposition per site."""
    eigvals, eigvecs = torch.linalg.eigh(gram)
    eigvals = eigvals.clamp_min(0)
    projected = eigvecs.transpose(-1, -2) @ cross  # [site, d, t]
    tol = gram.shape[-1] * torch.finfo(gram.dtype).eps * eigvals.amax(dim=-1, keepdim=True).clamp_min(torch.finfo(gram.dtype).tiny)
    path = []
    for alpha in alphas:
        shifted = eigvals + alpha
        gain = torch.where(shifted > tol, 1 / shifted.clamp_min(torch.finfo(gram.dtype).tiny), torch.zeros_like(shifted))
        path.append(eigvecs @ (gain[..., None] * projected))
    return torch.stack(path)


def _held_out_sse(stats: Any, fold: int, weights: Tensor, mean_x: Tensor, mean_y: Tensor, columns: slice) -> Tensor:
    """Squared error on ``fold`` of probes ``weights [alpha, site, d, t]`` trained with means ``mean_x``, ``mean_y``."""
    b = mean_y - (mean_x[..., None] * weights).sum(dim=-2)  # [alpha, site, t]
    n = stats.count[fold]
    sx, sy = stats.sum_x[fold], stats.sum_y[fold][..., columns]
    xx, xy, yy = stats.xx[fold], stats.xy[fold][..., columns], stats.yy[fold][..., columns]
    return (yy - 2 * b * sy - 2 * (weights * xy).sum(-2) + n * b**2 + 2 * b * (sx[..., None] * weights).sum(-2)
            + (weights * (xx @ weights)).sum(-2))


def nested_cv_r2(stats: Any, n_targets: int, alphas: Sequence[float]) -> tuple[np.ndarray, list[list[int]]]:
    """Nested cross-validated R² from per-fold ridge statistics (``RidgeProbeSweep.stats_``).

    For every outer fold, each inner fold is held out in turn from the remaining folds to score every
    (site, α); the best pair is refitted on all folds but the outer one and scored there. Returns the
    R² per target (first ``n_targets`` columns) and the chosen site index per target and outer fold.
    """
    alphas = [float(a) for a in alphas]
    k_folds = stats.n_folds
    if k_folds < 3:
        raise ValueError(f"nested cross-validation needs at least 3 folds (an outer and two inner), got {k_folds}")
    columns = slice(0, n_targets)
    cache: dict[tuple[int, ...], tuple[Tensor, Tensor, Tensor]] = {}

    def path(excluded: tuple[int, ...]) -> tuple[Tensor, Tensor, Tensor]:
        if excluded not in cache:
            gram, cross, mean_x, mean_y = _train_stats(stats, excluded, columns)
            cache[excluded] = (_ridge_path(gram, cross, alphas), mean_x, mean_y)
        return cache[excluded]

    total_n = stats.count.sum()
    overall_mean_y = stats.sum_y.sum(0)[..., columns] / total_n  # [site, t]
    sse, sst = torch.zeros(n_targets, dtype=stats.xx.dtype), torch.zeros(n_targets, dtype=stats.xx.dtype)
    chosen: list[list[int]] = [[] for _ in range(n_targets)]
    for outer in range(k_folds):
        inner_score = None
        for inner in range(k_folds):
            if inner == outer:
                continue
            weights, mean_x, mean_y = path(tuple(sorted((outer, inner))))
            score = _held_out_sse(stats, inner, weights, mean_x, mean_y, columns)
            inner_score = score if inner_score is None else inner_score + score  # [alpha, site, t]
        weights, mean_x, mean_y = path((outer,))
        outer_sse = _held_out_sse(stats, outer, weights, mean_x, mean_y, columns)  # [alpha, site, t]
        n_o, sy_o, yy_o = stats.count[outer], stats.sum_y[outer][..., columns], stats.yy[outer][..., columns]
        for t in range(n_targets):
            flat = int(torch.argmin(inner_score[..., t]))
            a, s = divmod(flat, inner_score.shape[1])
            chosen[t].append(s)
            sse[t] += outer_sse[a, s, t]
            c = overall_mean_y[s, t]
            sst[t] += yy_o[s, t] - 2 * c * sy_o[s, t] + n_o * c**2
    return (1 - sse / sst).cpu().numpy(), chosen


def select_sites(
    X: Tensor,
    y: Tensor,
    sites: Sequence[Site],
    targets: Sequence[str],
    *,
    n_folds: int = 5,
    n_permutations: int = 200,
    alphas: Sequence[float] = DEFAULT_ALPHAS,
    seed: int = 0,
) -> SiteSelection:
    """Probe every site for every target with nested CV and a permutation null of the maximum.

    ``X`` is ``[n, site, d]`` with one row per trajectory; ``y`` is ``[n, t]`` (one value per
    trajectory) or ``[n, site, t]`` (a per-step label read at each site's position). Folds and label
    shuffles act on trajectories.
    """
    X = torch.as_tensor(X, dtype=torch.float64)
    y = torch.as_tensor(y, dtype=torch.float64)
    n, n_sites = X.shape[:2]
    targets = list(targets)
    if len(sites) != n_sites:
        raise ValueError(f"sites must name every site of X ({n_sites}), got {len(sites)}")
    if y.ndim == 2:
        y = y[:, None, :].expand(n, n_sites, y.shape[-1])
    if y.ndim != 3 or y.shape[:2] != (n, n_sites) or y.shape[-1] != len(targets):
        raise ValueError(f"y must be [n={n}, t={len(targets)}] or [n, site={n_sites}, t], got {list(y.shape)}")
    n_permutations = check_nonnegative_int("n_permutations", n_permutations)
    check_positive_int("n_folds", n_folds)
    generator = torch.Generator().manual_seed(check_nonnegative_int("seed", seed))
    folds = grouped_folds(torch.arange(n), n_folds, seed=seed)
    shuffled = [y[torch.randperm(n, generator=generator)] for _ in range(n_permutations)]
    columns = torch.cat([y, *shuffled], dim=-1)  # [n, site, t·(1 + P)]
    sweep = RidgeProbeSweep(alphas=alphas, n_folds=n_folds, seed=seed).fit(X, columns, folds=folds)
    cv = sweep.cv_r2_.cpu().numpy()  # [site, t·(1 + P)]
    t = len(targets)
    null_max = cv[:, t:].reshape(n_sites, n_permutations, t).max(axis=0) if n_permutations else np.zeros((0, t))
    nested, chosen = nested_cv_r2(sweep.stats_, t, alphas)
    return SiteSelection(
        sites=list(sites), targets=targets, cv_r2=cv[:, :t], nested_r2=nested,
        chosen_sites=[[sites[s] for s in per_target] for per_target in chosen], null_max=null_max, n_samples=n,
    )


__all__ = ["Site", "SiteSelection", "nested_cv_r2", "select_sites", "site_features"]
