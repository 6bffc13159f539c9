"""The protocol of ``skitl demo``: selectors scored once, masks reused by every run.

Every selector scores the noisy target training set once per seed and noise
level; the masks are then reused by every fine-tuning run, and random /
out-of-fold loss remove the same count as the robust influence selector, so
that *which* samples go is what is compared. The benchmark scripts in
``benchmarks/`` build their own harness on top of these functions (deeper
selectors, per-cell result files, resuming); only what the demo needs lives
in the package.
"""

import time
import warnings

import numpy as np
from sklearn.base import clone
from sklearn.metrics import roc_auc_score

#: Selectors the demo knows, in the order tables show them.
SELECTORS = (
    "none",
    "random",
    "loss",
    "cleanlab",
    "influence_plain",
    "influence_auto",
)

#: Selector whose removal count the "same count" baselines copy.
REFERENCE = "influence_auto"

#: Selectors that remove the reference's count.
COUNT_MATCHED = ("random", "loss")


def cleanlab_available():
    """Whether the optional dependency cleanlab can be imported."""
    try:
        import cleanlab  # noqa: F401
    except ImportError:
        return False
    return True


def make_selector(name, estimator, *, random_state, count=None, alpha=1e-3, cv=5,
                  batch_size=256, device="auto"):
    """Build the selector called ``name``.

    Parameters
    ----------
    name : str
        One of :data:`SELECTORS` (``"none"`` gives ``None``).
    estimator : TransferClassifier
        Whose pretrained network the selector analyses.
    random_state : int
        Seed.
    count : int, optional
        Number of samples to remove for the count-matched baselines
        (``random``, ``loss``); defaults to 10 % when not given.
    alpha : float, default=1e-3
        Head L2 strength.
    cv : int, default=5
        Cross-fitting folds.
    batch_size : int, default=256
        Batch size of the forward passes.
    device : str, default="auto"
        Torch device.

    Returns
    -------
    selector : object or None
        The unfitted selector.
    """
    from .selection import (
        ConfidentLearningSelector,
        InfluenceSampleSelector,
        LossSelector,
        RandomSelector,
    )

    common = dict(batch_size=batch_size, device=device, random_state=random_state)
    max_remove = 0.1 if count is None else int(count)
    if name == "none":
        return None
    if name == "random":
        return RandomSelector(max_remove=max_remove, random_state=random_state)
    if name == "loss":
        return LossSelector(estimator, cv=cv, alpha=alpha, max_remove=max_remove, **common)
    if name == "cleanlab":
        return ConfidentLearningSelector(estimator, cv=cv, alpha=alpha, **common)
    if name == "influence_plain":
        return InfluenceSampleSelector(estimator, cv=cv, alpha=alpha, val_trim=0, **common)
    if name == "influence_auto":
        return InfluenceSampleSelector(estimator, cv=cv, alpha=alpha, val_trim="auto", **common)
    raise ValueError(f"unknown selector {name!r}; choose from {SELECTORS}.")


def detection_metrics(scores, removed, is_corrupted):
    """AUROC of ``-scores`` and precision / recall of the removed set.

    Parameters
    ----------
    scores : ndarray or None
        Selector scores (higher = keep); ``None`` for selectors without
        meaningful scores.
    removed : ndarray of bool
        The samples the selector removed.
    is_corrupted : ndarray of bool or None
        Ground truth: the samples that should go.

    Returns
    -------
    metrics : dict
        ``auroc``, ``precision``, ``recall`` (NaN where undefined).
    """
    out = {"auroc": np.nan, "precision": np.nan, "recall": np.nan}
    if is_corrupted is None or not is_corrupted.any() or is_corrupted.all():
        return out
    if scores is not None:
        out["auroc"] = float(roc_auc_score(is_corrupted, -np.asarray(scores)))
    if removed.any():
        out["precision"] = float(is_corrupted[removed].mean())
    out["recall"] = float(removed[is_corrupted].mean())
    return out


def fit_selection(selector, X, y, *, is_corrupted=None, with_scores=True, **fit_params):
    """Fit one selector and describe what it removed.

    Parameters
    ----------
    selector : object or None
        A selector with ``fit`` and ``support_`` / ``scores_``; ``None``
        keeps everything.
    X, y : arrays
        Training data.
    is_corrupted : ndarray of bool, optional
        Ground truth for the detection metrics.
    with_scores : bool, default=True
        Whether the selector's scores rank samples (``False`` for random).
    **fit_params
        Passed to ``selector.fit`` (``X_val``, ``y_val``, ``sample_domain``).

    Returns
    -------
    result : dict
        ``mask`` (kept), ``scores`` (or None), ``n_removed``, ``seconds``,
        ``selector`` and the :func:`detection_metrics`.
    """
    t0 = time.perf_counter()
    if selector is None:
        mask, scores = np.ones(len(y), dtype=bool), None
    else:
        with warnings.catch_warnings():
            # the class-floor warning is expected and counted in n_protected_
            warnings.simplefilter("ignore", UserWarning)
            selector.fit(X, y, **fit_params)
        mask = selector.support_
        scores = selector.scores_ if with_scores else None
    seconds = time.perf_counter() - t0
    removed = ~mask
    row = {"mask": mask, "scores": scores, "n_removed": int(removed.sum()),
           "seconds": seconds, "selector": selector}
    truth = None if is_corrupted is None else np.asarray(is_corrupted, dtype=bool)
    row.update(detection_metrics(scores, removed, truth))
    return row


