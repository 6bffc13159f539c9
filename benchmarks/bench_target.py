#!/usr/bin/env python
"""Instance transfer where the harmful training samples are correctly labelled.

Label noise is a job where a one-line baseline (out-of-fold loss) ties
influence. What only influence can do is judge each training sample by what it
does to the *target*. These tasks have harmful samples whose labels are all
correct:

- ``mnist_usps_rot``: a mixed pool of a few USPS images (the target domain)
  and MNIST digits rotated by 90 degrees (correctly labelled, harmful); a
  SmallCNN pretrained on other MNIST digits;
- ``mnist_usps_plain``: the same with plain MNIST digits, which may help;
- ``spurious``: USPS images carrying a class-specific marker on 95 % of the
  training pool; validation and test sets are group-balanced (half of each
  class carries its own marker, half another class's); average and
  worst-group accuracy (the D3M and JTT setting);
- ``spurious_texture``: the same with a stronger shortcut, a class-specific
  grating (orientation and period) added over the whole image;
- ``imbalance``: USPS 4 vs 9 with a majority share of 0.95 or 0.99 and a
  balanced validation set (the Learning-to-Reweight setting); balanced
  accuracy;
- ``cifar10_aux``: the published CIFAR-10 ResNet-20 -> JPEG CIFAR-10, with an
  auxiliary pool of other JPEG images, half plain (helpful) and half heavily
  corrupted (rotated by 90 degrees plus Gaussian noise; correctly labelled,
  harmful);
- ``cifar10_imbalance``: the method paper's setting, approximated offline:
  the published CIFAR-10 ResNet-20 (or ResNet-32) on JPEG CIFAR-10 with one
  class at 84 % of the pool and a balanced ``X_val``; balanced accuracy;
- ``aux_mix``: a few USPS images per class as the target and MNIST framed
  like USPS as the auxiliary part, two thirds correctly labelled (helpful)
  and a third with shifted labels (harmful); a SmallCNN pretrained on digits
  0-4 only;
- ``digits_rot``: the mixed-pool protocol on scikit-learn's embedded digits
  (no files, seconds; used by the tests).

Every row fine-tunes the same pretrained network with the same budget of
optimizer steps (``steps`` mini-batches, whatever the size of its training
set: a fixed number of epochs would train a pruned set for fewer steps) and
no early stopping (rows without a target set could not use one).

Rows (where they apply): fine-tune on everything; influence against the
target set ``X_val`` (threshold 0, and ``max_remove="auto"``); influence
cross-fitted on the target samples of the pool via ``sample_domain`` (no
``X_val``; threshold 0 and auto); influence cross-fitted on the pool with no
target at all; the domain classifier (its own rule, and at the count of
``influence_val_auto``); out-of-fold loss and random at that count;
cleanlab; JTT-style upweighting (the samples a first, shorter fine-tuning
misclassifies are repeated ``lambda`` times); class reweighting and
undersampling, imbalanced-learn's NearMiss and instance hardness
(imbalance); the shipped and the previous defaults; the search over the
selector scored on the target; the oracle (remove exactly the harmful part,
or a group-balanced subsample) and target-only training. ``ROWS`` says what
each trains on.

Point-removal curves (OpenDataVal's protocol): for every scoring selector,
the candidates are removed lowest-scored first and highest-scored first in
5 % steps, and a head (multinomial logistic regression on the frozen
pretrained features, the selectors' own objective) is refitted and evaluated
on the target test set; ``--ft-curves`` adds a coarse grid with fine-tuning.

Each fine-tuning run and each curve is a *cell*; results are rewritten
atomically after every cell (``target_<task>.csv``,
``target_<task>_curves.csv``, ``.md``), so an interrupted run loses at most
the cell in progress, and ``--resume`` runs only the missing cells.
``--quick`` runs one seed of a small version of a task in under 5 minutes on
2 CPU cores (``--threads 1``). ``--grid`` runs a ``GridSearchCV`` over the
selector's threshold on the mixed pool with ``sample_domain`` routed and
scored on the target samples.

The tasks (a class and a ``CONFIGS`` entry each) are in ``_target_tasks.py``;
this script holds the rows, the running, the curves and the output.

Examples
--------
::

    python benchmarks/bench_target.py --task mnist_usps_rot --quick
    python benchmarks/bench_target.py --task spurious --seeds 0 1 2
    python benchmarks/bench_target.py --task cifar10_aux --resume
    python benchmarks/bench_target.py --task mnist_usps_rot --grid
"""

import os
import sys
import time

import numpy as np

from skitl._experiment import cleanlab_available

# the shared protocol and the tasks live next to this script
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _harness  # noqa: E402

# The tasks (a class and a CONFIGS entry each), re-exported: tests and
# notebooks import them from here.
from _target_tasks import (  # noqa: E402, F401
    CONFIGS,
    MAX_EPOCHS,
    TASK_CLASSES,
    TASKS,
    CifarAuxTask,
    DigitsRotTask,
    ImbalanceTask,
    MixedMnistUspsTask,
    MnistSourceTask,
    SpuriousTask,
    Task,
    _gratings,
    _marker_classes,
    _markers,
    _pool_bunch,
    _source_split,
    _split,
    _stamp,
    epochs_for,
    register,
)

