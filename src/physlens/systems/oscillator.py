"""The damped harmonic oscillator (m = 1): exact propagator, energy, and labelled trajectories.

ẋ = p, ṗ = −ω0² x − 2γ p, underdamped (0 ≤ γ < ω0). States are (x, p); every trajectory carries
its physical labels (ω0, γ, Ω = √(ω0² − γ²), energy at every step) for probes downstream.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from physlens._validation import (
    check_finite,
    check_nonnegative_int,
    check_positive_float,
    check_positive_int,
    check_shape,
    resolve_dtype,
)
from physlens.systems.params import ParamSpec, as_param_spec, spec_to_json

STATE_DIM = 2  # (x, p)

LABEL_NAMES = ("omega0", "gamma", "Omega", "energy", "omega0_sq", "cos_Omega_dt", "damping_factor")
"""Targets a probe can ask for: the parameters and the parametrisations the propagator uses."""


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
    one value per trajectory.
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

    def labels(self) -> dict[str, Tensor]:
        """Every label in :data:`LABEL_NAMES`: per trajectory ``[traj]``, except ``energy`` ``[traj, step]``."""
        omega = self.Omega
        return {
            "omega0": self.omega0,
            "gamma": self.gamma,
            "Omega": omega,
            "energy": self.energy,
            "omega0_sq": self.omega0**2,
            "cos_Omega_dt": torch.cos(omega * self.dt),
            "damping_factor": torch.exp(-self.gamma * self.dt),
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


def _check_energy_range(name: str, energy_range: tuple[float, float]) -> tuple[float, float]:
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
    energy_range: tuple[float, float] = (0.0, 1.0)  # initial energies for training
    dtype: str = "float32"  # dtype of the sampled states ("float64" for exact work)
    device: str = "cpu"  # where sampled tensors live
    _omega0: ParamSpec = field(init=False, repr=False)
    _gamma: ParamSpec = field(init=False, repr=False)

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

    def sample(
        self,
        n_traj: int,
        n_steps: int,
        *,
        seed: int | None = None,
        generator: torch.Generator | None = None,
        energy_range: tuple[float, float] | None = None,
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

    def batches(
        self, batch_size: int, n_steps: int, *, seed: int | None = None, generator: torch.Generator | None = None
    ) -> Iterator[Trajectories]:
        """An endless stream of fresh batches from one seeded generator (no fixed dataset)."""
        generator = _generator(seed, generator)
        while True:
            yield self.sample(batch_size, n_steps, generator=generator)


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
