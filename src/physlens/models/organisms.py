"""Model organisms: oscillator predictors whose algorithm is planted, to calibrate the analyses on.

Each is called like :class:`~physlens.models.OscillatorTransformer` — ``[batch, pos, 2]`` states in,
the predicted next state at every position out — so every analysis runs on it unchanged, and we know
what it should find. Every organism can observe its input through seeded observation noise.

- :class:`LeastSquaresOrganism`: in-context least squares over the last k states, then the step;
- :class:`ARFilterOrganism`: the float64 AR-k filter fitted in closed form on separate trajectories;
- :class:`FiniteDifferenceOrganism`: ω0 from finite differences of the last 3 states, then the exact step;
- :class:`ContextBlindOrganism`: the exact step of one fixed ω0 (the prior mean), whatever the context.

At a position with fewer than k states before it, an organism uses the states it has (least squares
and the AR filters the shorter window; finite differences, with fewer than 3, the prior ω0), as a
transformer with an attention window of k would.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor
from transformer_lens.hook_points import HookPoint
from transformer_lens.HookedRootModule import HookedRootModule

from physlens._validation import check_nonnegative_int, check_positive_float, check_positive_int
from physlens.models.linear import LinearAutoregressive
from physlens.systems.oscillator import STATE_DIM, OscillatorSystem, check_underdamped, least_squares_map, propagator
from physlens.systems.params import Choice, Fixed, ParamSpec, Uniform


def check_noise(name: str, value: Any) -> float:
    """Return ``value`` as a float, or raise unless it is a finite number >= 0 (a relative noise size)."""
    if isinstance(value, (str, bytes, bool)):
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}") from None
    if not math.isfinite(number) or number < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return number


def observation_scale(states: Float[Tensor, "batch pos 2"]) -> Float[Tensor, " batch"]:
    """Each sequence's root-mean-square state component: the unit in which observation noise is sized.

    Noise of relative size σ has standard deviation σ · scale on every component, so σ means the same
    to a trajectory of energy 0.01 as to one of energy 1.
    """
    if states.ndim != 3 or states.shape[-1] != STATE_DIM:
        raise ValueError(f"states must have shape [batch, pos, 2], got {list(states.shape)}")
    return states.pow(2).mean(dim=(1, 2)).sqrt()


def add_observation_noise(
    states: Float[Tensor, "batch pos 2"], sigma: float, generator: torch.Generator
) -> Float[Tensor, "batch pos 2"]:
    """``states`` plus Gaussian noise of standard deviation ``sigma`` · :func:`observation_scale` on every
    component, drawn in float64 from ``generator`` and returned in the dtype of ``states``."""
    sigma = check_noise("sigma", sigma)
    if sigma == 0:
        return states
    states64 = states.to(torch.float64)
    draw = torch.randn(states.shape, generator=generator, dtype=torch.float64, device=generator.device).to(states.device)
    return (states64 + sigma * observation_scale(states64)[:, None, None] * draw).to(states.dtype)


def spec_mean(spec: ParamSpec) -> float:
    """The mean of a per-trajectory parameter spec (the value a context-blind predictor should assume)."""
    if isinstance(spec, Fixed):
        return float(spec.value)
    if isinstance(spec, Uniform):
        return 0.5 * (float(spec.low) + float(spec.high))
    if isinstance(spec, Choice):
        return float(sum(spec.values)) / len(spec.values)
    raise TypeError(f"spec must be Fixed, Uniform or Choice, got {type(spec).__name__}")


@dataclass(frozen=True)
class OrganismConfig:
    """What the analyses read off a model: its context length and the time step it assumes."""

    n_ctx: int = 40  # longest sequence the organism accepts (as a transformer's n_ctx)
    dt: float = 0.1  # time step between states


class Organism(HookedRootModule):
    """Base of the organisms: input checks, float64 computation, seeded observation noise and hooks.

    ``hook_observed`` holds the states as the organism sees them (after its own observation noise);
    organisms that step with a one-step map expose it at ``hook_kernel`` ``[batch, pos, 2, 2]``.
    Subclasses implement :meth:`predict_clean` on the observed float64 states.
    """

    family: str = "organism"

    def __init__(self, *, noise: float = 0.0, seed: int = 0, n_ctx: int = 40, dt: float = 0.1) -> None:
        super().__init__()
        self.cfg = OrganismConfig(n_ctx=check_positive_int("n_ctx", n_ctx), dt=check_positive_float("dt", dt))
        self.noise = check_noise("noise", noise)  # observation noise, relative to observation_scale
        self.seed = check_nonnegative_int("seed", seed)
        self._generator = torch.Generator().manual_seed(self.seed)
        self.hook_observed = HookPoint()  # [batch, pos, 2]

    @property
    def window(self) -> int | None:
        """How many states the prediction at a position reads (None: not a fixed number)."""
        return None

    def forward(self, states: Float[Tensor, "batch pos 2"]) -> Float[Tensor, "batch pos 2"]:
        """The predicted next state at every position, in the dtype of ``states``."""
        if states.ndim != 3 or states.shape[-1] != STATE_DIM:
            raise ValueError(f"states must have shape [batch, pos, 2], got {list(states.shape)}")
        if not 1 <= states.shape[1] <= self.cfg.n_ctx:
            raise ValueError(f"states has {states.shape[1]} positions but the organism's context n_ctx is {self.cfg.n_ctx}")
        observed = add_observation_noise(states.to(torch.float64), self.noise, self._generator)
        observed = self.hook_observed(observed.clone())  # never the caller's tensor: a hook may edit it in place
        return self.predict_clean(observed).to(states.dtype)

    def predict_clean(self, states: Float[Tensor, "batch pos 2"]) -> Float[Tensor, "batch pos 2"]:
        """The prediction at every position from the (already noisy) float64 states."""
        raise NotImplementedError

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready description."""
        return {"family": self.family, "window": self.window, "noise": self.noise, "seed": self.seed,
                "n_ctx": self.cfg.n_ctx, "dt": self.cfg.dt}