#: Every row a task may have, in table order, with what it trains on.
ROWS = {
    "finetune_all": "fine-tune on the whole pool",
    "influence_val": "influence against the target set X_val, threshold 0",
    "influence_val_auto": "influence against X_val, max_remove='auto' (among the "
                          "candidates of threshold 0)",
    "influence_val_auto_all": "influence against X_val, threshold=+inf and "
                              "max_remove='auto': the target loss of refitted heads "
                              "decides the count among all candidates, in score order",
    "influence_sd": "influence, target samples cross-fitted via sample_domain "
                    "(no X_val), threshold 0",
    "influence_sd_auto": "the same with max_remove='auto'",
    "influence_sd_auto_all": "the same with threshold=+inf and max_remove='auto'",
    "influence_pool": "influence cross-fitted on the pool, no target (every "
                      "sample a candidate)",
    "domain": "domain classifier (target vs pool), its own rule (log density "
              "ratio < 0)",
    "domain@count": "domain classifier at the reference row's count "
                    "(influence_val_auto; influence_default on aux_mix and "
                    "cifar10_imbalance)",
    "loss@count": "out-of-fold loss on the pool at the reference row's count",
    "random@count": "random at the reference row's count",
    "cleanlab": "confident learning (cleanlab) on out-of-fold probabilities",
    "jtt": "JTT upweighting: samples a first fine-tuning of jtt_steps steps "
           "misclassifies, repeated jtt_lambda times",
    "class_reweight": "class reweighting (each class repeated to the majority's "
                      "count)",
    "undersample": "random undersampling of the majority to the minority's count",
    "nearmiss": "imbalanced-learn's NearMiss (version 1) on the pretrained head "
                "features: the majority samples closest to the minority are kept, "
                "down to the minority's count",
    "hardness": "imbalanced-learn's InstanceHardnessThreshold on the pretrained head "
                "features (logistic regression, 5 folds): the majority samples it "
                "finds hardest are removed, down to the minority's count",
    "oracle": "remove exactly the harmful part (or a group-balanced subsample)",
    "target_only": "train on the target samples only (those of the pool; X_val on "
                   "one-domain pools)",
    "influence_default": "InfluenceSampleSelector with its defaults (alpha='scale', "
                         "target_validation='whole', threshold 0), given sample_domain "
                         "(mixed pools) or X_val (one-domain pools)",
    "influence_default_auto": "the same with max_remove='auto'",
    "influence_old": "the defaults shipped before (alpha=1e-3, "
                     "target_validation='cross_fit'), given what influence_default is",
    "influence_old_auto": "the same with max_remove='auto'",
    "influence_sd_whole": "influence, the whole target of the pool against a head "
                          "fitted on the auxiliary samples (target_validation='whole'), "
                          "at the task's alpha, threshold 0",
    "loss_auto": "out-of-fold loss with max_remove='auto' (the target loss of refitted "
                 "heads decides the count)",
    "influence_val_small": "influence with its defaults against a separate X_val as "
                           "small as the pool's target (the same count per class, "
                           "drawn from X_val): the pool's target images are then "
                           "trained on but not validated on",
    "influence_and_cleanlab": "remove only what both influence_default and cleanlab "
                              "remove (consensus)",
    "search": "GridSearchCV over the selector (skitl.model_selection.selector_grid: "
              "none, target only, influence, influence auto, domain classifier, "
              "out-of-fold loss auto; undersampling on imbalance), 3 test folds of "
              "target samples (TargetStratifiedKFold; X_val stacked in as the target "
              "on one-domain pools), scored on the target (balanced accuracy on "
              "imbalance), refitted on everything with its pick",
}
#: The row whose removal count the @count baselines copy (a task may name another:
#: Task.reference).
REFERENCE = "influence_val_auto"
#: Rows that are not comparisons but references (excluded from the verdict).
REFERENCE_ROWS = ("oracle", "target_only", "search")
#: Selections whose scores give a removal curve: curve name -> selection.
CURVES = {
    "influence_val": "influence_val",
    "influence_sd": "influence_sd",
    "influence_pool": "influence_pool",
    "domain": "domain",
    "loss": "loss@count",
    "random": "random@count",
}
# (cleanlab's scores are the out-of-fold probability of the given label: the
# same order as the out-of-fold loss, so the same curve.)
#: Curves refitted with fine-tuning under --ft-curves, and their grid (% removed).
FT_CURVES = ("influence_val", "domain", "random")
FT_GRID = (0, 25, 50, 75, 100)

_ROW_COLUMNS = (
    "task", "setting", "seed", "row", "accuracy", "balanced_accuracy", "worst_group",
    "n_pool", "n_candidates", "n_train", "n_removed", "removed_pct", "aux_removed_pct",
    "target_removed", "minority_removed_pct", "n_upweighted", "precision", "recall",
    "auroc", "score_seconds", "fit_seconds", "epochs_run", "pick", "resolved", "n_fits",
)
_CURVE_COLUMNS = (
    "task", "setting", "seed", "curve", "retrain", "direction", "pct", "n_removed",
    "accuracy", "balanced_accuracy", "worst_group", "seconds",
)

# ---------------------------------------------------------------------------
# Arguments
# ---------------------------------------------------------------------------


def build_parser():
    from skitl.datasets import default_data_dir

    found = default_data_dir()
    p = _harness.base_parser(__doc__, "docs/target.md", TASKS, "mnist_usps_rot",
                             "1 seed, a small version of the task, few steps")
    p.add_argument("--seeds", type=int, nargs="+", default=None,
                   help="seeds (default 0 1 2; 0 with --quick)")
    p.add_argument("--rows", nargs="+", default=None, choices=tuple(ROWS),
                   help="rows to run (default: every row the task has)")
    p.add_argument("--settings", nargs="+", default=None,
                   help="imbalance: majority shares (default 0.95 0.99)")
    p.add_argument("--steps", type=int, default=None,
                   help="optimizer steps of every fine-tuning (the epochs follow from "
                        "the size of its training set)")
    p.add_argument("--curves", nargs="+", default=None, choices=tuple(CURVES),
                   help="point-removal curves to run (default: every one whose "
                        "selection is among the rows)")
    p.add_argument("--no-curves", action="store_true",
                   help="skip the point-removal curves")
    p.add_argument("--ft-curves", action="store_true",
                   help="also removal curves with fine-tuning, on a coarse grid "
                        f"{FT_GRID} %% for {FT_CURVES} (slow)")
    p.add_argument("--grid", action="store_true",
                   help="run the GridSearchCV demonstration on the task's mixed pool "
                        "instead (writes target_grid.txt)")
    p.add_argument("--data-dir", default=None if found is None else str(found),
                   help="folder with mnist/, usps/, cifar10_test_jpg/, "
                        "cifar10_resnet_weights/")
    _harness.add_arguments(p, "device")
    _harness.add_run_arguments(p, out=os.path.join("benchmarks", "results"))
    return p


def resolve_config(args):
    """The task's settings after --quick and explicit options."""
    cfg = _harness.task_config(CONFIGS, args.task, args.quick)
    if args.steps is not None:
        cfg["steps"] = args.steps
    if args.settings is not None:
        cfg["settings"] = list(args.settings)
    seeds = args.seeds if args.seeds is not None else ([0] if args.quick else [0, 1, 2])
    return cfg, seeds


