"""Physical systems that generate labelled ground truth for the networks physlens studies."""

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

__all__ = [
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
