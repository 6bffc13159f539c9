"""The benchmark protocol shared by the scripts in ``benchmarks/``.

What lives here and not in the package (``skitl._experiment`` keeps only what
``skitl demo`` needs):

- the selectors only benchmarks run (deeper influence, gradient similarity),
  on top of the demo's :func:`skitl._experiment.make_selector`;
- :func:`fit_score`: fine-tune, predict, count the epochs run;
- :class:`CellStore`: results written per finished *cell* (one fine-tuning
  run, one removal curve), the whole CSV rewritten atomically after each, so
  an interrupted run loses at most the cell in progress, and ``--resume``
  skips the cells already in the file;
- :func:`private_cache_dir` / :func:`cached_network`: pretrained source
  networks cached as state dicts in a folder only the current user can write,
  loaded with ``torch.load(weights_only=True)``;
- what every script starts with: :func:`make_parser` and
  :func:`add_arguments` (the common options: ``--quick``, ``--threads``,
  ``--out``, ``--tag``, ``--resume``, ``--quiet``, ...), :func:`limit_threads`
  (torch threads, flush-to-zero, optionally the BLAS pools), the run header
  (:func:`run_info`, :func:`header_lines`: command, UTC date, machine, load)
  and :class:`Log` (lines printed and kept in a result file written with
  :func:`atomic_write`);
- two plots (bars with error bars; removal curves).
"""

import argparse
import csv
import hashlib
import io
import json
import os
import platform
import shlex
import sys
import time
from datetime import datetime, timezone

import numpy as np

from skitl._experiment import SELECTORS as DEMO_SELECTORS
from skitl._experiment import make_selector as demo_selector

#: Selectors the benchmarks know: the demo's, deeper influence and gradient
#: similarity.
SELECTORS = (*DEMO_SELECTORS, "influence_deep", "gradient_similarity")


def make_selector(name, estimator, *, random_state, count=None, alpha=1e-3, cv=5,
                  deep_params=None, batch_size=256, device="auto"):
    """:func:`skitl._experiment.make_selector` plus the benchmark-only selectors.

    ``influence_deep`` analyses the parameters matching ``deep_params`` (the
    last block and the head) with the Gauss-Newton matrix;
    ``gradient_similarity`` is head influence with an identity Hessian.
    """
    from skitl import InfluenceSampleSelector

    common = dict(batch_size=batch_size, device=device, random_state=random_state,
                  cv=cv, alpha=alpha, val_trim="auto")
    if name == "gradient_similarity":
        return InfluenceSampleSelector(estimator, hessian="identity", **common)
    if name == "influence_deep":
        return InfluenceSampleSelector(estimator, params=list(deep_params or ["fc.*"]),
                                       hessian="ggn", **common)
    return demo_selector(name, estimator, random_state=random_state, count=count,
                         alpha=alpha, cv=cv, batch_size=batch_size, device=device)


def transfer_classifier(module, weights, cfg, *, transform, device, random_state,
                        **params):
    """The fine-tuning template of a task: ``TransferClassifier`` from its settings.

    ``cfg`` gives ``optimizer``, ``lr``, ``backbone_lr_scale``, ``weight_decay``
    and ``batch_size``; ``params`` are passed on as they are.
    """
    from skitl import TransferClassifier

    return TransferClassifier(
        module, weights, strategy="finetune", optimizer=cfg["optimizer"], lr=cfg["lr"],
        backbone_lr_scale=cfg["backbone_lr_scale"], weight_decay=cfg["weight_decay"],
        batch_size=cfg["batch_size"], train_transform=transform, device=device,
        random_state=random_state, **params)


def fit_score(estimator, X, y, keep, X_test, *, sample_domain=None, **params):
    """Fine-tune a clone on the kept rows and predict ``X_test``.

    Parameters
    ----------
    estimator : TransferClassifier
        The template (cloned).
    X, y : training data (array or torch Dataset; labels array)
    keep : ndarray of bool or int
        Mask or indices (repeats weight a row by its count).
    X_test : array or Dataset
        What to predict.
    sample_domain : ndarray of int, optional
        Domains of the rows of ``X`` (passed to ``fit`` for the kept rows).
    **params
        Set on the clone.

    Returns
    -------
    pred : ndarray
        Predicted labels of ``X_test``.
    seconds : float
        Fine-tuning wall time.
    epochs : int
        Epochs run (fewer than ``max_epochs`` when early stopping stopped).
    """
    from skitl._experiment import finetune

    clf, seconds = finetune(estimator, X, y, keep, sample_domain=sample_domain, **params)
    return clf.predict(X_test), seconds, len(clf.net_.history)


