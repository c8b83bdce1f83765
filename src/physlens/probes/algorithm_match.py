"""Which algorithm, and over how much context? A predictor matched against candidate algorithms under noise.

:func:`~physlens.probes.compare_algorithms` compares errors on clean data, where every exact algorithm
(in-context least squares over any k ≥ 3, the oracle) makes none, so it cannot tell them apart. Here
the predictor and every candidate see the *same* noisy contexts (:func:`~physlens.probes.noise_curve`
with one seed), where each algorithm makes its own mistakes. For each noise size σ and candidate c:

- prediction distance ``√(Σ‖ŷ_model − ŷ_c‖² / Σ‖ŷ_model − y‖²)`` over trajectories (last position),
- map distance, the same with the one-step maps implied by the predictions in place of ŷ and the
  true map in place of y,

each the share of the model's error that c fails to reproduce, in root-mean-square units (0: c makes
exactly the model's mistakes; 1: c explains none of them, as an exact candidate for an inexact model).
Each is minimised over the grid: at the σ where injected noise dominates the model's own
imperfections, the right candidate reproduces almost all of its error and every other candidate does
not. A candidate matches when both minima are at most the threshold. Candidates are ranked by the
prediction distance — the prediction after the last state is where a window of k states is exactly k
states, while the map pools positions at which shorter windows coincide — and the verdict is the
closest matching candidate, or ``"none"``.

Where no candidate matches mistake for mistake (a trained network is no exact algorithm), the noise
curve alone still reads off the effective context: :meth:`AlgorithmMatch.effective_context` is the k
whose root-mean-square error curve runs closest to the model's where noise dominates its own error.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from torch import Tensor

from physlens._validation import check_nonnegative_int, check_positive_float, check_positive_int
from physlens.models.organisms import (
    ARFilterOrganism,
    ContextBlindOrganism,
    FiniteDifferenceOrganism,
    LeastSquaresOrganism,
    fit_ar_filters,
)
from physlens.probes.implied import default_start
from physlens.probes.noise_curves import NoiseCurve, noise_curve
from physlens.systems.oscillator import OscillatorSystem, Trajectories

LEAST_SQUARES_FAMILY = "least squares"
"""In-context least squares over the last k states, then the step (:class:`~physlens.models.LeastSquaresOrganism`)."""

AR_FAMILY = "AR"
"""The fixed linear AR-k filter fitted in closed form (:class:`~physlens.models.ARFilterOrganism`)."""

FINITE_DIFFERENCE_FAMILY = "finite differences"
"""ω0 from finite differences of the last 3 states, then the exact step (:class:`~physlens.models.FiniteDifferenceOrganism`)."""

CONTEXT_BLIND_FAMILY = "context-blind"
"""The exact step of the mean ω0, whatever the context (:class:`~physlens.models.ContextBlindOrganism`)."""

FAMILIES = (LEAST_SQUARES_FAMILY, AR_FAMILY, FINITE_DIFFERENCE_FAMILY, CONTEXT_BLIND_FAMILY)
"""The candidate algorithms, by family (least squares and AR come with a context length k)."""

NO_MATCH = "none"
"""The verdict when no candidate is within the threshold."""

MATCH_DISTANCE = 0.25
"""A candidate matches when, at some noise size, it reproduces all but this root-mean-square share of the
model's error (0.25: at least 1 − 0.25² ≈ 94 % of its squared error) in both the prediction and the map."""

DEFAULT_SIGMAS = (0.0, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1)
"""The default noise grid, relative to each trajectory's root-mean-square state component."""


def candidate_name(family: str, window: int | None = None) -> str:
    """The name of a candidate: ``"least squares k=5"``, ``"AR k=5"``, ``"finite differences"``."""
    if family not in FAMILIES:
        raise ValueError(f"family must be one of {list(FAMILIES)}, got {family!r}")
    return family if window is None else f"{family} k={check_positive_int('window', window)}"


