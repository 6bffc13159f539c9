"""Experiment harness shared by ``skitl demo`` and the scripts in ``benchmarks/``.

One protocol (DESIGN.md §4): every selector scores the noisy target training
set once per seed and noise level; the masks are then reused by every
fine-tuning run, and random / out-of-fold loss remove the same count as the
robust influence selector so that *which* samples go is what is compared.
"""

import time
import warnings

import numpy as np
from sklearn.base import clone
from sklearn.metrics import roc_auc_score

#: Selectors the harness knows, in the order tables show them.
SELECTORS = (
    "none",
    "random",
    "loss",
    "cleanlab",
    "influence_plain",
    "influence_auto",
    "influence_deep",
    "gradient_similarity",
)

#: Selector whose removal count the "same count" baselines copy.
REFERENCE = "influence_auto"


def make_selector(name, estimator, *, random_state, count=None, alpha=1e-3, cv=5,
                  deep_params=None, batch_size=256, device="auto"):
    """Build the selector called ``name`` for the harness.

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
    deep_params : list of str, optional
        Glob patterns of the parameters ``influence_deep`` analyses.
    batch_size : int, default=256
    device : str, default="auto"

    Returns
    -------
    selector : object or None
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
    if name == "gradient_similarity":
        return InfluenceSampleSelector(
            estimator, cv=cv, alpha=alpha, hessian="identity", val_trim="auto", **common
        )
    if name == "influence_deep":
        return InfluenceSampleSelector(
            estimator, params=list(deep_params or ["fc.*"]), hessian="ggn", cv=cv,
            alpha=alpha, val_trim="auto", **common,
        )
    raise ValueError(f"unknown selector {name!r}; choose from {SELECTORS}.")


def detection_metrics(scores, removed, is_corrupted):
    """AUROC of ``-scores`` and precision / recall of the removed set.

    Parameters
    ----------
    scores : ndarray or None
        Selector scores (higher = keep); ``None`` for selectors without
        meaningful scores.
    removed : ndarray of bool
    is_corrupted : ndarray of bool or None

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


def run_selectors(names, estimator, X, y, *, is_corrupted=None, random_state=0,
                  verbose=False, **selector_kw):
    """Fit each selector once on ``(X, y)``; count-matched baselines run last.

    Parameters
    ----------
    names : sequence of str
        Selector names from :data:`SELECTORS`.
    estimator : TransferClassifier
        The classifier whose pretrained network is analysed.
    X, y : arrays
        Noisy target training data.
    is_corrupted : ndarray of bool, optional
        Ground truth for the detection metrics.
    random_state : int, default=0
    verbose : bool, default=False
    **selector_kw
        Passed to :func:`make_selector`.

    Returns
    -------
    results : dict
        ``name -> {"mask", "scores", "n_removed", "seconds", "auroc",
        "precision", "recall", "selector"}``.
    """
    results = {}
    order = sorted(names, key=lambda n: n in ("random", "loss"))
    for name in order:
        count = None
        if name in ("random", "loss") and REFERENCE in results:
            count = results[REFERENCE]["n_removed"]
        sel = make_selector(name, estimator, random_state=random_state, count=count,
                            **selector_kw)
        t0 = time.perf_counter()
        if sel is None:
            mask = np.ones(len(y), dtype=bool)
            scores = None
        else:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                sel.fit(X, y)
            mask = sel.support_
            scores = None if name == "random" else sel.scores_
        seconds = time.perf_counter() - t0
        removed = ~mask
        row = {"mask": mask, "scores": scores, "n_removed": int(removed.sum()),
               "seconds": seconds, "selector": sel}
        row.update(detection_metrics(scores, removed,
                                     None if is_corrupted is None else np.asarray(is_corrupted)))
        results[name] = row
        if verbose:
            print(f"  selector {name:<20} removed {row['n_removed']:5d}  "
                  f"AUROC {row['auroc']:.3f}  precision {row['precision']:.3f}  "
                  f"recall {row['recall']:.3f}  ({seconds:.1f}s)", flush=True)
    return results


def finetune(estimator, X, y, mask, X_test, y_test, **params):
    """Fine-tune a clone of ``estimator`` on the kept rows and score it.

    Returns
    -------
    accuracy : float
    seconds : float
    """
    clf = clone(estimator).set_params(**params)
    t0 = time.perf_counter()
    clf.fit(X[mask], y[mask])
    seconds = time.perf_counter() - t0
    return float(clf.score(X_test, y_test)), seconds


def summarise(rows, keys, value="accuracy"):
    """Mean ± std of ``value`` grouped by ``keys``, as a list of dicts."""
    groups = {}
    for r in rows:
        groups.setdefault(tuple(r[k] for k in keys), []).append(r)
    out = []
    for key, rs in groups.items():
        d = dict(zip(keys, key, strict=True))
        vals = np.array([r[value] for r in rs], dtype=float)
        d[f"{value}_mean"] = float(np.nanmean(vals))
        d[f"{value}_std"] = float(np.nanstd(vals)) if len(vals) > 1 else 0.0
        d["n_runs"] = len(rs)
        for extra in ("n_removed", "auroc", "precision", "recall",
                      "score_seconds", "fit_seconds"):
            if extra in rs[0]:
                v = np.array([r[extra] for r in rs], dtype=float)
                d[extra] = float(np.nanmean(v)) if np.isfinite(v).any() else np.nan
        out.append(d)
    return out


def markdown_table(rows, columns, floatfmt=".3f"):
    """Render dicts as a GitHub markdown table."""
    def fmt(v):
        if isinstance(v, float):
            return "–" if np.isnan(v) else format(v, floatfmt)
        return str(v)

    lines = ["| " + " | ".join(columns) + " |",
             "|" + "|".join("---" for _ in columns) + "|"]
    for r in rows:
        lines.append("| " + " | ".join(fmt(r.get(c, "")) for c in columns) + " |")
    return "\n".join(lines)
