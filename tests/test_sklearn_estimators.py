"""physlens's estimators against scikit-learn's own checker, and the same contract on the inputs that
the checker cannot generate.

Every estimator runs through ``parametrize_with_checks``. A check fails by design only where the
estimator's input contract forbids the data the check fits on; those checks are listed in
``EXPECTED_FAILED_CHECKS`` with the reason, run as strict xfails (one that starts passing fails the
run, so the list stays exact), and the properties they would have tested are tested below on data the
estimator accepts. Classes whose input is not a table declare it in their tags (the checker then
only clones them) or are not estimators at all, and are tested here by hand.
"""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from sklearn.base import BaseEstimator, clone
from sklearn.exceptions import NotFittedError
from sklearn.utils import get_tags

pytest.importorskip("sklearn", minversion="1.8")  # parametrize_with_checks(xfail_strict=...) is new in 1.8
from sklearn.utils.estimator_checks import parametrize_with_checks  # noqa: E402

from physlens.models.linear import LinearAutoregressive  # noqa: E402
from physlens.probes.discovery import MechanismDiscovery  # noqa: E402
from physlens.probes.symbolic import SymbolicDistiller  # noqa: E402
from physlens.probes.invariants import PolynomialLatentRegression  # noqa: E402
from physlens.probes.linear_probe import LinearProbe, RidgeProbeSweep  # noqa: E402
from physlens.probes.scan import AlgorithmScan, n_parameters  # noqa: E402
from physlens.probes.surrogate import LinearSurrogate  # noqa: E402

# Checks that fit random tables of 1 to 10 columns (and classifiers and clusterers on 2-column blobs):
# every one that reaches fit with such a table, for the two estimators whose columns have a fixed layout.
_TABLE_CHECKS = [
    "check_dict_unchanged",
    "check_dont_overwrite_parameters",
    "check_estimators_dtypes",
    "check_estimators_fit_returns_self",
    "check_estimators_nan_inf",
    "check_estimators_overwrite_params",
    "check_estimators_pickle",
    "check_f_contiguous_array_estimator",
    "check_fit2d_predict1d",
    "check_fit_check_is_fitted",
    "check_fit_idempotent",
    "check_fit_score_takes_y",
    "check_methods_sample_order_invariance",
    "check_methods_subset_invariance",
    "check_n_features_in",
    "check_n_features_in_after_fitting",
    "check_pipeline_consistency",
    "check_positive_only_tag_during_fit",
    "check_readonly_memmap_input",
]
_FINGERPRINTS = (
    "X must be fingerprints from function_fingerprints, 4·n_points + 2 columns (the last two a mean "
    "gradient); this check fits a table of {} columns"
)
_FLAT_PARAMETERS = (
    "X must be the flat parameters of width-d_hidden networks, 4·d_hidden + 1 columns (9 at the default "
    "d_hidden=2); this check fits a table of other widths"
)
_UNDERDETERMINED = (
    "a degree-2 fit needs at least as many samples as monomials and refuses fewer; this check fits "
    "10 to 56 samples of 4 to 10 features (15 to 66 monomials). PolynomialLatentRegression(degree=1) "
    "passes it"
)

EXPECTED_FAILED_CHECKS: dict[str, dict[str, str]] = {
    "MechanismDiscovery": {
        **{name: _FINGERPRINTS.format("2 to 5") for name in _TABLE_CHECKS},
        "check_clustering": _FINGERPRINTS.format(2),
    },
    "AlgorithmScan": {
        **{name: _FLAT_PARAMETERS for name in _TABLE_CHECKS},
        "check_dtype_object": _FLAT_PARAMETERS,
        "check_fit2d_1feature": _FLAT_PARAMETERS,
        "check_classifier_data_not_an_array": _FLAT_PARAMETERS,
        "check_classifiers_classes": _FLAT_PARAMETERS,
        "check_classifiers_train": _FLAT_PARAMETERS,
        "check_supervised_y_2d": _FLAT_PARAMETERS,
    },
    "PolynomialLatentRegression(degree=2)": {
        name: _UNDERDETERMINED
        for name in ("check_dtype_object", "check_estimators_dtypes", "check_regressors_int", "check_regressors_no_decision_function")
    },
}