# ---------------------------------------------------------------------------
# Selections and training sets
# ---------------------------------------------------------------------------

#: Rows whose selector is fitted against X_val.
_VAL_ROWS = ("influence_val", "influence_val_auto", "influence_val_auto_all", "domain",
             "domain@count")
#: Rows given what a user has: sample_domain on a mixed pool, X_val otherwise.
_USER_ROWS = ("influence_default", "influence_default_auto", "influence_old",
              "influence_old_auto", "loss_auto")


def build_selector(name, estimator, cfg, seed, count, device):
    """The selector of a row (``None`` for rows that are not selections)."""
    from skitl import InfluenceSampleSelector
    from skitl.selection import (
        ConfidentLearningSelector,
        DomainClassifierSelector,
        LossSelector,
        RandomSelector,
    )

    common = dict(alpha=cfg["alpha"], cv=cfg["cv"], random_state=seed, device=device)
    shipped = dict(random_state=seed, device=device)
    old = dict(alpha=1e-3, target_validation="cross_fit", **shipped)
    if name in ("influence_default", "influence_val_small"):
        return InfluenceSampleSelector(estimator, **shipped)
    if name == "influence_default_auto":
        return InfluenceSampleSelector(estimator, max_remove="auto", **shipped)
    if name == "influence_old":
        return InfluenceSampleSelector(estimator, **old)
    if name == "influence_old_auto":
        return InfluenceSampleSelector(estimator, max_remove="auto", **old)
    if name == "loss_auto":
        return LossSelector(estimator, max_remove="auto", **shipped)
    if name == "influence_sd_whole":
        return InfluenceSampleSelector(estimator, target_validation="whole", **common)
    if name in ("influence_val", "influence_sd", "influence_pool"):
        return InfluenceSampleSelector(estimator, target_validation="cross_fit",
                                       **common)
    if name in ("influence_val_auto", "influence_sd_auto"):
        return InfluenceSampleSelector(estimator, max_remove="auto",
                                       target_validation="cross_fit", **common)
    if name in ("influence_val_auto_all", "influence_sd_auto_all"):
        return InfluenceSampleSelector(estimator, threshold=np.inf, max_remove="auto",
                                       target_validation="cross_fit", **common)
    if name == "domain":
        return DomainClassifierSelector(estimator, **common)
    if name == "domain@count":
        return DomainClassifierSelector(estimator, threshold=None, max_remove=count,
                                        **common)
    if name == "loss@count":
        return LossSelector(estimator, max_remove=count, **common)
    if name == "random@count":
        return RandomSelector(max_remove=count, random_state=seed)
    if name == "cleanlab":
        return ConfidentLearningSelector(estimator, **common)
    raise ValueError(f"{name!r} is not a selection row")


class Selections:
    """The selections of one setting x seed, each fitted at most once (lazily).

    The @count baselines copy the reference's removal count: from the results
    file when the reference's cell is already there (``--resume``), else by
    fitting the reference.
    """

    def __init__(self, d, estimator, cfg, seed, device, stored_count=None,
                 reference=REFERENCE):
        self.d, self.estimator, self.cfg = d, estimator, cfg
        self.seed, self.device = seed, device
        self.stored_count = stored_count
        self.reference = reference
        self._done = {}
        self._features = None

    def features(self):
        """The pretrained network's head features of the pool, computed once."""
        if self._features is None:
            self._features = np.asarray(head_features(self.estimator, self.d.X,
                                                      device=self.device))
        return self._features

    def count(self):
        if self.reference not in self._done and self.stored_count is not None:
            return int(self.stored_count)
        return self.get(self.reference)["n_removed"]

    def get(self, name):
        from skitl._experiment import fit_selection

        if name not in self._done:
            d = self.d
            count = self.count() if name.endswith("@count") else None
            sel = build_selector(name, self.estimator, self.cfg, self.seed, count,
                                 self.device)
            kw = {}
            if name in _VAL_ROWS or (name in _USER_ROWS and d.sample_domain is None):
                kw.update(X_val=d.X_val, y_val=d.y_val)
            if name == "influence_val_small":
                pick = _like_target(d, self.seed)
                kw.update(X_val=d.X_val[pick], y_val=d.y_val[pick])
            if name != "influence_pool" and d.sample_domain is not None:
                kw["sample_domain"] = d.sample_domain
            self._done[name] = fit_selection(sel, d.X, d.y, is_corrupted=d.harmful, **kw)
        return self._done[name]


def draw_per_class(y, per_class, rng):
    """Sorted positions into ``y``: ``per_class[k]`` of class ``k`` (at most all), drawn
    without replacement, classes in ascending order."""
    return np.sort(np.concatenate([
        rng.choice(np.flatnonzero(y == k), min(n, int((y == k).sum())), replace=False)
        for k, n in enumerate(per_class) if n]))


def _like_target(d, seed):
    """Indices into ``X_val``: as many per class as the pool's target has."""
    per_class = np.bincount(d.y[d.is_target], minlength=int(d.y_val.max()) + 1)
    return draw_per_class(d.y_val, per_class, np.random.RandomState(seed))


def finetune_predict(estimator, cfg, X, y, idx, X_test, steps=None, sample_domain=None):
    """Fine-tune on the rows ``idx`` for the step budget and predict ``X_test``.

    With ``cfg["target_share"]`` the classifier draws that share of every batch
    from the target samples (``sample_domain`` of the rows is passed to it).
    """
    steps = cfg["steps"] if steps is None else steps
    params = dict(max_epochs=MAX_EPOCHS, max_steps=steps)
    sd = sample_domain if cfg.get("target_share") else None
    return _harness.fit_score(estimator, X, y, idx, X_test, sample_domain=sd, **params)


def _repeat(idx, times):
    return np.repeat(np.asarray(idx), np.asarray(times))


def _kept(d, keep, info):
    """Train on the rows ``keep`` of a rule without scores: precision and recall only."""
    info["removed"] = ~keep
    if d.harmful is not None:
        info["precision"] = float(d.harmful[~keep].mean()) if (~keep).any() else np.nan
        info["recall"] = float((~keep)[d.harmful].mean())
    return np.flatnonzero(keep), info


