"""Energy in a model: is it decodable at each site beyond its controls, and does it decay as the damping says?

:func:`probe_sites_beside_controls` probes a label at every site of a model beside random-init copies,
shuffled labels and an input-feature baseline, so a high R² can be weighed against what the controls reach.

For the damped oscillator the energy E = ½(p² + ω0²x²) decays on average as e^{−2γt} (exactly,
dE/dt = −2γp², which oscillates around −2γE). Fitting log E(t) = c − 2γ̂t over a rollout of several
periods reads a damping rate off the trajectory alone; the same fit on the true trajectory is the
reference, since the oscillation of dE/dt biases both fits alike.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from physlens._validation import check_nonnegative_int, check_positive_int
from physlens.probes.linear_probe import RidgeProbeSweep, grouped_folds
from physlens.systems.oscillator import Trajectories, energy
from physlens.training.rollouts import predictor_placement, rollout


@dataclass
class SiteProbes:
    """Held-out R² of a linear probe for one label at every site, beside the probe's controls."""

    label: str  # what was probed, named for what it is (e.g. "energy_over_first_state_sq")
    sites: list[tuple[str, int]]  # (hook, position) per site
    r2: np.ndarray  # [site] the model's held-out R²
    control_r2: np.ndarray  # [control, site] the same probe on each random-init copy
    shuffled_r2: np.ndarray  # [site] the model's activations with the labels shuffled across trajectories
    baseline_r2: np.ndarray  # [site] input-feature baseline at the site's position (NaN where none was given)

    @property
    def strongest_control(self) -> np.ndarray:
        """``[site]``: the highest R² of any control at the site (random-init copies and shuffled labels)."""
        return np.max(np.vstack([self.control_r2, self.shuffled_r2[None]]), axis=0)

    @property
    def selectivity(self) -> np.ndarray:
        """``[site]``: the model's R² minus its strongest control at the site."""
        return self.r2 - self.strongest_control

    @property
    def selectivity_over_baseline(self) -> np.ndarray:
        """``[site]``: the model's R² minus the larger of its strongest control and the input baseline."""
        return self.r2 - np.fmax(self.strongest_control, self.baseline_r2)

    def best_site(self) -> tuple[str, int]:
        """The site with the highest R² (a selected maximum: compare it with the controls at that site)."""
        return self.sites[int(np.argmax(self.r2))]

    def at(self, site: tuple[str, int]) -> dict[str, float]:
        """The numbers at one site."""
        if site not in self.sites:
            raise ValueError(f"site {site} was not probed")
        i = self.sites.index(site)
        return {"r2": float(self.r2[i]), "strongest_random_init_r2": float(self.control_r2[:, i].max()),
                "shuffled_r2": float(self.shuffled_r2[i]), "input_baseline_r2": float(self.baseline_r2[i]),
                "selectivity": float(self.selectivity[i]), "selectivity_over_baseline": float(self.selectivity_over_baseline[i])}

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form, keyed by ``hook@position``."""
        return {"label": self.label, "n_controls": int(self.control_r2.shape[0]),
                "best_site": list(self.best_site()), "sites": {f"{h}@{p}": self.at((h, p)) for h, p in self.sites}}


def probe_sites_beside_controls(
    features: Float[Tensor, "traj site d"],
    control_features: list[Tensor],
    y: Float[Tensor, "traj site"],
    sites: list[tuple[str, int]],
    *,
    label: str,
    baseline_r2: np.ndarray | None = None,
    n_folds: int = 5,
    seed: int = 0,
) -> SiteProbes:
    """Ridge probes (α by grouped cross-validation, folds by trajectory) of ``y`` at every site of
    ``features``, on each of ``control_features`` (random-init copies, same shape), and on ``features``
    with ``y`` shuffled across trajectories (one permutation from ``seed``).

    ``y`` holds the label at each site's position; ``baseline_r2`` (``[site]``) is an input-feature
    baseline computed elsewhere (see :func:`physlens.probes.baselines.input_baseline_r2`).
    """
    features = torch.as_tensor(features, dtype=torch.float64).cpu()
    y = torch.as_tensor(y, dtype=torch.float64).cpu()
    n, n_sites = features.shape[:2]
    if y.shape != (n, n_sites):
        raise ValueError(f"y must be [traj={n}, site={n_sites}] (the label at each site's position), got {list(y.shape)}")
    if len(sites) != n_sites:
        raise ValueError(f"sites must name every site of features ({n_sites}), got {len(sites)}")
    if not control_features:
        raise ValueError("control_features must hold at least one random-init copy's features")
    controls = [torch.as_tensor(c, dtype=torch.float64).cpu() for c in control_features]
    bad = [list(c.shape[:2]) for c in controls if c.shape[:2] != (n, n_sites)]
    if bad:
        raise ValueError(f"every control_features entry must be [traj={n}, site={n_sites}, d], got {bad}")
    baseline = np.full(n_sites, np.nan) if baseline_r2 is None else np.asarray(baseline_r2, dtype=float)
    if baseline.shape != (n_sites,):
        raise ValueError(f"baseline_r2 must hold one value per site ({n_sites}), got shape {list(baseline.shape)}")
    seed = check_nonnegative_int("seed", seed)
    folds = grouped_folds(torch.arange(n), check_positive_int("n_folds", n_folds), seed=seed)
    shuffled = y[torch.randperm(n, generator=torch.Generator().manual_seed(seed))]

    def cv_r2(X: Tensor, columns: Tensor) -> np.ndarray:
        return RidgeProbeSweep(n_folds=n_folds, seed=seed).fit(X, columns, folds=folds).cv_r2_.cpu().numpy()

    model_r2 = cv_r2(features, torch.stack([y, shuffled], dim=-1))  # [site, 2]
    control_r2 = np.stack([cv_r2(c, y[..., None])[:, 0] for c in controls])
    return SiteProbes(label=label, sites=list(sites), r2=model_r2[:, 0], control_r2=control_r2, shuffled_r2=model_r2[:, 1],
                      baseline_r2=baseline)


def decay_rate(energies: np.ndarray, dt: float) -> np.ndarray:
    """Per row of ``energies`` (``[traj, step]``, positive), γ̂ = −slope/2 of the least-squares line
    through log E against time ``k·dt``: the damping rate the energy's decay implies."""
    energies = np.asarray(energies, dtype=float)
    if energies.ndim != 2 or energies.shape[1] < 2:
        raise ValueError(f"energies must be [traj, step] with at least 2 steps, got shape {list(energies.shape)}")
    if not np.isfinite(energies).all() or (energies <= 0).any():
        raise ValueError("energies must be finite and positive to take their logarithm")
    time = dt * np.arange(energies.shape[1])
    centred = time - time.mean()
    logs = np.log(energies)
    slope = (logs - logs.mean(axis=1, keepdims=True)) @ centred / (centred @ centred)
    return -slope / 2


