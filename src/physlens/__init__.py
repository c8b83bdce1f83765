"""physlens: mechanistic interpretability of small networks trained on physics.

Systems generate labelled trajectories, hooked models learn them, and the probes find out what the
models learned and how they compute it.
"""

__version__ = "0.1.0"
