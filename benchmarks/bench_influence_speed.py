"""Influence throughput as a ratio to one forward pass, against kronfluence and captum.

Times, in one run on the same model and data: one forward pass of the network
over train + validation (the unit), skitl's exact head influence end to end,
skitl's deep influence on ``--deep-params`` (GGN + CG to a relative residual
``--deep-tol``, and EK-FAC), kronfluence's EK-FAC on the same Linear / Conv2d
layers (it supports no others) and captum's ``ArnoldiInfluenceFunction`` on the
same modules. Every deep method is compared (Spearman) with skitl's CG, the
one converged solve of the table.

The network is a torchvision ResNet-18 with random weights (``weights=None``;
the benchmark is about speed) whose head is then replaced by the exact
multinomial-logistic fit on the target features, so every method analyses the
same model. Data: the CIFAR-10 test JPEGs from ``../shared/data/cifar10_test_jpg``
when present (resized to ``--size``), random images otherwise.

Examples
--------
    python benchmarks/bench_influence_speed.py --threads 1
    python benchmarks/bench_influence_speed.py --quick --threads 1
    python benchmarks/bench_influence_speed.py --diagnose --n-train 500 --n-val 100 --threads 1
    python benchmarks/bench_influence_speed.py --diagnose --n-train 500 --n-val 100 --threads 1 \
        --repeat 1 --diagnose-preconditioners nystrom --diagnose-ranks 32 64 128 \
        --diagnose-factors 1 --diagnose-iters 300
"""

import copy
import time
import traceback
import warnings
from pathlib import Path

import _harness
import numpy as np
import torch
import torch.nn as nn
import torchvision
from _influence_peers import captum_arnoldi_scores, kronfluence_scores
from scipy.stats import spearmanr

from skitl.influence import deep_influence, influence_scores, select_parameters

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "cifar10_test_jpg"


def load_data(n, size, seed):
    rng = np.random.default_rng(seed)
    root = DATA / "test"
    if root.is_dir():
        tf = torchvision.transforms.Compose([
            torchvision.transforms.Resize(size),
            torchvision.transforms.ToTensor(),
            torchvision.transforms.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
        ])
        ds = torchvision.datasets.ImageFolder(str(root), transform=tf)
        idx = rng.choice(len(ds), n, replace=False)
        X = torch.stack([ds[i][0] for i in idx]).numpy()
        y = np.array([ds.targets[i] for i in idx])
        return X, y, f"CIFAR-10 test JPEGs ({root})"
    X = rng.standard_normal((n, 3, size, size)).astype(np.float32)
    y = rng.integers(0, 10, n)
    return X, y, "random images (CIFAR JPEGs not found)"


def sync(device):
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(fn, device):
    """Run ``fn``; return its CPU seconds (wall seconds on a GPU) and output.

    On a shared CPU machine the wall time of a one-thread run grows with the
    other jobs' load; the process CPU time does not, so ratios of CPU times
    compare the work of each method. Both are printed.
    """
    sync(device)
    t, c = time.perf_counter(), time.process_time()
    out = fn()
    sync(device)
    wall, cpu = time.perf_counter() - t, time.process_time() - c
    WALL[0] = wall
    return (wall if device.startswith("cuda") else cpu), out


WALL = [0.0]


def forward_pass(net, X, batch_size, device):
    net.eval()
    with torch.inference_mode():
        for s in range(0, len(X), batch_size):
            net(torch.from_numpy(X[s:s + batch_size]).to(device))


def tracked_modules(net, names):
    """Linear / Conv2d modules whose weight is analysed (what kronfluence can track)."""
    mods = dict(net.named_modules())
    out = []
    for name in names:
        mname, _, attr = name.rpartition(".")
        if attr == "weight" and isinstance(mods[mname], (nn.Linear, nn.Conv2d)):
            out.append(mname)
    return out