ESTIMATORS = [
    LinearProbe(),
    PolynomialLatentRegression(),
    PolynomialLatentRegression(degree=1),
    SymbolicDistiller(),
    MechanismDiscovery(max_groups=4),  # the default tries 12 mixtures on every 10-column table: slow, same API
    AlgorithmScan(),
    RidgeProbeSweep(),  # 3-D input, declared in its tags: the checker only clones it
    LinearAutoregressive(),  # likewise
]


def _expected_failed_checks(estimator: BaseEstimator) -> dict[str, str]:
    name = type(estimator).__name__
    if isinstance(estimator, PolynomialLatentRegression) and estimator.degree == 2:
        name = "PolynomialLatentRegression(degree=2)"
    return EXPECTED_FAILED_CHECKS.get(name, {})


# scikit-learn's checks pass sparse, complex, None and 1-D input on purpose, to see the estimator's own
# validation refuse it: the annotation checker must not refuse it first.
@pytest.mark.unchecked_types
@parametrize_with_checks(ESTIMATORS, expected_failed_checks=_expected_failed_checks, xfail_strict=True)
def test_sklearn_compatible_estimator(estimator, check):
    check(estimator)


# ---------------------------------------------------------------------------------------------
# The contract on inputs the checker cannot make: fingerprints, flat parameters, 3-D arrays, a network


def _fingerprints(rng: np.random.Generator) -> np.ndarray:
    """Two groups of 20 fingerprints with 4·4 + 2 columns, bending (RMS second difference ≫ flat)."""
    centres = rng.normal(scale=2.0, size=(2, 18))
    return np.concatenate([centre + 0.1 * rng.normal(size=(20, 18)) for centre in centres])


def _flat_parameters(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    X = rng.normal(size=(60, n_parameters(2)))
    return X, np.where(X[:, -1] > 0, "positive", "negative")  # labelled by the output bias


TABULAR = {  # a fast instance, its data, and what fit says of a table of another layout
    "MechanismDiscovery": (lambda: MechanismDiscovery(n_components=3, max_groups=3), lambda rng: (_fingerprints(rng), None),
                           "X must be fingerprints"),
    "AlgorithmScan": (lambda: AlgorithmScan(n_estimators=10), _flat_parameters, r"X must have shape \[model, 9\]"),
}


@pytest.mark.parametrize("name", sorted(TABULAR))
def test_fixed_layout_estimators_keep_the_contract_on_their_own_input(name: str, rng: np.random.Generator) -> None:
    """What the checks expected to fail above would test, on input the estimator accepts."""
    make, data, wrong_layout = TABULAR[name]
    X, y = data(rng)
    estimator = make()
    assert vars(estimator) == estimator.get_params()  # __init__ only stores its arguments
    with pytest.raises(NotFittedError):
        estimator.predict(X)
    assert estimator.fit(X, y) is estimator
    assert estimator.n_features_in_ == X.shape[1]
    assert all(key.endswith("_") or key in estimator.get_params() for key in vars(estimator))
    predicted = estimator.predict(X)
    state = dict(vars(estimator))
    order = rng.permutation(len(X))
    np.testing.assert_array_equal(estimator.predict(X[order]), predicted[order])
    np.testing.assert_array_equal(estimator.predict(X[:7]), predicted[:7])
    assert vars(estimator).keys() == state.keys()  # predict changes nothing
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(estimator)).predict(X), predicted)
    np.testing.assert_array_equal(clone(estimator).fit(X, y).fit(X, y).predict(X), predicted)  # idempotent
    with pytest.raises(ValueError, match=f"X has {X.shape[1] - 1} features, but {name} is expecting {X.shape[1]}"):
        estimator.predict(X[:, :-1])
    with pytest.raises(ValueError, match="Reshape your data"):
        estimator.predict(X[0])
    with pytest.raises(ValueError, match="NaN"):
        estimator.predict(np.where(X > 1, np.nan, X))
    with pytest.raises(ValueError, match="X must contain only finite values"):
        make().fit(np.where(X > 1, np.inf, X), y)
    with pytest.raises(ValueError, match=wrong_layout):
        make().fit(X[:, :-1], y)


