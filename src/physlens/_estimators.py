"""What physlens's scikit-learn estimators share: input validation at the boundary and the error for
an estimator used before it was fitted.

Tables go through scikit-learn's ``validate_data`` (so ``n_features_in_``, sparse, complex and empty
input behave as in scikit-learn), with messages that name the argument and the shape expected.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import scipy.sparse
import torch
from sklearn.exceptions import DataConversionWarning
from sklearn.exceptions import NotFittedError as _SklearnNotFittedError
from sklearn.utils.validation import check_is_fitted, validate_data

from physlens._validation import check_finite


class NotFittedError(_SklearnNotFittedError, RuntimeError):
    """scikit-learn's ``NotFittedError`` (a ``ValueError`` and an ``AttributeError``) that is also a
    ``RuntimeError``: the classes that raise it raised ``RuntimeError`` before, and code that caught
    that keeps working."""


def check_fitted(estimator: Any, attributes: str | list[str] | None = None) -> None:
    """:func:`sklearn.utils.validation.check_is_fitted`, raising :class:`NotFittedError`."""
    try:
        check_is_fitted(estimator, attributes)
    except _SklearnNotFittedError as error:
        raise NotFittedError(str(error)) from None


def validate_table(estimator: Any, X: Any, *, reset: bool) -> np.ndarray:
    """``X`` as a finite float64 array ``[n_samples, n_features]``.

    ``reset=True`` (in ``fit``) records ``n_features_in_``; ``reset=False`` (in ``predict``) checks
    ``X`` against it. Tensors are moved to the CPU first; sparse input is refused.
    """
    if isinstance(X, torch.Tensor):
        X = X.detach().cpu().numpy()
    dtype = getattr(X, "dtype", None)
    if isinstance(dtype, np.dtype) and np.issubdtype(dtype, np.complexfloating):  # scikit-learn prints the whole array
        raise ValueError(f"X must hold real numbers; Complex data not supported (got {dtype} values)")
    if not scipy.sparse.issparse(X):
        try:
            shape = tuple(X.shape) if hasattr(X, "shape") else np.asarray(X).shape
        except (TypeError, ValueError):  # ragged nested lists and the like: let check_array say so
            shape = None
        if shape is not None and len(shape) != 2:
            raise ValueError(
                f"X must have shape [n_samples, n_features], got shape {list(shape)}. Reshape your data: "
                "X[:, None] for a single feature, X[None, :] for a single sample"
            )
        expected = getattr(estimator, "n_features_in_", None)
        if not reset and shape is not None and expected is not None and shape[1] != expected:
            name = type(estimator).__name__
            raise ValueError(
                f"X must have {expected} columns, as in fit, got {shape[1]} "
                f"(X has {shape[1]} features, but {name} is expecting {expected} features as input)"
            )
    X = validate_data(estimator, X, reset=reset, dtype=np.float64, ensure_all_finite=False)
    check_finite("X", X)
    return X


def as_float_array(name: str, values: Any) -> np.ndarray:
    """``values`` (an array-like or a tensor) as a float64 numpy array, or a ``ValueError`` naming ``name``
    (complex values included: converting them would drop their imaginary part)."""
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().numpy()
    try:
        given = np.asarray(values).dtype
    except (TypeError, ValueError):  # ragged and the like: the conversion below says so
        given = None
    if given is not None and np.issubdtype(given, np.complexfloating):  # numpy would drop the imaginary part, warning only
        raise ValueError(f"{name} must hold real numbers, got complex values (their imaginary part would be dropped)")
    try:
        return np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must hold numbers, got {type(values).__name__} that does not convert to float64") from None


def check_target_given(estimator: Any, y: Any) -> None:
    """Raise if a supervised estimator's ``fit`` was given no target."""
    if y is None:
        raise ValueError(f"{type(estimator).__name__} requires y to be passed, but the target y is None")


def warn_column_target(y: Any) -> None:
    """Warn, as scikit-learn does, when a single-output estimator is given ``y`` of shape ``[n, 1]``."""
    try:
        shape = tuple(y.shape) if hasattr(y, "shape") else np.asarray(y).shape
    except (TypeError, ValueError):  # ragged and the like: the target's own check says so
        return
    if len(shape) == 2 and shape[1] == 1:
        warnings.warn(
            "A column-vector y was passed when a 1d array was expected. Please change the shape of y to "
            "(n_samples,), for example using ravel().",
            DataConversionWarning,
            stacklevel=3,
        )


__all__ = ["NotFittedError", "as_float_array", "check_fitted", "check_target_given", "validate_table", "warn_column_target"]
