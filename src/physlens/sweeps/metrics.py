"""The headline numbers and findings of each study kind, read from a run's ``metrics.json`` by key path.

This is the one place that says which numbers a sweep report puts against the swept keys and
which findings it checks seed by seed. When a study renames a key in its ``metrics.json``, update
the path here; a declared path that no trial has is listed in the sweep report, never skipped silently.

Key paths are dotted (``headline.rollout_error``): ``*`` matches any one key (each match
becomes a row of its own), an integer indexes an array (``-1`` is the last element), and a key
that contains a dot is written in double quotes (``width2.counts.function."2.5"``).
"""

from __future__ import annotations

import math
import operator
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

_SEGMENT = re.compile(r'"([^"]*)"|([^.]+)')


def parse_path(path: str) -> tuple[str, ...]:
    """Split a key path into its keys (``a."b.c".*`` → ``("a", "b.c", "*")``)."""
    parts, position = [], 0
    while position < len(path):
        match = _SEGMENT.match(path, position)
        if match is None:
            raise ValueError(f"key path {path!r}: empty key at character {position}")
        parts.append(match.group(1) if match.group(1) is not None else match.group(2))
        position = match.end()
        if position < len(path):
            if path[position] != ".":
                raise ValueError(f"key path {path!r}: expected '.' at character {position}")
            position += 1
            if position == len(path):
                raise ValueError(f"key path {path!r} ends with '.'")
    if not parts:
        raise ValueError("key path is empty")
    return tuple(parts)


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, (int, float)):
        return float(value)
    if value in ("inf", "-inf", "nan"):  # non-finite floats as study reports write them
        return float(value)
    return None


def lookup(metrics: Any, path: str) -> dict[tuple[str, ...], float]:
    """Every number in ``metrics`` that ``path`` matches, keyed by the keys its ``*`` matched.

    Matches that are not numbers (strings, arrays, tables) are left out; booleans count as 0 / 1.
    """
    out: dict[tuple[str, ...], float] = {}

    def walk(node: Any, parts: tuple[str, ...], captured: tuple[str, ...]) -> None:
        if not parts:
            number = _number(node)
            if number is not None:
                out[captured] = number
            return
        head, rest = parts[0], parts[1:]
        if isinstance(node, Mapping):
            if head == "*":
                for key, child in node.items():
                    walk(child, rest, captured + (str(key),))
            elif head in node:
                walk(node[head], rest, captured)
        elif isinstance(node, list):
            if head == "*":
                for index, child in enumerate(node):
                    walk(child, rest, captured + (str(index),))
            elif re.fullmatch(r"-?\d+", head) and -len(node) <= int(head) < len(node):
                walk(node[int(head)], rest, captured)

    walk(metrics, parse_path(path), ())
    return out


@dataclass(frozen=True)
class Metric:
    """A headline number of a study kind: the report shows it against the swept keys, over seeds."""

    label: str  # what the number is, as the report names it
    path: str  # key path in metrics.json (see the module docstring)
    normalize: bool = False  # counts → fractions: divide by the sum over the last '*' (an absent key counts 0)
    keys: tuple[str, ...] = ()  # names of what each '*' matches (column headers and axis labels), e.g. ("width", "kinks")


_OPERATORS = {">": operator.gt, ">=": operator.ge, "<": operator.lt, "<=": operator.le, "==": operator.eq, "!=": operator.ne}


@dataclass(frozen=True)
class Finding:
    """A yes/no claim about one trial, checked in every trial; the report separates claims that hold
    in every seed from those that do not."""

    label: str  # the claim, as a sentence fragment ("the ω0 probe beats its random-init control")
    path: str  # key path of the number the claim is about (no '*')
    op: str  # one of > >= < <= == != or "in" (between two bounds, inclusive)
    than: float | bool | str | tuple[float, float]  # a number, a boolean, another key path, or (low, high) for "in"
    absent: float | None = None  # value to use when the path is missing (a count that is absent is 0); None: not measured

    def __post_init__(self) -> None:
        if "*" in parse_path(self.path):
            raise ValueError(f"finding {self.label!r}: its path must name one number, got {self.path!r}")
        if self.op == "in":
            if not (isinstance(self.than, tuple) and len(self.than) == 2):
                raise ValueError(f"finding {self.label!r}: op 'in' needs than=(low, high), got {self.than!r}")
        elif self.op not in _OPERATORS:
            raise ValueError(f"finding {self.label!r}: op must be one of {sorted(_OPERATORS) + ['in']}, got {self.op!r}")

    def _value(self, metrics: Any, path: str) -> float | None:
        found = lookup(metrics, path)
        return found[()] if () in found else self.absent

    def check(self, metrics: Any) -> bool | None:
        """True or False for one trial's metrics; None when the numbers are missing or not finite."""
        value = self._value(metrics, self.path)
        if value is None or math.isnan(value):
            return None
        if self.op == "in":
            low, high = self.than  # type: ignore[misc]
            return bool(low <= value <= high)
        if isinstance(self.than, str):
            other = self._value(metrics, self.than)
            if other is None or math.isnan(other):
                return None
        else:
            other = float(self.than)
        return bool(_OPERATORS[self.op](value, other))

    def describe(self) -> str:
        """The claim with its test, e.g. ``the ω0 probe beats its control (analyses.probes.best.omega0.selectivity > 0)``."""
        if self.op == "in":
            test = f"{self.path} in [{self.than[0]:g}, {self.than[1]:g}]"  # type: ignore[index]
        else:
            than = str(self.than).lower() if isinstance(self.than, bool) else (f"{self.than:g}" if isinstance(self.than, (int, float)) else self.than)
            test = f"{self.path} {self.op} {than}"
        return f"{self.label} ({test})"


