"""The tasks of ``bench_target.py``: harmful training samples that are correctly labelled.

Each task builds a pretrained network and, per setting x seed, a pool of
training samples with its target data (:func:`_pool_bunch`); the runner in
``bench_target.py`` fits the rows (selections, baselines) on it, fine-tunes
and scores. What the tasks are: the docstring of ``bench_target.py`` and
``docs/target.md``.

Adding a task
-------------
1. a class (a subclass of :class:`Task`, or an existing one) registered
   under the task's name with ``@register("name")``: ``network()``,
   ``data(setting, seed)`` (a :func:`_pool_bunch`), ``describe()``, and,
   where they differ from :class:`Task`'s, ``rows`` (names from
   ``bench_target.ROWS``), ``metric`` and ``train_transform()``;
2. its entry in :data:`CONFIGS` (the settings, and what ``--quick``
   overrides: ``steps`` at least, and the ``n_*`` sizes).

``--task`` offers every name of :data:`CONFIGS`, in its order
(:data:`TASKS`).
"""

import os

import _harness
import numpy as np

_SMALLCNN = dict(optimizer="adamw", lr=3e-3, backbone_lr_scale=0.3, weight_decay=0.0,
                 batch_size=32, alpha=1e-2, cv=5, augment=False)
_MNIST_SOURCE = dict(n_source=8000, pretrain_epochs=10)
_MNIST_SOURCE_QUICK = dict(n_source=3000, pretrain_epochs=3)
_MNIST_USPS = dict(
    **_SMALLCNN, **_MNIST_SOURCE, n_target=300, n_aux=1000, n_val=300,
    n_test=None, steps=600, jtt_steps=200, jtt_lambda=5, aux="rot90",
    quick=dict(**_MNIST_SOURCE_QUICK, n_target=150, n_aux=400, n_val=150,
               n_test=500, steps=150, jtt_steps=50),
)
_SPURIOUS = dict(
    **_SMALLCNN, **_MNIST_SOURCE, n_pool=2000, n_val=300, n_test=None,
    aligned=0.95, steps=600, jtt_steps=200, jtt_lambda=5,
    quick=dict(**_MNIST_SOURCE_QUICK, n_pool=600, n_val=200, n_test=500,
               steps=150, jtt_steps=50),
)

#: Per-task settings, and what --quick overrides (in ``--task``'s order).
CONFIGS = {
    "mnist_usps_rot": _MNIST_USPS,
    "mnist_usps_plain": dict(_MNIST_USPS, aux="plain"),
    "spurious": _SPURIOUS,
    "spurious_texture": dict(_SPURIOUS, marker="texture", amplitude=0.35),
    "imbalance": dict(
        **_SMALLCNN, **_MNIST_SOURCE, n_majority=500, n_val_per_class=50,
        settings=["0.95", "0.99"], steps=600, jtt_steps=200, jtt_lambda=5,
        quick=dict(**_MNIST_SOURCE_QUICK, n_majority=300, settings=["0.95"],
                   steps=150, jtt_steps=50),
    ),
    "cifar10_aux": dict(
        optimizer="sgd", lr=0.05, backbone_lr_scale=0.2, weight_decay=5e-4,
        batch_size=32, alpha=1e-3, cv=5, augment=True, n_target=500, n_val=500,
        n_aux_plain=500, n_aux_corrupt=500, n_test=2000, noise_std=0.3, steps=150,
        jtt_steps=50, jtt_lambda=5,
        quick=dict(n_target=200, n_val=200, n_aux_plain=150, n_aux_corrupt=150,
                   n_test=500, steps=20, jtt_steps=10),
    ),
    "cifar10_imbalance": dict(
        optimizer="sgd", lr=0.05, backbone_lr_scale=0.2, weight_decay=5e-4,
        batch_size=32, alpha=1e-3, cv=5, augment=True, settings=["resnet20"],
        # CIFAR-10's test set has 1,000 images per class: the majority class's
        # pool, X_val and test images must fit in them (880 + 20 + 100).
        n_majority=880, n_minority=18, n_val_per_class=20, n_test_per_class=100,
        steps=300, jtt_steps=100, jtt_lambda=5,
        quick=dict(n_majority=300, n_minority=10, n_val_per_class=10,
                   n_test_per_class=30, steps=30, jtt_steps=10),
    ),
    "aux_mix": dict(
        **_SMALLCNN, n_source=2500, source_classes=5, pretrain_epochs=10,
        settings=["3"], n_aux_good=3000, n_aux_shifted=1500, n_val=200, n_test=None,
        steps=600, target_share=0.5, jtt_steps=200, jtt_lambda=5,
        quick=dict(n_source=1500, pretrain_epochs=5, n_aux_good=900, n_aux_shifted=450,
                   n_val=100, n_test=500, steps=150, jtt_steps=50),
    ),
    "digits_rot": dict(
        **_SMALLCNN, n_target=100, n_aux=300, n_val=150, pretrain_epochs=60,
        steps=300, jtt_steps=100, jtt_lambda=5,
        quick=dict(pretrain_epochs=30, steps=150, jtt_steps=50),
    ),
}
#: The task names (``--task``).
TASKS = tuple(CONFIGS)
#: Task name -> its class (filled by :func:`register`).
TASK_CLASSES = {}