# ---------------------------------------------------------------------------
# Results written per cell
# ---------------------------------------------------------------------------


def atomic_write(path, text):
    """Write ``text`` to ``path`` so that readers see the old or the new file, whole.

    A temporary file in the same folder is written, flushed to disk and
    renamed over ``path`` (``os.replace`` is atomic on POSIX and Windows).
    """
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, f".{os.path.basename(path)}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w", newline="") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _parse(value):
    """A CSV field back to int, float or str."""
    for kind in (int, float):
        try:
            return kind(value)
        except ValueError:
            pass
    return value


def read_csv(path):
    """Rows of a results CSV with numbers parsed ("nan" becomes NaN)."""
    with open(path, newline="") as fh:
        return [{k: _parse(v) for k, v in r.items()} for r in csv.DictReader(fh)]


def config_id(config):
    """A short, stable fingerprint of the settings that change a cell's result."""
    text = json.dumps(config, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


class CellStore:
    """Finished cells of one benchmark, kept in one CSV file.

    A cell is one unit of work (a fine-tuning run, a removal curve) that adds
    one or more rows sharing the values of ``cell_columns``. After each cell
    the whole file is rewritten atomically (:func:`atomic_write`), so it
    always holds whole cells. Every row carries the fingerprint of the
    settings (``config``); resuming from a file written with other settings
    is refused rather than mixing results.

    Parameters
    ----------
    path : str
        The CSV file.
    columns : sequence of str
        Its columns (``config`` is appended).
    cell_columns : sequence of str
        The columns that identify a cell.
    config : dict
        Settings that change results (not the list of seeds or cells).
    resume : bool, default=False
        Keep the cells already in ``path`` (and skip them); otherwise the
        file is started afresh at the first finished cell.
    """

    def __init__(self, path, columns, cell_columns, config, *, resume=False):
        self.path = path
        self.columns = [*columns, "config"]
        self.cell_columns = tuple(cell_columns)
        self.config = config_id(config)
        self.rows = []
        if resume and os.path.exists(path):
            rows = read_csv(path)
            other = sorted({str(r.get("config")) for r in rows} - {self.config})
            if other:
                raise SystemExit(
                    f"--resume: {path} holds results made with other settings "
                    f"(config {', '.join(other)}; now {self.config}). Rerun without "
                    "--resume to start afresh, or choose another --out / --tag."
                )
            self.rows = rows
        self.n_resumed = len({self.key(r) for r in self.rows})

    def key(self, values):
        """The cell a row (or a dict of cell values) belongs to."""
        return tuple(str(values[c]) for c in self.cell_columns)

    def done(self, **values):
        """Whether the cell with these ``cell_columns`` values is in the file."""
        key = self.key(values)
        return any(self.key(r) == key for r in self.rows)

    def rows_of(self, **values):
        """The stored rows of one cell (empty when it is not done)."""
        key = self.key(values)
        return [r for r in self.rows if self.key(r) == key]

    def add(self, rows):
        """Record one finished cell's rows and rewrite the file atomically."""
        rows = [dict(r, config=self.config) for r in rows]
        for r in rows:
            missing = set(self.columns) - set(r)
            if missing:
                raise KeyError(f"row lacks columns {sorted(missing)}")
        self.rows.extend(rows)
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=self.columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(self.rows)
        atomic_write(self.path, buf.getvalue())


# ---------------------------------------------------------------------------
# A private cache of pretrained networks
# ---------------------------------------------------------------------------


def private_cache_dir(path=None):
    """A cache folder that only the current user can write.

    Parameters
    ----------
    path : str, optional
        The folder; default ``$XDG_CACHE_HOME/skitl/bench`` (``~/.cache``
        when the variable is unset).

    Returns
    -------
    path : str
        The folder, created with mode ``0o700`` (tightened to it when it
        already exists and belongs to the user).

    Raises
    ------
    SystemExit
        When the folder belongs to someone else: whoever can write into it
        could plant the networks the benchmark loads.
    """
    if path is None:
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(
            os.path.expanduser("~"), ".cache")
        path = os.path.join(base, "skitl", "bench")
    os.makedirs(path, mode=0o700, exist_ok=True)
    st = os.stat(path)
    if hasattr(os, "getuid") and st.st_uid != os.getuid():
        raise SystemExit(
            f"The cache folder {path} belongs to another user; pass a --cache-dir "
            "of your own."
        )
    if st.st_mode & 0o077:
        os.chmod(path, 0o700)
    return path


def cached_network(cache_dir, name, build, make_module):
    """A pretrained network from the private cache, or built and cached.

    Only a state dict is stored, and it is read with
    ``torch.load(weights_only=True)``, which unpickles tensors and plain
    containers only, never arbitrary objects.

    Parameters
    ----------
    cache_dir : str
        From :func:`private_cache_dir`.
    name : str
        File stem; encode every setting of ``build`` in it.
    build : callable
        ``build() -> nn.Module``, the (slow) pretraining.
    make_module : callable
        ``make_module() -> nn.Module`` of the same architecture, untrained.

    Returns
    -------
    net : torch.nn.Module
        In eval mode.
    how : str
        ``"cached <path>"`` or ``"built in <s>s, cached at <path>"``.
    """
    import torch

    path = os.path.join(cache_dir, name + ".pt")
    if os.path.exists(path):
        net = make_module()
        net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        return net.eval(), f"cached {path}"
    t0 = time.perf_counter()
    net = build()
    seconds = time.perf_counter() - t0
    tmp = f"{path}.{os.getpid()}.tmp"
    torch.save({k: v.detach().cpu() for k, v in net.state_dict().items()}, tmp)
    os.replace(tmp, path)
    return net.eval(), f"built in {seconds:.0f}s, cached at {path}"


# ---------------------------------------------------------------------------
# Arguments
# ---------------------------------------------------------------------------


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter,
                    argparse.RawDescriptionHelpFormatter):
    """Defaults shown in the help; the description as the docstring wrote it."""