def _step(kernel: Tensor, states: Tensor) -> Tensor:
    return torch.einsum("bpij,bpj->bpi", kernel, states)


def _check_window(window: Any, n_ctx: int, minimum: int) -> int:
    window = check_positive_int("window", window)
    if window < minimum:
        raise ValueError(f"window must be >= {minimum}, got {window}")
    if window > n_ctx:
        raise ValueError(f"window must be <= the context n_ctx={n_ctx}, got {window}")
    return window


class LeastSquaresOrganism(Organism):
    """In-context least squares over the last ``window`` states: fit K with s_{j+1} ≈ K s_j on them, then step.

    With ``noise`` > 0 the organism observes every state with independent Gaussian noise of that relative
    size (fresh at every call, from a generator seeded with ``seed``). Noiseless and with ``window`` ≥ 3
    it is exact: its predictions are the true next states to round-off.
    """

    family = "least squares"

    def __init__(self, window: int, *, noise: float = 0.0, seed: int = 0, n_ctx: int = 40, dt: float = 0.1) -> None:
        super().__init__(noise=noise, seed=seed, n_ctx=n_ctx, dt=dt)
        self._window = _check_window(window, self.cfg.n_ctx, 2)
        self.hook_kernel = HookPoint()  # [batch, pos, 2, 2]
        self.setup()

    @property
    def window(self) -> int:
        """How many states the least-squares fit at a position reads."""
        return self._window

    def predict_clean(self, states: Float[Tensor, "batch pos 2"]) -> Float[Tensor, "batch pos 2"]:
        """Least squares over the window ending at every position (shorter at the start), then the step."""
        n_pos, k = states.shape[1], self._window
        index = torch.arange(n_pos)[:, None] - (k - 1) + torch.arange(k)[None, :]  # [pos, k] state of each window slot
        windows = states[:, index.clamp_min(0)]  # [batch, pos, k, 2]
        # A transition counts only if both of its states exist; zero rows leave the (minimum-norm) fit unchanged.
        valid = (index[:, :-1] >= 0).to(states.dtype)[None, :, :, None]  # [1, pos, k-1, 1]
        current, following = windows[:, :, :-1] * valid, windows[:, :, 1:] * valid
        kernel = least_squares_map(current, following)  # [batch, pos, 2, 2]
        kernel = self.hook_kernel(kernel)
        return _step(kernel, states)


