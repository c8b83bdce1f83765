"""Which algorithm does a sequence model implement? Its predictions beside candidate algorithms, by context length.

The transformer's counterpart of the F = m·a algorithm scan. For every context length k the model
and each candidate predict the state after the first k states of the same trajectories:

- in-context least squares on the k states (infer K, then step; exact from k = 3 on noiseless data),
- the linear AR model over k states, fitted in closed form in float64 on separate trajectories
  (a fixed linear filter: the same weights whatever the context),
- the current-state-only linear map (k = 1's answer, whatever k),
- the oracle (each trajectory's exact propagator).

For each candidate c and k: its own error, and the share of the model's error it reproduces,
``1 − Σ‖ŷ_model − ŷ_c‖² / Σ‖ŷ_model − y‖²`` (1: the model makes exactly c's mistakes; 0 or below:
c explains none of them, as for any exact candidate) — one step ahead and over a rollout in which
every predictor keeps a window of k states. One step ahead the fitted AR-k filter is already
nearly exact from k ≈ 4 on, so only rollouts, where its small errors compound, tell the candidates
apart. A model that implements c matches c's error profile across k and shares its mistakes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from physlens._validation import check_positive_int
from physlens.models.linear import LinearAutoregressive
from physlens.models.reference import ExactStep, InContextLeastSquares
from physlens.systems.oscillator import OscillatorSystem, Trajectories
from physlens.training.rollouts import predictor_placement, rollout

LEAST_SQUARES = "in-context least squares (k states)"
LINEAR_AR = "linear AR-k (float64)"
CURRENT_STATE = "current state only"
ORACLE = "oracle"
CANDIDATES = (LEAST_SQUARES, LINEAR_AR, CURRENT_STATE, ORACLE)

MATCH_SHARE = 0.5
"""A candidate "matches" the model at k when it reproduces at least this share of the model's error."""


@dataclass
class AlgorithmComparison:
    """Model and candidate predictions compared for every context length k.

    Per candidate, arrays are ``[k]``: ``error`` and ``rollout_error`` are medians over trajectories of
    the relative error ‖ŷ − y‖/‖y‖ one step ahead and at step ``horizon`` of a rollout that keeps a
    window of k states; ``shared`` and ``rollout_shared`` are the shares of the model's squared error
    (one step, and summed over the rollout) that the candidate reproduces.
    """

    context_lengths: list[int]
    horizon: int  # rollout steps behind rollout_error and rollout_shared
    model_error: np.ndarray  # [k]
    model_rollout_error: np.ndarray  # [k]
    error: dict[str, np.ndarray]  # candidate -> [k]
    rollout_error: dict[str, np.ndarray]  # candidate -> [k]
    shared: dict[str, np.ndarray]  # candidate -> [k]
    rollout_shared: dict[str, np.ndarray]  # candidate -> [k]
    n_trajectories: int

    def best_match(self, rollout: bool = True) -> list[str | None]:
        """Per k, the candidate reproducing the largest share of the model's error (over the rollout,
        or one step ahead with ``rollout=False``) if at least :data:`MATCH_SHARE`; else None."""
        shared = self.rollout_shared if rollout else self.shared
        out = []
        for i in range(len(self.context_lengths)):
            name = max(shared, key=lambda c: shared[c][i])
            out.append(name if shared[name][i] >= MATCH_SHARE else None)
        return out

    def matched_from(self, candidate: str, rollout: bool = True) -> int | None:
        """The smallest k from which ``candidate`` is the best match at every longer context, or None."""
        if candidate not in self.shared:
            raise ValueError(f"candidate must be one of {list(self.shared)}, got {candidate!r}")
        start = None
        for k, match in zip(self.context_lengths, self.best_match(rollout)):
            if match == candidate:
                start = k if start is None else start
            else:
                start = None
        return start

    def more_accurate_than(self, candidate: str, rollout: bool = True) -> list[int]:
        """Context lengths at which the model's median error (rollout or one step) is below ``candidate``'s."""
        mine = self.model_rollout_error if rollout else self.model_error
        theirs = (self.rollout_error if rollout else self.error)[candidate]
        return [k for k, m, c in zip(self.context_lengths, mine, theirs) if m < c]

    def verdict(self) -> str:
        """One sentence: which candidate's rollout mistakes the model shares, and from which k on."""
        best = self.best_match()
        for candidate in CANDIDATES:
            start = self.matched_from(candidate)
            if start is not None:
                return (f"from k = {start} on, the model's {self.horizon}-step rollouts reproduce most of the error of "
                        f"{candidate} (share ≥ {MATCH_SHARE:g} up to k = {self.context_lengths[-1]})")
        matched = [m for m in dict.fromkeys(best) if m is not None]
        if not matched:
            return f"no candidate reproduces half of the model's {self.horizon}-step rollout error at any k: its mistakes are its own"
        parts = [f"{m} at k = {integer_ranges([k for k, b in zip(self.context_lengths, best) if b == m])}" for m in matched]
        return (f"the model's {self.horizon}-step rollout errors follow " + "; ".join(parts)
                + f", and no candidate at k = {self.context_lengths[-1]}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "context_lengths": self.context_lengths,
            "horizon": self.horizon,
            "model_error": self.model_error.tolist(),
            "model_rollout_error": self.model_rollout_error.tolist(),
            "error": {c: v.tolist() for c, v in self.error.items()},
            "rollout_error": {c: v.tolist() for c, v in self.rollout_error.items()},
            "shared": {c: v.tolist() for c, v in self.shared.items()},
            "rollout_shared": {c: v.tolist() for c, v in self.rollout_shared.items()},
            "best_match": self.best_match(),
            "best_match_one_step": self.best_match(rollout=False),
            "verdict": self.verdict(),
            "n_trajectories": self.n_trajectories,
        }


