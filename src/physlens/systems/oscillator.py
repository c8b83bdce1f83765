"""The damped harmonic oscillator (m = 1): exact propagator, energy, and labelled trajectories.

ẋ = p, ṗ = −ω0² x − 2γ p, underdamped (0 ≤ γ < ω0). States are (x, p); every trajectory carries
its physical labels (ω0, γ, Ω = √(ω0² − γ²), energy at every step) for probes downstream.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from jaxtyping import Float
from torch import Tensor

from physlens._validation import (
    check_bool,
    check_choice,
    check_finite,
    check_nonnegative_int,
    check_positive_float,
    check_positive_int,
    check_shape,
    resolve_dtype,
)
from physlens.systems.base import moved_copy
from physlens.systems.params import ParamSpec, as_param_spec, spec_to_json

STATE_DIM = 2  # (x, p)

LABEL_NAMES = (
    "omega0", "gamma", "Omega", "energy", "omega0_sq", "cos_Omega_dt", "damping_factor",
    "acceleration", "omega0_sq_x", "gamma_p",
)
"""Targets a probe can ask for: the parameters, the parametrisations the propagator uses, and the
per-step terms of the update (the acceleration ẍ = −ω0² x − 2γ p and its two products)."""

LABEL_DEGREE = {"energy": 2, "acceleration": 1, "omega0_sq_x": 1, "gamma_p": 1}
"""How each label scales with the states: multiplying every state by λ multiplies the label by
λ^degree (labels not listed depend on the parameters only, degree 0). A scale-equivariant model
sees states in units of a reference size, so its activations carry a label divided by that size
to this power."""

EVEN_LABELS = frozenset({"omega0", "gamma", "Omega", "energy", "omega0_sq", "cos_Omega_dt", "damping_factor"})
"""Labels unchanged when every state flips sign (s → −s): a readout that is odd in the states
cannot decode them. The remaining labels (acceleration and its products) flip sign with s."""


def _as_tensor(name: str, value: Tensor | float, dtype: torch.dtype | None = None) -> Tensor:
    tensor = value if isinstance(value, Tensor) else torch.as_tensor(value, dtype=dtype or torch.float64)
    if not tensor.is_floating_point():
        tensor = tensor.to(torch.float64)
    check_finite(name, tensor)
    return tensor


def check_underdamped(omega0: Tensor | float, gamma: Tensor | float) -> None:
    """Raise unless every pair satisfies ω0 > 0 and 0 ≤ γ < ω0 (the underdamped regime)."""
    omega0_t = _as_tensor("omega0", omega0)
    gamma_t = _as_tensor("gamma", gamma)
    if bool((omega0_t <= 0).any()):
        raise ValueError(f"omega0 must be > 0, got min {float(omega0_t.min()):g}")
    if bool((gamma_t < 0).any()):
        raise ValueError(f"gamma must be >= 0 (no negative damping), got min {float(gamma_t.min()):g}")
    omega0_b, gamma_b = torch.broadcast_tensors(omega0_t.to(torch.float64), gamma_t.to(torch.float64))
    if bool((gamma_b >= omega0_b).any()):
        worst = int(torch.argmax(gamma_b - omega0_b))
        raise ValueError(
            "the oscillator must be underdamped (gamma < omega0); got gamma="
            f"{float(gamma_b.flatten()[worst]):g} >= omega0={float(omega0_b.flatten()[worst]):g}"
        )


def damped_frequency(omega0: Tensor | float, gamma: Tensor | float) -> Tensor:
    """Ω = √(ω0² − γ²), the frequency of the underdamped oscillation."""
    check_underdamped(omega0, gamma)
    omega0_t, gamma_t = _as_tensor("omega0", omega0), _as_tensor("gamma", gamma)
    return torch.sqrt(omega0_t**2 - gamma_t**2)


def propagator(
    omega0: Tensor | float, gamma: Tensor | float, dt: Tensor | float
) -> Float[Tensor, "*batch 2 2"]:
    """The exact one-step map K with (x, p)(t + dt) = K (x, p)(t), batched over broadcast inputs.

    K = e^{−γ dt} [[cos Ω dt + (γ/Ω) sin Ω dt, (1/Ω) sin Ω dt],
                   [−(ω0²/Ω) sin Ω dt,          cos Ω dt − (γ/Ω) sin Ω dt]]
    which equals ``expm(A dt)`` for A = [[0, 1], [−ω0², −2γ]]. ``dt`` may be any positive time.
    """
    omega0_t, gamma_t, dt_t = (_as_tensor(n, v) for n, v in (("omega0", omega0), ("gamma", gamma), ("dt", dt)))
    if bool((dt_t <= 0).any()):
        raise ValueError(f"dt must be > 0, got min {float(dt_t.min()):g}")
    check_underdamped(omega0_t, gamma_t)
    dtype = torch.promote_types(torch.promote_types(omega0_t.dtype, gamma_t.dtype), dt_t.dtype)
    omega0_t, gamma_t, dt_t = torch.broadcast_tensors(omega0_t.to(dtype), gamma_t.to(dtype), dt_t.to(dtype))
    omega = torch.sqrt(omega0_t**2 - gamma_t**2)
    cos, sin = torch.cos(omega * dt_t), torch.sin(omega * dt_t)
    decay = torch.exp(-gamma_t * dt_t)
    row0 = torch.stack([cos + gamma_t / omega * sin, sin / omega], dim=-1)
    row1 = torch.stack([-(omega0_t**2) / omega * sin, cos - gamma_t / omega * sin], dim=-1)
    return decay[..., None, None] * torch.stack([row0, row1], dim=-2)


def energy(states: Float[Tensor, "*batch 2"], omega0: Tensor | float) -> Float[Tensor, "*batch"]:
    """E = ½ (p² + ω0² x²). ``omega0`` broadcasts against the leading dims of ``states``."""
    if states.shape[-1] != STATE_DIM:
        raise ValueError(f"states must have a last dimension of 2 (x, p), got shape {list(states.shape)}")
    omega0_t = torch.as_tensor(omega0, dtype=states.dtype, device=states.device)
    return 0.5 * (states[..., 1] ** 2 + omega0_t**2 * states[..., 0] ** 2)


@dataclass
class Trajectories:
    """A batch of oscillator trajectories with their labels.

    ``states[i, k]`` is (x, p) of trajectory ``i`` at time ``k·dt``; ``omega0`` and ``gamma`` hold
    one value per trajectory. States must be finite and every oscillator underdamped (ω0 > 0,
    0 ≤ γ < ω0), as the labels (Ω = √(ω0² − γ²)) and the propagator assume.
    """

    states: Float[Tensor, "traj step 2"]
    omega0: Float[Tensor, " traj"]
    gamma: Float[Tensor, " traj"]
    dt: float

    def __post_init__(self) -> None:
        check_shape("states", self.states, (None, None, STATE_DIM), "[traj, step, 2]")
        n = self.states.shape[0]
        check_shape("omega0", self.omega0, (n,), f"[{n}] (one value per trajectory)")
        check_shape("gamma", self.gamma, (n,), f"[{n}] (one value per trajectory)")
        check_finite("states", self.states)
        check_underdamped(self.omega0, self.gamma)  # finite, ω0 > 0 and 0 ≤ γ < ω0: the labels assume it
        check_positive_float("dt", self.dt)

    def __len__(self) -> int:
        return self.states.shape[0]

    @property
    def n_steps(self) -> int:
        """Number of time steps stored per trajectory."""
        return self.states.shape[1]

    @property
    def Omega(self) -> Float[Tensor, " traj"]:  # noqa: N802 - the physics symbol
        """Damped frequency Ω = √(ω0² − γ²) per trajectory."""
        return torch.sqrt(self.omega0**2 - self.gamma**2)

    @property
    def energy(self) -> Float[Tensor, "traj step"]:
        """Energy at every step."""
        return energy(self.states, self.omega0[:, None])

    def labels(self, *, first_state_units: bool = False) -> dict[str, Tensor]:
        """Every label in :data:`LABEL_NAMES`: per trajectory ``[traj]``, or per step ``[traj, step]``
        for ``energy``, ``acceleration`` (ẍ = −ω0² x − 2γ p), ``omega0_sq_x`` (ω0² x) and ``gamma_p`` (γ p).

        ``first_state_units=True`` measures the labels that scale with the states in units of each
        trajectory's first state's norm ‖s_0‖ — divided by ‖s_0‖^degree (:data:`LABEL_DEGREE`: the
        energy by ‖s_0‖², the others by ‖s_0‖) — as a ``scale_by_first_state`` model sees them. Labels
        of the dynamics (ω0, γ, …) do not scale and are unchanged."""
        labels = self._labels()
        if not check_bool("first_state_units", first_state_units):
            return labels
        size = torch.linalg.vector_norm(self.states[:, 0], dim=-1)
        if bool((size == 0).any()):
            raise ValueError("first_state_units=True needs every trajectory to start away from the origin; "
                             f"{int((size == 0).sum())} start at (0, 0)")
        for name, degree in LABEL_DEGREE.items():
            labels[name] = labels[name] / size.reshape(-1, *([1] * (labels[name].ndim - 1))) ** degree
        return labels

    def _labels(self) -> dict[str, Tensor]:
        omega = self.Omega
        x, p = self.states[..., 0], self.states[..., 1]
        omega0_sq_x = self.omega0[:, None] ** 2 * x
        gamma_p = self.gamma[:, None] * p
        return {
            "omega0": self.omega0,
            "gamma": self.gamma,
            "Omega": omega,
            "energy": self.energy,
            "omega0_sq": self.omega0**2,
            "cos_Omega_dt": torch.cos(omega * self.dt),
            "damping_factor": torch.exp(-self.gamma * self.dt),
            "acceleration": -(omega0_sq_x + 2 * gamma_p),
            "omega0_sq_x": omega0_sq_x,
            "gamma_p": gamma_p,
        }

    def subset(self, index: Tensor | slice) -> Trajectories:
        """The trajectories selected by ``index`` (a slice, a boolean mask or integer indices)."""
        return Trajectories(self.states[index], self.omega0[index], self.gamma[index], self.dt)

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> Trajectories:
        """A copy on ``device`` and/or in ``dtype``."""
        return Trajectories(
            self.states.to(device=device, dtype=dtype),
            self.omega0.to(device=device, dtype=dtype),
            self.gamma.to(device=device, dtype=dtype),
            self.dt,
        )

    def inputs_targets(self) -> tuple[Float[Tensor, "traj pos 2"], Float[Tensor, "traj pos 2"]]:
        """Next-step pairs: inputs ``states[:, :-1]`` and targets ``states[:, 1:]``."""
        if self.n_steps < 2:
            raise ValueError("trajectories need at least 2 steps to form next-step targets")
        return self.states[:, :-1], self.states[:, 1:]


def _check_states(states: Tensor, minimum: int) -> None:
    if states.ndim != 3 or states.shape[-1] != STATE_DIM:
        raise ValueError(f"states must have shape [batch, pos, 2], got {list(states.shape)}")
    if states.shape[1] < minimum:
        raise ValueError(f"states must hold at least {minimum} position(s), got {states.shape[1]}")


class ExactStep:
    """The oracle: the exact propagator of each trajectory's own ω0 and γ applied to its last state.

    ``omega0`` and ``gamma`` hold one value per trajectory of the batch it will be called on.
    """

    def __init__(self, omega0: Float[Tensor, " batch"], gamma: Float[Tensor, " batch"], dt: float) -> None:
        omega0, gamma = torch.as_tensor(omega0, dtype=torch.float64), torch.as_tensor(gamma, dtype=torch.float64)
        if omega0.ndim != 1 or omega0.shape != gamma.shape:
            raise ValueError(f"omega0 and gamma must be one value per trajectory [batch], got {list(omega0.shape)} and {list(gamma.shape)}")
        check_underdamped(omega0, gamma)
        self.kernel = propagator(omega0, gamma, check_positive_float("dt", dt))  # [batch, 2, 2]

    def __call__(self, states: Float[Tensor, "batch pos 2"]) -> Float[Tensor, "batch 1 2"]:
        """The exact next state after ``states[:, -1]``."""
        _check_states(states, 1)
        if states.shape[0] != self.kernel.shape[0]:
            raise ValueError(f"states has {states.shape[0]} trajectories but the oracle holds parameters for {self.kernel.shape[0]}")
        kernel = self.kernel.to(device=states.device, dtype=states.dtype)
        return torch.einsum("bij,bj->bi", kernel, states[:, -1])[:, None]


def _check_energy_range(name: str, energy_range: tuple[float, ...]) -> tuple[float, float]:
    if len(energy_range) != 2:
        raise ValueError(f"{name} must be a pair (low, high), got {energy_range!r}")
    low, high = (float(v) for v in energy_range)
    if not (math.isfinite(low) and math.isfinite(high)) or low < 0 or high <= low:
        raise ValueError(f"{name} must satisfy 0 <= low < high (finite), got {energy_range!r}")
    return (low, high)


@dataclass
class OscillatorSystem:
    """A family of damped oscillators to sample labelled trajectories from.

    Parameters are drawn per trajectory from their specs (a number, :class:`~physlens.systems.Uniform`
    or :class:`~physlens.systems.Choice`); initial states are drawn with energy uniform in
    ``energy_range`` and a uniform phase.
    """

    omega0: ParamSpec | float | dict[str, Any] = 2.0  # natural frequency spec
    gamma: ParamSpec | float | dict[str, Any] = 0.1  # damping rate spec (must stay < omega0)
    dt: float = 0.1  # time step between stored states
    energy_range: tuple[float, float] | list[float] = (0.0, 1.0)  # initial energies for training (a list from JSON/TOML; kept as a tuple)
    dtype: str = "float32"  # dtype of the sampled states ("float64" for exact work)
    device: str = "cpu"  # where sampled tensors live
    _omega0: ParamSpec = field(init=False, repr=False)
    _gamma: ParamSpec = field(init=False, repr=False)
    state_dim: ClassVar[int] = STATE_DIM  # (x, p)

    def __post_init__(self) -> None:
        self._omega0 = as_param_spec("omega0", self.omega0)
        self._gamma = as_param_spec("gamma", self.gamma)
        self.omega0, self.gamma = self._omega0, self._gamma
        self.dt = check_positive_float("dt", self.dt)
        self.energy_range = _check_energy_range("energy_range", tuple(self.energy_range))
        resolve_dtype(self.dtype)
        omega_low, _ = self._omega0.bounds
        _, gamma_high = self._gamma.bounds
        if omega_low <= 0:
            raise ValueError(f"omega0 must be > 0 for every trajectory, its spec allows {omega_low:g}")
        if self._gamma.bounds[0] < 0:
            raise ValueError(f"gamma must be >= 0 for every trajectory, its spec allows {self._gamma.bounds[0]:g}")
        if gamma_high >= omega_low:
            raise ValueError(
                "the oscillator must be underdamped (gamma < omega0) for every trajectory: the gamma spec "
                f"reaches {gamma_high:g} but omega0 can be as low as {omega_low:g}"
            )

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready description, readable back with ``OscillatorSystem(**d)``."""
        return {
            "omega0": spec_to_json(self._omega0),
            "gamma": spec_to_json(self._gamma),
            "dt": self.dt,
            "energy_range": list(self.energy_range),
            "dtype": self.dtype,
            "device": self.device,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> OscillatorSystem:
        """The system :meth:`to_dict` described (``energy_range`` may be a list, as JSON gives it)."""
        options = dict(data)
        if "energy_range" in options:
            options["energy_range"] = tuple(options["energy_range"])
        return cls(**options)

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | str | None = None) -> OscillatorSystem:
        """The same family of oscillators sampled on ``device`` and/or in ``dtype``: identical draws for the same seed."""
        return moved_copy(self, device, dtype)

    def exact_predictor(self, trajectories: Trajectories) -> ExactStep:
        """The oracle for ``trajectories``: each one's exact propagator applied to its last state."""
        return ExactStep(trajectories.omega0, trajectories.gamma, trajectories.dt)

    def sample(
        self,
        n_traj: int,
        n_steps: int,
        *,
        seed: int | None = None,
        generator: torch.Generator | None = None,
        energy_range: Sequence[float] | None = None,
    ) -> Trajectories:
        """Draw ``n_traj`` trajectories of ``n_steps`` states each, computed with the exact propagator.

        Pass ``seed`` or a ``generator`` (exactly one) so that every draw is reproducible.
        ``energy_range`` overrides the training range, e.g. for out-of-distribution evaluation.
        """
        n_traj = check_positive_int("n_traj", n_traj)
        n_steps = check_positive_int("n_steps", n_steps)
        generator = _generator(seed, generator)
        low, high = _check_energy_range("energy_range", tuple(energy_range or self.energy_range))
        dtype = resolve_dtype(self.dtype)
        sample = dict(generator=generator, dtype=torch.float64, device="cpu")
        omega0 = self._omega0.sample(n_traj, **sample)
        gamma = self._gamma.sample(n_traj, **sample)
        gen_device = generator.device
        e0 = low + (high - low) * torch.rand(n_traj, generator=generator, dtype=torch.float64, device=gen_device)
        phase = 2 * math.pi * torch.rand(n_traj, generator=generator, dtype=torch.float64, device=gen_device)
        e0, phase = e0.cpu(), phase.cpu()
        x0 = torch.sqrt(2 * e0) / omega0 * torch.cos(phase)
        p0 = torch.sqrt(2 * e0) * torch.sin(phase)
        initial = torch.stack([x0, p0], dim=-1)  # [traj, 2]
        states = evolve(initial, omega0, gamma, self.dt, n_steps)
        traj = Trajectories(states, omega0, gamma, self.dt)
        return traj.to(device=self.device, dtype=dtype)

    def sample_swap_pairs(
        self,
        n_pairs: int,
        n_steps: int,
        *,
        seed: int,
        vary: str = "omega0",
        min_change: float = 0.5,
        match_first_norm: bool = False,
        max_tries: int = 1000,
    ) -> tuple[Trajectories, Trajectories]:
        """Pairs of contexts that end in the same state but come from different ``vary`` (ω0 or γ).

        Context ``a`` is an ordinary draw; context ``b`` runs backwards from ``a``'s final state under
        a second value of ``vary`` drawn from the system's spec at least ``min_change`` away. A pair is
        redrawn until both contexts start with an energy inside the training ``energy_range``, so both
        look like training data. Because the final states agree, a model's outputs can differ only
        through what it inferred from the earlier states: the context-swap test and ω0 patching rely on it.

        ``match_first_norm=True`` also gives both contexts first states of the same norm, for models
        that measure states in units of their first state's size (``scale_by_first_state``): their
        blocks then see the same final state too. The shared final state is drawn on the directions
        where the two backward maps stretch equally (a pair of ω values without such a direction is
        redrawn), with context ``a``'s starting energy uniform in ``energy_range``.
        """
        check_choice("vary", vary, ("omega0", "gamma"))
        n_pairs = check_positive_int("n_pairs", n_pairs)
        n_steps = check_positive_int("n_steps", n_steps)
        if n_steps < 2:
            raise ValueError(f"n_steps must be >= 2 for contexts that differ before their shared final state, got {n_steps}")
        min_change = check_positive_float("min_change", min_change)
        spec = self._omega0 if vary == "omega0" else self._gamma
        low, high = spec.bounds
        if high - low < min_change:
            raise ValueError(
                f"vary={vary!r} needs a system whose {vary} varies by at least min_change={min_change:g}, "
                f"but its spec spans [{low:g}, {high:g}]: a swap test asks how outputs move with {vary}"
            )
        generator = torch.Generator().manual_seed(check_nonnegative_int("seed", seed))
        e_low, e_high = self.energy_range
        a_states = torch.empty(n_pairs, n_steps, STATE_DIM, dtype=torch.float64)
        b_states = torch.empty_like(a_states)
        params = {name: torch.empty(n_pairs, 2, dtype=torch.float64) for name in ("omega0", "gamma")}
        todo = torch.arange(n_pairs)
        for _ in range(max_tries):
            draw = self.sample(len(todo), n_steps, generator=generator).to(dtype=torch.float64, device="cpu")
            other = draw.omega0 if vary == "omega0" else draw.gamma
            swapped = spec.sample(len(todo), generator=generator, dtype=torch.float64, device="cpu")
            omega0_b = swapped if vary == "omega0" else draw.omega0
            gamma_b = swapped if vary == "gamma" else draw.gamma
            ok = (swapped - other).abs() >= min_change
            if match_first_norm:
                final, equal = _equal_stretch_finals(draw, omega0_b, gamma_b, n_steps, self.energy_range, generator)
                ok &= equal
                draw = Trajectories(evolve_backward(final, draw.omega0, draw.gamma, draw.dt, n_steps), draw.omega0, draw.gamma, draw.dt)
            context_b = evolve_backward(draw.states[:, -1], omega0_b, gamma_b, draw.dt, n_steps)
            start_energy = energy(context_b[:, 0], omega0_b)
            ok &= (start_energy >= e_low) & (start_energy <= e_high)
            kept, todo_kept = ok.nonzero().squeeze(1), todo[ok]
            a_states[todo_kept], b_states[todo_kept] = draw.states[kept], context_b[kept]
            params["omega0"][todo_kept] = torch.stack([draw.omega0[kept], omega0_b[kept]], dim=1)
            params["gamma"][todo_kept] = torch.stack([draw.gamma[kept], gamma_b[kept]], dim=1)
            todo = todo[~ok]
            if len(todo) == 0:
                break
        else:
            raise ValueError(
                f"could not draw {n_pairs} swap pairs in {max_tries} tries: {len(todo)} still need a {vary} at least "
                f"min_change={min_change:g} away whose context starts inside energy_range {self.energy_range}; "
                "lower min_change or widen the spec"
            )
        dtype = resolve_dtype(self.dtype)
        a = Trajectories(a_states, params["omega0"][:, 0], params["gamma"][:, 0], self.dt)
        b = Trajectories(b_states, params["omega0"][:, 1], params["gamma"][:, 1], self.dt)
        return a.to(device=self.device, dtype=dtype), b.to(device=self.device, dtype=dtype)

    def batches(
        self, batch_size: int, n_steps: int, *, seed: int | None = None, generator: torch.Generator | None = None
    ) -> Iterator[Trajectories]:
        """An endless stream of fresh batches from one seeded generator (no fixed dataset)."""
        generator = _generator(seed, generator)
        while True:
            yield self.sample(batch_size, n_steps, generator=generator)