@dataclass(frozen=True)
class Candidate:
    """A candidate algorithm: its name, family, context length (None where it has none) and a predictor."""

    name: str
    family: str
    window: int | None
    predictor: Callable[[Tensor], Tensor] = field(repr=False, compare=False)


def build_candidates(system: OscillatorSystem, context_lengths: Sequence[int], *, seed: int, n_ctx: int = 40,
                     n_reference_trajectories: int = 256) -> list[Candidate]:
    """Least squares over k states and the AR-k filter for every k in ``context_lengths``, finite differences
    and the context-blind step with the mean ω0 of ``system``. The AR filters are fitted in closed form on
    ``n_reference_trajectories`` fresh trajectories drawn from ``seed``."""
    ks = sorted({check_positive_int("context length", k) for k in context_lengths})
    if not ks or ks[0] < 2 or ks[-1] > n_ctx:
        raise ValueError(f"context_lengths must lie in 2..n_ctx={n_ctx}, got {list(context_lengths)}")
    dt = system.dt
    filters = fit_ar_filters(system, ks[-1], seed=check_nonnegative_int("seed", seed), n_traj=n_reference_trajectories)
    out = [Candidate(candidate_name(LEAST_SQUARES_FAMILY, k), LEAST_SQUARES_FAMILY, k, LeastSquaresOrganism(k, n_ctx=n_ctx, dt=dt))
           for k in ks]
    out += [Candidate(candidate_name(AR_FAMILY, k), AR_FAMILY, k, ARFilterOrganism(filters, k, n_ctx=n_ctx, dt=dt)) for k in ks]
    out.append(Candidate(FINITE_DIFFERENCE_FAMILY, FINITE_DIFFERENCE_FAMILY, 3, FiniteDifferenceOrganism.from_system(system, n_ctx=n_ctx)))
    out.append(Candidate(CONTEXT_BLIND_FAMILY, CONTEXT_BLIND_FAMILY, 1, ContextBlindOrganism.from_system(system, n_ctx=n_ctx)))
    return out


@dataclass
class CandidateSet:
    """Every candidate's noise curve on one set of trajectories and one noise draw, computed once and
    reused for every model matched against them."""

    candidates: list[Candidate]
    curves: dict[str, NoiseCurve]  # candidate name -> its noise curve
    trajectories: Trajectories  # context (all but the last step) and target
    sigmas: list[float]
    seed: int
    start: int

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary: each candidate's curve."""
        return {"sigmas": self.sigmas, "seed": self.seed, "start": self.start,
                "candidates": {c.name: {"family": c.family, "window": c.window, "curve": self.curves[c.name].to_dict()}
                               for c in self.candidates}}


def evaluate_candidates(candidates: Sequence[Candidate], trajectories: Trajectories, sigmas: Sequence[float] = DEFAULT_SIGMAS, *,
                        seed: int, start: int | None = None) -> CandidateSet:
    """Each candidate's :func:`noise_curve` on ``trajectories`` with the noise drawn from ``seed``.

    The implied maps are fitted from position ``start`` on (default: the second half of the context, where
    no candidate relies on its shortest, most noise-sensitive windows)."""
    candidates = list(candidates)
    start = default_start(trajectories.n_steps - 1) if start is None else check_nonnegative_int("start", start)
    names = [c.name for c in candidates]
    if not candidates or len(set(names)) != len(names):
        raise ValueError(f"candidates must be a non-empty list with distinct names, got {names}")
    curves = {c.name: noise_curve(c.predictor, trajectories, sigmas, seed=seed, start=start) for c in candidates}
    return CandidateSet(candidates, curves, trajectories, [float(s) for s in sigmas], seed, start)


ROUNDING_FACTOR = 100.0
"""At a noise size where the model's root-mean-square relative error is below this many machine epsilons
of its dtype, its "mistakes" are rounding, which no algorithm reproduces: the distance there is undefined."""


