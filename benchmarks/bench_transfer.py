#!/usr/bin/env python
"""Does pruning the target training data help transfer, and which selector wins?

One script for every task of issue 5 (protocol: DESIGN.md §4):

- ``digits``: the embedded digits transfer task (no files);
- ``mnist_usps``: a SmallCNN pretrained on the 10,000 MNIST test images
  (16x16) -> USPS (``usps.h5``: a stratified subset of the 7,291 training
  images, the 2,007 test images);
- ``cifar10``: the published CIFAR-10 ResNet-20 (option-A shortcuts) -> the
  JPEG re-encoded CIFAR-10 test images, split into target train / test;
- ``imagenet_cifar10`` / ``imagenet_cifar100``: torchvision's ImageNet
  ResNet-50 -> CIFAR-10 / CIFAR-100 (the paper's setting; needs downloads, or
  ``--image-folder`` for a local ImageFolder and ``--weights none`` offline).

For every seed and noise level the target training labels are corrupted
(symmetric or asymmetric noise, training labels only), every selector scores
the noisy training set *once* (:func:`skitl._experiment.run_selectors`;
``random`` and ``loss`` remove the same count as ``influence_auto``) and the
masks are reused by every fine-tuning run: the selectors under
``strategy="finetune"`` in the chosen training regimes (early stopping; a
fixed long schedule that can memorise noise), and the strategies
``partial`` / ``linear_probe`` / ``scratch`` with no selector and with
``influence_auto``.

Results go to ``--out`` as ``<task>[_<tag>].csv`` (one row per fine-tuning
run), ``.md`` (mean ± std over seeds), ``_accuracy.png`` (accuracy against
noise per selector) and ``_scores.png`` (score histograms, clean vs
corrupted). Each fine-tuning run is a *cell*: the CSV and the table are
rewritten atomically after every cell, so an interrupted run loses at most
the cell in progress, and ``--resume`` runs only the cells not yet in the CSV
(a seed x noise block whose cells are all done is not even loaded).

``--quick`` finishes in under 5 minutes per task on 2 CPU cores with
``--threads 1``: one seed, small subsets, few epochs, the early-stopping
regime only, no strategy sweep. The slow parts are opt-in: deep influence
(``--selectors ... influence_deep``), the strategy sweep (``--strategies``),
the long regime (``--regime long`` / ``both``) and larger subsets
(``--n-train``).

Examples
--------
::

    python benchmarks/bench_transfer.py --task digits --quick
    python benchmarks/bench_transfer.py --task mnist_usps --seeds 0 1 2 --noise 0 0.2
    python benchmarks/bench_transfer.py --task cifar10 --noise 0 0.2 --regime both
    python benchmarks/bench_transfer.py --task cifar10 --noise 0 0.2 --resume
"""

import os
import sys
import time

import numpy as np

from skitl._experiment import cleanlab_available

# the shared protocol lives next to this script
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _harness  # noqa: E402

TASKS = ("digits", "mnist_usps", "cifar10", "imagenet_cifar10", "imagenet_cifar100")
#: Selectors compared under strategy="finetune", in table order.
SELECTORS = ("none", "random", "loss", "cleanlab", "influence_plain",
             "influence_auto", "influence_deep")
#: Opt-in: slow (deep influence runs per-sample gradients of a block).
SLOW_SELECTORS = ("influence_deep",)
#: Strategies compared with no selector and with influence_auto.
STRATEGIES = ("finetune", "partial", "linear_probe", "scratch")
STRATEGY_SELECTORS = ("none", "influence_auto")
REGIMES = ("early_stopping", "long")

