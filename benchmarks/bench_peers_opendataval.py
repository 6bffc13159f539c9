"""OpenDataVal's own experiments with skitl's selectors as OpenDataVal data evaluators.

OpenDataVal 1.3.0 (Jiang et al., NeurIPS 2023 datasets track) is a benchmark
of data valuation: a *data evaluator* gives every training sample a value,
and OpenDataVal's experiment functions judge the values. This script runs
them unchanged on its offline data sets (``breast_cancer``,
``gaussian_classifier``, ``digits``; OpenDataVal's ``DataFetcher.setup``
with its own splits; ``gaussian_classifier`` is drawn from numpy's global
generator, which this script seeds with the seed), with 10 % of the training labels flipped by its
``mix_labels`` (``--noise``), and two validation sets:

- ``noisy``: OpenDataVal's protocol as it ships (``mix_labels`` flips 10 % of
  the validation labels too);
- ``clean``: the same draw, with the validation labels left as they were.

Per evaluator, OpenDataVal's experiments:

- **noisy-label detection**: ``exper_methods.noisy_detection`` (F1 of its
  two-cluster split of the values against the flipped samples), and the AUROC
  of the values against the flipped samples (low value = flipped;
  ``sklearn.metrics.roc_auc_score``; OpenDataVal 1.3.0 has no AUROC);
- **point removal**, both ways: ``exper_methods.remove_high_low`` (5 %
  steps; OpenDataVal's scikit-learn logistic regression, ``sklogreg``, retrained
  on what is left and scored on the test split). Summaries: test accuracy
  after removing the lowest-valued 10 % (``acc_low10``; higher = the flipped
  samples went first), mean accuracy over 0-50 % removed lowest-first
  (``low50``, higher is better) and highest-first (``high50``, lower is
  better: the valuable samples were found).

Evaluators. skitl's selectors are wrapped as OpenDataVal ``DataEvaluator``
(``scores_`` are the values, higher = keep), on the raw features (no
network: the head *is* the model):

- ``skitl_influence``: ``InfluenceSampleSelector()``, its defaults, without a
  validation set: cross-fitted on the training pool (``alpha="scale"``,
  ``val_trim="auto"``);
- ``skitl_influence_auto``: the same with ``alpha="auto"``;
- ``skitl_influence_val``: ``InfluenceSampleSelector()`` against OpenDataVal's
  validation set as ``X_val``;
- ``skitl_loss``: ``LossSelector()``, the out-of-fold loss;

and OpenDataVal's own: ``knn_shapley`` (``KNNShapley``), ``data_oob``
(``DataOob``), ``ame`` (``AME``), ``loo`` (``LeaveOneOut``),
``influence_subsample`` (``InfluenceSubsample``), ``influence_function``
(``InfluenceFunction``, first-order, on OpenDataVal's torch
``LogisticRegression`` trained for ``--epochs``), ``data_shapley``
(``DataShapley`` with a ``TMCSampler`` of ``--shapley-permutations``
permutations, only on the data sets in ``--shapley-datasets``: it refits the
model once per sample per permutation) and ``random`` (``RandomEvaluator``,
the control). The bagging evaluators take ``--num-models`` models (OpenDataVal's
default is 1,000; 100 keeps each within minutes on one CPU core). Model-based
evaluators use ``sklogreg`` and accuracy, as OpenDataVal's examples do.
Evaluators that ignore the validation set (``skitl_influence``,
``skitl_influence_auto``, ``skitl_loss``, ``data_oob``, ``random``) are run
once per data set and seed and reported under both validation sets.

CPU seconds are process time (``time.process_time``) of
``evaluator.train`` and its values, one torch thread, one BLAS thread.

Install. OpenDataVal 1.3.0 pins ``torch~=2.1``, ``numpy<1.26``,
``pandas<2``, ``scikit-learn~=1.3``, ``transformers``, ``pykeops`` and
``geomloss``: it does not install beside skitl with its dependencies, so
install it without them (everything it imports for this benchmark is already
in skitl's environment)::

    pip install --no-deps opendataval==1.3.0

Its package imports ``transformers`` (for its BERT model) and ``geomloss``
(for LAVA) at import time; neither is used here, so when they are missing
this script puts inert stand-ins in their place while OpenDataVal is
imported, and removes them afterwards.

Examples
--------
    python benchmarks/bench_peers_opendataval.py
    python benchmarks/bench_peers_opendataval.py --quick
    python benchmarks/bench_peers_opendataval.py --datasets digits --seeds 0 --resume
"""

