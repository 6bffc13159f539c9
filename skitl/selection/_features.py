"""Where the selectors get their features: the pretrained network, or X itself."""

import copy
from contextlib import nullcontext

import numpy as np
import torch
from sklearn.utils import check_random_state

from .._network import build_network, find_head
from ..influence import extract_features
from ..utils import resolve_device


def pretrained_network(estimator):
    """Build skitl's own copy of the estimator's *pretrained* network.

    Parameters
    ----------
    estimator : TransferClassifier or None
        Its ``module``, ``weights`` and ``head`` say which network to analyse.
        The selector never fine-tunes the backbone first: a network fine-tuned
        on noisy labels has memorised them.

    Returns
    -------
    net : torch.nn.Module or None
    head_name : str or None
    """
    if estimator is None:
        return None, None
    for attr in ("module", "weights", "head"):
        if not hasattr(estimator, attr):
            raise TypeError(
                "estimator must be a TransferClassifier (or expose module, weights "
                f"and head); {type(estimator).__name__} has no {attr!r}."
            )
    strategy = getattr(estimator, "strategy", "finetune")
    weights = None if strategy == "scratch" else estimator.weights
    with _seeded_like_classifier(estimator):
        net, head_name = build_network(estimator.module, weights, head=estimator.head)
    return net, find_head(net, head_name)


def _seeded_like_classifier(estimator):
    """Seed torch as TransferClassifier does before building its network.

    A factory or class builds randomly initialised layers; seeding them from
    the estimator's ``random_state`` (first of the classifier's five derived
    seeds) makes the selector repeatable and lets it analyse the very network
    the classifier then fine-tunes.
    """
    rs = getattr(estimator, "random_state", None)
    if rs is None:
        return nullcontext()
    rng = check_random_state(copy.deepcopy(rs))
    seed = int(rng.randint(0, 2**31 - 1, size=5)[0])
    return _fork_and_seed(seed)


class _fork_and_seed:
    def __init__(self, seed):
        self.seed = seed
        self._fork = torch.random.fork_rng(devices=[])

    def __enter__(self):
        self._fork.__enter__()
        torch.manual_seed(self.seed)

    def __exit__(self, *exc):
        return self._fork.__exit__(*exc)


def compute_features(net, head_name, X, *, batch_size, device, verbose=0):
    """Head features of ``X``: the input of the head under ``net``, or X itself.

    With no network, X is taken as the features (flattened), so a selector
    without an estimator works on any numeric table, as multinomial logistic
    regression influence.

    Returns
    -------
    F : ndarray of shape (n_samples, n_features)
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
    )


def install_head(net, head_name, W, b):
    """Put a fitted (W, b) head for the target classes into ``net`` (skitl's copy)."""
    from .._network import replace_head

    layer = replace_head(net, head_name, W.shape[0])
    with torch.no_grad():
        layer.weight.copy_(torch.as_tensor(W, dtype=layer.weight.dtype))
        if layer.bias is not None:
            layer.bias.copy_(torch.as_tensor(b, dtype=layer.bias.dtype))
    return net