@pytest.mark.parametrize(
    "make, X, y, bad_X",
    [
        (lambda: RidgeProbeSweep(alphas=[1e-3, 1.0]), torch.randn(40, 3, 4, dtype=torch.float64),
         torch.randn(40, 2, dtype=torch.float64), torch.randn(5, 3, 5, dtype=torch.float64)),
        (lambda: LinearAutoregressive(window=2), torch.randn(30, 2, 3, dtype=torch.float64),
         torch.randn(30, 3, dtype=torch.float64), torch.randn(5, 3, 3, dtype=torch.float64)),
    ],
    ids=["RidgeProbeSweep", "LinearAutoregressive"],
)
def test_three_d_estimators_declare_their_input_and_keep_the_contract(make, X, y, bad_X) -> None:
    estimator = make()
    tags = get_tags(estimator)
    assert tags.input_tags.three_d_array and not tags.input_tags.two_d_array
    assert vars(estimator) == estimator.get_params()
    for use in (lambda: estimator.predict(X), lambda: estimator.score(X, y)):
        with pytest.raises(NotFittedError, match="not fitted"):
            use()
        with pytest.raises(RuntimeError):  # what they raised before NotFittedError, still caught
            use()
    assert estimator.fit(X, y) is estimator
    assert all(key.endswith("_") or key in estimator.get_params() for key in vars(estimator))
    predicted = estimator.predict(X)
    torch.testing.assert_close(pickle.loads(pickle.dumps(estimator)).predict(X), predicted)
    torch.testing.assert_close(clone(estimator).fit(X, y).predict(X), predicted)
    with pytest.raises(ValueError, match="X must have shape"):
        estimator.predict(bad_X)


def test_ridge_probe_sweep_names_a_missing_target_and_an_empty_finalize() -> None:
    with pytest.raises(ValueError, match="requires y to be passed"):
        RidgeProbeSweep().fit(torch.randn(10, 1, 2, dtype=torch.float64), None)
    with pytest.raises(NotFittedError, match="call partial_fit"):
        RidgeProbeSweep().finalize()


def test_linear_surrogate_is_not_an_estimator_but_keeps_the_contract() -> None:
    """Its fit takes a network; a linear network is its own exact surrogate."""
    generator = torch.Generator().manual_seed(0)
    network = torch.nn.Linear(2, 2, dtype=torch.float64)
    contexts = torch.randn(20, 4, 2, dtype=torch.float64, generator=generator)
    surrogate = LinearSurrogate(window=1)
    assert not isinstance(surrogate, BaseEstimator)
    assert repr(surrogate) == "LinearSurrogate(window=1, alpha=0.0)"
    for use in (lambda: surrogate.predict(contexts[:, -1:]), lambda: surrogate.fidelity(network, contexts, 3)):
        with pytest.raises(NotFittedError, match="not fitted"):
            use()
        with pytest.raises(RuntimeError):
            use()
    assert surrogate.fit(network, contexts) is surrogate
    with torch.no_grad():
        expected = network(contexts[:, -1])
    torch.testing.assert_close(surrogate.predict(contexts[:, -1:]), expected)
    torch.testing.assert_close(pickle.loads(pickle.dumps(surrogate)).predict(contexts[:, -1:]), expected)


@pytest.mark.parametrize("estimator", [LinearProbe(), PolynomialLatentRegression(degree=1), SymbolicDistiller(max_terms=2)], ids=lambda estimator: type(estimator).__name__)
def test_tabular_estimators_name_the_argument_at_fault(estimator, rng: np.random.Generator) -> None:
    X = rng.normal(size=(30, 2))
    y = X[:, 0] - X[:, 1]
    with pytest.raises(NotFittedError):
        estimator.predict(X)
    with pytest.raises(ValueError, match="requires y to be passed"):
        clone(estimator).fit(X, None)
    with pytest.raises(ValueError, match=r"X must have shape \[n_samples, n_features\]"):
        clone(estimator).fit(X[:, 0], y)
    with pytest.raises(ValueError, match="X must contain only finite values"):
        clone(estimator).fit(np.where(X > 1, np.nan, X), y)
    fitted = clone(estimator).fit(X, y)
    with pytest.raises(ValueError, match="X must have 2 columns, as in fit, got 3"):
        fitted.predict(np.ones((4, 3)))
    np.testing.assert_allclose(pickle.loads(pickle.dumps(fitted)).predict(X), fitted.predict(X))
