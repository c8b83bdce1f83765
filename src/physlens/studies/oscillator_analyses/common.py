"""What every ``[analyses.*]`` section of an oscillator study shares: the context an analysis reads, the entry
of the dispatch table, and the checks and helpers several sections use."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from physlens.models.base import HookedModel
from physlens.models.transformer import OscillatorTransformer
from physlens.probes.linear_probe import LinearProbe
from physlens.seeding import stream_seed
from physlens.studies.report import Report, StudySpecError
from physlens.systems.oscillator import OscillatorSystem
from physlens.training.evaluation import TaskVerdict

LAYER_HOOKS = ("resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out")
"""Short hook names that expand to one hook per layer."""


@dataclass
class AnalysisContext:
    """What every analysis reads: the trained model, its system, the study's seed and the report."""

    model: HookedModel  # the trained model, in eval mode
    system: OscillatorSystem  # the training distribution
    seq_len: int  # positions the model was trained on
    loss_positions: str | int  # the training loss's positions ("last", "all" or the first scored one)
    seed: int  # the study's seed: every analysis derives its own streams from it
    progress: bool  # show progress bars
    verdict: TaskVerdict | None = None  # whether the model does its task, judged before any analysis
    report: Report = field(default_factory=lambda: Report("analyses"))
    metrics: dict[str, Any] = field(default_factory=dict)
    findings: list[str] = field(default_factory=list)
    seeds: dict[str, int] = field(default_factory=dict)  # every stream an analysis drew from, by name
    shared: dict[str, Any] = field(default_factory=dict)  # results one analysis hands to a later one

    @property
    def dtype(self) -> torch.dtype:
        """The model's parameter dtype."""
        return self.model.W_E.dtype

    def stream(self, name: str) -> int:
        """The seed of the named random stream (recorded so ``load_run`` can replay it)."""
        self.seeds[name] = stream_seed(self.seed, name)
        return self.seeds[name]

    def sample(self, name: str, n: int, n_steps: int):
        """``n`` fresh trajectories of ``n_steps`` from the stream ``name``, in the model's dtype."""
        return self.system.sample(n, n_steps, seed=self.stream(name)).to(device=self.model.cfg.device, dtype=self.dtype)

    def control_model(self, index: int = 0) -> OscillatorTransformer:
        """A randomly initialised copy of the model from its own stream (never the model's own seed);
        ``index`` > 0 gives further copies, each from a stream of its own."""
        name = "random-init control" if index == 0 else f"random-init control {index}"
        seed = self.stream(name)
        if seed == self.model.cfg.seed:
            seed = self.stream(f"{name} (second draw)")
        return OscillatorTransformer(dataclasses.replace(self.model.cfg, seed=seed)).to(self.model.cfg.device).eval()


@dataclass(frozen=True)
class Analysis:
    """One entry of :data:`ANALYSES`: its option types, defaults, a pre-training check and the runner."""

    keys: Mapping[str, Any]
    defaults: Mapping[str, Any]
    check: Callable[[dict[str, Any], HookedModel, OscillatorSystem, int], None]
    run: Callable[[AnalysisContext, dict[str, Any]], None]


def _error(name: str, key: str, message: str) -> StudySpecError:
    return StudySpecError(f"[analyses.{name}] {key}: {message}")


def _check_positive(name: str, opts: Mapping[str, Any], keys: tuple[str, ...]) -> None:
    for key in keys:
        if key in opts and opts[key] < 1:
            raise _error(name, key, f"must be >= 1, got {opts[key]}")


def _check_varies(name: str, system: OscillatorSystem, vary: str, min_change: float) -> None:
    if vary not in ("omega0", "gamma"):
        raise _error(name, "vary", f"must be 'omega0' or 'gamma', got {vary!r}")
    if not min_change > 0:
        raise _error(name, "min_change", f"must be > 0, got {min_change}")
    low, high = (system.omega0 if vary == "omega0" else system.gamma).bounds
    if high - low < min_change:
        raise _error(
            name, "vary",
            f"the system's {vary} spans [{low:g}, {high:g}], so there are no contexts that differ in {vary} by "
            f"min_change={min_change:g}: this analysis needs a system whose {vary} varies",
        )


def expand_hooks(model: HookedModel, hooks: list[str], where: str = "[analyses.probes] hooks") -> list[str]:
    """Short names (``resid_post``, ``attn_out``…) become one hook per layer; full names pass through."""
    names = []
    for hook in hooks:
        if not isinstance(hook, str):
            raise StudySpecError(f"{where}: every hook must be a string, got {hook!r}")
        if hook in LAYER_HOOKS:
            names += [f"blocks.{layer}.hook_{hook}" for layer in range(model.cfg.n_layers)]
        else:
            names.append(hook)
    missing = [n for n in names if n not in model.hook_dict]
    if missing:
        raise StudySpecError(f"{where}: {missing} do not exist in this model; short forms are {list(LAYER_HOOKS)}")
    return names


def _sites(opts_sites: list[Any], model: HookedModel, seq_len: int, where: str) -> list[tuple[str, int]]:
    sites = []
    for site in opts_sites:
        if not (isinstance(site, list) and len(site) == 2 and isinstance(site[0], str) and isinstance(site[1], int)
                and not isinstance(site[1], bool)):
            raise StudySpecError(f"{where}: every site must be [hook, position], got {site!r}")
        hook = expand_hooks(model, [site[0]], where)
        if len(hook) != 1:
            raise StudySpecError(f"{where}: a site names one hook, not the short form {site[0]!r}")
        position = site[1] % seq_len if -seq_len <= site[1] < seq_len else None
        if position is None:
            raise StudySpecError(f"{where}: position {site[1]} is outside the {seq_len} positions of the context")
        sites.append((hook[0], position))
    return sites


def _positions(value: Any, seq_len: int, where: str) -> list[int]:
    if value == "all":
        return list(range(seq_len))
    if not isinstance(value, list) or not value or not all(isinstance(p, int) and not isinstance(p, bool) for p in value):
        raise StudySpecError(f"{where}: must be 'all' or a non-empty list of positions, got {value!r}")
    bad = [p for p in value if not -seq_len <= p < seq_len]
    if bad:
        raise StudySpecError(f"{where}: positions {bad} are outside the {seq_len} positions of the context")
    return sorted({p % seq_len for p in value})


FIRST_STATE_UNITS = {
    "energy": ("energy_over_first_state_sq", "E/‖s0‖², the energy in units of the first state's size: a function of ω0 and the phase"),
    "acceleration": ("acceleration_over_first_state_norm", "ẍ/‖s0‖"),
    "omega0_sq_x": ("omega0_sq_x_over_first_state_norm", "ω0²x/‖s0‖"),
    "gamma_p": ("gamma_p_over_first_state_norm", "γp/‖s0‖"),
}
"""Labels that scale with the states, and what they are when measured in units of the first state's size."""


def _cv_r2(features: torch.Tensor, y: np.ndarray, seed: int, n_folds: int) -> float:
    return float(LinearProbe(n_folds=n_folds, seed=seed).fit(features.double().cpu().numpy(), y).cv_r2_)


def _short_site(site: tuple[str, int]) -> str:
    return f"{site[0].replace('blocks.', 'L').replace('.hook_', ' ').replace('hook_', '')} @ {site[1]}"


def _varies(system: OscillatorSystem, parameter: str) -> bool:
    low, high = getattr(system, parameter).bounds
    return high > low
