"""The search that decides by the target: its grid, and how to read its result."""

import numpy as np
from sklearn.utils import Bunch

#: Candidates of :func:`selector_grid`, in this order.
CANDIDATES = ("none", "target_only", "influence", "influence_auto", "domain",
              "loss_auto", "undersample")
#: What :func:`selector_grid` offers without being asked.
DEFAULT_CANDIDATES = ("none", "target_only", "influence", "influence_auto", "domain",
                      "loss_auto")


def selector_grid(include=DEFAULT_CANDIDATES, *, memory=None, cv=5, random_state=None):
    """A parameter grid over the ``selector`` of a :class:`~skitl.TransferClassifier`.

    No single selector wins on every pool: a search scored on the target
    decides per task. This is the grid of such a search, for
    ``GridSearchCV(clf, selector_grid(...), cv=TargetStratifiedKFold(...),
    scoring=make_target_scorer())``; every selector in it analyses the
    classifier's own pretrained network and shares ``memory`` (features and
    scores computed once per split, whatever the removal rule).

    Parameters
    ----------
    include : sequence of str, default=("none", "target_only", "influence", \
"influence_auto", "domain", "loss_auto")
        Candidates, among:

        - ``"none"``: fine-tune on everything (``selector=None``);
        - ``"target_only"``: only the target samples
          (:class:`~skitl.selection.TargetOnlySelector`);
        - ``"influence"``: :class:`~skitl.InfluenceSampleSelector` with its
          defaults;
        - ``"influence_auto"``: the same with ``max_remove="auto"`` (the target
          loss of refitted heads decides how many go);
        - ``"domain"``: :class:`~skitl.selection.DomainClassifierSelector`;
        - ``"loss_auto"``: :class:`~skitl.selection.LossSelector` (out-of-fold
          loss) with ``max_remove="auto"``;
        - ``"undersample"``: imbalanced-learn's ``RandomUnderSampler`` through
          :class:`~skitl.selection.TargetAgnostic` (needs imbalanced-learn).
    memory : None, str or joblib.Memory, default=None
        The score cache shared by the selectors.
    cv : int, default=5
        Inner folds of the selectors (cross-fitting, ``max_remove="auto"``).
    random_state : int or None, default=None
        Seeds the selectors.

    Returns
    -------
    grid : dict
        ``{"selector": [...]}``, a ``param_grid`` for ``GridSearchCV``.

    Notes
    -----
    ``"undersample"`` imports imbalanced-learn, which adds its own method to
    scikit-learn's metadata routing; an estimator whose requests were set
    before that import (``set_fit_request``) then fails in the search. Make
    the grid (or import imbalanced-learn) before configuring the classifier.

    Examples
    --------
    >>> from skitl.model_selection import selector_grid
    >>> grid = selector_grid(["none", "influence"], random_state=0)
    >>> grid["selector"]
    [None, InfluenceSampleSelector(random_state=0)]
    """
    from ..selection import (
        DomainClassifierSelector,
        InfluenceSampleSelector,
        LossSelector,
        TargetAgnostic,
        TargetOnlySelector,
    )

    unknown = [c for c in include if c not in CANDIDATES]
    if unknown:
        raise ValueError(f"Unknown candidate(s) {unknown}; choose among {list(CANDIDATES)}.")
    common = dict(memory=memory, cv=cv, random_state=random_state)
    out = []
    for name in include:
        if name == "none":
            out.append(None)
        elif name == "target_only":
            out.append(TargetOnlySelector())
        elif name == "influence":
            out.append(InfluenceSampleSelector(**common))
        elif name == "influence_auto":
            out.append(InfluenceSampleSelector(max_remove="auto", **common))
        elif name == "domain":
            out.append(DomainClassifierSelector(**common))
        elif name == "loss_auto":
            out.append(LossSelector(max_remove="auto", **common))
        else:
            try:
                from imblearn.under_sampling import RandomUnderSampler
            except ImportError as exc:
                raise ImportError('"undersample" needs imbalanced-learn: pip install '
                                  "imbalanced-learn") from exc
            out.append(TargetAgnostic(RandomUnderSampler(random_state=random_state)))
    return {"selector": out}