def diagnose(net, names, Xtr, ytr, Xv, yv, args, t_fwd):
    """Why GGN-CG converges slowly here: operator symmetry, float32 rounding, spectrum.

    Builds the engine's operator on the cached suffix (float32 and float64
    copies) and prints the symmetry error ``|uᵀHv − vᵀHu| / (‖u‖ ‖Hv‖)``, the
    float32 / float64 difference of ``Hv``, the largest eigenvalue (power
    iteration), each module's mean eigenvalue, and for each preconditioner and
    damping factor the CG residual (recursion and recomputed) after
    ``--diagnose-iters`` iterations (or on reaching 1e-3) with the extreme
    Ritz values of the preconditioned operator (from CG's own coefficients),
    the iterations to 1e-3 and the cost of such a solve in forward passes
    (train + val): the Nyström sketch (``nystrom``, one row per
    ``--diagnose-ranks``) plus one Hessian-vector pass per iteration.
    """
    # Private engine pieces: this is a diagnosis of the engine, not a use of it.
    from skitl.influence._deep import _val_weights
    from skitl.influence._deep_solvers import NystromPreconditioner
    from skitl.influence._ekfac import EKFAC
    from skitl.influence._operator import CurvatureOperator, _Data, _Model
    from skitl.influence._prefix import find_cut, prefix_cache
    from skitl.influence._solvers import power_iteration

    cut = find_cut(net, names)
    ctr = prefix_cache(net, Xtr, params=None, cut=cut, batch_size=args.batch_size)
    cva = prefix_cache(net, Xv, params=None, cut=cut, batch_size=args.batch_size)
    ops = {}
    for dt in (torch.float32, torch.float64):
        model = _Model(copy.deepcopy(cut.suffix).to(dt), names, "cpu")
        op = CurvatureOperator(model, _Data(ctr, ytr, "cpu", dt), hessian="ggn", alpha=0.0,
                               batch_size=len(ytr))
        ops[dt] = (op, op.mean_gradient(_Data(cva, yv, "cpu", dt), _val_weights(None, len(yv))))
    (op, g), (op64, g64) = ops[torch.float32], ops[torch.float64]
    gen = torch.Generator().manual_seed(args.seed)
    u, v = torch.randn(op.dim, generator=gen), torch.randn(op.dim, generator=gen)
    for dt, (o, _) in ops.items():
        uu, vv = u.to(dt), v.to(dt)
        Hu, Hv = o.matvec(uu), o.matvec(vv)
        err = abs(float(uu.double() @ Hv.double() - vv.double() @ Hu.double()))
        print(f"symmetry error {dt}: {err / float(uu.norm() * Hv.norm()):.1e}")
    for name, x, x64 in (("random v", v, v.double()), ("v = g_val", g, g64)):
        d = op.matvec(x).double() - op64.matvec(x64)
        print(f"float32 vs float64 Hv ({name}): relative difference "
              f"{float(d.norm() / op64.matvec(x64).norm()):.1e}")
    t = time.process_time()
    op.matvec(g)
    t_hv = t = time.process_time() - t
    print(f"one float32 Hessian-vector pass: {t:.2f} CPU s = {t / t_fwd:.2f}x forward "
          f"(train+val, {t_fwd:.2f} CPU s)")
    print(f"largest eigenvalue (power iteration, 30 steps): "
          f"{power_iteration(op.matvec, g, n_iter=30, generator=gen):.3g}")
    ek = EKFAC(op, generator=torch.Generator().manual_seed(args.seed)).fit()
    means = op.block_mean_eigenvalues(torch.Generator().manual_seed(args.seed))
    print("mean eigenvalue per module (Hutchinson): "
          + ", ".join(f"{k} {m:.2e}" for k, m in means.items()))
    print(f"{'preconditioner':>14s} {'factor':>6s} {'it':>4s} {'residual':>9s} "
          f"{'recomputed':>10s} {'Ritz min':>9s} {'Ritz max':>9s} "
          f"{'it to tol':>9s} {'sketch':>6s} {'total':>6s}  (x forward)")
    runs = [(p, r) for p in args.diagnose_preconditioners
            for r in (args.diagnose_ranks if p == "nystrom" else [None])]
    for pre_name, rank in runs:
        for factor in args.diagnose_factors:
            src = ek.block_mean_eigenvalues() if pre_name == "ekfac" else means
            lam = op.model.per_block({k: factor * m for k, m in src.items()})
            sketch = 0.0
            if pre_name == "nystrom":
                ny = NystromPreconditioner(op, lam, rank=rank,
                                           generator=torch.Generator().manual_seed(args.seed))
                sketch = time.process_time()
                pre = ny.fit().apply
                sketch = time.process_time() - sketch
                pre_name_r = f"nystrom r={rank}"
            elif pre_name == "ekfac":
                pre = lambda r, lam=lam: ek.inverse(r, lam)  # noqa: E731
            else:
                diag = op.model.per_block(src) + lam
                pre = lambda r, diag=diag: r / diag  # noqa: E731
            A = op.damped(lam)
            x, r = torch.zeros_like(g), g.clone()
            z = pre(r)
            p, rz = z.clone(), float(r.double() @ z.double())
            coef, it_tol = [], None
            for it in range(1, args.diagnose_iters + 1):
                Ap = A(p)
                a = rz / float(p.double() @ Ap.double())
                x, r = x + a * p, r - a * Ap
                if float(r.norm() / g.norm()) <= 1e-3:
                    it_tol = it
                    break
                z = pre(r)
                rz_new = float(r.double() @ z.double())
                coef.append((a, rz_new / rz))
                p, rz = z + (rz_new / rz) * p, rz_new
            # Lanczos tridiagonal of the preconditioned operator from CG's coefficients.
            k = len(coef)
            T = np.zeros((k, k))
            for j, (a, b) in enumerate(coef):
                T[j, j] = 1 / a + (coef[j - 1][1] / coef[j - 1][0] if j else 0.0)
                if j + 1 < k:
                    T[j, j + 1] = T[j + 1, j] = np.sqrt(b) / a
            ritz = np.linalg.eigvalsh(T) if k else np.full(1, np.nan)
            res = float(r.norm() / g.norm())
            true = float((A(x) - g).norm() / g.norm())
            # Cost of a solve to 1e-3: the sketch's CPU time + one Hessian-vector
            # pass per iteration and for the residual check (prefix, gradients and
            # scores come on top).
            cost = (f"{it_tol:9d} {sketch / t_fwd:6.1f} {(sketch + (it_tol + 1) * t_hv) / t_fwd:6.1f}"
                    if it_tol else f"{'>' + str(it):>9s} {sketch / t_fwd:6.1f} {'':6s}")
            label = pre_name_r if pre_name == "nystrom" else pre_name
            print(f"{label:>14s} {factor:6g} {it:4d} {res:9.2e} {true:10.2e} "
                  f"{ritz[0]:9.2e} {ritz[-1]:9.2e} {cost}", flush=True)


