"""F = m·a as a regression task: the seed's two input distributions and fixed train/validation splits.

Inputs are (m, a) pairs, the target is their product F. Splits are drawn per seed, so every network
of an ensemble can see its own data (as in the seed, where each run drew fresh data and weights).
:class:`FmaSystem` offers the same draws as a :class:`~physlens.systems.base.SupervisedSystem`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from physlens._validation import (
    check_choice,
    check_finite,
    check_nonnegative_int,
    check_positive_int,
    check_shape,
    did_you_mean,
    resolve_dtype,
)
from physlens.systems.base import SupervisedSplit, check_supervised_split, moved_copy

DISTRIBUTIONS = ("uniform", "product")
"""``"uniform"``: (m, a) uniform in the unit square. ``"product"``: F ~ U(0, 1), u ~ U(0.5, 1),
inputs (F/u, u) swapped with probability ½, so the *product* is uniform on (0, 1)."""

TARGETS = ("force",)
"""What :class:`FmaSystem` regresses on (m, a): ``"force"``, F = m·a."""

DATA_STREAM, INIT_STREAM = 0xDA7A, 0x1417
"""Stream tags: a seed's data and its network initialisation come from independent generators."""


def stream_seed(seed: int, stream: int) -> int:
    """A 63-bit torch seed for ``(seed, stream)``, so data and weights of one seed never share draws."""
    seed = check_nonnegative_int("seed", seed)
    return int(np.random.SeedSequence([seed, stream]).generate_state(1, dtype=np.uint64)[0] >> np.uint64(1))


def support_vertices(distribution: str) -> Float[Tensor, "vertex 2"]:
    """Corners of the convex hull of the inputs' support, in float64.

    A linear function of the inputs (a hidden unit's pre-activation) takes its extreme values over
    the data at these points, which lets the algorithm scan read unit activity off the parameters.
    """
    check_choice("distribution", distribution, DISTRIBUTIONS)
    if distribution == "uniform":
        corners = [(0.0, 0.0), (1.0, 0.0), (1.0, 1.0), (0.0, 1.0)]
    else:
        # (F/u, u) with F in (0, 1), u in (0.5, 1), and its mirror image: x ∈ [0, 1/u] is bounded by
        # a convex curve, so the hull's corners are the ends of that curve and of the axes.
        corners = [(0.0, 0.5), (0.0, 1.0), (0.5, 2.0), (2.0, 0.5), (1.0, 0.0), (0.5, 0.0)]
    return torch.tensor(corners, dtype=torch.float64)


def in_support(points: Float[Tensor, "n 2"], distribution: str = "product") -> Tensor:
    """Whether each point (m, a) can be drawn from ``distribution``: a boolean ``[n]``.

    ``"uniform"``: the unit square. ``"product"``: (F/u, u) or (u, F/u) with F ∈ [0, 1] and
    u ∈ [½, 1], i.e. one coordinate in [½, 1], the other non-negative, and m·a ≤ 1.
    """
    check_choice("distribution", distribution, DISTRIBUTIONS)
    points = torch.as_tensor(points)
    if points.ndim != 2 or points.shape[1] != 2:
        raise ValueError(f"points must have shape [n, 2], got {list(points.shape)}")
    m, a = points[:, 0], points[:, 1]
    if distribution == "uniform":
        return (m >= 0) & (m <= 1) & (a >= 0) & (a <= 1)
    product_ok = (m >= 0) & (a >= 0) & (m * a <= 1)
    return product_ok & (((a >= 0.5) & (a <= 1)) | ((m >= 0.5) & (m <= 1)))


