"""The head's prior: ``alpha`` as a number, read off the feature scale, or chosen.

The L2 strength of the head decides what influence ranks: with a weak prior
the head fits the training data closely and the inverse Hessian amplifies
its least constrained directions; with a strong one the scores approach
gradient similarity under a soft head. Its effect depends on the scale of
the features (the same value is weak for ImageNet features and strong for
pixels in ``[0, 1]``), so besides a fixed number it can be

- ``"scale"``: a fixed multiple of the mean variance of a feature, the
  way scikit-learn's ``SVC(gamma="scale")`` reads the data's scale;
- ``"auto"``: the multiple (on a grid) whose head predicts held-out data best
  (log loss of refitted heads: out of fold, or on the target), as
  ``LogisticRegressionCV`` chooses ``C``.
"""

import numpy as np

from ._chunks import FeatureChunks, as_feature_source

#: ``alpha="scale"``: this multiple of the mean variance of a head feature.
SCALE_FACTOR = 0.1
#: ``alpha="auto"``: the multiples of the feature scale it chooses among.
AUTO_GRID = (1e-3, 1e-2, 1e-1, 1.0, 10.0)


def feature_scale(F):
    """Mean variance of a feature, ``trace(Cov(F)) / d``, read by chunks.

    Parameters
    ----------
    F : array-like of shape (n, d)
        Features (an ndarray, a memmap or any array-like read by rows).

    Returns
    -------
    scale : float
        Never below ``1e-12`` (constant features).
    """
    chunks = F if isinstance(F, FeatureChunks) else FeatureChunks(
        as_feature_source(F, "F"))
    total = sq = None
    for _, X in chunks:
        s, q = X.sum(0), (X * X).sum(0)
        total = s if total is None else total + s
        sq = q if sq is None else sq + q
    n = chunks.n
    var = (sq / n - (total / n) ** 2).clamp_min(0.0)
    return max(float(var.mean()), 1e-12)


def _log_loss(P, y, w=None):
    loss = -np.log(np.clip(P[np.arange(len(y)), y], 1e-300, None))
    return float(loss.mean() if w is None else (w * loss).sum() / max(w.sum(), 1e-300))


def resolve_alpha(alpha, *, F, y, n_classes, F_eval=None, y_eval=None, folds=None,
                  device="cpu", chunk_size="auto"):
    """The numeric ``alpha`` and how it was chosen.

    Parameters
    ----------
    alpha : float, "scale" or "auto"
        The selector's or engine's ``alpha``.
    F, y : features and labels the head is fitted on.
    n_classes : int
    F_eval, y_eval : optional
        Held-out target data whose log loss judges ``"auto"`` (a validation
        set, or the target samples); without them ``folds`` are used.
    folds : list of (train_idx, test_idx), optional
        Cross-validation folds over ``F`` for ``"auto"`` without held-out data.

    Returns
    -------
    value : float
    info : dict
        ``rule`` (``"fixed"``, ``"scale"`` or ``"auto"``), ``value``,
        ``feature_scale`` and, for ``"auto"``, ``grid`` (the values tried)
        and ``log_loss`` (their held-out log loss).
    """
    if not isinstance(alpha, str):
        return float(alpha), {"rule": "fixed", "value": float(alpha)}
    scale = feature_scale(F)
    if alpha == "scale":
        value = SCALE_FACTOR * scale
        return value, {"rule": "scale", "value": value, "feature_scale": scale}
    if alpha != "auto":
        raise ValueError(f"alpha must be a float, 'scale' or 'auto', got {alpha!r}.")
    from ._head import fit_head, predict_proba_head

    grid = [c * scale for c in AUTO_GRID]
    losses = []
    for value in grid:
        if F_eval is not None:
            W, b = fit_head(F, y, n_classes, alpha=value, device=device,
                            chunk_size=chunk_size, tol=1e-6)
            losses.append(_log_loss(predict_proba_head(F_eval, W, b), y_eval))
            continue
        total = 0.0
        for tr, te in folds:
            W, b = fit_head(_rows(F, tr), y[tr], n_classes, alpha=value, device=device,
                            chunk_size=chunk_size, tol=1e-6)
            P = predict_proba_head(_rows(F, te), W, b)
            total += _log_loss(P, y[te]) * len(te)
        losses.append(total / sum(len(te) for _, te in folds))
    value = grid[int(np.argmin(losses))]
    return value, {"rule": "auto", "value": value, "feature_scale": scale,
                   "grid": grid, "log_loss": losses}


def _rows(F, idx):
    if isinstance(F, np.ndarray) and not isinstance(F, np.memmap):
        return F[idx]
    src = F if isinstance(F, FeatureChunks) else FeatureChunks(as_feature_source(F, "F"))
    return src.subset(np.sort(idx))
