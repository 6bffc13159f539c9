"""Plumbing shared by the classifier and the selectors: networks and heads.

Resolve a module specification, load pretrained weights, find and replace the
classification layer, re-initialise or freeze parameters by glob pattern.
"""

import copy
import fnmatch
import inspect
import math
import os
import pickle
from collections.abc import Mapping

import torch
import torch.nn as nn
import torchvision

from .utils import seeded

# Attribute names torchvision's families use for their classifier, most
# specific first. The head itself is the last nn.Linear inside that attribute.
_HEAD_ATTRIBUTES = ("fc", "classifier", "heads", "head", "linear", "last_linear")


def _last_linear(module, prefix):
    found = None
    for name, sub in module.named_modules():
        if isinstance(sub, nn.Linear):
            found = f"{prefix}.{name}" if name else prefix
    return found


def find_head(net, head=None):
    """Return the dotted name of the classification layer of ``net``.

    Parameters
    ----------
    net : torch.nn.Module
        The network.
    head : str, optional
        Dotted name given by the user (``"classifier.1"``); checked to exist and
        to be an ``nn.Linear``.

    Returns
    -------
    name : str
        Dotted module name of the final ``nn.Linear`` classification layer.

    Raises
    ------
    ValueError
        When ``head`` does not name an ``nn.Linear`` or no head can be found.
    """
    if head is not None:
        try:
            sub = net.get_submodule(head)
        except AttributeError as exc:
            raise ValueError(
                f"head={head!r} does not name a submodule of {type(net).__name__}."
            ) from exc
        if not isinstance(sub, nn.Linear):
            raise ValueError(
                f"head={head!r} names a {type(sub).__name__}; skitl needs the final "
                "nn.Linear classification layer."
            )
        return head
    for attr in _HEAD_ATTRIBUTES:
        sub = getattr(net, attr, None)
        if isinstance(sub, nn.Module):
            name = _last_linear(sub, attr)
            if name is not None:
                return name
    name = _last_linear(net, "")
    if name:
        return name.lstrip(".")
    raise ValueError(
        f"Could not find a classification layer (nn.Linear) in {type(net).__name__}; "
        "name it with head='dotted.name'."
    )


# ---------------------------------------------------------------------------
# Building a network and loading pretrained weights
# ---------------------------------------------------------------------------

# Keys under which common training scripts nest the state dict of a checkpoint
# (``{"state_dict": ..., "best_prec1": ...}``, Lightning, timm, ...).
_CHECKPOINT_KEYS = ("state_dict", "model_state_dict", "model")
# Prefixes added by nn.DataParallel / DistributedDataParallel and torch.compile.
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")
_WEIGHT_FILE_SUFFIXES = (".pt", ".pth", ".th", ".ckpt", ".bin", ".tar")


def _is_torchvision_name(name):
    try:
        return name.lower() in torchvision.models.list_models()
    except Exception:  # pragma: no cover - very old torchvision
        return False


def _is_weights_enum(weights):
    return isinstance(weights, torchvision.models.WeightsEnum)


def _looks_like_path(value):
    value = os.fspath(value)
    return (
        os.sep in value
        or (os.altsep is not None and os.altsep in value)
        or value.lower().endswith(_WEIGHT_FILE_SUFFIXES)
    )


def _instantiate(module, weights_kwarg=None):
    """Return a fresh ``nn.Module`` from a class or factory (never the user's)."""
    kwargs = {} if weights_kwarg is None else {"weights": weights_kwarg}
    if isinstance(module, type) and not issubclass(module, nn.Module):
        raise TypeError(
            f"module={module!r} is a class but not a torch.nn.Module subclass."
        )
    net = module(**kwargs)
    if not isinstance(net, nn.Module):
        raise TypeError(
            f"module={module!r} returned a {type(net).__name__}, not a "
            "torch.nn.Module; pass a torchvision model name, an nn.Module class, "
            "a factory returning an nn.Module, or an nn.Module instance."
        )
    return net


def _accepts_weights_kwarg(factory):
    try:
        return "weights" in inspect.signature(factory).parameters
    except (TypeError, ValueError):
        return False