def _imblearn_keep(row, sel, d, seed):
    """The rows an imbalanced-learn under-sampler keeps, run on the head features."""
    from imblearn.under_sampling import InstanceHardnessThreshold, NearMiss
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    F = sel.features()
    if row == "nearmiss":
        sampler = NearMiss(version=1)
    else:
        clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
        sampler = InstanceHardnessThreshold(estimator=clf, cv=5, random_state=seed)
    sampler.fit_resample(F.reshape(len(F), -1), d.y)
    keep = np.zeros(len(d.y), bool)
    keep[sampler.sample_indices_] = True
    return keep


def training_set(row, sel, task, d, seed):
    """Indices into the pool to train on (repeats weight a sample), and facts.

    Returns
    -------
    idx : ndarray of int
    info : dict
        ``removed`` (bool mask or None), ``scores``, ``seconds``,
        ``n_upweighted`` and the detection metrics of a selection.
    """
    n = len(d.y)
    every = np.arange(n)
    info = {"removed": np.zeros(n, bool), "seconds": 0.0, "n_upweighted": 0,
            "precision": np.nan, "recall": np.nan, "auroc": np.nan}
    if row == "finetune_all":
        return every, info
    if row == "target_only" and d.target_keep is None:
        return None, info  # the target is X_val: trained on in run()
    if row in ("oracle", "target_only"):
        return _kept(d, d.oracle_keep if row == "oracle" else d.target_keep, info)
    if row == "jtt":
        # JTT (Liu et al. 2021): a first, shorter fine-tuning on the pool; the
        # samples it gets wrong are repeated lambda times in the second
        t0 = time.perf_counter()
        pred, _, _ = finetune_predict(sel.estimator, task.cfg, d.X, d.y, every, d.X,
                                      steps=task.cfg["jtt_steps"],
                                      sample_domain=d.sample_domain)
        wrong = pred != d.y
        info.update(seconds=time.perf_counter() - t0, n_upweighted=int(wrong.sum()))
        return _repeat(every, np.where(wrong, task.cfg["jtt_lambda"], 1)), info
    if row == "class_reweight":
        counts = np.bincount(d.y)
        times = np.rint(counts.max() / counts[d.y]).astype(int)
        info["n_upweighted"] = int((times > 1).sum())
        return _repeat(every, times), info
    if row == "undersample":
        counts = np.bincount(d.y)
        rng = np.random.RandomState(seed)
        keep = np.zeros(n, bool)
        for c in np.flatnonzero(counts):
            members = np.flatnonzero(d.y == c)
            keep[rng.choice(members, size=counts[counts > 0].min(), replace=False)] = True
        info["removed"] = ~keep
        return every[keep], info
    if row in ("nearmiss", "hardness"):
        t0 = time.perf_counter()
        keep = _imblearn_keep(row, sel, d, seed)
        info["seconds"] = time.perf_counter() - t0
        return _kept(d, keep, info)
    if row == "influence_and_cleanlab":
        return _kept(d, sel.get("influence_default")["mask"] | sel.get("cleanlab")["mask"],
                     info)
    s = sel.get(row)
    info.update(removed=~s["mask"], scores=s["scores"], seconds=s["seconds"],
                precision=s["precision"], recall=s["recall"], auroc=s["auroc"])
    return every[s["mask"]], info


def search_candidates(task):
    """The candidates of the search row (names of ``selector_grid``)."""
    names = ["none", "target_only", "influence", "influence_auto", "domain", "loss_auto"]
    if task.metric == "balanced_accuracy":
        names.append("undersample")
    return names


def run_search(task, base, cfg, d, seed, n_splits=3):
    """The recipe a user runs: a search over the selector scored on the target.

    Returns what a row needs: predictions of the test set by the refitted best
    candidate, the wall time of the whole search, the epochs of the refit and
    ``info`` (the pick, whether it was resolved from the runner-up, the
    number of fits, and ``kept``: the pool rows the refit trained on).
    """
    import tempfile

    import sklearn
    from sklearn.base import clone
    from sklearn.metrics import accuracy_score, balanced_accuracy_score
    from sklearn.model_selection import GridSearchCV

    from skitl.metrics import make_target_scorer
    from skitl.model_selection import (
        TargetStratifiedKFold,
        search_report,
        selector_grid,
        stack_target,
    )

    if d.sample_domain is not None:
        X, y, sd = d.X, d.y, d.sample_domain
    else:
        X, y, sd = stack_target(d.X, d.y, d.X_val, d.y_val)
    metric = (balanced_accuracy_score if task.metric == "balanced_accuracy"
              else accuracy_score)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="skitl-search-") as cache, \
            sklearn.config_context(enable_metadata_routing=True):
        # the grid first: its undersampling candidate imports imbalanced-learn,
        # which changes scikit-learn's routing methods for objects made later
        grid = selector_grid(search_candidates(task), memory=cache, cv=cfg["cv"],
                             random_state=seed)
        clf = clone(base).set_params(max_epochs=MAX_EPOCHS, max_steps=cfg["steps"])
        clf.set_fit_request(sample_domain=True)
        search = GridSearchCV(clf, grid, scoring=make_target_scorer(metric),
                              cv=TargetStratifiedKFold(n_splits, shuffle=True,
                                                       random_state=seed),
                              error_score="raise", refit=True)
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            search.fit(X, y, sample_domain=sd)
    secs = time.perf_counter() - t0
    report = search_report(search)
    best = search.best_estimator_
    sel = best.selector_
    kept = (np.ones(len(y), bool) if sel is None
            else np.isin(np.arange(len(y)), sel.sample_indices_))
    n = len(d.y)
    info = {"removed": ~kept[:n], "seconds": secs, "n_upweighted": 0,
            "precision": np.nan, "recall": np.nan, "auroc": np.nan,
            "pick": report.best, "resolved": report.resolved,
            "n_fits": len(search.cv_results_["params"]) * n_splits + 1, "kept": kept}
    if d.harmful is not None and (~kept[:n]).any():
        info["precision"] = float(d.harmful[~kept[:n]].mean())
        info["recall"] = float((~kept[:n])[d.harmful].mean())
    return best.predict(d.X_test), secs, len(best.net_.history), info


