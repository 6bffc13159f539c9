"""Fidelity of influence scores: LDS on a fine-tuned CNN, leave-one-out on the head.

1. **Linear datamodeling score (LDS)**, the protocol of TRAK and dattri. A
   small CNN (skitl's ``SmallCNN``) is pretrained on the source digits of
   :func:`skitl.datasets.load_digits_transfer` and fine-tuned on the target
   training set with a fixed, deterministic schedule (full-batch Adam, all
   layers, L2 ``(alpha/2)‖θ_w‖²`` on the weights — the objective the
   influence scores assume). Every method scores the training samples at that
   fine-tuned network against the mean loss of a held-out target validation
   set. Then ``--subsets`` random halves ``S_j`` of the training set are drawn
   and the network is fine-tuned again from the source weights on each, with
   the same schedule, and its validation loss ``L(S_j)`` measured. A score
   predicts ``L(S_j) ≈ L(full) − Σ_{i∈S_j} scores[i] + const`` (a score is
   the loss increase when the sample is removed), so

       LDS = Spearman( −Σ_{i∈S_j} scores[i],  L(S_j) )   over the subsets j.

   Methods: skitl head (exact, the head refitted on the features), skitl deep
   GGN–CG (converged), deep EK-FAC, deep identity (gradient similarity),
   captum ``TracInCPFast`` (final layer only: its design) and kronfluence
   EK-FAC on the same layers as skitl's deep methods.

2. **Leave-one-out on the head** (``--loo``): multinomial logistic regression
   on the digits pixels, refitted without each sample to a tight tolerance;
   Pearson / Spearman of the predicted against the actual change of the
   validation loss (the head path is exact, so this is the sharp check).

Examples
--------
    python benchmarks/bench_influence_fidelity.py --threads 1
    python benchmarks/bench_influence_fidelity.py --quick --threads 1
"""

import copy
import time
import traceback
import warnings

import _harness
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from _influence_peers import kronfluence_scores, tracin_fast_scores
from scipy.stats import pearsonr, spearmanr
from sklearn.datasets import load_digits

from skitl.datasets import load_digits_transfer
from skitl.influence import (
    deep_influence,
    fit_head,
    head_influence,
    influence_scores,
    predict_proba_head,
)
from skitl.influence._prior import resolve_alpha
from skitl.models import pretrain_source_cnn


# --------------------------------------------------------------------- LDS --
def finetune(source_net, X, y, *, steps, lr, alpha):
    """Full-batch Adam on all layers from the source weights: deterministic."""
    net = copy.deepcopy(source_net).train()
    Xt, yt = torch.from_numpy(X), torch.from_numpy(y)
    weights = [p for n, p in net.named_parameters() if not n.endswith("bias")]
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    for _ in range(steps):
        opt.zero_grad()
        loss = F.cross_entropy(net(Xt), yt)
        loss = loss + 0.5 * alpha * sum((w ** 2).sum() for w in weights)
        loss.backward()
        opt.step()
    return net.eval()


def mean_loss(net, X, y):
    with torch.no_grad():
        return float(F.cross_entropy(net(torch.from_numpy(X)), torch.from_numpy(y)))