def _share_not_reproduced(model: np.ndarray, candidate: np.ndarray, truth: np.ndarray, eps: float) -> float:
    missed = float(((model - candidate) ** 2).sum())
    own = float(((model - truth) ** 2).sum())
    if own <= (ROUNDING_FACTOR * eps) ** 2 * float((truth**2).sum()):
        return float("nan")
    return float(np.sqrt(missed / own))


def curve_distance(model: NoiseCurve, candidate: NoiseCurve) -> tuple[np.ndarray, np.ndarray]:
    """Per σ, the prediction distance and the map distance between two curves drawn with the same noise
    (see the module docstring). Returns ``(prediction [sigma], map [sigma])``, NaN where the model's error
    is at the rounding level of its dtype (:data:`ROUNDING_FACTOR`)."""
    if (model.seed != candidate.seed or model.start != candidate.start or not np.array_equal(model.sigmas, candidate.sigmas)
            or not np.array_equal(model.truth, candidate.truth)):
        raise ValueError("the curves must come from the same trajectories, sigmas, start and seed")
    eps = float(np.finfo(np.dtype(model.dtype)).eps)
    prediction = np.array([_share_not_reproduced(model.predictions[i], candidate.predictions[i], model.truth, eps)
                           for i in range(len(model.sigmas))])
    kernel = np.array([_share_not_reproduced(model.kernels[i], candidate.kernels[i], model.true_kernel, eps)
                       for i in range(len(model.sigmas))])
    return prediction, kernel


NOISE_DOMINATED = 2.0
"""The noise curve's shape is compared only at σ where the model's error is at least this many times its clean error."""


def curve_shape_distance(model: NoiseCurve, candidate: NoiseCurve) -> float:
    """How far apart two noise curves run where injected noise dominates the model's own error: the
    root-mean-square of log(excess_model / excess_candidate) over those σ, with excess(σ) =
    √(rms(σ)² − rms(0)²) the error the noise added (:meth:`NoiseCurve.rms_error`). NaN if no σ of the
    grid is noise-dominated (:data:`NOISE_DOMINATED`) or the grid lacks σ = 0. Unlike
    :func:`curve_distance` it compares the curves' shapes, not mistakes trajectory by trajectory."""
    if not np.array_equal(model.sigmas, candidate.sigmas):
        raise ValueError("the curves must share their sigmas")
    clean = np.flatnonzero(model.sigmas == 0)
    if clean.size == 0:
        return float("nan")
    model_rms, candidate_rms = model.rms_error(), candidate.rms_error()
    model_clean, candidate_clean = model_rms[clean[0]], candidate_rms[clean[0]]
    dominated = (model.sigmas > 0) & (model_rms >= NOISE_DOMINATED * model_clean)
    model_excess = np.sqrt(np.clip(model_rms[dominated] ** 2 - model_clean**2, 0, None))
    candidate_excess = np.sqrt(np.clip(candidate_rms[dominated] ** 2 - candidate_clean**2, 0, None))
    usable = (model_excess > 0) & (candidate_excess > 0)
    if not usable.any():
        return float("nan")
    return float(np.sqrt(np.mean(np.log(model_excess[usable] / candidate_excess[usable]) ** 2)))


