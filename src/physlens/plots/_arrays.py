"""Conversion shared by the plotting modules: anything array-like to a float64 numpy array."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch


def to_numpy(values: Any) -> np.ndarray:
    """``values`` (a tensor on any device, an array or a nested sequence) as a float64 numpy array."""
    if isinstance(values, torch.Tensor):
        return values.detach().cpu().double().numpy()
    return np.asarray(values, dtype=float)
