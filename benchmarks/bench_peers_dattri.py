"""dattri's linear datamodeling score (LDS) for skitl beside dattri's attributors.

The protocol of dattri's MNIST + logistic-regression benchmark, run offline on
the CPU: per seed, ``--n-train`` training and ``--n-test`` query images are
drawn from the 10,000 MNIST test images (``../shared/data/mnist``, read with
:func:`skitl.datasets._real.load_mnist_test`), average-pooled to 14 x 14
(196 features in [0, 1]). One multinomial logistic regression is trained
exactly on the training part (float64 Newton, :func:`skitl.influence.fit_head`,
objective ``(1/n) sum L_i + alpha/2 ||W||^2``, bias not penalised,
``alpha = 0.1 x mean feature variance``: skitl's ``alpha="scale"``), and every
method attributes *that* model: skitl gets its weights, dattri gets them as
the state dict of an ``nn.Linear``.

Ground truth (dattri's format): ``--subsets`` random halves of the training
set, the model refitted exactly on each (same objective, same alpha), the
loss of every query under each refit, flipped in sign (what dattri's
``calculate_lds_ground_truth`` returns). The score is dattri's own
``dattri.metric.lds`` (Spearman correlation over the subsets, per query):

- **per-query LDS**: the ``(n_train, n_test)`` attribution matrix against the
  per-query losses, averaged over the queries (dattri's headline number);
  skitl's matrix is :func:`skitl.influence.attribution_matrix`;
- **mean-loss LDS**: one score per training sample against the mean test
  loss (one "query"); skitl's is :func:`skitl.influence.head_influence`, the
  others' the mean of their matrix columns.

dattri attributors (all on the CPU, float32 as dattri's benchmarks run them):
explicit influence (``IFAttributorExplicit``, the full Hessian), CG
(``IFAttributorCG``, 10 iterations as in dattri's benchmark script),
EK-FAC (``IFAttributorEKFAC``), DataInf (``IFAttributorDataInf``), TRAK
(``TRAKAttributor``, one checkpoint, 512 projections) and Grad-Dot
(``TracInAttributor``, one checkpoint): the Hessian-based ones get
``regularization=alpha`` (damping for EK-FAC), the same curvature as the
trained objective. CPU seconds are process time (``time.process_time``) with
one torch thread and one BLAS thread; the attribution timing compares the
500-query matrix with one mean-loss score (``head_influence``) in the same
run, both given the trained weights (median of ``--repeats``).

Install dattri without its dependencies (it asks only for numpy, scipy,
pyyaml and tqdm, which skitl's environment has, and ``pretty_midi`` for its
music benchmark, which is not needed here)::

    pip install --no-deps dattri==0.3.0

Examples
--------
    python benchmarks/bench_peers_dattri.py
    python benchmarks/bench_peers_dattri.py --quick
"""

import os

# dattri and OpenDataVal draw tqdm bars for every call; tqdm reads this when
# it is first imported.
os.environ.setdefault("TQDM_DISABLE", "1")

import statistics  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402

import _harness  # noqa: E402
import numpy as np  # noqa: E402

#: Every method, in the order of the table.
METHODS = ("skitl_head", "dattri_explicit", "dattri_cg", "dattri_ekfac",
           "dattri_datainf", "dattri_trak", "dattri_graddot")

COLUMNS = ("seed", "method", "lds_mean_loss", "lds_per_query", "cpu_mean_s",
           "cpu_matrix_s", "n_train", "n_test", "subsets", "alpha")

PAGE = "docs/peers.md"


def parse_args(argv=None):
    p = _harness.make_parser(__doc__, page=PAGE)
    p.add_argument("--data", choices=("mnist", "digits"), default="mnist",
                   help="MNIST test images pooled to 14x14, or scikit-learn's 8x8 "
                        "digits (no files needed)")
    p.add_argument("--data-dir", default=None,
                   help="folder holding mnist/ (default: skitl's default_data_dir)")
    p.add_argument("--n-train", type=int, default=5000)
    p.add_argument("--n-test", type=int, default=500)
    p.add_argument("--subsets", type=int, default=50,
                   help="random halves refitted for the ground truth")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    p.add_argument("--repeats", type=int, default=3,
                   help="timings of skitl's two calls: the median of this many")
    _harness.add_arguments(
        p, "quick", "resume", "threads", "out", "tag", "quiet",
        quick=dict(help="1 seed, 500 training and 50 query images, 8 subsets "
                        "(seconds)"),
        out=dict(default="benchmarks/results"))
    args = p.parse_args(argv)
    if args.quick:
        args.seeds, args.n_train, args.n_test, args.subsets = [0], 500, 50, 8
        args.repeats = 1
    if args.tag is None and args.quick:
        args.tag = "quick"
    return args