@dataclass(frozen=True)
class Headlines:
    """What a sweep report shows for one study kind."""

    metrics: tuple[Metric, ...]  # numbers shown against the swept keys
    findings: tuple[Finding, ...]  # claims checked in every trial


HEADLINES: dict[str, Headlines] = {
    "oscillator": Headlines(
        metrics=(
            Metric("model's median relative rollout error at the verdict's horizon", "headline.rollout_error"),
            Metric("linear AR's median relative rollout error, same trajectories and horizon", "headline.linear_ar_rollout_error"),
            Metric("model's next-step MSE", "headline.next_step_mse"),
            Metric("model's median rollout error out of distribution, same horizon", "headline.rollout_error_ood"),
            Metric("final training loss", "final_train_loss"),
            Metric("max |M − e^{AΔt}| of the learned map (window-1 models)", "linear_map.max_abs_map_error"),
            Metric("ω0 probe held-out R² at the pre-registered site", "analyses.probes.headline.r2"),
            Metric("ω0 probe R² of the random-init control, same site", "analyses.probes.headline.control_r2"),
            Metric("ω0 probe nested R² over all sites", "analyses.probes.headline.nested_r2"),
            Metric("context-swap slope", "analyses.swap.model.slope.estimate"),
            Metric("context-swap R²", "analyses.swap.model.r2"),
            Metric("steering slope dω0/dα along the ω0 probe direction, largest over the sites", "analyses.steering.largest.slope.estimate"),
        ),
        findings=(
            Finding("the model does its task (every pre-registered criterion holds)", "headline.works", "==", True),
            Finding("the model's rollout beats the linear AR baseline beyond the interval", "headline.model_minus_linear_ar.high",
                    "<", 0.0),
            Finding("the ω0 probe at the pre-registered site beats its random-init control", "analyses.probes.headline.selectivity",
                    ">", 0.0),
            Finding("the output moves with ω0 as the true propagator does (context-swap slope within 0.1 of 1)",
                    "analyses.swap.model.slope.estimate", "in", (0.9, 1.1)),
            Finding("pushing along the ω0 probe direction raises the rollout's frequency at some site", "analyses.steering.largest.slope.low", ">", 0.0),
        ),
    ),
    "fma": Headlines(
        metrics=(
            Metric("width-2 mode frequency (function-level mode-3 rule)", "width2.counts.function.*", normalize=True,
                   keys=("mode",)),
            Metric("width-2 mode frequency (seed's mode-3 signature)", "width2.counts.seed.*", normalize=True, keys=("mode",)),
            Metric("best width-2 validation MSE", "width2.best_val_loss"),
            Metric("least-squares plane validation MSE, median over networks", "width2.linear_fit_val_loss_median"),
            Metric("kink-class frequency by width", "wider.*.counts.*", normalize=True, keys=("width", "kinks")),
            Metric("median validation MSE by width", "wider.*.median_val_loss", keys=("width",)),
            Metric("width-2 networks that change mode after the first snapshot", "dynamics.n_switching"),
        ),
        findings=(
            Finding("some width-2 network computes min-of-two-planes (mode 3, function rule)", "width2.counts.function.3", ">", 0,
                    absent=0.0),
            Finding("the best width-2 network beats the least-squares plane", "width2.best_val_loss", "<",
                    "width2.linear_fit_val_loss_median"),
            Finding("the scan separates mode 3 from random-init networks (AUC ≥ 0.9, function rule)",
                    "scan_width2.function.3.vs_random", ">=", 0.9),
        ),
    ),
    "invariants": Headlines(
        metrics=(
            Metric("Siamese test accuracy", "siamese.test_accuracy"),
            Metric("Siamese latent: linear R² against L", "siamese.latent_linear_r2_L"),
            Metric("Siamese latent: polynomial-regression R²", "siamese.latent_poly_r2"),
            Metric("bottleneck test MSE", "bottleneck.test_mse"),
            Metric("transformer probe CV R²", "transformer.probe_cv_r2"),
        ),
        findings=(
            Finding("the Siamese network tells orbits apart (test accuracy ≥ 0.9)", "siamese.test_accuracy", ">=", 0.9),
            Finding("the Siamese latent is linear in L (R² ≥ 0.9)", "siamese.latent_linear_r2_L", ">=", 0.9),
        ),
    ),
}
"""Study kind → the headline metrics and findings its sweep reports show (edit here when a study's
``metrics.json`` keys change)."""


__all__ = ["HEADLINES", "Finding", "Headlines", "Metric", "lookup", "parse_path"]
