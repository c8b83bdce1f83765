"""Does a model do its task? Its errors beside reference predictors on the same trajectories, with intervals.

Before a model of the oscillator is interpreted, it is scored against four references on the very
same held-out trajectories: the exact propagator (an oracle that knows ω0 and γ), in-context least
squares (K read off the context, no labels), the linear autoregressive model over the whole
context fitted in closed form in float64, and the current-state-only linear map (the trivial
baseline). Every median comes with a bootstrap interval, and "the model beats a reference" is
decided by the paired interval of the difference, never by two point estimates.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch
from torch import Tensor

from physlens._validation import check_positive_int
from physlens.models.linear import LinearAutoregressive
from physlens.models.reference import InContextLeastSquares
from physlens.seeding import stream_seeds
from physlens.stats import Interval, bootstrap_interval, paired_difference_interval
from physlens.systems.base import ExactlySolvable, System, TrajectoryBatch
from physlens.training._divergence import DIVERGENCE_FACTOR, TrainingDiverged
from physlens.training.rollouts import predictor_placement, relative_error, rollout

MODEL = "model"
ORACLE = "oracle: exact propagator"
IN_CONTEXT = "in-context least squares"
LINEAR_AR = "linear AR over the context (float64)"
CURRENT_STATE = "current state only (float64)"
REFERENCES = (ORACLE, IN_CONTEXT, LINEAR_AR, CURRENT_STATE)
"""Reference predictors, best first. The last is the trivial baseline a working model must beat."""


@dataclass
class PredictorScores:
    """One predictor's errors on the evaluation trajectories."""

    one_step_squared_error: np.ndarray  # [traj] squared error of the next state after the context, mean over (x, p)
    one_step_relative_error: np.ndarray  # [traj] ‖ŷ − y‖ / ‖y‖ of that next state
    rollout_error: np.ndarray  # [traj, step] relative error of the autoregressive rollout at every step


