"""Input validation shared by the classifier, the selectors and the engine.

Every public entry point funnels its inputs through these functions, so a bad
array gets the same clear message wherever it is passed.
"""

import numbers

import numpy as np
import scipy.sparse as sp
import torch
from torch.utils.data import Dataset


def is_dataset(X):
    """Whether ``X`` is a torch ``Dataset`` (or a dataset-like view such as
    skorch's ``SliceDataset``) rather than an array or tensor."""
    return not isinstance(X, (np.ndarray, torch.Tensor)) and (
        isinstance(X, Dataset)
        or (hasattr(X, "__getitem__") and hasattr(X, "__len__") and hasattr(X, "dataset"))
    )


def check_X(X, *, name="X", allow_dataset=True, min_samples=1):
    """Validate network input and convert arrays to contiguous float32.

    Parameters
    ----------
    X : array-like, torch.Tensor, pandas object or torch Dataset
        Images of shape ``(N, C, H, W)`` (float, or uint8 which is scaled to
        ``[0, 1]``), 2-D feature arrays for MLP modules, or any array with at
        least two dimensions whose first axis indexes samples. A torch
        ``Dataset`` (or skorch ``SliceDataset``) is passed through unchanged.
    name : str, default="X"
        Name used in error messages.
    allow_dataset : bool, default=True
        Whether a torch ``Dataset`` is accepted.
    min_samples : int, default=1
        Fewest samples accepted.

    Returns
    -------
    X : ndarray of float32 or Dataset
        C-contiguous float32 copy (or view) of the input, or the dataset.

    Raises
    ------
    ValueError
        For empty input, fewer than two dimensions, NaN or infinite values,
        complex arrays.
    TypeError
        For sparse matrices, string arrays, object arrays holding anything but
        numbers, or an unsupported type.
    """
    if is_dataset(X):
        if not allow_dataset:
            raise TypeError(f"{name} must be an array here, got a {type(X).__name__}.")
        if len(X) < min_samples:
            raise ValueError(
                f"{name} has {len(X)} samples; at least {min_samples} required."
            )
        return X
    if sp.issparse(X):
        raise TypeError(
            f"Sparse input is not supported ({name}); convert it with {name}.toarray()."
        )
    if isinstance(X, torch.Tensor):
        X = X.detach().cpu().numpy()
    elif hasattr(X, "to_numpy") and hasattr(X, "shape"):  # pandas
        X = X.to_numpy()
    try:
        X = np.asarray(X)
    except Exception as exc:  # ragged lists and the like
        raise TypeError(f"{name} could not be converted to an array: {exc}") from exc
    if X.dtype.kind == "c":
        raise ValueError(f"Complex data not supported: {name} has dtype {X.dtype}.")
    if X.dtype == object:  # numbers stored as objects are fine
        try:
            X = X.astype(np.float64)
        except (TypeError, ValueError) as exc:
            raise TypeError(
                f"{name} has dtype object with non-numeric values ({exc}); skitl "
                "needs numeric arrays (float or uint8 images, or float features)."
            ) from exc
    if X.dtype.kind in "USVOcM":
        raise TypeError(
            f"{name} has dtype {X.dtype}; skitl needs numeric arrays "
            "(float or uint8 images, or float features)."
        )
    if X.ndim < 2:
        raise ValueError(
            f"{name} must have at least 2 dimensions (samples first), got an "
            f"array of shape {X.shape}. Reshape 1-D data with X.reshape(-1, 1)."
        )
    if X.shape[0] < min_samples:
        raise ValueError(
            f"{name} has {X.shape[0]} samples (shape {X.shape}); at least "
            f"{min_samples} required."
        )
    if X.ndim == 2 and X.shape[1] == 0:
        raise ValueError(
            f"{name} is empty: 0 feature(s) (shape={X.shape}) while a minimum of 1 "
            "is required."
        )
    if X.size == 0:
        raise ValueError(f"{name} is empty (shape {X.shape}).")
    if X.dtype == np.uint8:
        X = X.astype(np.float32) / np.float32(255.0)
    elif X.dtype == np.bool_ or X.dtype.kind in "iu":
        X = X.astype(np.float32)
    elif X.dtype != np.float32:
        X = X.astype(np.float32)
    if not np.isfinite(X).all():
        n_nan = int(np.isnan(X).sum())
        n_inf = int(np.isinf(X).sum())
        raise ValueError(
            f"{name} contains {n_nan} NaN and {n_inf} infinite values; "
            "clean or impute them first."
        )
    return np.ascontiguousarray(X)


def check_y(y, *, name="y", n_samples=None):
    """Validate a label vector.

    Parameters
    ----------
    y : array-like of shape (n_samples,)
        Class labels of any hashable type (ints, strings, ...).
    name : str, default="y"
        Name used in error messages.
    n_samples : int, optional
        Expected length (the number of samples in X).

    Returns
    -------
    y : ndarray of shape (n_samples,)
    """
    if isinstance(y, torch.Tensor):
        y = y.detach().cpu().numpy()
    elif hasattr(y, "to_numpy"):
        y = y.to_numpy()
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y.ravel()
    if y.ndim != 1:
        raise ValueError(
            f"{name} must be 1-D (one label per sample), got shape {y.shape}."
        )
    if y.shape[0] == 0:
        raise ValueError(f"{name} is empty.")
    if y.dtype.kind == "f" and not np.isfinite(y).all():
        raise ValueError(f"{name} contains NaN or infinite labels.")
    if y.dtype == object:
        if any(v is None for v in y):
            raise ValueError(f"{name} contains None labels.")
    if n_samples is not None and y.shape[0] != n_samples:
        raise ValueError(
            f"X and {name} have inconsistent lengths: {n_samples} samples in X "
            f"but {y.shape[0]} labels in {name}."
        )
    return y


def check_Xy(X, y, *, min_classes=2):
    """Validate a training pair: X as in :func:`check_X`, y as in :func:`check_y`.

    Parameters
    ----------
    X : array-like or Dataset
    y : array-like of shape (n_samples,)
    min_classes : int, default=2
        Fewest distinct classes accepted; classification needs two.

    Returns
    -------
    X, y
    """
    X = check_X(X)
    y = check_y(y, n_samples=len(X))
    n_classes = len(np.unique(y))
    if n_classes < min_classes:
        raise ValueError(
            f"y has {n_classes} class; at least {min_classes} classes are needed "
            "to train a classifier."
        )
    return X, y


def check_fraction_or_int(value, name, *, n=None, allow_none=True):
    """Resolve an int-or-fraction parameter (like ``max_remove``) to a count.

    Parameters
    ----------
    value : int, float in [0, 1) or None
    name : str
    n : int, optional
        Total count a fraction refers to.
    allow_none : bool, default=True

    Returns
    -------
    count : int or None
    """
    if value is None:
        if allow_none:
            return None
        raise ValueError(f"{name} must not be None.")
    if isinstance(value, bool):
        raise TypeError(f"{name} must be an int or a float, got a bool.")
    if isinstance(value, numbers.Integral):
        if value < 0:
            raise ValueError(f"{name} must be >= 0, got {value}.")
        return int(value) if n is None else min(int(value), n)
    if isinstance(value, numbers.Real):
        if not 0.0 <= value < 1.0:
            raise ValueError(f"{name} as a fraction must be in [0, 1), got {value}.")
        return None if n is None else int(np.floor(value * n))
    raise TypeError(f"{name} must be an int, a float or None, got {value!r}.")