def _unwrap_checkpoint(state, source):
    if not isinstance(state, Mapping):
        raise TypeError(
            f"weights from {source} is a {type(state).__name__}, not a state dict "
            "(a mapping of parameter names to tensors). Save a model with "
            "torch.save(model.state_dict(), path)."
        )
    if not all(isinstance(v, torch.Tensor) for v in state.values()):
        for key in _CHECKPOINT_KEYS:
            if isinstance(state.get(key), Mapping):
                return _unwrap_checkpoint(state[key], source)
        bad = [k for k, v in state.items() if not isinstance(v, torch.Tensor)][:5]
        raise ValueError(
            f"weights from {source} is neither a state dict nor a checkpoint with a "
            f"{' / '.join(repr(k) for k in _CHECKPOINT_KEYS)} entry; non-tensor "
            f"entries: {bad}."
        )
    state = dict(state)  # never modify the caller's mapping
    for prefix in _WRAPPER_PREFIXES:
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix) :]: v for k, v in state.items()}
    return state


def _read_weights(weights):
    """Return ``(state_dict, source)`` for a path, a mapping or a WeightsEnum."""
    if _is_weights_enum(weights):
        # Downloads (cached) through torchvision's hub machinery.
        return weights.get_state_dict(progress=False, check_hash=True), repr(weights)
    if isinstance(weights, (str, os.PathLike)):
        path = os.fspath(weights)
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as exc:
            if "unsupported global" in str(exc).lower():
                raise ValueError(
                    f"Could not load weights from {path!r} with weights_only=True: "
                    "it holds more than tensors (a pickled model?). Save "
                    "model.state_dict() instead."
                ) from exc
            raise ValueError(_unreadable(path, exc)) from exc
        except (RuntimeError, EOFError, OSError, ValueError) as exc:
            # torch reports a truncated zip as "PytorchStreamReader failed
            # reading zip archive", which names neither the file nor the cause.
            raise ValueError(_unreadable(path, exc)) from exc
        return state, repr(path)
    return weights, "the given state dict"


def _unreadable(path, exc):
    size = os.path.getsize(path) if os.path.exists(path) else 0
    # torch's own first line about unpickling advises weights_only=False,
    # which is the wrong advice for a damaged file: leave it out.
    detail = "" if isinstance(exc, pickle.UnpicklingError) else (
        str(exc).splitlines()[0] if str(exc) else "")
    return (
        f"Could not read the weights file {path!r} ({size} bytes): it is truncated, "
        f"corrupt or not written by torch.save ({type(exc).__name__}"
        f"{': ' + detail if detail else ''})."
    )


def load_weights(net, weights, *, head=None, strict=True, assign=False):
    """Load a state dict, checkpoint file or torchvision weights into ``net``.

    Parameters
    ----------
    net : torch.nn.Module
        Network to load into (modified in place).
    weights : str, path-like, mapping or torchvision ``WeightsEnum``
        A path to a file written by ``torch.save`` (loaded with
        ``weights_only=True``), a state dict, or a checkpoint mapping holding
        one under a ``"state_dict"`` / ``"model_state_dict"`` / ``"model"``
        key. A ``module.`` (DataParallel) or ``_orig_mod.`` (torch.compile)
        prefix on every key is removed.
    head : str, optional
        Dotted name of the classification layer. Its entries may be missing
        or differ in shape (the head is replaced for the target classes
        anyway); they are then left at the network's own values.
    strict : bool, default=True
        Whether any other missing, unexpected or mis-shaped key is an error.
    assign : bool, default=False
        Assign the loaded tensors (cast to the network's dtypes) instead of
        copying them into the network's own: for a network built on the meta
        device, whose own tensors hold no data. Only for tensors nobody else
        holds (read from a file).

    Returns
    -------
    skipped : list of str
        Keys of ``net`` not loaded (head keys, and more when ``strict=False``).

    Raises
    ------
    ValueError
        When ``strict`` and the keys do not match, listing them.
    """
    state, source = _read_weights(weights)
    state = _unwrap_checkpoint(state, source)
    target = net.state_dict()
    head_keys = set()
    if head is not None:
        head_keys = {
            f"{head}.{n}" for n, _ in net.get_submodule(head).named_parameters()
        }
    missing = [k for k in target if k not in state]
    unexpected = [k for k in state if k not in target]
    mismatched = [
        f"{k}: checkpoint {tuple(state[k].shape)} vs network {tuple(target[k].shape)}"
        for k in target
        if k in state
        and k not in head_keys
        and not _is_uninitialized(target[k])
        and tuple(state[k].shape) != tuple(target[k].shape)
    ]
    # Old checkpoints predate BatchNorm's num_batches_tracked; the head is
    # replaced anyway, so its absence or shape does not matter.
    missing_bad = [
        k
        for k in missing
        if k not in head_keys and not k.endswith("num_batches_tracked")
    ]
    unexpected_bad = [
        k for k in unexpected if not (head is not None and k.startswith(f"{head}."))
    ]
    if strict and (missing_bad or unexpected_bad or mismatched):
        parts = []
        for label, keys in (
            ("missing", missing_bad),
            ("unexpected", unexpected_bad),
            ("shape mismatch", mismatched),
        ):
            if keys:
                more = f" ... and {len(keys) - 10} more" if len(keys) > 10 else ""
                parts.append(f"{label} ({len(keys)}): {keys[:10]}{more}")
        raise ValueError(
            f"weights from {source} do not fit {type(net).__name__}: "
            + "; ".join(parts)
            + ". Check that module and weights belong together."
        )
    to_load = {
        k: v
        for k, v in state.items()
        if k in target
        and (_is_uninitialized(target[k]) or tuple(v.shape) == tuple(target[k].shape))
    }
    if assign:
        to_load = {k: v.to(dtype=target[k].dtype) for k, v in to_load.items()}
    net.load_state_dict(to_load, strict=False, assign=assign)
    return [k for k in target if k not in to_load]