def task_metrics(y_true, pred, groups=None):
    """Accuracy, balanced accuracy and worst-group accuracy (NaN without groups)."""
    from sklearn.metrics import balanced_accuracy_score

    y_true, pred = np.asarray(y_true), np.asarray(pred)
    out = {"accuracy": float(np.mean(pred == y_true)),
           "balanced_accuracy": float(balanced_accuracy_score(y_true, pred)),
           "worst_group": np.nan}
    if groups is not None:
        out["worst_group"] = float(min(np.mean(pred[groups == g] == y_true[groups == g])
                                       for g in np.unique(groups)))
    return out


def removal_candidates(d):
    """The samples a selection may remove: the auxiliary ones on a mixed pool, else all."""
    return ~d.is_target if d.sample_domain is not None else np.ones(len(d.y), bool)


def row_record(task, setting, seed, row, d, idx, info, metrics, fit_seconds, epochs):
    removed = info["removed"]
    candidates = removal_candidates(d)
    n_cand = int(candidates.sum())
    aux = ~d.is_target
    return dict(
        task=task.name, setting=setting, seed=seed, row=row, **metrics,
        n_pool=len(d.y), n_candidates=n_cand, n_train=len(idx),
        n_removed=int(removed.sum()),
        removed_pct=100.0 * (removed & candidates).sum() / max(n_cand, 1),
        aux_removed_pct=(100.0 * removed[aux].mean()) if aux.any() else np.nan,
        target_removed=int((removed & d.is_target).sum()),
        minority_removed_pct=(100.0 * removed[d.minority].mean()
                              if d.minority is not None else np.nan),
        n_upweighted=info["n_upweighted"], precision=info["precision"],
        recall=info["recall"], auroc=info["auroc"], score_seconds=info["seconds"],
        fit_seconds=fit_seconds, epochs_run=epochs, pick=info.get("pick", ""),
        resolved=info.get("resolved", ""), n_fits=info.get("n_fits", 1),
    )


# ---------------------------------------------------------------------------
# Point-removal curves
# ---------------------------------------------------------------------------


def head_features(estimator, X, *, device):
    """The pretrained network's head features (what the selectors score)."""
    from skitl.selection._features import compute_features, pretrained_network

    net, head = pretrained_network(estimator)
    return compute_features(net, head, X, batch_size=256, device=device)


def curve_masks(scores, y, candidates, pct_grid):
    """Removal masks, lowest-scored and highest-scored first, per % of candidates.

    The product's rule applies (the class floor: a class keeps
    ``max(2, 10 %)`` of its samples), so 100 % removes what the floor allows.
    """
    from skitl.selection import removal_mask

    n_cand = int(candidates.sum())
    out = []
    for direction, sign in (("lowest", 1.0), ("highest", -1.0)):
        for pct in pct_grid:
            count = int(round(pct / 100 * n_cand))
            remove, _ = removal_mask(sign * np.asarray(scores), y, candidates=candidates,
                                     max_remove=count)
            out.append((direction, pct, remove))
    return out


def head_curve(F, y, F_test, d, scores, candidates, n_classes, alpha):
    """The metrics of a refitted head along both removal orders (5 % steps)."""
    from skitl.influence import fit_head, predict_proba_head

    rows = []
    for direction, pct, remove in curve_masks(scores, y, candidates, range(0, 101, 5)):
        t0 = time.perf_counter()
        keep = ~remove
        W, b = fit_head(F[keep], y[keep], n_classes, alpha=alpha)
        pred = predict_proba_head(F_test, W, b).argmax(1)
        rows.append(dict(retrain="head", direction=direction, pct=pct,
                         n_removed=int(remove.sum()),
                         seconds=time.perf_counter() - t0,
                         **task_metrics(d.y_test, pred, d.groups_test)))
    return rows


def ft_curve(estimator, cfg, d, scores, candidates):
    """Fine-tuned metrics on the coarse grid, lowest-scored first only."""
    rows = []
    masks = [m for m in curve_masks(scores, d.y, candidates, FT_GRID) if m[0] == "lowest"]
    for direction, pct, remove in masks:
        pred, secs, _ = finetune_predict(estimator, cfg, d.X, d.y,
                                         np.flatnonzero(~remove), d.X_test)
        rows.append(dict(retrain="finetune", direction=direction, pct=pct,
                         n_removed=int(remove.sum()), seconds=secs,
                         **task_metrics(d.y_test, pred, d.groups_test)))
    return rows


# ---------------------------------------------------------------------------
# Running
# ---------------------------------------------------------------------------