import os

# OpenDataVal draws a tqdm bar for every evaluator; tqdm reads this when it is
# first imported.
os.environ.setdefault("TQDM_DISABLE", "1")

import functools  # noqa: E402
import importlib.util  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import types  # noqa: E402
import warnings  # noqa: E402

import _harness  # noqa: E402
import numpy as np  # noqa: E402

PAGE = "docs/peers.md"

#: OpenDataVal data sets: (train, valid, test) counts.
DATASETS = {
    "breast_cancer": (300, 100, 169),
    "gaussian_classifier": (1000, 300, 500),
    "digits": (500, 200, 500),
}
QUICK_COUNTS = (100, 50, 100)

#: method -> whether its values depend on the validation set.
METHODS = {
    "skitl_influence": False,
    "skitl_influence_auto": False,
    "skitl_influence_val": True,
    "skitl_loss": False,
    "knn_shapley": True,
    "data_oob": False,
    "ame": True,
    "loo": True,
    "influence_subsample": True,
    "influence_function": True,
    "data_shapley": True,
    "random": False,
}
SKITL = tuple(m for m in METHODS if m.startswith("skitl"))

VALIDATIONS = ("noisy", "clean")

COLUMNS = ("dataset", "seed", "validation", "method", "uses_val", "auroc", "f1",
           "acc_full", "acc_low10", "low50", "high50", "cpu_s", "wall_s", "n_train",
           "n_flipped")
CURVE_COLUMNS = ("dataset", "seed", "validation", "method", "direction", "fraction",
                 "accuracy")
CELL = ("dataset", "seed", "validation", "method")


def parse_args(argv=None):
    p = _harness.make_parser(__doc__, page=PAGE)
    p.add_argument("--datasets", nargs="+", choices=tuple(DATASETS),
                   default=list(DATASETS))
    p.add_argument("--methods", nargs="+", choices=tuple(METHODS),
                   default=list(METHODS))
    p.add_argument("--validations", nargs="+", choices=VALIDATIONS,
                   default=list(VALIDATIONS))
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--noise", type=float, default=0.1,
                   help="share of flipped labels (OpenDataVal's mix_labels)")
    p.add_argument("--num-models", type=int, default=100,
                   help="models of DataOob, AME and InfluenceSubsample")
    p.add_argument("--epochs", type=int, default=10,
                   help="epochs of OpenDataVal's torch LogisticRegression "
                        "(influence_function)")
    p.add_argument("--shapley-permutations", type=int, default=20,
                   help="TMC permutations of data_shapley")
    p.add_argument("--shapley-datasets", nargs="*", default=["breast_cancer"],
                   help="data sets on which data_shapley runs")
    p.add_argument("--no-plot", action="store_true", help="skip the PNG")
    _harness.add_arguments(
        p, "quick", "resume", "threads", "out", "tag", "quiet",
        quick=dict(help="breast_cancer only, 1 seed, 100 training samples, 10 "
                        "bagged models, no data_shapley (about a minute)"),
        out=dict(default="benchmarks/results"))
    args = p.parse_args(argv)
    args.counts = dict(DATASETS)
    if args.quick:
        args.datasets, args.seeds, args.num_models, args.epochs = (
            ["breast_cancer"], [0], 10, 2)
        args.counts = {"breast_cancer": QUICK_COUNTS}
        args.shapley_datasets = []
    if args.tag is None and args.quick:
        args.tag = "quick"
    return args


