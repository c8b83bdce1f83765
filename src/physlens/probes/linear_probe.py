"""Closed-form ridge probes for every site and target at once, with grouped cross-validation and controls.

Every probe is fitted from per-fold sufficient statistics (XᵀX, Xᵀy, yᵀy and sums), so activations
can be streamed: the statistics are accumulated chunk by chunk and the activations are never stored.
Folds group samples by trajectory, never by position. Results equal scikit-learn's ``Ridge``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from sklearn.base import BaseEstimator, MultiOutputMixin, RegressorMixin
from sklearn.utils import Tags
from sklearn.utils.validation import check_is_fitted
from torch import Tensor
from tqdm.auto import tqdm

from physlens._estimators import NotFittedError, as_float_array, check_fitted, check_target_given, validate_table
from physlens._validation import check_nonnegative_int, check_positive_int, resolve_dtype
from physlens.probes.activations import (
    Positions,
    as_inputs,
    capture_activations,
    check_hooks,
    model_device,
    model_dtype,
    resolve_positions,
    select_labels,
)
from physlens.systems.base import TrajectoryBatch

DEFAULT_ALPHAS: tuple[float, ...] = tuple(float(10.0**k) for k in range(-6, 7))
"""Ridge penalties tried by default (scikit-learn's convention: the penalty on the summed squared error)."""

DEFAULT_TARGETS: tuple[str, ...] = ("omega0", "gamma", "energy")


def _folds_from_permutation(n: int, n_folds: int, generator: torch.Generator) -> Tensor:
    return torch.randperm(n, generator=generator) % n_folds


def grouped_folds(groups: Any, n_folds: int = 5, *, seed: int = 0) -> Tensor:
    """Fold index per sample such that all samples of a group (trajectory) share a fold.

    Groups are shuffled with ``seed`` and dealt round-robin, so fold sizes (in groups) differ by at
    most one.
    """
    n_folds = check_positive_int("n_folds", n_folds)
    if n_folds < 2:
        raise ValueError(f"n_folds must be >= 2 for cross-validation, got {n_folds}")
    groups = torch.as_tensor(groups)
    if groups.ndim != 1:
        raise ValueError(f"groups must be one id per sample [n], got shape {list(groups.shape)}")
    _, inverse = torch.unique(groups, return_inverse=True)
    n_groups = int(inverse.max()) + 1 if len(inverse) else 0
    if n_groups < n_folds:
        raise ValueError(f"need at least n_folds={n_folds} distinct groups (trajectories) for cross-validation, got {n_groups}")
    generator = torch.Generator().manual_seed(check_nonnegative_int("seed", seed))
    return _folds_from_permutation(n_groups, n_folds, generator)[inverse.cpu()]


BUFFER_VALUES = 1 << 18
"""Values (2 MiB in float64) of the fold-sorted, site-major block that :class:`ProbeStatistics` fills
per group of sites: small enough to stay in cache between filling it and multiplying it out."""


class ProbeStatistics:
    """Per-site, per-fold sufficient statistics of ridge regression, accumulated chunk by chunk.

    Per fold ``k`` and site ``s``: ``count [fold]`` samples, ``sum_x [fold, site, d]``,
    ``sum_y [fold, site, t]``, ``xx [fold, site, d, d]`` (Σ x xᵀ), ``xy [fold, site, d, t]`` (Σ x yᵀ)
    and ``yy [fold, site, t]`` (Σ y², per target), all of the data shifted by ``shift_x [site, d]`` and
    ``shift_y [site, t]``: the first chunk's means, which keep the uncentred sums well conditioned
    (ridge with an intercept is unchanged by the shift).

    Each chunk is copied once, fold-sorted and site-major, into a cache-sized float64 block
    ``[site, sample, x | 1 | y]`` with the shift subtracted; per fold, one batched product of its
    ``x | 1`` columns with the whole block yields every statistic above but Σ y², which is summed
    beside it, and the chunk is checked for NaN and infinity through those products rather than by a
    separate pass over the data.
    """

    def __init__(self, n_sites: int, n_features: int, n_targets: int, n_folds: int, *, dtype: torch.dtype = torch.float64, device: Any = "cpu") -> None:
        self.n_folds = n_folds
        k, s, d, t = n_folds, n_sites, n_features, n_targets
        zeros = dict(dtype=dtype, device=device)
        self.count = torch.zeros(k, **zeros)
        self.sum_x = torch.zeros(k, s, d, **zeros)
        self.sum_y = torch.zeros(k, s, t, **zeros)
        self.xx = torch.zeros(k, s, d, d, **zeros)
        self.xy = torch.zeros(k, s, d, t, **zeros)
        self.yy = torch.zeros(k, s, t, **zeros)
        self.shift_x: Tensor | None = None
        self.shift_y: Tensor | None = None

    def update(self, X: Tensor, y: Tensor, folds: Tensor) -> None:
        """Add samples ``X [n, site, d]`` with targets ``y [n, site, t]`` in folds ``folds [n]`` (values in 0..K-1).

        Raises ``ValueError`` naming ``X`` or ``y`` if the chunk holds a NaN or an infinity, and
        leaves the statistics unchanged.
        """
        n, n_sites, d = X.shape
        if n == 0:
            return
        t, dtype, device = y.shape[-1], self.xx.dtype, self.xx.device
        X, y, folds = X.to(device), y.to(device), folds.to(device)
        order = torch.argsort(folds, stable=True)  # fold-sorted: each fold is one run of rows
        counts = torch.bincount(folds, minlength=self.n_folds)
        bounds = [0, *torch.cumsum(counts, 0).tolist()]
        shift_x, shift_y = self.shift_x, self.shift_y
        if shift_x is None:  # any shift is exact; a mean in the data's own dtype is ten times faster to take
            shift_x, shift_y = X.mean(dim=0).to(dtype), y.mean(dim=0).to(dtype)
        width = d + 1 + t
        block = max(1, min(n_sites, BUFFER_VALUES // (n * width)))
        buffer = torch.empty(block, n, width, dtype=dtype, device=device)  # [site, sample, x | 1 | y]
        buffer[..., d] = 1
        # Only the x and 1 rows of the product are needed (Σ y yᵀ between targets is not, and with many
        # targets, as a permutation null has, it would be most of the work): [fold, site, x | 1, x | 1 | y].
        products = torch.empty(self.n_folds, n_sites, d + 1, width, dtype=dtype, device=device)
        squares = torch.empty(self.n_folds, n_sites, t, dtype=dtype, device=device)  # Σ y² per target
        for start in range(0, n_sites, block):
            sites = slice(start, min(start + block, n_sites))
            rows = buffer[: sites.stop - start]
            torch.sub(X[:, sites].index_select(0, order).transpose(0, 1), shift_x[sites, None], out=rows[..., :d])
            torch.sub(y[:, sites].index_select(0, order).transpose(0, 1), shift_y[sites, None], out=rows[..., d + 1 :])
            for k in range(self.n_folds):
                part = rows[:, bounds[k] : bounds[k + 1]]
                torch.bmm(part[..., : d + 1].transpose(1, 2), part, out=products[k, sites])
                torch.sum(part[..., d + 1 :].square(), dim=1, out=squares[k, sites])
        if not (bool(torch.isfinite(products).all()) and bool(torch.isfinite(squares).all())):
            for name, value in (("X", X), ("y", y)):
                if not bool(torch.isfinite(value).all()):
                    raise ValueError(f"{name} must contain only finite values (found NaN or inf)")
            raise ValueError("X and y are too large: their products overflow the statistics' dtype")
        self.shift_x, self.shift_y = shift_x, shift_y
        self.count += counts.to(dtype)
        self.sum_x += products[..., :d, d]
        self.sum_y += products[..., d, d + 1 :]
        self.xx += products[..., :d, :d]
        self.xy += products[..., :d, d + 1 :]
        self.yy += squares


def _centred_stats(count: Tensor, sum_x: Tensor, sum_y: Tensor, xx: Tensor, xy: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Centred Gram matrix XcᵀXc, centred cross term Xcᵀyc, and the means of x and y."""
    n = count.reshape(count.shape + (1,) * (sum_x.ndim - count.ndim))
    mean_x, mean_y = sum_x / n, sum_y / n
    gram = xx - n[..., None] * mean_x[..., :, None] * mean_x[..., None, :]
    cross = xy - n[..., None] * mean_x[..., :, None] * mean_y[..., None, :]
    return 0.5 * (gram + gram.transpose(-1, -2)), cross, mean_x, mean_y


def ridge_solve(gram: Tensor, cross: Tensor, alpha: float) -> Tensor:
    """Solve (gram + α I) w = cross for a batch of symmetric PSD ``gram`` matrices.

    Cholesky is tried first (fast; the explicit inverse from ``cholesky_inverse`` is used because
    batched triangular solves are far slower on CPU); matrices where it fails (singular with α = 0, or round-off) are
    solved through an eigendecomposition with directions of zero curvature dropped, which gives the
    minimum-norm solution.
    """
    eye = torch.eye(gram.shape[-1], dtype=gram.dtype, device=gram.device)
    lower, info = torch.linalg.cholesky_ex(gram + alpha * eye)
    pivots = lower.diagonal(dim1=-2, dim2=-1) ** 2
    # A pivot lost in round-off means (gram + αI) is numerically singular: Cholesky "succeeds" but
    # its inverse is noise, so such matrices also take the eigendecomposition route.
    well_posed = pivots.amin(dim=-1) > gram.shape[-1] * torch.finfo(gram.dtype).eps * pivots.amax(dim=-1)
    factorised = (info == 0) & well_posed
    lower = torch.where(factorised[..., None, None], lower, eye)  # placeholders, solved below
    weights = torch.cholesky_inverse(lower) @ cross
    # A non-finite entry makes the sum non-finite (a finite sum that overflows only sends a matrix the safe way too)
    failed = ~factorised | ~torch.isfinite(weights.sum(dim=(-2, -1)))
    if bool(failed.any()):
        eigvals, eigvecs = torch.linalg.eigh(gram[failed])
        shifted = eigvals.clamp_min(0) + alpha
        tol = gram.shape[-1] * torch.finfo(gram.dtype).eps * shifted.amax(dim=-1, keepdim=True).clamp_min(torch.finfo(gram.dtype).tiny)
        gain = torch.where(shifted > tol, 1 / shifted, torch.zeros_like(shifted))
        weights[failed] = eigvecs @ (gain[..., None] * (eigvecs.transpose(-1, -2) @ cross[failed]))
    return weights


class RidgeProbeSweep(BaseEstimator):
    """Ridge probes for many sites and targets in one batched solve, α chosen per site and target by
    grouped K-fold cross-validation.

    ``X`` is ``[n, site, d]`` (sites share the feature width), ``y`` is ``[n, t]`` (the same targets
    at every site) or ``[n, site, t]``. Fit in memory with :meth:`fit`, or stream with
    :meth:`partial_fit` + :meth:`finalize`. Fitted attributes: ``coef_ [site, d, t]``,
    ``intercept_ [site, t]``, ``alpha_ [site, t]``, ``cv_r2_ [site, t]`` (held-out R² pooled over folds:
    1 − Σ out-of-fold squared error / Σ (y − ȳ)²), ``cv_r2_path_ [alpha, site, t]``.
    """

    def __init__(self, alphas: Sequence[float] = DEFAULT_ALPHAS, *, n_folds: int = 5, seed: int = 0, dtype: str = "float64", device: str | None = None) -> None:
        self.alphas = alphas  # ridge penalties to choose from
        self.n_folds = n_folds  # K of the grouped K-fold cross-validation
        self.seed = seed  # seed of the fold assignment when fit() derives folds from groups
        self.dtype = dtype  # dtype of the statistics and the solve
        self.device = device  # where to accumulate and solve; None: where X lives

    def __sklearn_tags__(self) -> Tags:
        # X is [n, site, d], a table per site, so scikit-learn's checks (which fit 2-D tables) do not apply
        tags = super().__sklearn_tags__()
        tags.input_tags.two_d_array = False
        tags.input_tags.three_d_array = True
        tags.target_tags.required = True
        return tags

    def _check_alphas(self) -> list[float]:
        alphas = [float(a) for a in self.alphas]
        if not alphas or any(not np.isfinite(a) or a < 0 for a in alphas):
            raise ValueError(f"alphas must be a non-empty list of finite numbers >= 0, got {self.alphas!r}")
        return alphas

    def _check_batch(self, X: Any, y: Any, folds: Any, *, check_values: bool = True) -> tuple[Tensor, Tensor, Tensor]:
        X, y = torch.as_tensor(X), torch.as_tensor(y)
        if X.ndim != 3:
            raise ValueError(f"X must have shape [n, site, d], got {list(X.shape)}")
        n, n_sites = X.shape[:2]
        if y.ndim == 1:
            y = y[:, None]
        if y.shape[0] != n:
            raise ValueError(f"y must have one row per sample of X ({n}), got shape {list(y.shape)}")
        if y.ndim == 2:
            y = y[:, None, :].expand(n, n_sites, y.shape[1])
        if y.ndim != 3 or y.shape[1] != n_sites:
            raise ValueError(f"y must have shape [n, t] or [n, site={n_sites}, t], got {list(y.shape)}")
        folds = torch.as_tensor(folds).long()
        if folds.shape != (n,):
            raise ValueError(f"folds must be one fold index per sample [{n}], got shape {list(folds.shape)}")
        if len(folds) and (int(folds.min()) < 0 or int(folds.max()) >= self.n_folds):
            raise ValueError(f"folds must lie in 0..{self.n_folds - 1}, got values in {int(folds.min())}..{int(folds.max())}")
        for name, value in (("X", X), ("y", y)):
            if not value.is_floating_point():
                raise ValueError(f"{name} must hold floating-point values, got dtype {value.dtype}")
            if check_values and not bool(torch.isfinite(value).all()):
                raise ValueError(f"{name} must contain only finite values (found NaN or inf)")
        return X, y, folds

    def partial_fit(self, X: Any, y: Any, folds: Any) -> RidgeProbeSweep:
        """Accumulate a chunk of samples with their fold indices (trajectory-grouped folds)."""
        check_target_given(self, y)
        n_folds = check_positive_int("n_folds", self.n_folds)
        if n_folds < 2:
            raise ValueError(f"n_folds must be >= 2 for cross-validation, got {n_folds}")
        X, y, folds = self._check_batch(X, y, folds, check_values=False)  # ProbeStatistics checks values
        if not hasattr(self, "stats_"):
            device = self.device if self.device is not None else X.device
            self.stats_ = ProbeStatistics(X.shape[1], X.shape[2], y.shape[2], n_folds, dtype=resolve_dtype(self.dtype), device=device)
        elif tuple(self.stats_.sum_x.shape[1:]) != tuple(X.shape[1:]) or self.stats_.sum_y.shape[-1] != y.shape[-1]:
            raise ValueError(
                f"chunk has sites/features {list(X.shape[1:])} and {y.shape[-1]} targets, but earlier chunks had "
                f"{list(self.stats_.sum_x.shape[1:])} and {self.stats_.sum_y.shape[-1]}"
            )
        self.stats_.update(X, y, folds)
        return self

    def fit(self, X: Any, y: Any, groups: Any = None, *, folds: Any = None, batch_size: int = 8192) -> RidgeProbeSweep:
        """Fit in memory. Folds come from ``folds`` if given, else from ``groups`` (trajectory ids;
        default: every sample is its own group) via :func:`grouped_folds` with ``seed``."""
        check_target_given(self, y)
        if hasattr(self, "stats_"):
            del self.stats_
        n = torch.as_tensor(X).shape[0]
        if folds is None:
            folds = grouped_folds(torch.arange(n) if groups is None else groups, self.n_folds, seed=self.seed)
        elif groups is not None:
            raise ValueError("pass groups or folds, not both")
        X, y, folds = torch.as_tensor(X), torch.as_tensor(y), torch.as_tensor(folds)
        if len(folds) != n:
            raise ValueError(f"folds must be one fold index per sample [{n}], got shape {list(folds.shape)}")
        for start in range(0, n, check_positive_int("batch_size", batch_size)):
            rows = slice(start, start + batch_size)
            self.partial_fit(X[rows], y[rows], folds[rows])
        return self.finalize()

    def finalize(self) -> RidgeProbeSweep:
        """Cross-validate every α from the accumulated statistics, pick the best per site and target,
        and refit on all samples."""
        if not hasattr(self, "stats_"):
            raise NotFittedError("no data: call partial_fit (or fit) before finalize")
        alphas = self._check_alphas()
        st = self.stats_
        empty = [k for k in range(st.n_folds) if float(st.count[k]) == 0]
        if empty:
            raise ValueError(f"folds {empty} hold no samples; need at least n_folds={st.n_folds} trajectories")
        total = [x.sum(dim=0) for x in (st.count, st.sum_x, st.sum_y, st.xx, st.xy, st.yy)]
        n_all, sx_all, sy_all, xx_all, xy_all, yy_all = total
        sst = yy_all - sy_all**2 / n_all
        scale = yy_all.clamp_min(torch.finfo(sst.dtype).tiny)
        constant = sst <= 1e-12 * scale
        if bool(constant.any()):
            site, target = (int(i) for i in constant.nonzero()[0])
            raise ValueError(f"target {target} is constant at site {site} (zero variance): a probe for it is meaningless")
        train = [tot[None] - part for tot, part in zip(total[:5], (st.count, st.sum_x, st.sum_y, st.xx, st.xy))]
        gram, cross, mean_x, mean_y = _centred_stats(*train)
        n_k = st.count[:, None, None]
        sse_path = []
        for alpha in alphas:
            w = ridge_solve(gram, cross, alpha)  # [fold, site, d, t]
            b = mean_y - (mean_x[..., None, :] @ w).squeeze(-2)
            # Σ over the fold of (y − b − wᵀx)²; the [d, t] terms in one pass, as (xx w − 2 xy)·w (few large temporaries)
            quadratic = (st.xx @ w).sub_(st.xy, alpha=2).mul_(w).sum(dim=-2)
            sse = (
                st.yy
                - 2 * b * st.sum_y
                + n_k * b**2
                + 2 * b * (st.sum_x[..., None, :] @ w).squeeze(-2)
                + quadratic
            )
            sse_path.append(sse.sum(dim=0))
        sse_path = torch.stack(sse_path)  # [alpha, site, t]
        best = sse_path.argmin(dim=0)
        alpha_table = torch.tensor(alphas, dtype=sse_path.dtype, device=sse_path.device)
        gram, cross, mean_x, mean_y = _centred_stats(n_all, sx_all, sy_all, xx_all, xy_all)
        coef = torch.zeros_like(xy_all)
        for a, alpha in enumerate(alphas):
            chosen = (best == a)[:, None, :]
            if bool(chosen.any()):
                coef = torch.where(chosen, ridge_solve(gram, cross, alpha), coef)
        shifted_intercept = mean_y - torch.einsum("sd,sdt->st", mean_x, coef)
        self.coef_ = coef
        self.intercept_ = shifted_intercept + st.shift_y - torch.einsum("sd,sdt->st", st.shift_x, coef)
        self.alpha_ = alpha_table[best]
        self.cv_r2_path_ = 1 - sse_path / sst
        self.cv_r2_ = self.cv_r2_path_.gather(0, best[None]).squeeze(0)
        self.n_samples_ = int(n_all)
        self.n_features_in_ = int(coef.shape[1])
        return self

    def predict(self, X: Any) -> Tensor:
        """Predictions ``[n, site, t]`` of every site's probe on ``X [n, site, d]``."""
        check_fitted(self, "coef_")
        X = torch.as_tensor(X)
        if X.ndim != 3 or tuple(X.shape[1:]) != tuple(self.coef_.shape[:2]):
            raise ValueError(f"X must have shape [n, {self.coef_.shape[0]}, {self.coef_.shape[1]}], got {list(X.shape)}")
        return torch.einsum("nsd,sdt->nst", X.to(self.coef_), self.coef_) + self.intercept_

    def score(self, X: Any, y: Any) -> Tensor:
        """R² of every site's probe on new data: ``[site, t]``."""
        check_fitted(self, "coef_")
        X, y, _ = self._check_batch(X, y, torch.zeros(torch.as_tensor(X).shape[0], dtype=torch.long))
        pred = self.predict(X)
        y = y.to(pred)
        return 1 - ((y - pred) ** 2).sum(dim=0) / ((y - y.mean(dim=0)) ** 2).sum(dim=0)


class LinearProbe(MultiOutputMixin, RegressorMixin, BaseEstimator):
    """One ridge probe (scikit-learn style, numpy in and out), α chosen by grouped K-fold CV.

    ``fit(X [n, d], y [n] or [n, t], groups=None)``; fitted ``coef_`` (``[d]`` or ``[t, d]``, as
    scikit-learn's ``Ridge``), ``intercept_``, ``alpha_``, ``cv_r2_``.
    """

    def __init__(self, alphas: Sequence[float] = DEFAULT_ALPHAS, *, n_folds: int = 5, seed: int = 0, device: str | None = None) -> None:
        self.alphas = alphas  # ridge penalties to choose from
        self.n_folds = n_folds  # K of the grouped K-fold cross-validation
        self.seed = seed  # seed of the fold assignment
        self.device = device  # where to solve

    def fit(self, X: Any, y: Any, groups: Any = None) -> LinearProbe:
        """Fit the probe; samples of one group (trajectory) never straddle a train/test split."""
        check_target_given(self, y)
        X = validate_table(self, X, reset=True)
        n_folds = check_positive_int("n_folds", self.n_folds)
        if X.shape[0] < n_folds:
            raise ValueError(f"X needs at least n_folds={n_folds} samples for cross-validation, got n_samples={X.shape[0]}")
        y = as_float_array("y", y)
        single = y.ndim == 1
        sweep = RidgeProbeSweep(self.alphas, n_folds=n_folds, seed=self.seed, dtype="float64", device=self.device)
        X, y = (np.array(a) if not a.flags.writeable else a for a in (X, y))  # torch wants writable memory (a read-only memmap is not)
        sweep.fit(torch.from_numpy(X)[:, None], torch.from_numpy(y.reshape(len(y), -1) if y.ndim else y), groups)
        coef = sweep.coef_[0].T.cpu().numpy()  # [t, d]
        self.coef_ = coef[0] if single else coef
        intercept = sweep.intercept_[0].cpu().numpy()
        self.intercept_ = float(intercept[0]) if single else intercept
        alpha = sweep.alpha_[0].cpu().numpy()
        self.alpha_ = float(alpha[0]) if single else alpha
        cv = sweep.cv_r2_[0].cpu().numpy()
        self.cv_r2_ = float(cv[0]) if single else cv
        return self

    def predict(self, X: Any) -> np.ndarray:
        """Predicted targets, ``[n]`` or ``[n, t]``."""
        check_is_fitted(self)
        X = validate_table(self, X, reset=False)
        return X @ np.asarray(self.coef_).T + self.intercept_


# ---------------------------------------------------------------------------------------------
# Probing a model: every hook × position × target, with a random-init and a shuffled-label control


@dataclass
class ProbeResult:
    """Held-out R² of ridge probes for every hook × position × target, with controls.

    Arrays are ``[hook, position, target]``. ``control_r2`` is the identical probe on a randomly
    initialised copy of the model, ``shuffled_r2`` the probe on labels shuffled across trajectories;
    ``selectivity = r2 − control_r2`` (or ``r2 − shuffled_r2`` when there is no model control).
    """

    hooks: list[str]
    positions: list[int]
    targets: list[str]
    r2: np.ndarray
    alpha: np.ndarray
    control_r2: np.ndarray | None
    shuffled_r2: np.ndarray | None
    folds: Tensor  # fold of every trajectory
    n_trajectories: int

    @property
    def selectivity(self) -> np.ndarray:
        """R² above the control: the random-init model if probed, else the shuffled labels."""
        control = self.control_r2 if self.control_r2 is not None else self.shuffled_r2
        if control is None:
            raise ValueError("no control was run, so selectivity is undefined")
        return self.r2 - control

    def target_index(self, target: str) -> int:
        """Index of ``target`` along the last axis."""
        if target not in self.targets:
            raise ValueError(f"target must be one of {self.targets}, got {target!r}")
        return self.targets.index(target)

    def best_site(self, target: str) -> dict[str, Any]:
        """The hook and position where ``target`` decodes best, with its R² and controls there."""
        t = self.target_index(target)
        h, p = np.unravel_index(int(np.argmax(self.r2[:, :, t])), self.r2.shape[:2])
        out = {"target": target, "hook": self.hooks[h], "position": self.positions[p], "r2": float(self.r2[h, p, t])}
        if self.control_r2 is not None:
            out["control_r2"] = float(self.control_r2[h, p, t])
        if self.shuffled_r2 is not None:
            out["shuffled_r2"] = float(self.shuffled_r2[h, p, t])
        if self.control_r2 is not None or self.shuffled_r2 is not None:
            out["selectivity"] = float(self.selectivity[h, p, t])
        return out

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary: arrays as nested lists and the best site per target."""
        out = {
            "hooks": self.hooks,
            "positions": self.positions,
            "targets": self.targets,
            "n_trajectories": self.n_trajectories,
            "r2": self.r2.tolist(),
            "alpha": self.alpha.tolist(),
            "best": {t: self.best_site(t) for t in self.targets},
        }
        if self.control_r2 is not None:
            out["control_r2"] = self.control_r2.tolist()
        if self.shuffled_r2 is not None:
            out["shuffled_r2"] = self.shuffled_r2.tolist()
        return out


def random_init_copy(model: Any, seed: int = 1) -> Any:
    """A freshly initialised model of the same architecture (config ``seed`` replaced), in eval mode
    on the same device. Needs a dataclass ``cfg`` with a ``seed`` field, as physlens models have."""
    cfg = getattr(model, "cfg", None)
    if not dataclasses.is_dataclass(cfg) or "seed" not in {f.name for f in dataclasses.fields(cfg)}:
        raise TypeError(f"cannot re-initialise {type(model).__name__}: it has no dataclass cfg with a seed; pass control_model explicitly")
    if getattr(cfg, "seed") == seed:
        raise ValueError(f"the control seed must differ from the model's seed ({seed}), or the control is the same network")
    copy = type(model)(dataclasses.replace(cfg, seed=seed))
    return copy.to(model_device(model)).eval()


def _chunks(
    data: Any, seq_len: int | None, labels: Mapping[str, Tensor] | None, batch_size: int
) -> tuple[Iterable[tuple[Tensor, dict[str, Tensor]]], int | None, dict[str, Tensor] | None]:
    if isinstance(data, (TrajectoryBatch, Tensor)):
        inputs = as_inputs(data, seq_len)
        all_labels = dict(labels) if labels is not None else (data.labels() if isinstance(data, TrajectoryBatch) else None)
        if not all_labels:
            raise ValueError("labels are required when data is a tensor (pass labels={name: [n] or [n, step]})")
        n = inputs.shape[0]
        select_labels(all_labels, n, None if inputs.ndim < 2 else [0])  # checks lengths up front

        def generate() -> Iterable[tuple[Tensor, dict[str, Tensor]]]:
            for start in range(0, n, batch_size):
                rows = slice(start, start + batch_size)
                yield inputs[rows], {k: torch.as_tensor(v)[rows] for k, v in all_labels.items()}

        return generate(), n, {k: torch.as_tensor(v) for k, v in all_labels.items()}
    if labels is not None:
        raise ValueError("labels can only be given with tensor data; streamed Trajectories carry their own")

    def stream() -> Iterable[tuple[Tensor, dict[str, Tensor]]]:
        for chunk in data:
            if not isinstance(chunk, TrajectoryBatch):
                raise TypeError(f"streamed data must yield trajectory batches (physlens.systems.TrajectoryBatch), got {type(chunk).__name__}")
            yield as_inputs(chunk, seq_len), chunk.labels()

    return stream(), None, None


def probe_sweep(
    model: Any,
    data: TrajectoryBatch | Tensor | Iterable[TrajectoryBatch],
    hooks: str | Sequence[str],
    *,
    targets: Sequence[str] = DEFAULT_TARGETS,
    positions: Positions = "all",
    seq_len: int | None = None,
    labels: Mapping[str, Tensor] | None = None,
    control_model: Any = "random_init",
    control_seed: int = 12345,
    shuffled_control: bool = True,
    alphas: Sequence[float] = DEFAULT_ALPHAS,
    n_folds: int = 5,
    folds: Any = None,
    batch_size: int = 1024,
    seed: int = 0,
    device: str | torch.device | None = None,
    dtype: str = "float64",
    progress: bool = False,
) -> ProbeResult:
    """Probe every ``hook`` × ``position`` for every ``target`` at once, streaming the activations.

    Per-fold sufficient statistics are accumulated while the data flow through the model (and through
    the control model, and against shuffled labels), so memory does not grow with the number of
    trajectories. ``data``: a trajectory batch (:class:`~physlens.systems.TrajectoryBatch`), an input tensor with ``labels``,
    or an iterable of trajectory-batch chunks (e.g. ``system.batches(...)`` sliced), in which case folds
    and the label shuffle are drawn within each chunk. ``control_model``: ``"random_init"`` (a copy
    re-initialised with ``control_seed``), a model, or None. Folds group by trajectory: every
    position of a trajectory lies in one fold.
    """
    hooks = check_hooks(model, hooks)
    targets = list(targets)
    if not targets:
        raise ValueError("targets must name at least one label")
    batch_size = check_positive_int("batch_size", batch_size)
    n_folds = check_positive_int("n_folds", n_folds)
    device = torch.device(device) if device is not None else model_device(model)
    if control_model == "random_init":
        control_model = random_init_copy(model, control_seed)
    if control_model is not None:
        check_hooks(control_model, hooks)
    generator = torch.Generator().manual_seed(check_nonnegative_int("seed", seed))
    chunks, n_total, all_labels = _chunks(data, seq_len, labels, batch_size)
    if n_total is not None:
        if n_total < n_folds:
            raise ValueError(f"need at least n_folds={n_folds} trajectories for cross-validation, got {n_total}")
        if folds is None:
            folds = _folds_from_permutation(n_total, n_folds, generator)
        folds = torch.as_tensor(folds).long()
        if folds.shape != (n_total,):
            raise ValueError(f"folds must be one fold per trajectory [{n_total}], got shape {list(folds.shape)}")
        shuffle = torch.randperm(n_total, generator=generator)
    elif folds is not None:
        raise ValueError("folds cannot be given for streamed data; they are drawn per chunk")
    in_dtype = model_dtype(model)
    sweeps: dict[str, dict[int, RidgeProbeSweep]] = {}  # "model"/"control" -> feature width -> sweep
    layout: dict[int, list[int]] = {}  # feature width -> indices of hooks with that width
    positions_resolved: list[int] | None = None
    seen = 0
    for inputs, chunk_labels in tqdm(chunks, desc="probe sweep", disable=not progress, leave=False):
        n = inputs.shape[0]
        if positions_resolved is None:
            positions_resolved = resolve_positions(positions, inputs.shape[1])
            if positions_resolved is None:
                raise ValueError("probe_sweep needs positions ('all', an int or a list); positions=None is for collect_activations")
            missing = [t for t in targets if t not in chunk_labels]
            if missing:
                raise ValueError(f"targets {missing} are not among the labels {sorted(chunk_labels)}")
            if all_labels is not None:
                _check_not_constant(_target_matrix(all_labels, targets, n_total, positions_resolved), targets, positions_resolved)
        y = _target_matrix(chunk_labels, targets, n, positions_resolved)
        if n_total is not None:
            chunk_folds = folds[seen : seen + n]
            rows = shuffle[seen : seen + n]
            y_shuffled = _target_matrix({t: all_labels[t][rows] for t in targets}, targets, n, positions_resolved)
        else:
            if n < n_folds:
                raise ValueError(f"every streamed chunk needs at least n_folds={n_folds} trajectories, got {n}")
            chunk_folds = _folds_from_permutation(n, n_folds, generator)
            y_shuffled = y[torch.randperm(n, generator=generator)]
        seen += n
        y_all = torch.cat([y, y_shuffled], dim=-1) if shuffled_control else y
        x_in = inputs.to(device=device, dtype=in_dtype)
        for role, net in (("model", model), ("control", control_model)):
            if net is None:
                continue
            acts = capture_activations(net, x_in, hooks, positions_resolved)
            features = [acts[h].reshape(n, len(positions_resolved), -1) for h in hooks]
            if not layout:
                for i, f in enumerate(features):
                    layout.setdefault(f.shape[-1], []).append(i)
            for width, members in layout.items():
                X = torch.cat([features[i] for i in members], dim=1)  # [n, hooks·pos, d]
                y_sites = y_all.to(device)[:, None].expand(n, len(members), *y_all.shape[1:]).reshape(n, -1, y_all.shape[-1])
                sweep = sweeps.setdefault(role, {}).setdefault(width, RidgeProbeSweep(alphas, n_folds=n_folds, seed=seed, dtype=dtype, device=None))
                sweep.partial_fit(X, y_sites, chunk_folds.to(device))
    if positions_resolved is None:
        raise ValueError("data yielded no trajectories")
    n_t, n_h, n_p = len(targets), len(hooks), len(positions_resolved)

    def gather(role: str, attribute: str, part: slice) -> np.ndarray:
        out = np.zeros((n_h, n_p, n_t))
        for width, members in layout.items():
            sweep = sweeps[role][width]
            if not hasattr(sweep, "cv_r2_"):
                try:
                    sweep.finalize()
                except ValueError as error:
                    raise ValueError(f"{role} probes: {error} (targets, then shuffled copies: {targets})") from None
            values = getattr(sweep, attribute)[:, part].reshape(len(members), n_p, n_t).cpu().numpy()
            out[members] = values
        return out

    real = slice(0, n_t)
    return ProbeResult(
        hooks=hooks,
        positions=positions_resolved,
        targets=targets,
        r2=gather("model", "cv_r2_", real),
        alpha=gather("model", "alpha_", real),
        control_r2=gather("control", "cv_r2_", real) if control_model is not None else None,
        shuffled_r2=gather("model", "cv_r2_", slice(n_t, 2 * n_t)) if shuffled_control else None,
        folds=folds if n_total is not None else torch.empty(0, dtype=torch.long),
        n_trajectories=seen,
    )


def _check_not_constant(y: Tensor, targets: Sequence[str], positions: list[int]) -> None:
    spread = y.amax(dim=0) - y.amin(dim=0)  # [pos, t]
    for t, name in enumerate(targets):
        flat = (spread[:, t] <= 1e-12 * y[..., t].abs().amax().clamp_min(1e-300)).nonzero()
        if len(flat):
            where = "at every position" if len(flat) == len(positions) else f"at position {positions[int(flat[0])]}"
            raise ValueError(f"target {name!r} is constant across trajectories {where}: a probe for it is meaningless")


def _target_matrix(labels: Mapping[str, Tensor], targets: Sequence[str], n: int, positions: list[int]) -> Tensor:
    """Targets as ``[n, pos, t]``: per-trajectory labels repeated over positions, per-step labels indexed."""
    columns = []
    for name in targets:
        value = torch.as_tensor(labels[name])
        if value.shape[0] != n:
            raise ValueError(f"label {name!r} has {value.shape[0]} entries for {n} trajectories")
        if value.ndim == 1:
            value = value[:, None].expand(n, len(positions))
        elif value.ndim == 2:
            if value.shape[1] <= max(positions):
                raise ValueError(f"label {name!r} has {value.shape[1]} steps but position {max(positions)} was selected")
            value = value[:, positions]
        else:
            raise ValueError(f"label {name!r} must be [n] or [n, step], got shape {list(value.shape)}")
        if not value.is_floating_point() or not bool(torch.isfinite(value).all()):
            raise ValueError(f"label {name!r} must hold finite floating-point values")
        columns.append(value.to(torch.float64))
    return torch.stack(columns, dim=-1)


__all__ = [
    "DEFAULT_ALPHAS",
    "DEFAULT_TARGETS",
    "LinearProbe",
    "ProbeResult",
    "ProbeStatistics",
    "RidgeProbeSweep",
    "grouped_folds",
    "probe_sweep",
    "random_init_copy",
    "ridge_solve",
]