@dataclass
class EnergyDecay:
    """Damping rates read off the energy of a model's rollouts and of the true trajectories."""

    model_gamma: np.ndarray  # [traj] γ̂ from the model's rolled-out energy
    truth_gamma: np.ndarray  # [traj] γ̂ from the true trajectory's energy (the same fit)
    true_gamma: np.ndarray  # [traj] the label
    final_ratio_error: np.ndarray  # [traj] |E_model(T)/E_model(0) − E_true(T)/E_true(0)| / (E_true(T)/E_true(0))
    n_steps: int
    model_ratio: np.ndarray | None = None  # [traj] E_model(T)/E_model(0) over the rollout
    true_ratio: np.ndarray | None = None  # [traj] E_true(T)/E_true(0) over the same steps
    dt: float | None = None  # the step, so T = (n_steps − 1)·dt

    def law_ratio(self) -> np.ndarray:
        """``[traj]``: e^{−2γT}, the ratio E(T)/E(0) the average decay law gives over the rollout."""
        if self.dt is None:
            raise ValueError("this EnergyDecay was built without dt: the decay law's ratio needs the elapsed time")
        return np.exp(-2 * self.true_gamma * (self.n_steps - 1) * self.dt)

    def law_error(self, which: str = "model") -> float:
        """Median over trajectories of |E(T)/E(0) − e^{−2γT}| / e^{−2γT} for the model's rollout (``"model"``)
        or the true trajectory (``"truth"``: the law's own error, from the oscillation of dE/dt)."""
        ratios = {"model": self.model_ratio, "truth": self.true_ratio}
        if which not in ratios:
            raise ValueError(f"which must be 'model' or 'truth', got {which!r}")
        if ratios[which] is None:
            raise ValueError("this EnergyDecay was built without its energy ratios")
        law = self.law_ratio()
        return float(np.median(np.abs(ratios[which] - law) / law))

    def r2(self) -> float:
        """R² of the model's γ̂ against the true trajectory's γ̂ (the fit's own bias removed)."""
        residual = ((self.model_gamma - self.truth_gamma) ** 2).sum()
        spread = ((self.truth_gamma - self.truth_gamma.mean()) ** 2).sum()
        return float(1 - residual / spread) if spread > 0 else float("nan")

    def rmse(self) -> float:
        """Root-mean-square difference between the model's and the true trajectory's γ̂."""
        return float(np.sqrt(((self.model_gamma - self.truth_gamma) ** 2).mean()))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary."""
        out = {"r2": self.r2(), "rmse": self.rmse(), "median_final_ratio_error": float(np.median(self.final_ratio_error)),
               "truth_fit_rmse_vs_label": float(np.sqrt(((self.truth_gamma - self.true_gamma) ** 2).mean())), "n_steps": self.n_steps,
               "n_trajectories": int(self.model_gamma.shape[0])}
        if self.dt is not None and self.model_ratio is not None and self.true_ratio is not None:
            out.update(model_law_error=self.law_error("model"), truth_law_error=self.law_error("truth"),
                       median_model_ratio=float(np.median(self.model_ratio)), median_true_ratio=float(np.median(self.true_ratio)),
                       median_law_ratio=float(np.median(self.law_ratio())))
        return out


def rollout_energy_decay(model: Callable[[Tensor], Tensor], trajectories: Trajectories, *, context_len: int) -> EnergyDecay:
    """Roll ``model`` out from the first ``context_len`` states of ``trajectories`` to their end and
    compare the damping rate its energy implies with the true trajectory's (energies with each
    trajectory's own ω0, in float64)."""
    context_len = check_positive_int("context_len", context_len)
    n_steps = trajectories.n_steps - context_len
    if n_steps < 2:
        raise ValueError(f"trajectories must run at least 2 steps past context_len={context_len}, got {trajectories.n_steps} steps")
    dtype, device = predictor_placement(model, trajectories.states)
    context = trajectories.states[:, :context_len].to(device=device, dtype=dtype)
    with torch.no_grad():
        predicted = rollout(model, context, n_steps, fast=True).to(device="cpu", dtype=torch.float64)
    truth = trajectories.states[:, context_len:].to(device="cpu", dtype=torch.float64)
    omega0 = trajectories.omega0.to(device="cpu", dtype=torch.float64)[:, None]
    model_energy, true_energy = energy(predicted, omega0).numpy(), energy(truth, omega0).numpy()
    if (model_energy <= 0).any() or not np.isfinite(model_energy).all():
        raise ValueError("the model's rollout reaches zero or non-finite energy: no damping rate can be read from it")
    model_ratio, true_ratio = model_energy[:, -1] / model_energy[:, 0], true_energy[:, -1] / true_energy[:, 0]
    return EnergyDecay(
        model_gamma=decay_rate(model_energy, trajectories.dt), truth_gamma=decay_rate(true_energy, trajectories.dt),
        true_gamma=trajectories.gamma.double().cpu().numpy(), final_ratio_error=np.abs(model_ratio - true_ratio) / true_ratio, n_steps=n_steps,
        model_ratio=model_ratio, true_ratio=true_ratio, dt=float(trajectories.dt),
    )


__all__ = ["EnergyDecay", "SiteProbes", "decay_rate", "probe_sites_beside_controls", "rollout_energy_decay"]