def candidate_name(params):
    """A short name for one candidate of a search (its non-default parameters)."""
    parts = []
    for key, value in params.items():
        label = _label(value)
        parts.append(label if key.endswith("selector") else f"{key}={label}")
    return ", ".join(parts)


_PLUMBING = {"memory", "random_state", "verbose", "device", "batch_size", "estimator",
             "feature_dir", "cv"}


def _label(value):
    if value is None:
        return "none"
    if not hasattr(value, "get_params"):
        return repr(value)
    defaults = type(value)().get_params(deep=False) if _default_constructible(value) \
        else {}
    changed = [f"{k}={_label(v) if hasattr(v, 'get_params') else repr(v)}"
               for k, v in value.get_params(deep=False).items()
               if k not in _PLUMBING and (k not in defaults or defaults[k] != v
                                          or hasattr(v, "get_params"))]
    return f"{type(value).__name__}({', '.join(changed)})"


def _default_constructible(value):
    try:
        type(value)()
    except TypeError:
        return False
    return True


def search_report(search, *, n_se=1.0):
    """Read a fitted search: which candidates the target cannot tell apart.

    A search scored on a small target has a resolution limit: with few
    target samples per test fold the fold-to-fold spread can exceed the
    differences between candidates. For every candidate this compares its
    test score with the best candidate's *split by split* (the splits are
    shared, so their common difficulty cancels) and reports the mean paired
    difference and its standard error.

    Parameters
    ----------
    search : fitted GridSearchCV or RandomizedSearchCV
        Fitted with a single metric.
    n_se : float, default=1.0
        A candidate is within noise of the best when its mean paired
        difference is at most ``n_se`` standard errors.

    Returns
    -------
    report : sklearn.utils.Bunch
        ``table``: one dict per candidate (``candidate``, ``mean``, ``std``,
        ``diff`` to the best, ``se`` of that difference, ``within_noise``),
        best first; ``best``: the best candidate's name; ``tied``: the names
        within noise of the best (the best excluded); ``resolved``: whether
        no other candidate is within noise; ``text``: the table as text.
    """
    res = search.cv_results_
    n_splits = sum(1 for k in res if k.startswith("split") and k.endswith("_test_score"))
    if n_splits == 0:
        raise ValueError("search_report needs a fitted search with one metric "
                         "(split<i>_test_score in cv_results_).")
    S = np.column_stack([res[f"split{i}_test_score"] for i in range(n_splits)])
    names = [candidate_name(p) for p in res["params"]]
    best = int(np.argmax(np.nanmean(S, 1)))
    rows = []
    for j, name in enumerate(names):
        diff = S[best] - S[j]
        se = float(np.std(diff, ddof=1) / np.sqrt(n_splits)) if n_splits > 1 else np.nan
        d = float(np.mean(diff))
        rows.append({"candidate": name, "mean": float(np.mean(S[j])),
                     "std": float(np.std(S[j])), "diff": d, "se": se,
                     "within_noise": bool(j == best or (np.isfinite(se)
                                                          and d <= n_se * se))})
    order = sorted(range(len(rows)), key=lambda j: -rows[j]["mean"])
    table = [rows[j] for j in order]
    tied = [r["candidate"] for r in table if r["within_noise"]
            and r["candidate"] != names[best]]
    width = max(len(r["candidate"]) for r in table)
    lines = [f"{'candidate':<{width}}  {'mean':>6}  {'std':>6}  {'diff':>7}  "
             f"{'se':>6}  within noise of the best ({n_splits} splits)"]
    for r in table:
        lines.append(f"{r['candidate']:<{width}}  {r['mean']:6.3f}  {r['std']:6.3f}  "
                     f"{r['diff']:7.3f}  {r['se']:6.3f}  "
                     f"{'best' if r['candidate'] == names[best] else r['within_noise']}")
    return Bunch(table=table, best=names[best], tied=tied, resolved=not tied,
                 text="\n".join(lines))