def _equal_stretch_finals(
    draw: Trajectories, omega0_b: Tensor, gamma_b: Tensor, n_steps: int, energy_range: Sequence[float],
    generator: torch.Generator,
) -> tuple[Tensor, Tensor]:
    """Final states s with ‖A_a s‖ = ‖A_b s‖ for the two backward maps A = K(−(n_steps−1)·dt), i.e.
    sᵀ(A_aᵀA_a − A_bᵀA_b)s = 0, scaled so context a starts at an energy uniform in ``energy_range``.
    Returns the states and which pairs have such a direction (an indefinite difference matrix)."""
    span = draw.dt * (n_steps - 1)
    forward_a = propagator(draw.omega0, draw.gamma, span)
    forward_b = propagator(omega0_b, gamma_b, span)
    back_a, back_b = torch.linalg.inv(forward_a), torch.linalg.inv(forward_b)
    m = back_a.transpose(-1, -2) @ back_a - back_b.transpose(-1, -2) @ back_b  # [pair, 2, 2]
    m11, m12, m22 = m[:, 0, 0], m[:, 0, 1], m[:, 1, 1]
    discriminant = m12**2 - m11 * m22
    exists = discriminant > 1e-12 * (m11.abs() + m22.abs()).pow(2)
    root = torch.where(torch.rand(len(m11), generator=generator, dtype=torch.float64) < 0.5, -1.0, 1.0)
    # The two null directions of m11 x² + 2 m12 x y + m22 y² = 0: x/y = (−m12 ± √disc)/m11, or
    # y/x = (−m12 ± √disc)/m22, whichever divides by the larger diagonal entry.
    sqrt = discriminant.clamp_min(0).sqrt()
    use_x = m11.abs() >= m22.abs()
    x = torch.where(use_x, -m12 + root * sqrt, m22)
    y = torch.where(use_x, m11, -m12 + root * sqrt)
    direction = torch.stack([x, y], dim=-1)
    direction = direction / torch.linalg.vector_norm(direction, dim=-1, keepdim=True).clamp_min(1e-300)
    start = torch.einsum("pij,pj->pi", back_a, direction)
    low, high = energy_range
    target = low + (high - low) * torch.rand(len(m11), generator=generator, dtype=torch.float64)
    radius = torch.sqrt(target / energy(start, draw.omega0).clamp_min(1e-300))
    sign = torch.where(torch.rand(len(m11), generator=generator, dtype=torch.float64) < 0.5, -1.0, 1.0)
    return (sign * radius)[:, None] * direction, exists


