"""Mechanism labels from what units do to the function: hand-built networks of every mode, the exact
(quadrature) unit statistics against an independent Monte-Carlo estimate, label stability, bad input."""

from __future__ import annotations

import numpy as np
import pytest
import sympy
import torch
from numpy.testing import assert_allclose

from physlens.models.mlp import EnsembleConfig, MLPEnsemble
from physlens.probes.mechanisms import _part_integrals, _preactivation_range
from physlens.probes.mechanisms import (
    ACTIVE,
    DEAD,
    DEFAULT_TOLERANCE,
    MODES,
    STRADDLING,
    crease_angles,
    crease_labels,
    handcrafted_mode3_network,
    kink_labels,
    labels_from_states,
    mechanism_labels,
    network_formula,
    network_parameters,
    preactivations,
    region_mse,
    relabel_on_samples,
    seed_sign_signature,
    sign_pattern_states,
    unit_pattern_labels,
    unit_states,
    unit_statistics,
)


def sample_product(n: int, rng: np.random.Generator) -> np.ndarray:
    """The seed's uniform-in-product distribution, drawn here with numpy, independently of the library."""
    force, u, swap = rng.random(n), 0.5 + 0.5 * rng.random(n), rng.random(n) < 0.5
    return np.stack([np.where(swap, u, force / u), np.where(swap, force / u, u)], axis=1)


def _net(W_in, b_in, W_out, b_out):
    return {
        "W_in": torch.tensor(W_in, dtype=torch.float64),
        "b_in": torch.tensor(b_in, dtype=torch.float64),
        "W_out": torch.tensor(W_out, dtype=torch.float64).reshape(-1, 1),
        "b_out": torch.tensor([b_out], dtype=torch.float64),
    }


# Columns of W_in are units. Inputs lie in [0, 2]^2: "-m - a - 1" never fires (dead), "m + a + 1"
# always fires (linear), "m - a" changes sign on the diagonal (a crease).
HAND_BUILT = {
    "1": _net([[-1.0, -2.0], [-1.0, -1.0]], [-1.0, -0.5], [0.7, -0.3], 0.4),
    "2": _net([[-1.0, 1.0], [-1.0, 1.0]], [-1.0, 1.0], [0.5, 0.5], 0.1),
    "2.5": _net([[1.0, 0.5], [1.0, 2.0]], [1.0, 0.1], [0.3, -0.2], 0.0),
    "3": _net([[1.0, -1.0], [-1.0, -1.0]], [0.0, 5.0], [-1.0, -0.5], 3.0),
    "valley": _net([[1.0, 1.0], [-1.0, 1.0]], [0.0, 1.0], [1.0, -0.5], 2.0),
    "ridge+valley": _net([[1.0, 1.0], [-1.0, 1.0]], [0.0, -1.0], [-1.0, 1.0], 1.0),
    "same-sign pair": _net([[1.0, 1.0], [-1.0, 1.0]], [0.0, -1.0], [-1.0, -1.0], 1.0),
}


@pytest.mark.parametrize("mode", list(HAND_BUILT))
def test_hand_built_networks_get_their_mode(mode, rng):
    assert mechanism_labels(HAND_BUILT[mode]).tolist() == [mode]
    inputs = torch.from_numpy(sample_product(20_000, rng))
    assert mechanism_labels(HAND_BUILT[mode], inputs=inputs).tolist() == [mode]  # and on a sample
    assert set(MODES) == set(HAND_BUILT)