@dataclass
class TaskEvaluation:
    """A model's errors beside the references on the same held-out trajectories.

    ``scores`` maps ``"model"`` and each name in :data:`REFERENCES` to its :class:`PredictorScores`.
    """

    context_len: int  # true states every predictor was given
    n_steps: int  # rollout length
    energy_range: tuple[float, float]  # initial energies of the evaluation trajectories
    seeds: dict[str, int]  # the streams the trajectories and the reference fits were drawn from
    scores: dict[str, PredictorScores] = field(default_factory=dict)
    n_resamples: int = 2000  # bootstrap resamples behind every interval
    # Intervals already computed: the report's tables and to_dict() ask for the same ones, and each is a bootstrap.
    _intervals: dict[tuple[Any, ...], tuple[tuple[np.ndarray, ...], Interval]] = field(
        default_factory=dict, init=False, repr=False, compare=False)

    def _interval(self, key: tuple[Any, ...], arrays: tuple[np.ndarray, ...], compute: Callable[[], Interval]) -> Interval:
        # Keyed by the arrays' identities too (and holding them, so no identity is reused while cached): replaced
        # scores are never answered from the cache.
        key = (*key, *(id(a) for a in arrays), self.n_resamples, self.seeds["bootstrap"])
        if key not in self._intervals:
            self._intervals[key] = (arrays, compute())
        return self._intervals[key][1]

    @property
    def n_trajectories(self) -> int:
        """Number of evaluation trajectories."""
        return int(next(iter(self.scores.values())).rollout_error.shape[0])

    def _predictor(self, name: str) -> PredictorScores:
        if name not in self.scores:
            raise ValueError(f"predictor must be one of {list(self.scores)}, got {name!r}")
        return self.scores[name]

    def _step(self, horizon: int) -> int:
        if isinstance(horizon, bool) or not isinstance(horizon, int) or not 1 <= horizon <= self.n_steps:
            raise ValueError(f"horizon must be a rollout step in 1..{self.n_steps}, got {horizon!r}")
        return horizon - 1

    def next_step_mse(self, name: str = MODEL) -> Interval:
        """Mean squared error of the next state after the context (the training loss at the last position)."""
        sample = self._predictor(name).one_step_squared_error
        return self._interval(("mse", name), (sample,), lambda: bootstrap_interval(sample, _mean, n_resamples=self.n_resamples,
                                                                                   seed=self.seeds["bootstrap"]))

    def rollout_median(self, name: str = MODEL, horizon: int | None = None) -> Interval:
        """Median over trajectories of the relative rollout error at step ``horizon`` (default: the last)."""
        step = self._step(self.n_steps if horizon is None else horizon)
        errors = self._predictor(name).rollout_error
        return self._interval(("median", name, step), (errors,), lambda: bootstrap_interval(
            errors[:, step], n_resamples=self.n_resamples, seed=self.seeds["bootstrap"]))

    def rollout_difference(self, name: str, reference: str, horizon: int | None = None) -> Interval:
        """Paired interval of median error(``name``) − median error(``reference``) at ``horizon``:
        below zero means ``name`` rolls out better than ``reference`` on these trajectories."""
        step = self._step(self.n_steps if horizon is None else horizon)
        mine, theirs = self._predictor(name).rollout_error, self._predictor(reference).rollout_error
        return self._interval(("difference", name, reference, step), (mine, theirs), lambda: paired_difference_interval(
            mine[:, step], theirs[:, step], n_resamples=self.n_resamples, seed=self.seeds["bootstrap"]))

    def judge(self, criteria: TaskCriteria, *, label: str = "") -> TaskVerdict:
        """Check every criterion on these trajectories (see :class:`TaskCriteria`); ``label`` (e.g.
        ``"out of distribution"``) is appended to each requirement."""
        horizon = self.n_steps if criteria.horizon is None else criteria.horizon
        self._step(horizon)
        checks = []
        if criteria.max_next_step_mse is not None:
            mse = self.next_step_mse(MODEL)
            checks.append(Check(f"next-step MSE ≤ {criteria.max_next_step_mse:g}", mse, mse.estimate <= criteria.max_next_step_mse,
                                "next-step MSE of the model"))
        if criteria.max_rollout_error is not None:
            error = self.rollout_median(MODEL, horizon)
            checks.append(Check(f"median error at step {horizon} ≤ {criteria.max_rollout_error:g}", error,
                                error.estimate <= criteria.max_rollout_error, "median relative error of the model"))
        must_beat = criteria.must_beat
        if must_beat is None:  # every fitted linear reference that is not itself exact at the horizon
            must_beat = tuple(r for r in (LINEAR_AR, CURRENT_STATE) if self.rollout_median(r, horizon).estimate > EXACT)
        for reference in must_beat:
            difference = self.rollout_difference(MODEL, reference, horizon)
            checks.append(Check(f"beats {reference} at step {horizon}", difference, difference.high < 0,
                                "median error of the model − of the reference; must be below 0 with its whole interval"))
        if label:
            checks = [dataclasses.replace(check, requirement=f"{check.requirement} ({label})") for check in checks]
        return TaskVerdict(checks=tuple(checks), horizon=horizon)

    def to_dict(self, horizons: list[int] | None = None) -> dict[str, Any]:
        """JSON-ready summary: next-step MSE and rollout medians with intervals for every predictor."""
        horizons = sorted({1, self.n_steps, *(horizons or [])})
        out: dict[str, Any] = {
            "context_len": self.context_len, "n_steps": self.n_steps, "energy_range": list(self.energy_range),
            "n_trajectories": self.n_trajectories, "seeds": self.seeds, "predictors": {},
        }
        for name in self.scores:
            out["predictors"][name] = {
                "next_step_mse": self.next_step_mse(name).to_dict(),
                "rollout_median": {str(h): self.rollout_median(name, h).to_dict() for h in horizons},
            }
        out["model_minus_reference"] = {
            reference: {str(h): self.rollout_difference(MODEL, reference, h).to_dict() for h in horizons}
            for reference in REFERENCES if reference in self.scores
        }
        return out


EXACT = 1e-8
"""A reference whose median rollout error stays below this is exact: there is nothing to beat."""


