"""The algorithm scan: parameter features invariant to unit permutations, the classifier, the seed score, ROC."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from numpy.testing import assert_allclose
from scipy import stats
from sklearn.base import clone

from physlens.models.mlp import EnsembleConfig, MLPEnsemble
from physlens.probes.mechanisms import handcrafted_mode3_network, mechanism_labels
from physlens.probes.scan import (
    AlgorithmScan,
    flatten_parameters,
    n_parameters,
    roc_auc,
    scan_feature_names,
    scan_features,
    seed_mode3_score,
    unflatten_parameters,
)
from physlens.systems.fma import sample_fma


def _permute_units(X: np.ndarray, width: int, order: np.ndarray) -> np.ndarray:
    p = unflatten_parameters(X, width)
    permuted = {"W_in": p["W_in"][:, :, order], "b_in": p["b_in"][:, order], "W_out": p["W_out"][:, order], "b_out": p["b_out"]}
    return flatten_parameters(permuted)


@pytest.fixture(scope="module")
def labelled_networks():
    """Random-init width-2 networks and their sign-pattern labels (function rule) on product data."""
    ensemble = MLPEnsemble(EnsembleConfig(seeds=list(range(600)), dtype="float64"))
    inputs = sample_fma(3000, "product", seed=7, dtype="float64")[0]
    return flatten_parameters(ensemble), mechanism_labels(ensemble, inputs, mode3_rule="function")


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


@pytest.mark.parametrize("width", [2, 3, 8])
def test_features_and_predictions_ignore_the_order_of_hidden_units(width, rng):
    X = flatten_parameters(MLPEnsemble(EnsembleConfig(seeds=list(range(50)), d_hidden=width, dtype="float64")))
    order = rng.permutation(width)
    while width > 1 and np.array_equal(order, np.arange(width)):
        order = rng.permutation(width)
    X_perm = _permute_units(X, width, order)
    assert not np.allclose(X, X_perm)
    features = scan_features(X, width)
    assert features.shape == (50, len(scan_feature_names()))
    assert_allclose(scan_features(X_perm, width), features, rtol=1e-12, atol=1e-12)
    labels = np.where(X[:, -1] > 0, "a", "b")  # any labels will do: the fitted scan must not see the order
    scan = AlgorithmScan(d_hidden=width, n_estimators=20).fit(X, labels)
    assert_allclose(scan.predict_proba(X_perm), scan.predict_proba(X))


def test_scan_reads_sign_patterns_from_parameters(labelled_networks):
    X, labels = labelled_networks
    train, test = slice(0, 400), slice(400, 600)
    scan = AlgorithmScan(n_estimators=100).fit(X[train], labels[train])
    assert scan.score(X[test], labels[test]) > 0.9
    assert set(scan.classes_) == set(labels[train])
    for mode in ("1", "2"):
        positive = labels[test] == mode
        score = scan.mode_score(X[test], mode)
        assert roc_auc(score[positive], score[~positive]).auc > 0.95
    with pytest.raises(ValueError, match="fitted classes"):
        scan.mode_score(X[test], "7")


def test_scan_is_a_scikit_learn_estimator(labelled_networks):
    X, labels = labelled_networks
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


def test_features_see_the_handcrafted_mechanism():
    X = flatten_parameters(handcrafted_mode3_network(dtype="float64"))
    names = scan_feature_names()
    features = dict(zip(names, scan_features(X, 2)[0]))
    assert (features["n_dead"], features["n_active"], features["n_straddling"]) == (0, 1, 1)
    assert features["w_out_straddling"] == -1.0 and features["b_out"] > 0
    assert seed_mode3_score(X).tolist() == [4.0]
    flipped = X.copy()
    flipped[0, -1] = -1.0  # output bias negative
    flipped[0, -3] = 1.0  # one output weight positive
    assert seed_mode3_score(flipped).tolist() == [2.0]


def test_roc_auc_matches_mann_whitney(rng):
    pos, neg = rng.normal(1.0, 1.0, 40), rng.normal(0.0, 1.0, 70)
    u = stats.mannwhitneyu(pos, neg).statistic
    assert_allclose(roc_auc(pos, neg).auc, u / (40 * 70), rtol=1e-12)
    assert roc_auc([2.0, 3.0], [0.0, 1.0]).auc == 1.0
    assert roc_auc([0.0, 1.0], [2.0, 3.0]).auc == 0.0
    assert roc_auc([1.0, 1.0], [1.0]).auc == 0.5
    curve = roc_auc(pos, neg)
    assert curve.fpr[0] == 0 and curve.tpr[-1] == 1 and (curve.n_positive, curve.n_negative) == (40, 70)
    with pytest.raises(ValueError, match="at least one positive"):
        roc_auc([], neg)
    with pytest.raises(ValueError, match="finite"):
        roc_auc([np.nan], neg)