# Per-task settings: full run, and the overrides --quick applies.
# "reinit": the parameters strategy="partial" re-initialises and
# influence_deep analyses (the last block + the head).
CONFIGS = {
    "digits": dict(
        n_train=700, n_test=None, epochs_long=60, epochs_es=60, patience=5,
        batch_size=32, optimizer="adamw", lr=3e-3, backbone_lr_scale=0.3,
        weight_decay=0.0, alpha=1e-2, augment=False,
        reinit=["features.5.*", "fc.*"],
        quick=dict(epochs_long=20, epochs_es=20, patience=3),
    ),
    "mnist_usps": dict(
        n_train=2000, n_test=None, n_source=None, pretrain_epochs=10,
        epochs_long=20, epochs_es=20, patience=3,
        batch_size=32, optimizer="adamw", lr=3e-3, backbone_lr_scale=0.3,
        weight_decay=0.0, alpha=1e-2, augment=False,
        reinit=["features.5.*", "fc.*"],
        quick=dict(n_train=400, n_test=500, n_source=2000, pretrain_epochs=4,
                   epochs_long=5, epochs_es=5, patience=2),
    ),
    "cifar10": dict(
        n_train=600, n_test=1000, epochs_long=8, epochs_es=8, patience=2,
        batch_size=32, optimizer="sgd", lr=0.05, backbone_lr_scale=0.2,
        weight_decay=5e-4, alpha=1e-3, augment=True,
        reinit=["layer3.2.*", "linear.*"],
        quick=dict(n_train=300, n_test=300, epochs_long=2, epochs_es=2, patience=1),
    ),
    "imagenet_cifar10": dict(
        n_train=5000, n_test=2000, image_size=224, epochs_long=15, epochs_es=15,
        patience=3, batch_size=64, optimizer="sgd", lr=0.01, backbone_lr_scale=0.1,
        weight_decay=5e-4, alpha=1e-3, augment=True,
        reinit=["layer4.2.*", "fc.*"],
        quick=dict(n_train=200, n_test=100, image_size=64, epochs_long=1,
                   epochs_es=1, patience=1),
    ),
}
CONFIGS["imagenet_cifar100"] = dict(CONFIGS["imagenet_cifar10"])

_COLUMNS = ("task", "noise_kind", "noise", "seed", "regime", "strategy", "selector",
            "method", "accuracy", "n_train", "n_removed", "auroc", "precision",
            "recall", "score_seconds", "fit_seconds", "epochs_run")
#: The columns that name a cell: one fine-tuning run.
CELL_COLUMNS = ("noise_kind", "noise", "seed", "regime", "strategy", "selector")


# ---------------------------------------------------------------------------
# Arguments
# ---------------------------------------------------------------------------


def _default_data_dir():
    try:
        from skitl.datasets import default_data_dir

        found = default_data_dir()
    except ImportError:  # pragma: no cover - during bring-up
        found = None
    if found is not None:
        return str(found)
    here = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..",
                        "shared", "data")
    return os.path.normpath(here) if os.path.isdir(here) else None


def build_parser():
    p = _harness.base_parser(__doc__, "docs/benchmarks.md", TASKS, "digits",
                             "1 seed, small subsets, few epochs, early stopping only, "
                             "no strategy sweep")
    p.add_argument("--data-dir", default=_default_data_dir(),
                   help="folder with mnist/, usps/, cifar10_test_jpg/, "
                        "cifar10_resnet_weights/ (../shared/data when it exists)")
    _harness.add_arguments(p, "device", device=dict(help="torch device: cpu, cuda, auto"))
    p.add_argument("--seeds", type=int, nargs="+", default=None,
                   help="seeds (default 0 1 2; 0 with --quick)")
    p.add_argument("--noise", type=float, nargs="+", default=None,
                   help="noise rates of the target training labels "
                        "(default 0 0.2 0.4; 0 0.2 with --quick)")
    p.add_argument("--noise-kind", nargs="+", default=["symmetric"],
                   choices=("symmetric", "asymmetric"))
    p.add_argument("--regime", choices=(*REGIMES, "both"), default=None,
                   help="early_stopping: stop on a held-out 10%% of the (noisy) "
                        "training data; long: a fixed schedule without stopping "
                        "(default: both; early_stopping with --quick)")
    p.add_argument("--selectors", nargs="+", default=None, choices=SELECTORS,
                   help="selectors compared under strategy=finetune "
                        "(default: all available but the slow influence_deep)")
    p.add_argument("--strategies", nargs="*", default=None, choices=STRATEGIES,
                   help="strategies compared with no selector and influence_auto "
                        "(default: all, none with --quick; pass the option alone "
                        "to skip them)")
    p.add_argument("--strategy-regime", choices=REGIMES, default=None,
                   help="regime of the strategy comparison (default: the first "
                        "regime run)")
    p.add_argument("--n-train", type=int, default=None, help="target training images")
    p.add_argument("--n-test", type=int, default=None, help="target test images")
    p.add_argument("--epochs-long", type=int, default=None)
    p.add_argument("--epochs-es", type=int, default=None,
                   help="most epochs of the early-stopping regime")
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--weights", default=None,
                   help="imagenet tasks: torchvision weights name, a path, or "
                        "'none' (default IMAGENET1K_V1)")
    p.add_argument("--arch", default="resnet50",
                   choices=("resnet18", "resnet34", "resnet50", "resnet101"),
                   help="imagenet tasks: torchvision ResNet")
    p.add_argument("--image-folder", default=None,
                   help="imagenet tasks: an ImageFolder root with train/ and test/ "
                        "instead of torchvision's CIFAR download")
    p.add_argument("--image-size", type=int, default=None,
                   help="imagenet tasks: side length fed to the network "
                        "(default 224; 64 with --quick)")
    p.add_argument("--cifar-root", default=None,
                   help="imagenet tasks: torchvision dataset root")
    p.add_argument("--download", action="store_true",
                   help="imagenet tasks: let torchvision download CIFAR")
    _harness.add_run_arguments(p, out=os.path.join("benchmarks", "results"))
    p.add_argument("--report", nargs="+", metavar="CSV", default=None,
                   help="print compact accuracy / detection tables of result CSVs "
                        "(of one task) and exit")
    return p