# ------------------------------------------------------------ importing it --
def _stand_in(name):
    """An inert module for an import OpenDataVal makes but this benchmark never uses."""
    mod = types.ModuleType(name)
    mod.__doc__ = f"stand-in for {name}, missing here (bench_peers_opendataval)"
    if name == "transformers":
        mod.DistilBertModel = mod.DistilBertTokenizerFast = None
    elif name == "geomloss":
        mod.utils = types.SimpleNamespace(distances=None, squared_distances=None)
        mod.SamplesLoss = None
    return mod


@functools.lru_cache(maxsize=1)
def import_opendataval():
    """OpenDataVal's pieces this benchmark uses, as a namespace.

    ``transformers`` and ``geomloss`` get inert stand-ins only while
    OpenDataVal is imported, and only when they are not installed.

    Raises
    ------
    ImportError
        OpenDataVal is not installed (the message says how to install it).
    """
    if importlib.util.find_spec("opendataval") is None:
        raise ImportError("OpenDataVal is not installed: pip install --no-deps "
                          "opendataval==1.3.0 (see this script's docstring)")
    added = []
    for name in ("transformers", "geomloss"):
        if name not in sys.modules and importlib.util.find_spec(name) is None:
            sys.modules[name] = _stand_in(name)
            added.append(name)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from opendataval import dataval
            from opendataval.dataloader import DataFetcher, mix_labels
            from opendataval.dataval.margcontrib import TMCSampler
            from opendataval.experiment import exper_methods
            from opendataval.metrics import Metrics
            from opendataval.model import ModelFactory
    finally:
        for name in added:
            sys.modules.pop(name, None)
    ns = types.SimpleNamespace(
        DataFetcher=DataFetcher, mix_labels=mix_labels, dataval=dataval,
        TMCSampler=TMCSampler, exper=exper_methods, Metrics=Metrics,
        ModelFactory=ModelFactory)
    ns.SkitlEvaluator = _skitl_evaluator_class(dataval)
    return ns


def _skitl_evaluator_class(dataval):
    class SkitlEvaluator(dataval.DataEvaluator, dataval.ModelLessMixin):
        """A skitl selector as an OpenDataVal data evaluator (values = ``scores_``).

        Parameters
        ----------
        make : callable
            ``make() -> selector`` (unfitted).
        use_val : bool
            Pass OpenDataVal's validation set as ``X_val, y_val``.
        """

        def __init__(self, make, use_val=False, random_state=None):
            super().__init__(random_state)
            self.make = make
            self.use_val = use_val

        def train_data_values(self, *args, **kwargs):
            X, y = _numpy(self.x_train, self.y_train)
            sel = self.make()
            if self.use_val:
                Xv, yv = _numpy(self.x_valid, self.y_valid)
                sel.fit(X, y, Xv, yv)
            else:
                sel.fit(X, y)
            self.selector_ = sel
            self._values = np.asarray(sel.scores_, dtype=np.float64)
            return self

        def evaluate_data_values(self):
            return self._values

    return SkitlEvaluator


def _numpy(x, y):
    """OpenDataVal's tensors (one-hot labels) as float64 features and class indices."""
    X = np.asarray(x, dtype=np.float64).reshape(len(x), -1)
    return X, np.asarray(y).argmax(axis=1)


# ------------------------------------------------------------------- data --
def flip_train_labels(fetcher, noise_rate=0.1, *, mix_labels):
    """OpenDataVal's ``mix_labels`` with the validation labels given back.

    The same random draw as ``mix_labels`` (so the same training samples are
    flipped), but ``y_valid`` is returned unchanged: a clean validation set.
    """
    y_valid = np.array(fetcher.y_valid, copy=True)
    out = mix_labels(fetcher, noise_rate=noise_rate)
    out["y_valid"] = y_valid
    return out