def _is_uninitialized(tensor):
    return isinstance(tensor, nn.parameter.UninitializedTensorMixin)


def _is_weight_file(weights):
    return isinstance(weights, (str, os.PathLike)) and os.path.isfile(weights)


def _build_on_meta(module, weights, head, strict):
    """Build ``module`` without initialising it, then assign the file's weights.

    A random initialisation that the weights overwrite at once costs as much
    as reading them (0.14 s of a ResNet-18); on the meta device it costs
    nothing. When anything is left without data (a key the file lacks, a
    buffer that is not saved, a lazy module), ``None``: the caller builds
    the network for real.
    """
    try:
        with torch.device("meta"):
            net = _instantiate(module)
    except Exception:  # a factory that cannot run on the meta device
        return None
    if any(_is_uninitialized(t) for t in net.parameters()):
        return None
    head_name = find_head(net, head)
    load_weights(net, weights, head=head_name, strict=strict, assign=True)
    if any(t.is_meta for t in [*net.parameters(), *net.buffers()]):
        return None
    return net, head_name


def build_network(module, weights=None, *, head=None, strict=True):
    """Build a new network with pretrained weights and its original head.

    Parameters
    ----------
    module : str, nn.Module class, callable or nn.Module instance
        A torchvision model name (``"resnet18"``, built with
        ``torchvision.models.get_model``), an ``nn.Module`` subclass or a
        factory called without arguments, or an instance, which is deep-copied
        so the caller's object is never modified.
    weights : None, str, path-like, mapping or torchvision WeightsEnum, default=None
        ``None`` keeps the network's own parameters. A torchvision weights name
        (``"DEFAULT"``, ``"IMAGENET1K_V1"``) with a torchvision model name, or
        with a factory taking ``weights=`` (torchvision builders), downloads
        them through torchvision. Otherwise a path to a state dict or
        checkpoint file, or a state dict; see :func:`load_weights`.
    head : str, optional
        Dotted name of the classification layer; found automatically for the
        common torchvision families (see :func:`find_head`).
    strict : bool, default=True
        Whether keys other than the head's must match exactly.

    Returns
    -------
    net : torch.nn.Module
        A new module, on the CPU unless an instance lived elsewhere.
    head_name : str
        Dotted name of its classification layer.
    """
    weights_name = None  # a torchvision weights name / enum handled at build time
    if isinstance(weights, str) and not os.path.exists(weights):
        if _looks_like_path(weights):
            raise FileNotFoundError(f"weights file {weights!r} does not exist.")
        weights_name = weights
    elif _is_weights_enum(weights):
        weights_name = weights
    elif isinstance(weights, os.PathLike) and not os.path.exists(weights):
        raise FileNotFoundError(f"weights file {os.fspath(weights)!r} does not exist.")

    if isinstance(module, str):
        if not _is_torchvision_name(module):
            raise ValueError(
                f"module={module!r} is not a torchvision model name; see "
                "torchvision.models.list_models()."
            )
        net = torchvision.models.get_model(module, weights=weights_name)
        if weights_name is not None:
            weights = None
    elif isinstance(module, nn.Module):
        net = copy.deepcopy(module)
    elif callable(module) and weights_name is None and _is_weight_file(weights) and (
            built := _build_on_meta(module, weights, head, strict)) is not None:
        return built
    elif callable(module):
        if weights_name is not None and _accepts_weights_kwarg(module):
            net = _instantiate(module, weights_kwarg=weights_name)
            weights = None
        else:
            net = _instantiate(module)
    else:
        raise TypeError(
            "module must be a torchvision model name, an nn.Module class, a "
            f"factory or an nn.Module instance, got {type(module).__name__}."
        )
    head_name = find_head(net, head)
    if isinstance(weights, str) and weights_name is not None:
        raise ValueError(
            f"weights={weights!r} is not an existing file, and torchvision weight "
            "names only work with a torchvision model name (module='resnet50') or "
            "a torchvision builder (module=torchvision.models.resnet50)."
        )
    if weights is not None:
        load_weights(net, weights, head=head_name, strict=strict)
    return net, head_name


