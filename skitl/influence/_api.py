"""The single entry point :func:`influence_scores`."""

import time

import numpy as np

from ..utils import check_X, check_y


def _int_labels(y, name, n):
    y = check_y(y, name=name, n_samples=n)
    if y.dtype.kind == "f" and np.all(y == np.round(y)):
        y = y.astype(np.int64)
    if y.dtype.kind not in "iu" or y.min() < 0:
        raise ValueError(
            f"{name} must hold integer labels 0..k-1 (encode them first, e.g. with "
            f"sklearn.preprocessing.LabelEncoder); got dtype {y.dtype}.")
    return y.astype(np.int64)


def influence_scores(net, X_train, y_train, X_val, y_val, *, params="head",
                     head=None, alpha=1e-3, hessian="exact", damping="auto",
                     val_weights=None, solver="auto", batch_size=256,
                     device="cpu", amp=None, verbose=0, **kw):
    """Influence of every training sample on the validation loss.

    One entry point for both paths. ``params="head"``: one streamed forward
    pass gives the head's input features, a new multinomial logistic head
    is fitted exactly on them (objective
    ``(1/n) Σ L_i + (alpha/2) ‖W‖²``, bias not penalised) and the
    closed-form influence is computed in float64. Anything else: influence
    through the selected network parameters at their current values
    (:func:`deep_influence`).

    Parameters
    ----------
    net : torch.nn.Module
        The (pretrained) network; never modified.
    X_train : ndarray or torch Dataset
        Training inputs (a Dataset yields ``(x, y)`` or ``x``).
    y_train : array-like of int of shape (n,)
        Integer labels ``0..k-1``.
    X_val : ndarray or torch Dataset
        Validation inputs: the loss whose change is predicted.
    y_val : array-like of int of shape (m,)
        Their integer labels ``0..k-1``.
    params : "head", "all" or list of str, default="head"
        Parameters analysed: the head, every parameter, or patterns of
        parameter names (a module name selects every parameter below it;
        fnmatch globs as usual).
    head : str, optional
        Dotted name of the classification layer (found automatically).
    alpha : float, default=1e-3
        L2 strength of the objective ``(1/n) Σ L_i + (alpha/2) ‖θ_w‖²`` on
        both paths, where ``θ_w`` are the analysed weights: biases are not
        penalised. Head path: the objective of the head fit. Deep path:
        ``+ alpha`` on the Hessian's diagonal for every analysed weight, as
        :func:`deep_influence` with the same ``alpha``.
    hessian : str, default="exact"
        Head: ``"exact"`` or ``"identity"``. Deep: ``"ggn"``, ``"exact"``
        (exact Hessian-vector products; an error naming ``"ggn"`` when the
        damped exact Hessian is not positive definite, as it often is away
        from a minimum), ``"ekfac"`` or ``"identity"``.
    damping : "auto" or float, default="auto"
        Added to the Hessian where the solver needs it; ``"auto"`` picks it
        (head: only if the solve fails; deep: a fraction of each module's
        mean eigenvalue). The value used is reported in the result.
    val_weights : array-like of shape (m,), optional
        Weights of the validation samples (see ``trim_weights``).
    solver : str, default="auto"
        Head: ``"auto"``, ``"cholesky"``, ``"cg"``. Deep: ``"cg"``,
        ``"lissa"``, ``"arnoldi"`` (``"auto"`` means ``"cg"``).
    batch_size : int, default=256
        Samples per forward batch.
    device : str, default="cpu"
        Torch device of the forward passes and of the algebra.
    amp : {None, "bf16", "fp16"}, default=None
        Autocast for the feature forward pass (head path only).
    verbose : int, default=0
        Progress bars when > 0.
    **kw
        ``n_classes`` (default ``max(y) + 1``), ``tol``, ``chunk_size`` (rows
        of features per chunk, head path); deep path: see
        :func:`deep_influence`.

    Returns
    -------
    result : InfluenceResult
    """
    from .._network import find_head
    from ._features import extract_features
    from ._head import fit_head, head_influence

    t0 = time.perf_counter()
    X_train = check_X(X_train, name="X_train")
    X_val = check_X(X_val, name="X_val")
    y_train = _int_labels(y_train, "y_train", len(X_train))
    y_val = _int_labels(y_val, "y_val", len(X_val))
    if isinstance(X_train, np.ndarray) and isinstance(X_val, np.ndarray) \
            and X_val.shape[1:] != X_train.shape[1:]:
        raise ValueError(
            f"X_val has per-sample shape {X_val.shape[1:]} but X_train has "
            f"{X_train.shape[1:]}.")
    if len(np.unique(y_train)) < 2:
        raise ValueError(
            f"y_train has {len(np.unique(y_train))} class; influence needs at least "
            "2 classes (a one-class head has zero loss and zero gradients).")
    n_classes = kw.pop("n_classes", None)
    if n_classes is None:
        n_classes = int(max(y_train.max(), y_val.max())) + 1
    if params != "head":
        from ._deep import deep_influence

        return deep_influence(
            net, X_train, y_train, X_val, y_val, params=params, hessian=hessian,
            solver="cg" if solver == "auto" else solver, damping=damping, alpha=alpha,
            val_weights=val_weights, batch_size=batch_size, device=device,
            verbose=verbose, **kw)
    head_name = find_head(net, head)
    feats = extract_features(net, X_train, layer=head_name, batch_size=batch_size,
                             device=device, amp=amp, verbose=verbose)
    feats_val = extract_features(net, X_val, layer=head_name, batch_size=batch_size,
                                 device=device, amp=amp, verbose=verbose)
    t_feat = time.perf_counter() - t0
    t1 = time.perf_counter()
    tol = kw.pop("tol", 1e-10)
    chunk_size = kw.pop("chunk_size", "auto")
    W, b = fit_head(feats, y_train, n_classes, alpha=alpha, device=device,
                    max_iter=kw.pop("max_iter", 1000), tol=kw.pop("fit_tol", 1e-10),
                    chunk_size=chunk_size)
    t_fit = time.perf_counter() - t1
    if kw:
        raise TypeError(f"influence_scores got unexpected keyword arguments {sorted(kw)}.")
    res = head_influence(feats, y_train, feats_val, y_val, n_classes=n_classes,
                         alpha=alpha, damping=damping, val_weights=val_weights,
                         hessian=hessian, solver=solver, W=W, b=b, tol=tol,
                         device=device, verbose=verbose, head=head_name,
                         chunk_size=chunk_size)
    res.seconds = {"features": t_feat, "fit": t_fit, **res.seconds,
                   "total": time.perf_counter() - t0}
    return res
