"""The algorithm scan and the scores: permutation-invariant features, the classifier, the corner rule,
the seed's own mode-3 score against hand computation and an independent transcription, ROC with intervals."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from numpy.testing import assert_allclose
from scipy import stats
from sklearn.base import clone

from physlens.models.mlp import EnsembleConfig, MLPEnsemble
from physlens.probes.mechanisms import handcrafted_mode3_network, labels_from_states, mechanism_labels, sign_pattern_states
from physlens.probes.scan import (
    AlgorithmScan,
    corner_rule_labels,
    data_features,
    flatten_parameters,
    mode3_sign_count,
    n_parameters,
    parameter_features,
    roc_auc,
    scan_feature_names,
    scan_features,
    seed_mode3_score,
    unflatten_parameters,
)
from physlens.systems.fma import support_vertices


def _permute_units(X: np.ndarray, width: int, order: np.ndarray) -> np.ndarray:
    p = unflatten_parameters(X, width)
    permuted = {"W_in": p["W_in"][:, :, order], "b_in": p["b_in"][:, order], "W_out": p["W_out"][:, order], "b_out": p["b_out"]}
    return flatten_parameters(permuted)


def _flat(W_in, b_in, W_out, b_out) -> np.ndarray:
    return flatten_parameters({
        "W_in": torch.tensor(W_in, dtype=torch.float64), "b_in": torch.tensor(b_in, dtype=torch.float64),
        "W_out": torch.tensor(W_out, dtype=torch.float64).reshape(-1, 1), "b_out": torch.tensor([b_out], dtype=torch.float64),
    })  # fmt: skip


@pytest.fixture(scope="module")
def labelled_networks():
    """Random-init width-2 networks (a wide init, so every mechanism occurs) and their labels on product data."""
    ensemble = MLPEnsemble(EnsembleConfig(seeds=list(range(600)), dtype="float64", init_scale=2.0))
    return flatten_parameters(ensemble), mechanism_labels(ensemble)


def test_flat_parameters_round_trip():
    ensemble = MLPEnsemble(EnsembleConfig(seeds=[1, 2, 3], d_hidden=4, dtype="float64"))
    X = flatten_parameters(ensemble)
    assert X.shape == (3, n_parameters(4)) == (3, 17)
    back = unflatten_parameters(X, 4)
    for name, value in ensemble.parameter_dict().items():
        assert torch.equal(back[name], value)
    with pytest.raises(ValueError, match=r"X must have shape \[model, 9\]"):
        unflatten_parameters(X, 2)
    with pytest.raises(ValueError, match="finite"):
        unflatten_parameters(np.full((1, 9), np.nan), 2)


def test_the_seeds_score_reproduces_hand_computed_values():
    # W_in columns are units: unit 0 = (1, −1), unit 1 = (−1, −1), so W·(1, 1) = (0, −2), which after
    # normalising is v = (0, −1): its angle to (1, 1) is 3π/4, θ = 1 and the first term is sigmoid(1).
    # softmax(−v) = softmax(0, 1); with b_in = (0, 1) softmax(b_in) is the same vector, cosine 1.
    # W_out = (−1, −1): mean sigmoid(1); b_out = 0: sigmoid(0) = 1/2. Weights 4, 2, 2, 1 over 9.
    s1 = 1 / (1 + math.exp(-1))
    X = _flat([[1.0, -1.0], [-1.0, -1.0]], [0.0, 1.0], [-1.0, -1.0], 0.0)
    assert_allclose(seed_mode3_score(X), [(4 * s1 + 2 * 1.0 + 2 * s1 + 0.5) / 9], rtol=1e-12)
    # Swapping the hidden biases turns softmax(b_in) into (e, 1)/(1 + e): the cosine with (1, e)/(1 + e) is 2e/(1 + e²).
    X = _flat([[1.0, -1.0], [-1.0, -1.0]], [1.0, 0.0], [-1.0, -1.0], 0.0)
    e = math.e
    assert_allclose(seed_mode3_score(X), [(4 * s1 + 2 * (2 * e / (1 + e**2)) + 2 * s1 + 0.5) / 9], rtol=1e-12)
    # A network whose W·(1, 1) points along (1, 1): θ = 0, first term sigmoid(0) = 1/2; equal biases give
    # a uniform softmax, and v = (1, 1)/√2 gives a uniform softmax(−v) too: cosine 1; W_out = 0: 1/2; b_out = 2: sigmoid(2).
    X = _flat([[1.0, 2.0], [1.0, 2.0]], [0.3, 0.3], [0.0, 0.0], 2.0)
    v = np.array([2.0, 4.0]) / math.sqrt(20)  # not parallel to (1, 1): compute the angle term by hand
    theta = math.acos(v.sum() / math.sqrt(2)) / (3 * math.pi / 4)
    o1 = np.exp(-v) / np.exp(-v).sum()
    cosine = (o1 / np.linalg.norm(o1)) @ (np.ones(2) / math.sqrt(2))
    expected = (4 / (1 + math.exp(-(1 - abs(1 - theta)))) + 2 * cosine + 2 * 0.5 + 1 / (1 + math.exp(-2))) / 9
    assert_allclose(seed_mode3_score(X), [expected], rtol=1e-12)
    with pytest.raises(ValueError, match="width-2 networks only"):
        seed_mode3_score(np.zeros((1, 13)), d_hidden=3)


def test_the_seeds_score_matches_a_transcription_of_the_seeds_code(rng):
    """The seed's mode_3_score transcribed line by line in numpy (its weights are [h, in] like nn.Linear)."""
    X = flatten_parameters(MLPEnsemble(EnsembleConfig(seeds=list(range(200)), dtype="float64", init_scale=3.0)))
    p = unflatten_parameters(X, 2)

    def sigmoid(x):
        return 1 / (1 + np.exp(-x))

    def softmax(x):
        e = np.exp(x - x.max())
        return e / e.sum()

    expected = []
    for k in range(X.shape[0]):
        weight, bias = p["W_in"][k].numpy().T, p["b_in"][k].numpy()  # nn.Linear layout
        out_weight, out_bias = p["W_out"][k].numpy().T, p["b_out"][k].numpy()
        v1 = np.array([1.0, 1.0])
        v2 = weight @ v1
        v1, v2 = v1 / np.linalg.norm(v1), v2 / np.linalg.norm(v2)
        theta = np.arccos(np.clip(v1 @ v2, -1, 1)) / (3 * np.pi / 4)
        scores = [sigmoid(1 - abs(1 - theta))]
        o1, o2 = softmax(-v2), softmax(bias)
        scores.append(o1 / np.linalg.norm(o1) @ (o2 / np.linalg.norm(o2)))
        scores.append(sigmoid(-out_weight).mean())
        scores.append(sigmoid(out_bias).mean())
        n = np.array([weight.size, bias.size, out_weight.size, out_bias.size])
        expected.append(float((n / n.sum()) @ np.array(scores)))
    assert_allclose(seed_mode3_score(X), expected, rtol=1e-12)


