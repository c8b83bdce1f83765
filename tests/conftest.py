"""Shared fixtures: a fixed seed and float64 defaults for exact comparisons, and runtime type checking."""

from __future__ import annotations

import jaxtyping
import matplotlib
import numpy as np
import pytest
import torch

# Every annotation in physlens, tensor shapes included, is checked at run time for the whole test run
# (jaxtyping for the shapes, beartype for the rest). The hook decorates modules as they are imported,
# so it is installed before anything imports physlens. is_pep484_tower: an int is a float, as the
# typing spec (and every static checker) has it; beartype is stricter by default.
jaxtyping.install_import_hook("physlens", "beartype.beartype(conf=beartype.BeartypeConf(is_pep484_tower=True))")

matplotlib.use("Agg")
# The models under test are tiny: one thread is faster than two and immune to oversubscription.
torch.set_num_threads(1)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "unchecked_types: the runtime type checker is off for this test, because it pins physlens's own message "
        "for an argument of the wrong type or shape (which the checker would refuse first), or because it runs "
        "torch.compile, whose tracing the checker's shape checks do not survive",
    )


@pytest.fixture(autouse=True)
def _runtime_type_checking(request: pytest.FixtureRequest):
    """Switch the runtime type checker off for tests marked ``unchecked_types``.

    Under torch.compile, Dynamo traces through the checker's wrappers, and beartype then refuses a
    tensor of the right shape while its own explanation finds it fine (it raises its internal
    "desynchronization" error): a limit of the checker, not an annotation to fix, so the two
    compiled-path tests run unchecked.
    """
    if request.node.get_closest_marker("unchecked_types") is None:
        yield
        return
    jaxtyping.config.update("jaxtyping_disable", True)
    try:
        yield
    finally:
        jaxtyping.config.update("jaxtyping_disable", False)


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
