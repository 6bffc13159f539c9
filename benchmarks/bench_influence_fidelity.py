"""Fidelity of head influence against brute-force leave-one-out retraining.

For every training sample the head (multinomial logistic regression with the
pinned objective) is refitted without it, to a tight tolerance, and the
actual change of the mean validation loss is compared with the predicted
``scores_`` (Pearson / Spearman). Also reported: skitl's gradient-similarity
baseline (``hessian="identity"``) and, where they run, captum's
``TracInCPFast`` and ``ArnoldiInfluenceFunction`` on the same fitted head.

Features: scikit-learn's digits (pixels / 16), optionally rescaled to an
ImageNet-like range (mean 20, max 150) with ``--imagenet-scale``.

Examples
--------
    python benchmarks/bench_influence_fidelity.py
    python benchmarks/bench_influence_fidelity.py --n-train 300 --alpha 1e-3
"""

import argparse
import os
import tempfile
import time
import traceback

import numpy as np
import torch
import torch.nn as nn
from scipy.stats import pearsonr, spearmanr
from sklearn.datasets import load_digits

from skitl.influence import fit_head, head_influence, predict_proba_head


def val_loss(Fv, yv, W, b):
    P = predict_proba_head(Fv, W, b)
    return -np.log(P[np.arange(len(yv)), yv]).mean()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n-train", type=int, default=150)
    ap.add_argument("--n-val", type=int, default=300)
    ap.add_argument("--alpha", type=float, default=1e-2)
    ap.add_argument("--imagenet-scale", action="store_true",
                    help="affinely rescale features to mean 20, max 150 (alpha rescaled)")
    ap.add_argument("--skip-captum", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    X, y = load_digits(return_X_y=True)
    rng = np.random.default_rng(args.seed)
    idx = rng.permutation(len(X))
    X = X[idx] / 16.0
    y = y[idx]
    n, m = args.n_train, args.n_val
    F, yt, Fv, yv = X[:n], y[:n], X[n:n + m], y[n:n + m]
    alpha = args.alpha
    if args.imagenet_scale:
        s = 130.0 / (F.max() - F.mean())
        o = 20.0 - s * F.mean()
        F, Fv, alpha = F * s + o, Fv * s + o, alpha * s**2
    print(f"digits features, {n} train / {m} val, d={F.shape[1]}, alpha={alpha:g}, "
          f"feature mean {F.mean():.1f} max {F.max():.1f}")

    t = time.perf_counter()
    W, b = fit_head(F, yt, 10, alpha=alpha)
    base = val_loss(Fv, yv, W, b)
    loo = np.empty(n)
    for i in range(n):
        keep = np.arange(n) != i
        W2, b2 = fit_head(F[keep], yt[keep], 10, alpha=alpha, init=(W, b))
        loo[i] = val_loss(Fv, yv, W2, b2) - base
    t_loo = time.perf_counter() - t

    rows = []
    for hess, solver in (("exact", "cholesky"), ("exact", "cg"), ("identity", "auto")):
        t = time.perf_counter()
        r = head_influence(F, yt, Fv, yv, n_classes=10, alpha=alpha, W=W, b=b,
                           hessian=hess, solver=solver)
        rows.append((f"skitl head, hessian={hess}, solver={r.solver}", r.scores,
                     time.perf_counter() - t))

    if not args.skip_captum:
        net = nn.Linear(F.shape[1], 10).double()
        with torch.no_grad():
            net.weight.copy_(torch.as_tensor(W))
            net.bias.copy_(torch.as_tensor(b))
        ds = torch.utils.data.TensorDataset(torch.as_tensor(F), torch.as_tensor(yt))
        val = (torch.as_tensor(Fv), torch.as_tensor(yv))
        ckpt = os.path.join(tempfile.mkdtemp(), "head.pt")
        torch.save(net.state_dict(), ckpt)

        def tracin():
            from captum.influence import TracInCPFast

            return TracInCPFast(net, net, ds, [ckpt],
                                loss_fn=nn.CrossEntropyLoss(reduction="sum"),
                                batch_size=64).influence(val)

        def arnoldi():
            from captum.influence._core.arnoldi_influence_function import (
                ArnoldiInfluenceFunction,
            )

            return ArnoldiInfluenceFunction(
                net, ds, ckpt, loss_fn=nn.CrossEntropyLoss(reduction="none"),
                test_loss_fn=nn.CrossEntropyLoss(reduction="none"), batch_size=64,
                arnoldi_dim=200, projection_dim=50, hessian_reg=0.0).influence(val)

        for name, fn in (("captum TracInCPFast", tracin),
                         ("captum ArnoldiInfluenceFunction (dim 200, proj 50)", arnoldi)):
            try:
                t = time.perf_counter()
                out = fn()
                rows.append((name, out.mean(0).detach().double().numpy(),
                             time.perf_counter() - t))
            except Exception as exc:
                traceback.print_exc()
                rows.append((f"{name} FAILED: {type(exc).__name__}: {exc}", None, 0.0))

    print(f"\nbrute-force LOO: {n} refits in {t_loo:.1f}s")
    print(f"{'method':58s} {'Pearson':>8s} {'Spearman':>9s} {'seconds':>8s}")
    for name, sc, t in rows:
        if sc is None:
            print(f"{name:58s} {'-':>8s} {'-':>9s}")
            continue
        print(f"{name:58s} {pearsonr(sc, loo)[0]:8.4f} {spearmanr(sc, loo)[0]:9.4f} {t:8.3f}")
    exact = rows[0][1]
    low = np.argsort(exact)[:10]
    print(f"\n10 lowest-scored samples: removing each lowers the validation loss in "
          f"{int((loo[low] < 0).sum())}/10 refits")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
