"""How many samples to remove, decided by the target: ``max_remove="auto"``.

First-order scores of single samples do not add up over a large removal, and
the sign rule (``scores < 0``) can remove most of a training pool. So the
count is chosen by what removal actually does to the target: for each
cross-fitting fold, the candidates are ordered by scores computed *without*
that fold, the head is refitted on the training part minus the first ``c``
of them for a grid of counts ``c``, and the fold's (weighted) target loss is
measured. The smallest count whose loss exceeds the best count's by no more
than one standard error (of the per-fold difference) is taken: the
one-standard-error rule, so no more is removed than the target supports. Everything runs on the cached
features: a few dozen exact head fits.
"""

from dataclasses import dataclass, field

import numpy as np

from ..influence import fit_head, predict_proba_head
from ._base import removal_mask


@dataclass
class EvalFold:
    """One fold on which a removal count is judged.

    Attributes
    ----------
    train_idx : ndarray of int
        Rows of the training features the head is fitted on in this fold.
    F_eval, y_eval : ndarray
        Held-out target features and labels.
    w_eval : ndarray or None
        Weights of the held-out samples (``val_trim``), None for equal.
    order_scores : ndarray of shape (n_train_total,)
        Scores computed without this fold, used to order the candidates.
    """

    train_idx: np.ndarray
    F_eval: np.ndarray
    y_eval: np.ndarray
    w_eval: np.ndarray = None
    order_scores: np.ndarray = field(default=None)


def _weighted_loss(F, y, W, b, w):
    proba = predict_proba_head(F, W, b)
    loss = -np.log(np.clip(proba[np.arange(len(y)), y], 1e-300, None))
    if w is None:
        return float(loss.mean())
    return float((w * loss).sum() / max(w.sum(), 1e-300))


def choose_removal_count(F, y, n_classes, candidates, folds, *, alpha, n_grid=11):
    """Pick the number of candidates to remove from the target loss of refitted heads.

    Parameters
    ----------
    F : ndarray of shape (n, d)
        Features of all training samples.
    y : ndarray of int of shape (n,)
    n_classes : int
    candidates : ndarray of bool of shape (n,)
        Samples the removal rule allows to remove.
    folds : list of EvalFold
    alpha : float
        L2 strength of the head, as in the scores.
    n_grid : int, default=11
        Counts tried: evenly spaced from 0 to the number of candidates.

    Returns
    -------
    count : int
        The chosen count.
    search : dict
        ``counts``, ``loss_mean`` (per count), ``loss_se_vs_best`` (standard
        error of each count's per-fold loss difference to the best count),
        ``best`` (the count of lowest mean loss) and ``chosen``.
    """
    n_cand = int(candidates.sum())
    counts = np.unique(np.round(np.linspace(0, n_cand, n_grid)).astype(int))
    losses = np.zeros((len(folds), len(counts)))
    for f, fold in enumerate(folds):
        tr = fold.train_idx
        Ftr, ytr = F[tr], y[tr]
        init = None
        for j, c in enumerate(counts):
            remove, _ = removal_mask(
                fold.order_scores[tr], ytr, candidates=candidates[tr], max_remove=c
            )
            keep = ~remove
            # the loss differences between counts are far above 1e-6
            W, b = fit_head(Ftr[keep], ytr[keep], n_classes, alpha=alpha, init=init,
                            tol=1e-6)
            init = (W, b)
            losses[f, j] = _weighted_loss(fold.F_eval, fold.y_eval, W, b, fold.w_eval)
    mean = losses.mean(0)
    best = int(np.argmin(mean))
    # paired across folds: the folds differ in difficulty far more than the
    # counts do, and that shared part says nothing about the count
    diff = losses - losses[:, [best]]
    se = (diff.std(0, ddof=1) / np.sqrt(len(folds)) if len(folds) > 1
          else np.zeros_like(mean))
    ok = np.flatnonzero(diff.mean(0) <= se)
    chosen = int(counts[ok.min()])
    return chosen, {
        "counts": counts, "loss_mean": mean, "loss_se_vs_best": se,
        "best": int(counts[best]), "chosen": chosen,
    }