# ---------------------------------------------------------------------------
# Heads and parameter patterns
# ---------------------------------------------------------------------------


def _set_submodule(net, name, new):
    parent_name, _, child = name.rpartition(".")
    parent = net.get_submodule(parent_name) if parent_name else net
    setattr(parent, child, new)


def replace_head(net, head_name, n_classes, *, random_state=None):
    """Replace the classification layer with a new one for ``n_classes``.

    Parameters
    ----------
    net : torch.nn.Module
        Network to modify in place (skitl's own copy).
    head_name : str
        Dotted name of the current ``nn.Linear`` head (:func:`find_head`).
    n_classes : int
        Number of outputs of the new head.
    random_state : int, RandomState instance or None, default=None
        Seeds the new layer's initialisation (PyTorch's default for
        ``nn.Linear``) without touching the global torch generator.

    Returns
    -------
    head : torch.nn.Linear
        The new layer, with the old one's bias setting, dtype and device.
    """
    old = net.get_submodule(find_head(net, head_name))
    if int(n_classes) < 1:
        raise ValueError(f"n_classes must be >= 1, got {n_classes}.")
    has_bias = old.bias is not None
    with seeded(random_state):
        if _is_uninitialized(old.weight):
            new = nn.LazyLinear(int(n_classes), bias=has_bias)
        else:
            new = nn.Linear(old.in_features, int(n_classes), bias=has_bias)
            new = new.to(dtype=old.weight.dtype)
    if old.weight.device.type != "meta" and not _is_uninitialized(old.weight):
        new = new.to(device=old.weight.device)
    elif old.weight.device.type == "meta":
        new = new.to(device="meta")
    _set_submodule(net, head_name, new)
    return new


def install_head(net, head_name, W, b):
    """Put a fitted ``(W, b)`` head for the target classes into ``net``.

    Parameters
    ----------
    net : torch.nn.Module
        skitl's own copy of the network (modified in place).
    head_name : str
        Dotted name of the classification layer.
    W : array-like of shape (n_classes, n_features)
        Weights of the fitted head.
    b : array-like of shape (n_classes,)
        Its bias.

    Returns
    -------
    net : torch.nn.Module
        The same network, with a new head holding ``W`` and ``b``.
    """
    layer = replace_head(net, head_name, W.shape[0])
    with torch.no_grad():
        layer.weight.copy_(torch.as_tensor(W, dtype=layer.weight.dtype))
        if layer.bias is not None:
            layer.bias.copy_(torch.as_tensor(b, dtype=layer.bias.dtype))
    return net


def _as_patterns(patterns):
    if isinstance(patterns, str):
        return [patterns]
    try:
        patterns = list(patterns)
    except TypeError as exc:
        raise TypeError(
            f"patterns must be a string or a list of strings, got {patterns!r}."
        ) from exc
    if not all(isinstance(p, str) for p in patterns):
        raise TypeError(f"patterns must be strings, got {patterns!r}.")
    return patterns


def _matches(name, pattern):
    # "layer4" or "fc" also select everything below that module, which is how
    # people name layers; plain globs ("layer4.*.weight") work as usual.
    return fnmatch.fnmatchcase(name, pattern) or fnmatch.fnmatchcase(
        name, pattern + ".*"
    )