def run(args, argv=None):
    """The rows and curves of one task, cell by cell (``argv``: for the header)."""
    _harness.limit_threads(args.threads)
    cfg, seeds = resolve_config(args)
    task = TASK_CLASSES[args.task](args.task, cfg, args)
    rows = [r for r in task.rows if args.rows is None or r in args.rows]
    if args.rows is not None and (unknown := set(args.rows) - set(task.rows)):
        raise SystemExit(f"task {args.task} has no rows {sorted(unknown)}; it has "
                         f"{list(task.rows)}.")
    if "cleanlab" in rows and not cleanlab_available():
        print('cleanlab is not installed: skipping it (pip install "skitl[cleanlab]")')
        rows.remove("cleanlab")
    curves = [] if args.no_curves else [
        c for c, s in CURVES.items() if (args.curves is None or c in args.curves) and (
            s in rows or (s in ("influence_val", "influence_sd") and s + "_auto" in rows))]
    tag = args.tag if args.tag is not None else ("quick" if args.quick else "")
    stem = os.path.join(args.out, f"target_{args.task}" + (f"_{tag}" if tag else ""))
    config = {"task": args.task, "settings": cfg}
    store = _harness.CellStore(stem + ".csv", _ROW_COLUMNS, ("setting", "seed", "row"),
                               config, resume=args.resume)
    cstore = _harness.CellStore(stem + "_curves.csv", _CURVE_COLUMNS,
                                ("setting", "seed", "curve", "retrain"), config,
                                resume=args.resume)
    say = (lambda *a: None) if args.quiet else (lambda *a: print(*a, flush=True))
    run_info = _harness.run_info(__file__, argv, device=args.device)
    say("\n".join(_harness.header_lines(run_info)))
    say(f"{args.task}: {task.describe()}\nsettings: {cfg}")
    if store.n_resumed or cstore.n_resumed:
        say(f"--resume: {store.n_resumed} row cells and {cstore.n_resumed} curve cells "
            "kept")
    retrains = ["head"] + (["finetune"] if args.ft_curves else [])
    for setting in task.settings:
        for seed in seeds:
            key = dict(setting=setting, seed=seed)
            todo_rows = [r for r in rows if not store.done(row=r, **key)]
            todo_curves = [(c, rt) for c in curves for rt in retrains
                           if (rt == "head" or c in FT_CURVES)
                           and not cstore.done(curve=c, retrain=rt, **key)]
            label = f"{args.task} {setting + ' ' if setting else ''}seed {seed}"
            if not todo_rows and not todo_curves:
                say(f"[{label}] all cells done, skipped")
                continue
            t_block = time.perf_counter()
            d = task.data(setting, seed)
            base = task.estimator(seed)
            reference = getattr(task, "reference", REFERENCE)
            stored = store.rows_of(row=reference, **key)
            sel = Selections(d, base, cfg, seed, args.device,
                             stored_count=stored[0]["n_removed"] if stored else None,
                             reference=reference)
            say(f"[{label}] pool {len(d.y)} ({int(d.is_target.sum())} target), X_val "
                f"{len(d.y_val)}, test {len(d.y_test)}; {len(todo_rows)} rows and "
                f"{len(todo_curves)} curves to run {task.info or ''}")
            for row in todo_rows:
                if row == "search":
                    pred, secs, epochs, info = run_search(task, base, cfg, d, seed)
                    idx = np.flatnonzero(info.pop("kept"))
                elif row == "target_only" and d.target_keep is None:
                    # a one-domain pool: the target is X_val, trained on alone
                    _, info = training_set(row, sel, task, d, seed)
                    info["removed"] = np.ones(len(d.y), bool)
                    idx = np.arange(len(d.y_val))
                    pred, secs, epochs = finetune_predict(base, cfg, d.X_val, d.y_val,
                                                          idx, d.X_test)
                else:
                    idx, info = training_set(row, sel, task, d, seed)
                    pred, secs, epochs = finetune_predict(base, cfg, d.X, d.y, idx,
                                                          d.X_test,
                                                          sample_domain=d.sample_domain)
                metrics = task_metrics(d.y_test, pred, d.groups_test)
                rec = row_record(task, setting, seed, row, d, idx, info, metrics, secs,
                                 epochs)
                store.add([rec])
                say(f"  {row:<20} {task.metric} {metrics[task.metric]:.3f}  acc "
                    f"{metrics['accuracy']:.3f}  removed {rec['n_removed']:5d}  train "
                    f"{len(idx):5d}  prec {rec['precision']:.2f}  select "
                    f"{info['seconds']:5.1f}s  fit {secs:5.1f}s"
                    + (f"  pick {rec['pick']}" if rec["pick"] else ""))
                write_page(stem, task, store, cstore, run_info, seeds, final=False)
                if args.pause:
                    time.sleep(args.pause)
            if todo_curves:
                F = sel.features()
                F_test = head_features(base, d.X_test, device=args.device)
                cand = removal_candidates(d)
                for c, rt in todo_curves:
                    scores = sel.get(CURVES[c])["scores"]
                    if rt == "head":
                        pts = head_curve(F, d.y, F_test, d, scores, cand,
                                         int(d.y.max()) + 1, cfg["alpha"])
                    else:
                        pts = ft_curve(base, cfg, d, scores, cand)
                    cstore.add([dict(task=task.name, setting=setting, seed=seed, curve=c,
                                     **p) for p in pts])
                    low = [p for p in pts if p["direction"] == "lowest"]
                    say(f"  curve {c:<15} {rt:<8} {task.metric} at "
                        + " ".join(f"{p['pct']}%:{p[task.metric]:.3f}" for p in low
                                   if p["pct"] % 25 == 0))
                    if args.pause:
                        time.sleep(args.pause)
            say(f"  [{label}] done in {time.perf_counter() - t_block:.0f}s (total "
                f"{time.perf_counter() - run_info['t_start']:.0f}s)")
            write_page(stem, task, store, cstore, run_info, seeds, final=False)
    write_page(stem, task, store, cstore, run_info, seeds, final=True)
    say(f"wall time {(time.perf_counter() - run_info['t_start']) / 60:.1f} min; results "
        f"in {store.path}")
    return store.rows


# ---------------------------------------------------------------------------
# Output
# ---------------------------------------------------------------------------

_METRIC_NAMES = {"accuracy": "accuracy", "balanced_accuracy": "balanced accuracy",
                 "worst_group": "worst-group accuracy"}


def _metrics_of(task):
    if task.metric == "worst_group":
        return ["worst_group", "accuracy"]
    if task.metric == "balanced_accuracy":
        return ["balanced_accuracy", "accuracy"]
    return ["accuracy"]


def summary(task, rows, setting):
    """Mean ± std per row of one setting, in table order."""
    from skitl._experiment import summarise

    sub = [r for r in rows if str(r["setting"]) == str(setting)]
    extras = ("n_train", "n_removed", "removed_pct", "aux_removed_pct", "target_removed",
              "minority_removed_pct", "n_upweighted", "precision", "recall", "auroc",
              "score_seconds", "fit_seconds")
    out = {}
    for metric in _metrics_of(task):
        for s in summarise(sub, ["row"], value=metric, extras=extras):
            out.setdefault(s["row"], {}).update(s)
    order = list(ROWS)
    return [out[r] for r in sorted(out, key=order.index)]