@dataclass
class AlgorithmMatch:
    """The predictor's distance to every candidate, and the verdict."""

    sigmas: list[float]
    distance: dict[str, float]  # candidate -> min over σ of the prediction distance
    map_match: dict[str, float]  # candidate -> min over σ of the map distance
    prediction_distance: dict[str, np.ndarray]  # candidate -> [sigma]
    map_distance: dict[str, np.ndarray]  # candidate -> [sigma]
    families: dict[str, str]  # candidate -> family
    windows: dict[str, int | None]  # candidate -> context length
    threshold: float
    model_curve: NoiseCurve
    shape_distance: dict[str, float] = field(default_factory=dict)  # candidate -> curve_shape_distance

    def effective_context(self, family: str = LEAST_SQUARES_FAMILY) -> tuple[int | None, float]:
        """The context length k of ``family`` whose noise curve runs closest to the model's
        (:func:`curve_shape_distance`), and that distance: the model's effective context read off the
        curve alone, meaningful even when no candidate matches mistake for mistake. (None, NaN) if no
        candidate of ``family`` has a finite distance."""
        if family not in FAMILIES:
            raise ValueError(f"family must be one of {list(FAMILIES)}, got {family!r}")
        options = {name: d for name, d in self.shape_distance.items() if self.families[name] == family and np.isfinite(d)}
        if not options:
            return None, float("nan")
        name = min(options, key=options.get)
        return self.windows[name], options[name]

    def ranking(self) -> list[str]:
        """Candidates from the closest to the farthest."""
        return sorted(self.distance, key=lambda name: (np.nan_to_num(self.distance[name], nan=np.inf), name))

    @property
    def best(self) -> str:
        """The closest candidate, matched or not."""
        return self.ranking()[0]

    @property
    def verdict(self) -> str:
        """The closest matching candidate (:meth:`matching`), else :data:`NO_MATCH`."""
        matching = self.matching()
        return matching[0] if matching else NO_MATCH

    @property
    def family(self) -> str:
        """The verdict's family, or :data:`NO_MATCH`."""
        return NO_MATCH if self.verdict == NO_MATCH else self.families[self.verdict]

    @property
    def window(self) -> int | None:
        """The verdict's context length (None with no match or no length)."""
        return None if self.verdict == NO_MATCH else self.windows[self.verdict]

    def matching(self) -> list[str]:
        """Every candidate within the threshold in both prediction and map distance, closest first."""
        return [name for name in self.ranking() if self.distance[name] <= self.threshold and self.map_match[name] <= self.threshold]

    def runner_up(self) -> tuple[str, float]:
        """The second-closest candidate and its distance: how clearly the best one wins."""
        name = self.ranking()[1] if len(self.distance) > 1 else self.best
        return name, self.distance[name]

    def sentence(self) -> str:
        """One sentence stating the verdict with its distance and the runner-up."""
        other, other_distance = self.runner_up()
        if self.verdict == NO_MATCH:
            k, shape = self.effective_context()
            curve = (f"; its noise curve runs closest to least squares over k = {k} states (log-RMS {shape:.2g})"
                     if k is not None else "")
            return (f"no candidate algorithm matches: the closest, {self.best}, leaves {self.distance[self.best]:.3g} of the "
                    f"model's prediction error and {self.map_match[self.best]:.3g} of its map error unexplained "
                    f"(a match needs <= {self.threshold:g} in both){curve}")
        return (f"the model matches {self.verdict} (distance {self.distance[self.verdict]:.3g}, map "
                f"{self.map_match[self.verdict]:.3g}, both <= {self.threshold:g}; next closest {other} at {other_distance:.3g})")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary."""
        other, other_distance = self.runner_up()
        return {
            "verdict": self.verdict, "family": self.family, "window": self.window, "best": self.best,
            "best_distance": self.distance[self.best], "best_map_distance": self.map_match[self.best], "runner_up": other, "runner_up_distance": other_distance,
            "threshold": self.threshold, "matching": self.matching(), "sentence": self.sentence(), "sigmas": self.sigmas,
            "distance": {name: self.distance[name] for name in self.ranking()},
            "map_match": {name: self.map_match[name] for name in self.ranking()},
            "prediction_distance": {k: v.tolist() for k, v in self.prediction_distance.items()},
            "map_distance": {k: v.tolist() for k, v in self.map_distance.items()},
            "model_curve": self.model_curve.to_dict(),
            "shape_distance": {name: self.shape_distance[name] for name in self.ranking() if name in self.shape_distance},
            "effective_context": dict(zip(("least_squares_k", "distance"), self.effective_context())),
        }


def _smallest(values: np.ndarray) -> float:
    finite = values[np.isfinite(values)]
    return float(finite.min()) if finite.size else float("inf")


def identify_algorithm(model: Callable[[Tensor], Tensor], candidates: CandidateSet, *,
                       threshold: float = MATCH_DISTANCE) -> AlgorithmMatch:
    """Match ``model`` (``[batch, pos, 2]`` → next state at every position) against every candidate of
    ``candidates`` under the same noisy contexts, and name the closest if it is within ``threshold``."""
    threshold = check_positive_float("threshold", threshold)
    curve = noise_curve(model, candidates.trajectories, candidates.sigmas, seed=candidates.seed, start=candidates.start)
    distance, map_match, prediction, kernel, shape = {}, {}, {}, {}, {}
    for candidate in candidates.candidates:
        shape[candidate.name] = curve_shape_distance(curve, candidates.curves[candidate.name])
        prediction[candidate.name], kernel[candidate.name] = curve_distance(curve, candidates.curves[candidate.name])
        distance[candidate.name] = _smallest(prediction[candidate.name])
        map_match[candidate.name] = _smallest(kernel[candidate.name])
    return AlgorithmMatch(sigmas=list(candidates.sigmas), distance=distance, map_match=map_match, prediction_distance=prediction,
                          map_distance=kernel,
                          families={c.name: c.family for c in candidates.candidates},
                          windows={c.name: c.window for c in candidates.candidates}, threshold=threshold, model_curve=curve,
                          shape_distance=shape)


def identify_oscillator_algorithm(model: Callable[[Tensor], Tensor], system: OscillatorSystem, *, seed: int,
                                  context_length: int = 40, context_lengths: Sequence[int] | None = None,
                                  n_trajectories: int = 128, sigmas: Sequence[float] = DEFAULT_SIGMAS,
                                  threshold: float = MATCH_DISTANCE) -> tuple[AlgorithmMatch, CandidateSet]:
    """The whole comparison in one call, as a study runs it: candidates for every k in ``context_lengths``
    (default 2 … ``context_length``) built and evaluated on ``n_trajectories`` fresh float64 contexts of
    ``context_length`` states of ``system``, then ``model`` matched against them. ``seed`` fixes the AR
    fits, the trajectories and the noise draw. Returns the match and the candidate set (reusable for
    other models, e.g. a random-init control)."""
    seed = check_nonnegative_int("seed", seed)
    context_length = check_positive_int("context_length", context_length)
    ks = range(2, context_length + 1) if context_lengths is None else context_lengths
    system64 = OscillatorSystem(**{**system.to_dict(), "dtype": "float64", "device": "cpu"})
    generator_seeds = np.random.SeedSequence(seed).generate_state(3)
    candidates = evaluate_candidates(
        build_candidates(system64, ks, seed=int(generator_seeds[0]), n_ctx=context_length),
        system64.sample(check_positive_int("n_trajectories", n_trajectories), context_length + 1, seed=int(generator_seeds[1])),
        sigmas, seed=int(generator_seeds[2]))
    return identify_algorithm(model, candidates, threshold=threshold), candidates


__all__ = ["AR_FAMILY", "CONTEXT_BLIND_FAMILY", "DEFAULT_SIGMAS", "FAMILIES", "FINITE_DIFFERENCE_FAMILY", "LEAST_SQUARES_FAMILY",
           "MATCH_DISTANCE", "NOISE_DOMINATED", "NO_MATCH", "ROUNDING_FACTOR", "AlgorithmMatch", "Candidate", "CandidateSet", "build_candidates", "candidate_name",
           "curve_distance", "curve_shape_distance", "evaluate_candidates", "identify_algorithm",
           "identify_oscillator_algorithm"]