def resolve_config(args):
    """The task's settings after --quick and explicit options."""
    base = _harness.task_config(CONFIGS, args.task, args.quick)
    for opt, key in (("n_train", "n_train"), ("n_test", "n_test"),
                     ("epochs_long", "epochs_long"), ("epochs_es", "epochs_es"),
                     ("batch_size", "batch_size"), ("lr", "lr"),
                     ("image_size", "image_size")):
        if getattr(args, opt) is not None:
            base[key] = getattr(args, opt)
    seeds = args.seeds if args.seeds is not None else ([0] if args.quick else [0, 1, 2])
    noise = args.noise if args.noise is not None else (
        [0.0, 0.2] if args.quick else [0.0, 0.2, 0.4])
    regime = args.regime or ("early_stopping" if args.quick else "both")
    regimes = list(REGIMES) if regime == "both" else [regime]
    selectors = list(args.selectors) if args.selectors is not None else [
        s for s in SELECTORS if s not in SLOW_SELECTORS]
    if not cleanlab_available() and "cleanlab" in selectors:
        print('cleanlab is not installed: skipping it (pip install "skitl[cleanlab]")')
        selectors.remove("cleanlab")
    if args.strategies is not None:
        strategies = list(args.strategies)
    else:
        strategies = [] if args.quick else list(STRATEGIES)
    strategies = [s for s in strategies if s != "finetune"]  # finetune: the selector rows
    return base, dict(seeds=seeds, noise=noise, regimes=regimes, selectors=selectors,
                      strategies=strategies,
                      strategy_regime=args.strategy_regime or regimes[0])


# ---------------------------------------------------------------------------
# Tasks: one source network per invocation, one target split per seed x noise
# ---------------------------------------------------------------------------


class Task:
    """A transfer task: the classifier template and the noisy target data."""

    def __init__(self, name, cfg, args):
        self.name, self.cfg, self.args = name, cfg, args
        self.info = {}

    # -- the classifier template --------------------------------------------
    def estimator(self, seed):
        module, weights = self.network()
        return _harness.transfer_classifier(module, weights, self.cfg,
                                            transform=self.transform(),
                                            device=self.args.device, random_state=seed)

    def transform(self):
        if not self.cfg.get("augment"):
            return None
        return _flip_crop(self.cfg.get("image_size", 32))

    def network(self):  # pragma: no cover - abstract
        raise NotImplementedError

    def data(self, seed, noise, kind):  # pragma: no cover - abstract
        raise NotImplementedError


