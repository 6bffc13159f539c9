"""``skitl demo``: the whole method on the embedded digits transfer task.

Two parts. ``target``: a training pool that mixes a few target digits with
correctly labelled digits of another distribution (rotated by 90 degrees);
the selectors judge the auxiliary samples by the target, and a search scored
on held-out target samples decides which selector to use (the workflow skitl
recommends: no single selector wins on every pool). ``noise``: one domain
whose training labels are noisy; influence cross-fitted on the pool with
``val_trim="auto"``. Each part compares against the baselines a reviewer
would ask for.
"""

import csv
import os
import time

import numpy as np

from ._experiment import (
    cleanlab_available,
    finetune,
    fit_selection,
    markdown_table,
    run_selectors,
    summarise,
)

#: (method label, strategy, selector name)
METHODS = (
    ("finetune", "finetune", "none"),
    ("linear_probe", "linear_probe", "none"),
    ("partial", "partial", "none"),
    ("scratch", "scratch", "none"),
    ("finetune+random", "finetune", "random"),
    ("finetune+loss", "finetune", "loss"),
    ("finetune+cleanlab", "finetune", "cleanlab"),
    ("finetune+influence_plain", "finetune", "influence_plain"),
    ("finetune+influence_auto", "finetune", "influence_auto"),
)

#: Parameters the ``partial`` strategy re-initialises: the last convolution
#: and the head (the paper's variant (b)).
PARTIAL_REINIT = ["features.5.*", "fc.*"]


#: Rows of the target part: (label, what it is).
TARGET_ROWS = (
    ("finetune_all", "fine-tune on the whole pool"),
    ("influence_defaults", "InfluenceSampleSelector() with its defaults, given "
                           "sample_domain"),
    ("influence", "influence against X_val, threshold=None, max_remove='auto'"),
    ("domain", "domain classifier (target vs pool), its own rule"),
    ("loss@count", "out-of-fold loss on the pool, influence's count"),
    ("random@count", "random auxiliary samples, influence's count"),
    ("target_only", "the target samples alone (oracle: no auxiliary data)"),
    ("search", "GridSearchCV over the selector (selector_grid), test folds of target "
               "samples only (TargetStratifiedKFold), scored on the target"),
)


def mixed_pool(data, n_target=150, n_val=200, seed=0):
    """A pool of target digits plus correctly labelled digits rotated by 90 degrees.

    Parameters
    ----------
    data : Bunch
        :func:`skitl.datasets.load_digits_transfer` output (clean labels).
    n_target, n_val : int
        Target training samples and target validation samples; the rest of
        the target training set, rotated, is the auxiliary part.
    seed : int
        Shuffles the target training set.

    Returns
    -------
    X, y, sample_domain, X_val, y_val : ndarray
    """
    rng = np.random.RandomState(seed)
    idx = rng.permutation(len(data.y_train))
    tgt, val, aux = idx[:n_target], idx[n_target:n_target + n_val], idx[n_target + n_val:]
    X_aux = np.ascontiguousarray(np.rot90(data.X_train[aux], 1, axes=(2, 3)))
    X = np.concatenate([data.X_train[tgt], X_aux])
    y = np.concatenate([data.y_train[tgt], data.y_train[aux]])
    domain = np.r_[-np.ones(len(tgt), dtype=int), np.ones(len(aux), dtype=int)]
    return X, y, domain, data.X_train[val], data.y_train[val]