def run_selectors(names, estimator, X, y, *, is_corrupted=None, random_state=0,
                  verbose=False, make=make_selector, **selector_kw):
    """Fit each selector once on ``(X, y)``; count-matched baselines run last.

    Parameters
    ----------
    names : sequence of str
        Selector names ``make`` knows.
    estimator : TransferClassifier
        The classifier whose pretrained network is analysed.
    X, y : arrays
        Noisy target training data.
    is_corrupted : ndarray of bool, optional
        Ground truth for the detection metrics.
    random_state : int, default=0
        Seed of every selector.
    verbose : bool, default=False
        Print one line per selector.
    make : callable, default=make_selector
        ``make(name, estimator, random_state=..., count=..., **selector_kw)``
        builds a selector (the benchmarks pass one that knows more names).
    **selector_kw
        Passed to ``make``.

    Returns
    -------
    results : dict
        ``name -> {"mask", "scores", "n_removed", "seconds", "auroc",
        "precision", "recall", "selector"}``.
    """
    results = {}
    order = sorted(names, key=lambda n: n in COUNT_MATCHED)
    for name in order:
        count = None
        if name in COUNT_MATCHED and REFERENCE in results:
            count = results[REFERENCE]["n_removed"]
        sel = make(name, estimator, random_state=random_state, count=count, **selector_kw)
        row = fit_selection(sel, X, y, is_corrupted=is_corrupted,
                            with_scores=name != "random")
        results[name] = row
        if verbose:
            print(f"  selector {name:<20} removed {row['n_removed']:5d}  "
                  f"AUROC {row['auroc']:.3f}  precision {row['precision']:.3f}  "
                  f"recall {row['recall']:.3f}  ({row['seconds']:.1f}s)", flush=True)
    return results


def finetune(estimator, X, y, keep, *, sample_domain=None, **params):
    """Fine-tune a clone of ``estimator`` on the kept rows.

    Parameters
    ----------
    estimator : TransferClassifier
        The template; it is cloned, never fitted itself.
    X : array or torch Dataset
        Training inputs.
    y : array
        Training labels.
    keep : ndarray of bool or of int
        A mask of the rows to train on, or their indices (repeats allowed:
        a repeated row is weighted by its count).
    sample_domain : ndarray of int, optional
        Domains of the rows of ``X``; those of the kept rows are passed to
        ``fit`` (for a classifier that balances target and auxiliary
        samples).
    **params
        Set on the clone (``strategy``, ``max_epochs``, ...).

    Returns
    -------
    clf : TransferClassifier
        The fitted clone.
    seconds : float
        Wall time of its ``fit``.
    """
    from .selection._base import _take

    keep = np.asarray(keep)
    idx = np.flatnonzero(keep) if keep.dtype == bool else keep.astype(np.int64)
    clf = clone(estimator).set_params(**params)
    t0 = time.perf_counter()
    fit_params = {} if sample_domain is None else {
        "sample_domain": np.asarray(sample_domain)[idx]}
    clf.fit(_take(X, idx), np.asarray(y)[idx], **fit_params)
    return clf, time.perf_counter() - t0


def summarise(rows, keys, value="accuracy", extras=("n_removed", "auroc", "precision",
                                                    "recall", "score_seconds",
                                                    "fit_seconds")):
    """Mean ± std of ``value`` grouped by ``keys``, as a list of dicts.

    Parameters
    ----------
    rows : list of dict
        One dict per run.
    keys : list of str
        Grouping columns.
    value : str, default="accuracy"
        The column averaged (``<value>_mean``, ``<value>_std``).
    extras : sequence of str
        Columns averaged as they are (NaN-aware), where present.

    Returns
    -------
    summary : list of dict
        One dict per group, in the order groups first appear, with
        ``n_runs``.
    """
    groups = {}
    for r in rows:
        groups.setdefault(tuple(r[k] for k in keys), []).append(r)
    out = []
    for key, rs in groups.items():
        d = dict(zip(keys, key, strict=True))
        vals = np.array([r[value] for r in rs], dtype=float)
        d[f"{value}_mean"] = float(np.nanmean(vals)) if np.isfinite(vals).any() else np.nan
        d[f"{value}_std"] = float(np.nanstd(vals)) if len(vals) > 1 else 0.0
        d["n_runs"] = len(rs)
        for extra in extras:
            if extra in rs[0]:
                v = np.array([r[extra] for r in rs], dtype=float)
                d[extra] = float(np.nanmean(v)) if np.isfinite(v).any() else np.nan
        out.append(d)
    return out


def markdown_table(rows, columns, floatfmt=".3f"):
    """Render dicts as a GitHub markdown table.

    Parameters
    ----------
    rows : list of dict
        One dict per line; missing keys print empty.
    columns : list of str
        Column names, in order.
    floatfmt : str, default=".3f"
        Format of floats (NaN prints as an en dash).

    Returns
    -------
    table : str
    """
    def fmt(v):
        if isinstance(v, float):
            return "–" if np.isnan(v) else format(v, floatfmt)
        return str(v)

    lines = ["| " + " | ".join(columns) + " |",
             "|" + "|".join("---" for _ in columns) + "|"]
    for r in rows:
        lines.append("| " + " | ".join(fmt(r.get(c, "")) for c in columns) + " |")
    return "\n".join(lines)
