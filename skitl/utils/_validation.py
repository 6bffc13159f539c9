"""Input validation shared by the classifier, the selectors and the engine.

Arrays go through scikit-learn's own validation (``check_array`` /
``validate_data`` with ``allow_nd=True``), so a bad array gets scikit-learn's
message wherever it is passed; skitl only adds what networks need on top (a
C-contiguous float32 copy, uint8 images scaled to ``[0, 1]``) and the checks
a torch ``Dataset`` needs, which scikit-learn cannot inspect.
"""

import numbers

import numpy as np
import torch
from scipy.sparse import issparse
from sklearn.utils import check_array, column_or_1d
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_consistent_length, validate_data
from torch.utils.data import Dataset

from ._memmap import page_releaser


def is_dataset(X):
    """Whether ``X`` is a torch ``Dataset`` (or a dataset-like view such as
    skorch's ``SliceDataset``) rather than an array or tensor.

    Parameters
    ----------
    X : object
        Anything passed as ``X``.

    Returns
    -------
    bool
        True for a ``Dataset`` or dataset-like view.
    """
    return not isinstance(X, (np.ndarray, torch.Tensor)) and (
        isinstance(X, Dataset)
        or (hasattr(X, "__getitem__") and hasattr(X, "__len__") and hasattr(X, "dataset"))
    )


def _untorch(X):
    # check_array cannot read tensors that require grad or live on a GPU.
    if isinstance(X, torch.Tensor):
        return X.detach().cpu().numpy()
    return X


def _as_network_input(X, name):
    """float32, C-contiguous; uint8 images scaled to [0, 1]."""
    if X.dtype == np.uint8:
        X = X.astype(np.float32) / np.float32(255.0)
    elif X.dtype != np.float32:
        wide = X.dtype.kind == "f" and X.dtype.itemsize > 4
        X = X.astype(np.float32)
        # finite float64 beyond float32's range becomes inf on the cast
        if wide and not np.isfinite(X).all():
            raise ValueError(
                f"{name} holds values beyond the float32 range (|x| > 3.4e38); "
                "networks compute in float32, rescale the input."
            )
    return np.ascontiguousarray(X)


def _check_dataset(X, name, min_samples):
    if len(X) < min_samples:
        raise ValueError(f"{name} has {len(X)} samples; at least {min_samples} required.")
    return X


_ARRAY_CHECKS = dict(
    accept_sparse=False, allow_nd=True, dtype="numeric", ensure_all_finite=True,
)

#: Values read at a time when an out-of-core array is checked for NaN / inf.
_CHECK_ELEMS = 1 << 20


def is_out_of_core(X):
    """Whether ``X`` is an array that lives on disk and must stay there.

    A ``numpy.memmap``, or an array-like read by rows that is not an
    in-memory array (an ``h5py`` / ``zarr`` dataset): validation reads it in
    chunks instead of converting it, so that memory does not grow with its
    size.

    Parameters
    ----------
    X : object
        Anything passed as ``X``.

    Returns
    -------
    bool
    """
    if isinstance(X, np.memmap):
        return True
    if (isinstance(X, (np.ndarray, torch.Tensor)) or hasattr(X, "iloc") or is_dataset(X)
            or issparse(X)):
        return False
    return (hasattr(X, "shape") and hasattr(X, "dtype") and hasattr(X, "__getitem__")
            and hasattr(X, "__len__"))


