"""The fit plan: what a selector's ``fit`` will do, decided once at its top.

A :class:`FitPlan` is made from the selector's parameters and the shape of
the data (which samples are target, which classes they hold) before any
network is built or any forward pass runs; every check that relates
parameters to each other or to the data happens while it is made. The plan
has two halves:

- the *scoring* half -- everything that changes the scores (the parameters
  a selector lists in ``_scoring_params``, the mode, whether held-out folds
  for ``max_remove="auto"`` are computed): the key of the score cache, an
  allow-list, so a cached result always matches what the rule needs;
- the *rule* half -- ``threshold``, ``max_remove``, ``remove_from`` -- applied
  to the scores after they are computed (or read from the cache).
"""

import dataclasses
import warnings

import numpy as np

from ..influence._api import resolve_mode


@dataclasses.dataclass(frozen=True, eq=False)
class FitPlan:
    """What one ``fit`` of a selector does.

    Attributes
    ----------
    mode : str
        Where the validation loss comes from: ``"validation_set"`` (a given
        ``X_val``), ``"cross_fit"`` (the pool), ``"target_cross_fit"``
        (the target samples of the pool, cross-fitted) or
        ``"target_whole"`` (every target sample against a head fitted on
        the others).
    target : ndarray of bool or None
        The target samples of the pool (``sample_domain < 0``).
    auto : bool
        Whether the removal count is decided by the target
        (``max_remove="auto"``).
    scoring : dict
        The scoring half: parameter values and derived settings that change
        the scores; the cache key.
    """

    mode: str
    target: np.ndarray
    auto: bool
    scoring: dict

    def cache_key(self):
        """The scoring half as a sorted tuple (what the score cache hashes)."""
        return tuple(sorted(self.scoring.items()))


def make_plan(selector, y, y_val, target, **derived):
    """The plan of one fit of ``selector``.

    Parameters
    ----------
    selector : BaseSelector
    y : ndarray of int
        Encoded training labels.
    y_val : ndarray of int or None
        Encoded labels of a given validation set.
    target : ndarray of bool or None
        Target samples of the pool.
    **derived
        Settings the selector derived from its parameters (added to the
        scoring half).

    Returns
    -------
    plan : FitPlan
    """
    mode = resolve_mode(y_val is not None, target,
                        getattr(selector, "target_validation", "cross_fit"))
    scoring = {"selector": type(selector).__qualname__, "mode": mode}
    for name in selector._scoring_params:
        scoring[name] = getattr(selector, name)
    scoring.update(derived)
    auto = isinstance(getattr(selector, "max_remove", None), str)
    return FitPlan(mode=mode, target=target, auto=auto, scoring=scoring)


def warn_small_folds(y, cv, classes, target=None, what="cross-fitting"):
    """Warn when a class has fewer than ``cv`` samples to split.

    The folds are then adapted (see :func:`skitl.influence._crossfit.make_folds`)
    instead of refused: a small target set (2-3 samples per class) still works.
    """
    split = y if target is None else y[target]
    counts = np.bincount(split, minlength=len(classes))
    present = np.flatnonzero(counts)
    smallest = present[np.argmin(counts[present])]
    if counts[smallest] < cv:
        where = "" if target is None else " target"
        folds = (f"{counts[smallest]} stratified folds" if counts[smallest] >= 2
                 else "unstratified folds")
        warnings.warn(
            f"Class {classes.tolist()[smallest]!r} has {counts[smallest]}{where} "
            f"sample(s), fewer than cv={cv}: {what} uses {folds}.",
            UserWarning, stacklevel=4)


def check_target_classes(y, target, classes):
    """Raise when a class has no target sample: the target cannot judge it."""
    missing = np.setdiff1d(np.unique(y), np.unique(y[target]))
    if len(missing):
        raise ValueError(
            f"Class(es) {classes[missing].tolist()} have no target sample "
            "(sample_domain < 0), so the target cannot judge their samples; mark "
            "target samples of every class, or pass X_val, y_val covering them.")
