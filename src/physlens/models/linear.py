"""The closed-form linear autoregressive model: the next state as a linear function of the last T states.

It is the seed's baseline X_{T+1} = Σ_t β_t X_t + c, solved by least squares (an SVD of the centred
design matrix, never SGD), and the building block of linear surrogates of trained networks.
"""

from __future__ import annotations

from typing import Any

import torch
from jaxtyping import Float
from sklearn.base import BaseEstimator
from sklearn.utils import Tags
from torch import Tensor

from physlens._estimators import check_fitted
from physlens._validation import check_finite, check_positive_int, resolve_dtype


def _as_tensor(name: str, value: Any, dtype: torch.dtype, device: Any) -> Tensor:
    tensor = torch.as_tensor(value)
    if not tensor.is_floating_point():
        raise ValueError(f"{name} must hold floating-point values, got dtype {tensor.dtype}")
    check_finite(name, tensor)
    return tensor.to(dtype=dtype, device=device)


def sliding_windows(states: Float[Tensor, "traj step d"], window: int) -> tuple[Tensor, Tensor]:
    """Every run of ``window`` consecutive states and the state that follows it.

    Returns ``(windows [n, window, d], next_states [n, d])`` with ``n = traj · (step − window)``.
    """
    window = check_positive_int("window", window)
    if states.ndim != 3:
        raise ValueError(f"states must have shape [traj, step, d], got {list(states.shape)}")
    n_traj, n_steps, d = states.shape
    if n_steps <= window:
        raise ValueError(f"states need more than window={window} steps to form a target, got {n_steps}")
    windows = states.unfold(1, window, 1)[:, : n_steps - window]  # [traj, n_win, d, window]
    windows = windows.permute(0, 1, 3, 2).reshape(-1, window, d)
    targets = states[:, window:].reshape(-1, d)
    return windows, targets