def build_parser():
    ap = _harness.make_parser(__doc__, full_doc=True)
    ap.add_argument("--model", default="resnet18", help="torchvision model name")
    ap.add_argument("--size", type=int, default=32, help="image side in pixels")
    ap.add_argument("--n-train", type=int, default=2000)
    ap.add_argument("--n-val", type=int, default=200)
    _harness.add_arguments(ap, "quick", quick=dict(help="500 train / 50 validation"))
    ap.add_argument("--batch-size", type=int, default=256)
    _harness.add_arguments(ap, "device")
    ap.add_argument("--alpha", type=float, default=1e-3, help="L2 of the head fit")
    ap.add_argument("--deep-params", nargs="+", default=["layer4.1", "fc"])
    ap.add_argument("--deep-tol", type=float, default=None,
                    help="CG relative residual (default: the engine's, 1e-3)")
    ap.add_argument("--deep-max-iter", type=int, default=None,
                    help="CG iterations at most (default: the engine's, 500)")
    ap.add_argument("--deep-preconditioner", default=None,
                    choices=["auto", "blocks", "ekfac", "nystrom", "none"],
                    help="CG preconditioner (default: the engine's, 'auto')")
    ap.add_argument("--deep-rank", type=int, default=None,
                    help="sketch size of --deep-preconditioner nystrom (default: the "
                         "engine's, 32)")
    ap.add_argument("--deep-damping", default="auto",
                    help="damping of the deep solves ('auto' or a float)")
    ap.add_argument("--repeat", type=int, default=3,
                    help="time the forward pass and the head influence this many times "
                         "(alternating) and keep the fastest: shared machines are noisy")
    ap.add_argument("--captum-arnoldi-dim", type=int, default=20)
    ap.add_argument("--captum-projection-dim", type=int, default=10)
    ap.add_argument("--peer-batch-size", type=int, default=32,
                    help="train batch of kronfluence and captum (their per-sample "
                         "gradients of the analysed layers are held per batch)")
    ap.add_argument("--kronfluence-query-batch", type=int, default=100,
                    help="kronfluence holds this many preconditioned query gradients")
    ap.add_argument("--skip", nargs="*", default=[],
                    choices=["cg", "ekfac", "kronfluence", "captum"])
    ap.add_argument("--diagnose", action="store_true",
                    help="only diagnose GGN-CG's convergence on --deep-params (see diagnose)")
    ap.add_argument("--diagnose-iters", type=int, default=200)
    ap.add_argument("--diagnose-factors", type=float, nargs="+", default=[0.1, 1.0])
    ap.add_argument("--diagnose-preconditioners", nargs="+", default=["blocks", "ekfac"],
                    choices=["blocks", "ekfac", "nystrom"])
    ap.add_argument("--diagnose-ranks", type=int, nargs="+", default=[16, 32, 64],
                    help="sketch sizes of the Nystrom preconditioner in the diagnosis")
    _harness.add_arguments(ap, "threads", "seed", threads=dict(
        default=None, help="torch.set_num_threads (default: torch's own count)"))
    return ap


