"""Symbolic distillation: planted formulas come back exactly; fronts, estimator API, hooks and bad input."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import sympy
import torch
from sklearn.base import clone
from sklearn.model_selection import cross_val_score

from physlens.models import SiameseConfig, SiameseTower
from physlens.probes.symbolic import SymbolicDistiller, distill, record_io


def _symbols(*names: str) -> list[sympy.Symbol]:
    return [sympy.Symbol(n) for n in names]


def _same(expression: sympy.Expr, truth: sympy.Expr) -> bool:
    return sympy.simplify(expression - truth) == 0


def test_recovers_force_equals_mass_times_acceleration(rng: np.random.Generator) -> None:
    X = rng.uniform(0.0, 1.0, size=(400, 2))
    m, a = _symbols("m", "a")
    distiller = SymbolicDistiller(variable_names=["m", "a"]).fit(X, X[:, 0] * X[:, 1])
    assert _same(distiller.expression_, m * a)
    assert distiller.selected_.nmse < 1e-20
    np.testing.assert_allclose(distiller.predict(X), X[:, 0] * X[:, 1], atol=1e-12)


def test_recovers_angular_momentum(rng: np.random.Generator) -> None:
    X = rng.normal(size=(400, 4))
    x, y, vx, vy = _symbols("x", "y", "vx", "vy")
    target = X[:, 0] * X[:, 3] - X[:, 1] * X[:, 2]
    distiller = SymbolicDistiller(variable_names=["x", "y", "vx", "vy"]).fit(X, target)
    assert _same(distiller.expression_, x * vy - y * vx)


def test_recovers_oscillator_energy_with_degree_four_terms(rng: np.random.Generator) -> None:
    x_p = rng.normal(size=(400, 2))
    omega = rng.uniform(1.0, 4.0, size=(400, 1))
    X = np.hstack([x_p, omega])
    target = 0.5 * X[:, 1] ** 2 + 0.5 * X[:, 2] ** 2 * X[:, 0] ** 2
    x, p, w = _symbols("x", "p", "omega")
    distiller = SymbolicDistiller(variable_names=["x", "p", "omega"], max_degree=4).fit(X, target)
    assert _same(distiller.expression_, p**2 / 2 + w**2 * x**2 / 2)
    assert distiller.score(X, target) == pytest.approx(1.0, abs=1e-12)


def test_recovers_unary_terms_and_rational_coefficients(rng: np.random.Generator) -> None:
    X = np.hstack([rng.uniform(-3, 3, size=(300, 1)), rng.uniform(0.5, 2.0, size=(300, 1))])
    t, r = _symbols("t", "r")
    target = 2.5 * np.sin(X[:, 0]) + 1 / X[:, 1] + 0.75
    distiller = SymbolicDistiller(variable_names=["t", "r"]).fit(X, target)
    assert _same(distiller.expression_, sympy.Rational(5, 2) * sympy.sin(t) + 1 / r + sympy.Rational(3, 4))


def test_front_is_pareto_and_starts_from_the_constant(rng: np.random.Generator) -> None:
    X = rng.normal(size=(300, 3))
    target = 3 * X[:, 0] + X[:, 1] * X[:, 2] + 0.01 * rng.normal(size=300)
    distiller = SymbolicDistiller().fit(X, target)
    complexities = [c.complexity for c in distiller.front_]
    errors = [c.nmse for c in distiller.front_]
    assert complexities == sorted(complexities) and len(set(complexities)) == len(complexities)
    assert all(later < earlier for earlier, later in zip(errors, errors[1:]))
    assert distiller.front_[0].expression.is_number and distiller.front_[0].nmse == pytest.approx(1.0)
    # noisy data: the chosen formula is the two-term truth, not a longer one that fits the noise
    assert set(map(str, distiller.terms_)) == {"x0", "x1*x2"}
    assert distiller.coef_ == pytest.approx([3.0, 1.0], abs=0.01) or distiller.coef_ == pytest.approx([1.0, 3.0], abs=0.01)
    accurate = clone(distiller).set_params(model_selection="accuracy").fit(X, target)
    assert accurate.selected_.nmse <= distiller.selected_.nmse


def test_beam_search_finds_the_formula_when_subsets_are_too_many(rng: np.random.Generator) -> None:
    X = rng.uniform(0.5, 2.0, size=(300, 4))
    target = X[:, 0] * X[:, 3] - 2 * X[:, 1] ** 2 + np.cos(X[:, 2])
    exhaustive = SymbolicDistiller().fit(X, target)
    beam = SymbolicDistiller(max_exhaustive=1).fit(X, target)
    assert _same(beam.expression_, exhaustive.expression_)
    assert beam.selected_.nmse < 1e-20


def test_is_a_scikit_learn_estimator(rng: np.random.Generator) -> None:
    X = rng.normal(size=(120, 2))
    target = X[:, 0] - 2 * X[:, 1]
    distiller = SymbolicDistiller(max_terms=2, unary=["sin"])
    assert clone(distiller).get_params() == distiller.get_params()
    assert distiller.fit(X, target) is distiller
    scores = cross_val_score(SymbolicDistiller(max_terms=2, unary=()), X, target, cv=3)
    np.testing.assert_allclose(scores, 1.0, atol=1e-12)
    assert not hasattr(SymbolicDistiller(), "expression_")


def test_distills_a_hooked_sub_module(torch_gen: torch.Generator) -> None:
    tower = SiameseTower(SiameseConfig(d_in=2, d_hidden=3, n_layers=1, dtype="float64", seed=1))
    with torch.no_grad():
        tower.blocks[0].W.copy_(torch.tensor([[1.0, 0.0, 2.0], [0.0, 1.0, -1.0]]))
    states = torch.randn(100, 2, generator=torch_gen, dtype=torch.float64)
    # the third hidden unit's pre-activation is exactly 2·a − b (zero bias)
    X, y = record_io(tower, states, output_hook="blocks.0.hook_pre", component=2)
    np.testing.assert_allclose(X, states.numpy())
    fitted = distill(tower, states, SymbolicDistiller(variable_names=["a", "b"]), output_hook="blocks.0.hook_pre", component=2)
    a, b = _symbols("a", "b")
    assert _same(fitted.expression_, 2 * a - b)
    # a hooked input: the post-activation is tanh of the pre-activation
    X, y = record_io(tower, states, input_hook="blocks.0.hook_pre", output_hook="blocks.0.hook_post", component=0)
    assert X.shape == (100, 3)
    direction = np.array([1.0, 0.0, 0.0])
    X2, y2 = record_io(tower, states, input_hook="blocks.0.hook_pre", output_hook="blocks.0.hook_post", direction=direction)
    np.testing.assert_allclose(y2, y)
    with pytest.raises(ValueError, match="unknown hook name"):
        record_io(tower, states, output_hook="blocks.0.hook_nope")
    with pytest.raises(ValueError, match="component= , direction=|component=, direction="):
        record_io(tower, states, output_hook="blocks.0.hook_pre")


def test_bad_input_raises(rng: np.random.Generator) -> None:
    X = rng.normal(size=(50, 2))
    with pytest.raises(ValueError, match="samples but X has"):
        SymbolicDistiller().fit(X, np.zeros(49))
    with pytest.raises(ValueError, match="no candidate terms"):
        SymbolicDistiller(max_degree=0, unary=(), include_constant=False).fit(X, X[:, 0])
    with pytest.raises(ValueError, match="finite"):
        SymbolicDistiller().fit(X, np.full(50, np.inf))
    with pytest.raises(ValueError, match="n_samples, n_features"):
        SymbolicDistiller().fit(X[:, 0], X[:, 1])
    with pytest.raises(ValueError, match="unary must be"):
        SymbolicDistiller(unary=["tan"]).fit(X, X[:, 0])
    with pytest.raises(ValueError, match="variable_names has 3"):
        SymbolicDistiller(variable_names=["a", "b", "c"]).fit(X, X[:, 0])
    with pytest.raises(ValueError, match="backend"):
        SymbolicDistiller(backend="eureqa").fit(X, X[:, 0])
    with pytest.raises(ValueError, match="X must have 2 columns"):
        SymbolicDistiller(unary=()).fit(X, X[:, 0]).predict(np.ones((3, 3)))


def test_pysr_backend_explains_what_is_missing(monkeypatch: pytest.MonkeyPatch, rng: np.random.Generator) -> None:
    monkeypatch.setitem(sys.modules, "pysr", None)  # behave as if PySR were not installed
    X = rng.normal(size=(20, 2))
    with pytest.raises(ImportError, match=r"pip install 'physlens\[pysr\]'.*Julia|Julia.*pip install"):
        SymbolicDistiller(backend="pysr").fit(X, X[:, 0])


def test_constant_target_gives_the_constant(rng: np.random.Generator) -> None:
    X = rng.normal(size=(50, 2))
    distiller = SymbolicDistiller().fit(X, np.full(50, 0.25))
    assert distiller.expression_ == sympy.Rational(1, 4)
    assert distiller.selected_.nmse == 0.0
