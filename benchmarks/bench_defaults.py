#!/usr/bin/env python
"""Which head prior and which target validation rank the harmful samples best?

The defaults of ``InfluenceSampleSelector`` -- the head's L2 strength
``alpha`` and, with ``sample_domain``, how the target validates
(``target_validation``) -- decided by measurement on every task the project
has: the target tasks of ``bench_target.py`` (harm that is correctly
labelled, mixed pools, shortcuts, imbalance, an auxiliary pool that both
helps and hurts) and the label-noise tasks of ``bench_transfer.py``.

Ranking quality only (the accuracy after selection is ``bench_target.py``'s
and ``bench_transfer.py``'s job): for each task and seed the pretrained
network's head features are computed once, and each variant scores them
with the selector itself (``estimator=None`` on the features, so exactly the
selector's scores). Reported per variant: the AUROC of ``-scores`` for the
harmful samples among the removal candidates (auxiliary samples with
``sample_domain``), the share of harmful and of other candidates scored
below 0 (what the default rule removes), and for the imbalance task the
share of the minority scored below 0. Alongside, the baselines on the same
features: out-of-fold loss and the domain classifier.

``alpha`` is tried on a fixed grid and as a multiple of the features' scale
(``alpha = c * s`` with ``s`` the mean variance of a feature,
``trace(Cov(F)) / d``): a rule that reads the feature scale travels across
networks where a fixed value does not.

Examples
--------
::

    python benchmarks/bench_defaults.py --tasks aux_mix digits_noise --seeds 0 1 2
    python benchmarks/bench_defaults.py --quick
"""

import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _harness  # noqa: E402
import _target_tasks as tt  # noqa: E402

#: Fixed values of alpha, and multiples of the feature scale.
ALPHAS = (1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0)
RELATIVE = (1e-3, 1e-2, 3e-2, 1e-1, 3e-1, 1.0)

#: Tasks: target tasks (from _target_tasks) and label-noise tasks (here).
NOISE_TASKS = ("digits_pixels_noise", "digits_noise", "mnist_usps_noise",
               "mnist_usps_asym", "cifar10_noise")
TARGET_TASKS = ("aux_mix", "mnist_usps_rot", "mnist_usps_plain", "spurious",
                "spurious_texture", "imbalance", "cifar10_aux", "digits_rot")
TASKS = TARGET_TASKS + NOISE_TASKS
COLUMNS = ("task", "setting", "seed", "variant", "mode", "alpha_rule", "alpha",
           "feature_scale", "auroc", "harmful_below0", "other_below0",
           "minority_below0", "n_candidates", "seconds")


def build_parser():
    from skitl.datasets import default_data_dir

    found = default_data_dir()
    p = _harness.make_parser(__doc__)
    p.add_argument("--tasks", nargs="+", default=list(TASKS), choices=TASKS)
    p.add_argument("--seeds", type=int, nargs="+", default=None,
                   help="seeds (default 0 1 2; 0 with --quick)")
    p.add_argument("--data-dir", default=None if found is None else str(found))
    _harness.add_arguments(p, "quick", "threads", "out", "tag", "resume", "cache_dir",
                           "device", out=dict(default=os.path.join("benchmarks",
                                                                   "results")))
    return p


# ---------------------------------------------------------------------------
# Pools: (features of the pool, labels, sample_domain or None, X_val features,
# y_val, harmful mask, minority mask)
# ---------------------------------------------------------------------------


def _network_features(module, weights, X, device):
    from skitl import TransferClassifier
    from skitl.selection._features import compute_features
    from skitl.utils import resolve_device

    net, head = TransferClassifier(module, weights, random_state=0)._pretrained_network()
    return np.asarray(compute_features(net, head, X, batch_size=256,
                                       device=resolve_device(device)), np.float64)


def target_pool(name, setting, seed, args, quick):
    cfg = _harness.task_config(tt.CONFIGS, name, quick)
    task = tt.TASK_CLASSES[name](name, cfg, args)
    d = task.data(setting, seed)
    module, weights = task.network()
    F = _network_features(module, weights, d.X, args.device)
    Fv = _network_features(module, weights, d.X_val, args.device)
    return dict(F=F, y=d.y, sd=d.sample_domain, Fv=Fv, yv=d.y_val, harmful=d.harmful,
                minority=d.minority)