class FiniteDifferenceOrganism(Organism):
    """ω0 from central finite differences of the last 3 states, then the exact step with that ω0 and the known γ.

    With s = s_{t−1}, D1 = (s_t − s_{t−2})/2Δt and D2 = (s_t − 2s_{t−1} + s_{t−2})/Δt², both components obey
    y'' + 2γy' + ω0²y = 0, so ω0² ≈ −⟨D2 + 2γ D1, s⟩/⟨s, s⟩ (biased low by about (ω0Δt)²/12 for the
    second difference). Positions with fewer than 3 states step with ``omega0_prior``. Estimates at or
    below γ are raised just above it, so the step stays an underdamped rotation.
    """

    family = "finite differences"

    def __init__(self, gamma: float, omega0_prior: float, *, noise: float = 0.0, seed: int = 0, n_ctx: int = 40,
                 dt: float = 0.1) -> None:
        super().__init__(noise=noise, seed=seed, n_ctx=n_ctx, dt=dt)
        check_underdamped(omega0_prior, gamma)
        self.gamma = float(gamma)
        self.omega0_prior = float(omega0_prior)
        self.hook_omega0 = HookPoint()  # [batch, pos]
        self.hook_kernel = HookPoint()  # [batch, pos, 2, 2]
        self.setup()

    @classmethod
    def from_system(cls, system: OscillatorSystem, **kwargs: Any) -> FiniteDifferenceOrganism:
        """The organism for ``system``: γ and the prior ω0 are the means of its specs."""
        return cls(spec_mean(system.gamma), spec_mean(system.omega0), dt=system.dt, **kwargs)

    @property
    def window(self) -> int:
        """The estimate reads the last 3 states."""
        return 3

    def estimate_omega0(self, states: Float[Tensor, "batch pos 2"]) -> Float[Tensor, "batch pos"]:
        """The finite-difference ω0 at every position (the prior where fewer than 3 states exist)."""
        dt, gamma = self.cfg.dt, self.gamma
        omega0 = torch.full(states.shape[:2], self.omega0_prior, dtype=states.dtype, device=states.device)
        if states.shape[1] >= 3:
            before, middle, after = states[:, :-2], states[:, 1:-1], states[:, 2:]
            first = (after - before) / (2 * dt)
            second = (after - 2 * middle + before) / dt**2
            norm = middle.pow(2).sum(-1)
            squared = -((second + 2 * gamma * first) * middle).sum(-1) / norm
            floor = (gamma * (1 + 1e-6) + 1e-9) ** 2
            estimate = squared.clamp_min(floor).sqrt()
            omega0[:, 2:] = torch.where(norm > 0, estimate, omega0[:, 2:])
        return omega0

    def predict_clean(self, states: Float[Tensor, "batch pos 2"]) -> Float[Tensor, "batch pos 2"]:
        """The finite-difference ω0 at every position, then the exact step of the last state."""
        omega0 = self.hook_omega0(self.estimate_omega0(states))
        kernel = self.hook_kernel(propagator(omega0, torch.full_like(omega0, self.gamma), self.cfg.dt))
        return _step(kernel, states)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready description."""
        return {**super().to_dict(), "gamma": self.gamma, "omega0_prior": self.omega0_prior}


class ContextBlindOrganism(Organism):
    """The exact step of one fixed ``omega0`` and ``gamma`` for every trajectory: it never reads the context.

    The null organism: with ``omega0`` the prior mean it is the best a predictor can do without
    inferring anything, and no analysis should find an in-context algorithm in it.
    """

    family = "context-blind"

    def __init__(self, omega0: float, gamma: float, *, noise: float = 0.0, seed: int = 0, n_ctx: int = 40,
                 dt: float = 0.1) -> None:
        super().__init__(noise=noise, seed=seed, n_ctx=n_ctx, dt=dt)
        check_underdamped(omega0, gamma)
        self.omega0, self.gamma = float(omega0), float(gamma)
        self.register_buffer("kernel", propagator(self.omega0, self.gamma, self.cfg.dt).to(torch.float64), persistent=False)
        self.hook_kernel = HookPoint()  # [batch, pos, 2, 2]
        self.setup()

    @classmethod
    def from_system(cls, system: OscillatorSystem, **kwargs: Any) -> ContextBlindOrganism:
        """The organism that steps every trajectory of ``system`` with the means of its ω0 and γ specs."""
        return cls(spec_mean(system.omega0), spec_mean(system.gamma), dt=system.dt, **kwargs)

    @property
    def window(self) -> int:
        """The step reads the current state only."""
        return 1

    def predict_clean(self, states: Float[Tensor, "batch pos 2"]) -> Float[Tensor, "batch pos 2"]:
        """The fixed map applied at every position."""
        kernel = self.hook_kernel(self.kernel.to(states).expand(*states.shape[:2], STATE_DIM, STATE_DIM).clone())
        return _step(kernel, states)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready description."""
        return {**super().to_dict(), "omega0": self.omega0, "gamma": self.gamma}


AR_TRAINING_STEPS = 60
"""Length of the trajectories every AR filter is fitted on (a 40-state context plus 20 windows): the same
for every window length, because a filter's weights in directions the data barely spans — which decide
how it amplifies noise — depend on the distribution of windows it was fitted to."""