def verdict(task, summ):
    """For every influence row: its margin over the strongest baseline."""
    metric = task.metric
    base = [s for s in summ if not s["row"].startswith("influence")
            and s["row"] not in REFERENCE_ROWS]
    lines = []
    if not base:
        return lines
    best = max(base, key=lambda s: s[f"{metric}_mean"])
    dom = [s for s in base if s["row"].startswith("domain")]
    best_dom = max(dom, key=lambda s: s[f"{metric}_mean"]) if dom else None
    for s in summ:
        if not s["row"].startswith("influence"):
            continue
        m = s[f"{metric}_mean"]
        margin = 100 * (m - best[f"{metric}_mean"])
        losers = [b["row"] for b in base if b[f"{metric}_mean"] > m]
        d = dict(row=s["row"], value=f"{m:.3f}",
                 best_baseline=f"{best['row']} {best[f'{metric}_mean']:.3f}",
                 margin=f"{margin:+.1f}",
                 beats_all_by_2=("yes" if margin >= 2 else "no"),
                 loses_to=", ".join(losers) if losers else "–")
        if best_dom is not None:
            d["vs_domain"] = f"{100 * (m - best_dom[f'{metric}_mean']):+.1f}"
        lines.append(d)
    return lines


def _fmt(v, spec):
    if isinstance(v, (float, np.floating)):
        return "–" if not np.isfinite(v) else format(v, spec)
    return str(v)


def results_markdown(task, rows, curve_rows):
    """The tables of the results page: one per setting, a verdict, the curves."""
    from skitl._experiment import markdown_table

    parts = []
    metrics = _metrics_of(task)
    for setting in task.settings:
        summ = summary(task, rows, setting)
        if not summ:
            continue
        title = f"majority share {setting}" if setting else "results"
        table = []
        for s in summ:
            d = {"row": s["row"], "runs": s["n_runs"]}
            for m in metrics:
                d[_METRIC_NAMES[m]] = f"{s[f'{m}_mean']:.3f} ± {s[f'{m}_std']:.3f}"
            for k, spec in (("n_train", ".0f"), ("n_removed", ".0f"),
                            ("removed_pct", ".1f"), ("aux_removed_pct", ".1f"),
                            ("target_removed", ".1f"), ("minority_removed_pct", ".1f"),
                            ("n_upweighted", ".0f"), ("precision", ".2f"),
                            ("recall", ".2f"), ("auroc", ".3f"),
                            ("score_seconds", ".1f"), ("fit_seconds", ".1f")):
                d[k] = _fmt(s.get(k, np.nan), spec)
            table.append(d)
        cols = ["row", *[_METRIC_NAMES[m] for m in metrics], "runs", "n_train",
                "n_removed", "removed_pct"]
        if any(r["aux_removed_pct"] != "–" for r in table):
            cols += ["aux_removed_pct", "target_removed"]
        if any(r["minority_removed_pct"] != "–" for r in table):
            cols += ["minority_removed_pct"]
        cols += ["n_upweighted", "precision", "recall", "auroc", "score_seconds",
                 "fit_seconds"]
        parts.append(f"## {title}\n\n" + markdown_table(table, cols))
        v = verdict(task, summ)
        if v:
            vcols = ["row", "value", "best_baseline", "margin", "beats_all_by_2",
                     "loses_to"] + (["vs_domain"] if "vs_domain" in v[0] else [])
            parts.append(f"Verdict ({_METRIC_NAMES[task.metric]}, points = 100 x "
                         "difference of the means; baselines exclude "
                         f"{', '.join(REFERENCE_ROWS)}):\n\n" + markdown_table(v, vcols))
        ctab = curve_table(task, curve_rows, setting)
        if ctab:
            parts.append("Removal curves (head refitted on frozen features; "
                         f"{_METRIC_NAMES[task.metric]}, mean over seeds, by % of the "
                         "candidates removed):\n\n" + ctab)
    return "\n\n".join(parts)


def curve_series(task, curve_rows, setting, retrain="head"):
    """``{(curve, direction): (pct, mean, std)}`` of one setting."""
    out = {}
    sub = [r for r in curve_rows if str(r["setting"]) == str(setting)
           and r["retrain"] == retrain]
    for c in dict.fromkeys(r["curve"] for r in sub):
        for direction in ("lowest", "highest"):
            pts = [r for r in sub if r["curve"] == c and r["direction"] == direction]
            if not pts:
                continue
            pcts = sorted({int(r["pct"]) for r in pts})
            vals = [[float(r[task.metric]) for r in pts if int(r["pct"]) == p]
                    for p in pcts]
            out[(c, direction)] = (np.array(pcts), np.array([np.mean(v) for v in vals]),
                                   np.array([np.std(v) for v in vals]))
    return out


def curve_table(task, curve_rows, setting):
    from skitl._experiment import markdown_table

    table = []
    for retrain in ("head", "finetune"):
        series = curve_series(task, curve_rows, setting, retrain)
        for (c, direction), (x, m, _) in series.items():
            d = {"curve": c, "retrain": retrain, "order": f"{direction} first"}
            for p, v in zip(x, m, strict=True):
                if p % 25 == 0:
                    d[f"{p}%"] = f"{v:.3f}"
            table.append(d)
    if not table:
        return ""
    cols = ["curve", "retrain", "order"] + [f"{p}%" for p in (0, 25, 50, 75, 100)]
    return markdown_table(table, cols)


def write_page(stem, task, store, cstore, run_info, seeds, final):
    """Rewrite the results page and, at the end of a seed, the plots."""
    if not store.rows and not cstore.rows:
        return
    wall = time.perf_counter() - run_info["t_start"]
    done = sorted({int(r["seed"]) for r in store.rows})
    expected = {(str(s), str(sd)) for s in task.settings for sd in seeds}
    got = {(str(r["setting"]), str(r["seed"])) for r in store.rows}
    partial = not final or not expected <= got
    head = [
        f"# target_{task.name}: correctly labelled harm"
        + (" (PARTIAL: run not finished)" if partial else ""),
        "",
        f"- command: `{run_info['command']}`",
        f"- started {run_info['started']:%Y-%m-%d %H:%M} UTC; wall time of this "
        f"invocation {wall / 60:.1f} min; seeds with results {done}",
        f"- machine: {run_info['machine']}",
        f"- task: {task.describe()}",
        f"- source network: {task.info.get('source', '')}",
        f"- settings: {task.cfg}",
        f"- metric for the verdict: {_METRIC_NAMES[task.metric]} on the target test "
        "set, mean ± std over seeds; removed_pct: % of the removal candidates "
        "removed; precision / recall / auroc: against the harmful samples (auroc of "
        "-score over the whole pool); times in seconds (means)",
        "",
        "Rows:",
        "",
        *[f"- `{r}`: {ROWS[r]}" for r in task.rows],
        "",
    ]
    _harness.atomic_write(stem + ".md", "\n".join(head) + "\n"
                          + results_markdown(task, store.rows, cstore.rows) + "\n")
    if final or not partial:
        plot(stem, task, store.rows, cstore.rows)


