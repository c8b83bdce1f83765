"""A damped nonlinear pendulum as a physlens system, in one file: θ̈ = −ω0² sin θ − 2γ θ̇.

It implements :class:`physlens.systems.System` (and its batches :class:`physlens.systems.TrajectoryBatch`),
so ``physlens run`` trains and evaluates a transformer on it when a study names it as
``[system] kind = "docs.tutorials.pendulum:PendulumSystem"``. There is no closed-form solution:
trajectories are integrated with classical Runge–Kutta (RK4) on 50 sub-steps per stored step in float64.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor

SUBSTEPS = 50  # RK4 sub-steps per stored step: local error ~(dt/50)^5, far below float32 resolution


def pendulum_energy(states: Tensor, omega0: Tensor) -> Tensor:
    """E = ½ θ̇² + ω0² (1 − cos θ) per unit mass and length²."""
    return 0.5 * states[..., 1] ** 2 + omega0**2 * (1 - torch.cos(states[..., 0]))


def integrate(initial: Tensor, omega0: Tensor, gamma: Tensor, dt: float, n_steps: int) -> Tensor:
    """States ``[traj, n_steps, 2]`` from ``initial`` ``[traj, 2]`` (float64, RK4)."""
    h = dt / SUBSTEPS

    def rate(s: Tensor) -> Tensor:
        return torch.stack([s[:, 1], -omega0**2 * torch.sin(s[:, 0]) - 2 * gamma * s[:, 1]], dim=-1)

    states, s = [initial], initial
    for _ in range(n_steps - 1):
        for _ in range(SUBSTEPS):
            k1 = rate(s)
            k2 = rate(s + 0.5 * h * k1)
            k3 = rate(s + 0.5 * h * k2)
            k4 = rate(s + h * k3)
            s = s + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
        states.append(s)
    return torch.stack(states, dim=1)


@dataclass
class PendulumTrajectories:
    """A batch of pendulum trajectories: ``states[i, k]`` is (θ, θ̇) of trajectory ``i`` at ``k·dt``."""

    states: Tensor  # [traj, step, 2]
    omega0: Tensor  # [traj]
    gamma: Tensor  # [traj]
    dt: float

    def __len__(self) -> int:
        return self.states.shape[0]

    @property
    def n_steps(self) -> int:
        """Number of stored steps per trajectory."""
        return self.states.shape[1]

    def labels(self) -> dict[str, Tensor]:
        """ω0 and γ per trajectory ``[traj]``; the energy per step ``[traj, step]``."""
        energy = pendulum_energy(self.states, self.omega0[:, None])
        return {"omega0": self.omega0, "gamma": self.gamma, "energy": energy}

    def subset(self, index: Tensor | slice) -> PendulumTrajectories:
        """The trajectories selected by ``index``."""
        return PendulumTrajectories(self.states[index], self.omega0[index], self.gamma[index], self.dt)

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> PendulumTrajectories:
        """A copy on ``device`` and/or in ``dtype``."""
        return PendulumTrajectories(*(t.to(device=device, dtype=dtype) for t in (self.states, self.omega0, self.gamma)), self.dt)

    def inputs_targets(self) -> tuple[Tensor, Tensor]:
        """Next-step pairs: inputs ``states[:, :-1]`` and targets ``states[:, 1:]``."""
        return self.states[:, :-1], self.states[:, 1:]


@dataclass
class PendulumSystem:
    """Damped pendulums with ω0 uniform in ``omega0`` and initial energies uniform in ``energy_range``.

    Energies stay below 2·ω0² (the separatrix), so every pendulum swings rather than rotates.
    """

    omega0: tuple[float, float] = (1.0, 2.0)  # range of the small-angle frequency
    gamma: float = 0.05  # damping rate
    dt: float = 0.1  # time between stored states
    energy_range: tuple[float, float] = (0.1, 1.5)  # initial energies of training trajectories
    dtype: str = "float32"
    device: str = "cpu"
    state_dim: ClassVar[int] = 2  # (θ, θ̇)

    def __post_init__(self) -> None:
        low, high = (float(v) for v in self.omega0)
        if not 0 < low <= high:
            raise ValueError(f"omega0 must be a range [low, high] with 0 < low <= high, got {self.omega0!r}")
        self.omega0, self.energy_range = (low, high), tuple(float(v) for v in self.energy_range)
        if not 0 <= self.gamma < low:
            raise ValueError(f"gamma must satisfy 0 <= gamma < omega0 (underdamped), got {self.gamma!r}")
        if not 0 <= self.energy_range[0] < self.energy_range[1] < 2 * low**2:
            raise ValueError(f"energy_range must satisfy 0 <= low < high < 2·omega0_low² = {2 * low**2:g} "
                             f"(below the separatrix), got {self.energy_range!r}")

    def sample(self, n_traj: int, n_steps: int, *, seed: int | None = None, generator: torch.Generator | None = None,
               energy_range: tuple[float, float] | None = None) -> PendulumTrajectories:
        """Draw ``n_traj`` trajectories of ``n_steps`` states; pass ``seed`` or ``generator`` (exactly one)."""
        if (seed is None) == (generator is None):
            raise ValueError("pass exactly one of seed or generator")
        generator = generator if generator is not None else torch.Generator().manual_seed(seed)
        e_low, e_high = energy_range or self.energy_range
        if e_high >= 2 * self.omega0[0] ** 2:
            raise ValueError(f"energy_range must stay below the separatrix 2·omega0_low² = {2 * self.omega0[0] ** 2:g}")
        u = torch.rand(n_traj, 4, generator=generator, dtype=torch.float64)
        omega0 = self.omega0[0] + (self.omega0[1] - self.omega0[0]) * u[:, 0]
        energy = e_low + (e_high - e_low) * u[:, 1]
        amplitude = torch.arccos(1 - energy / omega0**2)  # the largest angle at this energy
        theta = amplitude * (2 * u[:, 2] - 1)
        speed = torch.sqrt((2 * (energy - omega0**2 * (1 - torch.cos(theta)))).clamp_min(0))
        initial = torch.stack([theta, torch.where(u[:, 3] < 0.5, -speed, speed)], dim=-1)
        gamma = torch.full_like(omega0, self.gamma)
        batch = PendulumTrajectories(integrate(initial, omega0, gamma, self.dt, n_steps), omega0, gamma, self.dt)
        return batch.to(device=self.device, dtype=getattr(torch, self.dtype))

    def batches(self, batch_size: int, n_steps: int, *, seed: int | None = None,
                generator: torch.Generator | None = None) -> Iterator[PendulumTrajectories]:
        """An endless stream of fresh batches from one seeded generator."""
        generator = generator if generator is not None else torch.Generator().manual_seed(seed)
        while True:
            yield self.sample(batch_size, n_steps, generator=generator)

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | str | None = None) -> PendulumSystem:
        """The same pendulums sampled on ``device`` and/or in ``dtype``."""
        options = self.to_dict()
        options["device"] = str(device or self.device)
        options["dtype"] = str(dtype or self.dtype).removeprefix("torch.")
        return PendulumSystem.from_dict(options)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready description."""
        return {"omega0": list(self.omega0), "gamma": self.gamma, "dt": self.dt,
                "energy_range": list(self.energy_range), "dtype": self.dtype, "device": self.device}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PendulumSystem:
        """The system ``to_dict`` described; unknown keys are refused by name."""
        unknown = sorted(set(data) - {"omega0", "gamma", "dt", "energy_range", "dtype", "device"})
        if unknown:
            raise ValueError(f"unknown keys {unknown} for PendulumSystem")
        return cls(**dict(data))


def small_angle_period_error(energy: float, omega0: float) -> float:
    """How much longer the pendulum's period is than 2π/ω0 at ``energy`` (exact, via the AGM)."""
    k = math.sqrt(energy / (2 * omega0**2))  # sin(θ_max / 2)
    a, b = 1.0, math.sqrt(1 - k * k)
    for _ in range(30):
        a, b = (a + b) / 2, math.sqrt(a * b)
    return 1 / a - 1  # T / T0 − 1 = (π / 2) / K(k) inverted: T/T0 = 1 / AGM(1, √(1−k²))
