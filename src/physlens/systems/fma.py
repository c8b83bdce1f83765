"""F = m·a as a regression task: the seed's two input distributions and fixed train/validation splits.

Inputs are (m, a) pairs, the target is their product F. Splits are drawn per seed, so every network
of an ensemble can see its own data (as in the seed, where each run drew fresh data and weights).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

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
    resolve_dtype,
)

DISTRIBUTIONS = ("uniform", "product")
"""``"uniform"``: (m, a) uniform in the unit square. ``"product"``: F ~ U(0, 1), u ~ U(0.5, 1),
inputs (F/u, u) swapped with probability ½, so the *product* is uniform on (0, 1)."""

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
    parts = [fma_split(s, distribution, n_train=n_train, n_val=n_val, dtype=dtype, device=device) for s in seeds]
    fields = ("train_inputs", "train_targets", "val_inputs", "val_targets")
    return FmaSplit(*(torch.stack([getattr(p, f) for p in parts]) for f in fields), distribution=distribution)


__all__ = [
    "DISTRIBUTIONS",
    "FmaSplit",
    "fma_split",
    "fma_splits",
    "sample_fma",
    "stream_seed",
    "support_vertices",
]