def _generator(seed: int | None, generator: torch.Generator | None) -> torch.Generator:
    if (seed is None) == (generator is None):
        raise ValueError("pass exactly one of seed (an int) or generator (a torch.Generator)")
    if generator is not None:
        return generator
    return torch.Generator().manual_seed(check_nonnegative_int("seed", seed))


def evolve(
    initial: Float[Tensor, "traj 2"],
    omega0: Tensor | float,
    gamma: Tensor | float,
    dt: float,
    n_steps: int,
) -> Float[Tensor, "traj step 2"]:
    """States at times ``0, dt, …, (n_steps−1)·dt`` from ``initial``, in float64.

    Each time uses the propagator for its own elapsed time ``k·dt`` rather than ``k`` products of
    the one-step map, so no round-off accumulates along long trajectories.
    """
    check_shape("initial", initial, (None, STATE_DIM), "[traj, 2]")
    check_finite("initial", initial)
    n_steps = check_positive_int("n_steps", n_steps)
    dt = check_positive_float("dt", dt)
    n = initial.shape[0]
    omega0_t = torch.as_tensor(omega0, dtype=torch.float64).expand(n).reshape(n, 1)
    gamma_t = torch.as_tensor(gamma, dtype=torch.float64).expand(n).reshape(n, 1)
    times = dt * torch.arange(n_steps, dtype=torch.float64)
    states = torch.empty(n, n_steps, STATE_DIM, dtype=torch.float64)
    states[:, 0] = initial.to(torch.float64)
    if n_steps > 1:
        kernels = propagator(omega0_t, gamma_t, times[1:].reshape(1, -1))  # [traj, step-1, 2, 2]
        states[:, 1:] = torch.einsum("tsij,tj->tsi", kernels, initial.to(torch.float64))
    return states