def lds(args):
    d = load_digits_transfer(noise=args.noise, random_state=args.seed)
    n, m = args.n_train, args.n_val
    Xtr, ytr = d.X_train[:n], d.y_train[:n]
    Xv, yv = d.X_test[:m], d.y_test[:m]
    t = time.perf_counter()
    source = pretrain_source_cnn(d.X_source, d.y_source, width=args.width,
                                 epochs=args.pretrain_epochs, random_state=args.seed)
    t_pre = time.perf_counter() - t
    sched = dict(steps=args.steps, lr=args.lr, alpha=args.alpha)
    t = time.perf_counter()
    net = finetune(source, Xtr, ytr, **sched)
    t_ft = time.perf_counter() - t
    n_par = sum(p.numel() for p in net.parameters())
    print(f"LDS: digits transfer (noise {args.noise}), SmallCNN width {args.width} "
          f"({n_par} parameters) pretrained on {len(d.X_source)} source digits in "
          f"{t_pre:.1f}s; fine-tuned on {n} target samples: full-batch Adam lr {args.lr}, "
          f"{args.steps} steps, alpha {args.alpha} ({t_ft:.2f}s); {m} validation samples; "
          f"validation loss {mean_loss(net, Xv, yv):.4f}")

    deep_params = args.deep_params
    layers = sorted({p.removesuffix(".*") for p in deep_params}) if deep_params != ["all"] \
        else [nm for nm, mod in net.named_modules() if isinstance(mod, (nn.Conv2d, nn.Linear))]
    params = "all" if deep_params == ["all"] else deep_params
    deep = dict(alpha=args.alpha, params=params, batch_size=args.batch_size)
    methods = [
        ("skitl head, exact (head refitted on features)",
         lambda: influence_scores(net, Xtr, ytr, Xv, yv, params="head", alpha=args.alpha)),
        (f"skitl deep GGN-CG ({' '.join(deep_params)})",
         lambda: deep_influence(net, Xtr, ytr, Xv, yv, hessian="ggn", **deep)),
        (f"skitl deep EK-FAC ({' '.join(deep_params)})",
         lambda: deep_influence(net, Xtr, ytr, Xv, yv, hessian="ekfac", **deep)),
        (f"skitl deep identity ({' '.join(deep_params)})",
         lambda: deep_influence(net, Xtr, ytr, Xv, yv, hessian="identity", **deep)),
        ("captum TracInCPFast (fc)",
         lambda: tracin_fast_scores(net, net.fc, Xtr, ytr, Xv, yv,
                                    batch_size=args.batch_size)),
        (f"kronfluence EK-FAC ({' '.join(layers)})",
         lambda: kronfluence_scores(net, Xtr, ytr, Xv, yv, layers,
                                    batch_size=args.batch_size, query_batch=len(Xv))),
    ]
    scored = []
    for name, fn in methods:
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                t = time.perf_counter()
                out = fn()
                sec = time.perf_counter() - t
            sc = out if isinstance(out, np.ndarray) else out.scores
            note = "" if isinstance(out, np.ndarray) else (
                f"damping {out.damping:.1e}, residual {out.residual:.1e}, {out.n_iter} it")
            conv = [str(w.message)[:50] for w in caught
                    if w.category.__name__ == "ConvergenceWarning"]
            scored.append((name, sc, sec, note + (f"; WARNING {conv[0]}" if conv else "")))
        except Exception as exc:
            traceback.print_exc()
            scored.append((name, None, float("nan"), f"FAILED: {type(exc).__name__}: {exc}"))

    rng = np.random.default_rng(args.seed + 1)
    masks = np.zeros((args.subsets, n), dtype=bool)
    losses = np.empty(args.subsets)
    t = time.perf_counter()
    for j in range(args.subsets):
        idx = rng.choice(n, n // 2, replace=False)
        masks[j, idx] = True
        losses[j] = mean_loss(finetune(source, Xtr[idx], ytr[idx], **sched), Xv, yv)
    t_retrain = time.perf_counter() - t
    print(f"retraining: {args.subsets} random halves (seed {args.seed + 1}) in "
          f"{t_retrain:.1f}s; validation loss over subsets {losses.mean():.4f} "
          f"± {losses.std():.4f}")
    print(f"\n{'method':52s} {'LDS':>7s} {'seconds':>8s}  notes")
    for name, sc, sec, note in scored:
        if sc is None:
            print(f"{name:52s} {'-':>7s} {sec:8.2f}  {note}")
            continue
        pred = -(masks.astype(np.float64) @ sc)
        rho = spearmanr(pred, losses)[0]
        print(f"{name:52s} {rho:7.3f} {sec:8.2f}  {note}")


# --------------------------------------------------------------------- LOO --
def val_loss(Fv, yv, W, b):
    P = predict_proba_head(Fv, W, b)
    return -np.log(P[np.arange(len(yv)), yv]).mean()


def head_loo(args):
    X, y = load_digits(return_X_y=True)
    rng = np.random.default_rng(args.seed)
    idx = rng.permutation(len(X))
    X, y = X[idx] / 16.0, y[idx]
    n, m = args.loo_n_train, 300
    F_, yt, Fv, yv = X[:n], y[:n], X[n:n + m], y[n:n + m]
    alpha = args.loo_alpha
    if alpha == "scale":  # the selector's default prior, resolved on these features
        alpha, _ = resolve_alpha("scale", F=F_, y=yt, n_classes=10)
    alpha = float(alpha)
    t = time.perf_counter()
    W, b = fit_head(F_, yt, 10, alpha=alpha)
    base = val_loss(Fv, yv, W, b)
    loo = np.empty(n)
    for i in range(n):
        keep = np.arange(n) != i
        W2, b2 = fit_head(F_[keep], yt[keep], 10, alpha=alpha, init=(W, b))
        loo[i] = val_loss(Fv, yv, W2, b2) - base
    t_loo = time.perf_counter() - t
    print(f"\nLOO: head on digits pixels, {n} train / {m} val, alpha {alpha}; "
          f"brute-force LOO: {n} refits in {t_loo:.1f}s")
    if args.loo_alpha == "scale":
        print("(alpha='scale': 0.1 x the mean feature variance, InfluenceSampleSelector's "
              "default)")
    print(f"{'method':52s} {'Pearson':>8s} {'Spearman':>9s} {'seconds':>8s}")
    for hess, solver in (("exact", "cholesky"), ("exact", "cg"), ("identity", "auto")):
        t = time.perf_counter()
        r = head_influence(F_, yt, Fv, yv, n_classes=10, alpha=alpha, W=W, b=b,
                           hessian=hess, solver=solver)
        sec = time.perf_counter() - t
        print(f"{f'skitl head, hessian={hess}, solver={r.solver}':52s} "
              f"{pearsonr(r.scores, loo)[0]:8.4f} {spearmanr(r.scores, loo)[0]:9.4f} "
              f"{sec:8.3f}")


def _alpha_arg(text):
    return text if text == "scale" else float(text)


def build_parser():
    ap = _harness.make_parser(__doc__, full_doc=True)
    _harness.add_arguments(ap, "quick", quick=dict(
        help="20 subsets, 150 train, 60 LOO refits (a smoke run)"))
    ap.add_argument("--n-train", type=int, default=300)
    ap.add_argument("--n-val", type=int, default=200)
    ap.add_argument("--subsets", type=int, default=50)
    ap.add_argument("--noise", type=float, default=0.2)
    ap.add_argument("--width", type=int, default=16, help="SmallCNN width")
    ap.add_argument("--pretrain-epochs", type=int, default=40)
    ap.add_argument("--steps", type=int, default=150, help="full-batch fine-tuning steps")
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--alpha", type=float, default=1e-3)
    ap.add_argument("--deep-params", nargs="+", default=["all"])
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--loo-n-train", type=int, default=150)
    ap.add_argument("--loo-alpha", type=_alpha_arg, default=1e-2,
                    help="L2 of the LOO head: a number or 'scale' (the selector's "
                         "default, resolved on the features)")
    ap.add_argument("--skip-lds", action="store_true")
    ap.add_argument("--skip-loo", action="store_true")
    _harness.add_arguments(ap, "threads", "seed", threads=dict(
        default=None, help="torch.set_num_threads (default: torch's own count)"))
    return ap


def main(argv=None):
    args = build_parser().parse_args(argv)
    if args.quick:
        args.subsets, args.n_train, args.loo_n_train = 20, 150, 60
    _harness.limit_threads(args.threads or None)
    for line in _harness.header_lines(_harness.run_info(__file__, argv)):
        print(line)
    print(f"seed {args.seed}")
    t0 = time.perf_counter()
    if not args.skip_lds:
        lds(args)
    if not args.skip_loo:
        head_loo(args)
    print(f"\ntotal {time.perf_counter() - t0:.0f}s; load average at end "
          f"{_harness.load_average()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