def noise_pool(name, seed, args, quick):
    from skitl.datasets import add_label_noise

    if name == "digits_pixels_noise":
        from sklearn.datasets import load_digits

        X, y = load_digits(return_X_y=True)
        idx = np.random.RandomState(seed).permutation(len(y))[: 500 if quick else 1000]
        F, y = X[idx] / 16.0, y[idx]
        noisy, bad = add_label_noise(y, 0.3, random_state=seed)
        return dict(F=F, y=noisy, harmful=bad)
    if name == "digits_noise":
        from skitl.datasets import load_digits_transfer
        from skitl.models import pretrain_source_cnn

        d = load_digits_transfer(noise=0.3, random_state=seed)
        net = pretrain_source_cnn(d.X_source, d.y_source, random_state=seed)
        F = _network_features(net, None, d.X_train, args.device)
        return dict(F=F, y=d.y_train, harmful=d.is_corrupted)
    if name in ("mnist_usps_noise", "mnist_usps_asym"):
        from skitl.datasets import load_mnist_usps
        from skitl.models import SmallCNN, pretrain_source_cnn

        src = load_mnist_usps(args.data_dir, n_source=3000 if quick else 8000,
                              n_target_train=10, random_state=0)
        epochs = 3 if quick else 10
        net, _ = _harness.cached_network(
            _harness.private_cache_dir(args.cache_dir),
            f"target_mnist16_smallcnn_n{len(src.y_source)}_e{epochs}",
            lambda: pretrain_source_cnn(src.X_source, src.y_source, n_classes=10,
                                        epochs=epochs, random_state=0),
            lambda: SmallCNN(n_classes=10))
        kind = "asymmetric" if name.endswith("asym") else "symmetric"
        d = load_mnist_usps(args.data_dir, n_source=10, n_target_train=500 if quick
                            else 1000, noise=0.3, noise_kind=kind, random_state=seed)
        return dict(F=_network_features(net, None, d.X_train, args.device), y=d.y_train,
                    harmful=d.is_corrupted)
    if name == "cifar10_noise":
        from skitl.datasets import load_cifar10_jpeg
        from skitl.models import cifar_resnet20

        path = os.path.join(args.data_dir, "cifar10_resnet_weights", "resnet20-12fca82f.th")
        d = load_cifar10_jpeg(args.data_dir, n_train=500 if quick else 2000, noise=0.3,
                              random_state=seed)
        return dict(F=_network_features(cifar_resnet20, path, d.X_train, args.device),
                    y=d.y_train, harmful=d.is_corrupted)
    raise ValueError(name)


# ---------------------------------------------------------------------------
# Variants
# ---------------------------------------------------------------------------


def modes_of(pool):
    """The validation modes a pool allows."""
    if pool.get("sd") is not None:
        return ["sd_cross_fit", "sd_whole"] + (["val"] if pool.get("Fv") is not None
                                               else [])
    if pool.get("Fv") is not None:
        return ["val"]
    return ["pool"]


def feature_scale(F):
    """Mean variance of a feature: the scale the head's prior acts against."""
    return float(np.var(F, axis=0).mean())


def score(pool, mode, alpha, seed):
    from skitl import InfluenceSampleSelector

    kw = dict(alpha=alpha, cv=3, random_state=seed)
    F, y = pool["F"], pool["y"]
    if mode == "val":
        sel = InfluenceSampleSelector(**kw).fit(F, y, pool["Fv"], pool["yv"])
    elif mode == "pool":
        sel = InfluenceSampleSelector(**kw).fit(F, y)
    else:
        sel = InfluenceSampleSelector(target_validation=mode[3:], **kw).fit(
            F, y, sample_domain=pool["sd"])
    return sel.scores_


def measure(pool, scores):
    from sklearn.metrics import roc_auc_score

    cand = pool["sd"] > 0 if pool.get("sd") is not None else np.ones(len(scores), bool)
    s = np.asarray(scores)[cand]
    out = dict(auroc=np.nan, harmful_below0=np.nan, other_below0=np.nan,
               minority_below0=np.nan, n_candidates=int(cand.sum()))
    harmful = pool.get("harmful")
    h = harmful[cand] if harmful is not None else np.zeros(len(s), bool)
    if h.any():
        out["harmful_below0"] = float((s[h] < 0).mean())
    if (~h).any():
        out["other_below0"] = float((s[~h] < 0).mean())
    if 0 < h.sum() < len(h):
        out["auroc"] = float(roc_auc_score(h, -s))
    if pool.get("minority") is not None:
        out["minority_below0"] = float((s[pool["minority"][cand]] < 0).mean())
    return out


def baselines(pool, seed):
    from skitl.selection import DomainClassifierSelector, LossSelector

    F, y = pool["F"], pool["y"]
    out = {"loss": LossSelector(cv=3, random_state=seed).fit(F, y).scores_}
    if pool.get("sd") is not None:
        out["domain"] = DomainClassifierSelector(cv=3, random_state=seed).fit(
            F, y, sample_domain=pool["sd"]).scores_
    elif pool.get("Fv") is not None:
        out["domain"] = DomainClassifierSelector(cv=3, random_state=seed).fit(
            F, y, pool["Fv"], pool["yv"]).scores_
    return out


