"""Nested cross-validation against a brute-force scikit-learn loop, and a calibrated permutation null."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.linear_model import Ridge

from physlens.probes.linear_probe import grouped_folds
from physlens.probes.selection import select_sites


def _brute_force_nested_r2(X, y, folds, alphas):
    """Nested CV with sklearn's Ridge: inner CV picks (site, α) on the outer training folds only."""
    n_folds, n_sites = int(folds.max()) + 1, X.shape[1]
    sse = sst = 0.0
    mean_all = y.mean()
    for outer in range(n_folds):
        best, best_score = None, np.inf
        for s in range(n_sites):
            for alpha in alphas:
                score = 0.0
                for inner in range(n_folds):
                    if inner == outer:
                        continue
                    train = (folds != outer) & (folds != inner)
                    fit = Ridge(alpha=alpha).fit(X[train, s], y[train])
                    score += ((fit.predict(X[folds == inner, s]) - y[folds == inner]) ** 2).sum()
                if score < best_score:
                    best, best_score = (s, alpha), score
        s, alpha = best
        fit = Ridge(alpha=alpha).fit(X[folds != outer, s], y[folds != outer])
        sse += ((fit.predict(X[folds == outer, s]) - y[folds == outer]) ** 2).sum()
        sst += ((y[folds == outer] - mean_all) ** 2).sum()
    return 1 - sse / sst


def test_nested_r2_equals_a_brute_force_loop(rng):
    n, n_sites, d = 80, 5, 3
    X = rng.normal(size=(n, n_sites, d))
    y = X[:, 2] @ np.array([1.0, -0.5, 0.2]) + 0.8 * rng.normal(size=n)
    alphas = [0.1, 10.0, 1000.0]
    result = select_sites(torch.tensor(X), torch.tensor(y)[:, None], [("h", p) for p in range(n_sites)], ["y"],
                          n_folds=4, n_permutations=0, alphas=alphas, seed=3)
    folds = grouped_folds(torch.arange(n), 4, seed=3).numpy()
    assert result.nested_r2[0] == pytest.approx(_brute_force_nested_r2(X, y, folds, alphas), abs=1e-9)
    assert result.best_site("y") == ("h", 2)
    assert result.chosen_sites[0] == [("h", 2)] * 4


def test_the_maximum_over_many_noise_sites_is_not_an_r2_but_nested_cv_says_so(rng):
    n, n_sites = 100, 60
    X = torch.tensor(rng.normal(size=(n, n_sites, 4)))
    y = torch.tensor(rng.normal(size=n))[:, None]
    result = select_sites(X, y, [("h", p) for p in range(n_sites)], ["y"], n_folds=5, n_permutations=50, seed=4)
    assert result.max_r2("y") > result.nested_r2[0] + 0.02  # selection inflates the maximum
    assert result.nested_r2[0] < 0.02
    assert result.p_value("y") > 0.05


def test_permutation_null_of_the_maximum_is_calibrated():
    # Under the null (features unrelated to the label) the p-value of the maximum is uniform.
    generator = np.random.default_rng(5)
    p_values = []
    for replicate in range(60):
        X = torch.tensor(generator.normal(size=(40, 8, 2)))
        y = torch.tensor(generator.normal(size=40))[:, None]
        result = select_sites(X, y, [("h", p) for p in range(8)], ["y"], n_folds=4, n_permutations=39,
                              alphas=[1.0, 100.0], seed=replicate)
        p_values.append(result.p_value("y"))
    p_values = np.array(p_values)
    assert 0.35 <= p_values.mean() <= 0.65
    assert np.mean(p_values <= 0.1) <= 0.25


def test_a_real_signal_beats_the_null(rng):
    X = torch.tensor(rng.normal(size=(100, 10, 3)))
    y = (X[:, 4, 0] + 0.3 * torch.tensor(rng.normal(size=100)))[:, None]
    result = select_sites(X, y, [("h", p) for p in range(10)], ["y"], n_permutations=99, seed=6)
    assert result.p_value("y") == pytest.approx(0.01)
    assert result.nested_r2[0] > 0.8
    assert result.r2_at(("h", 4), "y") == pytest.approx(result.max_r2("y"))
    with pytest.raises(ValueError, match="was not probed"):
        result.r2_at(("other", 0), "y")
