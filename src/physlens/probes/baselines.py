"""Input-feature baselines for probes: how well the raw input alone decodes a label.

A probe on a model's activations is evidence of what the model computed only where it beats the
same probe on features of the input the model was given. Polynomial features of the last k input
states (in the units the model sees them) are the strongest such baseline for a label that is a
low-order function of a few states: energy in first-state units, ω0 read off a finite difference.
"""

from __future__ import annotations

import numpy as np
import torch
from jaxtyping import Float
from sklearn.preprocessing import PolynomialFeatures
from torch import Tensor

from physlens._validation import check_positive_int
from physlens.probes.linear_probe import LinearProbe


def input_features(
    states: Float[Tensor, "traj pos d"], *, position: int, last_k: int = 3, degree: int = 2, scale_by_first_state: bool = False
) -> np.ndarray:
    """Polynomial features (all monomials up to ``degree``) of the ``last_k`` states ending at ``position``.

    With ``scale_by_first_state`` the states are first divided by each trajectory's first state's
    norm, as a ``scale_by_first_state`` model sees them. Returns ``[traj, n_features]`` in float64.
    """
    if states.ndim != 3:
        raise ValueError(f"states must be [traj, pos, d], got shape {list(states.shape)}")
    last_k = check_positive_int("last_k", last_k)
    degree = check_positive_int("degree", degree)
    n_pos = states.shape[1]
    if not isinstance(position, int) or isinstance(position, bool) or not -n_pos <= position < n_pos:
        raise ValueError(f"position must be an integer index into the {n_pos} positions, got {position!r}")
    position %= n_pos
    if last_k > position + 1:
        raise ValueError(f"last_k must be <= position + 1 = {position + 1} (the states up to position), got {last_k}")
    states = states.detach().to(dtype=torch.float64, device="cpu")
    if scale_by_first_state:
        size = torch.linalg.vector_norm(states[:, 0], dim=-1)
        if bool((size == 0).any()):
            raise ValueError("scale_by_first_state=True needs every trajectory to start away from the origin")
        states = states / size[:, None, None]
    window = states[:, position - last_k + 1 : position + 1].reshape(len(states), -1).numpy()
    return PolynomialFeatures(degree=degree, include_bias=False).fit_transform(window)


def input_baseline_r2(
    states: Float[Tensor, "traj pos d"],
    y: Float[np.ndarray, " traj"] | Float[Tensor, " traj"],
    *,
    position: int,
    last_k: int = 3,
    degree: int = 2,
    scale_by_first_state: bool = False,
    n_folds: int = 5,
    seed: int = 0,
) -> float:
    """Held-out R² (cross-validated ridge, folds by trajectory) of ``y`` from :func:`input_features`."""
    features = input_features(states, position=position, last_k=last_k, degree=degree, scale_by_first_state=scale_by_first_state)
    target = np.asarray(torch.as_tensor(y, dtype=torch.float64).cpu())
    if target.shape != (features.shape[0],):
        raise ValueError(f"y must hold one value per trajectory [{features.shape[0]}], got shape {list(target.shape)}")
    # Standardised columns: monomials of different degree differ in scale by orders of magnitude.
    features = (features - features.mean(axis=0)) / np.where(features.std(axis=0) > 0, features.std(axis=0), 1.0)
    return float(LinearProbe(n_folds=n_folds, seed=seed).fit(features, target).cv_r2_)


__all__ = ["input_baseline_r2", "input_features"]