def run_target_part(n_seeds=1, epochs=60, verbose=True):
    """Instance transfer judged against a target: the rows of :data:`TARGET_ROWS`.

    Returns
    -------
    rows : list of dict
    """

    from .classification import TransferClassifier
    from .datasets import load_digits_transfer
    from .models import pretrain_source_cnn
    from .selection import (
        DomainClassifierSelector,
        InfluenceSampleSelector,
        LossSelector,
        RandomSelector,
    )

    rows = []
    for seed in range(n_seeds):
        data = load_digits_transfer(noise=0.0, random_state=seed)
        source = pretrain_source_cnn(data.X_source, data.y_source, random_state=seed)
        X, y, domain, X_val, y_val = mixed_pool(data, seed=seed)
        if verbose:
            print(f"[target, seed {seed}] pool: {(domain < 0).sum()} target digits + "
                  f"{(domain > 0).sum()} correctly labelled digits rotated by 90 "
                  f"degrees; {len(y_val)} clean target digits as X_val", flush=True)
        base = TransferClassifier(source, max_epochs=epochs, lr=3e-3,
                                  backbone_lr_scale=1.0, batch_size=32, device="cpu",
                                  random_state=seed)
        common = dict(alpha=1e-2, random_state=seed)
        harmful = domain > 0
        sel = {"finetune_all": fit_selection(None, X, y)}
        sel["influence_defaults"] = fit_selection(
            InfluenceSampleSelector(base, random_state=seed), X, y, is_corrupted=harmful,
            sample_domain=domain)
        sel["influence"] = fit_selection(
            InfluenceSampleSelector(base, threshold=None, max_remove="auto", **common),
            X, y, is_corrupted=harmful, X_val=X_val, y_val=y_val, sample_domain=domain)
        count = sel["influence"]["n_removed"]
        sel["domain"] = fit_selection(DomainClassifierSelector(base, **common), X, y,
                                      is_corrupted=harmful, sample_domain=domain)
        sel["loss@count"] = fit_selection(LossSelector(base, max_remove=count, **common),
                                          X, y, is_corrupted=harmful,
                                          sample_domain=domain)
        sel["random@count"] = fit_selection(RandomSelector(count, random_state=seed), X, y,
                                            is_corrupted=harmful, with_scores=False,
                                            sample_domain=domain)
        sel["target_only"] = {"mask": domain < 0, "n_removed": int(harmful.sum()),
                              "seconds": 0.0, "auroc": np.nan, "precision": 1.0,
                              "recall": 1.0}
        for label, _ in TARGET_ROWS:
            if label == "search":
                clf, secs, s = _search(base, X, y, domain, harmful, seed, verbose)
            else:
                s = sel[label]
                clf, secs = finetune(base, X, y, s["mask"])
            acc = float(clf.score(data.X_test, data.y_test))
            rows.append({"method": label, "seed": seed, "accuracy": acc,
                         "n_removed": s["n_removed"],
                         "target_removed": int((~s["mask"] & (domain < 0)).sum()),
                         "auroc": s["auroc"], "precision": s["precision"],
                         "recall": s["recall"], "score_seconds": s["seconds"],
                         "fit_seconds": secs})
            if verbose:
                print(f"  {label:<14} test accuracy {acc:.3f}  removed "
                      f"{s['n_removed']:4d}  ({secs:.1f}s)", flush=True)
    return rows


def _search(base, X, y, domain, harmful, seed, verbose):
    """The search that decides by the target: fitted, with its report."""
    import tempfile

    import sklearn
    from sklearn.base import clone
    from sklearn.model_selection import GridSearchCV

    from .metrics import make_target_scorer
    from .model_selection import TargetStratifiedKFold, search_report, selector_grid

    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="skitl-demo-") as cache, \
            sklearn.config_context(enable_metadata_routing=True):
        search = GridSearchCV(
            clone(base).set_fit_request(sample_domain=True),
            selector_grid(memory=cache, cv=3, random_state=seed),
            cv=TargetStratifiedKFold(3, shuffle=True, random_state=seed),
            scoring=make_target_scorer(), error_score="raise")
        search.fit(X, y, sample_domain=domain)
    secs = time.perf_counter() - t0
    report = search_report(search)
    if verbose:
        print("  search over the selector, scored on held-out target digits:")
        print("    " + report.text.replace("\n", "\n    "))
        print(f"    pick: {report.best}"
              + ("" if report.resolved else f" (within noise of: {', '.join(report.tied)})"),
              flush=True)
    best = search.best_estimator_
    kept = (np.ones(len(y), bool) if best.selector_ is None else best.selector_.support_)
    removed = ~kept
    s = {"mask": kept, "n_removed": int(removed.sum()), "seconds": secs,
         "auroc": np.nan,
         "precision": float(harmful[removed].mean()) if removed.any() else np.nan,
         "recall": float(removed[harmful].mean())}
    return best, secs, s