def make_parser(doc, *, page=None, full_doc=False):
    """The argument parser of a benchmark script, described by its docstring.

    Parameters
    ----------
    doc : str
        The script's ``__doc__``.
    page : str, optional
        The documentation page with the protocol and the results (epilog).
    full_doc : bool, default=False
        Show the whole docstring, not only its first paragraph.
    """
    return argparse.ArgumentParser(
        description=doc if full_doc else doc.split("\n\n")[0],
        epilog=None if page is None else f"See {page} for the protocol and the results.",
        formatter_class=HelpFormatter,
    )


#: The options several scripts share: name -> (flags, argparse keywords).
COMMON_ARGUMENTS = {
    "quick": (("--quick",), dict(action="store_true",
                                 help="a small, fast version of the run")),
    "threads": (("--threads",), dict(type=int, default=1,
                                     help="torch.set_num_threads")),
    "out": (("--out",), dict(default=None, help="output folder")),
    "tag": (("--tag",), dict(default=None, help="suffix of the output names (default "
                                                "'quick' with --quick)")),
    "resume": (("--resume",), dict(action="store_true",
                                   help="keep the finished cells of an earlier run of "
                                        "the same settings in the output CSV and run "
                                        "only the others")),
    "cache_dir": (("--cache-dir",), dict(default=None,
                                         help="private cache of pretrained source "
                                              "networks (default ~/.cache/skitl/bench, "
                                              "mode 0700)")),
    "pause": (("--pause",), dict(type=float, default=0.0,
                                 help="sleep this many seconds after each finished cell "
                                      "(to test interruption)")),
    "quiet": (("--quiet",), dict(action="store_true", help="print nothing while running")),
    "device": (("--device",), dict(default="cpu", help="torch device")),
    "seed": (("--seed",), dict(type=int, default=0, help="random seed")),
}


def add_arguments(parser, *names, **changes):
    """Add the common options ``names`` to ``parser``, in that order.

    Parameters
    ----------
    parser : argparse.ArgumentParser
    *names : str
        Keys of :data:`COMMON_ARGUMENTS`.
    **changes : dict
        Per name, argparse keywords that replace the common ones (``default``,
        ``help``, ``nargs``, ...); ``aliases`` adds option strings, so an
        older name of the same option keeps working (``--output`` for
        ``--out``).

    Examples
    --------
    >>> p = make_parser(__doc__)
    >>> add_arguments(p, "threads", "out", threads=dict(default=None),
    ...               out=dict(default="r.txt", aliases=("--output",)))
    """
    unknown = set(changes) - set(names)
    if unknown:
        raise ValueError(f"changes for options not added: {sorted(unknown)}")
    for name in names:
        flags, kwargs = COMMON_ARGUMENTS[name]
        kwargs = dict(kwargs, **changes.get(name, {}))
        aliases = tuple(kwargs.pop("aliases", ()))
        parser.add_argument(*flags, *aliases, dest=name, **kwargs)
    return parser


