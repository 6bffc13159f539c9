"""The single entry point :func:`influence_scores`.

Every way skitl computes influence runs through it: a separate validation
set, cross-fitting over a pool, cross-fitting over the target samples of a
pool, or the whole target against a head fitted on the rest; on the head
(closed form) or on deeper parameters. The selectors of
:mod:`skitl.selection` call it and only add the removal rule.
"""

import time

import numpy as np

from ..utils import check_X, check_y, is_out_of_core
from . import _options
from ._crossfit import make_folds, order_without_each_fold, trim_weights
from ._results import EvalFolds

_MODES = ("validation_set", "cross_fit", "target_cross_fit", "target_whole")


def _int_labels(y, name, n):
    y = check_y(y, name=name, n_samples=n)
    if y.dtype.kind == "f" and np.all(y == np.round(y)):
        y = y.astype(np.int64)
    if y.dtype.kind not in "iu" or y.min() < 0:
        raise ValueError(
            f"{name} must hold integer labels 0..k-1 (encode them first, e.g. with "
            f"sklearn.preprocessing.LabelEncoder); got dtype {y.dtype}.")
    return y.astype(np.int64)


def resolve_mode(has_val, target, target_validation):
    """Where the validation loss comes from, as a mode name."""
    if has_val:
        return "validation_set"
    if target is None:
        return "cross_fit"
    return "target_whole" if target_validation == "whole" else "target_cross_fit"