class LinearAutoregressive(BaseEstimator):
    """Next state = Σ_{k} coef_[k]ᵀ · state_{t−window+1+k} + intercept_, fitted in closed form.

    ``fit`` solves the (optionally ridge-regularised) least-squares problem with an SVD of the centred
    design matrix, so rank-deficient windows (e.g. a single ω0, where every window is fixed by two
    numbers) give the minimum-norm solution instead of a noisy one. Calling the fitted model on
    ``[batch, pos, d]`` states predicts the state after every full window, so
    :func:`physlens.training.rollout` can roll it out like a transformer.
    """

    def __init__(self, window: int = 1, *, alpha: float = 0.0, rcond: float | None = None, dtype: str = "float64", device: str | None = None) -> None:
        self.window = window  # how many past states the prediction reads
        self.alpha = alpha  # ridge penalty on the coefficients (0: plain least squares)
        self.rcond = rcond  # singular values below rcond · the largest count as zero (None: eps · max(n, features), as numpy)
        self.dtype = dtype  # dtype of the solve and the fitted coefficients
        self.device = device  # where to solve; None: where the data lives

    def __sklearn_tags__(self) -> Tags:
        # X is trajectories [traj, step, d] or windows [n, window, d], so scikit-learn's checks (which
        # fit 2-D tables) do not apply; y is optional, as fit on trajectories takes the next states
        tags = super().__sklearn_tags__()
        tags.input_tags.two_d_array = False
        tags.input_tags.three_d_array = True
        tags.target_tags.required = False
        return tags

    def fit(self, X: Any, y: Any = None) -> LinearAutoregressive:
        """Fit on trajectories ``X [traj, step, d]`` (``y`` None: every window → next state), or on
        explicit windows ``X [n, window, d]`` with targets ``y [n, d_out]``."""
        window = check_positive_int("window", self.window)
        if float(self.alpha) < 0:
            raise ValueError(f"alpha must be >= 0, got {self.alpha!r}")
        dtype = resolve_dtype(self.dtype)
        device = self.device if self.device is not None else torch.as_tensor(X).device
        X = _as_tensor("X", X, dtype, device)
        if y is None:
            windows, targets = sliding_windows(X, window)
        else:
            if X.ndim != 3 or X.shape[1] != window:
                raise ValueError(f"X must have shape [n, window={window}, d] when y is given, got {list(X.shape)}")
            targets = _as_tensor("y", y, dtype, device)
            if targets.ndim != 2 or targets.shape[0] != X.shape[0]:
                raise ValueError(f"y must have shape [{X.shape[0]}, d_out] (one target per window), got {list(targets.shape)}")
            windows = X
        n, _, d_in = windows.shape
        if n < 2:
            raise ValueError(f"need at least 2 windows to fit, got {n}")
        design = windows.reshape(n, window * d_in)
        x_mean, y_mean = design.mean(dim=0), targets.mean(dim=0)
        u, s, vh = torch.linalg.svd(design - x_mean, full_matrices=False)
        rcond = torch.finfo(dtype).eps * max(design.shape) if self.rcond is None else float(self.rcond)
        keep = s > rcond * s.max().clamp_min(torch.finfo(dtype).tiny)
        gain = torch.where(keep, s / (s**2 + float(self.alpha)), torch.zeros_like(s))
        coef = vh.T @ (gain[:, None] * (u.T @ (targets - y_mean)))  # [window·d_in, d_out]
        self.coef_ = coef.reshape(window, d_in, -1)
        self.intercept_ = y_mean - x_mean @ coef
        self.rank_ = int(keep.sum())
        self.n_features_in_ = d_in
        return self

    def _check_fitted(self) -> None:
        check_fitted(self, "coef_")

    def predict(self, X: Any) -> Tensor:
        """The next state after each window ``X [n, window, d]`` → ``[n, d_out]``."""
        self._check_fitted()
        X = torch.as_tensor(X)
        if X.ndim != 3 or tuple(X.shape[1:]) != (self.window, self.n_features_in_):
            raise ValueError(f"X must have shape [n, {self.window}, {self.n_features_in_}], got {list(X.shape)}")
        out = X.to(self.coef_).reshape(X.shape[0], -1) @ self.coef_.reshape(-1, self.coef_.shape[-1]) + self.intercept_
        return out.to(X.dtype) if X.is_floating_point() else out

    def __call__(self, states: Float[Tensor, "batch pos d"]) -> Float[Tensor, "batch n_windows d"]:
        """Predict the state after every full window of ``states`` (``pos − window + 1`` predictions),
        so the last one continues the sequence as a transformer's last position does."""
        self._check_fitted()
        if states.ndim != 3 or states.shape[1] < self.window:
            raise ValueError(f"states must have shape [batch, pos >= {self.window}, d], got {list(states.shape)}")
        windows = states.unfold(1, self.window, 1).permute(0, 1, 3, 2)  # [batch, n_win, window, d]
        batch, n_win = windows.shape[:2]
        out = self.predict(windows.reshape(batch * n_win, self.window, -1))
        return out.reshape(batch, n_win, -1)

    def spectral_radius(self) -> float:
        """Largest |eigenvalue| of the fitted map's own dynamics: the companion matrix that shifts a
        window of states by one step (the intercept leaves it unchanged). Below 1 a rollout settles; above
        1 some combination of states grows by that factor every step, whatever the data visited. Needs
        as many outputs as inputs per state."""
        self._check_fitted()
        window, d_in, d_out = self.coef_.shape
        if d_in != d_out:
            raise ValueError(f"the spectral radius needs a map from states to states; this one maps {d_in} to {d_out} numbers")
        size = window * d_in
        companion = torch.zeros(size, size, dtype=torch.float64)
        companion[: size - d_in, d_in:] = torch.eye(size - d_in, dtype=torch.float64)
        companion[size - d_in :, :] = self.coef_.detach().to(device="cpu", dtype=torch.float64).reshape(size, d_out).T
        return float(torch.linalg.eigvals(companion).abs().max())

    def score(self, X: Any, y: Any = None) -> float:
        """R² (pooled over output components) on trajectories, or on windows ``X`` with targets ``y``."""
        self._check_fitted()
        X = torch.as_tensor(X)
        windows, targets = sliding_windows(X, self.window) if y is None else (X, torch.as_tensor(y))
        pred = self.predict(windows).to(self.coef_)
        targets = targets.to(self.coef_)
        residual = ((targets - pred) ** 2).sum()
        total = ((targets - targets.mean(dim=0)) ** 2).sum()
        return float(1 - residual / total)


__all__ = ["LinearAutoregressive", "sliding_windows"]