def base_parser(doc, page, tasks, default_task, quick_what):
    """A benchmark's parser with ``--task`` and ``--quick`` (what it cuts: ``quick_what``)."""
    p = make_parser(doc, page=page)
    p.add_argument("--task", choices=tasks, default=default_task)
    add_arguments(p, "quick", quick=dict(help=f"under 5 minutes on 2 CPU cores: "
                                              f"{quick_what} (explicit options still "
                                              "win)"))
    return p


def add_run_arguments(parser, *, out, threads=1):
    """The options of the scripts whose results are cells (``--resume``)."""
    add_arguments(parser, "resume", "threads", "out", "tag", "cache_dir", "pause",
                  "quiet", threads=dict(default=threads), out=dict(default=out))


def task_config(configs, task, quick):
    """A copy of ``configs[task]`` with its ``"quick"`` overrides applied if asked."""
    cfg = dict(configs[task])
    overrides = cfg.pop("quick")
    if quick:
        cfg.update(overrides)
    return cfg


# ---------------------------------------------------------------------------
# Threads
# ---------------------------------------------------------------------------

#: Environment variables that size the BLAS / OpenMP pools of child processes.
BLAS_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS",
            "BLIS_NUM_THREADS")


def limit_threads(threads=1, *, flush_denormal=True, blas=False):
    """Set the threads of this run once, at its start.

    Parameters
    ----------
    threads : int or None, default=1
        ``torch.set_num_threads(threads)``; ``None`` leaves torch's count.
    flush_denormal : bool or None, default=True
        ``torch.set_flush_denormal``; ``None`` leaves the setting. The
        pretrained small CNNs produce denormal floats: without flushing them
        their fine-tuning ran 19x slower on the CPU (measured).
    blas : bool, default=False
        Also cap the BLAS / OpenMP pools of every loaded library
        (``threadpoolctl``) and set :data:`BLAS_ENV` for child processes to
        ``threads``. No script does so now: skitl caps its own head algebra
        (:func:`skitl.utils.limit_threads`).

    Returns
    -------
    threads : int
        torch's thread count afterwards.
    """
    import torch

    if threads is not None:
        threads = max(1, int(threads))
        torch.set_num_threads(threads)
        if blas:
            from threadpoolctl import threadpool_limits

            for name in BLAS_ENV:
                os.environ[name] = str(threads)
            threadpool_limits(threads)
    if flush_denormal is not None:
        torch.set_flush_denormal(bool(flush_denormal))
    return torch.get_num_threads()


# ---------------------------------------------------------------------------
# Run information
# ---------------------------------------------------------------------------


def command_line(script, argv=None):
    """The command that started this run (``argv``: the arguments given to ``main``)."""
    args = sys.argv[1:] if argv is None else list(argv)
    return shlex.join(["python", f"benchmarks/{os.path.basename(script)}", *args])


def cpu_name():
    """The CPU's model name (``/proc/cpuinfo`` where there is one)."""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def load_average():
    """The 1, 5 and 15 minute load averages, rounded (NaNs where unknown)."""
    try:
        return tuple(round(x, 2) for x in os.getloadavg())
    except (AttributeError, OSError):
        return (float("nan"),) * 3


def machine(threads=None, device="cpu"):
    """One line describing the machine, the torch threads and the device.

    ``threads`` defaults to torch's current count.
    """
    import torch

    if threads is None:
        threads = torch.get_num_threads()
    return (f"{cpu_name()} ({platform.machine()}), {os.cpu_count()} CPU cores, torch "
            f"{torch.__version__} with {threads} thread(s), device {device}, "
            f"Python {platform.python_version()}")


def now():
    """The current UTC time."""
    return datetime.now(timezone.utc)


def run_info(script, argv=None, *, threads=None, device="cpu"):
    """What a run records about itself when it starts.

    Returns
    -------
    info : dict
        ``command`` (:func:`command_line`), ``started`` (UTC datetime),
        ``t_start`` (``time.perf_counter()``), ``machine`` (:func:`machine`
        and the load average at the start).
    """
    return dict(command=command_line(script, argv), started=now(),
                t_start=time.perf_counter(),
                machine=f"{machine(threads, device)}; load average at start "
                        f"{', '.join(str(x) for x in load_average())}")