def test_the_older_sign_count_keeps_its_own_name():
    X = flatten_parameters(handcrafted_mode3_network(dtype="float64"))
    assert mode3_sign_count(X).tolist() == [4.0]
    flipped = X.copy()
    flipped[0, -1] = -1.0  # output bias negative
    flipped[0, -3] = 1.0  # one output weight positive
    assert mode3_sign_count(flipped).tolist() == [2.0]


@pytest.mark.parametrize("width", [2, 3, 8])
@pytest.mark.parametrize("features", ["parameters", "data"])
def test_features_and_predictions_ignore_the_order_of_hidden_units(width, features, rng):
    X = flatten_parameters(MLPEnsemble(EnsembleConfig(seeds=list(range(40)), d_hidden=width, dtype="float64")))
    order = rng.permutation(width)
    while np.array_equal(order, np.arange(width)):
        order = rng.permutation(width)
    X_perm = _permute_units(X, width, order)
    assert not np.allclose(X, X_perm)
    values = scan_features(X, width, features=features)
    assert values.shape == (40, len(scan_feature_names(features)))
    assert_allclose(scan_features(X_perm, width, features=features), values, rtol=1e-12, atol=1e-12)
    labels = np.where(X[:, -1] > 0, "a", "b")  # any labels will do: the fitted scan must not see the order
    scan = AlgorithmScan(d_hidden=width, features=features, n_estimators=20).fit(X, labels)
    assert_allclose(scan.predict_proba(X_perm), scan.predict_proba(X))