def sample_fma(
    n: int,
    distribution: str = "product",
    *,
    seed: int | None = None,
    generator: torch.Generator | None = None,
    dtype: str | torch.dtype = "float32",
    device: str | torch.device = "cpu",
) -> tuple[Float[Tensor, "n 2"], Float[Tensor, "n 1"]]:
    """Draw ``n`` inputs (m, a) and targets F = m·a from ``distribution`` (see :data:`DISTRIBUTIONS`).

    Pass ``seed`` or a ``generator`` (exactly one). Draws are made in float64 on the CPU, then cast,
    so a seed gives the same data on every device.
    """
    n = check_positive_int("n", n)
    check_choice("distribution", distribution, DISTRIBUTIONS)
    if (seed is None) == (generator is None):
        raise ValueError("pass exactly one of seed (an int) or generator (a torch.Generator)")
    if generator is None:
        generator = torch.Generator().manual_seed(check_nonnegative_int("seed", seed))
    draw = dict(generator=generator, dtype=torch.float64)
    if distribution == "uniform":
        inputs = torch.rand(n, 2, **draw)
    else:
        force = torch.rand(n, **draw)
        u = 0.5 + 0.5 * torch.rand(n, **draw)
        swap = torch.rand(n, **draw) < 0.5
        first, second = force / u, u
        inputs = torch.stack([torch.where(swap, second, first), torch.where(swap, first, second)], dim=-1)
    targets = (inputs[:, 0] * inputs[:, 1]).unsqueeze(-1)
    out = dict(dtype=resolve_dtype(dtype), device=device)
    return inputs.to(**out), targets.to(**out)


@dataclass(frozen=True)
class FmaSplit:
    """A fixed train/validation split of F = m·a data, for one network or stacked for an ensemble.

    Tensors have shape ``[n, 2]`` / ``[n, 1]`` for one network, or ``[model, n, 2]`` /
    ``[model, n, 1]`` when each member of an ensemble has its own split.
    """

    train_inputs: Float[Tensor, "*model n_train 2"]
    train_targets: Float[Tensor, "*model n_train 1"]
    val_inputs: Float[Tensor, "*model n_val 2"]
    val_targets: Float[Tensor, "*model n_val 1"]
    distribution: str = "product"

    def __post_init__(self) -> None:
        check_choice("distribution", self.distribution, DISTRIBUTIONS)
        lead = self.train_inputs.shape[:-2]
        if len(lead) > 1:
            raise ValueError(f"train_inputs must have shape [n, 2] or [model, n, 2], got {list(self.train_inputs.shape)}")
        meaning = "[model, n, {}]" if lead else "[n, {}]"
        for name in ("train_inputs", "train_targets", "val_inputs", "val_targets"):
            tensor = getattr(self, name)
            width = 2 if name.endswith("inputs") else 1
            check_shape(name, tensor, (*lead, None, width), meaning.format(width))
            if tensor.dtype != self.train_inputs.dtype:
                raise ValueError(f"{name} must have dtype {self.train_inputs.dtype} like train_inputs, got {tensor.dtype}")
            check_finite(name, tensor)
        for kind in ("train", "val"):
            inputs, targets = getattr(self, f"{kind}_inputs"), getattr(self, f"{kind}_targets")
            if inputs.shape[-2] != targets.shape[-2]:
                raise ValueError(f"{kind}_inputs has {inputs.shape[-2]} rows but {kind}_targets has {targets.shape[-2]}")

    @property
    def n_models(self) -> int | None:
        """Number of stacked splits, or ``None`` for a single network's split."""
        return self.train_inputs.shape[0] if self.train_inputs.ndim == 3 else None

    def member(self, index: int) -> FmaSplit:
        """The split of ensemble member ``index`` (stacked splits only)."""
        if self.n_models is None:
            raise ValueError("member() needs stacked splits of shape [model, n, 2]; this split is for one network")
        if not -self.n_models <= index < self.n_models:
            raise ValueError(f"index must be in [0, {self.n_models}), got {index}")
        return FmaSplit(
            self.train_inputs[index], self.train_targets[index], self.val_inputs[index], self.val_targets[index], self.distribution
        )

    @classmethod
    def stack(cls, splits: Sequence[FmaSplit]) -> FmaSplit:
        """One network's splits stacked ``[model, n, ·]`` for an ensemble; member ``i`` is ``splits[i]``.

        Every split must be for one network and share the distribution and the train and validation sizes."""
        splits = list(splits)
        if not splits or not all(isinstance(s, FmaSplit) and s.n_models is None for s in splits):
            raise ValueError("splits must be a non-empty sequence of one network's FmaSplit each ([n, 2] inputs)")
        first = splits[0]
        for i, s in enumerate(splits[1:], start=1):
            if (s.distribution, len(s.train_inputs), len(s.val_inputs)) != (first.distribution, len(first.train_inputs), len(first.val_inputs)):
                raise ValueError(
                    f"splits[{i}] has distribution {s.distribution!r} and {len(s.train_inputs)} / {len(s.val_inputs)} points; "
                    f"splits[0] has {first.distribution!r} and {len(first.train_inputs)} / {len(first.val_inputs)}: stacked splits must agree"
                )
        names = ("train_inputs", "train_targets", "val_inputs", "val_targets")
        return cls(*(torch.stack([getattr(s, name) for s in splits]) for name in names), distribution=first.distribution)

    def to(self, device: str | torch.device | None = None, dtype: str | torch.dtype | None = None) -> FmaSplit:
        """The same split on another device and/or dtype."""
        kwargs = dict(device=device, dtype=None if dtype is None else resolve_dtype(dtype))
        return FmaSplit(
            *(getattr(self, n).to(**kwargs) for n in ("train_inputs", "train_targets", "val_inputs", "val_targets")),
            distribution=self.distribution,
        )


