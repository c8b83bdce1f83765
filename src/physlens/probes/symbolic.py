"""Symbolic distillation: record what a network (or one hooked part of it) computes, then find a
compact formula that does the same.

:class:`SymbolicDistiller` is a scikit-learn estimator. Its built-in backend searches sparse linear
combinations of a library of candidate terms (monomials, unary functions such as sin, cos, exp, √,
1/x, and their products with the inputs): exhaustively where the number of subsets is small, by a
beam search otherwise. Every subset size gives a point on a complexity/accuracy Pareto front; the
chosen formula is a sympy expression. ``backend="pysr"`` hands the same data to PySR (genetic
programming, needs the optional ``pysr`` package and a Julia runtime).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import numpy as np
import sympy
import torch
from sklearn.base import BaseEstimator, RegressorMixin
from sklearn.utils.validation import check_is_fitted

from physlens._estimators import check_target_given, validate_table, warn_column_target
from physlens._validation import check_choice, check_nonnegative_int, check_positive_int
from physlens.probes.invariants import _as_target, monomial_exponents

UNARY_FUNCTIONS = ("sin", "cos", "exp", "sqrt", "inv", "log")
"""Unary functions the built-in library can apply to each input variable (``inv`` is 1/x)."""

_MAX_DENOMINATOR = 12  # coefficients within snap_tolerance of p/q, q ≤ this, print as exact rationals
_EXP_LIMIT = 50.0  # exp(v) is left out of the library where v exceeds this (it would swamp the fit)


@dataclass(frozen=True)
class FormulaCandidate:
    """One point of the Pareto front: a formula, its size and its error on the training data.

    ``complexity`` counts the nodes of the sympy expression tree; ``mse`` is the mean squared error;
    ``nmse`` divides it by the variance of the target (0: exact; 1: no better than the mean).
    """

    expression: sympy.Expr
    complexity: int
    mse: float
    nmse: float
    terms: tuple[str, ...] = ()


def _unary_terms(name: str, symbol: sympy.Symbol, column: np.ndarray, unary: Sequence[str]) -> list[tuple[sympy.Expr, np.ndarray]]:
    out = []
    scale = float(np.max(np.abs(column))) or 1.0
    for function in unary:
        if function == "sin":
            out.append((sympy.sin(symbol), np.sin(column)))
        elif function == "cos":
            out.append((sympy.cos(symbol), np.cos(column)))
        elif function == "exp" and column.max() <= _EXP_LIMIT:
            out.append((sympy.exp(symbol), np.exp(column)))
        elif function == "sqrt" and column.min() >= 0:
            out.append((sympy.sqrt(symbol), np.sqrt(column)))
        elif function == "inv" and np.min(np.abs(column)) > 1e-6 * scale:
            out.append((1 / symbol, 1 / column))
        elif function == "log" and column.min() > 0:
            out.append((sympy.log(symbol), np.log(column)))
    return out


def _relative_error(mse: float, variance: float, mean_square: float) -> float:
    """MSE / Var(y); for a constant target, 0 when the fit is exact to round-off and inf otherwise."""
    if variance > 1e-24 * max(mean_square, 1e-300):
        return mse / variance
    return 0.0 if mse <= 1e-24 * max(mean_square, 1e-300) else math.inf


def _node_count(expression: sympy.Expr) -> int:
    return sum(1 for _ in sympy.preorder_traversal(expression))


def _snap(value: float, tolerance: float) -> sympy.Expr | None:
    """``value`` as a small rational p/q (q ≤ 12) if it is within ``tolerance`` (relative) of one."""
    fraction = Fraction(value).limit_denominator(_MAX_DENOMINATOR)
    if abs(float(fraction) - value) <= tolerance * max(1.0, abs(value)):
        return sympy.Rational(fraction.numerator, fraction.denominator)
    return None


class SymbolicDistiller(RegressorMixin, BaseEstimator):
    """Find a compact formula y ≈ f(X): sparse search over a term library, with a Pareto front.

    Args:
        variable_names: names of the columns of X (default ``x0, x1, …``); they become sympy symbols.
        max_degree: monomials of total degree 1…``max_degree`` in the inputs enter the library.
        unary: functions from :data:`UNARY_FUNCTIONS` applied to each input (only where defined and
            finite on the data: √ needs v ≥ 0, 1/x needs v away from 0, log needs v > 0).
        unary_products: also include each input times each unary term (e.g. x·sin(t)).
        include_constant: allow a constant term.
        max_terms: largest number of library terms in one formula.
        beam_width: subsets kept per size when the search is not exhaustive.
        max_exhaustive: try every subset of a size when there are at most this many.
        tolerance: relative error (nmse) below which a fit counts as exact; errors are floored there
            when building the front, so round-off cannot make a longer formula look better.
        snap_tolerance: coefficients within this relative distance of a small rational p/q print as it.
        model_selection: ``"best"`` (PySR's rule: among formulas within 1.5× of the lowest error, the
            one with the steepest drop in log-error per unit of complexity) or ``"accuracy"`` (lowest
            error; ties go to the simpler formula).
        backend: ``"builtin"`` or ``"pysr"``.
        pysr_params: keyword arguments passed to ``pysr.PySRRegressor`` (``backend="pysr"`` only).

    Fitted attributes: ``expression_`` (sympy), ``front_`` (list of :class:`FormulaCandidate`,
    simplest first), ``selected_`` (the chosen candidate), ``library_`` (term names searched),
    ``terms_`` and ``coef_`` (the chosen terms and their least-squares coefficients),
    ``variable_names_``, ``n_features_in_``.
    """

    def __init__(
        self,
        variable_names: Sequence[str] | None = None,
        *,
        max_degree: int = 2,
        unary: Sequence[str] = ("sin", "cos", "exp", "sqrt", "inv"),
        unary_products: bool = True,
        include_constant: bool = True,
        max_terms: int = 4,
        beam_width: int = 32,
        max_exhaustive: int = 100_000,
        tolerance: float = 1e-10,
        snap_tolerance: float = 1e-6,
        model_selection: str = "best",
        backend: str = "builtin",
        pysr_params: dict[str, Any] | None = None,
    ) -> None:
        self.variable_names = variable_names
        self.max_degree = max_degree
        self.unary = unary
        self.unary_products = unary_products
        self.include_constant = include_constant
        self.max_terms = max_terms
        self.beam_width = beam_width
        self.max_exhaustive = max_exhaustive
        self.tolerance = tolerance
        self.snap_tolerance = snap_tolerance
        self.model_selection = model_selection
        self.backend = backend
        self.pysr_params = pysr_params

    # ----------------------------------------------------------------------------------- checks
    def _validated(self, X: object, y: object) -> tuple[np.ndarray, np.ndarray, list[str]]:
        check_target_given(self, y)
        X = validate_table(self, X, reset=True)
        warn_column_target(y)
        y = _as_target("y", y, X.shape[0])
        if X.shape[0] < 2:
            raise ValueError(f"X needs at least 2 samples, got n_samples={X.shape[0]}")
        if self.variable_names is None:
            names = [f"x{i}" for i in range(X.shape[1])]
        else:
            names = [str(n) for n in self.variable_names]
            if len(names) != X.shape[1]:
                raise ValueError(f"variable_names has {len(names)} names but X has {X.shape[1]} columns")
            if len(set(names)) != len(names):
                raise ValueError(f"variable_names must be distinct, got {names}")
        return X, y, names

    def _check_params(self) -> None:
        check_nonnegative_int("max_degree", self.max_degree)
        check_positive_int("max_terms", self.max_terms)
        check_positive_int("beam_width", self.beam_width)
        check_positive_int("max_exhaustive", self.max_exhaustive)
        check_choice("backend", self.backend, ("builtin", "pysr"))
        check_choice("model_selection", self.model_selection, ("best", "accuracy"))
        unknown = sorted(set(self.unary) - set(UNARY_FUNCTIONS))
        if isinstance(self.unary, str) or unknown:
            raise ValueError(f"unary must be a list drawn from {list(UNARY_FUNCTIONS)}, got {self.unary!r}")
        for name in ("tolerance", "snap_tolerance"):
            value = float(getattr(self, name))
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"{name} must be a finite number >= 0, got {getattr(self, name)!r}")

    # ---------------------------------------------------------------------------------- library
    def _library(self, X: np.ndarray, symbols: list[sympy.Symbol]) -> tuple[list[sympy.Expr], np.ndarray]:
        """Candidate terms (sympy) and their columns on X, without duplicates or constant columns."""
        exprs: list[sympy.Expr] = []
        columns: list[np.ndarray] = []
        if self.include_constant:
            exprs.append(sympy.Integer(1))
            columns.append(np.ones(X.shape[0]))
        if self.max_degree >= 1:
            for powers in monomial_exponents(X.shape[1], self.max_degree, include_bias=False):
                exprs.append(sympy.Mul(*[s**p for s, p in zip(symbols, powers)]))
                columns.append(np.prod(X ** np.asarray(powers, dtype=np.float64), axis=1))
        unary_terms = []
        for j, symbol in enumerate(symbols):
            unary_terms += _unary_terms(str(symbol), symbol, X[:, j], self.unary)
        for expr, column in unary_terms:
            exprs.append(expr)
            columns.append(column)
        if self.unary_products:
            for (expr, column), j in itertools.product(unary_terms, range(X.shape[1])):
                exprs.append(symbols[j] * expr)
                columns.append(X[:, j] * column)
        kept_exprs, kept_columns, seen_exprs, seen_columns = [], [], set(), []
        for expr, column in zip(exprs, columns):
            if expr in seen_exprs or not np.isfinite(column).all():
                continue
            norm = np.linalg.norm(column)
            if norm == 0 or (expr != 1 and np.ptp(column) == 0):
                continue
            unit = column / norm
            # numerically identical to an earlier column (e.g. v·(1/v) = 1, or v² vs |v|²)
            if any(np.max(np.abs(unit - other)) < 1e-12 for other in seen_columns):
                continue
            seen_exprs.add(expr)
            seen_columns.append(unit)
            kept_exprs.append(expr)
            kept_columns.append(column)
        if not kept_exprs:
            raise ValueError(
                "the formula search has no candidate terms: raise max_degree, add unary functions "
                "(defined and finite on the data) or set include_constant=True"
            )
        return kept_exprs, np.stack(kept_columns, axis=1)

    # ----------------------------------------------------------------------------------- search
    def _search(self, features: np.ndarray, y: np.ndarray) -> list[tuple[int, ...]]:
        """Subsets of library columns worth refitting: the best few of every size up to max_terms."""
        n_terms = features.shape[1]
        norms = np.linalg.norm(features, axis=0)
        unit = features / norms
        gram = unit.T @ unit
        rhs = unit.T @ y
        total = float(y @ y)
        jitter = 1e-13  # keeps the tiny solves regular when two library columns are nearly parallel
        keep: list[tuple[int, ...]] = []
        beam: list[tuple[int, ...]] = [()]
        for size in range(1, min(self.max_terms, n_terms) + 1):
            if math.comb(n_terms, size) <= self.max_exhaustive:
                candidates = np.array(list(itertools.combinations(range(n_terms), size)), dtype=np.int64)
            else:
                grown = {tuple(sorted((*subset, j))) for subset in beam for j in range(n_terms) if j not in subset}
                candidates = np.array(sorted(grown), dtype=np.int64)
            sse = np.empty(len(candidates))
            for start in range(0, len(candidates), 20_000):
                chunk = candidates[start : start + 20_000]
                sub_gram = gram[chunk[:, :, None], chunk[:, None, :]] + jitter * np.eye(size)
                sub_rhs = rhs[chunk]
                try:
                    coef = np.linalg.solve(sub_gram, sub_rhs[..., None])[..., 0]
                except np.linalg.LinAlgError:
                    coef = np.einsum("mij,mj->mi", np.linalg.pinv(sub_gram), sub_rhs)
                sse[start : start + len(chunk)] = total - np.einsum("mi,mi->m", sub_rhs, coef)
            order = np.argsort(sse, kind="stable")[: self.beam_width]
            beam = [tuple(int(i) for i in candidates[k]) for k in order]
            keep += beam[: max(3, self.beam_width // 8)]
        return keep

    def _candidate(self, subset: tuple[int, ...], features: np.ndarray, y: np.ndarray, exprs: list[sympy.Expr], variance: float) -> tuple[FormulaCandidate, np.ndarray]:
        columns = features[:, list(subset)]
        coef, *_ = np.linalg.lstsq(columns, y, rcond=None)
        mse = float(np.mean((columns @ coef - y) ** 2))
        expression = sympy.Integer(0)
        snapped_coef = coef.copy()
        for i, (c, index) in enumerate(zip(coef, subset)):
            exact = _snap(float(c), float(self.snap_tolerance))
            if exact is not None:
                snapped_coef[i] = float(exact)
            expression += (exact if exact is not None else sympy.Float(float(c), 6)) * exprs[index]
        snapped_mse = float(np.mean((columns @ snapped_coef - y) ** 2))
        # keep the snapped coefficients only where they cost no accuracy beyond the exactness tolerance
        if snapped_mse <= max(mse * (1 + 1e-6), float(self.tolerance) * variance):
            coef, mse = snapped_coef, snapped_mse
        else:
            expression = sum((sympy.Float(float(c), 6) * exprs[i] for c, i in zip(coef, subset)), sympy.Integer(0))
        nmse = _relative_error(mse, variance, float(np.mean(y**2)))
        terms = tuple(str(exprs[i]) for i in subset)
        return FormulaCandidate(expression, _node_count(expression), mse, nmse, terms), coef

    def fit(self, X: object, y: object) -> SymbolicDistiller:
        """Search for a formula mapping the rows of ``X`` [n_samples, n_features] to ``y`` [n_samples]."""
        self._check_params()
        X, y, names = self._validated(X, y)
        self.variable_names_ = names
        if self.backend == "pysr":
            return self._fit_pysr(X, y, names)
        symbols = list(sympy.symbols(names))
        exprs, features = self._library(X, symbols)
        variance = float(np.var(y))
        subsets = self._search(features, y)
        if self.include_constant:
            subsets.insert(0, (0,))  # the constant alone: the baseline every front starts from
        scored = []
        for subset in dict.fromkeys(subsets):
            candidate, coef = self._candidate(subset, features, y, exprs, variance)
            scored.append((candidate, subset, coef))
        floor = float(self.tolerance)
        scored.sort(key=lambda item: (item[0].complexity, item[0].nmse))
        front, best_error = [], math.inf
        for item in scored:
            error = max(item[0].nmse, floor)
            if error < best_error or not front:
                front.append(item)
                best_error = error
        chosen = self._select([item[0] for item in front], floor)
        self.front_ = [item[0] for item in front]
        self.selected_, subset, self.coef_ = front[chosen]
        self.expression_ = self.selected_.expression
        self.terms_ = [exprs[i] for i in subset]
        self.library_ = [str(e) for e in exprs]
        self._compile_terms()
        return self

    def _select(self, front: list[FormulaCandidate], floor: float) -> int:
        errors = [max(c.nmse, floor) for c in front]
        lowest = min(errors)
        if self.model_selection == "accuracy":
            return errors.index(lowest)
        best, best_score = 0, -math.inf
        for i, candidate in enumerate(front):
            if i == 0:
                score = 0.0
            else:
                step = max(candidate.complexity - front[i - 1].complexity, 1)
                score = -(math.log(errors[i]) - math.log(errors[i - 1])) / step
            if errors[i] <= 1.5 * lowest and score > best_score:
                best, best_score = i, score
        return best

    # ------------------------------------------------------------------------------------ pysr
    def _fit_pysr(self, X: np.ndarray, y: np.ndarray, names: list[str]) -> SymbolicDistiller:
        try:
            from pysr import PySRRegressor
        except ImportError as error:
            raise ImportError(
                "backend='pysr' needs the optional PySR package and a Julia runtime, which are not "
                "available here: install them with `pip install 'physlens[pysr]'` (PySR downloads "
                "Julia on first use), or use backend='builtin'"
            ) from error
        operators = {"sin": "sin", "cos": "cos", "exp": "exp", "sqrt": "sqrt", "inv": "inv(x) = 1/x", "log": "log"}
        params: dict[str, Any] = {
            "binary_operators": ["+", "-", "*", "/"],
            "unary_operators": [operators[u] for u in self.unary],
            "extra_sympy_mappings": {"inv": lambda x: 1 / x},
            "niterations": 40,
            "maxsize": 25,
            "verbosity": 0,
            "progress": False,
        }
        params.update(self.pysr_params or {})
        try:
            regressor = PySRRegressor(**params)
            regressor.fit(X, y, variable_names=names)
        except Exception as error:  # PySR raises many kinds when Julia is missing or broken
            raise RuntimeError(
                f"PySR is installed but could not run (is its Julia runtime available?): {error}"
            ) from error
        variance = float(np.var(y))
        table = regressor.equations_
        self.front_ = [
            FormulaCandidate(
                sympy.sympify(row["sympy_format"]),
                int(row["complexity"]),
                float(row["loss"]),
                float(row["loss"]) / variance if variance > 0 else 0.0,
            )
            for _, row in table.iterrows()
        ]
        self.expression_ = regressor.sympy()
        self.selected_ = next((c for c in self.front_ if c.expression == self.expression_), self.front_[-1])
        self.terms_, self.coef_, self.library_ = [], np.array([]), []
        self._pysr = regressor
        return self

    # ------------------------------------------------------------------------------------ use
    def predict(self, X: object) -> np.ndarray:
        """Evaluate the chosen formula on the rows of ``X``."""
        check_is_fitted(self, "expression_")
        X = validate_table(self, X, reset=False)
        if self.backend == "pysr":
            return np.asarray(self._pysr.predict(X), dtype=np.float64)
        columns = [np.broadcast_to(np.asarray(f(*X.T), dtype=np.float64), (X.shape[0],)) for f in self._term_functions]
        return np.stack(columns, axis=1) @ self.coef_ if columns else np.zeros(X.shape[0])

    def _compile_terms(self) -> None:
        """The chosen terms as numpy functions of the input columns, for :meth:`predict`.

        They are kept out of the pickled state and compiled again on loading: sympy's ``lambdify``
        makes each function in a module of its own, which pickle cannot find again, so a fitted
        distiller that pickled them could not be saved or sent to a joblib worker.
        """
        symbols = sympy.symbols(self.variable_names_)
        self._term_functions = [sympy.lambdify(symbols, term, modules="numpy") for term in self.terms_]

    def __getstate__(self) -> dict[str, Any]:
        state = dict(super().__getstate__())  # a copy: on Python >= 3.11 it is the instance's own __dict__
        state.pop("_term_functions", None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        if "terms_" in state:
            self._compile_terms()


def record_io(
    model: torch.nn.Module,
    inputs: torch.Tensor,
    *,
    input_hook: str | None = None,
    output_hook: str | None = None,
    position: int | None = None,
    component: int | None = None,
    direction: torch.Tensor | np.ndarray | None = None,
    forward: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Run ``model`` on ``inputs`` and return (X [n, d], y [n]) for distillation.

    X is the model input (flattened per sample) or the activation at ``input_hook``; y is the model
    output or the activation at ``output_hook``, reduced to one number per sample by ``component``
    (an index of the last axis) or ``direction`` (a dot product, e.g. a probe direction). For
    activations with a position axis ([batch, pos, …]), ``position`` selects one position on both
    sides (a hooked X keeps only that position; the raw input keeps every position). Hooks are read
    with ``run_with_cache``; ``forward`` replaces the plain call for models with extra arguments.
    """
    if component is not None and direction is not None:
        raise ValueError("pass at most one of component or direction")
    names = [n for n in (input_hook, output_hook) if n is not None]
    with torch.no_grad():
        if names:
            if not hasattr(model, "run_with_cache"):
                raise ValueError("input_hook/output_hook need a hooked model (with run_with_cache)")
            output, cache = model.run_with_cache(inputs, names_filter=names)
        else:
            output, cache = (forward(inputs) if forward is not None else model(inputs)), {}

    def at_position(name: str, act: torch.Tensor) -> torch.Tensor:
        if position is None or act.ndim < 3:
            return act
        if not -act.shape[1] <= position < act.shape[1]:
            raise ValueError(f"position {position} is out of range for {name} with {act.shape[1]} positions")
        return act[:, position]

    X = inputs if input_hook is None else at_position(input_hook, cache[input_hook])
    y = at_position(output_hook or "output", output if output_hook is None else cache[output_hook])
    if direction is not None:
        vector = torch.as_tensor(direction, dtype=y.dtype, device=y.device)
        if vector.ndim != 1 or vector.shape[0] != y.shape[-1]:
            raise ValueError(f"direction must have shape [{y.shape[-1]}], got {list(vector.shape)}")
        y = y @ vector
    elif component is not None:
        if not -y.shape[-1] <= component < y.shape[-1]:
            raise ValueError(f"component {component} is out of range for an output of width {y.shape[-1]}")
        y = y[..., component]
    elif y.ndim > 1 and y.shape[-1] == 1:
        y = y[..., 0]
    if y.ndim != 1:
        raise ValueError(
            f"the recorded output has shape {list(y.shape)}; choose one number per sample with "
            "component=, direction= or position="
        )
    X = X.reshape(X.shape[0], -1)
    return X.detach().cpu().double().numpy(), y.detach().cpu().double().numpy()


def distill(
    model: torch.nn.Module, inputs: torch.Tensor, distiller: SymbolicDistiller | None = None, **record: Any
) -> SymbolicDistiller:
    """Record ``model``'s inputs and outputs with :func:`record_io` (``**record``) and fit ``distiller``
    (a default :class:`SymbolicDistiller` if None) to them."""
    X, y = record_io(model, inputs, **record)
    return (distiller if distiller is not None else SymbolicDistiller()).fit(X, y)


__all__ = ["UNARY_FUNCTIONS", "FormulaCandidate", "SymbolicDistiller", "distill", "record_io"]
