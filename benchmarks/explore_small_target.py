"""What does (not) close the gap to the oracle with 3 target images per class?

``aux_mix`` with 3 USPS images per class (``bench_target.py --task
aux_mix``): the influence defaults reach 0.772 against 0.818 for the oracle,
at AUROC 0.94. This script fine-tunes, on the same pools and with the same
protocol as ``bench_target.py``, the kept sets of variations of the
defaults, each a hypothesis about the gap:

- ``default``: ``InfluenceSampleSelector()`` with ``sample_domain``;
- ``alpha<a>``: a stronger (or weaker) fixed head prior;
- ``iter<n>``: ``n`` rounds of remove-and-rescore on what is left;
- ``top<n>``: the defaults' ranking, the ``n`` lowest removed (fewer
  removals);
- ``auto_all``: the defaults' ranking, every auxiliary sample a candidate
  (``threshold=None``) and the count chosen by the target
  (``max_remove="auto"``);
- ``share<p>``: the head weighted like the fine-tuning (the target is ``p``
  % of the head's training weight, by repetition) and validated on held-out
  target folds (3, one image per class each), scores averaged over folds;
- ``pool<a>``: cross-fitting over the pool without a target, at ``alpha=a``;
- ``split<n>``: ``n`` images per class of the target are taken out of the
  pool and validate (``X_val``); the rest stay the target that is trained on;
- ``extra``: a *separate* 3 images per class from ``X_val`` validate (the
  pool's target is still trained on): twice the distinct target images.

Usage::

    python benchmarks/explore_small_target.py --seeds 0 1 2 3 4 --variants default alpha1

Writes ``results/small_target_aux_mix.csv`` (a cell per variant x seed,
``--resume`` keeps finished cells) and ``.md`` (means and paired differences
to ``default``).
"""

import os
import re
import statistics
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import _harness  # noqa: E402
import bench_target  # noqa: E402
from _target_tasks import MAX_EPOCHS, TASK_CLASSES  # noqa: E402

VARIANTS = ("default", "extra", "auto_all", "alpha1", "alpha3", "alpha10", "alpha30", "iter2",
            "iter3", "top1000", "top1250", "top1500", "share20", "share50", "pool0.01",
            "split1", "split2")
COLUMNS = ("variant", "seed", "accuracy", "n_removed", "harmful_kept", "helpful_removed")


def _fit(estimator, X, y, seed, **fit_params):
    from skitl import InfluenceSampleSelector

    params = {k: fit_params.pop(k) for k in ("alpha", "max_remove", "threshold")
              if k in fit_params}
    sel = InfluenceSampleSelector(estimator, random_state=seed, device="cpu", **params)
    return sel.fit(X, y, **fit_params)


def _target_folds(y_t, n_folds, rng):
    fold = np.empty(len(y_t), int)
    for k in np.unique(y_t):
        members = np.flatnonzero(y_t == k)
        fold[rng.permutation(members)] = np.arange(len(members)) % n_folds
    return fold


def _share(estimator, d, seed, share):
    """Scores of a head weighted like the fine-tuning, on held-out target folds."""
    from skitl.selection import removal_mask

    F = np.asarray(bench_target.head_features(estimator, d.X, device="cpu"))
    aux, tgt = np.flatnonzero(~d.is_target), np.flatnonzero(d.is_target)
    fold = _target_folds(d.y[tgt], 3, np.random.RandomState(seed))
    scores = np.zeros(len(d.y))
    for j in range(3):
        train, val = tgt[fold != j], tgt[fold == j]
        rep = int(round(share / (1 - share) * len(aux) / len(train)))
        Xh = np.concatenate([F[aux], np.repeat(F[train], rep, 0)])
        yh = np.concatenate([d.y[aux], np.repeat(d.y[train], rep)])
        s = _fit(None, Xh, yh, seed, X_val=F[val], y_val=d.y[val])
        scores[aux] += s.scores_[:len(aux)] / 3
    cand = np.zeros(len(d.y), bool)
    cand[aux] = True
    remove, _ = removal_mask(scores, d.y, candidates=cand & (scores < 0))
    return ~remove