def fit_ar_filters(system: OscillatorSystem, window: int, *, seed: int, n_traj: int = 256,
                   n_steps: int = AR_TRAINING_STEPS) -> dict[int, LinearAutoregressive]:
    """Closed-form float64 AR-j filters for every j = 1 … ``window``, all fitted on one draw of ``n_traj``
    fresh trajectories of ``n_steps`` states of ``system`` from ``seed`` (every window of every trajectory)."""
    window = check_positive_int("window", window)
    n_steps = check_positive_int("n_steps", n_steps)
    if n_steps <= window:
        raise ValueError(f"n_steps must exceed the longest window ({window}) to leave a target, got {n_steps}")
    train = OscillatorSystem(**{**system.to_dict(), "dtype": "float64", "device": "cpu"}).sample(
        check_positive_int("n_traj", n_traj), n_steps, seed=seed)
    return {j: LinearAutoregressive(window=j).fit(train.states) for j in range(1, window + 1)}


class ARFilterOrganism(Organism):
    """The fitted linear AR-k filter: the next state as a fixed linear function of the last ``window`` states.

    ``filters`` maps every window length j = 1 … ``window`` to a fitted :class:`LinearAutoregressive`
    (:func:`fit_ar_filters`); position t uses the AR-min(t+1, window) filter. The weights are the same
    whatever the context: nothing is inferred in context.
    """

    family = "AR"

    def __init__(self, filters: Mapping[int, LinearAutoregressive], window: int, *, noise: float = 0.0, seed: int = 0,
                 n_ctx: int = 40, dt: float = 0.1) -> None:
        super().__init__(noise=noise, seed=seed, n_ctx=n_ctx, dt=dt)
        self._window = _check_window(window, self.cfg.n_ctx, 1)
        missing = [j for j in range(1, self._window + 1) if j not in filters]
        if missing:
            raise ValueError(f"filters lack the AR fits for window lengths {missing} (see fit_ar_filters)")
        self.filters = {j: filters[j] for j in range(1, self._window + 1)}
        self.setup()

    @classmethod
    def fit(cls, system: OscillatorSystem, window: int, *, fit_seed: int, n_traj: int = 256, **kwargs: Any) -> ARFilterOrganism:
        """Fit the filters on ``n_traj`` fresh trajectories of ``system`` drawn from ``fit_seed``, then build the organism."""
        return cls(fit_ar_filters(system, window, seed=fit_seed, n_traj=n_traj), window, dt=system.dt, **kwargs)

    @property
    def window(self) -> int:
        """How many states the filter reads."""
        return self._window

    def predict_clean(self, states: Float[Tensor, "batch pos 2"]) -> Float[Tensor, "batch pos 2"]:
        """AR-min(t+1, window) at every position t."""
        n_pos, k = states.shape[1], self._window
        out = torch.empty_like(states)
        for j in range(1, min(k, n_pos + 1)):  # positions 0 … k−2 have only j = position + 1 states
            out[:, j - 1] = self.filters[j](states[:, :j])[:, -1]
        if n_pos >= k:
            out[:, k - 1 :] = self.filters[k](states)
        return out


class BlendOrganism(Organism):
    """The weighted average ``weight · first + (1 − weight) · second`` of two predictors' predictions.

    An algorithm that is none of the candidates — least squares over 5 states averaged with least squares
    over 20 steps with neither's estimate of the map — is the organism on which an algorithm comparison
    should name nothing.
    """

    family = "blend"

    def __init__(self, first: Organism, second: Organism, weight: float = 0.5, *, n_ctx: int = 40, dt: float = 0.1) -> None:
        super().__init__(n_ctx=n_ctx, dt=dt)
        weight = check_noise("weight", weight)
        if weight > 1:
            raise ValueError(f"weight must lie in [0, 1], got {weight!r}")
        self.first, self.second, self.weight = first, second, weight
        self.setup()

    def predict_clean(self, states: Float[Tensor, "batch pos 2"]) -> Float[Tensor, "batch pos 2"]:
        """The weighted average of the two predictions."""
        return self.weight * self.first(states) + (1 - self.weight) * self.second(states)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready description, with both parts."""
        return {**super().to_dict(), "weight": self.weight, "first": self.first.to_dict(), "second": self.second.to_dict()}


__all__ = [
    "AR_TRAINING_STEPS",
    "ARFilterOrganism",
    "BlendOrganism",
    "ContextBlindOrganism",
    "FiniteDifferenceOrganism",
    "LeastSquaresOrganism",
    "Organism",
    "OrganismConfig",
    "add_observation_noise",
    "check_noise",
    "fit_ar_filters",
    "observation_scale",
    "spec_mean",
]
