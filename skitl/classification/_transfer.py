"""TransferClassifier: fine-tune a pretrained network as a scikit-learn classifier.

The estimator is a thin scikit-learn shell around a skorch
``NeuralNetClassifier``: it builds skitl's own copy of the network
(:mod:`skitl._network`), replaces the head for the target classes, applies the
transfer strategy (which parameters train, at which learning rate, which
modules stay in eval mode), optionally prunes the training data with a
selector, and hands the rest to skorch.
"""

import copy
import inspect
import numbers

import numpy as np
import torch
import torch.nn as nn
from sklearn.base import BaseEstimator, ClassifierMixin, _fit_context, clone
from sklearn.metrics import accuracy_score
from sklearn.model_selection import train_test_split
from sklearn.utils import check_array, check_random_state
from sklearn.utils._param_validation import (
    HasMethods,
    Interval,
    StrOptions,
)
from sklearn.utils.validation import check_is_fitted
from skorch import NeuralNetClassifier
from skorch.callbacks import EarlyStopping
from skorch.hf import AccelerateMixin
from torch.utils.data import Dataset, Subset, WeightedRandomSampler

from .._network import (
    build_network,
    freeze_parameters,
    match_parameters,
    reinit_parameters,
    replace_head,
)
from ..utils import (
    check_sample_domain,
    check_X,
    check_y,
    flush_denormal,
    is_dataset,
    resolve_device,
    seeded,
    torch_generator,
    validate_X,
)

_OPTIMIZERS = {
    "adamw": torch.optim.AdamW,
    "adam": torch.optim.Adam,
    "sgd": torch.optim.SGD,
}
_STRATEGIES = ("finetune", "linear_probe", "partial", "scratch")
_BATCHNORM = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)


# ---------------------------------------------------------------------------
# Data plumbing (module level so everything pickles)
# ---------------------------------------------------------------------------


def _to_tensor(x):
    """One sample as a float32 tensor; uint8 images are scaled to [0, 1]."""
    if hasattr(x, "getbands"):  # PIL image
        from torchvision.transforms.functional import to_tensor

        return to_tensor(x)
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(np.array(x))  # copy: never share the user's memory
    elif not isinstance(x, torch.Tensor):
        x = torch.as_tensor(x)
    if x.dtype == torch.uint8:
        return x.float().div_(255.0)
    return x.float()


def _item_x(item):
    return item[0] if isinstance(item, (tuple, list)) else item


def _label(value):
    if isinstance(value, torch.Tensor):
        return value.item()
    return value


class _TransferDataset(Dataset):
    """Samples as ``(x, y)`` tensors for skorch, from an array or a dataset.

    ``indices`` selects a subset without copying; ``transform`` is applied to
    each sample (training only: the split below never gives it to the
    validation part, and prediction builds a dataset without it). With
    ``sample_weight`` (one float per row of ``X``), items are
    ``(x, (y, w))``: the weight travels with its sample through shuffling
    and sampling to :meth:`_TransferNet.get_loss`, and the module's input
    stays the bare ``x``.
    """

    def __init__(self, X, y=None, *, indices=None, transform=None, sample_weight=None):
        self.X = X
        self.y = y
        self.indices = indices
        self.transform = transform
        self.sample_weight = sample_weight

    def __len__(self):
        return len(self.X) if self.indices is None else len(self.indices)

    def view(self, indices, transform=None, *, weighted=True):
        base = np.arange(len(self.X)) if self.indices is None else self.indices
        return _TransferDataset(
            self.X, self.y, indices=base[np.asarray(indices)], transform=transform,
            sample_weight=self.sample_weight if weighted else None,
        )

    def __getitem__(self, i):
        j = int(i if self.indices is None else self.indices[i])
        x = self.X[j]
        x = _to_tensor(x if isinstance(self.X, np.ndarray) else _item_x(x))
        if self.transform is not None:
            x = self.transform(x)
        y = torch.as_tensor(0 if self.y is None else self.y[j], dtype=torch.long)
        if self.sample_weight is None:
            return x, y
        return x, (y, torch.as_tensor(self.sample_weight[j], dtype=torch.float32))


class _Split:
    """skorch ``train_split``: a fixed validation part for early stopping.

    Either indices into the training data (a stratified hold-out) or a
    separate validation dataset (the target set given to ``fit``); the
    training part gets the train-time transform. Only indices are kept
    after fitting, so the fitted net stays small when pickled.
    """

    def __init__(self, valid_indices=None, transform=None, valid_dataset=None):
        self.valid_indices = valid_indices
        self.transform = transform
        self.valid_dataset = valid_dataset

    def __call__(self, dataset, y=None, **fit_params):
        n = len(dataset)
        if self.valid_dataset is not None:
            return dataset.view(np.arange(n), self.transform), self.valid_dataset
        if self.valid_indices is None:
            return dataset.view(np.arange(n), self.transform), None
        mask = np.ones(n, dtype=bool)
        mask[self.valid_indices] = False
        return (
            dataset.view(np.flatnonzero(mask), self.transform),
            # the early-stopping loss is unweighted
            dataset.view(self.valid_indices, weighted=False),
        )