def make_fetcher(odv, dataset, counts, seed, validation, noise):
    """OpenDataVal's ``DataFetcher`` for one data set, seed and validation set."""
    add_noise = odv.mix_labels if validation == "noisy" else functools.partial(
        flip_train_labels, mix_labels=odv.mix_labels)
    train, valid, test = counts
    # gaussian_classifier draws its data from numpy's global generator, which
    # OpenDataVal leaves unseeded: seed it, so that a seed means one data set
    # (the same under both validation sets, and from run to run).
    np.random.seed(seed)  # noqa: NPY002 (the generator OpenDataVal draws from)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return odv.DataFetcher.setup(
            dataset, train_count=train, valid_count=valid, test_count=test,
            add_noise=add_noise, noise_kwargs={"noise_rate": noise}, random_state=seed)


# ------------------------------------------------------------- evaluators --
def make_evaluator(odv, method, fetcher, seed, args):
    """``(evaluator, prediction model, training keywords)`` of one method."""
    from skitl import InfluenceSampleSelector
    from skitl.selection import LossSelector

    dv = odv.dataval
    sklogreg = odv.ModelFactory("sklogreg", fetcher)
    skitl = {
        "skitl_influence": (lambda: InfluenceSampleSelector(random_state=seed), False),
        "skitl_influence_auto": (lambda: InfluenceSampleSelector(
            alpha="auto", random_state=seed), False),
        "skitl_influence_val": (lambda: InfluenceSampleSelector(random_state=seed),
                                True),
        "skitl_loss": (lambda: LossSelector(random_state=seed), False),
    }
    if method in skitl:
        make, use_val = skitl[method]
        return odv.SkitlEvaluator(make, use_val=use_val, random_state=seed), None, {}
    if method == "knn_shapley":
        return dv.KNNShapley(k_neighbors=10, random_state=seed), None, {}
    if method == "data_oob":
        return dv.DataOob(num_models=args.num_models, random_state=seed), sklogreg, {}
    if method == "ame":
        return dv.AME(num_models=args.num_models, random_state=seed), sklogreg, {}
    if method == "loo":
        return dv.LeaveOneOut(random_state=seed), sklogreg, {}
    if method == "influence_subsample":
        return (dv.InfluenceSubsample(num_models=args.num_models, random_state=seed),
                sklogreg, {})
    if method == "influence_function":
        import torch

        torch.manual_seed(seed)
        model = odv.ModelFactory("logisticregression", fetcher)
        return dv.InfluenceFunction(), model, {"epochs": args.epochs}
    if method == "data_shapley":
        sampler = odv.TMCSampler(mc_epochs=args.shapley_permutations,
                                 cache_name=None, random_state=seed)
        return dv.DataShapley(sampler=sampler), sklogreg, {}
    if method == "random":
        return dv.RandomEvaluator(random_state=seed), None, {}
    raise ValueError(method)


def _curve(curves, prefix):
    """The curve of ``remove_high_low`` whose key starts with ``prefix``.

    OpenDataVal names it after the metric (``..._first_<metric name>``).
    """
    (key,) = [k for k in curves if k.startswith(prefix)]
    return curves[key]


LOW_FIRST, HIGH_FIRST = "remove_least_influential_first", "remove_most_influential_first"


def removal_summary(curves):
    """``acc_full``, ``acc_low10``, ``low50``, ``high50`` from ``remove_high_low``."""
    axis = np.asarray(curves["axis"], dtype=float)
    low = np.asarray(_curve(curves, LOW_FIRST)[:len(axis)], dtype=float)
    high = np.asarray(_curve(curves, HIGH_FIRST)[:len(axis)], dtype=float)
    half = axis <= 0.5 + 1e-9
    return {"acc_full": float(low[0]),
            "acc_low10": float(low[int(np.argmin(np.abs(axis - 0.1)))]),
            "low50": float(low[half].mean()), "high50": float(high[half].mean())}