def _check_out_of_core(X, name, min_samples):
    """scikit-learn's checks of a dense numeric array, chunk by chunk, without a copy."""
    shape = tuple(X.shape)
    if len(shape) < 2:
        raise ValueError(f"Expected 2D array, got {len(shape)}D array instead: {name} "
                         f"has shape {shape}.")
    if shape[0] < min_samples:
        raise ValueError(f"Found array with {shape[0]} sample(s) (shape={shape}) while a "
                         f"minimum of {min_samples} is required.")
    kind = np.dtype(X.dtype).kind
    if kind not in "fiub":
        raise ValueError(f"{name} must hold numbers, got dtype {X.dtype}.")
    if kind == "f":
        per_row = int(np.prod(shape[1:]))
        step = max(1, _CHECK_ELEMS // max(per_row, 1))
        # the check reads every row once; unmapping what it read keeps a large
        # memmap from counting in resident memory after validation
        release = page_releaser(X) if len(shape) == 2 else None
        for s in range(0, shape[0], step):
            block = np.asarray(X[s:s + step])
            if not np.isfinite(block).all():
                what = "NaN" if np.isnan(block).any() else "infinity"
                raise ValueError(f"Input {name} contains {what}.")
            if release is not None:
                release(s, min(s + step, shape[0]))
    return X


def check_X(X, *, name="X", allow_dataset=True, min_samples=1):
    """Validate network input and convert arrays to contiguous float32.

    Arrays are checked by :func:`sklearn.utils.check_array` (dense, numeric,
    finite, at least 2-D, ``allow_nd=True``); a torch ``Dataset`` (or skorch
    ``SliceDataset``) is passed through after a length check.

    Parameters
    ----------
    X : array-like, torch.Tensor, pandas object or torch Dataset
        Images of shape ``(N, C, H, W)`` (float, or uint8 which is scaled to
        ``[0, 1]``), 2-D feature arrays for MLP modules, or any array with at
        least two dimensions whose first axis indexes samples.
    name : str, default="X"
        Name used in error messages.
    allow_dataset : bool, default=True
        Whether a torch ``Dataset`` is accepted.
    min_samples : int, default=1
        Fewest samples accepted.

    Returns
    -------
    X : ndarray of float32, out-of-core array or Dataset
        C-contiguous float32 copy (or view) of the input, or the dataset. A
        ``numpy.memmap`` or an ``h5py`` / ``zarr`` dataset is checked chunk
        by chunk and returned as it is (see :func:`is_out_of_core`).

    Raises
    ------
    ValueError
        Empty input, one dimension, NaN or infinite values, complex or string
        data (scikit-learn's messages).
    TypeError
        Sparse matrices, or a Dataset where ``allow_dataset=False``.
    """
    if is_dataset(X):
        if not allow_dataset:
            raise TypeError(f"{name} must be an array here, got a {type(X).__name__}.")
        return _check_dataset(X, name, min_samples)
    if is_out_of_core(X):
        # checked chunk by chunk and returned as it is: rows are read (and
        # converted) only when they are used, so memory does not grow with n
        return _check_out_of_core(X, name, min_samples)
    X = check_array(
        _untorch(X), ensure_min_samples=min_samples, input_name=name, **_ARRAY_CHECKS
    )
    return _as_network_input(X, name)


def validate_X(estimator, X, *, reset, min_samples=1):
    """:func:`check_X` for an estimator: records or checks ``n_features_in_``.

    Arrays go through :func:`sklearn.utils.validation.validate_data`, which
    sets (``reset=True``) or checks ``n_features_in_`` (``X.shape[1]``: the
    number of features of 2-D input, the number of channels of images) and
    ``feature_names_in_``. For a ``Dataset``, ``n_features_in_`` is the first
    dimension of its first sample and any ``feature_names_in_`` of an earlier
    fit is removed.

    Parameters
    ----------
    estimator : BaseEstimator
        The estimator whose input is checked (``n_features_in_`` is set on it).
    X : array-like or Dataset
        The input.
    reset : bool
        True in ``fit``, False afterwards.
    min_samples : int, default=1
        Fewest samples accepted.

    Returns
    -------
    X : ndarray of float32 or Dataset
    """
    if is_dataset(X):
        X = _check_dataset(X, "X", min_samples)
        if reset:
            if hasattr(estimator, "feature_names_in_"):
                del estimator.feature_names_in_
            estimator.n_features_in_ = _dataset_n_features(X)
        return X
    if is_out_of_core(X):
        # the bookkeeping (n_features_in_) from one row, the checks by chunks
        validate_data(estimator, np.asarray(X[:1]), reset=reset, **_ARRAY_CHECKS)
        return _check_out_of_core(X, "X", min_samples)
    X = validate_data(
        estimator, _untorch(X), reset=reset, ensure_min_samples=min_samples,
        **_ARRAY_CHECKS,
    )
    return _as_network_input(X, "X")


def _dataset_n_features(X):
    item = X[0]
    x = item[0] if isinstance(item, (tuple, list)) else item
    shape = tuple(np.shape(x)) if not hasattr(x, "getbands") else (len(x.getbands()),)
    return int(shape[0]) if shape else 1


def check_y(y, *, name="y", n_samples=None, classification=True):
    """Validate a label vector with scikit-learn's checks.

    Parameters
    ----------
    y : array-like of shape (n_samples,)
        Class labels of any hashable type (ints, strings, ...); a column
        vector is raveled with a ``DataConversionWarning``.
    name : str, default="y"
        Name used in error messages.
    n_samples : int, optional
        Expected length (the number of samples in X).
    classification : bool, default=True
        Require class labels (not continuous or multi-output targets).

    Returns
    -------
    y : ndarray of shape (n_samples,)
    """
    y = column_or_1d(_untorch(y), warn=True, input_name=name)
    if y.shape[0] == 0:
        raise ValueError(f"{name} is empty.")
    if y.dtype == object and any(v is None for v in y):
        raise ValueError(f"{name} contains None labels.")
    if n_samples is not None and y.shape[0] != n_samples:
        raise ValueError(
            f"X and {name} have inconsistent lengths: {n_samples} samples in X "
            f"but {y.shape[0]} labels in {name}."
        )
    if classification:
        check_classification_targets(y)
    return y


def check_sample_domain(sample_domain, n_samples, *, require_auxiliary=True,
                        require_target=True):
    """Validate ``sample_domain`` (skada's convention) and return the target mask.

    Parameters
    ----------
    sample_domain : array-like of int of shape (n_samples,)
        One domain label per sample: negative for the target domain(s),
        positive for source / auxiliary domains; ``0`` is not a domain.
    n_samples : int
        Number of samples of the X it belongs to.
    require_auxiliary : bool, default=True
        Whether at least one auxiliary (positive) sample is required.
    require_target : bool, default=True
        Whether at least one target (negative) sample is required.

    Returns
    -------
    sample_domain : ndarray of int64
    is_target : ndarray of bool
        ``sample_domain < 0``.

    Raises
    ------
    ValueError
        Wrong length, non-integer values, a 0, or no target / no auxiliary
        sample.
    """
    sd = column_or_1d(_untorch(sample_domain), input_name="sample_domain")
    check_consistent_length(np.empty(n_samples), sd)
    if sd.dtype.kind == "f" and np.isfinite(sd).all() and np.all(sd == np.round(sd)):
        sd = sd.astype(np.int64)
    if sd.dtype.kind not in "iu":
        raise ValueError(
            "sample_domain must hold integers (negative = target, positive = "
            f"source / auxiliary), got dtype {sd.dtype}."
        )
    sd = sd.astype(np.int64)
    if (sd == 0).any():
        raise ValueError(
            "sample_domain contains 0; domains are negative (target) or positive "
            "(source / auxiliary)."
        )
    is_target = sd < 0
    if require_target and not is_target.any():
        raise ValueError(
            "sample_domain has no target sample (no negative value); mark the "
            "target-domain samples with a negative domain, e.g. -1."
        )
    if require_auxiliary and is_target.all():
        raise ValueError(
            "sample_domain marks every sample as target (all negative); mark the "
            "auxiliary samples with a positive domain, e.g. 1."
        )
    return sd, is_target


def resolve_count(value, n):
    """Resolve an int-or-fraction parameter (like ``max_remove``) to a count.

    The parameter's type and range are validated by the estimator's
    ``_parameter_constraints``; this only turns a fraction into a count.

    Parameters
    ----------
    value : int, float in [0, 1) or None
        A count, a fraction of ``n``, or None (no count).
    n : int
        Total count a fraction refers to.

    Returns
    -------
    count : int or None
    """
    if value is None:
        return None
    if isinstance(value, numbers.Integral):
        return min(int(value), n)
    return int(np.floor(value * n))