def test_min_of_two_planes_whose_second_unit_fires_on_99_percent_is_mode_3(rng):
    # The seed's roof, min(0.85m + 0.55a - 0.45, 0.55m + 0.85a - 0.45) = L1 - 0.3·relu(m - a) with
    # L1 written as (c - 0.45) - relu(c - 0.85m - 0.55a): the second unit fires only where
    # 0.85m + 0.55a < c, and c is set so that this holds on 99 % of the distribution.
    points = sample_product(2_000_000, rng)
    c = float(np.quantile(0.85 * points[:, 0] + 0.55 * points[:, 1], 0.99))
    network = _net([[0.3, -0.85], [-0.3, -0.55]], [0.0, c], [-1.0, -1.0], c - 0.45)
    stats = unit_statistics(network)
    assert_allclose(stats.firing_fraction[0, 1], 0.99, atol=2e-3)
    assert 0 < stats.linearisation_change[0, 1] < DEFAULT_TOLERANCE  # its ReLU acts, but barely
    assert mechanism_labels(network).tolist() == ["3"]
    # The old all-points rule calls that unit straddling on any decent sample, so the network was "other".
    sample = torch.from_numpy(sample_product(8000, rng))
    assert sign_pattern_states(network, sample).tolist() == [[STRADDLING, STRADDLING]]
    assert mechanism_labels(network, inputs=sample).tolist() == ["3"]
    # The hand-crafted network (its second unit fires everywhere) is mode 3 and carries the seed's signs.
    assert mechanism_labels(handcrafted_mode3_network(dtype="float64")).tolist() == ["3"]
    assert seed_sign_signature(network).tolist() == [True]
    assert seed_sign_signature(HAND_BUILT["valley"]).tolist() == [False]


def test_exact_unit_statistics_match_an_independent_monte_carlo(rng):
    # 30 width-3 networks: the quadrature's elementwise steps run on a block of 21 networks and a shorter one
    ensemble = MLPEnsemble(EnsembleConfig(seeds=list(range(30)), d_hidden=3, dtype="float64"))
    points = sample_product(1_000_000, rng)
    W, b = ensemble.W_in.detach().numpy(), ensemble.b_in.detach().numpy()
    w = ensemble.W_out.detach().numpy()[..., 0]
    pre = np.einsum("nd,mdh->mnh", points, W) + b[:, None, :]
    scale = np.sqrt(1 / 12)  # std of F ~ U(0, 1)
    stats = unit_statistics(ensemble)
    assert_allclose(stats.firing_fraction, (pre > 0).mean(1), atol=3e-3)
    assert_allclose(stats.removal_change, np.abs(w) * np.sqrt((np.clip(pre, 0, None) ** 2).mean(1)) / scale, rtol=1e-2, atol=1e-3)
    assert_allclose(stats.linearisation_change, np.abs(w) * np.sqrt((np.clip(-pre, 0, None) ** 2).mean(1)) / scale, rtol=1e-2, atol=1e-3)
    # uniform data: the same against a numpy sample of the unit square (std of m·a there is √(7/144))
    square = rng.random((1_000_000, 2))
    pre = np.einsum("nd,mdh->mnh", square, W) + b[:, None, :]
    uniform = unit_statistics(ensemble, "uniform")
    assert_allclose(uniform.firing_fraction, (pre > 0).mean(1), atol=3e-3)
    assert_allclose(uniform.linearisation_change, np.abs(w) * np.sqrt((np.clip(-pre, 0, None) ** 2).mean(1) / (7 / 144)), rtol=1e-2, atol=1e-3)
    # the sample path gives the same means whether the sample is shared or given per model
    shared = torch.from_numpy(square[:3000])
    one, per_model = unit_statistics(ensemble, inputs=shared), unit_statistics(ensemble, inputs=shared[None].expand(30, -1, -1))
    assert_allclose(one.removal_change, per_model.removal_change, rtol=1e-12)
    assert one.n_points == 3000 and stats.n_points is None


def test_tolerance_decides_dead_and_linear():
    # unit 0 always fires with a tiny output weight: it does nothing (dead) unless the tolerance is tiny
    network = _net([[1.0, 1.0], [1.0, -1.0]], [1.0, 0.0], [1e-3, -1.0], 0.0)
    assert unit_states(network).tolist() == [[DEAD, STRADDLING]]
    assert unit_states(network, tolerance=1e-6).tolist() == [[ACTIVE, STRADDLING]]
    assert mechanism_labels(network).tolist() == ["2"]
    stats = unit_statistics(network)
    assert unit_states(stats, tolerance=0.02).tolist() == unit_states(network, tolerance=0.02).tolist()
    with pytest.raises(ValueError, match="tolerance must be >= 0"):
        unit_states(network, tolerance=-0.1)