def evolve_backward(
    final: Float[Tensor, "traj 2"],
    omega0: Tensor | float,
    gamma: Tensor | float,
    dt: float,
    n_steps: int,
) -> Float[Tensor, "traj step 2"]:
    """The ``n_steps`` states at times ``−(n_steps−1)·dt, …, −dt, 0`` that end in ``final``, in float64.

    Uses the inverse of the exact propagator for each elapsed time (det K(t) = e^{−2γt}), so the
    last state equals ``final`` exactly and a forward :func:`evolve` from the first state returns
    the same sequence to round-off.
    """
    check_shape("final", final, (None, STATE_DIM), "[traj, 2]")
    check_finite("final", final)
    n_steps = check_positive_int("n_steps", n_steps)
    dt = check_positive_float("dt", dt)
    n = final.shape[0]
    omega0_t = torch.as_tensor(omega0, dtype=torch.float64).expand(n).reshape(n, 1)
    gamma_t = torch.as_tensor(gamma, dtype=torch.float64).expand(n).reshape(n, 1)
    final = final.to(torch.float64)
    states = torch.empty(n, n_steps, STATE_DIM, dtype=torch.float64)
    states[:, -1] = final
    if n_steps > 1:
        elapsed = dt * torch.arange(n_steps - 1, 0, -1, dtype=torch.float64)  # time from each state to the end
        forward = propagator(omega0_t, gamma_t, elapsed.reshape(1, -1))  # [traj, step-1, 2, 2]
        (a, b), (c, d) = forward.unbind(-2)[0].unbind(-1), forward.unbind(-2)[1].unbind(-1)
        det = torch.exp(-2 * gamma_t * elapsed.reshape(1, -1))
        inverse = torch.stack([torch.stack([d, -b], -1), torch.stack([-c, a], -1)], -2) / det[..., None, None]
        states[:, :-1] = torch.einsum("tsij,tj->tsi", inverse, final)
    return states


