"""Unsupervised mechanism discovery: fingerprints depend on the function only, planted families are
recovered, permuted copies of a network land in one group, deep networks work the same way."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from numpy.testing import assert_allclose
from sklearn.metrics import adjusted_rand_score

from physlens.models.mlp import DeepEnsembleConfig, DeepMLPEnsemble, EnsembleConfig, MLPEnsemble
from physlens.probes.discovery import (
    MechanismDiscovery,
    compare_groups,
    evaluate_layers,
    function_fingerprints,
    network_layers,
    summarise_fingerprints,
)


def _stack(nets: list[dict]) -> dict[str, torch.Tensor]:
    return {k: torch.stack([torch.as_tensor(n[k], dtype=torch.float64) for n in nets]) for k in ("W_in", "b_in", "W_out", "b_out")}


def _one(W_in, b_in, W_out, b_out) -> dict[str, torch.Tensor]:
    return {"W_in": torch.tensor(W_in), "b_in": torch.tensor(b_in), "W_out": torch.tensor(W_out).reshape(-1, 1), "b_out": torch.tensor([b_out])}


def planted_families(rng: np.random.Generator, per_family: int = 25) -> tuple[dict[str, torch.Tensor], np.ndarray]:
    """Four families of width-2 networks with jittered parameters: a constant, a plane, the seed's
    roof (a ridge along the diagonal) and a valley that lifts the corner near the origin."""
    nets, labels = [], []
    for _ in range(per_family):
        j = lambda scale=0.05: float(rng.normal(0, scale))  # noqa: E731
        nets.append(_one([[-1.0, -1.0], [-1.0, -1.0]], [-3.0, -3.0], [0.5, 0.5], 0.5 + j()))  # both dead
        labels.append("constant")
        nets.append(_one([[0.7 + j(), 0.1], [0.7 + j(), 0.1]], [2.0, 2.0], [1.0, 0.0], -2.5 + j()))  # one linear unit
        labels.append("plane")
        nets.append(_one([[0.3 + j(0.02), -0.85], [-0.3 - j(0.02), -0.55]], [j(0.02), 3.0], [-1.0, -1.0], 2.55 + j()))  # roof
        labels.append("ridge")
        nets.append(_one([[0.8 + j(), 0.6], [0.8 + j(), 0.6]], [-0.6 + j(0.02), 2.0], [1.0 + j(), 0.1], -0.2 + j()))  # valley
        labels.append("valley")
    return _stack(nets), np.array(labels)


def test_fingerprints_depend_on_the_function_only(rng):
    ensemble = MLPEnsemble(EnsembleConfig(seeds=list(range(20)), d_hidden=3, dtype="float64"))
    params = {k: v.clone() for k, v in ensemble.parameter_dict().items()}
    base = function_fingerprints(params)
    order = [2, 0, 1]  # permute hidden units
    permuted = {"W_in": params["W_in"][:, :, order], "b_in": params["b_in"][:, order], "W_out": params["W_out"][:, order], "b_out": params["b_out"]}
    assert_allclose(function_fingerprints(permuted), base, atol=1e-12)
    scale = torch.tensor([2.0, 0.5, 3.0], dtype=torch.float64)  # relu(c·z)/c = relu(z) for c > 0
    rescaled = {"W_in": params["W_in"] * scale, "b_in": params["b_in"] * scale, "W_out": params["W_out"] / scale[:, None], "b_out": params["b_out"]}
    assert_allclose(function_fingerprints(rescaled), base, atol=1e-10)
    shifted = dict(params, b_out=params["b_out"] + 1.0)  # a constant shift does not change how f bends or slopes
    assert_allclose(function_fingerprints(shifted), base, atol=1e-10)
    other = {k: v.clone() for k, v in params.items()}
    other["W_out"][0, 0, 0] += 0.5  # a different function: its fingerprint moves
    assert not np.allclose(function_fingerprints(other)[0], base[0])


def test_fingerprint_summary_reads_ridges_valleys_planes_and_constants(rng):
    params, labels = planted_families(rng, per_family=3)
    summary = summarise_fingerprints(function_fingerprints(params))
    for label, check in {
        "constant": lambda i: summary.bend[i] < 1e-9 and summary.slope[i] < 1e-9 and np.isnan(summary.concave_share[i]),
        "plane": lambda i: summary.bend[i] < 1e-9 and summary.slope[i] > 0.1,
        "ridge": lambda i: summary.concave_share[i] > 1 - 1e-9,  # round-off of the planar parts aside
        "valley": lambda i: summary.concave_share[i] < 1e-9,
    }.items():
        assert all(check(i) for i in np.flatnonzero(labels == label)), label


def test_discovery_recovers_planted_mechanisms_and_groups_permuted_copies(rng):
    params, labels = planted_families(rng)
    # Append a permuted copy (units swapped) of one network of every family.
    originals = [int(np.flatnonzero(labels == family)[0]) for family in ("constant", "plane", "ridge", "valley")]
    copies = {"W_in": params["W_in"][originals][:, :, [1, 0]], "b_in": params["b_in"][originals][:, [1, 0]],
              "W_out": params["W_out"][originals][:, [1, 0]], "b_out": params["b_out"][originals]}  # fmt: skip
    both = {k: torch.cat([params[k], copies[k]]) for k in params}
    fingerprints = function_fingerprints(both)
    discovery = MechanismDiscovery(max_groups=8, random_state=0).fit(fingerprints)
    groups = discovery.labels_
    n = len(labels)
    comparison = compare_groups(groups[:n], labels)
    assert all(purity == 1.0 for _, purity in comparison.majority.values())  # no group mixes two mechanisms
    assert adjusted_rand_score(labels, groups[:n]) > 0.9
    for k, original in enumerate(originals):
        assert groups[n + k] == groups[original]  # the permuted copy sits with its original
    assert (discovery.predict(fingerprints) == groups).all()
    assert discovery.n_groups_ == len(set(groups)) >= 4
    sizes = np.bincount(groups)
    assert (np.diff(sizes) <= 0).all()  # numbered by size
    assert comparison.adjusted_rand == pytest.approx(adjusted_rand_score(labels, groups[:n]))
    assert comparison.table.to_numpy().sum() == n and all(r > 0.5 for r in comparison.recall.values())
    assert {label for label, _ in comparison.majority.values()} == set(labels)


def test_deep_networks_fingerprint_like_the_function_they_compute(rng):
    # A two-layer network whose second hidden layer passes the first one's (non-negative) outputs
    # through unchanged computes the one-layer network exactly.
    single = MLPEnsemble(EnsembleConfig(seeds=[3, 4, 5], dtype="float64"))
    p = single.parameter_dict()
    identity = torch.eye(2, dtype=torch.float64).expand(3, 2, 2)
    layers = [(p["W_in"], p["b_in"]), (identity, torch.zeros(3, 2, dtype=torch.float64)), (p["W_out"], p["b_out"])]
    assert_allclose(function_fingerprints(layers), function_fingerprints(single), atol=1e-12)
    deep = DeepMLPEnsemble(DeepEnsembleConfig(seeds=[1, 2], d_hidden=[3, 2], dtype="float64"))
    points = torch.rand(7, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    with torch.no_grad():
        expected = deep(points.unsqueeze(0).expand(2, -1, -1))[..., 0]
    assert_allclose(evaluate_layers(network_layers(deep), points), expected, atol=1e-12)
    assert function_fingerprints(deep, n_points=16).shape == (2, 4 * 16 + 2)
    # any callable mapping points [n, 2] to outputs [model, n] works, e.g. m·a itself
    product = function_fingerprints(lambda x: (x[:, 0] * x[:, 1])[None], n_points=64)
    bends = product[0, :-2].reshape(64, 4) * np.sqrt(4 * 64)  # [point, direction]; windows leaving the support read 0
    assert_allclose(bends[:, :2], 0, atol=1e-9)  # m·a is linear along m and along a
    assert set(np.round(bends[:, 2], 9)) <= {0.0, 1.0} and np.isclose(bends[:, 2], 1).sum() > 10  # convex along the diagonal
    assert set(np.round(bends[:, 3], 9)) <= {0.0, -1.0} and np.isclose(bends[:, 3], -1).sum() > 10  # concave across it


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="step must be a number in"):
        function_fingerprints(MLPEnsemble(EnsembleConfig(seeds=[0])), step=2.0)
    with pytest.raises(ValueError, match="one output"):
        network_layers([(torch.zeros(1, 2, 3), torch.zeros(1, 3))])
    with pytest.raises(ValueError, match="takes 2 inputs"):
        network_layers([(torch.zeros(1, 2, 3), torch.zeros(1, 3)), (torch.zeros(1, 2, 1), torch.zeros(1, 1))])
    with pytest.raises(ValueError, match="at least 2 networks"):
        MechanismDiscovery().fit(np.zeros((1, 5)))
    with pytest.raises(ValueError, match="not fitted"):
        MechanismDiscovery().predict(np.zeros((2, 5)))
    with pytest.raises(ValueError, match="one entry per network"):
        compare_groups([0, 1], ["a"])


def test_a_lone_bending_network_is_a_group_of_its_own():
    from physlens.probes.discovery import MechanismDiscovery, function_fingerprints
    from physlens.probes.mechanisms import handcrafted_mode3_network

    plane = {"W_in": torch.ones(3, 2, 2, dtype=torch.float64), "b_in": torch.ones(3, 2, dtype=torch.float64),
             "W_out": torch.ones(3, 2, 1, dtype=torch.float64), "b_out": torch.zeros(3, 1, dtype=torch.float64)}
    bent = {k: v.detach().to(torch.float64).unsqueeze(0) for k, v in handcrafted_mode3_network().parameter_dict().items()}
    both = {k: torch.cat([plane[k], bent[k]]) for k in plane}
    labels = MechanismDiscovery(random_state=0).fit(function_fingerprints(both, n_points=32)).labels_
    assert labels[:3].tolist() == [labels[0]] * 3 and labels[3] != labels[0]