def test_parameter_features_ignore_the_distribution_and_data_features_use_it():
    X = flatten_parameters(MLPEnsemble(EnsembleConfig(seeds=list(range(10)), dtype="float64")))
    assert parameter_features(X, 2).shape[1] == len(scan_feature_names("parameters"))
    product, uniform = data_features(X, 2, distribution="product"), data_features(X, 2, distribution="uniform")
    assert product.shape == uniform.shape  # the same columns on every distribution
    n = parameter_features(X, 2).shape[1]
    assert_allclose(product[:, :n], parameter_features(X, 2))
    assert not np.allclose(product[:, n:], uniform[:, n:])


def test_corner_rule_is_the_sign_pattern_at_the_support_corners():
    ensemble = MLPEnsemble(EnsembleConfig(seeds=list(range(100)), dtype="float64", init_scale=2.0))
    X = flatten_parameters(ensemble)
    for distribution in ("product", "uniform"):
        corners = support_vertices(distribution).numpy()
        W, b = ensemble.W_in.detach().numpy(), ensemble.b_in.detach().numpy()
        pre = np.einsum("vd,mdh->mvh", corners, W) + b[:, None, :]
        states = np.where((pre <= 0).all(1), 0, np.where((pre > 0).all(1), 1, 2))
        expected = labels_from_states(torch.from_numpy(states), ensemble.W_out.detach().numpy()[..., 0])
        assert corner_rule_labels(X, distribution=distribution).tolist() == expected.tolist()
        assert torch.equal(sign_pattern_states(ensemble, support_vertices(distribution)), torch.from_numpy(states))


def test_scan_learns_labels_and_is_a_scikit_learn_estimator(labelled_networks):
    X, labels = labelled_networks
    train, test = slice(0, 400), slice(400, 600)
    majority = max(np.mean(labels[test] == label) for label in set(labels[test]))  # 0.435 here
    for features, floor, auc_floor in (("parameters", majority + 0.05, 0.85), ("data", 0.95, 0.98)):
        scan = AlgorithmScan(features=features, n_estimators=100).fit(X[train], labels[train])
        assert scan.score(X[test], labels[test]) > floor
        assert set(scan.classes_) == set(labels[train])
        positive = labels[test] == "1"
        score = scan.mode_score(X[test], "1")
        assert roc_auc(score[positive], score[~positive], n_resamples=0).auc > auc_floor
        assert scan.predict(X[test], distribution="uniform").shape == (200,)
    with pytest.raises(ValueError, match="fitted classes"):
        scan.mode_score(X[test], "7")
    scan = AlgorithmScan(d_hidden=2, n_estimators=10, random_state=3)
    copy = clone(scan)
    assert copy.get_params() == scan.get_params() and not hasattr(copy, "forest_")
    with pytest.raises(ValueError, match="not fitted"):
        scan.predict(X[:5])
    assert scan.fit(X[:100], labels[:100]) is scan
    with pytest.raises(ValueError, match="one label per row"):
        clone(scan).fit(X[:10], labels[:9])
    with pytest.raises(ValueError, match="at least two different labels"):
        clone(scan).fit(X[:10], np.array(["a"] * 10))
    with pytest.raises(ValueError, match=r"X must have shape \[model, 13\]"):
        AlgorithmScan(d_hidden=3).fit(X[:10], labels[:10])
    with pytest.raises(ValueError, match="features must be one of"):
        AlgorithmScan(features="corners").fit(X[:10], labels[:10])


def test_roc_auc_matches_mann_whitney_and_carries_an_interval(rng):
    pos, neg = rng.normal(1.0, 1.0, 40), rng.normal(0.0, 1.0, 70)
    u = stats.mannwhitneyu(pos, neg).statistic
    curve = roc_auc(pos, neg, n_resamples=400, seed=1)
    assert_allclose(curve.auc, u / (40 * 70), rtol=1e-12)
    assert curve.interval.low < curve.auc < curve.interval.high and 0.1 < curve.interval.high - curve.interval.low < 0.4
    assert roc_auc([2.0, 3.0], [0.0, 1.0]).auc == 1.0
    assert roc_auc([0.0, 1.0], [2.0, 3.0]).auc == 0.0
    assert roc_auc([1.0, 1.0], [1.0]).auc == 0.5
    assert roc_auc(pos, neg, n_resamples=0).interval is None
    assert curve.fpr[0] == 0 and curve.tpr[-1] == 1 and (curve.n_positive, curve.n_negative) == (40, 70)
    with pytest.raises(ValueError, match="at least one positive"):
        roc_auc([], neg)
    with pytest.raises(ValueError, match="finite"):
        roc_auc([np.nan], neg)