def register(*names):
    """Class decorator: the class runs the tasks ``names`` (keys of :data:`CONFIGS`)."""
    def deco(cls):
        for name in names:
            if name in TASK_CLASSES:
                raise ValueError(f"task {name!r} is registered twice")
            TASK_CLASSES[name] = cls
        return cls
    return deco


# ---------------------------------------------------------------------------
# The step budget and the pieces of a pool
# ---------------------------------------------------------------------------


#: The most epochs a fine-tuning runs (a tiny set gets fewer than ``steps``).
MAX_EPOCHS = 300


def epochs_for(steps, batch_size, n_train):
    """Epochs that give about ``steps`` mini-batches on ``n_train`` samples."""
    per_epoch = max(1, -(-int(n_train) // int(batch_size)))
    return int(min(MAX_EPOCHS, max(1, round(steps / per_epoch))))



def _split(y, sizes, seed):
    """Disjoint stratified subsets of ``range(len(y))`` of the given sizes."""
    from sklearn.model_selection import train_test_split

    rest = np.arange(len(y))
    out = []
    for i, size in enumerate(sizes):
        if size >= len(rest):
            out.append(rest)
            rest = rest[:0]
            continue
        take, rest = train_test_split(rest, train_size=size, stratify=y[rest],
                                      random_state=seed * 1000 + i)
        out.append(np.sort(take))
    return out


def _pool_bunch(X_parts, y_parts, domains, **extra):
    """A pool from its parts: X, y, sample_domain (None for one domain)."""
    from sklearn.utils import Bunch

    X = np.ascontiguousarray(np.concatenate(X_parts))
    y = np.concatenate(y_parts).astype(np.int64)
    sd = np.concatenate([np.full(len(p), dom, dtype=np.int64)
                         for p, dom in zip(y_parts, domains, strict=True)])
    single = (sd < 0).all()
    extra.setdefault("harmful", None)
    extra.setdefault("minority", None)
    extra.setdefault("groups_test", None)
    extra.setdefault("oracle_keep", None)
    extra.setdefault("target_keep", None)
    return Bunch(X=X, y=y, sample_domain=None if single else sd,
                 is_target=sd < 0, **extra)


# ---------------------------------------------------------------------------
# Tasks
# ---------------------------------------------------------------------------


#: Rows every task has on top of its own: the shipped defaults and the ones
#: before them, target-only training, and the search that decides by the target.
DECIDE_ROWS = ("influence_default", "influence_default_auto", "influence_old",
               "influence_old_auto", "loss_auto", "target_only", "search")


class Task:
    """A benchmark task: a pretrained network, and a pool per setting x seed."""

    #: The metric the verdict and the plots use.
    metric = "accuracy"
    #: The row whose removal count the @count baselines copy.
    reference = "influence_val_auto"
    #: The rows the task has.
    rows = ("finetune_all", "influence_val", "influence_val_auto",
            "influence_val_auto_all", "influence_sd", "influence_sd_auto",
            "influence_sd_auto_all", "influence_pool", "domain", "domain@count",
            "loss@count", "random@count", "cleanlab", "jtt", "oracle") + DECIDE_ROWS

    def __init__(self, name, cfg, args):
        self.name, self.cfg, self.args = name, cfg, args
        self.info = {}

    @property
    def settings(self):
        return list(self.cfg.get("settings", [""]))

    def estimator(self, seed):
        """The classifier template every row fine-tunes (no early stopping)."""
        module, weights = self.network()
        cfg = self.cfg
        extra = {"target_share": cfg["target_share"]} if cfg.get("target_share") else {}
        return _harness.transfer_classifier(
            module, weights, cfg, transform=self.train_transform(),
            device=self.args.device, random_state=seed, early_stopping=False,
            max_epochs=epochs_for(cfg["steps"], cfg["batch_size"], 1000), **extra)

    def train_transform(self):
        return None

    def network(self):  # pragma: no cover - abstract
        raise NotImplementedError

    def data(self, setting, seed):  # pragma: no cover - abstract
        raise NotImplementedError

    def describe(self):
        return ""


class MnistSourceTask(Task):
    """Tasks on USPS with a SmallCNN pretrained on MNIST (16x16).

    MNIST here is its 10,000 test images (the training images are not
    available offline): a fixed stratified part pretrains the source network,
    the rest is the reservoir auxiliary samples are drawn from, so the
    network never saw them.
    """

    def _arrays(self):
        if not hasattr(self, "_mnist"):
            from skitl.datasets import load_mnist_usps

            d = load_mnist_usps(self.args.data_dir, n_source=None, n_target_train=None,
                                random_state=0)
            src, reservoir = _source_split(d.y_source, self.cfg["n_source"])
            self._mnist = (d.X_source, d.y_source, src, reservoir)
            self._usps = (d.X_train, d.y_train, d.X_test, d.y_test)
        return self._mnist, self._usps

    def network(self):
        if not hasattr(self, "_net"):
            from skitl.models import SmallCNN, pretrain_source_cnn

            (Xm, ym, src, _), _ = self._arrays()
            cfg = self.cfg
            net, how = _harness.cached_network(
                _harness.private_cache_dir(self.args.cache_dir),
                f"target_mnist16_smallcnn_n{cfg['n_source']}_e{cfg['pretrain_epochs']}",
                lambda: pretrain_source_cnn(Xm[src], ym[src], n_classes=10,
                                            epochs=cfg["pretrain_epochs"],
                                            random_state=0),
                lambda: SmallCNN(n_classes=10))
            self.info["source"] = (f"SmallCNN pretrained on {len(src)} MNIST images "
                                   f"(16x16), {cfg['pretrain_epochs']} epochs ({how})")
            self._net = net
        return self._net, None

    def _test(self, seed, n_test=None):
        _, (_, _, Xt, yt) = self._arrays()
        n_test = self.cfg.get("n_test") if n_test is None else n_test
        if n_test is not None and n_test < len(yt):
            (idx,) = _split(yt, [n_test], 10_000 + seed)
            return Xt[idx], yt[idx]
        return Xt, yt


def _source_split(y, n_source):
    (src,) = _split(y, [n_source], 0)
    return src, np.setdiff1d(np.arange(len(y)), src)


@register("mnist_usps_rot", "mnist_usps_plain")
class MixedMnistUspsTask(MnistSourceTask):
    """USPS target + MNIST auxiliary (rotated by 90 degrees, or plain)."""

    def __init__(self, name, cfg, args):
        super().__init__(name, cfg, args)
        if cfg["aux"] == "plain":
            self.rows = tuple(r for r in Task.rows if r != "oracle")

    def describe(self):
        c = self.cfg
        aux = "rotated by 90 degrees" if c["aux"] == "rot90" else "plain"
        return (f"pool: {c['n_target']} USPS training images (target, sample_domain "
                f"-1) + {c['n_aux']} MNIST images {aux} (auxiliary, +1, drawn from the "
                f"MNIST images the network was not pretrained on); X_val: "
                f"{c['n_val']} other USPS training images; test: USPS test set"
                + ("" if c["n_test"] is None else f" ({c['n_test']} images)"))

    def data(self, setting, seed):
        (Xm, ym, _, reservoir), (Xu, yu, _, _) = self._arrays()
        c = self.cfg
        tgt, val = _split(yu, [c["n_target"], c["n_val"]], seed)
        (aux,) = _split(ym[reservoir], [c["n_aux"]], seed)
        aux = reservoir[aux]
        X_aux = Xm[aux]
        if c["aux"] == "rot90":
            X_aux = np.rot90(X_aux, 1, axes=(2, 3))
        Xt, yt = self._test(seed)
        is_aux = np.r_[np.zeros(len(tgt), bool), np.ones(len(aux), bool)]
        return _pool_bunch(
            [Xu[tgt], X_aux], [yu[tgt], ym[aux]], [-1, 1],
            X_val=Xu[val], y_val=yu[val], X_test=Xt, y_test=yt,
            harmful=is_aux if c["aux"] == "rot90" else None,
            oracle_keep=~is_aux if c["aux"] == "rot90" else None,
            target_keep=~is_aux,
        )


#: 3x3 binary marker of each class (fixed): distinct local patterns, so a
#: network with global pooling can tell them apart.
def _markers(k=10):
    rng = np.random.RandomState(12345)
    seen, out = set(), []
    while len(out) < k:
        m = rng.rand(3, 3) < 0.5
        key = m.tobytes()
        if 3 <= m.sum() <= 6 and key not in seen:
            seen.add(key)
            out.append(m.astype(np.float32))
    return np.stack(out)


def _gratings(k=10, amplitude=0.35, size=16):
    """A sinusoidal grating per class: orientation ``pi c / k``, period 3 or 4 px."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    out = []
    for c in range(k):
        theta = np.pi * c / k
        freq = 2 * np.pi / (3.0 + c % 2)
        wave = np.sin(freq * (np.cos(theta) * xx + np.sin(theta) * yy))
        out.append(amplitude * (0.5 + 0.5 * wave))
    return np.stack(out).astype(np.float32)


def _stamp(X, marker_class, markers):
    """Images carrying the marker of ``marker_class``.

    A 3x3 marker is drawn into the top-left corner (pixel-wise maximum); an
    image-sized one (a grating) is added over the whole image and clipped.
    """
    X = X.copy()
    m = markers[marker_class]
    h, w = m.shape[1:]
    if (h, w) == X.shape[2:]:
        X[:, 0] = np.clip(X[:, 0] + m, 0.0, 1.0)
    else:
        X[:, 0, :h, :w] = np.maximum(X[:, 0, :h, :w], m)
    return X


def _marker_classes(y, aligned_share, rng, k=10):
    """Per sample, the class whose marker it carries, and whether it is its own.

    Exactly ``round(aligned_share * n_c)`` samples of each class carry their own
    class's marker; the others carry the marker of a uniformly drawn other
    class.
    """
    marker = y.copy()
    aligned = np.ones(len(y), bool)
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        n_conf = len(idx) - int(round(aligned_share * len(idx)))
        conf = idx[:n_conf]
        aligned[conf] = False
        marker[conf] = (c + rng.randint(1, k, size=len(conf))) % k
    return marker, aligned


@register("spurious", "spurious_texture")
class SpuriousTask(MnistSourceTask):
    """USPS with a class-specific marker on 95 % of the pool (a shortcut)."""

    metric = "worst_group"
    rows = ("finetune_all", "influence_val", "influence_val_auto",
            "influence_val_auto_all", "influence_pool", "domain", "domain@count",
            "loss@count", "random@count", "cleanlab", "jtt", "oracle") + DECIDE_ROWS

    def describe(self):
        c = self.cfg
        marker = ("3x3 marker in the top-left corner" if c.get("marker", "corner")
                  == "corner" else "grating (orientation pi c / 10, period 3 or 4 "
                  f"pixels, amplitude {c['amplitude']}) added over the image")
        return (f"pool: {c['n_pool']} USPS training images, {c['aligned']:.0%} of each "
                f"class with its own class's {marker}, the "
                "rest with another class's; X_val: "
                f"{c['n_val']} other USPS training images and test: the USPS test set"
                + ("" if c["n_test"] is None else f" ({c['n_test']} images)")
                + ", both group-balanced (half of each class with its own marker, half "
                "with another's); groups = class x (own / other marker); every pool "
                "sample is a removal candidate; harmful = the marker-aligned majority")

    def data(self, setting, seed):
        _, (Xu, yu, _, _) = self._arrays()
        c = self.cfg
        rng = np.random.RandomState(seed)
        pool, val = _split(yu, [c["n_pool"], c["n_val"]], seed)
        Xt, yt = self._test(seed)
        markers = (_markers() if c.get("marker", "corner") == "corner"
                   else _gratings(amplitude=c["amplitude"]))
        m_pool, al_pool = _marker_classes(yu[pool], c["aligned"], rng)
        m_val, _ = _marker_classes(yu[val], 0.5, rng)
        m_test, al_test = _marker_classes(yt, 0.5, rng)
        # oracle: every conflicting sample and as many aligned ones per class
        keep = ~al_pool
        for cls in np.unique(yu[pool]):
            aligned_c = np.flatnonzero(al_pool & (yu[pool] == cls))
            n = int((~al_pool & (yu[pool] == cls)).sum())
            keep[rng.choice(aligned_c, size=min(n, len(aligned_c)), replace=False)] = True
        return _pool_bunch(
            [_stamp(Xu[pool], m_pool, markers)], [yu[pool]], [-1],
            X_val=_stamp(Xu[val], m_val, markers), y_val=yu[val],
            X_test=_stamp(Xt, m_test, markers), y_test=yt,
            groups_test=2 * yt + al_test, harmful=al_pool, minority=~al_pool,
            oracle_keep=keep,
        )


@register("imbalance")
class ImbalanceTask(MnistSourceTask):
    """USPS 4 vs 9 with a majority share of 0.95 / 0.99 and a balanced X_val."""

    metric = "balanced_accuracy"
    rows = ("finetune_all", "influence_val", "influence_val_auto",
            "influence_val_auto_all", "influence_pool", "domain", "domain@count",
            "loss@count", "random@count", "cleanlab", "jtt", "class_reweight",
            "undersample") + DECIDE_ROWS
    #: (minority digit, majority digit); labels 0 and 1.
    DIGITS = (4, 9)

    def describe(self):
        c = self.cfg
        return (f"pool: {c['n_majority']} USPS training images of the digit 9 "
                "(majority, label 1) and round(n_majority (1 - share) / share) of the "
                f"digit 4 (minority, label 0); X_val: {c['n_val_per_class']} other USPS "
                "training images per class (balanced); test: every 4 and 9 of the USPS "
                "test set; setting = majority share; every pool sample is a removal "
                "candidate")

    def data(self, setting, seed):
        _, (Xu, yu, Xt, yt) = self._arrays()
        c = self.cfg
        share = float(setting)
        rng = np.random.RandomState(seed)
        n_min = max(5, int(round(c["n_majority"] * (1 - share) / share)))
        n_val = c["n_val_per_class"]
        parts = []
        for digit, n in zip(self.DIGITS, (n_min, c["n_majority"]), strict=True):
            idx = rng.permutation(np.flatnonzero(yu == digit))
            if n + n_val > len(idx):
                raise SystemExit(f"USPS has {len(idx)} images of {digit}, fewer than "
                                 f"{n} + {n_val}.")
            parts.append((idx[:n], idx[n:n + n_val]))
        pool = np.r_[parts[0][0], parts[1][0]]
        val = np.r_[parts[0][1], parts[1][1]]
        label = {d: i for i, d in enumerate(self.DIGITS)}
        test = np.flatnonzero(np.isin(yt, self.DIGITS))
        y_pool = np.array([label[v] for v in yu[pool]], dtype=np.int64)
        return _pool_bunch(
            [Xu[pool]], [y_pool], [-1],
            X_val=Xu[val], y_val=np.array([label[v] for v in yu[val]], dtype=np.int64),
            X_test=Xt[test], y_test=np.array([label[v] for v in yt[test]], dtype=np.int64),
            minority=y_pool == 0,
        )


@register("cifar10_aux")
class CifarAuxTask(Task):
    """ResNet-20 -> JPEG CIFAR-10 with plain and corrupted auxiliary images."""

    def describe(self):
        c = self.cfg
        return (f"JPEG CIFAR-10 test images split per seed (stratified) into a target "
                f"part of {c['n_target']} (sample_domain -1), X_val {c['n_val']}, test "
                f"{c['n_test']}, and an auxiliary pool (+1) of {c['n_aux_plain']} plain "
                f"JPEG images (helpful) and {c['n_aux_corrupt']} corrupted ones (rotated "
                f"by 90 degrees, plus Gaussian noise of std {c['noise_std']} in [0, 1] "
                "units; correctly labelled, harmful)")

    def network(self):
        from skitl.models import cifar_resnet20

        path = os.path.join(self.args.data_dir or "", "cifar10_resnet_weights",
                            "resnet20-12fca82f.th")
        if not os.path.isfile(path):
            raise SystemExit(f"ResNet-20 weights not found at {path}; pass --data-dir.")
        self.info["source"] = "published CIFAR-10 ResNet-20 (resnet20-12fca82f.th)"
        return cifar_resnet20, path

    def train_transform(self):
        from torchvision.transforms import v2

        return v2.Compose([v2.RandomHorizontalFlip(), v2.RandomCrop(32, padding=4)])

    def data(self, setting, seed):
        from skitl.datasets import load_cifar10_jpeg

        c = self.cfg
        if not hasattr(self, "_images"):
            d = load_cifar10_jpeg(self.args.data_dir, n_train=0.5, random_state=0)
            self._images = (np.concatenate([d.X_train, d.X_test]),
                            np.concatenate([d.y_train_clean, d.y_test]))
        X, y = self._images
        tgt, val, plain, corrupt, test = _split(
            y, [c["n_target"], c["n_val"], c["n_aux_plain"], c["n_aux_corrupt"],
                c["n_test"]], seed)
        rng = np.random.RandomState(seed)
        bad = np.rot90(X[corrupt], 1, axes=(2, 3)).astype(np.float32) / 255.0
        bad = np.clip(bad + rng.normal(0, c["noise_std"], bad.shape), 0, 1)
        bad = np.round(bad * 255).astype(np.uint8)
        n_t, n_p, n_c = len(tgt), len(plain), len(corrupt)
        harmful = np.r_[np.zeros(n_t + n_p, bool), np.ones(n_c, bool)]
        return _pool_bunch(
            [X[tgt], X[plain], bad], [y[tgt], y[plain], y[corrupt]], [-1, 1, 2],
            X_val=X[val], y_val=y[val], X_test=X[test], y_test=y[test],
            harmful=harmful, oracle_keep=~harmful,
            target_keep=np.r_[np.ones(n_t, bool), np.zeros(n_p + n_c, bool)],
        )


@register("cifar10_imbalance")
class CifarImbalanceTask(Task):
    """The paper's imbalanced setting: one CIFAR-10 class is most of the training set.

    Wang, Huan & Zhu (2019) fine-tuned on CIFAR-10 with one class at 90 % of
    the training data and reported error 6.35 -> 4.18 % with pruning. Offline:
    the published CIFAR-10 ResNet-20 (or ResNet-32, the setting) fine-tuned on
    the JPEG CIFAR-10 test images, the majority class drawn per seed; a
    balanced ``X_val`` and a balanced test set; balanced accuracy (the mean
    recall over classes) and the worst class's recall (``worst_group``).
    """

    metric = "balanced_accuracy"
    reference = "influence_default"
    rows = ("finetune_all", "influence_default", "influence_default_auto",
            "influence_old", "influence_old_auto", "influence_val", "domain",
            "loss@count", "random@count", "class_reweight", "undersample",
            "nearmiss", "hardness", "target_only", "search")

    def describe(self):
        c = self.cfg
        return (f"JPEG CIFAR-10 test images; pool: {c['n_majority']} images of one "
                f"class (class seed % 10) and {c['n_minority']} of each other class "
                f"({c['n_majority'] / (c['n_majority'] + 9 * c['n_minority']):.0%} "
                f"majority); X_val: {c['n_val_per_class']} per class (balanced); test: "
                f"{c['n_test_per_class']} per class (balanced); setting: the network "
                "(published CIFAR-10 ResNet-20 / ResNet-32); every pool sample is a "
                "removal candidate")

    def network(self):
        from skitl.models import cifar_resnet20, cifar_resnet32

        name = self._setting
        module, file = {"resnet20": (cifar_resnet20, "resnet20-12fca82f.th"),
                        "resnet32": (cifar_resnet32, "resnet32-d509ac18.th")}[name]
        path = os.path.join(self.args.data_dir or "", "cifar10_resnet_weights", file)
        if not os.path.isfile(path):
            raise SystemExit(f"{name} weights not found at {path}; pass --data-dir.")
        self.info["source"] = f"published CIFAR-10 {name} ({file})"
        return module, path

    def train_transform(self):
        from torchvision.transforms import v2

        return v2.Compose([v2.RandomHorizontalFlip(), v2.RandomCrop(32, padding=4)])

    def data(self, setting, seed):
        from skitl.datasets import load_cifar10_jpeg

        self._setting = setting
        c = self.cfg
        if not hasattr(self, "_images"):
            d = load_cifar10_jpeg(self.args.data_dir, n_train=0.5, random_state=0)
            self._images = (np.concatenate([d.X_train, d.X_test]),
                            np.concatenate([d.y_train_clean, d.y_test]))
        X, y = self._images
        rng = np.random.RandomState(seed)
        major = seed % 10
        pool, val, test = [], [], []
        for k in range(10):
            idx = rng.permutation(np.flatnonzero(y == k))
            n = c["n_majority"] if k == major else c["n_minority"]
            a, b = n + c["n_val_per_class"], n + c["n_val_per_class"] + c["n_test_per_class"]
            if b > len(idx):
                raise SystemExit(
                    f"class {k} has {len(idx)} images, fewer than its pool, X_val and "
                    f"test need ({n} + {c['n_val_per_class']} + {c['n_test_per_class']})")
            pool.append(idx[:n])
            val.append(idx[n:a])
            test.append(idx[a:b])
        pool, val, test = (np.sort(np.concatenate(p)) for p in (pool, val, test))
        return _pool_bunch(
            [X[pool]], [y[pool]], [-1], X_val=X[val], y_val=y[val], X_test=X[test],
            y_test=y[test], minority=y[pool] != major, groups_test=y[test],
        )


def crop_to_digit_box(images, size=16, level=0.1):
    """MNIST digits cropped to their box and scaled to fill the frame, as USPS's are.

    MNIST centres each digit in a 20x20 box inside 28x28; USPS digits fill
    their 16x16 frame. The box is the rows and columns with a pixel above
    ``level`` times the image's maximum, padded to a square (aspect kept)
    and resized (bilinear, antialiased).
    """
    from skitl.datasets._real import _resize

    out = np.empty((len(images), 1, size, size), np.float32)
    for i, im in enumerate(images[:, 0]):
        on = im > level * im.max()
        rows, cols = np.flatnonzero(on.any(1)), np.flatnonzero(on.any(0))
        box = im[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
        h, w = box.shape
        side = max(h, w)
        square = np.zeros((side, side), np.float32)
        square[(side - h) // 2:(side - h) // 2 + h, (side - w) // 2:(side - w) // 2 + w] = box
        out[i, 0] = _resize(square[None, None], size)[0, 0]
    return out


@register("aux_mix")
class AuxMixTask(Task):
    """A few USPS digits + MNIST framed like USPS: part helps, part hurts.

    The auxiliary pool is MNIST cropped to the digit box (so it looks like
    USPS to a domain classifier): most of it correctly labelled, which helps
    (the network was pretrained on digits 0-4 only), a third with the label
    shifted by one class, which hurts and looks exactly like the rest.
    Every fine-tuning draws ``target_share`` of each batch from the target,
    so that the small target does not drown.
    """

    reference = "influence_default"
    rows = ("finetune_all", "target_only", "oracle", "influence_default",
            "influence_default_auto", "influence_old", "influence_old_auto",
            "influence_sd", "influence_sd_whole", "influence_val", "domain",
            "loss_auto", "loss@count", "random@count", "cleanlab", "jtt", "search",
            "influence_val_small", "influence_and_cleanlab")

    def _arrays(self):
        if not hasattr(self, "_mnist"):
            from skitl.datasets import load_mnist_usps
            from skitl.datasets._real import load_mnist_test

            X28, ym = load_mnist_test(self.args.data_dir)
            X28 = X28.astype(np.float32) / (255.0 if X28.dtype == np.uint8 else 1.0)
            d = load_mnist_usps(self.args.data_dir, n_source=None, n_target_train=None,
                                random_state=0)
            Xc = crop_to_digit_box(X28)
            c = self.cfg
            low = np.flatnonzero(ym < c["source_classes"])
            (pick,) = _split(ym[low], [c["n_source"]], 0)
            src = low[pick]
            self._mnist = (Xc, ym, src, np.setdiff1d(np.arange(len(ym)), src))
            self._usps = (d.X_train, d.y_train, d.X_test, d.y_test)
        return self._mnist, self._usps

    def network(self):
        if not hasattr(self, "_net"):
            from skitl.models import SmallCNN, pretrain_source_cnn

            (Xc, ym, src, _), _ = self._arrays()
            c = self.cfg
            net, how = _harness.cached_network(
                _harness.private_cache_dir(self.args.cache_dir),
                f"target_mnistbox16_digits{c['source_classes']}_smallcnn_n{c['n_source']}"
                f"_e{c['pretrain_epochs']}",
                lambda: pretrain_source_cnn(Xc[src], ym[src], n_classes=10,
                                            epochs=c["pretrain_epochs"], random_state=0),
                lambda: SmallCNN(n_classes=10))
            self.info["source"] = (
                f"SmallCNN pretrained on {len(src)} MNIST images of digits 0-"
                f"{c['source_classes'] - 1} cropped to their box (16x16), "
                f"{c['pretrain_epochs']} epochs ({how})")
            self._net = net
        return self._net, None

    def describe(self):
        c = self.cfg
        return (f"pool: <setting> USPS training images per class (target, sample_domain "
                f"-1) + {c['n_aux_good']} MNIST images cropped to their digit box and "
                f"correctly labelled (helpful) + {c['n_aux_shifted']} such images with "
                "the label shifted by one class (harmful; +1), none of them seen in "
                f"pretraining; X_val: {c['n_val']} other USPS training images; test: the "
                "USPS test set" + ("" if c["n_test"] is None else f" ({c['n_test']})")
                + f"; fine-tuning draws {c['target_share']:.0%} of every batch from the "
                "target")

    def data(self, setting, seed):
        (Xc, ym, _, reservoir), (Xu, yu, Xt, yt) = self._arrays()
        c = self.cfg
        per_class = int(setting)
        rng = np.random.RandomState(seed)
        tgt = np.sort(np.concatenate([rng.choice(np.flatnonzero(yu == k), per_class,
                                                 replace=False) for k in range(10)]))
        rest = np.setdiff1d(np.arange(len(yu)), tgt)
        (val,) = _split(yu[rest], [c["n_val"]], seed)
        val = rest[val]
        aux = rng.choice(reservoir, c["n_aux_good"] + c["n_aux_shifted"], replace=False)
        good, bad = aux[:c["n_aux_good"]], aux[c["n_aux_good"]:]
        n_t, n_g, n_b = len(tgt), len(good), len(bad)
        harmful = np.r_[np.zeros(n_t + n_g, bool), np.ones(n_b, bool)]
        if c["n_test"] is not None and c["n_test"] < len(yt):
            (test,) = _split(yt, [c["n_test"]], 10_000 + seed)
            Xt, yt = Xt[test], yt[test]
        return _pool_bunch(
            [Xu[tgt], Xc[good], Xc[bad]], [yu[tgt], ym[good], (ym[bad] + 1) % 10],
            [-1, 1, 1], X_val=Xu[val], y_val=yu[val], X_test=Xt, y_test=yt,
            harmful=harmful, oracle_keep=~harmful,
            target_keep=np.r_[np.ones(n_t, bool), np.zeros(n_g + n_b, bool)],
        )


@register("digits_rot")
class DigitsRotTask(Task):
    """Embedded digits: a few target digits + source-style digits rotated 90 degrees."""

    def describe(self):
        c = self.cfg
        return (f"scikit-learn's digits (embedded): SmallCNN pretrained per seed on the "
                f"source digits; pool: {c['n_target']} target digits (sample_domain -1) "
                f"+ {c['n_aux']} other target digits rotated by 90 degrees (+1); X_val: "
                f"{c['n_val']} target digits; test: the target test digits")

    def data(self, setting, seed):
        from skitl.datasets import load_digits_transfer
        from skitl.models import pretrain_source_cnn

        c = self.cfg
        d = load_digits_transfer(noise=0.0, random_state=seed)
        self._net = pretrain_source_cnn(d.X_source, d.y_source, n_classes=10,
                                        epochs=c["pretrain_epochs"], random_state=seed)
        self.info["source"] = (f"SmallCNN pretrained on the {len(d.y_source)} source "
                               f"digits, {c['pretrain_epochs']} epochs, seed {seed}")
        tgt, val, aux = _split(d.y_train, [c["n_target"], c["n_val"], c["n_aux"]], seed)
        is_aux = np.r_[np.zeros(len(tgt), bool), np.ones(len(aux), bool)]
        return _pool_bunch(
            [d.X_train[tgt], np.rot90(d.X_train[aux], 1, axes=(2, 3))],
            [d.y_train[tgt], d.y_train[aux]], [-1, 1],
            X_val=d.X_train[val], y_val=d.y_train[val], X_test=d.X_test,
            y_test=d.y_test, harmful=is_aux, oracle_keep=~is_aux,
        )

    def network(self):
        return self._net, None


if set(TASK_CLASSES) != set(CONFIGS):
    raise ImportError(
        f"tasks without a class: {sorted(set(CONFIGS) - set(TASK_CLASSES))}; classes "
        f"registered for tasks without a CONFIGS entry: "
        f"{sorted(set(TASK_CLASSES) - set(CONFIGS))}")