def plot(stem, task, rows, curve_rows):
    try:
        panels = []
        for setting in task.settings:
            summ = summary(task, rows, setting)
            for m in _metrics_of(task):
                name = _METRIC_NAMES[m] + (f" (share {setting})" if setting else "")
                panels.append((name, [(s["row"], s[f"{m}_mean"], s[f"{m}_std"])
                                      for s in summ]))
        if panels and any(b for _, b in panels):
            _harness.bar_panels(panels, stem + "_accuracy.png",
                                f"target_{task.name}: mean ± std over seeds")
        cpanels = []
        for setting in task.settings:
            for retrain in ("head", "finetune"):
                series = curve_series(task, curve_rows, setting, retrain)
                if series:
                    name = (f"{'head refit' if retrain == 'head' else 'fine-tuned'}"
                            + (f", share {setting}" if setting else ""))
                    cpanels.append((name, series))
        if cpanels:
            _harness.curve_panels(cpanels, stem + "_curves.png",
                                  f"target_{task.name}: point-removal curves "
                                  "(solid: lowest-scored first; dashed: highest first)",
                                  _METRIC_NAMES[task.metric])
    except Exception as exc:  # plots must never lose the numbers
        print(f"plotting failed: {exc!r}")


# ---------------------------------------------------------------------------
# GridSearchCV over the selector's threshold, sample_domain routed
# ---------------------------------------------------------------------------


def run_grid(args, argv=None):
    """GridSearchCV over ``clf__selector__threshold`` on the mixed pool."""
    import tempfile

    import pandas as pd
    import sklearn
    from sklearn.model_selection import GridSearchCV, StratifiedKFold
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import FunctionTransformer

    from skitl import InfluenceSampleSelector
    from skitl.metrics import make_target_scorer

    _harness.limit_threads(args.threads)
    cfg, seeds = resolve_config(args)
    task = TASK_CLASSES[args.task](args.task, cfg, args)
    seed = seeds[0]
    d = task.data(task.settings[0], seed)
    if d.sample_domain is None:
        raise SystemExit(f"--grid needs a mixed pool (sample_domain); {args.task} has "
                         "one domain.")
    t0 = time.perf_counter()
    lines = [*_harness.header_lines(_harness.run_info(__file__, argv, device=args.device)),
             f"task: {task.describe()}", f"settings: {cfg}", ""]
    sklearn.set_config(enable_metadata_routing=True)
    with tempfile.TemporaryDirectory() as cache:
        # memory: the scores are computed once per split and reused by every
        # threshold (the cache key leaves the removal rule out)
        selector = InfluenceSampleSelector(alpha=cfg["alpha"], cv=3, memory=cache,
                                           random_state=seed)
        # epochs for the pool's training part of a split (before removal)
        clf = task.estimator(seed).set_params(
            selector=selector,
            max_epochs=epochs_for(cfg["steps"], cfg["batch_size"], len(d.y) * 2 // 3))
        clf.set_fit_request(sample_domain=True)
        pipe = Pipeline([("clip", FunctionTransformer(np.clip, kw_args=dict(a_min=0.0,
                                                                            a_max=1.0))),
                         ("clf", clf)])
        grid = {"clf__selector__threshold": [-np.inf, -1e-4, 0.0, 1e-4]}
        search = GridSearchCV(pipe, grid, scoring=make_target_scorer(),
                              cv=StratifiedKFold(3, shuffle=True, random_state=seed),
                              refit=True, error_score="raise")
        search.fit(d.X, d.y, sample_domain=d.sample_domain)
    best = search.best_estimator_
    test_acc = float(np.mean(best.predict(d.X_test) == d.y_test))
    res = pd.DataFrame(search.cv_results_)
    keep = ["param_clf__selector__threshold", "mean_test_score", "std_test_score",
            *[f"split{i}_test_score" for i in range(3)], "rank_test_score",
            "mean_fit_time"]
    with pd.option_context("display.width", 200, "display.max_columns", 20):
        table = res[keep].to_string(index=False, float_format=lambda v: f"{v:.4f}")
    sel = best["clf"].selector_
    lines += [
        "GridSearchCV(Pipeline([('clip', FunctionTransformer(np.clip)), ('clf', "
        "TransferClassifier(selector=InfluenceSampleSelector(alpha="
        f"{cfg['alpha']}, cv=3, memory=<tmp>)))]), {{'clf__selector__threshold': "
        f"{grid['clf__selector__threshold']}}}, scoring=make_target_scorer(), "
        "cv=StratifiedKFold(3, shuffle=True)) fitted with sample_domain routed "
        "(sklearn.set_config(enable_metadata_routing=True), "
        "clf.set_fit_request(sample_domain=True)); test scores = accuracy on the "
        "target (USPS) samples of each held-out split only",
        "",
        "cv_results_:",
        table,
        "",
        f"best_params_: {search.best_params_}; best_score_ (target accuracy): "
        f"{search.best_score_:.4f}",
        f"refitted best pipeline: removed {sel.n_removed_} of {len(d.y)} pool samples "
        f"({int((~sel.support_ & (d.sample_domain > 0)).sum())} auxiliary, "
        f"{int((~sel.support_ & (d.sample_domain < 0)).sum())} target); accuracy on "
        f"the USPS test set {test_acc:.4f}",
        f"wall time {time.perf_counter() - t0:.0f}s",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    tag = args.tag if args.tag is not None else ("quick" if args.quick else "")
    _harness.atomic_write(os.path.join(args.out, "target_grid" + (f"_{tag}" if tag
                                                                   else "") + ".txt"),
                          text)
    return search


def main(argv=None):
    args = build_parser().parse_args(argv)
    if args.task != "digits_rot" and args.data_dir is None:
        raise SystemExit("--data-dir is needed (../shared/data was not found).")
    if args.grid:
        run_grid(args, argv)
    else:
        run(args, argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())