class _TransferNet(NeuralNetClassifier):
    """skorch classifier that trains only ``requires_grad`` parameters and
    keeps the ``eval_modules`` in eval mode while training.

    Keeping frozen BatchNorm layers in eval mode is what makes a linear probe
    a linear probe: in train mode they would normalise with batch statistics
    and overwrite their running statistics.
    """

    def __init__(self, module, *args, eval_modules=(), **kwargs):
        super().__init__(module, *args, **kwargs)
        self.eval_modules = eval_modules

    def _set_training(self, training=True):
        super()._set_training(training)
        if training and self.eval_modules:
            for name in self.eval_modules:
                self.module_.get_submodule(name).eval()

    def get_all_learnable_params(self):
        for name, param in super().get_all_learnable_params():
            if param.requires_grad:
                yield name, param

    def get_loss(self, y_pred, y_true, X=None, training=False):
        # Weighted fits build the criterion with reduction="none" and their
        # training items carry (y, w); anything else reduces as usual.
        weight = None
        if isinstance(y_true, (tuple, list)):
            y_true, weight = y_true
        loss = super().get_loss(y_pred, y_true, X=X, training=training)
        if loss.dim() == 0:
            return loss
        if weight is not None and training:
            loss = loss * weight.to(device=loss.device, dtype=loss.dtype)
        return loss.mean()

    def fit_loop(self, X, y=None, epochs=None, **fit_params):
        # skorch's partial_fit swallows KeyboardInterrupt and returns a
        # half-trained net; keep the exception so TransferClassifier.fit can
        # re-raise it instead of claiming to be fitted.
        self._interrupt = None
        try:
            return super().fit_loop(X, y, epochs=epochs, **fit_params)
        except KeyboardInterrupt as exc:
            if not isinstance(exc, _StopTraining):  # not early stopping
                self._interrupt = exc
            raise


class _AcceleratedTransferNet(AccelerateMixin, _TransferNet):
    """:class:`_TransferNet` trained through Hugging Face Accelerate (skorch's
    ``AccelerateMixin``): mixed precision and multi-GPU data parallelism come
    from Accelerate, not from skitl."""


class _StopTraining(KeyboardInterrupt):
    """skorch's way to stop training (it catches KeyboardInterrupt), told
    apart from a user's interrupt."""


class _EarlyStopping(EarlyStopping):
    """skorch ``EarlyStopping`` whose stop signal is a :class:`_StopTraining`."""

    def on_epoch_end(self, net, **kwargs):
        try:
            super().on_epoch_end(net, **kwargs)
        except KeyboardInterrupt as exc:
            if self.misses_ == self.patience:
                raise _StopTraining from exc
            raise


def _as_list(patterns):
    return [patterns] if isinstance(patterns, str) else list(patterns)


# ---------------------------------------------------------------------------
# The estimator
# ---------------------------------------------------------------------------