def influence_scores(net, X_train, y_train, X_val=None, y_val=None, *, target=None,
                     target_validation="whole", params="head", head=None,
                     alpha="scale", hessian="exact", damping="auto", val_weights=None,
                     val_trim="auto", cv=5, adapt_folds=False, refit_head=False,
                     solver="auto",
                     solver_options=None, eval_folds=False, n_classes=None,
                     chunk_size="auto", fit_tol=1e-10, fit_max_iter=1000,
                     batch_size=256, device="cpu", amp=None, feature_dir=None,
                     random_state=None, verbose=0, **kw):
    """Influence of every training sample on a validation loss.

    ``scores[i]`` is the predicted increase of the mean validation loss if
    training sample ``i`` is removed (positive = helpful, negative =
    harmful). The validation loss comes from one of four places (``mode``
    of the result):

    - ``"validation_set"``: ``X_val, y_val`` given; every training sample is
      scored against it.
    - ``"cross_fit"``: no validation set and no ``target``: ``cv``
      stratified folds of the training data, each the validation set of a
      head fitted on the others; a sample's score is its mean over the folds
      it was trained in.
    - ``"target_cross_fit"``: ``target`` given, ``target_validation=
      "cross_fit"``: the folds run over the target samples only; target
      samples are scored out of fold, the others against every fold.
    - ``"target_whole"``: ``target`` given, ``target_validation="whole"``:
      the head is fitted on the non-target samples only and every target
      sample validates it; the target samples' own scores are the same
      functional (for a sample outside the head's training set: the
      predicted decrease of the target loss if it were added).

    ``params="head"``: one streamed forward pass gives the head's input
    features, a new multinomial logistic head is fitted exactly on them
    (objective ``(1/n) Σ L_i + (alpha/2) ‖W‖²``, bias not penalised) and
    the closed-form influence is computed in float64. Anything else:
    influence through the selected network parameters
    (:func:`deep_influence`) at their current values, or with a new head
    fitted the same way first (``refit_head=True``, and always per fold
    when cross-fitting).

    Parameters
    ----------
    net : torch.nn.Module or None
        The (pretrained) network; never modified (a copy gets the fitted
        heads). ``None``: ``X_train`` (and ``X_val``) are the features
        themselves (influence for multinomial logistic regression on them).
    X_train : ndarray or torch Dataset
        Training inputs (a Dataset yields ``(x, y)`` or ``x``).
    y_train : array-like of int of shape (n,)
        Integer labels ``0..k-1``.
    X_val : ndarray or torch Dataset, optional
        Validation inputs: the loss whose change is predicted.
    y_val : array-like of int of shape (m,), optional
        Their integer labels ``0..k-1``.
    target : array-like of bool of shape (n,), optional
        Without ``X_val``: which training samples are the target, which
        validates (see the modes above).
    target_validation : {"cross_fit", "whole"}, default="whole"
        With ``target`` and without ``X_val``: cross-fit the target samples,
        or validate on all of them with a head fitted on the others.
    params : "head", "all" or list of str, default="head"
        Parameters analysed: the head, every parameter, or patterns of
        parameter names (a module name selects every parameter below it;
        fnmatch globs as usual).
    head : str, optional
        Dotted name of the classification layer (found automatically).
    alpha : float, "scale" or "auto", default="scale"
        L2 strength of the objective ``(1/n) Σ L_i + (alpha/2) ‖θ_w‖²`` on
        both paths, where ``θ_w`` are the analysed weights: biases are not
        penalised. Head path: the objective of the head fit. Deep path:
        ``+ alpha`` on the Hessian's diagonal for every analysed weight, as
        :func:`deep_influence` with the same ``alpha``. ``"scale"``:
        ``0.1`` times the mean variance of a head feature. ``"auto"``: the
        multiple of that variance (1e-3 to 10) whose head has the lowest log
        loss on held-out data -- the validation set, the target samples
        (``target_validation="whole"``), or out of fold. The value used is in
        ``info["alpha"]``.
    hessian : str, default="exact"
        Head: ``"exact"`` (``"ggn"`` is the same there) or ``"identity"``.
        Deep: ``"ggn"``, ``"exact"`` (exact Hessian-vector products; an
        error naming ``"ggn"`` when the damped exact Hessian is not positive
        definite, as it often is away from a minimum), ``"ekfac"`` or
        ``"identity"``.
    damping : "auto" or float, default="auto"
        Added to the Hessian where the solver needs it; what ``"auto"``
        picks depends on the solver (head: only if the solve fails; deep: a
        fraction of each module's mean eigenvalue). The value used is
        reported in the result.
    val_weights : array-like of shape (m,), optional
        Weights of the validation samples of ``X_val``; they replace
        ``val_trim``.
    val_trim : "auto" or float in [0, 1), default="auto"
        Weights of the validation samples (see :func:`trim_weights`):
        ``"auto"`` drops the cross-fitted validation samples the fitted
        head misclassifies and keeps every sample of ``X_val`` and, with
        ``target_validation="whole"``, of the target; a float drops that
        fraction of the highest-loss validation samples.
    cv : int, default=5
        Number of folds of cross-fitting, and of the held-out folds of
        ``eval_folds``.
    adapt_folds : bool, default=False
        When a class has fewer than ``cv`` samples to split, make fewer (or
        unstratified) folds instead of raising (see :func:`make_folds`).
    refit_head : bool, default=False
        Deep path with a validation set: fit a new head on the training
        features first (what the selectors do) instead of analysing the
        network's own head. Cross-fitting and ``target_validation="whole"``
        always fit their heads.
    solver : str, default="auto"
        Head: ``"auto"``, ``"cholesky"``, ``"cg"``. Deep: ``"cg"``,
        ``"lissa"``, ``"arnoldi"`` (``"auto"`` means ``"cg"``).
    solver_options : dict or options dataclass, optional
        Options of the solver (see :mod:`skitl.influence` ``*Options``
        classes); an unknown one raises before any work.
    eval_folds : bool, default=False
        Also return ``eval_folds``: held-out target folds and the scores
        computed without each, what ``max_remove="auto"`` judges a removal
        count on. Free on the head path; on the deep path with a validation
        set it costs one more solve per fold.
    n_classes : int, optional
        Number of classes (default ``max(y) + 1`` over both label arrays).
    chunk_size : int or "auto", default="auto"
        Rows of features per chunk on the head path (see
        :func:`head_influence`).
    fit_tol : float, default=1e-10
        Gradient tolerance of the exact head fit.
    fit_max_iter : int, default=1000
        Most Newton iterations of the head fit.
    batch_size : int, default=256
        Samples per forward batch.
    device : str, default="cpu"
        Torch device of the forward passes and of the algebra.
    amp : {None, "bf16", "fp16"}, default=None
        Autocast for the feature forward pass (head path only).
    feature_dir : str, optional
        A directory: the network's features are written there as float32
        memmaps (out of core) instead of memory.
    random_state : int, RandomState instance or None, default=None
        Shuffles the folds.
    verbose : int, default=0
        Progress bars when > 0.
    **kw
        Solver options given as keywords (merged into ``solver_options``).

    Returns
    -------
    result : InfluenceResult
        With ``mode``, ``per_fold``, ``oof_proba`` / ``oof_loss``
        (cross-fitted head path), ``features`` / ``features_val`` and
        ``eval_folds`` (when asked for).
    """
    from .._network import find_head

    t0 = time.perf_counter()
    has_val = X_val is not None or y_val is not None
    if has_val and (X_val is None or y_val is None):
        raise ValueError("Pass both X_val and y_val, or neither.")
    if target_validation not in ("cross_fit", "whole"):
        raise ValueError("target_validation must be 'cross_fit' or 'whole', got "
                         f"{target_validation!r}.")
    deep = params != "head"
    if not deep and hessian not in ("exact", "ggn", "identity"):
        raise ValueError(f"hessian={hessian!r} is not a head Hessian; use 'exact' or "
                         "'identity' (EK-FAC approximates deeper parameters).")
    options = _options.solver_options(
        "deep" if deep else "head", solver, {**dict(_plain(solver_options)), **kw}
        if not _is_options(solver_options) else solver_options, hessian=hessian)
    if _is_options(solver_options) and kw:
        raise TypeError(f"Pass solver options either as solver_options or as keywords, "
                        f"not both (got {sorted(kw)}).")
    X_train = check_X(X_train, name="X_train")
    y_train = _int_labels(y_train, "y_train", len(X_train))
    if has_val:
        X_val = check_X(X_val, name="X_val")
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
    if n_classes is None:
        n_classes = int(max(y_train.max(), y_val.max() if has_val else 0)) + 1
    if target is not None and not has_val:
        target = _target_mask(target, len(y_train))
    mode = resolve_mode(has_val, target, target_validation)
    if deep and net is None:
        raise ValueError(f"params={params!r} needs a network.")
    head_name = None if net is None else find_head(net, head)
    if deep:
        from ._params import select_parameters

        # a pattern that matches nothing fails here, before any forward pass
        select_parameters(net, params)
    job = _Job(net=net, head_name=head_name, params=params, alpha=alpha,
               hessian="exact" if hessian == "ggn" and not deep else hessian,
               damping=damping, solver=solver, options=options, val_trim=val_trim,
               cv=cv, adapt=adapt_folds, k=int(n_classes), batch_size=batch_size,
               device=device, verbose=verbose, random_state=random_state,
               chunk_size=chunk_size, fit_tol=fit_tol, fit_max_iter=fit_max_iter,
               eval_folds=eval_folds, refit_head=refit_head)
    # the deep path analysing the network as it is needs no head features
    need_features = (not deep or refit_head or eval_folds or mode != "validation_set"
                     or isinstance(alpha, str))
    F = _features(net, head_name, X_train, job, amp, feature_dir, "train") \
        if need_features else None
    F_val = _features(net, head_name, X_val, job, amp, feature_dir, "val") \
        if has_val and need_features else None
    t_feat = time.perf_counter() - t0
    job.alpha, alpha_info = _resolve_alpha(alpha, mode, F, y_train, F_val, y_val, target,
                                           job)
    if mode == "validation_set":
        res = job.validation_set(X_train, F, y_train, X_val, F_val, y_val, val_weights)
    elif mode == "target_whole":
        res = job.target_whole(X_train, F, y_train, target)
    else:
        res = job.cross_fit(X_train, F, y_train, target)
    res.mode = mode
    res.info["alpha"] = alpha_info
    res.features, res.features_val = F, F_val
    res.seconds = {"features": t_feat, **res.seconds,
                   "total": time.perf_counter() - t0}
    if not res.per_fold:
        res.per_fold = [{"damping": float(res.damping), "residual": float(res.residual),
                         "n_iter": int(res.n_iter)}]
    return res