@dataclass(frozen=True)
class TaskCriteria:
    """What "the model does its task" means for a study, fixed before the model is trained.

    ``must_beat=None`` requires beating every fitted linear reference that is not itself exact at
    the horizon (with a fixed ω0 the linear map is the exact answer, so only the error targets remain).
    """

    horizon: int | None = None  # rollout step the criteria read (None: the last step)
    max_rollout_error: float | None = None  # the model's median relative error at the horizon must not exceed this
    max_next_step_mse: float | None = None  # nor its next-step MSE this
    must_beat: tuple[str, ...] | None = None  # references to beat beyond the paired interval

    def __post_init__(self) -> None:
        if self.horizon is not None:
            check_positive_int("horizon", self.horizon)
        for name in ("max_rollout_error", "max_next_step_mse"):
            value = getattr(self, name)
            if value is not None and not (np.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
        if self.must_beat is not None:
            unknown = [r for r in self.must_beat if r not in REFERENCES]
            if unknown:
                raise ValueError(f"must_beat names unknown references {unknown}; choose from {list(REFERENCES)}")


@dataclass(frozen=True)
class Check:
    """One criterion: what was required, what was measured (with its interval) and whether it held."""

    requirement: str
    measured: Interval
    passed: bool
    quantity: str  # what ``measured`` is

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {"requirement": self.requirement, "quantity": self.quantity, "measured": self.measured.to_dict(), "passed": self.passed}


@dataclass(frozen=True)
class TaskVerdict:
    """The outcome of :meth:`TaskEvaluation.judge`: the model works when every check passed (and
    there was at least one)."""

    checks: tuple[Check, ...]
    horizon: int

    def combine(self, other: TaskVerdict) -> TaskVerdict:
        """One verdict holding the checks of both (e.g. in and out of distribution)."""
        if other.horizon != self.horizon:
            raise ValueError(f"verdicts must read the same horizon to be combined, got {self.horizon} and {other.horizon}")
        return TaskVerdict(checks=self.checks + other.checks, horizon=self.horizon)

    @property
    def works(self) -> bool:
        """True when there were checks and all of them passed."""
        return bool(self.checks) and all(check.passed for check in self.checks)

    @property
    def status(self) -> str:
        """``"works"``, ``"no criterion"``, or ``"fails k of n criteria"``."""
        if not self.checks:
            return "no criterion"
        failed = sum(not check.passed for check in self.checks)
        return "works" if not failed else f"fails {failed} of {len(self.checks)} criteria"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {"works": self.works, "status": self.status, "horizon": self.horizon, "checks": [c.to_dict() for c in self.checks]}


def _mean(sample: np.ndarray, axis: int = -1) -> np.ndarray | np.floating:
    return np.mean(sample, axis=axis)


def float64_system(system: System) -> System:
    """The same family of systems sampled in float64 on the CPU: identical draws for the same seed."""
    return system.to(device="cpu", dtype=torch.float64)


def fit_linear_references(
    system: System, context_len: int, *, seed: int, n_traj: int = 2048, windows_per_traj: int = 20
) -> dict[str, LinearAutoregressive]:
    """The two fitted references, in closed form and float64 on fresh trajectories of ``system``:
    the linear AR over ``context_len`` states and the current-state-only linear map."""
    context_len = check_positive_int("context_len", context_len)
    train = float64_system(system).sample(n_traj, context_len + check_positive_int("windows_per_traj", windows_per_traj), seed=seed)
    return {
        LINEAR_AR: LinearAutoregressive(window=context_len).fit(train.states),
        CURRENT_STATE: LinearAutoregressive(window=1).fit(train.states),
    }


def score_predictor(
    predictor: Callable[[Tensor], Tensor], trajectories: TrajectoryBatch, context_len: int, n_steps: int
) -> PredictorScores:
    """Errors of ``predictor`` (a model or a reference, called on ``[batch, pos, 2]``) on ``trajectories``:
    the next state after the first ``context_len`` states, and an ``n_steps`` rollout from them.

    Inputs are cast to the predictor's parameter dtype and device when it has parameters; errors
    are computed in float64 against the float64 truth.
    """
    dtype, device = predictor_placement(predictor, trajectories.states)
    states = trajectories.states.to(device=device, dtype=dtype)
    context, truth = states[:, :context_len], trajectories.states[:, context_len:].to(torch.float64)
    path = rollout(predictor, context, n_steps, fast=True).to(torch.float64).cpu()
    next_state = path[:, 0]  # the rollout's first step is the prediction from the context itself
    truth = truth.cpu()
    squared = (next_state - truth[:, 0]).pow(2).mean(dim=-1)
    relative = relative_error(next_state[:, None], truth[:, :1])[:, 0]
    return PredictorScores(squared.numpy(), relative.numpy(), relative_error(path, truth[:, :n_steps]).numpy())


def check_model_errors(scores: PredictorScores, zero_mse: float, *, what: str = "the model") -> None:
    """Raise :class:`~physlens.training.TrainingDiverged` when ``scores`` (a model's, on held-out
    trajectories) describe a broken model rather than a measurement: a next-step error that is NaN or
    infinite, or a next-step MSE above ``DIVERGENCE_FACTOR`` (10⁴, as for the training loss) times ``zero_mse``,
    the MSE of predicting the zero state on the same trajectories.

    The training loss is checked at every step, but a model can still reach its report broken (a
    blow-up the last batch did not show, inputs the training batches never held); its next-step error
    is the training loss on fresh data, so the same guard applies to it before any number is reported.
    """
    squared = np.asarray(scores.one_step_squared_error, dtype=np.float64)
    if not (np.isfinite(zero_mse) and zero_mse >= 0):
        raise ValueError(f"zero_mse must be a finite number >= 0, got {zero_mse!r}")
    bad = ~np.isfinite(squared)
    if bad.any():
        raise TrainingDiverged(
            f"{what} diverged: its next-step error is not finite on {int(bad.sum())} of {bad.size} held-out trajectories "
            "(its weights or outputs overflowed); no score of it would mean anything. Lower the learning rate"
        )
    mse = float(squared.mean()) if squared.size else 0.0
    reference = zero_mse if zero_mse > 0 else float(np.finfo(np.float64).tiny)
    if mse > DIVERGENCE_FACTOR * reference:
        raise TrainingDiverged(
            f"{what} diverged: its next-step MSE on held-out trajectories is {mse:.3g}, more than {DIVERGENCE_FACTOR:g} "
            f"times that of predicting zero ({zero_mse:.3g}); no score of it would mean anything. Lower the learning rate"
        )


def evaluate_task(
    model: Callable[[Tensor], Tensor],
    system: System,
    *,
    n_traj: int,
    context_len: int,
    n_steps: int,
    seed: int,
    energy_range: tuple[float, float] | None = None,
    references: dict[str, LinearAutoregressive] | None = None,
    n_resamples: int = 2000,
    guard: bool = True,
) -> TaskEvaluation:
    """Score ``model`` and the references on the same ``n_traj`` fresh trajectories of ``system``.

    In-context least squares needs a transition, so it is left out when ``context_len`` is 1.
    With ``guard`` (the default) a model whose next-step errors are not finite or absurdly large is
    refused with :class:`~physlens.training.TrainingDiverged` (see :func:`check_model_errors`)
    instead of scored; ``guard=False`` scores it all the same.

    Trajectories are drawn in float64 (the model sees them in its own dtype) from the stream
    ``"trajectories"`` of ``seed``; the linear references are fitted on the stream ``"reference fit"``
    unless ``references`` (from :func:`fit_linear_references`) are passed in, e.g. to share one fit
    between in- and out-of-distribution evaluations.
    """
    n_traj = check_positive_int("n_traj", n_traj)
    context_len = check_positive_int("context_len", context_len)
    n_steps = check_positive_int("n_steps", n_steps)
    seeds = stream_seeds(seed, ["trajectories", "reference fit", "bootstrap"])
    if references is None:
        references = fit_linear_references(system, context_len, seed=seeds["reference fit"])
    missing = [name for name in (LINEAR_AR, CURRENT_STATE) if name not in references]
    if missing:
        raise ValueError(f"references must hold {[LINEAR_AR, CURRENT_STATE]} (see fit_linear_references), missing {missing}")
    if references[LINEAR_AR].window != context_len:
        raise ValueError(f"the linear AR reference reads {references[LINEAR_AR].window} states but context_len is {context_len}")
    trajectories = float64_system(system).sample(n_traj, context_len + n_steps, seed=seeds["trajectories"], energy_range=energy_range)
    predictors: dict[str, Callable[[Tensor], Tensor]] = {MODEL: model}
    if isinstance(system, ExactlySolvable):  # a system without an exact solution has no oracle row
        predictors[ORACLE] = system.exact_predictor(trajectories)
    predictors.update({
        IN_CONTEXT: InContextLeastSquares(),
        LINEAR_AR: references[LINEAR_AR],
        CURRENT_STATE: references[CURRENT_STATE],
    })
    if context_len < 2:  # one state holds no transition to read K from
        del predictors[IN_CONTEXT]
    evaluation = TaskEvaluation(
        context_len=context_len, n_steps=n_steps, energy_range=tuple(energy_range or system.energy_range), seeds=seeds,
        n_resamples=n_resamples,
    )
    for name, predictor in predictors.items():
        evaluation.scores[name] = score_predictor(predictor, trajectories, context_len, n_steps)
        if name == MODEL and guard:
            zero_mse = float(trajectories.states[:, context_len].to(torch.float64).pow(2).mean())
            check_model_errors(evaluation.scores[MODEL], zero_mse)
    return evaluation


@dataclass(frozen=True)
class ScaleCheck:
    """How far a model's rollouts are from scaling with their context (see :func:`scale_equivariance`)."""

    factor: float  # every context state was multiplied by this (energies by its square)
    n_trajectories: int
    n_steps: int  # rollout steps compared
    max_difference: float  # largest ‖r(λs)/λ − r(s)‖ / ‖r(s)‖ over trajectories and steps
    median_difference: float  # its median over trajectories and steps

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields."""
        return dataclasses.asdict(self)


def scale_equivariance(
    model: Callable[[Tensor], Tensor],
    system: System,
    *,
    n_traj: int,
    context_len: int,
    n_steps: int,
    seed: int,
    factor: float = 3.0,
) -> ScaleCheck:
    """Compare ``model``'s rollouts from ``factor`` times a context with ``factor`` times its rollouts from the context.

    The oscillator's dynamics are linear, so the truth from λ·s is λ times the truth from s, and a model that
    scales the same way has, at every energy, the relative errors it has at the energies it was trained on: its
    out-of-distribution energy check is then its in-distribution one. This measures whether it does, on
    ``n_traj`` fresh trajectories of ``system`` (stream ``"trajectories"`` of ``seed``, float64, shown to the
    model in its own dtype), rolled out ``n_steps`` steps through the fast step: a model that divides its input by
    its first state's size and multiplies its prediction back differs by float rounding alone; any other differs
    by about its own error.
    """
    n_traj, context_len, n_steps = (check_positive_int(name, value) for name, value in
                                    (("n_traj", n_traj), ("context_len", context_len), ("n_steps", n_steps)))
    if not (np.isfinite(factor) and factor > 0 and factor != 1):
        raise ValueError(f"factor must be a finite positive number other than 1, got {factor!r}")
    seeds = stream_seeds(seed, ["trajectories"])
    context = float64_system(system).sample(n_traj, context_len, seed=seeds["trajectories"]).states
    dtype, device = predictor_placement(model, context)
    plain = rollout(model, context.to(device=device, dtype=dtype), n_steps, fast=True).to(device="cpu", dtype=torch.float64)
    scaled = rollout(model, (factor * context).to(device=device, dtype=dtype), n_steps, fast=True).to(device="cpu", dtype=torch.float64)
    difference = relative_error(scaled / factor, plain).numpy()
    return ScaleCheck(factor=float(factor), n_trajectories=n_traj, n_steps=n_steps,
                      max_difference=float(difference.max()), median_difference=float(np.median(difference)))


__all__ = [
    "CURRENT_STATE",
    "IN_CONTEXT",
    "LINEAR_AR",
    "MODEL",
    "ORACLE",
    "EXACT",
    "REFERENCES",
    "Check",
    "PredictorScores",
    "ScaleCheck",
    "TaskCriteria",
    "TaskEvaluation",
    "TaskVerdict",
    "check_model_errors",
    "evaluate_task",
    "fit_linear_references",
    "float64_system",
    "scale_equivariance",
    "score_predictor",
]
