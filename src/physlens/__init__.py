"""physlens: mechanistic interpretability of small networks trained on physics.

Systems generate labelled trajectories, hooked models learn them, and the probes find out what the
models learned and how they compute it.

The names a study needs are available here (``physlens.OscillatorSystem``, ``physlens.train``,
``physlens.probe_sweep`` ...) and the subpackages as attributes (``physlens.probes``); each is
imported on first use, so ``import physlens`` itself stays cheap and loads neither torch nor
matplotlib.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# The curated top level: name -> the module that defines it, in the order data flows through the
# library (systems -> models -> training -> probes -> studies).
_EXPORTS: dict[str, str] = {
    # systems: trajectories and their labels
    "OscillatorSystem": "physlens.systems",
    "CentralPotentialSystem": "physlens.systems",
    "Trajectories": "physlens.systems",
    # models: hooked networks
    "HookedModel": "physlens.models",
    "OscillatorTransformer": "physlens.models",
    "TransformerConfig": "physlens.models",
    "preset_config": "physlens.models",
    "TinyMLP": "physlens.models",
    "MLPConfig": "physlens.models",
    "LinearAutoregressive": "physlens.models",
    # training: fit, roll out, evaluate, checkpoint
    "TrainConfig": "physlens.training",
    "TrainResult": "physlens.training",
    "TrainingDiverged": "physlens.training",
    "train": "physlens.training",
    "rollout": "physlens.training",
    "evaluate_rollout": "physlens.training",
    "evaluate_task": "physlens.training",
    "save_checkpoint": "physlens.training",
    "load_checkpoint": "physlens.training",
    # probes: what the model represents and how it computes
    "collect_activations": "physlens.probes",
    "LinearProbe": "physlens.probes",
    "probe_sweep": "physlens.probes",
    "select_sites": "physlens.probes",
    "ablation_sweep": "physlens.probes",
    "patching_sweep": "physlens.probes",
    "steering_sweep": "physlens.probes",
    "integrated_gradients": "physlens.probes",
    "context_swap_test": "physlens.probes",
    "LinearSurrogate": "physlens.probes",
    # studies and sweeps: a study file in, a report out
    "run_study": "physlens.studies",
    "resume_run": "physlens.studies",
    "load_run": "physlens.studies",
    "run_sweep": "physlens.sweeps",
}

_SUBPACKAGES = ("models", "plots", "probes", "stats", "studies", "sweeps", "systems", "training")

__all__ = ["__version__", *_EXPORTS]

if TYPE_CHECKING:  # what the lazy loading below provides, spelt out for type checkers and editors
    from physlens import models, plots, probes, stats, studies, sweeps, systems, training
    from physlens.models import (
        HookedModel,
        LinearAutoregressive,
        MLPConfig,
        OscillatorTransformer,
        TinyMLP,
        TransformerConfig,
        preset_config,
    )
    from physlens.probes import (
        LinearProbe,
        LinearSurrogate,
        ablation_sweep,
        collect_activations,
        context_swap_test,
        integrated_gradients,
        patching_sweep,
        probe_sweep,
        select_sites,
        steering_sweep,
    )
    from physlens.studies import load_run, resume_run, run_study
    from physlens.sweeps import run_sweep
    from physlens.systems import CentralPotentialSystem, OscillatorSystem, Trajectories
    from physlens.training import (
        TrainConfig,
        TrainingDiverged,
        TrainResult,
        evaluate_rollout,
        evaluate_task,
        load_checkpoint,
        rollout,
        save_checkpoint,
        train,
    )


def __getattr__(name: str) -> Any:
    """Import a top-level name or subpackage on first access (PEP 562)."""
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
    elif name in _SUBPACKAGES:
        value = importlib.import_module(f"{__name__}.{name}")
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value  # later accesses skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS) | set(_SUBPACKAGES))