def _resolve_alpha(alpha, mode, F, y, F_val, y_val, target, job):
    """The numeric alpha of this run (see :mod:`._prior`)."""
    from ._prior import resolve_alpha

    if not isinstance(alpha, str):
        return resolve_alpha(alpha, F=None, y=None, n_classes=job.k)
    opts = dict(n_classes=job.k, device=job.device, chunk_size=job.chunk_size)
    if mode == "validation_set":
        return resolve_alpha(alpha, F=F, y=y, F_eval=F_val, y_eval=y_val, **opts)
    if mode == "target_whole":
        aux, tgt = np.flatnonzero(~target), np.flatnonzero(target)
        return resolve_alpha(alpha, F=_take_rows(F, aux), y=y[aux],
                             F_eval=_take_rows(F, tgt), y_eval=y[tgt], **opts)
    from ._results import fold_indices

    fold_of, n_folds = make_folds(y, job.cv, n_classes=job.k, target=target,
                                  random_state=job.random_state, adapt=True)
    folds = [fold_indices(fold_of, f) for f in range(n_folds)]
    return resolve_alpha(alpha, F=F, y=y, folds=folds, **opts)


def val_trim_is_plain(val_trim):
    """Whether ``val_trim`` keeps every sample of a given validation set."""
    return isinstance(val_trim, str) or val_trim == 0