def header_lines(info):
    """The run header: ``command: ...``, ``date: ... UTC``, ``machine: ...``."""
    return [f"command: {info['command']}",
            f"date: {info['started']:%Y-%m-%d %H:%M} UTC",
            f"machine: {info['machine']}"]


class Log:
    """Lines printed as they come and kept for a result file.

    Parameters
    ----------
    path : str, optional
        The result file; ``None`` keeps the lines in :attr:`lines` only.
    live : bool, default=False
        Rewrite the file (atomically) after every line, so a long run that
        is interrupted keeps what it measured; otherwise :meth:`save` writes
        it. A live log starts the file afresh.
    echo : bool, default=True
        Print each line.
    """

    def __init__(self, path=None, *, live=False, echo=True):
        self.path, self.live, self.echo = path, live, echo
        self.lines = []
        if live:
            self.save()

    def __call__(self, line=""):
        if self.echo:
            print(line, flush=True)
        self.lines.append(line)
        if self.live:
            self.save()

    def save(self, path=None):
        """Write every line so far to ``path`` (default: the log's own)."""
        path = self.path if path is None else path
        if path:
            atomic_write(path, "".join(f"{line}\n" for line in self.lines))


# ---------------------------------------------------------------------------
# Plots
# ---------------------------------------------------------------------------


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def bar_panels(panels, path, title):
    """Horizontal bars with error bars, one panel per metric or setting.

    Parameters
    ----------
    panels : list of (str, list of (label, mean, std))
        Panel title and its bars, top to bottom.
    path : str
        PNG to write.
    title : str
        Figure title.
    """
    plt = _pyplot()
    n_bars = max(len(bars) for _, bars in panels)
    fig, axes = plt.subplots(1, len(panels), squeeze=False,
                             figsize=(4.2 * len(panels) + 1.5, 0.32 * n_bars + 1.4),
                             sharey=True)
    for ax, (name, bars) in zip(axes[0], panels, strict=True):
        labels = [b[0] for b in bars]
        means = np.array([b[1] for b in bars], dtype=float)
        stds = np.array([b[2] for b in bars], dtype=float)
        pos = np.arange(len(bars))[::-1]
        colors = ["tab:green" if lab.startswith("oracle") else
                  "tab:blue" if lab.startswith("influence") else "tab:gray"
                  for lab in labels]
        ax.barh(pos, means, xerr=stds, color=colors, capsize=2, height=0.7)
        ax.set_yticks(pos)
        ax.set_yticklabels(labels, fontsize=7)
        finite = means[np.isfinite(means)]
        lo = max(0.0, np.floor(20 * (finite - stds[np.isfinite(means)]).min()) / 20 - 0.05)
        ax.set_xlim(lo, min(1.0, finite.max() + 0.05) if finite.size else 1.0)
        ax.set_title(name, fontsize=9)
        ax.grid(axis="x", alpha=0.3)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def curve_panels(panels, path, title, ylabel):
    """Removal curves: metric against the share removed, mean ± std over seeds.

    Parameters
    ----------
    panels : list of (str, dict)
        Panel title and ``{(selector, direction): (x, mean, std)}``;
        ``direction`` is ``"lowest"`` (solid lines) or ``"highest"``
        (dashed).
    path : str
        PNG to write.
    title : str
        Figure title.
    ylabel : str
        The metric.
    """
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(panels), squeeze=False,
                             figsize=(5.2 * len(panels), 4.0), sharey=True)
    cmap = plt.get_cmap("tab10")
    # one colour per selector across panels
    names = list(dict.fromkeys(s for _, curves in panels for s, _ in curves))
    colour = {name: cmap(i % 10) for i, name in enumerate(names)}
    for ax, (name, curves) in zip(axes[0], panels, strict=True):
        for sel in dict.fromkeys(s for s, _ in curves):
            for direction, ls in (("lowest", "-"), ("highest", "--")):
                if (sel, direction) not in curves:
                    continue
                x, m, s = curves[(sel, direction)]
                label = f"{sel} ({direction} first)"
                ax.plot(x, m, ls=ls, color=colour[sel], label=label, lw=1.3)
                ax.fill_between(x, m - s, m + s, color=colour[sel], alpha=0.12)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("% of candidates removed")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6, loc="best")
    axes[0][0].set_ylabel(ylabel)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
