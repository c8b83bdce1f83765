"""Shared fixtures: a fixed seed and float64 defaults for exact comparisons."""

from __future__ import annotations

import matplotlib
import numpy as np
import pytest
import torch

matplotlib.use("Agg")
# The models under test are tiny: one thread is faster than two and immune to oversubscription.
torch.set_num_threads(1)


@pytest.fixture
def seed() -> int:
    """The one seed every randomised test starts from."""
    return 1234


@pytest.fixture
def rng(seed: int) -> np.random.Generator:
    """A seeded numpy generator."""
    return np.random.default_rng(seed)


@pytest.fixture
def torch_gen(seed: int) -> torch.Generator:
    """A seeded torch generator."""
    return torch.Generator().manual_seed(seed)


@pytest.fixture(autouse=True)
def _close_figures():
    """Close every matplotlib figure a test opened, so figure-heavy tests do not accumulate them."""
    yield
    import matplotlib.pyplot as plt

    plt.close("all")
