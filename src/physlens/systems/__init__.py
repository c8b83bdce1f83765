"""Physical systems that generate labelled ground truth for the networks physlens studies."""

from physlens.systems.central import (
    CONSERVATION_TOLERANCE,
    ORBIT_LABEL_NAMES,
    ORBIT_STATE_NAMES,
    CentralPotentialSystem,
    OrbitTrajectories,
    angular_momentum,
    check_bound_orbits,
    orbit_energy,
    orbit_state,
    perihelion,
    propagate_orbit,
)
from physlens.systems.oscillator import (
    LABEL_NAMES,
    OscillatorSystem,
    Trajectories,
    check_underdamped,
    damped_frequency,
    energy,
    evolve,
    propagator,
)
from physlens.systems.params import Choice, Fixed, ParamSpec, Uniform, as_param_spec
from physlens.systems.fma import FmaSplit, fma_split, fma_splits, sample_fma, support_vertices

__all__ = [
    "FmaSplit",
    "fma_split",
    "fma_splits",
    "sample_fma",
    "support_vertices",
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
    "LABEL_NAMES",
    "Choice",
    "Fixed",
    "OscillatorSystem",
    "ParamSpec",
    "Trajectories",
    "Uniform",
    "as_param_spec",
    "check_underdamped",
    "damped_frequency",
    "energy",
    "evolve",
    "propagator",
]
