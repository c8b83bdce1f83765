"""A particle in the central potential V = −k/r (m = k = 1): exact Kepler orbits with their invariants.

States are (x, y, vx, vy). Orbits are propagated with the closed-form Kepler solution (Lagrange's
f and g functions, Kepler's equation solved to machine precision in float64), so energy
E = ½v² − 1/r and angular momentum L = x·vy − y·vx are conserved to round-off (≈1e-12), not to an
integrator's truncation error. Only bound, non-colliding orbits are accepted.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

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
from physlens.systems.base import moved_copy

ORBIT_STATE_DIM = 4  # (x, y, vx, vy)
ORBIT_STATE_NAMES = ("x", "y", "vx", "vy")
"""Component names of an orbit state, in order (used as variable names by the probes)."""

ORBIT_LABEL_NAMES = ("angular_momentum", "energy", "semi_major_axis", "eccentricity", "period")
"""Per-trajectory labels an orbit carries."""

CONSERVATION_TOLERANCE = 1e-10
"""Largest relative drift of E and L along an orbit that :func:`propagate_orbit` guarantees (float64)."""

_BISECTION_STEPS = 64  # brackets of width 4 shrink below 1e-18
_NEWTON_STEPS = 3  # polish after bisection, where Newton converges quadratically


def angular_momentum(states: Float[Tensor, "*batch 4"]) -> Float[Tensor, "*batch"]:
    """L = x·vy − y·vx."""
    _check_state_dim(states)
    return states[..., 0] * states[..., 3] - states[..., 1] * states[..., 2]


def orbit_energy(states: Float[Tensor, "*batch 4"]) -> Float[Tensor, "*batch"]:
    """E = ½(vx² + vy²) − 1/r, the energy per unit mass in V = −1/r."""
    _check_state_dim(states)
    radius = torch.sqrt(states[..., 0] ** 2 + states[..., 1] ** 2)
    return 0.5 * (states[..., 2] ** 2 + states[..., 3] ** 2) - 1.0 / radius


def runge_lenz(states: Float[Tensor, "*batch 4"]) -> Float[Tensor, "*batch 2"]:
    """The Runge–Lenz vector A = v × L ẑ − r̂ = (vy·L − x/r, −vx·L − y/r) (m = k = 1).

    Conserved along a Kepler orbit: it points to the perihelion and its length is the eccentricity,
    so its angle is the orbit's orientation, a conserved quantity besides E and L.
    """
    _check_state_dim(states)
    ang = angular_momentum(states)
    radius = torch.sqrt(states[..., 0] ** 2 + states[..., 1] ** 2)
    return torch.stack([states[..., 3] * ang - states[..., 0] / radius, -states[..., 2] * ang - states[..., 1] / radius], dim=-1)


def perihelion(energy: Tensor, angular_momentum: Tensor) -> Tensor:
    """Closest approach r_p = a(1 − e) of a bound orbit, with a = −1/(2E) and e = √(1 + 2EL²)."""
    eccentricity = torch.sqrt(torch.clamp(1 + 2 * energy * angular_momentum**2, min=0.0))
    return -(1 - eccentricity) / (2 * energy)


def check_bound_orbits(states: Float[Tensor, "*batch 4"], min_perihelion: float) -> None:
    """Raise unless every state is finite, bound (E < 0) and never comes closer than ``min_perihelion``.

    An unbound orbit has no period to sample; a near-radial one (L ≈ 0) plunges into the singularity
    at r = 0, where no integrator (and no network) can follow it.
    """
    _check_state_dim(states)
    check_finite("states", states)
    min_perihelion = check_positive_float("min_perihelion", min_perihelion)
    states = states.to(torch.float64)
    radius = torch.sqrt(states[..., 0] ** 2 + states[..., 1] ** 2)
    if bool((radius == 0).any()):
        raise ValueError("states must not sit at the origin r = 0, where the potential −1/r is singular")
    energy = orbit_energy(states)
    if bool((energy >= 0).any()):
        worst = float(energy.max())
        raise ValueError(
            f"only bound orbits (energy E < 0) are supported; got a state with E = {worst:g} >= 0 "
            "(an unbound orbit escapes to infinity)"
        )
    closest = perihelion(energy, angular_momentum(states))
    if bool((closest < min_perihelion).any()):
        index = int(torch.argmin(closest))
        raise ValueError(
            f"orbit would collide with the centre: perihelion {float(closest.flatten()[index]):.3g} is below "
            f"min_perihelion = {min_perihelion:g} (angular momentum L = "
            f"{float(angular_momentum(states).flatten()[index]):.3g} is too close to 0)"
        )


def propagate_orbit(
    initial: Float[Tensor, "traj 4"],
    times: Float[Tensor, "traj step"] | Float[Tensor, " step"],
    *,
    min_perihelion: float = 1e-3,
) -> Float[Tensor, "traj step 4"]:
    """States at ``times`` (relative to the initial state) of each orbit, from the exact Kepler solution.

    Uses Lagrange's f and g functions in the eccentric-anomaly difference ΔE, which stay regular for
    circular orbits: n·t = ΔE + (σ0/√a)(1 − cos ΔE) − (1 − r0/a) sin ΔE with σ0 = r0·v0, solved by
    bisection on a bracket of width 4 plus Newton polish. Computed in float64; refuses unbound and
    colliding orbits (see :func:`check_bound_orbits`).
    """
    check_shape("initial", initial, (None, ORBIT_STATE_DIM), "[traj, 4] (x, y, vx, vy)")
    check_bound_orbits(initial, min_perihelion)
    n = initial.shape[0]
    times = torch.as_tensor(times, dtype=torch.float64)
    check_finite("times", times)
    if times.ndim == 1:
        times = times.expand(n, -1)
    check_shape("times", times, (n, None), f"[{n}, step] or [step]")
    state0 = initial.to(torch.float64)
    r0_vec, v0_vec = state0[:, :2], state0[:, 2:]
    r0 = torch.linalg.vector_norm(r0_vec, dim=-1)[:, None]  # [traj, 1]
    sigma0 = (r0_vec * v0_vec).sum(-1)[:, None]
    a = (-1.0 / (2 * orbit_energy(state0)))[:, None]
    sqrt_a = torch.sqrt(a)
    mean_motion = a**-1.5
    period = 2 * math.pi / mean_motion
    # Kepler's equation is periodic in time: reduce to one period so ΔE stays in a small bracket.
    elapsed = torch.remainder(times, period)
    mean_anomaly = mean_motion * elapsed
    c1, c2 = sigma0 / sqrt_a, 1 - r0 / a

    def kepler(delta: Tensor) -> Tensor:
        return delta + c1 * (1 - torch.cos(delta)) - c2 * torch.sin(delta) - mean_anomaly

    # |ΔE − ΔM| = e·|sin E − sin E0| ≤ 2, and the residual is increasing in ΔE (its slope is r/a > 0).
    low, high = mean_anomaly - 2.0, mean_anomaly + 2.0
    for _ in range(_BISECTION_STEPS):
        middle = 0.5 * (low + high)
        above = kepler(middle) > 0
        high = torch.where(above, middle, high)
        low = torch.where(above, low, middle)
    delta = 0.5 * (low + high)
    for _ in range(_NEWTON_STEPS):
        slope = 1 + c1 * torch.sin(delta) - c2 * torch.cos(delta)
        delta = delta - kepler(delta) / slope
    cos_d, sin_d = torch.cos(delta), torch.sin(delta)
    radius = a + (r0 - a) * cos_d + sigma0 * sqrt_a * sin_d
    f = 1 - (a / r0) * (1 - cos_d)
    g = elapsed + a * sqrt_a * (sin_d - delta)
    f_dot = -sqrt_a * sin_d / (radius * r0)
    g_dot = 1 - (a / radius) * (1 - cos_d)
    position = f[..., None] * r0_vec[:, None, :] + g[..., None] * v0_vec[:, None, :]
    velocity = f_dot[..., None] * r0_vec[:, None, :] + g_dot[..., None] * v0_vec[:, None, :]
    return torch.cat([position, velocity], dim=-1)  # [traj, step, 4]


def orbit_state(
    energy: Tensor, angular_momentum: Tensor, orientation: Tensor
) -> Float[Tensor, "traj 4"]:
    """The perihelion state of the bound orbit with the given E < 0, L ≠ 0 and perihelion direction
    ``orientation`` (radians); L < 0 orbits clockwise."""
    energy, angular_momentum, orientation = (
        torch.as_tensor(v, dtype=torch.float64) for v in (energy, angular_momentum, orientation)
    )
    if bool((energy >= 0).any()):
        raise ValueError(f"energy must be < 0 (bound orbit), got max {float(energy.max()):g}")
    if bool((angular_momentum == 0).any()):
        raise ValueError("angular_momentum must be nonzero (L = 0 is a radial plunge into the centre)")
    if bool((2 * energy * angular_momentum**2 < -1).any()):
        raise ValueError("|angular_momentum| must not exceed 1/√(−2E), the circular-orbit value for that energy")
    r_p = perihelion(energy, angular_momentum)
    speed = angular_momentum / r_p  # tangential, signed by the sense of rotation
    cos_o, sin_o = torch.cos(orientation), torch.sin(orientation)
    return torch.stack([r_p * cos_o, r_p * sin_o, -speed * sin_o, speed * cos_o], dim=-1)


@dataclass
class OrbitTrajectories:
    """A batch of Kepler orbits: ``states[i, k]`` is (x, y, vx, vy) of orbit ``i`` at ``times[i, k]``."""

    states: Float[Tensor, "traj step 4"]
    times: Float[Tensor, "traj step"]
    dt: float | None = None  # time between stored states on a grid; None when the times are random

    def __post_init__(self) -> None:
        check_shape("states", self.states, (None, None, ORBIT_STATE_DIM), "[traj, step, 4]")
        check_shape("times", self.times, tuple(self.states.shape[:2]), "[traj, step]")
        if self.dt is not None:
            self.dt = check_positive_float("dt", self.dt)

    def __len__(self) -> int:
        return self.states.shape[0]

    @property
    def n_steps(self) -> int:
        """Number of states stored per orbit."""
        return self.states.shape[1]

    @property
    def angular_momentum(self) -> Float[Tensor, "traj step"]:
        """L at every stored state (constant along an orbit up to round-off)."""
        return angular_momentum(self.states)

    @property
    def energy(self) -> Float[Tensor, "traj step"]:
        """E at every stored state (constant along an orbit up to round-off)."""
        return orbit_energy(self.states)

    def labels(self) -> dict[str, Tensor]:
        """Per-orbit labels in :data:`ORBIT_LABEL_NAMES`, each ``[traj]``, from the first state."""
        first = self.states[:, 0].to(torch.float64)
        energy, ang = orbit_energy(first), angular_momentum(first)
        a = -1 / (2 * energy)
        out = {
            "angular_momentum": ang,
            "energy": energy,
            "semi_major_axis": a,
            "eccentricity": torch.sqrt(torch.clamp(1 + 2 * energy * ang**2, min=0.0)),
            "period": 2 * math.pi * a**1.5,
        }
        return {k: v.to(self.states.dtype) for k, v in out.items()}

    def subset(self, index: Tensor | slice) -> OrbitTrajectories:
        """The orbits selected by ``index``."""
        return OrbitTrajectories(self.states[index], self.times[index], self.dt)

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> OrbitTrajectories:
        """A copy on ``device`` and/or in ``dtype``."""
        return OrbitTrajectories(self.states.to(device=device, dtype=dtype), self.times.to(device=device, dtype=dtype), self.dt)

    def inputs_targets(self) -> tuple[Float[Tensor, "traj pos 4"], Float[Tensor, "traj pos 4"]]:
        """Next-step pairs: inputs ``states[:, :-1]`` and targets ``states[:, 1:]`` (orbits on a time grid only)."""
        if self.dt is None:
            raise ValueError("these orbits are sampled at random times (random_times=True): they have no next step")
        if self.n_steps < 2:
            raise ValueError("trajectories need at least 2 steps to form next-step targets")
        return self.states[:, :-1], self.states[:, 1:]


def _check_range(name: str, bounds: tuple[float, ...], *, negative: bool) -> tuple[float, float]:
    if len(bounds) != 2:
        raise ValueError(f"{name} must be a pair (low, high), got {bounds!r}")
    low, high = (float(v) for v in bounds)
    if not (math.isfinite(low) and math.isfinite(high)) or high < low:
        raise ValueError(f"{name} must be finite with low <= high, got {bounds!r}")
    if negative and high >= 0:
        raise ValueError(
            f"{name} must lie below 0 (bound orbits only; E >= 0 escapes to infinity), got {bounds!r}"
        )
    if not negative and low <= 0:
        raise ValueError(f"{name} bounds |L| and must be > 0 (L ≈ 0 collides with the centre), got {bounds!r}")
    return (low, high)


@dataclass
class CentralPotentialSystem:
    """Bound orbits in V = −1/r to sample labelled trajectories from.

    Each orbit draws E uniformly in ``energy_range`` and |L| uniformly in ``angular_momentum_range``
    (sign ±1 with equal probability), rejecting pairs that are impossible (|L| above the circular
    value 1/√(−2E)) or that pass closer than ``min_perihelion``; the perihelion direction and the
    starting phase are uniform. E and L therefore vary independently over most of the box.
    """

    energy_range: tuple[float, float] | list[float] = (-0.8, -0.3)  # orbital energy E (must be < 0); a list from JSON/TOML, kept as a tuple
    angular_momentum_range: tuple[float, float] | list[float] = (0.2, 1.2)  # |L|; the sign is drawn at random
    min_perihelion: float = 0.1  # refuse orbits that come closer to the centre than this
    dt: float = 0.1  # time between stored states when times are on a grid
    dtype: str = "float32"  # dtype of the sampled states
    device: str = "cpu"  # where sampled tensors live
    state_dim: ClassVar[int] = ORBIT_STATE_DIM  # (x, y, vx, vy)

    def __post_init__(self) -> None:
        self.energy_range = _check_range("energy_range", tuple(self.energy_range), negative=True)
        self.angular_momentum_range = _check_range(
            "angular_momentum_range", tuple(self.angular_momentum_range), negative=False
        )
        self.min_perihelion = check_positive_float("min_perihelion", self.min_perihelion)
        self.dt = check_positive_float("dt", self.dt)
        resolve_dtype(self.dtype)
        e_low, e_high = self.energy_range
        l_low, l_high = self.angular_momentum_range
        if l_low > 1 / math.sqrt(-2 * e_low):
            raise ValueError(
                f"angular_momentum_range starts at {l_low:g}, above the circular-orbit value "
                f"{1 / math.sqrt(-2 * e_low):.3g} for the lowest energy; no orbit fits the ranges"
            )
        best = perihelion(torch.tensor(e_high, dtype=torch.float64), torch.tensor(l_high, dtype=torch.float64))
        if float(best) < self.min_perihelion:
            raise ValueError(
                f"every orbit in the ranges passes closer than min_perihelion = {self.min_perihelion:g}; "
                "raise angular_momentum_range or lower min_perihelion"
            )

    def to_dict(self) -> dict[str, object]:
        """A JSON-ready description, readable back with ``CentralPotentialSystem(**d)``."""
        return {
            "energy_range": list(self.energy_range),
            "angular_momentum_range": list(self.angular_momentum_range),
            "min_perihelion": self.min_perihelion,
            "dt": self.dt,
            "dtype": self.dtype,
            "device": self.device,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CentralPotentialSystem:
        """The system :meth:`to_dict` described (ranges may be lists, as JSON gives them)."""
        options = dict(data)
        for key in ("energy_range", "angular_momentum_range"):
            if key in options:
                options[key] = tuple(options[key])
        return cls(**options)

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | str | None = None) -> CentralPotentialSystem:
        """The same orbits sampled on ``device`` and/or in ``dtype``: identical draws for the same seed."""
        return moved_copy(self, device, dtype)

    def batches(
        self, batch_size: int, n_steps: int, *, seed: int | None = None, generator: torch.Generator | None = None
    ) -> Iterator[OrbitTrajectories]:
        """An endless stream of fresh batches of orbits on a time grid, from one seeded generator."""
        generator = _generator(seed, generator)
        while True:
            yield self.sample(batch_size, n_steps, generator=generator)

    def sample_invariants(
        self, n_traj: int, *, generator: torch.Generator, energy_range: tuple[float, float] | None = None
    ) -> tuple[Float[Tensor, " traj"], Float[Tensor, " traj"]]:
        """Draw (E, L) for ``n_traj`` orbits by rejection from the box of ranges (float64, on CPU);
        ``energy_range`` overrides the system's range of E."""
        n_traj = check_positive_int("n_traj", n_traj)
        e_low, e_high = self.energy_range if energy_range is None else _check_range("energy_range", tuple(energy_range), negative=True)
        energies, momenta, found = [], [], 0
        for _ in range(1000):
            draws = 2 * (n_traj - found) + 16
            u = torch.rand(draws, 3, generator=generator, dtype=torch.float64, device=generator.device).cpu()
            energy = e_low + (e_high - e_low) * u[:, 0]
            size = self.angular_momentum_range[0] + (self.angular_momentum_range[1] - self.angular_momentum_range[0]) * u[:, 1]
            ang = torch.where(u[:, 2] < 0.5, -size, size)
            ok = (2 * energy * ang**2 >= -1) & (perihelion(energy, ang) >= self.min_perihelion)
            energies.append(energy[ok])
            momenta.append(ang[ok])
            found += int(ok.sum())
            if found >= n_traj:
                break
        else:  # pragma: no cover - the constructor rules out empty ranges
            raise RuntimeError("could not draw enough orbits inside the ranges")
        return torch.cat(energies)[:n_traj], torch.cat(momenta)[:n_traj]

    def sample(
        self,
        n_traj: int,
        n_steps: int,
        *,
        seed: int | None = None,
        generator: torch.Generator | None = None,
        energy_range: tuple[float, float] | None = None,
        random_times: bool = False,
    ) -> OrbitTrajectories:
        """Draw ``n_traj`` orbits of ``n_steps`` states each.

        With ``random_times=False`` states are at ``t0 + k·dt`` from a uniformly random phase ``t0``;
        with ``random_times=True`` each state is at an independent uniform time within one period
        (sorted), which covers the whole orbit, as pairs for invariant learning need.
        ``energy_range`` overrides the system's range of orbital energies.
        """
        n_traj = check_positive_int("n_traj", n_traj)
        n_steps = check_positive_int("n_steps", n_steps)
        generator = _generator(seed, generator)
        energy, ang = self.sample_invariants(n_traj, generator=generator, energy_range=energy_range)
        uniform = torch.rand(n_traj, 2 + n_steps, generator=generator, dtype=torch.float64, device=generator.device).cpu()
        orientation = 2 * math.pi * uniform[:, 0]
        initial = orbit_state(energy, ang, orientation)
        period = (2 * math.pi * (-2 * energy) ** -1.5)[:, None]
        if random_times:
            times = torch.sort(uniform[:, 2:] * period, dim=-1).values
        else:
            times = uniform[:, 1:2] * period + self.dt * torch.arange(n_steps, dtype=torch.float64)
        states = propagate_orbit(initial, times, min_perihelion=self.min_perihelion)
        trajectories = OrbitTrajectories(states, times, None if random_times else self.dt)
        return trajectories.to(device=self.device, dtype=resolve_dtype(self.dtype))


def _generator(seed: int | None, generator: torch.Generator | None) -> torch.Generator:
    if (seed is None) == (generator is None):
        raise ValueError("pass exactly one of seed (an int) or generator (a torch.Generator)")
    if generator is not None:
        return generator
    return torch.Generator().manual_seed(check_nonnegative_int("seed", seed))


def _check_state_dim(states: Tensor) -> None:
    if states.shape[-1] != ORBIT_STATE_DIM:
        raise ValueError(f"states must have a last dimension of 4 (x, y, vx, vy), got shape {list(states.shape)}")


__all__ = [
    "CONSERVATION_TOLERANCE",
    "ORBIT_LABEL_NAMES",
    "ORBIT_STATE_NAMES",
    "CentralPotentialSystem",
    "OrbitTrajectories",
    "angular_momentum",
    "check_bound_orbits",
    "orbit_energy",
    "orbit_state",
    "perihelion",
    "propagate_orbit",
    "runge_lenz",
]