def _flip_crop(size):
    from torchvision.transforms import v2

    return v2.Compose([v2.RandomHorizontalFlip(),
                       v2.RandomCrop(size, padding=max(1, size // 8))])


class DigitsTask(Task):
    """Embedded digits; the source CNN is pretrained per seed (seconds)."""

    def data(self, seed, noise, kind):
        from skitl.datasets import load_digits_transfer
        from skitl.models import pretrain_source_cnn

        d = load_digits_transfer(noise=noise, noise_kind=kind,
                                 n_target_train=self.cfg["n_train"], random_state=seed)
        self._net = pretrain_source_cnn(d.X_source, d.y_source, random_state=seed)
        return d

    def network(self):
        return self._net, None


class MnistUspsTask(Task):
    """MNIST (test images, 16x16) -> USPS (usps.h5); source pretrained once."""

    def _source(self):
        import torch

        from skitl.datasets import load_mnist_usps
        from skitl.models import SmallCNN, pretrain_source_cnn

        cfg = self.cfg
        d = load_mnist_usps(self.args.data_dir, n_source=cfg["n_source"],
                            n_target_train=10, random_state=0)
        net, how = _harness.cached_network(
            _harness.private_cache_dir(self.args.cache_dir),
            f"mnist16_smallcnn_n{cfg['n_source']}_e{cfg['pretrain_epochs']}_s0",
            lambda: pretrain_source_cnn(d.X_source, d.y_source, n_classes=10,
                                        epochs=cfg["pretrain_epochs"], random_state=0),
            lambda: SmallCNN(n_classes=10))
        self.info["source"] = (f"SmallCNN pretrained on {len(d.y_source)} MNIST "
                               f"images, {cfg['pretrain_epochs']} epochs ({how})")
        with torch.inference_mode():
            pred = net(torch.as_tensor(d.X_test)).argmax(1).numpy()
        self.info["source_acc_on_target_test"] = float((pred == d.y_test).mean())
        return net

    def network(self):
        if not hasattr(self, "_net"):
            self._net = self._source()
        return self._net, None

    def data(self, seed, noise, kind):
        from skitl.datasets import load_mnist_usps

        self.network()
        d = load_mnist_usps(self.args.data_dir, n_source=10, n_target_train=self.cfg["n_train"],
                            noise=noise, noise_kind=kind, random_state=seed)
        return _subsample_test(d, self.cfg.get("n_test"), seed)


class CifarJpegTask(Task):
    """Published CIFAR-10 ResNet-20 -> JPEG CIFAR-10 test images."""

    def network(self):
        from skitl.models import cifar_resnet20

        path = os.path.join(self.args.data_dir or "", "cifar10_resnet_weights",
                            "resnet20-12fca82f.th")
        if not os.path.isfile(path):
            raise SystemExit(f"ResNet-20 weights not found at {path}; pass --data-dir.")
        return cifar_resnet20, path

    def data(self, seed, noise, kind):
        from skitl.datasets import load_cifar10_jpeg

        d = load_cifar10_jpeg(self.args.data_dir, n_train=self.cfg["n_train"],
                              noise=noise, noise_kind=kind, random_state=seed)
        return _subsample_test(d, self.cfg.get("n_test"), seed)


class ImagenetCifarTask(Task):
    """torchvision ResNet-50 (ImageNet) -> CIFAR-10 / CIFAR-100, as Datasets.

    ``--arch`` picks another torchvision ResNet (the offline smoke test uses
    ``resnet18`` without weights).
    """

    def __init__(self, name, cfg, args):
        super().__init__(name, cfg, args)
        if args.arch in ("resnet18", "resnet34"):  # two blocks in layer4
            cfg["reinit"] = ["layer4.1.*", "fc.*"]

    def network(self):
        w = self.args.weights or "IMAGENET1K_V1"
        return self.args.arch, (None if str(w).lower() == "none" else w)

    def transform(self):
        if not self.cfg.get("augment"):
            return None
        from torchvision.transforms import v2

        return v2.RandomHorizontalFlip()

    def data(self, seed, noise, kind):
        import torch

        cfg = self.cfg
        dataset = "cifar10" if self.name == "imagenet_cifar10" else "cifar100"
        if self.args.image_folder:
            d = _image_folder_data(self.args.image_folder, cfg, noise, kind, seed)
        else:
            from skitl.datasets import load_imagenet_to_cifar

            root = self.args.cifar_root or os.path.join(self.args.data_dir or ".", "cifar")
            d = load_imagenet_to_cifar(root, dataset=dataset, download=self.args.download,
                                       size=cfg["image_size"], n_train=cfg["n_train"],
                                       noise=noise, noise_kind=kind, random_state=seed)
        d.X_train, d.X_test = d.train, d.test
        n_test = cfg.get("n_test")
        if n_test is not None and n_test < len(d.y_test):
            idx = _stratified(d.y_test, n_test, seed)
            d.X_test = torch.utils.data.Subset(d.test, idx.tolist())
            d.y_test = d.y_test[idx]
        return d


def _image_folder_data(root, cfg, noise, kind, seed):
    """Target data from ``root/train`` and ``root/test`` ImageFolders (offline)."""
    from sklearn.utils import Bunch
    from torchvision.datasets import ImageFolder

    from skitl.datasets import (
        RelabeledDataset,
        add_label_noise,
        imagenet_transfer_transform,
    )

    tf = imagenet_transfer_transform(cfg["image_size"])
    train = ImageFolder(os.path.join(root, "train"), transform=tf)
    test = ImageFolder(os.path.join(root, "test"), transform=tf)
    y_clean = np.asarray(train.targets, dtype=np.int64)
    y_noisy, corrupted = add_label_noise(
        y_clean, noise, kind=kind, pairs="cifar10", n_classes=len(train.classes),
        random_state=seed)
    return Bunch(train=RelabeledDataset(train, y_noisy), test=test, y_train=y_noisy,
                 y_train_clean=y_clean, is_corrupted=corrupted,
                 y_test=np.asarray(test.targets, dtype=np.int64))


def _stratified(y, size, seed):
    from sklearn.model_selection import train_test_split

    idx, _ = train_test_split(np.arange(len(y)), train_size=size, stratify=y,
                              random_state=10_000 + seed)
    return np.sort(idx)


def _subsample_test(d, n_test, seed):
    """A stratified subset of the test set (the split depends on the seed)."""
    if n_test is not None and n_test < len(d.y_test):
        idx = _stratified(d.y_test, n_test, seed)
        d.X_test, d.y_test = d.X_test[idx], d.y_test[idx]
    return d


TASK_CLASSES = {"digits": DigitsTask, "mnist_usps": MnistUspsTask,
                "cifar10": CifarJpegTask, "imagenet_cifar10": ImagenetCifarTask,
                "imagenet_cifar100": ImagenetCifarTask}


# ---------------------------------------------------------------------------
# Running
# ---------------------------------------------------------------------------


def regime_params(regime, cfg):
    if regime == "early_stopping":
        return dict(early_stopping=True, max_epochs=cfg["epochs_es"],
                    n_iter_no_change=cfg["patience"], validation_fraction=0.1)
    return dict(early_stopping=False, max_epochs=cfg["epochs_long"])


def plan(setup):
    """The fine-tuning runs of one seed x noise block: (regime, strategy, selector)."""
    runs = [(r, "finetune", s) for r in setup["regimes"] for s in setup["selectors"]]
    for strategy in setup["strategies"]:
        for s in STRATEGY_SELECTORS:
            if s in setup["selectors"]:
                runs.append((setup["strategy_regime"], strategy, s))
    return runs


def method_label(strategy, selector):
    return strategy if selector == "none" else f"{strategy}+{selector}"


def blocks_of(args, setup):
    """The seed x noise-kind x rate blocks; noise 0 is run for the first kind only."""
    return [(seed, kind, rate) for seed in setup["seeds"] for kind in args.noise_kind
            for rate in setup["noise"] if not (rate == 0 and kind != args.noise_kind[0])]


def selectors_needed(pending):
    """The selectors the pending runs of a block need, the reference included."""
    from skitl._experiment import COUNT_MATCHED, REFERENCE

    needed = {s for _, _, s in pending if s != "none"}
    if needed & set(COUNT_MATCHED):
        needed.add(REFERENCE)
    return sorted(needed, key=SELECTORS.index)


def run(args, argv=None):
    """Every cell of the task not yet in the results (``argv``: for the header)."""
    from skitl._experiment import run_selectors

    _harness.limit_threads(args.threads)
    cfg, setup = resolve_config(args)
    task = TASK_CLASSES[args.task](args.task, cfg, args)
    tag = args.tag if args.tag is not None else ("quick" if args.quick else "")
    stem = os.path.join(args.out, args.task + (f"_{tag}" if tag else ""))
    say = (lambda *a: None) if args.quiet else (lambda *a: print(*a, flush=True))
    config = {"task": args.task, "settings": cfg,
              "network": [args.weights, args.arch, args.image_folder]}
    store = _harness.CellStore(stem + ".csv", _COLUMNS, CELL_COLUMNS, config,
                               resume=args.resume)
    run_info = _harness.run_info(__file__, argv, device=args.device)
    blocks, runs = blocks_of(args, setup), plan(setup)
    say("\n".join(_harness.header_lines(run_info)))
    say(f"{args.task}: {len(blocks)} seed x noise blocks x {len(runs)} fine-tuning runs; "
        f"config {cfg}")
    if store.n_resumed:
        say(f"--resume: {store.n_resumed} finished cells kept from {store.path}")

    def cell(seed, kind, rate, regime, strategy, sname):
        return dict(noise_kind=kind, noise=rate, seed=seed, regime=regime,
                    strategy=strategy, selector=sname)

    def finished():
        return all(store.done(**cell(*blk, *r)) for blk in blocks for r in runs)

    hist = {}
    for b, (seed, kind, rate) in enumerate(blocks, 1):
        pending = [r for r in runs if not store.done(**cell(seed, kind, rate, *r))]
        if not pending:
            say(f"[{b}/{len(blocks)}] seed {seed} {kind} noise {rate:g}: all "
                f"{len(runs)} cells done, skipped")
            continue
        t_block = time.perf_counter()
        d = task.data(seed, rate, kind)
        base = task.estimator(seed)
        n_train = len(d.y_train)
        say(f"[{b}/{len(blocks)}] seed {seed} {kind} noise {rate:g}: {n_train} train "
            f"({int(np.sum(d.is_corrupted))} corrupted), {len(d.y_test)} test, "
            f"{len(pending)} of {len(runs)} cells to run {task.info or ''}")
        sel = run_selectors(selectors_needed(pending), base, d.X_train, d.y_train,
                            is_corrupted=d.is_corrupted, random_state=seed,
                            make=_harness.make_selector, alpha=cfg["alpha"], cv=5,
                            deep_params=cfg["reinit"], device=args.device,
                            verbose=not args.quiet)
        if seed == setup["seeds"][0]:
            hist[(kind, rate)] = {k: (v["scores"], np.asarray(d.is_corrupted))
                                  for k, v in sel.items() if v["scores"] is not None}
        none = {"mask": np.ones(n_train, bool), "n_removed": 0, "seconds": 0.0,
                "auroc": np.nan, "precision": np.nan, "recall": np.nan}
        for regime, strategy, sname in pending:
            s = none if sname == "none" else sel[sname]
            params = {"strategy": strategy, **regime_params(regime, cfg)}
            if strategy == "partial":
                params["reinit"] = cfg["reinit"]
            pred, secs, epochs = _harness.fit_score(base, d.X_train, d.y_train,
                                                    s["mask"], d.X_test, **params)
            acc = float(np.mean(pred == np.asarray(d.y_test)))
            store.add([dict(task=args.task, method=method_label(strategy, sname),
                            accuracy=acc, n_train=n_train, n_removed=s["n_removed"],
                            auroc=s["auroc"], precision=s["precision"],
                            recall=s["recall"], score_seconds=s["seconds"],
                            fit_seconds=secs, epochs_run=epochs,
                            **cell(seed, kind, rate, regime, strategy, sname))])
            say(f"  {regime:<14} {method_label(strategy, sname):<28} acc {acc:.3f}  "
                f"removed {s['n_removed']:4d}  {epochs:2d} ep  {secs:6.1f}s")
            write_results(stem, store, None, args, cfg, run_info, task.info,
                          done=finished())
            if args.pause:
                time.sleep(args.pause)
        say(f"  block done in {time.perf_counter() - t_block:.0f}s "
            f"(total {time.perf_counter() - run_info['t_start']:.0f}s)")
        write_results(stem, store, hist, args, cfg, run_info, task.info,
                      done=finished())
    write_results(stem, store, hist, args, cfg, run_info, task.info,
                  done=finished())
    say(f"wall time {(time.perf_counter() - run_info['t_start']) / 60:.1f} min; "
        f"results in {store.path}")
    return store.rows


# ---------------------------------------------------------------------------
# Output
# ---------------------------------------------------------------------------


def summary_rows(rows):
    from skitl._experiment import summarise

    keys = ["noise_kind", "noise", "regime", "strategy", "selector", "method"]
    out = summarise(rows, keys)
    for r in out:
        r["accuracy"] = f"{r['accuracy_mean']:.3f} ± {r['accuracy_std']:.3f}"
        r["removed %"] = (100.0 * r["n_removed"] / np.mean(
            [x["n_train"] for x in rows if x["noise"] == r["noise"]]))
    order = {s: i for i, s in enumerate(SELECTORS)}
    out.sort(key=lambda r: (r["noise_kind"], r["noise"], REGIMES.index(r["regime"]),
                            STRATEGIES.index(r["strategy"]), order[r["selector"]]))
    return out


def markdown(rows):
    from skitl._experiment import markdown_table

    cols = ["noise_kind", "noise", "regime", "method", "accuracy", "n_runs", "n_removed",
            "removed %", "auroc", "precision", "score_seconds", "fit_seconds"]
    fmt = {"noise": "{:g}", "n_removed": "{:.0f}", "removed %": "{:.1f}",
           "auroc": "{:.3f}", "precision": "{:.3f}", "score_seconds": "{:.1f}",
           "fit_seconds": "{:.1f}"}
    table = []
    for r in summary_rows(rows):
        r = dict(r)
        for k, f in fmt.items():
            v = r.get(k)
            if isinstance(v, float):
                r[k] = "–" if np.isnan(v) else f.format(v)
        table.append(r)
    return markdown_table(table, cols)


def write_results(stem, store, hist, args, cfg, run_info, info, done):
    """Rewrite the summary page (and, given ``hist``, the plots) from the store."""
    rows = store.rows
    if not rows:
        return
    seeds = sorted({r["seed"] for r in rows})
    wall = time.perf_counter() - run_info["t_start"]
    fit_time = sum(float(r["fit_seconds"]) for r in rows)
    head = [
        f"# {args.task}: selectors x strategies" + ("" if done else " (PARTIAL: run not finished)"),
        "",
        f"- command: `{run_info['command']}`",
        f"- started {run_info['started']:%Y-%m-%d %H:%M} UTC; wall time of this "
        f"invocation {wall / 60:.1f} min (fine-tuning time summed over all "
        f"{len(rows)} cells: {fit_time / 60:.1f} min); seeds done {seeds}",
        f"- machine: {run_info['machine']}",
        f"- settings: {cfg}",
        f"- source: {info}" if info else "",
        "- accuracy: clean target test set, mean ± std over seeds; n_removed, auroc "
        "(mislabel detection, -score), precision (corrupted fraction of the removed "
        "set), score_seconds, fit_seconds: means",
        "",
    ]
    _harness.atomic_write(stem + ".md", "\n".join(head) + "\n" + pivot_markdown(rows)
                          + "\n\n## All runs, mean over seeds\n\n" + markdown(rows)
                          + "\n")
    if hist is None:
        return
    try:
        plot_accuracy(rows, stem + "_accuracy.png", args.task)
        plot_scores(hist, stem + "_scores.png", args.task)
    except Exception as exc:  # plots must never lose the numbers
        print(f"plotting failed: {exc!r}")


def plot_accuracy(rows, path, task):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summ = summary_rows(rows)
    panels = sorted({(r["noise_kind"], r["regime"]) for r in summ},
                    key=lambda p: (p[0], REGIMES.index(p[1])))
    fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 3.8),
                             squeeze=False, sharey=True)
    for ax, (kind, regime) in zip(axes[0], panels):
        sub = [r for r in summ if r["noise_kind"] == kind and r["regime"] == regime]
        # the symmetric noise-0 point is shared by every noise kind
        sub += [r for r in summ if r["noise"] == 0 and r["regime"] == regime
                and r["noise_kind"] != kind]
        for method in dict.fromkeys(r["method"] for r in sub):
            pts = sorted((r["noise"], r["accuracy_mean"], r["accuracy_std"])
                         for r in sub if r["method"] == method)
            x, m, s = (np.array(v) for v in zip(*pts))
            ls = "-" if method.startswith("finetune") else ":"
            ax.errorbar(x, m, yerr=s, marker="o", ms=3, ls=ls, capsize=2, label=method)
        ax.set_title(f"{kind} noise, {regime}", fontsize=9)
        ax.set_xlabel("noise rate of target training labels")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("target test accuracy")
    axes[0][-1].legend(fontsize=7, loc="lower left")
    fig.suptitle(f"{task}: accuracy vs noise (mean ± std over seeds)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_scores(hist, path, task):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    noisy = [k for k in hist if k[1] > 0]
    if not noisy:
        return
    names = sorted({n for k in noisy for n in hist[k]}, key=SELECTORS.index)
    if not names:
        return
    fig, axes = plt.subplots(len(noisy), len(names), squeeze=False,
                             figsize=(3.2 * len(names), 2.6 * len(noisy)))
    for i, key in enumerate(sorted(noisy)):
        for j, name in enumerate(names):
            ax = axes[i][j]
            if name not in hist[key]:
                ax.axis("off")
                continue
            scores, corrupted = hist[key][name]
            scores = np.asarray(scores, dtype=float)
            lo, hi = np.nanpercentile(scores, [1, 99])
            bins = np.linspace(lo, hi if hi > lo else lo + 1, 40)
            clipped = np.clip(scores, bins[0], bins[-1])
            ax.hist(clipped[~corrupted], bins, alpha=0.6, density=True, label="clean")
            ax.hist(clipped[corrupted], bins, alpha=0.6, density=True, label="corrupted")
            ax.set_title(f"{name}\n{key[0]} {key[1]:g}", fontsize=8)
            ax.tick_params(labelsize=6)
    axes[0][0].legend(fontsize=7)
    fig.suptitle(f"{task}: selector scores (higher = keep), first seed; "
                 "clipped to the 1-99th percentile", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _read_csv(paths):
    return [r for path in paths for r in _harness.read_csv(path)]


def pivot_markdown(rows):
    """Two compact tables: accuracy by method x setting; detection by selector."""
    from skitl._experiment import markdown_table

    summ = summary_rows(rows)
    settings = sorted({(r["noise_kind"], r["noise"], r["regime"]) for r in summ},
                      key=lambda t: (t[0] != "symmetric", t[0], t[1],
                                     REGIMES.index(t[2])))
    label = {s: f"{s[0][:4]} {s[1]:g} {'ES' if s[2] == 'early_stopping' else 'long'}"
             for s in settings}
    methods = list(dict.fromkeys(r["method"] for r in summ))
    acc = []
    for m in methods:
        d = {"method": m}
        for s in settings:
            hit = [r for r in summ if r["method"] == m
                   and (r["noise_kind"], r["noise"], r["regime"]) == s]
            d[label[s]] = (f"{hit[0]['accuracy']} ({hit[0]['n_runs']})" if hit else "")
        acc.append(d)
    det = []
    for sname in SELECTORS[1:]:
        d = {"selector": sname}
        seen = False
        for kind, rate in dict.fromkeys((s[0], s[1]) for s in settings):
            hit = [r for r in summ if r["selector"] == sname and r["strategy"] == "finetune"
                   and r["noise_kind"] == kind and r["noise"] == rate]
            if not hit:
                continue
            seen = True
            r = hit[0]
            auroc = "–" if np.isnan(r["auroc"]) else f"{r['auroc']:.3f}"
            prec = "–" if np.isnan(r["precision"]) else f"{r['precision']:.2f}"
            d[f"{kind[:4]} {rate:g}: removed / AUROC / precision"] = (
                f"{r['n_removed']:.0f} / {auroc} / {prec}")
        if seen:
            det.append(d)
    cols_a = ["method"] + [label[s] for s in settings]
    cols_d = ["selector"] + list(dict.fromkeys(k for d in det for k in d if k != "selector"))
    return (markdown_table(acc, cols_a) + "\n\n" + markdown_table(det, cols_d))


def main(argv=None):
    args = build_parser().parse_args(argv)
    if args.report:
        print(pivot_markdown(_read_csv(args.report)))
        return 0
    if args.task != "digits" and not args.image_folder and args.data_dir is None \
            and not args.task.startswith("imagenet"):
        raise SystemExit("--data-dir is needed (../shared/data was not found).")
    run(args, argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
