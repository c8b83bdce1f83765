"""Latent regression on polynomial features and identification of a quantity up to a monotone map."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.base import clone
from sklearn.linear_model import LinearRegression
from sklearn.preprocessing import PolynomialFeatures
from transformer_lens.hook_points import HookPoint
from transformer_lens.HookedRootModule import HookedRootModule

from physlens.probes.symbolic import record_io
from physlens.probes.invariants import (
    PolynomialLatentRegression,
    match_quantities,
    monomial_exponents,
    monomial_name,
    polynomial_features,
)
from physlens.systems import ORBIT_STATE_NAMES, CentralPotentialSystem, angular_momentum, orbit_energy


class PlantedInvariant(HookedRootModule):
    """A hand-built "tower" whose latent is −403·(x·vy − y·vx) + 0.7, read at ``hook_latent``."""

    def __init__(self) -> None:
        super().__init__()
        self.hook_product = HookPoint()
        self.hook_latent = HookPoint()
        self.setup()

    def forward(self, states: torch.Tensor) -> torch.Tensor:
        x, y, vx, vy = states.unbind(-1)
        products = self.hook_product(torch.stack([x * vy, y * vx], dim=-1))
        return self.hook_latent((-403.0 * (products[:, 0] - products[:, 1]) + 0.7)[:, None])


@pytest.fixture
def orbit_states(seed: int) -> torch.Tensor:
    return CentralPotentialSystem(dtype="float64").sample(100, 10, seed=seed, random_times=True).states.reshape(-1, 4)


def test_latent_regression_recovers_a_planted_invariant(orbit_states: torch.Tensor) -> None:
    X, latent = record_io(PlantedInvariant(), orbit_states, output_hook="hook_latent")
    probe = PolynomialLatentRegression(degree=2, feature_names=ORBIT_STATE_NAMES).fit(X, latent)
    assert probe.coefficient("x*vy") == pytest.approx(-403.0, rel=1e-9)
    assert probe.coefficient("y*vx") == pytest.approx(403.0, rel=1e-9)
    assert probe.coefficient("1") == pytest.approx(0.7, rel=1e-8)
    assert probe.coefficient("x*vy") / probe.coefficient("y*vx") == pytest.approx(-1.0, abs=1e-10)
    assert [term for term, _, _ in probe.dominant_terms(2)] == ["x*vy", "y*vx"] or [
        term for term, _, _ in probe.dominant_terms(2)
    ] == ["y*vx", "x*vy"]
    assert probe.r2_ == pytest.approx(1.0, abs=1e-12)
    np.testing.assert_allclose(probe.predict(X), latent, rtol=1e-9, atol=1e-9)


def test_latent_regression_matches_scikit_learn_at_degree_three(rng: np.random.Generator) -> None:
    X = rng.normal(size=(300, 3))
    y = np.sin(X[:, 0]) + X[:, 1] * X[:, 2] ** 2 + 0.1 * rng.normal(size=300)
    ours = PolynomialLatentRegression(degree=3).fit(X, y)
    features = PolynomialFeatures(3).fit_transform(X)
    reference = LinearRegression(fit_intercept=False).fit(features, y)
    np.testing.assert_allclose(ours.predict(X), reference.predict(features), rtol=1e-8, atol=1e-10)
    assert ours.r2_ == pytest.approx(reference.score(features, y), rel=1e-10)
    assert ours.score(X, y) == pytest.approx(ours.r2_, rel=1e-12)
    assert len(ours.feature_names_) == features.shape[1] == 20
    ridge = clone(ours).set_params(alpha=1e-3).fit(X, y)
    assert ridge.r2_ <= ours.r2_ + 1e-12 and ridge.r2_ > ours.r2_ - 0.05


def test_monomial_helpers() -> None:
    exponents = monomial_exponents(2, 2)
    assert exponents == [(0, 0), (1, 0), (0, 1), (2, 0), (1, 1), (0, 2)]
    assert monomial_name((1, 0, 0, 1), ORBIT_STATE_NAMES) == "x*vy"
    assert monomial_name((0, 2), ("a", "b")) == "b^2"
    assert monomial_name((0, 0), ("a", "b")) == "1"
    X = np.array([[2.0, 3.0]])
    np.testing.assert_allclose(polynomial_features(X, exponents), [[1, 2, 3, 4, 6, 9]])


def test_latent_regression_refuses_bad_input(rng: np.random.Generator) -> None:
    X = rng.normal(size=(50, 2))
    with pytest.raises(ValueError, match="samples but X has"):
        PolynomialLatentRegression().fit(X, np.zeros(40))
    with pytest.raises(ValueError, match="degree must be 1, 2 or 3"):
        PolynomialLatentRegression(degree=4).fit(X, np.zeros(50))
    with pytest.raises(ValueError, match="finite"):
        PolynomialLatentRegression().fit(np.where(X > 1, np.nan, X), np.zeros(50))
    with pytest.raises(ValueError, match="feature_names has 3 names"):
        PolynomialLatentRegression(feature_names=["a", "b", "c"]).fit(X, np.zeros(50))
    with pytest.raises(ValueError, match="unknown term"):
        PolynomialLatentRegression().fit(X, X[:, 0]).coefficient("z")


def test_match_quantities_identifies_up_to_a_monotone_map(orbit_states: torch.Tensor) -> None:
    one_per_orbit = orbit_states[::10]  # states of one orbit tie in L up to round-off, which scrambles ranks
    ang = angular_momentum(one_per_orbit).numpy()
    energy = orbit_energy(one_per_orbit).numpy()
    latent = np.tanh(2 * ang) - 5.0  # monotone in L, but not linear
    matches = {m.name: m for m in match_quantities(latent, {"L": ang, "E": energy, "L^3": ang**3, "-L": -ang})}
    assert matches["L"].spearman == pytest.approx(1.0)
    assert matches["-L"].spearman == pytest.approx(-1.0)
    assert matches["L"].isotonic_r2 > 0.999 and matches["-L"].isotonic_r2 > 0.999
    assert matches["L^3"].isotonic_r2 > 0.999  # same ranks as L: a monotone map cannot tell them apart
    assert matches["E"].isotonic_r2 < 0.5
    reference = LinearRegression().fit(ang[:, None], latent).score(ang[:, None], latent)
    assert matches["L"].linear_r2 == pytest.approx(reference, rel=1e-10)
    assert matches["L"].linear_r2 < matches["L"].isotonic_r2
    ranks = lambda v: np.argsort(np.argsort(v))  # noqa: E731
    assert matches["E"].spearman == pytest.approx(np.corrcoef(ranks(latent), ranks(energy))[0, 1], abs=1e-10)


def test_match_quantities_refuses_bad_input() -> None:
    with pytest.raises(ValueError, match="at least one quantity"):
        match_quantities(np.arange(10.0), {})
    with pytest.raises(ValueError, match="constant"):
        match_quantities(np.arange(10.0), {"c": np.ones(10)})
    with pytest.raises(ValueError, match="samples but X has"):
        match_quantities(np.arange(10.0), {"c": np.arange(9.0)})
    with pytest.raises(ValueError, match=r"\[n\] or \[n, 1\]"):
        match_quantities(np.ones((10, 2)), {"c": np.arange(10.0)})