def fit_propagator(states: Float[Tensor, "*batch step 2"]) -> Float[Tensor, "*batch 2 2"]:
    """The least-squares one-step map K with s_{t+1} ≈ K s_t over consecutive ``states``, per trajectory.

    This is in-context least squares: it reads K off the states alone, with no labels. Three or
    more states of an oscillator (two transitions) determine K exactly; with two states the
    problem is underdetermined and the minimum-norm K is returned.
    """
    if states.ndim < 2 or states.shape[-1] != STATE_DIM:
        raise ValueError(f"states must have shape [..., step, 2], got {list(states.shape)}")
    if states.shape[-2] < 2:
        raise ValueError(f"states need at least 2 steps to fit a one-step map, got {states.shape[-2]}")
    current, following = states[..., :-1, :], states[..., 1:, :]
    return least_squares_map(current, following)


RANK_TOLERANCE = 1e-8
"""Where det(CᵀC) ≤ this · tr(CᵀC)² (the smaller singular value of C below 1e-4 of the larger),
:func:`least_squares_map` leaves a system to the pseudo-inverse."""


def least_squares_map(current: Float[Tensor, "*batch m 2"], following: Float[Tensor, "*batch m d"]) -> Float[Tensor, "*batch d 2"]:
    """The least-squares map K with ``following[..., t, :] ≈ K current[..., t, :]`` over the rows t, per batch entry:
    ``(pinv(current) @ following)ᵀ``, computed without a singular value decomposition.

    ``current`` C has two columns (a state), so the normal equations (CᵀC) Kᵀ = Cᵀ·following are a 2×2 system,
    solved in closed form: two batched products and a few elementwise operations, about 8× faster than
    ``torch.linalg.pinv`` on one thread, and within cond(C)²·ε of it. Systems with
    det(CᵀC) ≤ :data:`RANK_TOLERANCE` · tr(CᵀC)² — rank 0 or 1 (zero rows only, one transition) or nearly so — are
    solved by ``torch.linalg.pinv``, whose minimum-norm answer they keep.
    """
    if current.ndim < 2 or current.shape[-1] != STATE_DIM:
        raise ValueError(f"current must have shape [..., m, 2], got {list(current.shape)}")
    if following.ndim != current.ndim or following.shape[:-1] != current.shape[:-1]:
        raise ValueError(f"following must have shape [..., m, d] with current's leading shape {list(current.shape[:-1])}, "
                         f"got {list(following.shape)}")
    transposed = current.transpose(-1, -2)
    gram, moment = transposed @ current, transposed @ following  # [..., 2, 2], [..., 2, d]
    g00, g01, g11 = gram[..., 0, 0], gram[..., 0, 1], gram[..., 1, 1]
    det = g00 * g11 - g01 * g01
    full = det > RANK_TOLERANCE * (g00 + g11) ** 2
    safe = torch.where(full, det, torch.ones_like(det))[..., None, None]
    inverse = torch.stack([torch.stack([g11, -g01], -1), torch.stack([-g01, g00], -1)], -2) / safe
    solution = inverse @ moment  # pinv(current) @ following, [..., 2, d]
    if not bool(full.all()):
        deficient = ~full
        solution[deficient] = torch.linalg.pinv(current[deficient]) @ following[deficient]
    return solution.transpose(-1, -2)


