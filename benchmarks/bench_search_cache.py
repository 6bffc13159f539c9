#!/usr/bin/env python
"""GridSearchCV over the removal rule: influence computed once per split with ``memory``.

A search over ``selector__threshold`` x ``selector__max_remove`` x
``strategy`` fits ``n_candidates x n_splits`` pipelines. Without a cache each
fit runs the forward pass, the exact head fit and the influence solve again,
although only the removal rule changes. With
``InfluenceSampleSelector(memory=...)`` the scores are computed once per data
split (and once for the refit): this script counts the influence computations
(calls of the selector's scoring step) and times both searches in the same run.

Example::

    python benchmarks/bench_search_cache.py --threads 1
"""

import os
import sys
import tempfile
import time

import numpy as np

# the shared harness lives next to this script
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _harness  # noqa: E402


def build_parser():
    p = _harness.make_parser(__doc__)
    p.add_argument("--n-train", type=int, default=1200)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--cv", type=int, default=3)
    _harness.add_arguments(p, "threads", "out", out=dict(
        default=os.path.join("benchmarks", "results", "search_cache_cpu.txt"),
        help="result file ('' for none)"))
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)

    from sklearn.model_selection import GridSearchCV

    import skitl.selection._influence as influence_module
    from skitl import InfluenceSampleSelector, TransferClassifier
    from skitl.datasets import load_digits_transfer
    from skitl.models import pretrain_source_cnn

    _harness.limit_threads(args.threads, flush_denormal=None)
    data = load_digits_transfer(noise=0.3, n_target_train=args.n_train, random_state=0)
    source = pretrain_source_cnn(data.X_source, data.y_source, random_state=0)
    calls = []
    original = influence_module.InfluenceSampleSelector._score

    def counting(self, *a, **k):
        calls.append(1)
        return original(self, *a, **k)

    influence_module.InfluenceSampleSelector._score = counting
    grid = {
        "selector__threshold": [0.0, -1e-4, -1e-3],
        "selector__max_remove": [None, 0.1, 0.2],
        "strategy": ["finetune", "linear_probe"],
    }
    n_candidates = int(np.prod([len(v) for v in grid.values()]))
    log = _harness.Log(args.out)
    for line in _harness.header_lines(_harness.run_info(__file__, argv)):
        log(line)
    log(f"digits transfer task, {len(data.y_train)} target training images (30 % noise), "
        f"SmallCNN; grid of {n_candidates} candidates x {args.cv} splits "
        f"(+1 refit), {args.epochs} fine-tuning epochs each")
    results = {}
    for label, memory in (("no memory", None), ("memory", "dir")):
        with tempfile.TemporaryDirectory() as cache:
            clf = TransferClassifier(
                source, max_epochs=args.epochs, lr=3e-3, backbone_lr_scale=1.0,
                batch_size=32, device="cpu", random_state=0,
                selector=InfluenceSampleSelector(
                    alpha=1e-2, cv=5, random_state=0,
                    memory=cache if memory else None),
            )
            calls.clear()
            t0 = time.perf_counter()
            search = GridSearchCV(clf, grid, cv=args.cv, error_score="raise")
            search.fit(data.X_train, data.y_train)
            secs = time.perf_counter() - t0
        results[label] = (len(calls), secs, search.cv_results_["mean_test_score"])
        log(f"{label:<10} influence computations {len(calls):3d}   search wall time "
            f"{secs:7.1f} s   best {search.best_params_}  "
            f"score {search.best_score_:.4f}")
    same = np.allclose(results["memory"][2], results["no memory"][2])
    log(f"identical cv_results_ mean_test_score with and without memory: {same}")
    log(f"influence computations: {results['no memory'][0]} -> {results['memory'][0]} "
        f"(= {args.cv} splits + 1 refit); wall time "
        f"{results['no memory'][1] / results['memory'][1]:.2f}x faster with memory")
    log.save()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