def _is_options(obj):
    import dataclasses

    return dataclasses.is_dataclass(obj) and not isinstance(obj, type)


def _plain(options):
    return {} if options is None else options


def _target_mask(target, n):
    target = np.asarray(target)
    if target.dtype != bool or target.shape != (n,):
        raise ValueError(f"target must be a boolean mask of shape ({n},), got dtype "
                         f"{target.dtype} and shape {target.shape}.")
    if not target.any():
        raise ValueError("target selects no sample; cross-fitting needs target samples "
                         "to validate on.")
    if target.all():
        raise ValueError("target selects every sample: there is nothing else to score "
                         "against it; pass target=None to cross-fit the pool.")
    return target


def _features(net, head_name, X, job, amp, feature_dir, stem):
    """Head features of ``X``: the head's input under ``net``, or X itself."""
    if net is None:
        if not (isinstance(X, np.ndarray) or is_out_of_core(X)):
            raise TypeError(
                "Without a network X is taken as the features: a selector without an "
                f"estimator (it scores X itself) needs an array; got a {type(X).__name__}. "
                "Pass a network (estimator=TransferClassifier(...)) to score a Dataset.")
        # an out-of-core table stays on disk: the head algebra reads it by chunks
        return X if X.ndim == 2 else X.reshape(len(X), -1)
    from ._features import extract_features

    out = None
    if feature_dir is not None:
        import os

        out = os.path.join(feature_dir, stem)
        os.makedirs(out, exist_ok=True)
    return extract_features(net, X, layer=head_name, batch_size=job.batch_size,
                            device=job.device, amp=amp, verbose=job.verbose, out=out)


def _rows(X, idx):
    from torch.utils.data import Subset

    from ._prefix import PrefixCache

    if isinstance(X, PrefixCache):
        return X.rows(idx)
    if isinstance(X, np.ndarray):
        return X[idx]
    return Subset(X, idx.tolist())