def parameters_from_propagator(kernel: Float[Tensor, "*batch 2 2"], dt: float) -> dict[str, Tensor]:
    """ω0, γ and Ω of the damped oscillator whose one-step map over ``dt`` is ``kernel``.

    From det K = e^{−2γΔt} and tr K = 2 e^{−γΔt} cos ΩΔt. Maps that are no underdamped rotation
    (det ≤ 0 or |cos ΩΔt| > 1) give NaN rather than a made-up frequency.
    """
    if kernel.shape[-2:] != (STATE_DIM, STATE_DIM):
        raise ValueError(f"kernel must have shape [..., 2, 2], got {list(kernel.shape)}")
    dt = check_positive_float("dt", dt)
    det = torch.linalg.det(kernel)
    trace = kernel.diagonal(dim1=-2, dim2=-1).sum(-1)
    nan = torch.full_like(det, float("nan"))
    root = torch.sqrt(det.clamp_min(torch.finfo(det.dtype).tiny))
    cosine = trace / (2 * root)
    valid = (det > 0) & (cosine.abs() < 1)
    gamma = torch.where(valid, -torch.log(root) / dt, nan)
    omega = torch.where(valid, torch.acos(cosine.clamp(-1, 1)) / dt, nan)
    return {"omega0": torch.sqrt(omega**2 + gamma**2), "gamma": gamma, "Omega": omega}
