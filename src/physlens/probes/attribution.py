"""Attribution patching: the first-order (gradient) estimate of activation patching.

Patching a clean activation ``a_clean`` into the corrupted run changes the metric by about
``(a_clean − a_corrupted) · ∂metric/∂a`` at the corrupted run, so one clean forward pass and one
corrupted forward + backward pass estimate every cell of every site of :func:`patching_sweep` at
once. The estimate is exact for a metric linear in the activation and drifts as the patch moves
the model off its tangent; :func:`patching_agreement` measures how far, against exact patching on
the same pairs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from jaxtyping import Float
from scipy import stats
from torch import Tensor
from transformer_lens.patching import PatchingResult
from transformer_lens.utilities import get_act_name

from physlens._validation import check_positive_int
from physlens.probes.activations import Positions, capture_activations, check_hooks, model_device
from physlens.probes.patching import SITES, plan_sweep, recovery_metric


def activation_gradients(
    model: Any, inputs: Tensor, metric: Callable[[Tensor], Tensor], names: Sequence[str]
) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """One forward and one backward pass: the activation of every hook in ``names`` and the gradient
    of ``metric(model(inputs)).sum()`` with respect to it (detached; no parameter's ``.grad`` is touched).

    ``metric`` maps the output to one value per example; examples do not interact inside the model,
    so the gradient of the sum holds every example's own gradient.
    """
    names = check_hooks(model, names)
    if not torch.is_grad_enabled():
        raise ValueError("activation_gradients needs autograd, which is switched off here (torch.no_grad or inference mode)")
    live: dict[str, Tensor] = {}

    def keep(activation: Tensor, hook: Any) -> None:
        live[hook.name] = activation

    with model.hooks(fwd_hooks=[(name, keep) for name in names]):
        total = metric(model(inputs))
        if not isinstance(total, Tensor) or total.ndim != 1 or total.shape[0] != inputs.shape[0]:
            raise ValueError(f"metric must return one value per example ([{inputs.shape[0]}]), got {getattr(total, 'shape', type(total).__name__)}")
        missing = [name for name in names if name not in live]
        if missing:
            raise ValueError(f"hooks {missing} did not fire in the forward pass")
        grads = torch.autograd.grad(total.sum(), [live[name] for name in names], allow_unused=True)
    activations = {name: live[name].detach() for name in names}
    gradients = {name: torch.zeros_like(activations[name]) if g is None else g.detach() for name, g in zip(names, grads)}
    return activations, gradients


def _estimates(plan: Any, clean: dict[str, Tensor], corrupted: dict[str, Tensor], grads: dict[str, Tensor]) -> Tensor:
    """``[cell, batch]`` first-order changes of the metric, one per row of ``plan.index_df``."""
    layer_names = {int(name.split(".")[1]): name for name in plan.names}
    products = {name: (clean[name] - corrupted[name]) * grads[name] for name in plan.names}
    rows = []
    for _, row in plan.index_df.iterrows():
        part = products[layer_names[int(row["layer"])]][plan.cell_slice(row)]
        rows.append(part.flatten(1).sum(dim=1))
    return torch.stack(rows)


def attribution_patching_all_sites(
    model: Any,
    clean_inputs: Float[Tensor, "batch pos d_in"],
    corrupted_inputs: Float[Tensor, "batch pos d_in"],
    *,
    sites: Sequence[str] | None = None,
    positions: Positions = "all",
    per_position: bool = True,
    layers: Sequence[int] | None = None,
    output_position: int | None = -1,
    metric: Callable[[Tensor], Tensor] | None = None,
    device: str | torch.device | None = None,
) -> dict[str, PatchingResult]:
    """:func:`attribution_patching_sweep` for several ``sites`` (default: every site of
    :data:`~physlens.probes.patching.SITES` the model has) from one backward pass."""
    if clean_inputs.shape != corrupted_inputs.shape:
        raise ValueError(f"clean and corrupted inputs must have the same shape, got {list(clean_inputs.shape)} and {list(corrupted_inputs.shape)}")
    device = torch.device(device) if device is not None else model_device(model)
    clean_inputs, corrupted_inputs = clean_inputs.to(device), corrupted_inputs.to(device)
    n_pos = clean_inputs.shape[1]
    if sites is None:
        sites = [site for site in SITES if all(get_act_name(site, layer=layer) in model.hook_dict for layer in range(model.cfg.n_layers))]
    if isinstance(sites, str) or not sites:
        raise ValueError(f"sites must be a non-empty list of sites from {list(SITES)}, got {sites!r}")
    plans = {site: plan_sweep(model, n_pos, site=site, positions=positions, per_position=per_position, layers=layers) for site in sites}
    names = list(dict.fromkeys(name for plan in plans.values() for name in plan.names))
    if metric is None:
        metric = recovery_metric(model, clean_inputs, corrupted_inputs, output_position)
    elif not callable(metric):
        raise TypeError(f"metric must be a function of the model output, got {type(metric).__name__}")
    clean = capture_activations(model, clean_inputs, names, None)
    with torch.no_grad():
        baseline = metric(model(corrupted_inputs)).detach()
    with torch.enable_grad():
        corrupted, grads = activation_gradients(model, corrupted_inputs, metric, names)
    results = {}
    for site, plan in plans.items():
        values = baseline + _estimates(plan, clean, corrupted, grads).detach()
        results[site] = PatchingResult(
            values=values, axis_names=[], index_df=plan.index_df, metric_names=["metric"], reduced=False, baseline=baseline
        )
    return results


def attribution_patching_sweep(
    model: Any,
    clean_inputs: Float[Tensor, "batch pos d_in"],
    corrupted_inputs: Float[Tensor, "batch pos d_in"],
    *,
    site: str = "resid_pre",
    positions: Positions = "all",
    per_position: bool = True,
    layers: Sequence[int] | None = None,
    output_position: int | None = -1,
    metric: Callable[[Tensor], Tensor] | None = None,
    device: str | torch.device | None = None,
) -> PatchingResult:
    """Attribution patching: the gradient estimate of :func:`patching_sweep`'s recovery, cell by cell.

    Same arguments, cells (``index_df``) and layout (a TransformerLens ``PatchingResult`` with
    per-example values and ``baseline`` = the metric of the corrupted run) as
    :func:`~physlens.probes.patching.patching_sweep`, so the two compare cell by cell; the estimate
    of a cell is the baseline plus ``Σ (a_clean − a_corrupted) · ∂metric/∂a`` over the cell's part
    of the activation, taken at the corrupted run. Costs three forward passes and one backward pass,
    whatever the number of cells.
    """
    return attribution_patching_all_sites(
        model, clean_inputs, corrupted_inputs, sites=[site], positions=positions, per_position=per_position,
        layers=layers, output_position=output_position, metric=metric, device=device,
    )[site]


@dataclass
class PatchingAgreement:
    """How well an estimate of activation patching (attribution patching) matches exact patching."""

    pearson: float  # Pearson correlation of the per-cell mean recoveries
    pearson_interval: tuple[float, float]  # percentile bootstrap interval of it, resampling examples (pairs)
    spearman: float  # Spearman rank correlation of the per-cell mean recoveries
    pearson_examples: float  # Pearson correlation over every (cell, example) value
    max_abs_error: float  # largest |estimate − exact| of a per-cell mean
    n_cells: int  # cells compared
    n_examples: int  # examples (pairs) per cell

    def to_dict(self) -> dict[str, Any]:
        """The fields as a JSON-ready dict."""
        return {**self.__dict__, "pearson_interval": list(self.pearson_interval)}


def _row_pearson(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pearson correlation of ``a[..., :]`` with ``b[..., :]`` along the last axis."""
    a = a - a.mean(axis=-1, keepdims=True)
    b = b - b.mean(axis=-1, keepdims=True)
    return (a * b).sum(-1) / np.sqrt((a * a).sum(-1) * (b * b).sum(-1))


def patching_agreement(
    exact: PatchingResult, estimate: PatchingResult, *, confidence: float = 0.95, n_resamples: int = 1000, seed: int = 0
) -> PatchingAgreement:
    """Compare two per-example sweeps over the same cells and examples (e.g. :func:`patching_sweep`
    and :func:`attribution_patching_sweep` on the same pairs): correlations of the per-cell means
    (scipy), a bootstrap interval of the Pearson correlation over resampled examples, and the
    largest error of a per-cell mean."""
    for name, result in (("exact", exact), ("estimate", estimate)):
        if not isinstance(result, PatchingResult) or result.reduced or result.has_metric_axis:
            raise ValueError(f"{name} must be a per-example PatchingResult of one metric (reduce='none'), got {type(result).__name__}")
    if not exact.index_df.equals(estimate.index_df) or exact.values.shape != estimate.values.shape:
        raise ValueError(
            f"exact and estimate must sweep the same cells and examples; got {tuple(exact.values.shape)} and {tuple(estimate.values.shape)}"
        )
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence!r}")
    n_resamples = check_positive_int("n_resamples", n_resamples)
    a = exact.values.detach().double().cpu().numpy().reshape(len(exact.index_df), -1)
    b = estimate.values.detach().double().cpu().numpy().reshape(len(exact.index_df), -1)
    if a.shape[0] < 3:
        raise ValueError(f"correlations need at least 3 cells, got {a.shape[0]}")
    mean_a, mean_b = a.mean(axis=1), b.mean(axis=1)
    picks = np.random.default_rng(seed).integers(0, a.shape[1], size=(n_resamples, a.shape[1]))
    resampled = _row_pearson(a[:, picks].mean(-1).T, b[:, picks].mean(-1).T)  # [resample]
    low, high = np.nanquantile(resampled, [(1 - confidence) / 2, (1 + confidence) / 2])
    return PatchingAgreement(
        pearson=float(stats.pearsonr(mean_a, mean_b).statistic),
        pearson_interval=(float(low), float(high)),
        spearman=float(stats.spearmanr(mean_a, mean_b).statistic),
        pearson_examples=float(stats.pearsonr(a.ravel(), b.ravel()).statistic),
        max_abs_error=float(np.max(np.abs(mean_a - mean_b))),
        n_cells=int(a.shape[0]),
        n_examples=int(a.shape[1]),
    )


__all__ = [
    "PatchingAgreement",
    "activation_gradients",
    "attribution_patching_all_sites",
    "attribution_patching_sweep",
    "patching_agreement",
]
