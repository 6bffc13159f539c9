"""Where the selectors get their features: the pretrained network, or X itself.

Also the two things every feature-based selector shares: the folds a
cross-fitted score is computed on, and the score cache (``memory``).
"""

import hashlib

import numpy as np
import torch
from sklearn.model_selection import KFold, StratifiedKFold
from sklearn.utils.validation import check_memory

from .._network import replace_head
from ..influence import extract_features
from ..utils import resolve_device


def pretrained_network(estimator):
    """Ask the estimator for its own copy of its *pretrained* network.

    Parameters
    ----------
    estimator : TransferClassifier or None
        Builds and seeds the network exactly as its ``fit`` does (its
        ``module``, ``weights``, ``head`` and ``random_state``). The selector
        never fine-tunes the backbone first: a network fine-tuned on noisy
        labels has memorised them.

    Returns
    -------
    net : torch.nn.Module or None
    head_name : str or None
    """
    if estimator is None:
        return None, None
    build = getattr(estimator, "_pretrained_network", None)
    if not callable(build):
        raise TypeError(
            "estimator must be a TransferClassifier (an object that builds its "
            f"pretrained network); got a {type(estimator).__name__}."
        )
    return build()


def compute_features(net, head_name, X, *, batch_size, device, verbose=0, out=None):
    """Head features of ``X``: the input of the head under ``net``, or X itself.

    With no network, X is taken as the features (flattened), so a selector
    without an estimator works on any numeric table, as multinomial logistic
    regression influence.

    Parameters
    ----------
    out : str, optional
        A directory: the features are written there as a float32 memmap
        (see :func:`skitl.influence.extract_features`) instead of memory.

    Returns
    -------
    F : ndarray or numpy.memmap of shape (n_samples, n_features)
    """
    if net is None:
        if not isinstance(X, np.ndarray):
            raise TypeError(
                "A selector without an estimator scores X as features and needs an "
                f"array; got a {type(X).__name__}. Pass estimator=TransferClassifier(...) "
                "to score a Dataset through a network."
            )
        return X.reshape(len(X), -1)
    return extract_features(
        net,
        X,
        layer=head_name,
        batch_size=batch_size,
        device=resolve_device(device),
        verbose=verbose,
        out=out,
    )


def install_head(net, head_name, W, b):
    """Put a fitted (W, b) head for the target classes into ``net`` (skitl's copy)."""
    layer = replace_head(net, head_name, W.shape[0])
    with torch.no_grad():
        layer.weight.copy_(torch.as_tensor(W, dtype=layer.weight.dtype))
        if layer.bias is not None:
            layer.bias.copy_(torch.as_tensor(b, dtype=layer.bias.dtype))
    return net


def cross_fit_folds(y, cv, random_state, is_target=None):
    """The ``(train_idx, val_idx)`` folds of cross-fitting.

    Without ``is_target``: stratified folds over all samples. With it: the
    folds run over the target samples only; each fold's training part is
    everything else (all auxiliary samples and the other target folds).

    Parameters
    ----------
    y : ndarray of int
    cv : int
    random_state : int, RandomState instance or None
    is_target : ndarray of bool, optional

    Returns
    -------
    folds : list of (ndarray, ndarray)
    """
    n = len(y)
    pool = np.arange(n) if is_target is None else np.flatnonzero(is_target)
    skf = StratifiedKFold(n_splits=cv, shuffle=True, random_state=random_state)
    folds = []
    for _, va in skf.split(np.zeros(len(pool)), y[pool]):
        val = pool[va]
        train = np.setdiff1d(np.arange(n), val, assume_unique=True)
        folds.append((train, val))
    return folds


def val_folds(y_val, cv, random_state):
    """Folds over a user-given validation set (stratified when every class allows).

    Returns
    -------
    folds : list of (ndarray, ndarray)
        ``(rest_idx, fold_idx)`` into the validation set.
    """
    counts = np.bincount(y_val)
    k = int(min(cv, len(y_val)))
    if counts[counts > 0].min() >= k:
        splitter = StratifiedKFold(n_splits=k, shuffle=True, random_state=random_state)
        return list(splitter.split(np.zeros(len(y_val)), y_val))
    splitter = KFold(n_splits=k, shuffle=True, random_state=random_state)
    return list(splitter.split(np.zeros(len(y_val))))


# -- the score cache ----------------------------------------------------------


def network_fingerprint(net, head_name):
    """A hash of a network's class, structure, head name and every tensor.

    Two networks with the same fingerprint compute the same features, so a
    cached score can never belong to other weights.
    """
    if net is None:
        return None
    h = hashlib.sha256()
    h.update(f"{type(net).__module__}.{type(net).__qualname__}|{net!r}|{head_name}".encode())
    for name, tensor in net.state_dict().items():
        h.update(name.encode())
        h.update(str(tuple(tensor.shape)).encode() + str(tensor.dtype).encode())
        h.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()


def _run(selector, net, head_name, key, X, y, X_val, y_val, is_target):
    # ``key`` (class, score parameters, network fingerprint) and the data are
    # what joblib hashes; the selector and the network are covered by ``key``.
    return selector._score(net, head_name, X, y, X_val, y_val, is_target)


#: Parameters that never change a selector's scores: the removal rule and the
#: plumbing. Everything else is part of the cache key.
NOT_IN_KEY = frozenset({
    "threshold", "max_remove", "remove_from", "memory", "verbose", "batch_size",
    "device", "estimator", "feature_dir",
})


def cached_scores(selector, net, head_name, X, y, X_val, y_val, is_target):
    """Run ``selector._score`` through ``selector.memory`` (a joblib cache).

    Keyed by the selector's class, every parameter that changes the scores,
    the network's fingerprint, and the data (``X``, ``y``, ``X_val``,
    ``y_val``, the target mask): not by the removal rule (``threshold``,
    ``max_remove``, ``remove_from``), so a grid over the rule scores once.
    """
    memory = check_memory(selector.memory)
    params = {
        k: v for k, v in selector.get_params(deep=False).items() if k not in NOT_IN_KEY
    }
    key = (type(selector).__qualname__, params, network_fingerprint(net, head_name))
    func = memory.cache(_run, ignore=["selector", "net", "head_name"])
    return func(selector, net, head_name, key, X, y, X_val, y_val, is_target)