def fma_split(
    seed: int,
    distribution: str = "product",
    *,
    n_train: int = 8000,
    n_val: int = 2000,
    dtype: str | torch.dtype = "float32",
    device: str | torch.device = "cpu",
) -> FmaSplit:
    """The fixed split of ``seed``: ``n_train + n_val`` points drawn from the seed's data stream."""
    n_train, n_val = check_positive_int("n_train", n_train), check_positive_int("n_val", n_val)
    generator = torch.Generator().manual_seed(stream_seed(seed, DATA_STREAM))
    inputs, targets = sample_fma(n_train + n_val, distribution, generator=generator, dtype=dtype, device=device)
    return FmaSplit(inputs[:n_train], targets[:n_train], inputs[n_train:], targets[n_train:], distribution)


def fma_splits(
    seeds: Sequence[int],
    distribution: str = "product",
    *,
    n_train: int = 8000,
    n_val: int = 2000,
    dtype: str | torch.dtype = "float32",
    device: str | torch.device = "cpu",
) -> FmaSplit:
    """Stacked splits ``[model, n, ·]``, one per seed; member ``i`` equals ``fma_split(seeds[i])``."""
    seeds = list(seeds)
    if not seeds:
        raise ValueError("seeds must hold at least one seed")
    return FmaSplit.stack([fma_split(s, distribution, n_train=n_train, n_val=n_val, dtype=dtype, device=device) for s in seeds])