class _Job:
    """One influence computation: the settings, and one method per mode."""

    def __init__(self, **settings):
        self.__dict__.update(settings)
        self.deep = self.params != "head"

    # -- pieces shared by the modes -------------------------------------------

    def _head_call(self, F_tr, y_tr, F_va, y_va, val_weights, W=None, b=None):
        from ._chunks import as_feature_source
        from ._head import _check_features, _check_labels, _score_head

        tr = _check_features(as_feature_source(F_tr, "F_train"), "F_train",
                             chunk_size=self.chunk_size, device=self.device)
        va = _check_features(as_feature_source(F_va, "F_val"), "F_val",
                             chunk_size=self.chunk_size, device=self.device)
        return _score_head(
            tr, _check_labels(y_tr, self.k, "y_train"), va,
            _check_labels(y_va, self.k, "y_val"), W, b, n_classes=self.k,
            alpha=self.alpha, damping=self.damping, hessian=self.hessian,
            solver=self.solver, val_weights=val_weights, tol=self.options.tol,
            cg_max_iter=self.options.max_iter, fit_tol=self.fit_tol,
            max_iter=self.fit_max_iter, verbose=self.verbose)

    def _fit_head(self, F, y):
        from ._head import fit_head

        return fit_head(F, y, self.k, alpha=self.alpha, device=self.device,
                        chunk_size=self.chunk_size, tol=self.fit_tol,
                        max_iter=self.fit_max_iter)

    def _deep_call(self, W, b, X_tr, y_tr, X_va, y_va, weights, score_val=False):
        from .._network import install_head
        from ._deep import deep_influence

        # W None: the network's own head, analysed as it is
        net = self.net if W is None else install_head(self._work_net(), self.head_name,
                                                      W, b)
        return deep_influence(
            net, X_tr, y_tr, X_va, y_va, params=self.params, hessian=self.hessian,
            solver="cg" if self.solver == "auto" else self.solver, damping=self.damping,
            alpha=self.alpha, val_weights=weights, batch_size=self.batch_size,
            device=self.device, verbose=self.verbose, score_val=score_val,
            **{f: getattr(self.options, f) for f in self.options.__dataclass_fields__})

    def _network_proba(self, X):
        """Probabilities of the network as it is (its own head), float64."""
        import torch

        from ._features import eval_mode

        net = self.net
        out = []
        with eval_mode(net), torch.no_grad():
            param = next(net.parameters())
            for s in range(0, len(X), self.batch_size):
                xb = torch.as_tensor(np.asarray(X[s:s + self.batch_size]),
                                     dtype=param.dtype, device=param.device)
                out.append(torch.softmax(net(xb).double(), 1).cpu().numpy())
        return np.concatenate(out)

    def _trim(self, proba, y, user_given):
        loss = -np.log(np.clip(proba[np.arange(len(y)), y], 1e-300, None))
        return trim_weights(loss, proba.argmax(1), y, self.val_trim, user_given=user_given)

    def _with_fold_columns(self, w, fold_of_rows):
        """``w`` as column 0, then one column per fold with that fold zeroed."""
        n_folds = int(fold_of_rows.max()) + 1
        cols = [w] + [np.where(fold_of_rows == f, 0.0, w) for f in range(n_folds)]
        return np.stack(cols, 1)

    def _val_folds(self, y_val):
        fold_of, _ = make_folds(y_val, self.cv, n_classes=self.k,
                                random_state=self.random_state, adapt=True)
        return fold_of

    # -- the modes ------------------------------------------------------------

    def validation_set(self, X, F, y, X_val, F_val, y_val, val_weights):
        """A separate validation set: every training sample scored against it."""
        from ._results import InfluenceResult

        fold_of = self._val_folds(y_val) if self.eval_folds else None
        if not self.deep:
            def weights(P_val):
                w = (np.asarray(val_weights, dtype=np.float64) if val_weights is not None
                     else self._trim(P_val.cpu().numpy(), y_val, user_given=True))
                return w if fold_of is None else self._with_fold_columns(w, fold_of)

            r = self._head_call(F, y, F_val, y_val, weights)
            used = r.val_weights if fold_of is None else r.val_weights[:, 0]
            scores, order = (r.scores, None) if fold_of is None else \
                (r.scores[:, 0], r.scores[:, 1:].T.copy())
            res = InfluenceResult(
                scores=scores, damping=r.damping, solver=r.solver, hessian=self.hessian,
                residual=r.residual, n_iter=r.n_iter, seconds=r.seconds,
                params=self._head_params(), W=r.W.cpu().numpy(), b=r.b.cpu().numpy(),
                info={"passes": r.passes})
        else:
            from ._head import predict_proba_head

            if self.refit_head:
                W, b = self._fit_head(F, y)
                proba = predict_proba_head(F_val, W, b)
            else:
                W = b = None
                proba = None if val_trim_is_plain(self.val_trim) else \
                    self._network_proba(X_val)
            used = (np.asarray(val_weights, dtype=np.float64) if val_weights is not None
                    else np.ones(len(y_val)) if proba is None
                    else self._trim(proba, y_val, True))
            w = used if fold_of is None else self._with_fold_columns(used, fold_of)
            res = self._deep_call(W, b, X, y, X_val, y_val, w)
            scores, order = (res.scores, None) if fold_of is None else \
                (res.scores[:, 0], res.scores[:, 1:].T.copy())
            res.scores, res.W, res.b = scores, W, b
        res.info["val_weights"] = used
        if fold_of is not None:
            res.eval_folds = EvalFolds(
                fold_of=fold_of, on="val", order=order,
                weights=[used[fold_of == f] for f in range(order.shape[0])])
        return res

    def target_whole(self, X, F, y, target):
        """The whole target validates a head fitted on the other samples."""
        from ._results import InfluenceResult

        aux, tgt = np.flatnonzero(~target), np.flatnonzero(target)
        fold_of = None
        if self.eval_folds:
            fold_of, _ = make_folds(y, self.cv, n_classes=self.k, target=target,
                                    random_state=self.random_state, adapt=True)
        cols = None if fold_of is None else fold_of[tgt]
        y_t = y[tgt]

        def weights(P_val):
            w = self._trim(P_val.cpu().numpy() if hasattr(P_val, "cpu") else P_val, y_t,
                           user_given=True)
            return w if cols is None else self._with_fold_columns(w, cols)

        F_aux, F_t = _take_rows(F, aux), _take_rows(F, tgt)
        if not self.deep:
            r = self._head_call(F_aux, y[aux], F_t, y_t, weights)
            on_aux, on_t = r.scores, r.score_val_rows()
            used = r.val_weights if cols is None else r.val_weights[:, 0]
            res = InfluenceResult(
                scores=None, damping=r.damping, solver=r.solver, hessian=self.hessian,
                residual=r.residual, n_iter=r.n_iter, seconds=r.seconds,
                params=self._head_params(), W=r.W.cpu().numpy(), b=r.b.cpu().numpy(),
                info={"passes": r.passes})
        else:
            from ._head import predict_proba_head

            W, b = self._fit_head(F_aux, y[aux])
            w = weights(predict_proba_head(F_t, W, b))
            res = self._deep_call(W, b, _rows(X, aux), y[aux], _rows(X, tgt), y_t, w,
                                  score_val=True)
            on_aux, on_t = res.scores, res.info.pop("val_scores")
            used = w if cols is None else w[:, 0]
            res.W, res.b = W, b
        width = 1 if cols is None else 1 + int(cols.max()) + 1
        full = np.empty((len(y), width))
        full[aux] = on_aux.reshape(len(aux), -1)
        full[tgt] = on_t.reshape(len(tgt), -1)
        res.scores = full[:, 0].copy()
        res.info["val_weights"] = used
        if fold_of is not None:
            res.eval_folds = EvalFolds(
                fold_of=fold_of, on="train", order=full[:, 1:].T.copy(),
                weights=[used[cols == f] for f in range(width - 1)])
        return res

    def cross_fit(self, X, F, y, target):
        """Cross-fitting over the pool, or over its target samples."""
        from ._results import InfluenceResult

        if not self.deep:
            from ._crossfit import cross_fit_head_influence

            r = cross_fit_head_influence(
                F, y, n_classes=self.k, cv=self.cv, alpha=self.alpha,
                val_trim=self.val_trim, damping=self.damping, hessian=self.hessian,
                solver=self.solver, random_state=self.random_state, verbose=self.verbose,
                device=self.device, tol=self.options.tol, target=target,
                chunk_size=self.chunk_size, adapt_folds=self.adapt,
                return_order=self.eval_folds)
            per_fold = [{"damping": float(d), "residual": float(e), "n_iter": 0}
                        for d, e in zip(r.damping, r.residual, strict=True)]
            res = InfluenceResult(
                scores=r.scores, damping=max(r.damping), solver=r.solver,
                hessian=self.hessian, residual=max(r.residual), n_iter=0,
                seconds=r.seconds, params=self._head_params(),
                info={"passes": r.passes}, per_fold=per_fold, oof_proba=r.oof_proba,
                oof_loss=r.oof_loss)
            fold_of, weights, order = r.fold_of, r.val_weights_per_fold, r.order_scores
        else:
            res, fold_of, weights, order = self._deep_cross_fit(X, F, y, target)
        if self.eval_folds:
            res.eval_folds = EvalFolds(fold_of=fold_of, on="train", weights=weights,
                                       order=order)
        return res

    def _deep_cross_fit(self, X, F, y, target):
        """Cross-fitting fold by fold through deeper parameters.

        The folds differ in rows and in the fitted head, never in the layers
        in front of the analysed parameters, so those activations are
        computed once (:func:`prefix_cache`) and every fold reuses them.
        """
        from ._head import predict_proba_head
        from ._results import InfluenceResult, fold_indices

        fold_of, n_folds = make_folds(y, self.cv, n_classes=self.k, target=target,
                                      random_state=self.random_state, adapt=self.adapt)
        Xc = self._prefix_once(X)
        total, counts = np.zeros(len(y)), np.zeros(len(y))
        fold_scores = np.full((n_folds, len(y)), np.nan) if self.eval_folds else None
        weights, per_fold, last = [], [], None
        for f in range(n_folds):
            tr, va = fold_indices(fold_of, f)
            W, b = self._fit_head(_take_rows(F, tr), y[tr])
            w = self._trim(predict_proba_head(_take_rows(F, va), W, b), y[va], False)
            last = self._deep_call(W, b, _rows(Xc, tr), y[tr], _rows(Xc, va), y[va], w)
            if fold_scores is not None:
                fold_scores[f, tr] = last.scores
            total[tr] += last.scores
            counts[tr] += 1
            weights.append(w)
            per_fold.append({"damping": float(last.damping),
                             "residual": float(last.residual),
                             "n_iter": int(last.n_iter)})
        res = InfluenceResult(
            scores=total / counts, damping=max(p["damping"] for p in per_fold),
            solver=last.solver, hessian=self.hessian,
            residual=max(p["residual"] for p in per_fold),
            n_iter=max(p["n_iter"] for p in per_fold), seconds={}, params=last.params,
            info=last.info, per_fold=per_fold)
        order = order_without_each_fold(fold_scores) if self.eval_folds else None
        return res, fold_of, weights, order

    def _work_net(self):
        """One copy of the network for every fitted head (the caller's is never
        modified); the prefix cache is built on it too, so it recognises it."""
        import copy

        if getattr(self, "_copy", None) is None:
            self._copy = copy.deepcopy(self.net)
        return self._copy

    def _prefix_once(self, X):
        from ..utils import resolve_device
        from ._prefix import prefix_cache

        try:
            return prefix_cache(self._work_net(), X, params=self.params, batch_size=self.batch_size,
                                device=resolve_device(self.device))
        except ValueError:
            # the analysed parameters are not a suffix: keep the raw rows
            return X

    def _head_params(self):
        name = self.head_name
        return [f"{name}.weight", f"{name}.bias"] if name else ["weight", "bias"]


def _take_rows(F, idx):
    """Rows of features: a copy of an in-memory array, a chunked view of anything
    else (a memmap stays on disk)."""
    from ._chunks import FeatureChunks, as_feature_source

    if isinstance(F, np.ndarray) and not isinstance(F, np.memmap):
        return F[idx]
    if isinstance(F, FeatureChunks):
        return F.subset(idx)
    return FeatureChunks(as_feature_source(F, "F"), rows=np.sort(idx))