def integer_ranges(ks: list[int]) -> str:
    """Sorted integers as runs: ``[2, 3, 4, 8, 10, 11]`` → ``"2–4, 8, 10–11"``."""
    parts, start, prev = [], ks[0], ks[0]
    for k in ks[1:] + [None]:
        if k is not None and k == prev + 1:
            prev = k
            continue
        parts.append(f"{start}" if start == prev else f"{start}–{prev}")
        if k is not None:
            start = prev = k
    return ", ".join(parts)


def fit_ar_candidates(system: OscillatorSystem, context_lengths: Sequence[int], *, seed: int, n_traj: int = 1024,
                      windows_per_traj: int = 20) -> dict[int, LinearAutoregressive]:
    """The AR-k candidates: one closed-form float64 fit per k (and k = 1) on fresh trajectories of ``system``."""
    ks = sorted({check_positive_int("context length", k) for k in context_lengths} | {1})
    train = OscillatorSystem(**{**system.to_dict(), "dtype": "float64", "device": "cpu"}).sample(
        n_traj, max(ks) + check_positive_int("windows_per_traj", windows_per_traj), seed=seed)
    return {k: LinearAutoregressive(window=k).fit(train.states) for k in ks}


def _median_relative(guess: Tensor, truth: Tensor) -> float:
    return float((torch.linalg.vector_norm(guess - truth, dim=-1) / torch.linalg.vector_norm(truth, dim=-1)).median())


def _shared(model: Tensor, candidate: Tensor, truth: Tensor) -> float:
    return float(1 - (model - candidate).pow(2).sum() / (model - truth).pow(2).sum())


def compare_algorithms(
    model: Callable[[Tensor], Tensor],
    trajectories: Trajectories,
    context_lengths: Sequence[int],
    ar_candidates: dict[int, LinearAutoregressive],
    *,
    horizon: int = 20,
) -> AlgorithmComparison:
    """Compare ``model`` with every candidate given the first ``k`` states of ``trajectories``, for
    every ``k`` in ``context_lengths`` (each ≥ 2): the next state, and a ``horizon``-step rollout in
    which every predictor keeps a sliding window of k states. Truth and candidates are float64."""
    ks = [check_positive_int("context length", k) for k in context_lengths]
    horizon = check_positive_int("horizon", horizon)
    if not ks or min(ks) < 2:
        raise ValueError(f"context_lengths must be >= 2 (in-context least squares needs a transition), got {list(context_lengths)}")
    if max(ks) + horizon > trajectories.n_steps:
        raise ValueError(
            f"trajectories have {trajectories.n_steps} steps: the longest context plus the horizon must fit, "
            f"so context lengths must be <= {trajectories.n_steps - horizon}, got {max(ks)}"
        )
    missing = sorted(set(ks) - set(ar_candidates)) + ([] if 1 in ar_candidates else [1])
    if missing:
        raise ValueError(f"ar_candidates lack the AR fits for k = {missing} (see fit_ar_candidates)")
    states64 = trajectories.states.to(dtype=torch.float64, device="cpu")
    dtype, device = predictor_placement(model, states64)
    oracle = ExactStep(trajectories.omega0.cpu(), trajectories.gamma.cpu(), trajectories.dt)

    def current_state(states: Tensor) -> Tensor:
        return ar_candidates[1](states[:, -1:])

    model_error, model_rollout_error = [], []
    tables: dict[str, dict[str, list[float]]] = {key: {c: [] for c in CANDIDATES} for key in ("error", "rollout_error", "shared", "rollout_shared")}
    for k in ks:
        context, truth, path_truth = states64[:, :k], states64[:, k], states64[:, k : k + horizon]
        path = rollout(model, context.to(device=device, dtype=dtype), horizon, fast=True).to(dtype=torch.float64, device="cpu")
        predicted = path[:, 0]  # a rollout's first step is the prediction from the k states themselves
        model_error.append(_median_relative(predicted, truth))
        model_rollout_error.append(_median_relative(path[:, -1], path_truth[:, -1]))
        predictors = {LEAST_SQUARES: InContextLeastSquares(window=k), LINEAR_AR: ar_candidates[k], CURRENT_STATE: current_state, ORACLE: oracle}
        for name, predictor in predictors.items():
            guess_path = rollout(predictor, context, horizon)
            guess = guess_path[:, 0]
            tables["error"][name].append(_median_relative(guess, truth))
            tables["rollout_error"][name].append(_median_relative(guess_path[:, -1], path_truth[:, -1]))
            tables["shared"][name].append(_shared(predicted, guess, truth))
            tables["rollout_shared"][name].append(_shared(path, guess_path, path_truth))
    arrays = {key: {c: np.array(v) for c, v in table.items()} for key, table in tables.items()}
    return AlgorithmComparison(
        context_lengths=ks, horizon=horizon, model_error=np.array(model_error), model_rollout_error=np.array(model_rollout_error),
        n_trajectories=len(trajectories), **arrays,
    )


__all__ = ["CANDIDATES", "CURRENT_STATE", "LEAST_SQUARES", "LINEAR_AR", "MATCH_SHARE", "ORACLE",
           "AlgorithmComparison", "compare_algorithms", "fit_ar_candidates", "integer_ranges"]