class TransferClassifier(ClassifierMixin, BaseEstimator):
    """Fine-tune a pretrained network on a target task, scikit-learn style.

    The network is built from ``module`` and ``weights`` (never the caller's
    object: instances are copied), its classification layer is replaced by a
    new one for the target classes, and it is trained with skorch according to
    ``strategy``. With a ``selector``, the training data are pruned first
    (instance-based transfer: remove harmful samples, then fine-tune).

    Parameters
    ----------
    module : str, nn.Module class, callable or nn.Module instance
        A torchvision model name (``"resnet50"``, built through
        ``torchvision.models.get_model``), an ``nn.Module`` subclass or a
        factory called without arguments, or an instance (deep-copied, never
        trained in place).
    weights : None, str, path-like or dict, default=None
        Pretrained weights. ``None`` keeps the module's own parameters (useful
        for an instance that is already trained). A torchvision weights name
        (``"DEFAULT"``, ``"IMAGENET1K_V1"``) with a torchvision model name
        (downloads on first use). A path to a file written by ``torch.save``
        holding a state dict or a checkpoint with a ``"state_dict"`` entry
        (a ``module.`` prefix from DataParallel is removed), or a state dict.
        Keys must match the network except the head's. Ignored by
        ``strategy="scratch"``.
    head : str, default=None
        Dotted name of the classification layer (an ``nn.Linear``). ``None``
        finds it for ResNet / RegNet (``fc``), VGG / DenseNet / MobileNet /
        EfficientNet / ConvNeXt (``classifier``), ViT (``heads``), Swin
        (``head``) and any module whose last ``nn.Linear`` is the head.
    strategy : {"finetune", "linear_probe", "partial", "scratch"}, default="finetune"
        - ``"finetune"``: train all layers; pretrained layers at
          ``lr * backbone_lr_scale``, the new head at ``lr``.
        - ``"linear_probe"``: train only the new head. The backbone is frozen
          and runs in eval mode (BatchNorm statistics and weights stay
          bit-identical, no dropout before the head).
        - ``"partial"``: the parameters matching ``reinit`` are
          re-initialised (and trained at ``lr``), the rest copied from the
          pretrained network (trained at ``lr * backbone_lr_scale``); variant
          (b) of Wang et al. (2019).
        - ``"scratch"``: no pretrained weights; the network's own
          initialisation (a copy of an instance is re-initialised with each
          layer's ``reset_parameters``), all layers at ``lr``.
    reinit : str or list of str, default=None
        Glob patterns (``fnmatch``) over parameter names, e.g.
        ``["layer4.*"]``; a pattern also covers everything below the module
        it names (``"layer4"``). Required by, and only allowed with,
        ``strategy="partial"``.
    freeze : str or list of str, default=None
        Glob patterns of parameters to keep fixed, with any strategy.
        BatchNorm layers whose parameters are all frozen also stay in eval
        mode.
    selector : object with ``fit_resample(X, y)``, default=None
        Prunes the training data before fine-tuning; it is cloned and fitted
        on each call to :meth:`fit`, and receives the ``X_val`` / ``y_val`` /
        ``sample_domain`` given to :meth:`fit`. When it has an ``estimator``
        parameter set to ``None`` (an ``InfluenceSampleSelector``), a clone of
        this classifier without selector is given to it, so that it analyses
        exactly the pretrained network this classifier then fine-tunes.
    optimizer : {"adamw", "adam", "sgd"} or torch optimizer class, default="adamw"
        ``"sgd"`` uses momentum 0.9. A class is called as
        ``optimizer(param_groups, lr=..., weight_decay=...)``.
    lr : float, default=1e-3
        Learning rate of new parameters (the head, re-initialised ones, all
        of them for ``"scratch"``).
    backbone_lr_scale : float, default=0.1
        Factor on ``lr`` for pretrained parameters (``"finetune"``,
        ``"partial"``). ``0`` keeps them in place but, unlike ``freeze``,
        BatchNorm statistics still adapt.
    weight_decay : float, default=0.0
        Passed to the optimizer (decoupled for AdamW).
    max_epochs : int, default=10
        Number of training epochs (the most, with early stopping).
    max_steps : int, default=None
        Train for about this many optimizer steps (mini-batches) whatever the
        size of the training set after selection: the number of epochs
        closest to it (at least one, at most ``max_epochs``). Selectors that
        keep different amounts of data then get the same compute, which
        makes a search over selectors fair. ``None``: ``max_epochs`` epochs.
    batch_size : int, default=64
        Mini-batch size for training and prediction.
    early_stopping : bool, default=False
        Stop when the validation loss has not improved for
        ``n_iter_no_change`` epochs and restore the best epoch's weights
        (kept in memory, no files). The validation set is the ``X_val`` /
        ``y_val`` given to :meth:`fit` (the target), else a stratified
        ``validation_fraction`` held out of the training data.
    validation_fraction : float, default=0.1
        Fraction held out for early stopping when no ``X_val`` is given (not
        used otherwise).
    n_iter_no_change : int, default=5
        Patience of early stopping, in epochs.
    train_transform : callable, default=None
        Applied to each training sample (a float tensor ``(C, H, W)`` or
        ``(d,)``) at training time only, e.g. torchvision's
        ``v2.RandomHorizontalFlip()``. Never applied for prediction or to the
        early-stopping validation part.
    target_share : float in (0, 1), default=None
        Keep a small target set from drowning in a large auxiliary pool:
        training mini-batches are drawn with replacement (a torch
        ``WeightedRandomSampler`` seeded from ``random_state``) so that target
        samples (``sample_domain < 0``) make up ``target_share`` of the draws
        in expectation and auxiliary samples the rest, uniformly within each
        group; an epoch is still as many draws as there are training samples.
        Needs ``sample_domain`` in :meth:`fit`. When the training part (after
        selection and the early-stopping hold-out) holds only one of the two
        groups, there is nothing to balance and it is shuffled as usual.
        ``None`` shuffles the training set without replacement, each sample
        once per epoch.
    accelerator : None, dict or accelerate.Accelerator, default=None
        Train through Hugging Face Accelerate (skorch's ``AccelerateMixin``)
        for mixed precision and multi-GPU data parallelism: a dict of
        ``accelerate.Accelerator`` arguments (``{"mixed_precision": "bf16"}``;
        a dict clones and pickles like any parameter, the accelerator is built
        in :meth:`fit`) or an ``Accelerator``. ``device`` is then left to
        Accelerate. Launch several GPUs with ``accelerate launch script.py``.
        Needs ``pip install "skitl[accelerate]"``.
    device : str or torch.device, default="auto"
        ``"auto"`` uses CUDA when available, else the CPU; resolved in
        :meth:`fit` (on the machine that fits, e.g. a Dask worker). Ignored
        with an ``accelerator``.
    random_state : int, RandomState instance or None, default=None
        Seeds the head and re-initialisation, the validation split, the
        shuffling and torch's generator during training (restored after), so
        training on the CPU is repeatable.
    verbose : int, default=0
        ``0`` is silent; ``> 0`` prints skorch's table of epochs.

    Attributes
    ----------
    classes_ : ndarray of shape (n_classes,)
        The class labels (any type), sorted.
    n_features_in_ : int
        ``X.shape[1]`` in :meth:`fit`, as scikit-learn's ``validate_data``
        records it: the number of features of 2-D input, the number of
        channels of images ``(N, C, H, W)`` (for a ``Dataset``: the first
        dimension of a sample).
    feature_names_in_ : ndarray of str
        Column names, when fitted on a DataFrame with string column names.
    net_ : skorch.NeuralNetClassifier
        The trained skorch net; ``net_.module_`` is the network and
        ``net_.history`` the training history.
    selector_ : object or None
        The fitted clone of ``selector`` (``None`` without selector).

    See Also
    --------
    skitl.InfluenceSampleSelector : scores and removes harmful samples.

    Notes
    -----
    Inputs: float or uint8 arrays ``(N, C, H, W)`` (uint8 is scaled to
    ``[0, 1]``; normalise as the network expects yourself), 2-D arrays for
    MLP modules, or a torch ``Dataset`` yielding ``(x, y)`` (``y`` may then be
    omitted) or ``x`` with ``y`` given. For cross-validation over a dataset,
    wrap it in ``skorch.helper.SliceDataset``.

    A target set for the selector: ``fit(X, y, X_val=..., y_val=...)`` (a
    clean validation set from the target distribution) or
    ``fit(X, y, sample_domain=...)`` (one integer per sample, negative for
    the target domain, positive for auxiliary / source domains: skada's
    convention). Both are requested through scikit-learn's metadata routing
    (``sklearn.set_config(enable_metadata_routing=True)`` and
    ``clf.set_fit_request(sample_domain=True)``), so they pass through a
    ``Pipeline`` and ``GridSearchCV``, where ``sample_domain`` is split with
    ``X``; :func:`skitl.metrics.make_target_scorer` then scores a search on
    the target samples only. ``sample_weight`` is requested the same way
    (``clf.set_fit_request(sample_weight=True)``). No parameter or method is
    named ``transform``: scikit-learn takes any estimator with that attribute
    for a transformer.

    Weighting the target: ``sample_weight`` multiplies each sample's loss,
    ``target_share`` fixes the fraction of target samples among the
    mini-batch draws (with few target and many auxiliary samples, plain
    shuffling lets the target drown); both may be combined.

    References
    ----------
    T. Wang, J. Huan, M. Zhu. Instance-based Deep Transfer Learning. WACV
    2019 (arXiv:1809.02776).

    Examples
    --------
    >>> import numpy as np, torch.nn as nn
    >>> from skitl import TransferClassifier
    >>> def mlp():
    ...     return nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 10))
    >>> X = np.random.RandomState(0).randn(40, 4).astype("float32")
    >>> y = np.array(["a", "b"] * 20)
    >>> clf = TransferClassifier(mlp, max_epochs=2, random_state=0).fit(X, y)
    >>> clf.predict(X[:3]).shape
    (3,)
    """

    _parameter_constraints = {
        "module": [str, callable],
        "weights": "no_validation",  # a name, a path or a state dict: build_network
        "head": [None, str],
        "strategy": [StrOptions(set(_STRATEGIES))],
        "reinit": [None, str, list, tuple],
        "freeze": [None, str, list, tuple],
        "selector": [None, HasMethods(["fit_resample"])],
        "optimizer": [StrOptions(set(_OPTIMIZERS)), callable],
        "lr": [Interval(numbers.Real, 0, None, closed="neither")],
        "backbone_lr_scale": [Interval(numbers.Real, 0, None, closed="left")],
        "weight_decay": [Interval(numbers.Real, 0, None, closed="left")],
        "max_epochs": [Interval(numbers.Integral, 1, None, closed="left")],
        "max_steps": [None, Interval(numbers.Integral, 1, None, closed="left")],
        "batch_size": [Interval(numbers.Integral, 1, None, closed="left")],
        "early_stopping": ["boolean"],
        "validation_fraction": [Interval(numbers.Real, 0, 1, closed="neither")],
        "n_iter_no_change": [Interval(numbers.Integral, 1, None, closed="left")],
        "train_transform": [None, callable],
        "target_share": [None, Interval(numbers.Real, 0, 1, closed="neither")],
        "accelerator": [None, dict, HasMethods(["prepare", "backward"])],
        "device": [str, torch.device],
        "random_state": ["random_state"],
        "verbose": ["verbose"],
    }

    def __init__(
        self,
        module,
        weights=None,
        *,
        head=None,
        strategy="finetune",
        reinit=None,
        freeze=None,
        selector=None,
        optimizer="adamw",
        lr=1e-3,
        backbone_lr_scale=0.1,
        weight_decay=0.0,
        max_epochs=10,
        max_steps=None,
        batch_size=64,
        early_stopping=False,
        validation_fraction=0.1,
        n_iter_no_change=5,
        train_transform=None,
        target_share=None,
        accelerator=None,
        device="auto",
        random_state=None,
        verbose=0,
    ):
        self.module = module
        self.weights = weights
        self.head = head
        self.strategy = strategy
        self.reinit = reinit
        self.freeze = freeze
        self.selector = selector
        self.optimizer = optimizer
        self.lr = lr
        self.backbone_lr_scale = backbone_lr_scale
        self.weight_decay = weight_decay
        self.max_epochs = max_epochs
        self.max_steps = max_steps
        self.batch_size = batch_size
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.n_iter_no_change = n_iter_no_change
        self.train_transform = train_transform
        self.target_share = target_share
        self.accelerator = accelerator
        self.device = device
        self.random_state = random_state
        self.verbose = verbose

    # -- input validation ---------------------------------------------------

    def _check_X(self, X, *, reset):
        """Validate X (scikit-learn's checks for arrays); record its shape."""
        ndim = None if is_dataset(X) else getattr(X, "ndim", None)
        if ndim is None and not is_dataset(X):
            ndim = np.asarray(X).ndim
        if not reset and ndim is not None and ndim >= 2 and self._input_ndim is not None \
                and ndim != self._input_ndim:
            # before validate_data, whose message would count channels as features
            raise ValueError(
                f"X has {ndim} dimensions (shape {np.shape(X)}), but "
                f"{type(self).__name__} was fitted on {self._input_ndim}-D input."
            )
        X = validate_X(self, X, reset=reset)
        if reset:
            self._input_ndim = ndim
            self._input_shape = None if ndim is None else tuple(X.shape[1:])
        return X

    @staticmethod
    def _labels_from_dataset(X):
        targets = getattr(X, "targets", None)
        if targets is not None and len(targets) == len(X):
            return np.asarray([_label(t) for t in targets])
        labels = []
        for i in range(len(X)):
            item = X[i]
            if not (isinstance(item, (tuple, list)) and len(item) >= 2):
                raise ValueError(
                    "y is None and the items of the X dataset are not (x, y) "
                    "pairs; pass the labels as y."
                )
            labels.append(_label(item[1]))
        return np.asarray(labels)

    def _check_y(self, X, y, name="y"):
        if y is None:
            if not is_dataset(X):
                raise ValueError(
                    f"{type(self).__name__} requires y to be passed, but the target "
                    f"{name} is None."
                )
            y = self._labels_from_dataset(X)
        elif is_dataset(y):  # e.g. a skorch SliceDataset over the labels
            y = np.asarray([_label(v) for v in y])
        return check_y(y, name=name, n_samples=len(X))

    def _check_target_set(self, X, X_val, y_val, sample_domain):
        """Validate what fit hands the selector (and early stopping)."""
        if (X_val is None) != (y_val is None):
            raise ValueError("Pass both X_val and y_val, or neither.")
        if X_val is not None:
            X_val = check_X(X_val, name="X_val")
            y_val = self._check_y(X_val, y_val, name="y_val")
            if not is_dataset(X) and not is_dataset(X_val) and X_val.shape[1:] != X.shape[1:]:
                raise ValueError(
                    f"X_val has per-sample shape {X_val.shape[1:]} but X has "
                    f"{X.shape[1:]}."
                )
            unseen = ~np.isin(y_val, self.classes_)
            if unseen.any():
                raise ValueError(
                    f"y_val contains labels not present in y: "
                    f"{np.unique(y_val[unseen]).tolist()}."
                )
        if sample_domain is not None:
            # the classifier takes any mix (a training fold, what a selector
            # kept); a selector checks what it needs itself
            sample_domain, _ = check_sample_domain(sample_domain, len(X),
                                                   require_auxiliary=False,
                                                   require_target=False)
        return X_val, y_val, sample_domain

    # -- building the network -----------------------------------------------

    @staticmethod
    def _draw_seeds(rng):
        # One draw of five seeds: network, head, re-initialisation, split,
        # training. The order is what _pretrained_network relies on.
        return [int(s) for s in rng.randint(0, 2**31 - 1, size=5)]

    def _base_network(self, seed):
        """skitl's own copy of the network before the head is replaced."""
        with seeded(seed):
            if self.strategy == "scratch":
                # a fresh construction is the network's own initialisation;
                # a copied instance is reset layer by layer.
                net, head_name = build_network(self.module, None, head=self.head)
                if isinstance(self.module, nn.Module):
                    reinit_parameters(net, "*", random_state=seed)
            else:
                net, head_name = build_network(self.module, self.weights, head=self.head)
        return net, head_name

    def _pretrained_network(self):
        """The network :meth:`fit` starts from, built and seeded as fit does.

        Selectors analyse it (``InfluenceSampleSelector(estimator=clf)``): the
        classifier is the one place that builds and seeds its network, so a
        factory's random initialisation is the same here and in ``fit``. The
        estimator's ``random_state`` is not advanced.

        Returns
        -------
        net : torch.nn.Module
            A new module with the original (source) head.
        head_name : str
            Dotted name of the classification layer.
        """
        rng = check_random_state(copy.deepcopy(self.random_state))
        return self._base_network(self._draw_seeds(rng)[0])

    def _check_strategy_params(self):
        # relations between parameters, which _parameter_constraints cannot say
        if self.strategy == "partial" and not self.reinit:
            raise ValueError(
                "strategy='partial' needs reinit: glob patterns of the parameters "
                "to re-initialise, e.g. reinit=['layer4.*']."
            )
        if self.reinit and self.strategy != "partial":
            raise ValueError(
                f"reinit is only used by strategy='partial', got "
                f"strategy={self.strategy!r} with reinit={self.reinit!r}."
            )

    def _build(self, n_classes, sample, seeds):
        """Return the network and the settings that realise the strategy."""
        strategy = self.strategy
        net, head_name = self._base_network(seeds[0])
        replace_head(net, head_name, n_classes, random_state=seeds[1])
        if any(
            isinstance(p, nn.parameter.UninitializedParameter) for p in net.parameters()
        ):
            # Lazy layers must see data before the optimizer is built.
            self._dry_run(net, sample, seeds[1])
        new = {
            f"{head_name}.{n}"
            for n, _ in net.get_submodule(head_name).named_parameters()
        }
        head_patterns = [head_name]
        if strategy == "partial":
            new |= set(reinit_parameters(net, self.reinit, random_state=seeds[2]))
            head_patterns += _as_list(self.reinit)
        eval_modules = []
        if strategy == "linear_probe":
            for name, param in net.named_parameters():
                if name not in new:
                    param.requires_grad_(False)
            eval_modules = self._modules_outside(net, head_name)
        if self.freeze:
            freeze_parameters(net, self.freeze)
            for name, mod in net.named_modules():
                params = list(mod.parameters(recurse=False))
                if (
                    isinstance(mod, _BATCHNORM)
                    and params
                    and not any(p.requires_grad for p in params)
                    and not any(
                        name.startswith(m + ".") or name == m for m in eval_modules
                    )
                ):
                    eval_modules.append(name)
        if not any(p.requires_grad for p in net.parameters()):
            raise ValueError(
                "Every parameter is frozen (freeze covers the whole network); "
                "nothing would be trained."
            )
        if strategy == "scratch":
            base_lr, groups = self.lr, []
        else:
            base_lr = self.lr * self.backbone_lr_scale
            # the parameter names, resolved with the one pattern rule of
            # freeze / reinit / params (a module name covers what is below it)
            fast = match_parameters(net, head_patterns)
            groups = [(name, {"lr": self.lr}) for name in fast]
        return net, head_name, base_lr, groups, tuple(eval_modules)

    @staticmethod
    def _modules_outside(net, head_name):
        """Top-most modules that are neither the head nor contain it."""
        out = []
        for name, _ in net.named_modules():
            if not name or name == head_name or name.startswith(head_name + "."):
                continue
            if head_name.startswith(name + "."):  # an ancestor of the head
                continue
            if any(name.startswith(m + ".") for m in out):
                continue
            out.append(name)
        return out

    @staticmethod
    def _dry_run(net, sample, seed):
        with seeded(seed), torch.no_grad():
            was_training = net.training
            net.eval()
            try:
                net(sample)
            except Exception as exc:
                raise ValueError(
                    f"The network failed on input of shape {tuple(sample.shape)}: {exc}"
                ) from exc
            net.train(was_training)

    def _make_optimizer_kwargs(self):
        kwargs = {"optimizer__weight_decay": self.weight_decay}
        if not isinstance(self.optimizer, str):
            if isinstance(self.optimizer, type) and not issubclass(
                self.optimizer, torch.optim.Optimizer
            ):
                raise TypeError(
                    f"optimizer={self.optimizer!r} is not a torch.optim.Optimizer "
                    "subclass."
                )
            return self.optimizer, kwargs
        if self.optimizer == "sgd":
            kwargs["optimizer__momentum"] = 0.9
        return _OPTIMIZERS[self.optimizer], kwargs

    # -- public API -----------------------------------------------------------

    @_fit_context(prefer_skip_nested_validation=False)
    def fit(self, X, y=None, *, X_val=None, y_val=None, sample_domain=None,
            sample_weight=None):
        """Build the network, optionally prune the data, and train.

        A fit that fails or is interrupted (``KeyboardInterrupt``, also during
        training, which skorch alone would swallow) re-raises and leaves the
        estimator unfitted: every fitted attribute, including those of an
        earlier successful fit, is removed.

        Parameters
        ----------
        X : array-like of shape (n_samples, ...) or torch Dataset
            Float or uint8 images ``(N, C, H, W)``, 2-D features for MLP
            modules, or a ``Dataset`` (see the class notes).
        y : array-like of shape (n_samples,), default=None
            Class labels of any type; may be omitted when ``X`` is a dataset
            yielding ``(x, y)`` pairs.
        X_val : array-like or torch Dataset, default=None
            A clean validation set from the target distribution: handed to
            the selector (the influence selector scores every sample of ``X``
            against it) and used for early stopping.
        y_val : array-like of shape (n_val,), default=None
            Its labels (all of them classes of ``y``).
        sample_domain : array-like of int of shape (n_samples,), default=None
            Domain of each sample of ``X`` (negative: target, positive:
            auxiliary / source), handed to the selector and used by
            ``target_share``; ignored without either.
        sample_weight : array-like of shape (n_samples,), default=None
            Non-negative, finite weights, not all zero, multiplying each
            sample's training loss (scikit-learn's meaning). Only their ratios
            matter: they are rescaled to mean 1 over the samples trained on,
            so the mini-batch loss is the mean of ``w_i * L_i`` and the scale
            of the weights does not change the step size; with full-batch
            training the loss is ``sum(w_i * L_i) / sum(w_i)``, so an integer
            weight equals repeating the sample. Samples of weight 0 are removed
            before anything else (the selector, the early-stopping hold-out
            and the batches never see them). The early-stopping validation
            loss is unweighted. With a selector, the weights follow the kept
            samples through its ``sample_indices_``. ``None``: all equal.

        Returns
        -------
        self : TransferClassifier
            The fitted classifier.

        Raises
        ------
        ValueError
            Invalid inputs; ``sample_weight`` of the wrong shape, negative,
            NaN or infinite, all zero or zero on all classes but one;
            ``target_share`` without ``sample_domain``, or a training part
            without target or auxiliary samples; a selector without
            ``sample_indices_`` where weights or domains must follow its
            selection.
        """
        try:
            with flush_denormal():
                return self._fit(X, y, X_val, y_val, sample_domain, sample_weight)
        except BaseException:
            self._clear_fitted()
            raise

    def _clear_fitted(self):
        for attr in list(vars(self)):
            if (attr.endswith("_") and not attr.startswith("__")) or attr in (
                "_head_name",
                "_input_ndim",
                "_input_shape",
            ):
                delattr(self, attr)

    def _fit(self, X, y, X_val, y_val, sample_domain, sample_weight):
        self._check_strategy_params()
        X = self._check_X(X, reset=True)
        y = self._check_y(X, y)
        self.classes_, y_enc = np.unique(y, return_inverse=True)
        if len(self.classes_) < 2:
            raise ValueError(
                f"y has {len(self.classes_)} class; at least 2 classes are needed "
                "to train a classifier."
            )
        X_val, y_val, sample_domain = self._check_target_set(X, X_val, y_val, sample_domain)
        if self.target_share is not None and sample_domain is None:
            raise ValueError(
                f"target_share={self.target_share} needs sample_domain in fit "
                "(negative for the target samples, positive for the auxiliary "
                "ones), but sample_domain is None."
            )
        sample_weight = _check_sample_weight(sample_weight, len(X), y_enc)
        if sample_weight is not None and not sample_weight.all():
            # weight 0 means absent: not selected, held out or drawn either
            X, y, y_enc, sample_domain, sample_weight = _take_rows(
                np.flatnonzero(sample_weight), X, y, y_enc, sample_domain, sample_weight
            )
        rng = check_random_state(self.random_state)
        # what the selector's copy of this classifier draws its seeds from
        rng_at_start = copy.deepcopy(rng)
        seeds = self._draw_seeds(rng)

        self.selector_ = None
        if self.selector is not None:
            X, y_enc, kept = self._select(
                X, y, rng_at_start, seeds[0],
                dict(X_val=X_val, y_val=y_val, sample_domain=sample_domain),
            )
            follow = {name: value for name, value in (
                ("sample_weight", sample_weight),
                ("sample_domain", sample_domain if self.target_share is not None else None),
            ) if value is not None}
            if follow:
                kept = self._kept_indices(kept, len(X), len(y), follow)
                sample_weight = None if sample_weight is None else sample_weight[kept]
                sample_domain = None if sample_domain is None else sample_domain[kept]

        device = resolve_device(self.device)
        first = _TransferDataset(X, None)
        sample = torch.stack([first[i][0] for i in range(min(2, len(first)))])
        net, head_name, base_lr, groups, eval_modules = self._build(
            len(self.classes_), sample, seeds
        )
        self._head_name = head_name

        split = _Split(None, self.train_transform)
        train_idx = np.arange(len(X))
        callbacks = []
        if self.early_stopping:
            if X_val is not None:
                y_val_enc = np.searchsorted(self.classes_, y_val).astype(np.int64)
                split = _Split(None, self.train_transform,
                               valid_dataset=_TransferDataset(X_val, y_val_enc))
            else:
                valid_idx = self._validation_indices(y_enc, seeds[3])
                split = _Split(valid_idx, self.train_transform)
                train_idx = np.setdiff1d(train_idx, valid_idx)
            callbacks.append(
                (
                    "early_stopping",
                    _EarlyStopping(
                        monitor="valid_loss",
                        patience=self.n_iter_no_change,
                        load_best=True,
                    ),
                )
            )
        n_train = len(train_idx)
        loss_weight = None
        if sample_weight is not None:
            # mean 1 over the training part: the weights' scale must not
            # change the step size, only their ratios the loss
            loss_weight = np.zeros(len(X), dtype=np.float32)
            loss_weight[train_idx] = sample_weight[train_idx] / sample_weight[train_idx].mean()
        generator = torch_generator(seeds[4])
        iterator = {"iterator_train__shuffle": True}
        sampler = (None if self.target_share is None
                   else self._target_sampler(sample_domain[train_idx], generator))
        if sampler is not None:
            iterator = {"iterator_train__shuffle": False,
                        "iterator_train__sampler": sampler}
        optimizer, opt_kwargs = self._make_optimizer_kwargs()
        if groups:
            opt_kwargs["optimizer__param_groups"] = groups
        net_cls, placement = self._net_class(device)
        # per-sample losses, weighted and averaged in _TransferNet.get_loss
        criterion = {} if loss_weight is None else {"criterion__reduction": "none"}
        self.net_ = net_cls(
            net,
            criterion=nn.CrossEntropyLoss,
            optimizer=optimizer,
            lr=base_lr,
            max_epochs=self._epochs(n_train),
            batch_size=self.batch_size,
            train_split=split,
            classes=list(range(len(self.classes_))),
            callbacks=callbacks,
            # a sampler shares the loader's generator, as torch's own
            # shuffling does
            iterator_train__generator=generator,
            # a last batch of one sample breaks BatchNorm in train mode
            iterator_train__drop_last=(
                n_train > self.batch_size and n_train % self.batch_size == 1
            ),
            verbose=self.verbose,
            eval_modules=eval_modules,
            **iterator,
            **criterion,
            **placement,
            **opt_kwargs,
        )
        dataset = _TransferDataset(
            X, np.asarray(y_enc, dtype=np.int64), sample_weight=loss_weight
        )
        with seeded(seeds[4], device):
            self.net_.fit(dataset, y=None)
        if getattr(self.net_, "_interrupt", None) is not None:
            raise self.net_._interrupt
        # the validation set was only needed while training; do not pickle it
        split.valid_dataset = None
        if self.accelerator is not None:
            # where Accelerate put the network, so that an unpickled net knows
            self.net_.device = str(next(self.net_.module_.parameters()).device)
        return self

    def _epochs(self, n_train):
        """Epochs of this fit: ``max_epochs``, or about ``max_steps`` steps."""
        if self.max_steps is None:
            return self.max_epochs
        per_epoch = max(1, -(-int(n_train) // int(self.batch_size)))
        return int(min(self.max_epochs, max(1, round(self.max_steps / per_epoch))))

    def _target_sampler(self, domain, generator):
        """Draws with replacement, ``target_share`` of them target samples."""
        is_target = domain < 0
        n_target = int(is_target.sum())
        n_aux = len(domain) - n_target
        if n_target == 0 or n_aux == 0:
            # one group only (a selector kept just the target, say): there is
            # nothing to balance, every sample is drawn alike
            return None
        share = float(self.target_share)
        p = np.where(is_target, share / n_target, (1.0 - share) / n_aux)
        return WeightedRandomSampler(
            torch.as_tensor(p, dtype=torch.float64), num_samples=len(domain),
            replacement=True, generator=generator,
        )

    def _kept_indices(self, kept, n_kept, n_before, follow):
        """The selector's ``sample_indices_``, checked against what it returned."""
        name = type(self.selector_).__name__
        what = " and ".join(follow)
        if kept is None:
            raise ValueError(
                f"The selector {name} reports no sample_indices_ after fit_resample, "
                f"so {what} cannot follow its selection; use a selector that sets "
                "sample_indices_ (skitl selectors, imbalanced-learn under-samplers)."
            )
        kept = np.asarray(kept)
        if (
            kept.ndim != 1
            or kept.dtype.kind not in "iu"
            or len(kept) != n_kept
            or (len(kept) and (kept.min() < 0 or kept.max() >= n_before))
        ):
            raise ValueError(
                f"The selector {name} reports sample_indices_ that do not match the "
                f"{n_kept} samples it returned (integers in [0, {n_before})), so "
                f"{what} cannot follow its selection."
            )
        return kept

    def _net_class(self, device):
        """The skorch net class and how it places the network on a device."""
        if self.accelerator is None:
            return _TransferNet, {"device": device}
        accelerator = self.accelerator
        if isinstance(accelerator, dict):
            try:
                from accelerate import Accelerator
            except ImportError as exc:
                raise ImportError(
                    "accelerator= needs Hugging Face Accelerate, an optional "
                    'dependency: pip install "skitl[accelerate]"'
                ) from exc
            accelerator = Accelerator(**accelerator)
        # Accelerate's printer ignores verbose=0; only the main process prints
        sink = "auto" if self.verbose else _no_print
        return _AcceleratedTransferNet, {"accelerator": accelerator, "device": None,
                                         "callbacks__print_log__sink": sink}

    def _validation_indices(self, y_enc, seed):
        idx = np.arange(len(y_enc))
        try:
            _, valid = train_test_split(
                idx,
                test_size=self.validation_fraction,
                stratify=y_enc,
                random_state=seed,
            )
        except ValueError:
            # a class with a single sample (or a tiny set) cannot be
            # stratified; fall back to a plain random split
            _, valid = train_test_split(
                idx, test_size=self.validation_fraction, random_state=seed
            )
        if len(valid) == 0 or len(valid) == len(idx):
            raise ValueError(
                f"validation_fraction={self.validation_fraction} leaves no data for "
                f"training or validation with {len(idx)} samples."
            )
        return np.sort(valid)

    def _select(self, X, y, rng_at_start, seed, target):
        # safe=False: any object with fit_resample works, estimator or not
        sel = clone(self.selector, safe=False)
        if hasattr(sel, "get_params"):
            params = sel.get_params(deep=False)
            if "estimator" in params and params["estimator"] is None:
                # it analyses this very classifier's pretrained network: the
                # copy draws its seeds from the same random state
                sel.set_params(
                    estimator=clone(self).set_params(
                        selector=None, random_state=rng_at_start
                    )
                )
        kwargs = {k: v for k, v in target.items() if v is not None}
        if kwargs:
            _check_accepts(sel, kwargs)
        # a selector that draws torch random numbers is repeatable too
        with seeded(seed):
            X_kept, y_kept = sel.fit_resample(X, y, **kwargs)
        self.selector_ = sel
        kept = getattr(sel, "sample_indices_", None)
        X_kept = check_X(X_kept, name="X returned by the selector")
        y_kept = check_y(
            y_kept if not is_dataset(y_kept) else [_label(v) for v in y_kept],
            name="y returned by the selector",
            n_samples=len(X_kept),
        )
        unknown = ~np.isin(y_kept, self.classes_)
        if unknown.any():
            raise ValueError(
                f"The selector returned labels not in y: {np.unique(y_kept[unknown])}."
            )
        return X_kept, np.searchsorted(self.classes_, y_kept), kept

    def _forward(self, X):
        """Probabilities, with a clear error when the input cannot pass."""
        try:
            # torch's DataLoader draws a seed from the global generator even
            # without shuffling: predicting must not move the user's stream
            with flush_denormal(), torch.random.fork_rng(devices=[]):
                proba = self.net_.predict_proba(_TransferDataset(X, None))
        except RuntimeError as exc:
            shape = (
                f"per-sample shape {tuple(X.shape[1:])}" if not is_dataset(X)
                else "samples of the given dataset"
            )
            raise ValueError(
                f"The network cannot process X ({shape}); it was fitted on "
                f"{self._fitted_shape_text()}. Pass inputs of the fitted shape "
                f"(resize images to it). torch said: {exc}"
            ) from exc
        return np.asarray(proba, dtype=np.float64)

    def _fitted_shape_text(self):
        shape = getattr(self, "_input_shape", None)
        return "a Dataset" if shape is None else f"per-sample shape {shape}"

    def predict_proba(self, X):
        """Class probabilities (softmax of the network's outputs).

        Parameters
        ----------
        X : array-like of shape (n_samples, ...) or torch Dataset
            Inputs of the kind and per-sample shape seen in :meth:`fit`.

        Returns
        -------
        proba : ndarray of shape (n_samples, n_classes)
            Columns in the order of ``classes_``.
        """
        check_is_fitted(self, "net_")
        X = self._check_X(X, reset=False)
        proba = self._forward(X)
        return proba / proba.sum(axis=1, keepdims=True)

    def predict(self, X):
        """Predicted class labels, of the type of ``y`` in :meth:`fit`.

        Parameters
        ----------
        X : array-like of shape (n_samples, ...) or torch Dataset
            Inputs of the kind and per-sample shape seen in :meth:`fit`.

        Returns
        -------
        y_pred : ndarray of shape (n_samples,)
        """
        proba = self.predict_proba(X)
        return self.classes_[np.argmax(proba, axis=1)]

    def score(self, X, y=None, sample_weight=None):
        """Mean accuracy on ``(X, y)``.

        Labels never seen in :meth:`fit` cannot be predicted and count as
        errors, as in every scikit-learn classifier (so cross-validation with
        a rare class scores instead of failing).

        Parameters
        ----------
        X : array-like of shape (n_samples, ...) or torch Dataset
            Inputs of the kind and per-sample shape seen in :meth:`fit`.
        y : array-like of shape (n_samples,), default=None
            True labels; may be omitted when ``X`` is a dataset of
            ``(x, y)`` pairs.
        sample_weight : array-like of shape (n_samples,), default=None
            Weights of the samples in the mean.

        Returns
        -------
        score : float
        """
        check_is_fitted(self, "net_")
        y = self._check_y(X, y)
        return float(accuracy_score(y, self.predict(X), sample_weight=sample_weight))


def _check_sample_weight(sample_weight, n_samples, y_enc):
    """``sample_weight`` as a new float64 array, or None; each defect named."""
    if sample_weight is None:
        return None
    if isinstance(sample_weight, torch.Tensor):
        sample_weight = sample_weight.detach().cpu().numpy()
    # asarray, not np.ndim: array-likes may refuse numpy's function protocol
    sample_weight = np.asarray(sample_weight)
    if sample_weight.ndim != 1:
        raise ValueError(
            "sample_weight must be 1-D, of shape (n_samples,), got shape "
            f"{sample_weight.shape}."
        )
    # copy: the caller's array is never written, nor shared with the net
    sw = check_array(sample_weight, ensure_2d=False, dtype=np.float64,
                     ensure_all_finite=False, copy=True, input_name="sample_weight")
    if sw.shape[0] != n_samples:
        raise ValueError(
            f"sample_weight has {sw.shape[0]} values but X has {n_samples} "
            "samples; pass one weight per sample."
        )
    for bad, what in ((np.isnan(sw), "NaN"), (np.isinf(sw), "infinity")):
        if bad.any():
            raise ValueError(
                f"sample_weight contains {what} ({int(bad.sum())} values); weights "
                "must be finite."
            )
    if (sw < 0).any():
        raise ValueError(
            f"sample_weight has {int((sw < 0).sum())} negative values; weights "
            "must be non-negative."
        )
    if not sw.any():
        raise ValueError(
            "sample_weight is zero for every sample; at least one weight must be "
            "positive."
        )
    if len(np.unique(y_enc[sw > 0])) < 2:
        raise ValueError(
            "sample_weight is zero for every sample of all classes but one; at "
            "least 2 classes with positive weight are needed to train a classifier."
        )
    return sw


def _take_rows(rows, X, *arrays):
    """Rows of ``X`` (an array or a dataset) and of aligned 1-D arrays."""
    X = Subset(X, rows.tolist()) if is_dataset(X) else X[rows]
    return (X, *(None if a is None else a[rows] for a in arrays))


def _no_print(*args, **kwargs):
    """A print sink that prints nothing (module level, so nets pickle)."""


def _check_accepts(selector, kwargs):
    """Name the selector that cannot take the target set, before it fails."""
    try:
        sig = inspect.signature(selector.fit_resample)
    except (TypeError, ValueError):  # pragma: no cover - builtins
        return
    params = sig.parameters
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return
    missing = sorted(set(kwargs) - set(params))
    if missing:
        raise TypeError(
            f"The selector {type(selector).__name__}.fit_resample does not accept "
            f"{missing}, which were passed to fit; use a skitl selector or one "
            "whose fit_resample takes them."
        )