def run_cell(odv, method, fetcher, seed, args):
    """Train one evaluator and run OpenDataVal's experiments on it.

    Returns the result row (without the cell keys) and the curve rows.
    """
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.metrics import roc_auc_score

    metric = odv.Metrics.ACCURACY
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        warnings.simplefilter("ignore", UserWarning)
        warnings.simplefilter("ignore", FutureWarning)
        evaluator, model, train_kwargs = make_evaluator(odv, method, fetcher, seed, args)
        t0, w0 = time.process_time(), time.perf_counter()
        evaluator.train(fetcher, model, metric, **train_kwargs)
        values = np.asarray(evaluator.data_values, dtype=np.float64).ravel()
        cpu, wall = time.process_time() - t0, time.perf_counter() - w0
        flipped = np.asarray(fetcher.noisy_train_indices)
        is_flipped = np.zeros(len(values), dtype=bool)
        is_flipped[flipped] = True
        f1 = odv.exper.noisy_detection(evaluator, fetcher)["kmeans_f1"]
        finite = np.where(np.isfinite(values), values, np.nanmin(values[np.isfinite(
            values)]) if np.isfinite(values).any() else 0.0)
        auroc = roc_auc_score(is_flipped, -finite)
        curves = odv.exper.remove_high_low(
            evaluator, fetcher, model=odv.ModelFactory("sklogreg", fetcher),
            metric=metric, percentile=0.05)
    row = dict(uses_val=int(METHODS[method]), auroc=float(auroc), f1=float(f1),
               cpu_s=cpu, wall_s=wall, n_train=len(values), n_flipped=len(flipped),
               **removal_summary(curves))
    curve_rows = []
    axis = curves["axis"]
    for direction, prefix in (("lowest_first", LOW_FIRST), ("highest_first", HIGH_FIRST)):
        for frac, acc in zip(axis, _curve(curves, prefix)):
            curve_rows.append(dict(direction=direction, fraction=round(float(frac), 4),
                                   accuracy=float(acc)))
    return row, curve_rows


# ---------------------------------------------------------------- results --
def _ms(values, digits=3):
    v = np.asarray([x for x in values if np.isfinite(x)], dtype=float)
    if not len(v):
        return "n/a"
    if len(v) == 1:
        return f"{v[0]:.{digits}f}"
    return f"{v.mean():.{digits}f} ± {v.std():.{digits}f}"


def _mean(values):
    v = np.asarray([x for x in values if np.isfinite(x)], dtype=float)
    return float(v.mean()) if len(v) else float("nan")


def _ordered(rows, key, order):
    seen = {r[key] for r in rows}
    return [x for x in order if x in seen] + sorted(seen - set(order))


def summary_tables(rows):
    """Markdown tables: per validation set, method x data set, mean ± sd over seeds."""
    lines = []
    datasets = _ordered(rows, "dataset", tuple(DATASETS))
    methods = _ordered(rows, "method", tuple(METHODS))
    for val in _ordered(rows, "validation", VALIDATIONS):
        vr = [r for r in rows if r["validation"] == val]
        lines += [f"### Detection of the flipped labels, {val} validation set", "",
                  "AUROC / F1 (OpenDataVal's `noisy_detection`), mean ± sd over "
                  "seeds; CPU seconds of the evaluator, mean over data sets and seeds.",
                  "",
                  "| method | " + " | ".join(f"{d} AUROC | {d} F1" for d in datasets)
                  + " | mean AUROC | mean F1 | CPU s |",
                  "|---|" + "---|---|" * len(datasets) + "---|---|---|"]
        for m in methods:
            mr = [r for r in vr if r["method"] == m]
            if not mr:
                continue
            cells = []
            for d in datasets:
                dr = [r for r in mr if r["dataset"] == d]
                cells += [_ms([r["auroc"] for r in dr]), _ms([r["f1"] for r in dr])]
            per_ds_auc = [_mean([r["auroc"] for r in mr if r["dataset"] == d])
                          for d in datasets]
            per_ds_f1 = [_mean([r["f1"] for r in mr if r["dataset"] == d])
                         for d in datasets]
            lines.append(f"| {m} | " + " | ".join(cells) +
                         f" | {_mean(per_ds_auc):.3f} | {_mean(per_ds_f1):.3f} | "
                         f"{_mean([r['cpu_s'] for r in mr]):.2f} |")
        lines += ["", f"### Point removal, {val} validation set", "",
                  "OpenDataVal's `remove_high_low` (scikit-learn logistic regression "
                  "retrained, test accuracy): accuracy after removing the lowest-valued "
                  "10 % (higher = better), mean accuracy over 0-50 % removed "
                  "lowest-first (higher = better) and highest-first (lower = better). "
                  "Nothing removed: " + ", ".join(
                      f"{d} {_mean([r['acc_full'] for r in vr if r['dataset'] == d]):.3f}"
                      for d in datasets) + ".", "",
                  "| method | " + " | ".join(
                      f"{d} low 10 % | {d} low-first | {d} high-first" for d in datasets)
                  + " |", "|---|" + "---|---|---|" * len(datasets)]
        for m in methods:
            mr = [r for r in vr if r["method"] == m]
            if not mr:
                continue
            cells = []
            for d in datasets:
                dr = [r for r in mr if r["dataset"] == d]
                cells += [_ms([r[c] for r in dr]) for c in ("acc_low10", "low50",
                                                            "high50")]
            lines.append(f"| {m} | " + " | ".join(cells) + " |")
        lines.append("")
    return lines