@dataclass
class FmaSystem:
    """F = m·a as a :class:`~physlens.systems.base.SupervisedSystem`: the draws of :func:`sample_fma`,
    :func:`fma_split` and :func:`fma_splits`, bit for bit, behind the protocol the trainers accept.
    """

    distribution: str = "product"  # the law of the inputs (m, a): one of DISTRIBUTIONS
    target: str = "force"  # what is regressed: one of TARGETS
    dtype: str = "float32"  # dtype of sampled tensors
    device: str = "cpu"  # where sampled tensors live

    def __post_init__(self) -> None:
        check_choice("distribution", self.distribution, DISTRIBUTIONS)
        check_choice("target", self.target, TARGETS)
        resolve_dtype(self.dtype)

    def sample(
        self, n: int, *, seed: int | None = None, generator: torch.Generator | None = None
    ) -> tuple[Float[Tensor, "n 2"], Float[Tensor, "n 1"]]:
        """Draw ``n`` inputs (m, a) and targets F = m·a, as :func:`sample_fma` does (exactly one of ``seed``, ``generator``)."""
        return sample_fma(n, self.distribution, seed=seed, generator=generator, dtype=self.dtype, device=self.device)

    def split(self, seed: int, *, n_train: int = 8000, n_val: int = 2000) -> FmaSplit:
        """The fixed split of ``seed`` for one network, as :func:`fma_split` draws it."""
        return fma_split(seed, self.distribution, n_train=n_train, n_val=n_val, dtype=self.dtype, device=self.device)

    def splits(self, seeds: Sequence[int], *, n_train: int = 8000, n_val: int = 2000) -> FmaSplit:
        """Stacked splits ``[model, n, ·]``, one per seed, as :func:`fma_splits` draws them."""
        return fma_splits(seeds, self.distribution, n_train=n_train, n_val=n_val, dtype=self.dtype, device=self.device)

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | str | None = None) -> FmaSystem:
        """The same task sampled on ``device`` and/or in ``dtype``: identical draws for the same seed."""
        return moved_copy(self, device, dtype)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready description, readable back with :meth:`from_dict`."""
        return {"distribution": self.distribution, "target": self.target, "dtype": self.dtype, "device": self.device}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FmaSystem:
        """The task :meth:`to_dict` described; unknown keys are refused by name."""
        if not isinstance(data, Mapping):
            raise TypeError(f"data must be a mapping such as FmaSystem.to_dict() gives, got {type(data).__name__}")
        unknown = sorted(set(data) - {"distribution", "target", "dtype", "device"})
        if unknown:
            raise ValueError(f"data has unknown keys {unknown} for FmaSystem; "
                             + did_you_mean(unknown, ("distribution", "target", "dtype", "device")))
        return cls(**data)


# --------------------------------------------------------------------- exact distribution-level facts
def _moments(distribution: str) -> tuple[np.ndarray, np.ndarray, float]:
    """Second moments of (1, m, a) and their products with F, and E[F²], in closed form (float64)."""
    if distribution == "uniform":  # m, a independent U(0, 1)
        mean, square, cross, f_mean, f_square, f_input = 0.5, 1 / 3, 0.25, 0.25, 1 / 9, 1 / 6
    else:  # half the mass (F/u, u), half (u, F/u); F ~ U(0, 1), u ~ U(1/2, 1) with E[1/u] = 2 ln 2, E[1/u²] = 2
        log2 = math.log(2.0)
        mean = (log2 + 0.75) / 2  # (E[F]E[1/u] + E[u]) / 2
        square = (2 / 3 + 7 / 12) / 2  # (E[F²]E[1/u²] + E[u²]) / 2
        cross, f_mean, f_square = 0.5, 0.5, 1 / 3  # m·a = F
        f_input = (2 * log2 / 3 + 3 / 8) / 2  # (E[F²]E[1/u] + E[F]E[u]) / 2
    gram = np.array([[1.0, mean, mean], [mean, square, cross], [mean, cross, square]])
    moment = np.array([f_mean, f_input, f_input])
    return gram, moment, f_square


@dataclass(frozen=True)
class PlaneBaseline:
    """The best plane F ≈ c0 + c1·m + c2·a on a whole distribution (not on a sample), in float64."""

    distribution: str
    coef: tuple[float, float, float]  # (c0, c1, c2)
    mse: float  # its mean squared error over the distribution
    target_variance: float  # Var(F): the mean squared error of the best constant


def optimal_plane(distribution: str = "product") -> PlaneBaseline:
    """The least-squares plane over the distribution itself, from its exact moments.

    These are the like-for-like linear and constant baselines for a network's validation MSE: on
    ``"uniform"`` data the plane's error is exactly 1/144 (the seed's linear model reached 0.0072
    there); on ``"product"`` data it is about 3.53e-3, and the best constant scores Var(F) = 1/12.
    """
    check_choice("distribution", distribution, DISTRIBUTIONS)
    gram, moment, f_square = _moments(distribution)
    coef = np.linalg.solve(gram, moment)
    variance = f_square - moment[0] ** 2
    return PlaneBaseline(distribution, tuple(float(c) for c in coef), float(f_square - coef @ moment), float(variance))


def plane_fit_val_mse(data: SupervisedSplit) -> np.ndarray:
    """Validation MSE of the least-squares plane F ≈ c0 + c1·m + c2·a fitted (float64, closed form)
    on each split's own training points: ``[model]`` (or one value for a single split).

    The per-seed linear baseline, on exactly the data a network of that seed saw.
    """
    check_supervised_split(data, "data")

    def design(x: Tensor) -> Tensor:
        x = x.to("cpu", torch.float64)
        return torch.cat([torch.ones_like(x[..., :1]), x], dim=-1)

    coef = torch.linalg.lstsq(design(data.train_inputs), data.train_targets.to("cpu", torch.float64)).solution
    residual = design(data.val_inputs) @ coef - data.val_targets.to("cpu", torch.float64)
    return residual.square().mean(dim=(-2, -1)).numpy()


@dataclass(frozen=True)
class SegmentQuadrature:
    """A distribution written as a weighted family of segments: x = origin + t·direction, t ~ U(0, 1).

    ``E[g(x)] = Σ_k weights[k] · ∫₀¹ g(origins[k] + t·directions[k]) dt`` for any g. Along each
    segment the product m·a and every linear function of x are linear in t, which lets expectations
    of ReLU units be integrated in closed form along t (see
    :func:`~physlens.probes.mechanisms.unit_statistics`); only the transverse coordinate is
    discretised, by composite Gauss–Legendre quadrature.
    """

    origins: Float[Tensor, "segment 2"]
    directions: Float[Tensor, "segment 2"]
    weights: Float[Tensor, " segment"]


def segment_quadrature(distribution: str = "product", *, n_panels: int = 64, n_nodes: int = 4) -> SegmentQuadrature:
    """The segments and weights of ``distribution`` (float64), ``n_panels × n_nodes`` per family.

    ``"uniform"``: the segments are m ∈ (0, 1) at fixed a. ``"product"``: for each u ∈ (½, 1),
    F ∈ (0, 1) traces (F/u, u) and its mirror image (u, F/u), each with half the mass.
    """
    check_choice("distribution", distribution, DISTRIBUTIONS)
    n_panels, n_nodes = check_positive_int("n_panels", n_panels), check_positive_int("n_nodes", n_nodes)
    low, high = (0.0, 1.0) if distribution == "uniform" else (0.5, 1.0)
    nodes, node_weights = np.polynomial.legendre.leggauss(n_nodes)
    edges = np.linspace(low, high, n_panels + 1)
    half = (edges[1:] - edges[:-1])[:, None] / 2
    points = ((edges[:-1] + edges[1:])[:, None] / 2 + half * nodes).ravel()
    weights = (half * node_weights).ravel() / (high - low)  # the transverse law is uniform on (low, high)
    zeros = np.zeros_like(points)
    if distribution == "uniform":
        origins, directions = np.stack([zeros, points], 1), np.stack([np.ones_like(points), zeros], 1)
    else:
        origins = np.concatenate([np.stack([zeros, points], 1), np.stack([points, zeros], 1)])
        directions = np.concatenate([np.stack([1 / points, zeros], 1), np.stack([zeros, 1 / points], 1)])
        weights = np.concatenate([weights, weights]) / 2
    as_tensor = dict(dtype=torch.float64)
    return SegmentQuadrature(torch.tensor(origins, **as_tensor), torch.tensor(directions, **as_tensor), torch.tensor(weights, **as_tensor))


# --------------------------------------------------------------------------- the seed's own recipe
SEED_RECIPE_POINTS, SEED_RECIPE_TRAIN = 10_000, 8000
"""The seed's ``train.py`` draws 10 000 points and keeps a shuffled 8000 for training, 2000 for validation."""