def test_labels_from_states_cover_every_pattern():
    states = torch.tensor([[DEAD, DEAD], [DEAD, STRADDLING], [ACTIVE, ACTIVE], [STRADDLING, ACTIVE], [ACTIVE, STRADDLING],
                           [STRADDLING, STRADDLING], [STRADDLING, STRADDLING]])  # fmt: skip
    weights = np.array([[1, 1], [1, -1], [1, 1], [-1, 1], [-1, 2], [-1, 1], [2, 3]], dtype=float)
    assert labels_from_states(states, weights).tolist() == ["1", "2", "2.5", "3", "valley", "ridge+valley", "same-sign pair"]
    with pytest.raises(ValueError, match=r"\[model, 2\]"):
        labels_from_states(torch.zeros(2, 3, dtype=torch.long), np.zeros((2, 3)))


def test_relabelling_on_samples_is_stable_away_from_the_threshold_and_flips_on_it():
    # Far from the tolerance every sample agrees with the exact label ...
    stack = {k: torch.stack([HAND_BUILT[m][k] for m in MODES]) for k in HAND_BUILT["1"]}
    exact = mechanism_labels(stack)
    relabels = relabel_on_samples(stack, n_points=4000, repeats=3, seed=5)
    assert relabels.shape == (3, len(MODES)) and (relabels == exact[None]).all()
    # ... and a unit whose linearisation change sits at the tolerance flips between samples: find the
    # offset that puts the change of "c − m − a" (a crease cutting off the far corners) at the default 0.05.
    offsets = np.linspace(2.0, 2.6, 601)
    change = np.array([unit_statistics(_net([[1.0, -1.0], [-1.0, -1.0]], [0.0, o], [-1.0, -1.0], 1.0)).linearisation_change[0, 1] for o in offsets])
    edge = float(offsets[np.argmin(np.abs(change - DEFAULT_TOLERANCE))])
    borderline = _net([[1.0, -1.0], [-1.0, -1.0]], [0.0, edge], [-1.0, -1.0], 1.0)
    labels = relabel_on_samples(borderline, n_points=256, repeats=20, seed=9)[:, 0]
    assert set(labels) == {"3", "same-sign pair"}
    with pytest.raises(ValueError, match="n_points must be a positive integer"):
        relabel_on_samples(borderline, n_points=0)