def run(args):
    import warnings

    _harness.limit_threads(args.threads)
    info = _harness.run_info(__file__, threads=args.threads, device=args.device)
    seeds = args.seeds if args.seeds is not None else ([0] if args.quick else [0, 1, 2])
    tag = args.tag if args.tag is not None else ("quick" if args.quick else "")
    stem = os.path.join(args.out, "defaults" + (f"_{tag}" if tag else ""))
    store = _harness.CellStore(stem + ".csv", COLUMNS, ("task", "setting", "seed"),
                               {"tasks": "defaults"}, resume=args.resume)
    print("\n".join(_harness.header_lines(info)), flush=True)
    for name in args.tasks:
        settings = (list(tt.CONFIGS[name].get("settings", [""]))
                    if name in TARGET_TASKS else [""])
        for setting in settings:
            for seed in seeds:
                key = dict(task=name, setting=setting, seed=seed)
                if store.done(**key):
                    continue
                t0 = time.perf_counter()
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    pool = (target_pool(name, setting, seed, args, args.quick)
                            if name in TARGET_TASKS else
                            noise_pool(name, seed, args, args.quick))
                    scale = feature_scale(pool["F"])
                    rows = []
                    for mode in modes_of(pool):
                        grid = [("fixed", a) for a in ALPHAS] + [
                            ("relative", c) for c in RELATIVE] + [("auto", np.nan)]
                        for rule, value in grid:
                            alpha = {"fixed": value, "relative": value * scale,
                                     "auto": "auto"}[rule]
                            t1 = time.perf_counter()
                            sc = score(pool, mode, alpha, seed)
                            rows.append(dict(
                                key, variant="influence", mode=mode, alpha_rule=rule,
                                alpha=value, feature_scale=scale,
                                seconds=time.perf_counter() - t1,
                                **measure(pool, sc)))
                    for bname, sc in baselines(pool, seed).items():
                        rows.append(dict(key, variant=bname, mode="", alpha_rule="",
                                         alpha=np.nan, feature_scale=scale, seconds=0.0,
                                         **measure(pool, sc)))
                store.add(rows)
                best = max((r for r in rows if r["variant"] == "influence"
                            and np.isfinite(r["auroc"])), key=lambda r: r["auroc"],
                           default=None)
                print(f"[{name} {setting} seed {seed}] scale {scale:.3g}; best "
                      + (f"{best['mode']} {best['alpha_rule']} {best['alpha']:g} auroc "
                         f"{best['auroc']:.3f}" if best else "(no harmful samples)")
                      + f"; {time.perf_counter() - t0:.0f}s", flush=True)
                _harness.atomic_write(stem + ".md", report(store.rows, info))
    _harness.atomic_write(stem + ".md", report(store.rows, info))
    print(report(store.rows, info))


def report(rows, info):
    """Mean AUROC per task x mode x alpha rule (seeds averaged)."""
    from skitl._experiment import markdown_table

    lines = ["# Ranking quality of the head prior and the target validation", "",
             *[f"- {line}" for line in _harness.header_lines(info)], ""]
    tasks = list(dict.fromkeys(r["task"] for r in rows))
    for task in tasks:
        sub = [r for r in rows if r["task"] == task]
        table = []
        keys = list(dict.fromkeys((r["variant"], r["mode"], r["alpha_rule"],
                                   float(r["alpha"])) for r in sub))
        for variant, mode, rule, alpha in keys:
            rs = [r for r in sub if (r["variant"], r["mode"], r["alpha_rule"]) ==
                  (variant, mode, rule) and _same(float(r["alpha"]), alpha)]
            d = {"variant": variant, "mode": mode,
                 "alpha": "" if variant != "influence" else
                 ("auto" if rule == "auto" else f"{alpha:g}" if rule == "fixed"
                  else f"{alpha:g} x scale"),
                 "seeds": len(rs)}
            for k in ("auroc", "harmful_below0", "other_below0", "minority_below0"):
                v = np.array([float(r[k]) for r in rs])
                d[k] = "–" if not np.isfinite(v).any() else (
                    f"{np.nanmean(v):.3f}" + (f" ± {np.nanstd(v):.3f}" if k == "auroc"
                                              else ""))
            table.append(d)
        scale = np.mean([float(r["feature_scale"]) for r in sub])
        lines += [f"## {task} (feature scale {scale:.3g})", "",
                  markdown_table(table, ["variant", "mode", "alpha", "seeds", "auroc",
                                         "harmful_below0", "other_below0",
                                         "minority_below0"]), ""]
    return "\n".join(lines) + "\n"


def _same(a, b):
    return (np.isnan(a) and np.isnan(b)) or a == b


def main(argv=None):
    args = build_parser().parse_args(argv)
    if args.data_dir is None:
        raise SystemExit("--data-dir is needed (../shared/data was not found).")
    run(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