def main(argv=None):
    args = build_parser().parse_args(argv)
    if args.quick:
        args.n_train, args.n_val = 500, 50
    _harness.limit_threads(args.threads or None)
    torch.manual_seed(args.seed)
    dev = args.device
    n, m = args.n_train, args.n_val
    X, y, source = load_data(n + m, args.size, args.seed)
    Xtr, ytr, Xv, yv = X[:n], y[:n], X[n:], y[n:]
    net = torchvision.models.get_model(args.model, weights=None, num_classes=10).to(dev).eval()
    for line in _harness.header_lines(_harness.run_info(__file__, argv, device=dev)):
        print(line)
    print(f"model {args.model} (random weights, fitted head) @ {args.size}px, {n} train / "
          f"{m} val, device {dev}, torch threads {torch.get_num_threads()}, data: {source}")

    forward_pass(net, X[: args.batch_size], args.batch_size, dev)  # warm-up
    # the public path: a TransferClassifier built from a factory and a weights
    # file (as a user has them), analysed by InfluenceSampleSelector as shipped
    import functools
    import tempfile

    from skitl import InfluenceSampleSelector, TransferClassifier

    wdir = tempfile.mkdtemp(prefix="skitl-speed-")
    wpath = str(Path(wdir) / "weights.pt")
    torch.save(net.state_dict(), wpath)
    est = TransferClassifier(functools.partial(torchvision.models.get_model, args.model,
                                               weights=None, num_classes=10),
                             wpath, device=dev, random_state=0)

    def selector():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            return InfluenceSampleSelector(est, batch_size=args.batch_size, device=dev,
                                           random_state=0).fit(Xtr, ytr, X_val=Xv,
                                                               y_val=yv)

    rows = []
    t_fwd = t_head = t_sel = float("inf")
    for _ in range(max(1, args.repeat)):
        t, _ = timed(lambda: forward_pass(net, X, args.batch_size, dev), dev)
        if t < t_fwd:
            t_fwd, w_fwd = t, WALL[0]
        t, r = timed(lambda: influence_scores(net, Xtr, ytr, Xv, yv, alpha=args.alpha,
                                              batch_size=args.batch_size, device=dev), dev)
        if t < t_head:
            t_head, res, w_head = t, r, WALL[0]
        t, sel = timed(selector, dev)
        if t < t_sel:
            t_sel, sel_res, w_sel = t, sel, WALL[0]
    rows.append((f"forward pass (train+val), best of {args.repeat}", t_fwd, "", "", w_fwd))
    rows.append((f"skitl head influence, end to end (alpha={args.alpha:g})", t_head,
                 f"{res.residual:.1e}", f"solver={res.solver}", w_head))
    info = sel_res.influence_
    rows.append(("InfluenceSampleSelector(estimator).fit, defaults", t_sel,
                 f"{info['residual']:.1e}",
                 f"solver={info['solver']}, alpha={info['alpha_rule']} "
                 f"({info['alpha']:.3g}); network built from a weights file", w_sel))

    net_fit = copy.deepcopy(net)
    with torch.no_grad():
        net_fit.fc.weight.copy_(torch.as_tensor(res.W, dtype=torch.float32))
        net_fit.fc.bias.copy_(torch.as_tensor(res.b, dtype=torch.float32))
    names = select_parameters(net_fit, args.deep_params)
    if args.diagnose:
        diagnose(net_fit, names, Xtr, ytr, Xv, yv, args, t_fwd)
        return 0
    n_par = sum(p.numel() for nm, p in net_fit.named_parameters() if nm in names)
    modules = tracked_modules(net_fit, names)
    conv_names = select_parameters(net_fit, modules)
    n_conv = sum(p.numel() for nm, p in net_fit.named_parameters() if nm in conv_names)
    damping = args.deep_damping if args.deep_damping == "auto" else float(args.deep_damping)
    print(f"deep params {args.deep_params}: {n_par} parameters; Linear/Conv2d only "
          f"({len(modules)} modules, {n_conv} parameters): {modules}")
    deep = dict(batch_size=args.batch_size, device=dev, damping=damping)
    ref = None

    def add(name, fn, note_fn):
        nonlocal ref
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                t, out = timed(fn, dev)
            scores = out if isinstance(out, np.ndarray) else out.scores
            if ref is None:
                ref = scores
            rho = spearmanr(scores, ref)[0]
            resid, note = note_fn(out)
            warn = "; ".join(sorted({str(w.message)[:60] for w in caught
                                     if issubclass(w.category, Warning)
                                     and "ConvergenceWarning" in w.category.__name__}))
            rows.append((name, t, resid, f"Spearman vs CG {rho:.3f}; {note}"
                         + (f"; WARNING {warn}" if warn else ""), WALL[0]))
            print(f"  done: {name}: {t:.1f}s", flush=True)
        except Exception as exc:  # report, never hide
            traceback.print_exc()
            rows.append((name, float("nan"), "", f"FAILED: {type(exc).__name__}: {exc}",
                         float("nan")))

    def skitl_note(r):
        s = r.seconds
        return (f"{r.residual:.1e}",
                f"{r.n_iter} it, damping {r.damping:.1e}, "
                f"preconditioner {r.info.get('preconditioner')}, passes {r.info.get('passes')}, "
                f"cut {r.info.get('prefix_cut')}, "
                + " ".join(f"{k}={v:.1f}" for k, v in s.items() if k != "total"))

    if "cg" not in args.skip:
        # Engine defaults unless set on the command line.
        cg_opts = {k: v for k, v in (("tol", args.deep_tol), ("max_iter", args.deep_max_iter),
                                     ("preconditioner", args.deep_preconditioner),
                                     ("rank", args.deep_rank))
                   if v is not None}
        if cg_opts.get("preconditioner") == "none":
            cg_opts["preconditioner"] = None
        add(f"skitl deep GGN-CG ({' '.join(args.deep_params)}, "
            f"{' '.join(f'{k} {v}' for k, v in cg_opts.items()) or 'defaults'})",
            lambda: deep_influence(net_fit, Xtr, ytr, Xv, yv, params=args.deep_params,
                                   hessian="ggn", solver="cg", **cg_opts, **deep), skitl_note)
    if "ekfac" not in args.skip:
        add(f"skitl deep EK-FAC ({' '.join(args.deep_params)}, BatchNorm full blocks)",
            lambda: deep_influence(net_fit, Xtr, ytr, Xv, yv, params=args.deep_params,
                                   hessian="ekfac", **deep), skitl_note)
        add("skitl deep EK-FAC (Linear/Conv2d only, as kronfluence)",
            lambda: deep_influence(net_fit, Xtr, ytr, Xv, yv, params=modules,
                                   hessian="ekfac", **deep), skitl_note)
    if "captum" not in args.skip:
        add(f"captum ArnoldiInfluenceFunction (arnoldi_dim {args.captum_arnoldi_dim})",
            lambda: captum_arnoldi_scores(
                net_fit, Xtr, ytr, Xv, yv, [p.removesuffix(".*") for p in args.deep_params],
                batch_size=args.peer_batch_size, device=dev,
                arnoldi_dim=args.captum_arnoldi_dim,
                projection_dim=args.captum_projection_dim),
            lambda r: ("", f"projection_dim {args.captum_projection_dim}"))

    if "kronfluence" not in args.skip:
        add("kronfluence EK-FAC (Linear/Conv2d only)",
            lambda: kronfluence_scores(net_fit, Xtr, ytr, Xv, yv, modules,
                                       batch_size=args.peer_batch_size, device=dev,
                                       query_batch=args.kronfluence_query_batch),
            lambda r: ("", "damping 0.1 x mean eigenvalue (damping_factor=None)"))
    print()
    unit = "GPU wall" if dev.startswith("cuda") else "CPU"
    print(f"{'method':60s} {unit + ' s':>8s} {'x forward':>9s} {'wall s':>8s} "
          f"{'residual':>9s}  notes")
    for name, t, resid, note, wall in rows:
        print(f"{name:60s} {t:8.2f} {t / t_fwd:9.2f} {wall:8.1f} {resid:>9s}  {note}")
    fastest = min((r for r in rows if r[0].startswith("skitl deep") and r[1] == r[1]),
                  key=lambda r: r[1], default=None)
    kron = next((r for r in rows if r[0].startswith("kronfluence") and r[1] == r[1]), None)
    if fastest and kron:
        print(f"skitl's fastest deep method ({fastest[0]}) is {kron[1] / fastest[1]:.1f}x "
              "faster than kronfluence EK-FAC")
    print(f"load average at end: {_harness.load_average()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