def test_states_for_any_width_and_their_labels(rng):
    ensemble = MLPEnsemble(EnsembleConfig(seeds=list(range(40)), d_hidden=3, dtype="float64"))
    stats = unit_statistics(ensemble)
    states = unit_states(stats)
    removal, linear = stats.removal_change <= DEFAULT_TOLERANCE, stats.linearisation_change <= DEFAULT_TOLERANCE
    assert torch.equal(states, torch.from_numpy(np.where(removal, DEAD, np.where(linear, ACTIVE, STRADDLING))))
    counts = [(int((row == DEAD).sum()), int((row == ACTIVE).sum()), int((row == STRADDLING).sum())) for row in states]
    assert unit_pattern_labels(states).tolist() == [f"d{d} a{a} s{s}" for d, a, s in counts]
    assert kink_labels(states).tolist() == ["dead" if d == 3 else f"k{s}" for d, _, s in counts]
    w = ensemble.W_out.detach().numpy()[..., 0]
    expected = []
    for row, weights in zip(states.numpy(), w):
        crease = row == STRADDLING
        r, v = int((crease & (weights < 0)).sum()), int((crease & (weights > 0)).sum())
        expected.append("constant" if (row == DEAD).all() else ("plane" if r + v == 0 else f"r{r}v{v}"))
    assert crease_labels(states, ensemble).tolist() == expected == crease_labels(states, stats).tolist()
    # the old rule, by brute force on a sample
    inputs = torch.from_numpy(sample_product(4000, rng))
    pre = inputs @ ensemble.W_in.detach() + ensemble.b_in.detach()[:, None, :]
    positive = (pre > 0).sum(dim=1)
    brute = torch.where(positive == 0, DEAD, torch.where(positive == inputs.shape[0], ACTIVE, STRADDLING))
    assert torch.equal(sign_pattern_states(ensemble, inputs), brute)
    assert_allclose(preactivations(ensemble, inputs), pre, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("shared", [True, False])
def test_preactivation_range_in_blocks_is_the_extremes_of_every_preactivation(rng, shared):
    # 300 width-3 networks on 5000 shared points: blocks of 52 units and a shorter last block
    W_in, b_in = rng.normal(size=(300, 2, 3)), rng.normal(size=(300, 3))
    params = {"W_in": torch.from_numpy(W_in), "b_in": torch.from_numpy(b_in),
              "W_out": torch.ones(300, 3, 1, dtype=torch.float64), "b_out": torch.zeros(300, 1, dtype=torch.float64)}  # fmt: skip
    inputs = sample_product(5000, rng) if shared else sample_product(300 * 200, rng).reshape(300, 200, 2)
    pre = (inputs @ W_in if shared else np.einsum("mnd,mdh->mnh", inputs, W_in)) + b_in[:, None, :]
    lowest, highest = _preactivation_range(params, torch.from_numpy(inputs))
    assert_allclose(lowest.numpy(), pre.min(axis=1), rtol=1e-12, atol=1e-12)
    assert_allclose(highest.numpy(), pre.max(axis=1), rtol=1e-12, atol=1e-12)


def test_sample_moments_in_blocks_are_the_means_of_every_preactivation(rng):
    # 300 width-3 networks on 5001 shared points: blocks of 52 units (a network's units split between two blocks)
    # and a shorter last block
    W_in, b_in, w = rng.normal(size=(300, 2, 3)), rng.normal(size=(300, 3)), rng.normal(size=(300, 3))
    params = {"W_in": torch.from_numpy(W_in), "b_in": torch.from_numpy(b_in), "W_out": torch.from_numpy(w[..., None]),
              "b_out": torch.zeros(300, 1, dtype=torch.float64)}  # fmt: skip
    inputs = sample_product(5001, rng)
    pre = inputs @ W_in + b_in[:, None, :]
    stats = unit_statistics(params, inputs=torch.from_numpy(inputs))
    scale = np.sqrt(1 / 12)  # std of F = m·a ~ U(0, 1) on the product distribution
    np.testing.assert_array_equal(stats.firing_fraction, (pre > 0).sum(1) / 5001)  # counts are exact
    assert_allclose(stats.removal_change, np.abs(w) * np.sqrt((np.clip(pre, 0, None) ** 2).mean(1)) / scale, rtol=1e-12)
    assert_allclose(stats.linearisation_change, np.abs(w) * np.sqrt((np.clip(-pre, 0, None) ** 2).mean(1)) / scale, rtol=1e-12)


def test_part_integrals_against_a_midpoint_rule(rng):
    # rising, falling and flat lines, crossing zero inside (0, 1) or not, and exact zeros
    A = np.r_[rng.normal(size=200) * 3, 0.0, 0.0, 0.0, 1e-14, -1e-14, 2.0, -2.0, 0.5]
    B = np.r_[rng.normal(size=200) * 2, 0.7, -0.7, 0.0, 0.3, -0.3, -1.0, 1.0, 0.0]
    t = (np.arange(200_000) + 0.5) / 200_000
    line = A[:, None] * t + B[:, None]
    fires, positive, negative = (v.numpy() for v in _part_integrals(torch.from_numpy(A), torch.from_numpy(B)))
    assert_allclose(fires, (line > 0).mean(1), atol=2e-5)
    assert_allclose(positive, (np.clip(line, 0, None) ** 2).mean(1), rtol=1e-6, atol=1e-9)
    assert_allclose(negative, (np.clip(-line, 0, None) ** 2).mean(1), rtol=1e-6, atol=1e-9)
    # the negative part is the positive part of the mirrored line, bit for bit
    _, mirrored, _ = _part_integrals(torch.from_numpy(-A), torch.from_numpy(-B))
    np.testing.assert_array_equal(negative, mirrored.numpy())


def test_crease_angles_formula_and_region_mse(rng):
    along = _net([[1.0, 1.0], [-1.0, 1.0]], [0.0, -1.0], [-1.0, 1.0], 1.0)  # m − a: along the diagonal; m + a: across
    assert_allclose(crease_angles(along), [[0.0, 90.0]], atol=1e-9)
    oblique = _net([[1.0, 1.0], [0.0, 0.0]], [0.0, 0.0], [1.0, 1.0], 0.0)  # zero line m = 0: 45° from the diagonal
    assert_allclose(crease_angles(oblique)[0, 0], 45.0, atol=1e-9)
    # the written-out formula is the network
    network = handcrafted_mode3_network(dtype="float64")
    formula = network_formula(network, digits=15)
    points = torch.from_numpy(sample_product(50, rng))
    m, a = sympy.symbols("m a")
    evaluate = sympy.lambdify((m, a), formula, "numpy")
    assert_allclose(evaluate(points[:, 0].numpy(), points[:, 1].numpy()), network(points)[:, 0].detach().numpy(), atol=1e-9)
    assert "Max" in str(formula) and str(formula).count("Max") == 1  # the linear unit is written as a plane
    full = network_formula(network, tolerance=None)
    assert str(full).count("Max") == 2
    # MSE inside and outside a region, against a direct computation
    region = points[:, 0] > points[:, 1]
    error = (network(points)[:, 0].detach() - points[:, 0] * points[:, 1]).square().numpy()
    assert_allclose(region_mse(network, points, region), [[error[region.numpy()].mean(), error[~region.numpy()].mean()]], rtol=1e-10)
    with pytest.raises(ValueError, match="boolean mask"):
        region_mse(network, points, region[:-1])
    with pytest.raises(ValueError, match="index must be an integer"):
        network_formula(network, index=3)


@pytest.mark.unchecked_types
def test_bad_networks_are_refused():
    seed_style = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.ReLU(), torch.nn.Linear(2, 1))
    with pytest.raises(TypeError, match="another architecture"):
        network_parameters(seed_style)
    bad = dict(HAND_BUILT["3"])
    bad["W_out"] = torch.zeros(3, 1, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"W_out must have shape \[1, 2, 1\]"):
        network_parameters(bad)
    with pytest.raises(ValueError, match="missing"):
        network_parameters({"W_in": torch.zeros(2, 2)})
    nan = dict(HAND_BUILT["3"])
    nan["b_in"] = torch.tensor([float("nan"), 0.0], dtype=torch.float64)
    with pytest.raises(ValueError, match="b_in must contain only finite"):
        network_parameters(nan)
    with pytest.raises(ValueError, match="width-2"):
        mechanism_labels(MLPEnsemble(EnsembleConfig(seeds=[0], d_hidden=3)))
    with pytest.raises(ValueError, match="distribution must be one of"):
        unit_statistics(HAND_BUILT["3"], "gaussian")
    with pytest.raises(ValueError, match="inputs must have shape"):
        unit_statistics(HAND_BUILT["3"], inputs=torch.zeros(5, 3))
    with pytest.raises(ValueError, match="finite"):
        unit_statistics(HAND_BUILT["3"], inputs=torch.full((5, 2), float("inf")))
    assert network_parameters({k: np.asarray(v) for k, v in HAND_BUILT["1"].items()})["W_in"].shape == (1, 2, 2)
