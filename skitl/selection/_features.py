"""Where the selectors get their features, and the score cache (``memory``).

The features come from the pretrained network the selector's estimator
builds (or are X itself without an estimator); the cache is keyed by the
scoring half of the fit plan, the network's fingerprint and the data.
"""

import hashlib

import numpy as np
import torch
from sklearn.utils.validation import check_memory

from ..influence import _features as engine_features
from ..utils import is_out_of_core, resolve_device


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
    without an estimator works on any numeric table.

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
        if not (isinstance(X, np.ndarray) or is_out_of_core(X)):
            raise TypeError(
                "A selector without an estimator scores X as features and needs an "
                f"array; got a {type(X).__name__}. Pass estimator=TransferClassifier(...) "
                "to score a Dataset through a network."
            )
        return X if X.ndim == 2 else X.reshape(len(X), -1)
    return engine_features.extract_features(
        net, X, layer=head_name, batch_size=batch_size, device=resolve_device(device),
        verbose=verbose, out=out)


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


def _run(selector, plan, net, head_name, key, X, y, X_val, y_val, target):
    # ``key`` (the plan's scoring half and the network's fingerprint) and the
    # data are what joblib hashes; selector, plan and network are covered by it.
    return selector._score(plan, net, head_name, X, y, X_val, y_val)


def cached_scores(selector, plan, net, head_name, X, y, X_val, y_val):
    """Run ``selector._score`` through ``selector.memory`` (a joblib cache).

    Keyed by the scoring half of the plan (an allow-list of what changes the
    scores, including whether the held-out folds of ``max_remove="auto"``
    were computed), the network's fingerprint, and the data (``X``, ``y``,
    ``X_val``, ``y_val``, the target mask): not by the removal rule, so a
    grid over the rule scores once, and a cached result always carries what
    every rule of that key needs.
    """
    memory = check_memory(selector.memory)
    key = (plan.cache_key(), network_fingerprint(net, head_name))
    func = memory.cache(_run, ignore=["selector", "plan", "net", "head_name"])
    return func(selector, plan, net, head_name, key, X, y, X_val, y_val, plan.target)