# ----------------------------------------------------------------------- data --
def load_data(source, data_dir=None):
    """Features in [0, 1] and labels: pooled MNIST test images or sklearn digits."""
    if source == "digits":
        from sklearn.datasets import load_digits

        X, y = load_digits(return_X_y=True)
        return X / 16.0, y.astype(np.int64)
    from skitl.datasets._real import load_mnist_test

    images, labels = load_mnist_test(data_dir)
    x = images.astype(np.float64).reshape(-1, 14, 2, 14, 2).mean(axis=(2, 4)) / 255.0
    return x.reshape(len(x), -1), labels.astype(np.int64)


def split(X, y, n_train, n_test, seed):
    """Disjoint random training and query parts."""
    order = np.random.default_rng(seed).permutation(len(y))
    tr, te = order[:n_train], order[n_train:n_train + n_test]
    return X[tr], y[tr], X[te], y[te]


def query_losses(F, y, W, b):
    from skitl.influence import predict_proba_head

    P = predict_proba_head(F, W, b)
    return -np.log(np.clip(P[np.arange(len(y)), y], 1e-300, None))


def ground_truth(F, y, Fq, yq, *, k, alpha, subsets, seed):
    """dattri's LDS ground truth from exact refits on random halves.

    Returns ``(values, indices)``: ``values`` (subsets, n_query) is minus the
    loss of each query under the model refitted on ``indices`` (subsets,
    n // 2), as ``dattri.metric.calculate_lds_ground_truth`` returns it.
    """
    import torch

    from skitl.influence import fit_head

    rng = np.random.default_rng(10_000 + seed)
    n = len(y)
    idx = np.stack([np.sort(rng.choice(n, n // 2, replace=False))
                    for _ in range(subsets)])
    values = np.empty((subsets, len(yq)))
    for s, rows in enumerate(idx):
        W, b = fit_head(F[rows], y[rows], k, alpha=alpha)
        values[s] = -query_losses(Fq, yq, W, b)
    return torch.from_numpy(values), torch.from_numpy(idx)


def lds_of(score, gt):
    """dattri's ``lds``: mean Spearman over the queries (NaNs dropped)."""
    import torch
    from dattri.metric import lds

    score = torch.as_tensor(np.asarray(score, dtype=np.float64))
    if score.ndim == 1:
        score = score[:, None]
    corr, _ = lds(score, gt)
    corr = corr[~torch.isnan(corr)]
    return float(corr.mean()) if len(corr) else float("nan")


# -------------------------------------------------------------------- methods --
def _cpu(fn, repeats=1):
    """``(result, median CPU seconds)`` of ``fn()`` run ``repeats`` times."""
    times, out = [], None
    for _ in range(max(1, repeats)):
        t0 = time.process_time()
        out = fn()
        times.append(time.process_time() - t0)
    return out, statistics.median(times)


def skitl_head(F, y, Fq, yq, W, b, *, k, alpha, repeats):
    """skitl: the mean-loss score and the attribution matrix, timed apart."""
    from skitl.influence import attribution_matrix, head_influence

    res, t_mean = _cpu(lambda: head_influence(F, y, Fq, yq, n_classes=k, alpha=alpha,
                                              W=W, b=b), repeats)
    A, t_matrix = _cpu(lambda: attribution_matrix(F, y, Fq, yq, n_classes=k,
                                                  alpha=alpha, W=W, b=b), repeats)
    return res.scores, A, t_mean, t_matrix


def _linear(W, b):
    import torch
    from torch import nn

    class Linear(nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = nn.Linear(W.shape[1], W.shape[0])

        def forward(self, x):
            return self.linear(x)

    model = Linear()
    with torch.no_grad():
        model.linear.weight.copy_(torch.as_tensor(W, dtype=torch.float32))
        model.linear.bias.copy_(torch.as_tensor(b, dtype=torch.float32))
    return model.eval()


def dattri_method(name, F, y, Fq, yq, W, b, *, alpha):
    """One dattri attributor on the trained model: ``(matrix, CPU seconds)``."""
    import torch
    from dattri.algorithm import (
        IFAttributorCG,
        IFAttributorDataInf,
        IFAttributorEKFAC,
        IFAttributorExplicit,
        TracInAttributor,
        TRAKAttributor,
    )
    from dattri.task import AttributionTask
    from torch import nn
    from torch.utils.data import DataLoader, TensorDataset

    model = _linear(W, b)
    train = TensorDataset(torch.as_tensor(F, dtype=torch.float32), torch.as_tensor(y))
    test = TensorDataset(torch.as_tensor(Fq, dtype=torch.float32), torch.as_tensor(yq))
    full_loader = DataLoader(train, batch_size=len(train), shuffle=False)
    train_loader = DataLoader(train, batch_size=500, shuffle=False)
    test_loader = DataLoader(test, batch_size=500, shuffle=False)
    ce = nn.CrossEntropyLoss()

    def loss_if(params, data):  # dattri's benchmark loss for the IF attributors
        x, label = data
        return ce(torch.func.functional_call(model, params, x), label.long())

    def loss_one(params, data):  # per-sample form (TRAK, TracIn)
        x, label = data
        logits = torch.func.functional_call(model, params, x.unsqueeze(0))
        return ce(logits, label.unsqueeze(0).long())

    def margin(params, data):  # TRAK's training "loss": the logit of p_correct
        logp = -loss_one(params, data)
        return logp - torch.log(1 - torch.exp(logp))

    def p_correct(params, data):
        return torch.exp(-loss_one(params, data))

    state = {k_: v.detach().clone() for k_, v in model.state_dict().items()}
    t0 = time.process_time()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if name == "dattri_trak":
            task = AttributionTask(loss_func=margin, model=model, checkpoints=state)
            att = TRAKAttributor(task=task, correct_probability_func=p_correct,
                                 projector_kwargs={"proj_dim": 512, "device": "cpu"},
                                 device="cpu")
            att.cache(train_loader)
            with torch.no_grad():
                A = att.attribute(test_loader)
        elif name == "dattri_graddot":
            task = AttributionTask(loss_func=loss_one, model=model, checkpoints=state)
            att = TracInAttributor(task=task, weight_list=torch.ones(1),
                                   normalized_grad=False, device="cpu")
            with torch.no_grad():
                A = att.attribute(train_loader, test_loader)
        else:
            task = AttributionTask(loss_func=loss_if, model=model, checkpoints=state)
            if name == "dattri_explicit":
                att = IFAttributorExplicit(task=task, regularization=alpha)
            elif name == "dattri_cg":
                att = IFAttributorCG(task=task, regularization=alpha, max_iter=10)
            elif name == "dattri_ekfac":
                att = IFAttributorEKFAC(task=task, module_name="linear", damping=alpha)
            elif name == "dattri_datainf":
                att = IFAttributorDataInf(task=task, regularization=alpha)
            else:
                raise ValueError(name)
            att.cache(full_loader)
            with torch.no_grad():
                A = att.attribute(train_loader, test_loader)
    seconds = time.process_time() - t0
    return np.asarray(A.detach().cpu().double().numpy()), seconds


# ----------------------------------------------------------------------- run --
def run_seed(X, y, seed, args, log, store=None):
    """Every method of one seed; each finished row goes to ``store`` at once."""
    from skitl.influence import feature_scale, fit_head

    todo = [m for m in args.methods
            if store is None or not store.done(seed=seed, method=m)]
    if not todo:
        return []
    F, yt, Fq, yq = split(X, y, args.n_train, args.n_test, seed)
    k = int(max(y.max(), yt.max(), yq.max()) + 1)
    alpha = 0.1 * feature_scale(F)
    W, b = fit_head(F, yt, k, alpha=alpha)
    t0 = time.process_time()
    gt = ground_truth(F, yt, Fq, yq, k=k, alpha=alpha, subsets=args.subsets, seed=seed)
    gt_mean = (gt[0].mean(1, keepdim=True), gt[1])
    log(f"seed {seed}: n_train {len(yt)}, n_test {len(yq)}, alpha {alpha:.4g}, "
        f"{args.subsets} refits in {time.process_time() - t0:.1f} CPU s")
    rows = []
    for name in todo:
        common = dict(seed=seed, method=name, n_train=len(yt), n_test=len(yq),
                      subsets=args.subsets, alpha=alpha)
        try:
            if name == "skitl_head":
                mean, A, t_mean, t_matrix = skitl_head(F, yt, Fq, yq, W, b, k=k,
                                                       alpha=alpha,
                                                       repeats=args.repeats)
            else:
                A, t_matrix = dattri_method(name, F, yt, Fq, yq, W, b, alpha=alpha)
                mean, t_mean = A.mean(1), t_matrix
        except Exception as exc:  # a peer that fails is reported, not fatal
            log(f"  {name}: failed ({type(exc).__name__}: {exc})")
            continue
        row = dict(common, lds_mean_loss=lds_of(mean, gt_mean),
                   lds_per_query=lds_of(A, gt), cpu_mean_s=t_mean, cpu_matrix_s=t_matrix)
        rows.append(row)
        if store is not None:
            store.add([row])
        log(f"  {name:16s} LDS mean loss {row['lds_mean_loss']:.3f}  per query "
            f"{row['lds_per_query']:.3f}  CPU {t_mean:.2f} s (mean) "
            f"{t_matrix:.2f} s (matrix)")
    return rows


def _ms(values):
    v = np.asarray([x for x in values if np.isfinite(x)], dtype=float)
    if not len(v):
        return "n/a"
    return f"{v.mean():.3f} ± {v.std():.3f}" if len(v) > 1 else f"{v.mean():.3f}"


def _sec(values):
    v = np.asarray([x for x in values if np.isfinite(x)], dtype=float)
    return "n/a" if not len(v) else f"{v.mean():.2f}"


def summarize(rows):
    """The markdown table: one line per method, mean ± sd over seeds; the timing ratio."""
    methods = [m for m in METHODS if any(r["method"] == m for r in rows)]
    lines = ["| method | LDS, mean test loss | LDS, per query | CPU s, mean-loss score "
             "| CPU s, attribution matrix |", "|---|---|---|---|---|"]
    for m in methods:
        rs = [r for r in rows if r["method"] == m]
        mean_cpu = "(from the matrix)" if m != "skitl_head" else _sec(
            [r["cpu_mean_s"] for r in rs])
        lines.append(f"| {m} | {_ms([r['lds_mean_loss'] for r in rs])} | "
                     f"{_ms([r['lds_per_query'] for r in rs])} | {mean_cpu} | "
                     f"{_sec([r['cpu_matrix_s'] for r in rs])} |")
    sk = [r for r in rows if r["method"] == "skitl_head"]
    if sk:
        ratios = [r["cpu_matrix_s"] / max(r["cpu_mean_s"], 1e-9) for r in sk]
        q = sk[0]["n_test"]
        lines += ["", f"Attribution timing: skitl's {q}-query matrix took "
                      f"{np.mean(ratios):.2f}x the CPU time of one mean-loss score "
                      f"(per seed: {', '.join(f'{x:.2f}' for x in ratios)}; goal <= 2x)."]
    return lines


def result_stem(args):
    return os.path.join(args.out, "peers_dattri" + (f"_{args.tag}" if args.tag else ""))


def write_markdown(rows, args, info, lines_after=()):
    """Write ``peers_dattri[_tag].md`` (the CSV is written cell by cell); its path."""
    md_path = result_stem(args) + ".md"
    head = rows[0] if rows else {}
    md = ["# skitl beside dattri: linear datamodeling score", "",
          *[f"- {line}" for line in _harness.header_lines(info)],
          f"- data: {args.data}, {head.get('n_train')} training / {head.get('n_test')} "
          f"query images, {args.subsets} exact refits on random halves, seeds "
          f"{', '.join(map(str, sorted({r['seed'] for r in rows})))}", "",
          *summarize(rows), "", *lines_after]
    _harness.atomic_write(md_path, "\n".join(md).rstrip() + "\n")
    return md_path


def main(argv=None):
    args = parse_args(argv)
    _harness.limit_threads(args.threads, blas=True)
    info = _harness.run_info(__file__, argv, threads=args.threads)
    log = _harness.Log(None, echo=not args.quiet)
    for line in _harness.header_lines(info):
        log(line)
    try:
        import dattri  # noqa: F401
    except ImportError as exc:
        raise SystemExit("dattri is not installed: pip install --no-deps dattri==0.3.0"
                         ) from exc
    config = dict(data=args.data, n_train=args.n_train, n_test=args.n_test,
                  subsets=args.subsets)
    store = _harness.CellStore(result_stem(args) + ".csv", COLUMNS, ("seed", "method"),
                               config, resume=args.resume)
    if store.n_resumed:
        log(f"resumed {store.n_resumed} cells from {store.path}")
    X, y = load_data(args.data, args.data_dir)
    for seed in args.seeds:
        run_seed(X, y, seed, args, log, store)
    rows = [r for r in store.rows if r["seed"] in args.seeds
            and r["method"] in args.methods]
    for line in summarize(rows):
        log(line)
    md = write_markdown(rows, args, info, lines_after=["## Log of this run", "", "```",
                                                       *log.lines, "```"])
    log(f"wrote {store.path}, {md}")
    return rows


if __name__ == "__main__":
    main()