def match_parameters(net, patterns):
    """Names of the parameters of ``net`` matched by glob patterns.

    Parameters
    ----------
    net : torch.nn.Module
    patterns : str or list of str
        ``fnmatch`` globs over the dotted names of ``net.named_parameters()``
        (``"layer4.*"``, ``"*.bn*.weight"``). A pattern also matches every
        parameter below the module it names (``"fc"`` matches ``fc.weight`` and
        ``fc.bias``).

    Returns
    -------
    names : list of str
        Matched names, in the network's order, without duplicates.

    Raises
    ------
    ValueError
        When a pattern matches no parameter (a typo would otherwise silently
        do nothing); the message shows some available names.
    """
    patterns = _as_patterns(patterns)
    names = [n for n, _ in net.named_parameters()]
    matched = set()
    for pattern in patterns:
        hits = {n for n in names if _matches(n, pattern)}
        if not hits:
            sample = names[:8] + (["..."] if len(names) > 8 else [])
            raise ValueError(
                f"Pattern {pattern!r} matches no parameter of "
                f"{type(net).__name__}; parameter names look like {sample}."
            )
        matched |= hits
    return [n for n in names if n in matched]


def _fallback_init(name, param):
    # Parameters owned by modules without reset_parameters (class tokens,
    # position embeddings, custom layers): torch's default for weights of
    # Linear/Conv, zeros for biases, a small normal otherwise.
    if param.dim() >= 2:
        nn.init.kaiming_uniform_(param, a=math.sqrt(5))
    elif name.rsplit(".", 1)[-1].startswith("bias"):
        nn.init.zeros_(param)
    else:
        nn.init.normal_(param, std=0.02)


def reinit_parameters(net, patterns, *, random_state=None):
    """Re-initialise the parameters matched by glob patterns, in place.

    Each matched parameter is reset by its owning module's
    ``reset_parameters`` (PyTorch's default initialisation for that layer);
    the module's other parameters are kept. A module whose parameters are all
    re-initialised also has its buffers reset (BatchNorm running statistics),
    since they described the old parameters. Parameters of modules without
    ``reset_parameters`` get torch's default Linear init (2-D and more),
    zeros (biases) or ``N(0, 0.02²)``.

    Parameters
    ----------
    net : torch.nn.Module
    patterns : str or list of str
        Glob patterns, see :func:`match_parameters`.
    random_state : int, RandomState instance or None, default=None
        Seeds the initialisation; the global torch generator is untouched.

    Returns
    -------
    names : list of str
        The re-initialised parameter names.
    """
    names = match_parameters(net, patterns)
    selected = set(names)
    snapshot = {
        k: v.detach().clone()
        for k, v in net.state_dict(keep_vars=True).items()
        if not _is_uninitialized(v)
    }
    fully_reset = set()
    fallback = []
    with seeded(random_state):
        done = set()
        for mod_name, mod in net.named_modules():
            own = [
                f"{mod_name}.{p}" if mod_name else p
                for p, _ in mod.named_parameters(recurse=False)
            ]
            hit = [p for p in own if p in selected]
            if not hit:
                continue
            reset = getattr(mod, "reset_parameters", None) or getattr(
                mod, "_reset_parameters", None
            )
            if callable(reset):
                with torch.no_grad():
                    reset()
                done.update(hit)
                if len(hit) == len(own):
                    fully_reset.add(mod_name)
            else:
                fallback.extend(hit)
        params = dict(net.named_parameters())
        with torch.no_grad():
            for name in fallback:
                _fallback_init(name, params[name])
    # Restore everything that was not asked for: reset_parameters may touch a
    # module's other parameters (a matched weight resets the bias too) or,
    # for composite modules, its children.
    restore = {}
    for key, value in snapshot.items():
        if key in selected:
            continue
        owner = key.rpartition(".")[0]
        if key not in params and owner in fully_reset:
            continue  # buffer of a fully re-initialised module: keep it reset
        restore[key] = value
    net.load_state_dict(restore, strict=False)
    return names


def freeze_parameters(net, patterns):
    """Set ``requires_grad=False`` on the parameters matched by glob patterns.

    Parameters
    ----------
    net : torch.nn.Module
    patterns : str or list of str
        Glob patterns, see :func:`match_parameters`.

    Returns
    -------
    names : list of str
        The frozen parameter names.
    """
    names = match_parameters(net, patterns)
    selected = set(names)
    for name, param in net.named_parameters():
        if name in selected:
            param.requires_grad_(False)
    return names
