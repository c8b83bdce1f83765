"""Mechanism labels on hand-built networks of every mode, the hand-crafted mode-3 network, bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from numpy.testing import assert_allclose

from physlens.models.mlp import EnsembleConfig, MLPEnsemble
from physlens.probes.mechanisms import (
    ACTIVE,
    DEAD,
    STRADDLING,
    handcrafted_mode3_network,
    kink_labels,
    mechanism_labels,
    network_parameters,
    preactivations,
    unit_pattern_labels,
    unit_states,
)
from physlens.systems.fma import sample_fma


@pytest.fixture
def inputs(seed):
    return sample_fma(4000, "product", seed=seed, dtype="float64")[0]


def _net(W_in, b_in, W_out, b_out):
    return {
        "W_in": torch.tensor(W_in, dtype=torch.float64),
        "b_in": torch.tensor(b_in, dtype=torch.float64),
        "W_out": torch.tensor(W_out, dtype=torch.float64).reshape(-1, 1),
        "b_out": torch.tensor([b_out], dtype=torch.float64),
    }


# Columns of W_in are units. Inputs lie in [0, 2]^2, so "-m - a - 1" is always < 0 (dead),
# "m + a + 1" always > 0 (active), "m - a" changes sign on the diagonal (straddling).
HAND_BUILT = {
    "1": _net([[-1.0, -2.0], [-1.0, -1.0]], [-1.0, -0.5], [0.7, -0.3], 0.4),
    "2": _net([[-1.0, 1.0], [-1.0, 1.0]], [-1.0, 1.0], [0.5, 0.5], 0.1),
    "2.5": _net([[1.0, 0.5], [1.0, 2.0]], [1.0, 0.1], [0.3, -0.2], 0.0),
    "3": _net([[1.0, -1.0], [-1.0, -1.0]], [0.0, 5.0], [-1.0, -0.5], 3.0),
    "other": _net([[1.0, 1.0], [-1.0, 0.0]], [0.0, -0.5], [-1.0, -1.0], 1.0),
}


@pytest.mark.parametrize("mode", list(HAND_BUILT))
def test_hand_built_networks_get_their_mode(mode, inputs):
    assert mechanism_labels(HAND_BUILT[mode], inputs).tolist() == [mode]


def test_mode3_sign_rules(inputs):
    # The mode-3 unit pattern with a positive always-active output weight: the same function
    # family (min of two planes), so mode 3 under the function rule, "other" under the seed's.
    variant = _net([[1.0, 1.0], [-1.0, 1.0]], [0.0, 1.0], [-1.0, 0.5], -2.0)
    assert mechanism_labels(variant, inputs).tolist() == ["other"]
    assert mechanism_labels(variant, inputs, mode3_rule="function").tolist() == ["3"]
    convex = _net([[1.0, 1.0], [-1.0, 1.0]], [0.0, 1.0], [1.0, -0.5], 2.0)  # kink with positive weight
    assert mechanism_labels(convex, inputs, mode3_rule="function").tolist() == ["other"]
    with pytest.raises(ValueError, match="mode3_rule must be one of"):
        mechanism_labels(variant, inputs, mode3_rule="loose")


def test_unit_states_match_a_brute_force_count(inputs, torch_gen):
    ensemble = MLPEnsemble(EnsembleConfig(seeds=list(range(40)), d_hidden=3, dtype="float64"))
    states = unit_states(ensemble, inputs)
    pre = inputs @ ensemble.W_in.detach() + ensemble.b_in.detach()[:, None, :]  # [model, n, h]
    positive = (pre > 0).sum(dim=1)
    expected = torch.where(positive == 0, DEAD, torch.where(positive == inputs.shape[0], ACTIVE, STRADDLING))
    assert torch.equal(states, expected)
    assert_allclose(preactivations(ensemble, inputs), pre, rtol=1e-10, atol=1e-12)
    patterns = unit_pattern_labels(states)
    counts = [(int((row == DEAD).sum()), int((row == ACTIVE).sum()), int((row == STRADDLING).sum())) for row in states]
    assert patterns.tolist() == [f"d{d} a{a} s{s}" for d, a, s in counts]
    kinks = kink_labels(states)
    assert kinks.tolist() == ["dead" if d == 3 else f"k{s}" for d, _, s in counts]


def test_handcrafted_network_is_mode3_and_multiplies(inputs):
    model = handcrafted_mode3_network(dtype="float64")
    assert mechanism_labels(model, inputs).tolist() == ["3"]
    m, a = inputs[:, 0], inputs[:, 1]
    alpha, beta, gamma = 0.85, 0.55, 0.45
    planes = torch.minimum(alpha * m + beta * a - gamma, beta * m + alpha * a - gamma)
    out = model(inputs)[:, 0].detach()
    assert_allclose(out, planes, atol=1e-12)
    # It beats the best plane (least squares) on the product distribution.
    target = m * a
    design = torch.stack([torch.ones_like(m), m, a], dim=1)
    coef = torch.linalg.lstsq(design, target[:, None]).solution
    linear_mse = float((design @ coef - target[:, None]).square().mean())
    assert float((out - target).square().mean()) < 0.6 * linear_mse
    with pytest.raises(ValueError, match="alpha must exceed beta"):
        handcrafted_mode3_network(alpha=0.1, beta=0.5)


def test_bad_networks_are_refused(inputs):
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
        mechanism_labels(MLPEnsemble(EnsembleConfig(seeds=[0], d_hidden=3)), inputs)
    with pytest.raises(ValueError, match="inputs must have shape"):
        unit_states(HAND_BUILT["3"], torch.zeros(5, 3))
    with pytest.raises(ValueError, match="finite"):
        unit_states(HAND_BUILT["3"], torch.full((5, 2), float("inf")))
    assert network_parameters({k: np.asarray(v) for k, v in HAND_BUILT["1"].items()})["W_in"].shape == (1, 2, 2)