def select(variant, estimator, d, seed):
    """The rows of the pool kept by ``variant`` (and the rows the pool keeps at all)."""
    sd, rows = d.sample_domain, np.arange(len(d.y))
    if variant == "default":
        return _fit(estimator, d.X, d.y, seed, sample_domain=sd).support_, rows
    if variant == "extra":
        pick = bench_target._like_target(d, seed)
        return _fit(estimator, d.X, d.y, seed, sample_domain=sd, X_val=d.X_val[pick],
                    y_val=d.y_val[pick]).support_, rows
    if variant == "auto_all":
        return _fit(estimator, d.X, d.y, seed, sample_domain=sd, threshold=None,
                    max_remove="auto").support_, rows
    if variant.startswith("alpha"):
        return _fit(estimator, d.X, d.y, seed, sample_domain=sd,
                    alpha=float(variant[5:])).support_, rows
    if variant.startswith("iter"):
        keep = np.ones(len(d.y), bool)
        for _ in range(int(variant[4:])):
            idx = np.flatnonzero(keep)
            s = _fit(estimator, d.X[idx], d.y[idx], seed, sample_domain=sd[idx])
            keep[idx[~s.support_]] = False
        return keep, rows
    if variant.startswith("top"):
        return _fit(estimator, d.X, d.y, seed, sample_domain=sd,
                    max_remove=int(variant[3:])).support_, rows
    if variant.startswith("share"):
        return _share(estimator, d, seed, float(variant[5:]) / 100), rows
    if variant.startswith("pool"):
        return _fit(estimator, d.X, d.y, seed, alpha=float(variant[4:])).support_, rows
    if variant.startswith("split"):
        target = np.flatnonzero(d.is_target)
        per_class = (np.bincount(d.y[target]) > 0) * int(variant[5:])
        val = np.zeros(len(d.y), bool)
        val[target[bench_target.draw_per_class(d.y[target], per_class,
                                               np.random.RandomState(seed))]] = True
        rows = np.flatnonzero(~val)
        s = _fit(estimator, d.X[rows], d.y[rows], seed, sample_domain=sd[rows],
                 X_val=d.X[val], y_val=d.y[val])
        keep = np.zeros(len(d.y), bool)
        keep[rows[s.support_]] = True
        return keep, rows
    raise ValueError(f"unknown variant {variant!r}")


def report(cells, variants):
    by = {(c["variant"], int(c["seed"])): float(c["accuracy"]) for c in cells}
    base = {s: a for (v, s), a in by.items() if v == "default"}
    lines = ["| variant | seeds | accuracy | paired vs default (points, per seed) | mean |",
             "|---|---|---|---|---|"]
    for v in variants:
        accs = {s: a for (w, s), a in by.items() if w == v}
        if not accs:
            continue
        diffs = [100 * (accs[s] - base[s]) for s in sorted(accs) if s in base]
        sd = statistics.stdev(accs.values()) if len(accs) > 1 else 0.0
        lines.append(f"| `{v}` | {len(accs)} | {statistics.mean(accs.values()):.3f} ± "
                     f"{sd:.3f} | {', '.join(f'{x:+.1f}' for x in diffs)} | "
                     f"{statistics.mean(diffs) if diffs else float('nan'):+.1f} |")
    return lines


def build_parser():
    from skitl.datasets import default_data_dir

    found = default_data_dir()
    p = _harness.make_parser(__doc__, page="docs/target.md")
    p.add_argument("--variants", nargs="+", default=list(VARIANTS),
                   help=f"what to run besides 'default' (default: {' '.join(VARIANTS)})")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--steps", type=int, default=None,
                   help="optimizer steps of every fine-tuning")
    p.add_argument("--data-dir", default=None if found is None else str(found))
    _harness.add_arguments(p, "quick", "device")
    _harness.add_run_arguments(p, out=os.path.join("benchmarks", "results"))
    return p


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    for v in args.variants:
        if not re.fullmatch(r"default|extra|auto_all|(alpha|pool)[0-9.e-]+|(iter|top|share|split)\d+",
                            v):
            parser.error(f"unknown variant {v!r}; see the list above")
    args.task, args.settings = "aux_mix", None
    _harness.limit_threads(args.threads)
    cfg, seeds = bench_target.resolve_config(args)
    task = TASK_CLASSES["aux_mix"]("aux_mix", cfg, args)
    setting = task.settings[0]
    stem = os.path.join(args.out, "small_target_aux_mix" + (f"_{args.tag}" if args.tag
                                                             else ""))
    store = _harness.CellStore(stem + ".csv", COLUMNS, ("variant", "seed"),
                               {"task": "aux_mix", "settings": cfg}, resume=args.resume)
    run_info = _harness.run_info(__file__, argv, device=args.device)
    for seed in seeds:
        todo = [v for v in ["default", *args.variants] if not store.done(variant=v,
                                                                          seed=seed)]
        if not todo:
            continue
        d = task.data(setting, seed)
        est = task.estimator(seed)
        for v in dict.fromkeys(todo):
            keep, rows = select(v, est, d, seed)
            pred, _, _ = _harness.fit_score(
                est, d.X, d.y, np.flatnonzero(keep), d.X_test,
                sample_domain=d.sample_domain, max_epochs=MAX_EPOCHS,
                max_steps=cfg["steps"])
            removed = np.zeros(len(d.y), bool)
            removed[rows] = ~keep[rows]
            cell = dict(variant=v, seed=seed, accuracy=float(np.mean(pred == d.y_test)),
                        n_removed=int(removed.sum()),
                        harmful_kept=int((d.harmful & keep).sum()),
                        helpful_removed=int((removed & ~d.harmful & ~d.is_target).sum()))
            store.add([cell])
            print(cell, flush=True)
    lines = [f"# Closing the gap with {setting} target images per class (aux_mix)", "",
             *(f"- {x}" for x in _harness.header_lines(run_info)),
             f"- task: {task.describe().replace('<setting>', setting)}", "",
             *report(store.rows, ["default", *args.variants])]
    text = "\n".join(lines) + "\n"
    print(text)
    _harness.atomic_write(stem + ".md", text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