def plot(rows, curve_rows, path):
    """AUROC per method and data set (both validation sets); removal curves."""
    plt = _harness._pyplot()
    datasets = _ordered(rows, "dataset", tuple(DATASETS))
    methods = _ordered(rows, "method", tuple(METHODS))
    fig, axes = plt.subplots(2, len(datasets), squeeze=False,
                             figsize=(5.2 * len(datasets), 9.5))
    colours = {m: plt.cm.tab20(i % 20) for i, m in enumerate(methods)}
    for j, d in enumerate(datasets):
        ax = axes[0][j]
        pos = np.arange(len(methods))[::-1]
        for off, val, hatch in ((-0.2, "noisy", ""), (0.2, "clean", "//")):
            means = [_mean([r["auroc"] for r in rows if r["dataset"] == d and
                            r["method"] == m and r["validation"] == val])
                     for m in methods]
            ax.barh(pos + off, means, height=0.38, hatch=hatch,
                    color=[colours[m] for m in methods], edgecolor="k", lw=0.3,
                    label=f"{val} validation")
        ax.set_yticks(pos)
        ax.set_yticklabels(methods, fontsize=7)
        ax.axvline(0.5, color="k", lw=0.6, ls=":")
        ax.set_xlim(0.3, 1.0)
        ax.set_title(f"{d}: AUROC of the flipped labels", fontsize=9)
        ax.grid(axis="x", alpha=0.3)
        if j == 0:
            ax.legend(fontsize=7, loc="lower left")
        ax = axes[1][j]
        for m in methods:
            pts = [c for c in curve_rows if c["dataset"] == d and c["method"] == m
                   and c["validation"] == "clean" and c["direction"] == "lowest_first"]
            if not pts:
                continue
            fr = sorted({c["fraction"] for c in pts})
            acc = [_mean([c["accuracy"] for c in pts if c["fraction"] == f]) for f in fr]
            ls = "-" if m.startswith("skitl") else "--"
            ax.plot(fr, acc, ls=ls, color=colours[m], lw=1.2, label=m)
        ax.set_xlabel("share of training samples removed, lowest value first")
        ax.set_ylabel("test accuracy (sklogreg)")
        ax.set_title(f"{d}: point removal (clean validation)", fontsize=9)
        ax.grid(alpha=0.3)
        if j == 0:
            ax.legend(fontsize=6, loc="lower left")
    fig.suptitle("skitl's selectors and OpenDataVal's evaluators on OpenDataVal's "
                 "experiments (mean over seeds)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_markdown(path, rows, args, info, elapsed_note=""):
    n_seeds = len({r["seed"] for r in rows})
    md = ["# skitl inside OpenDataVal's benchmark", "",
          *[f"- {line}" for line in _harness.header_lines(info)],
          f"- OpenDataVal data sets {', '.join(args.datasets)} (train/valid/test: "
          + "; ".join(f"{d} {'/'.join(map(str, args.counts[d]))}" for d in args.datasets)
          + f"), {args.noise:.0%} of training labels flipped (`mix_labels`), "
          f"{n_seeds} seed(s); bagging evaluators with {args.num_models} models, "
          f"DataShapley with {args.shapley_permutations} TMC permutations on "
          f"{', '.join(args.shapley_datasets) or 'no data set'}.",
          *([f"- {elapsed_note}"] if elapsed_note else []), "",
          *summary_tables(rows)]
    _harness.atomic_write(path, "\n".join(md).rstrip() + "\n")


def main(argv=None):
    args = parse_args(argv)
    _harness.limit_threads(args.threads, blas=True)
    info = _harness.run_info(__file__, argv, threads=args.threads)
    log = _harness.Log(None, echo=not args.quiet)
    for line in _harness.header_lines(info):
        log(line)
    try:
        odv = import_opendataval()
    except ImportError as exc:
        raise SystemExit(str(exc)) from exc
    stem = os.path.join(args.out, "peers_opendataval" + (f"_{args.tag}" if args.tag
                                                          else ""))
    config = dict(counts={d: args.counts[d] for d in args.datasets}, noise=args.noise,
                  num_models=args.num_models, epochs=args.epochs,
                  shapley=args.shapley_permutations)
    store = _harness.CellStore(stem + ".csv", COLUMNS, CELL, config, resume=args.resume)
    curves = _harness.CellStore(stem + "_curves.csv", CURVE_COLUMNS, CELL, config,
                                resume=args.resume)
    if store.n_resumed:
        log(f"resumed {store.n_resumed} cells from {stem}.csv")
    t_start = time.perf_counter()
    for dataset in args.datasets:
        for seed in args.seeds:
            fetchers = {}
            for method in args.methods:
                if method == "data_shapley" and dataset not in args.shapley_datasets:
                    continue
                uses_val = METHODS[method]
                todo = [v for v in args.validations
                        if not store.done(dataset=dataset, seed=seed, validation=v,
                                          method=method)]
                run_on = todo if uses_val else todo[:1]
                for val in run_on:
                    if val not in fetchers:
                        fetchers[val] = make_fetcher(odv, dataset, args.counts[dataset],
                                                     seed, val, args.noise)
                    try:
                        row, crows = run_cell(odv, method, fetchers[val], seed, args)
                    except Exception as exc:  # a peer that fails is reported, not fatal
                        log(f"{dataset} seed {seed} {val:5s} {method}: failed "
                            f"({type(exc).__name__}: {exc})")
                        continue
                    # an evaluator blind to the validation set serves both
                    for v in (todo if not uses_val else [val]):
                        key = dict(dataset=dataset, seed=seed, validation=v,
                                   method=method)
                        store.add([dict(key, **row)])
                        curves.add([dict(key, **c) for c in crows])
                    log(f"{dataset} seed {seed} {val:5s} {method:22s} AUROC "
                        f"{row['auroc']:.3f} F1 {row['f1']:.3f} low10 "
                        f"{row['acc_low10']:.3f} CPU {row['cpu_s']:.1f} s")
    rows = [r for r in store.rows if r["dataset"] in args.datasets
            and r["seed"] in args.seeds]
    crows = [c for c in curves.rows if c["dataset"] in args.datasets
             and c["seed"] in args.seeds]
    elapsed = f"this run: {time.perf_counter() - t_start:.0f} s wall"
    write_markdown(stem + ".md", rows, args, info, elapsed)
    if not args.no_plot and rows:
        plot(rows, crows, stem + ".png")
    for line in summary_tables(rows):
        log(line)
    log(f"wrote {stem}.csv, {stem}_curves.csv, {stem}.md"
        + ("" if args.no_plot else f", {stem}.png"))
    return rows


if __name__ == "__main__":
    main()