def seed_recipe_split(seed: int, generator: torch.Generator) -> FmaSplit:
    """The data of the seed's ``train.py`` for ``seed``, drawn exactly as it draws them (float32).

    The seed calls ``set_all_seeds(seed)`` (``torch.manual_seed`` and ``np.random.seed``), draws F,
    u and the swap mask with ``torch.rand`` and shuffles with ``np.random.permutation``. Pass a
    ``generator`` freshly seeded with ``seed``; it is left where the seed's global generator would
    be, so the network's initialisation can be drawn from it next (see
    :func:`~physlens.models.mlp.seed_recipe_start`).
    """
    seed = check_nonnegative_int("seed", seed)
    if not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator seeded with the seed, got {type(generator).__name__}")
    n = SEED_RECIPE_POINTS
    force = torch.rand(n, generator=generator)
    first = force / (torch.rand(n, generator=generator) * 0.5 + 0.5)
    second = force / first  # as the seed computes it, so rounding matches
    swap = torch.rand(n, generator=generator) < 0.5
    inputs = torch.stack([torch.where(swap, second, first), torch.where(swap, first, second)], dim=1)
    targets = force[:, None]
    order = torch.from_numpy(np.random.RandomState(seed).permutation(n))
    train, val = order[:SEED_RECIPE_TRAIN], order[SEED_RECIPE_TRAIN:]
    return FmaSplit(inputs[train], targets[train], inputs[val], targets[val], "product")


__all__ = [
    "DISTRIBUTIONS",
    "SEED_RECIPE_POINTS",
    "TARGETS",
    "FmaSplit",
    "FmaSystem",
    "PlaneBaseline",
    "SegmentQuadrature",
    "fma_split",
    "fma_splits",
    "in_support",
    "optimal_plane",
    "plane_fit_val_mse",
    "sample_fma",
    "seed_recipe_split",
    "segment_quadrature",
    "stream_seed",
    "support_vertices",
]