def run_demo(noise=(0.3,), n_seeds=1, epochs=60, methods=None, out="skitl-demo",
             verbose=True, parts=("target", "noise")):
    """Run the demo and write its tables and plots into ``out``.

    Parameters
    ----------
    noise : sequence of float, default=(0.3,)
        Symmetric noise rates of the target training labels.
    n_seeds : int, default=1
        Seeds per noise rate.
    epochs : int, default=60
        Fine-tuning epochs (no early stopping).
    methods : sequence of str, optional
        Labels from :data:`METHODS` to run; all by default.
    out : str, default="skitl-demo"
        Output folder.
    verbose : bool, default=True
        Print progress.
    parts : sequence of {"target", "noise"}, default=("target", "noise")
        ``target``: a mixed pool judged against a target set
        (``results_target.csv`` / ``.md``); ``noise``: label noise in one domain
        (``results.csv`` / ``.md`` / ``accuracy.png``).

    Returns
    -------
    status : int
        0 on success.
    """
    import torch

    from .classification import TransferClassifier
    from .datasets import load_digits_transfer
    from .models import pretrain_source_cnn

    # a tiny CNN on 8x8 images: thread start-up costs more than it saves
    torch.set_num_threads(1)
    os.makedirs(out, exist_ok=True)
    t_start = time.perf_counter()
    if "target" in parts:
        trows = run_target_part(n_seeds=n_seeds, epochs=epochs, verbose=verbose)
        tsummary = summarise(trows, ["method"], extras=(
            "n_removed", "target_removed", "precision", "recall", "auroc",
            "score_seconds", "fit_seconds"))
        tcols = ["method", "accuracy_mean", "accuracy_std", "n_removed",
                 "target_removed", "precision", "recall", "auroc", "score_seconds",
                 "fit_seconds", "n_runs"]
        ttable = markdown_table(tsummary, tcols)
        print("\nTarget part: a pool of target digits and harmful, correctly labelled "
              "rotated digits (precision / recall against the rotated ones)\n")
        print(ttable)
        _write_csv(os.path.join(out, "results_target.csv"), trows)
        with open(os.path.join(out, "results_target.md"), "w") as fh:
            fh.write(ttable + "\n")
        if "noise" not in parts:
            print(f"\nwrote {out}/results_target.csv and {out}/results_target.md in "
                  f"{time.perf_counter() - t_start:.0f}s")
            return 0
        print("\nNoise part: one domain, noisy target labels\n")
    chosen = [m for m in METHODS if methods is None or m[0] in methods]
    if methods is not None:
        unknown = set(methods) - {m[0] for m in METHODS}
        if unknown:
            raise SystemExit(f"unknown methods {sorted(unknown)}; "
                             f"choose from {[m[0] for m in METHODS]}")
    if not cleanlab_available():
        chosen = [m for m in chosen if m[2] != "cleanlab"]
        print("cleanlab is not installed: skipping finetune+cleanlab "
              '(pip install "skitl[cleanlab]")')
    selectors = sorted({m[2] for m in chosen}, key=lambda s: s != "influence_auto")
    rows = []
    n_total = len(noise) * n_seeds
    run = 0
    for rate in noise:
        for seed in range(n_seeds):
            run += 1
            data = load_digits_transfer(noise=rate, random_state=seed)
            t0 = time.perf_counter()
            source_net = pretrain_source_cnn(data.X_source, data.y_source, random_state=seed)
            src_acc = float((source_net(torch.as_tensor(data.X_test)).argmax(1).numpy()
                             == data.y_test).mean())
            if verbose:
                print(f"[{run}/{n_total}] noise {rate:.2f} seed {seed}: source CNN "
                      f"pretrained in {time.perf_counter() - t0:.1f}s, accuracy on the "
                      f"target test set before transfer {src_acc:.3f}", flush=True)
            base = TransferClassifier(
                source_net, strategy="finetune", max_epochs=epochs, lr=3e-3,
                backbone_lr_scale=1.0, batch_size=32, device="cpu", random_state=seed,
            )
            sel = run_selectors(selectors, base, data.X_train, data.y_train,
                                is_corrupted=data.is_corrupted, random_state=seed,
                                alpha=1e-2, verbose=verbose)
            for label, strategy, sname in chosen:
                params = {"strategy": strategy}
                if strategy == "partial":
                    params["reinit"] = PARTIAL_REINIT
                s = sel[sname]
                clf, secs = finetune(base, data.X_train, data.y_train, s["mask"],
                                     **params)
                acc = float(clf.score(data.X_test, data.y_test))
                row = {"method": label, "noise": rate, "seed": seed, "accuracy": acc,
                       "n_removed": s["n_removed"], "auroc": s["auroc"],
                       "precision": s["precision"], "recall": s["recall"],
                       "score_seconds": s["seconds"] if sname != "none" else 0.0,
                       "fit_seconds": secs}
                rows.append(row)
                if verbose:
                    print(f"  {label:<26} test accuracy {acc:.3f}  removed "
                          f"{s['n_removed']:4d}  ({secs:.1f}s)", flush=True)
    summary = summarise(rows, ["noise", "method"])
    cols = ["noise", "method", "accuracy_mean", "accuracy_std", "n_removed", "precision",
            "recall", "auroc", "score_seconds", "fit_seconds", "n_runs"]
    table = markdown_table(summary, cols)
    print()
    print(table)
    _write_csv(os.path.join(out, "results.csv"), rows)
    with open(os.path.join(out, "results.md"), "w") as fh:
        fh.write(table + "\n")
    png = os.path.join(out, "accuracy.png")
    _plot(summary, png)
    print(f"\nwrote {out}/results.csv, {out}/results.md and {png} "
          f"in {time.perf_counter() - t_start:.0f}s")
    return 0


def _write_csv(path, rows):
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


def _plot(summary, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = list(dict.fromkeys(r["method"] for r in summary))
    noises = sorted({r["noise"] for r in summary})
    fig, ax = plt.subplots(figsize=(9, 4.5))
    width = 0.8 / max(1, len(noises))
    x = np.arange(len(methods))
    for j, rate in enumerate(noises):
        vals = [next((r for r in summary if r["method"] == m and r["noise"] == rate), None)
                for m in methods]
        means = [np.nan if v is None else v["accuracy_mean"] for v in vals]
        stds = [0 if v is None else v["accuracy_std"] for v in vals]
        ax.bar(x + j * width - 0.4 + width / 2, means, width, yerr=stds,
               label=f"noise {rate:.0%}", capsize=2)
    ax.set_xticks(x)
    ax.set_xticklabels(methods, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("clean target test accuracy")
    lows = [r["accuracy_mean"] - r["accuracy_std"] for r in summary]
    ax.set_ylim(max(0.0, np.floor(10 * min(lows)) / 10 - 0.05), 1.0)
    ax.set_title("skitl demo: digits source → shifted, noisy target")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
