"""InfluenceSampleSelector: drop the training samples influence finds harmful."""

import numbers

import numpy as np
from sklearn.utils._param_validation import Interval, StrOptions

from .._network import install_head
from ..influence import fit_head, influence_scores
from ..influence._options import solver_options as typed_options
from ._plan import check_target_classes, warn_small_folds
from ._scoring import FeatureSelector, Scored

_HESSIANS = {"exact", "ggn", "identity", "ekfac"}
_HEAD_SOLVERS = {"auto", "cholesky", "cg"}
_DEEP_SOLVERS = {"auto", "cg", "lissa", "arnoldi"}


class InfluenceSampleSelector(FeatureSelector):
    """Remove the training samples whose influence on the target is harmful.

    Each sample gets ``scores_[i]``: the predicted *increase* of the mean
    validation loss if sample ``i`` were removed (Koh & Liang's influence
    function with a ``1/n`` scale and the opposite sign of their
    ``I_up,loss``). Positive = the sample helps; negative = removing it lowers
    the validation loss. Samples with ``scores_ < threshold`` are removed,
    most harmful first, up to ``max_remove``, and no class ever drops below
    ``max(2, ceil(0.1 n_class))`` samples.

    Which validation loss, in the order of precedence:

    - ``fit(X, y, X_val=..., y_val=...)``: a target set (assumed clean);
      every training sample is scored against it.
    - ``fit(X, y, sample_domain=...)``: the target samples of the pool
      (``sample_domain < 0``) are the validation set, either cross-fitted
      (``target_validation="cross_fit"``: stratified folds over the target
      samples, each fold is validation in turn; target samples are scored
      out of fold, auxiliary samples against every fold) or whole
      (``"whole"``: every target sample validates a head fitted on the
      auxiliary samples). Only auxiliary samples are removed unless
      ``remove_from="all"``. This is
      where instance-based transfer earns its keep: correctly labelled
      samples of another distribution that hurt the target.
    - neither: cross-fitting over the whole pool (``cv`` folds), the setting
      for label noise in one domain; cross-fitting on a mixed pool aligns the
      scores with the pool's own distribution, so pass a target.

    Parameters
    ----------
    estimator : TransferClassifier, default=None
        Whose *pretrained* network (``module``, ``weights``, ``head``,
        seeded by its ``random_state``) is analysed; the selector fits the
        head itself on the target data and never fine-tunes the backbone.
        ``None`` treats X as the features (influence for multinomial logistic
        regression on X); inside a :class:`~skitl.TransferClassifier` the
        classifier gives itself.
    params : {"head", "all"} or list of str, default="head"
        Parameters analysed: the classification head (closed form, convex),
        all parameters, or patterns of parameter names (``["layer4",
        "fc"]``: a module name selects everything below it; fnmatch globs
        such as ``"layer4.*.weight"`` work as usual).
    hessian : {"exact", "ggn", "identity", "ekfac"}, default="exact"
        Curvature: the exact Hessian (for the head it equals the GGN; for
        deeper parameters an indefinite Hessian raises an error naming
        ``"ggn"``), the Gauss-Newton matrix, identity (plain gradient
        similarity, TracIn with one checkpoint), or EK-FAC (deeper parameters
        only).
    alpha : float, "scale" or "auto", default="scale"
        L2 strength of the objective ``(1/n) sum L_i + alpha/2 ||W||^2``
        (the bias is not penalised), the same as scikit-learn's
        ``LogisticRegression(C=1/(alpha n))`` on the head's features. Its
        effect depends on the scale of the features, so it can also be read
        off them: ``"scale"`` is ``0.1`` times the mean variance of a head
        feature; ``"auto"`` the multiple of that variance (1e-3 to 10) whose
        head has the lowest log loss on held-out data (``X_val``, the
        target samples, or out of fold). The value used is in
        ``influence_["alpha"]``.
    damping : "auto" or float, default="auto"
        Added to the Hessian only where the solver needs it; the value used is
        reported in ``influence_["damping"]``.
    cv : int, default=5
        Number of stratified cross-fitting folds (over the pool, or over the
        target samples with ``sample_domain``); also the folds that judge
        ``max_remove="auto"``.
    val_trim : "auto" or float in [0, 1), default="auto"
        Validation objective. ``"auto"`` drops the cross-fitted validation
        samples the fitted head misclassifies (their labels may be noisy) and
        keeps all of a user-given ``X_val`` (assumed clean); a float drops
        that fraction of highest-loss validation samples; ``0`` is the plain
        mean loss (the paper's rule, which fails under label noise). With
        ``target_validation="whole"``, ``"auto"`` keeps every target sample
        (like a given ``X_val``).
    target_validation : {"whole", "cross_fit"}, default="whole"
        With ``sample_domain`` and no ``X_val``, how the target samples of the
        pool validate. ``"whole"``: a head fitted on the auxiliary samples
        only, validated on every target sample (no cross-fitting, so it works
        with one target sample per class; scored like a given ``X_val``); the
        target samples' own scores are then the predicted decrease of the
        target loss if each were added. ``"cross_fit"``: stratified folds over
        the target samples, each the validation set of a head fitted on
        everything else; target samples are scored out of fold. On the
        benchmark pools the whole target ranked the harmful auxiliary samples
        better (AUROC 0.94 against 0.83 on a pool whose auxiliary part both
        helps and hurts, equal on corrupted CIFAR-10 images).
    threshold : float or None, default=0.0
        Samples with a score below it are removal candidates. ``None`` makes
        every sample in scope a candidate (all auxiliary samples with
        ``sample_domain``): the order still comes from the scores, and the
        count from ``max_remove`` -- with ``max_remove="auto"`` the target
        alone decides how many go, not the sign of first-order scores.
    max_remove : int, float in [0, 1), "auto" or None, default=None
        Caps removal: a count, a fraction of the training set, or ``"auto"``:
        the count (among the candidates, lowest scores first) that minimises
        the target loss of the head refitted without them, judged on
        held-out target folds with scores computed without those folds (see
        ``removal_search_``). ``None``: no cap.
    remove_from : {"auxiliary", "all"}, default="auxiliary"
        With ``sample_domain``: remove only auxiliary samples, or any sample.
        Ignored without ``sample_domain``.
    solver : {"auto", "cholesky", "cg", "lissa", "arnoldi"}, default="auto"
        Inverse-Hessian solver. Head: ``"cholesky"`` (dense, float64) or
        ``"cg"``; ``"auto"`` picks by size. Deeper parameters: ``"cg"``
        (``"auto"``), ``"lissa"`` or ``"arnoldi"``.
    solver_options : dict, default=None
        Options of the solver that runs, e.g. ``{"tol": 1e-4, "max_iter":
        1000}`` for CG or ``{"depth": 500}`` for LiSSA (the dataclasses of
        :mod:`skitl.influence` list them: ``HeadOptions``, ``CGOptions``,
        ``LiSSAOptions``, ``ArnoldiOptions``, ``EKFACOptions``). An unknown
        or misspelt option raises, naming the valid ones, when ``fit``
        starts.
    batch_size : int, default=256
        Batch size of the forward passes.
    memory : None, str or joblib.Memory, default=None
        Caches the scores (like ``Pipeline(memory=...)``), keyed by the data,
        the network's weights and every parameter that changes the scores,
        but not by ``threshold``, ``max_remove`` or ``remove_from``: a grid
        search over the removal rule scores once per data split.
    feature_dir : None, bool or str, default=None
        Where the network's features live during ``fit``: in memory
        (``None``), or as float32 memmaps in a temporary directory
        (``True``) or in a new subdirectory of the given directory, removed
        when ``fit`` ends. On disk, memory does not grow with the number of
        samples: the head algebra reads the features by chunks.
    device : str, default="auto"
        Torch device; ``"auto"`` picks CUDA when available.
    random_state : int, RandomState instance or None, default=None
        Seeds the cross-fitting folds.
    verbose : int, default=0
        Progress bars and messages when > 0.

    Attributes
    ----------
    scores_ : ndarray of shape (n_samples,)
        Influence scores (higher = keep).
    support_ : ndarray of bool, shape (n_samples,)
        Kept samples.
    sample_indices_ : ndarray of int
        Indices of the kept samples, ascending.
    n_removed_ : int
        Number of samples removed.
    n_protected_ : int
        Candidates kept because their class reached its floor.
    classes_ : ndarray
        Class labels seen in ``fit``.
    n_features_in_ : int
        ``X.shape[1]`` of the training array (channels for images).
    feature_names_in_ : ndarray of str
        Column names, when fitted on a DataFrame with string column names.
    estimator_ : TransferClassifier or None
        A clone of ``estimator`` (the configuration analysed).
    network_ : torch.nn.Module or None
        The analysed network with the head fitted on all of ``(X, y)``.
    influence_ : dict
        How the scores were computed, the same keys on every path:
        ``mode`` (``"validation_set"``, ``"cross_fit"``,
        ``"target_cross_fit"`` or ``"target_whole"``), ``alpha`` (the value
        used) and ``alpha_rule`` (``"fixed"``, ``"scale"`` or ``"auto"``),
        ``params`` (names analysed), ``hessian``,
        ``solver``, ``damping`` (largest over folds), ``residual`` (largest
        relative residual of the solves), ``n_iter`` (largest solver
        iteration count), ``n_folds`` (0 with a validation set),
        ``per_fold`` (list of dicts with ``damping``, ``residual``,
        ``n_iter``), ``seconds`` (``features``, ``scores``, ``total``),
        ``oof_proba`` and ``oof_loss`` (out-of-fold head probabilities and
        losses of the training samples, cross-fitted head path only, else
        ``None``).
    removal_search_ : dict
        With ``max_remove="auto"``: the counts tried, their mean target loss,
        the best and the chosen count.

    See Also
    --------
    skitl.TransferClassifier : fine-tunes on what the selector keeps.
    skitl.selection.DomainClassifierSelector : the density-ratio baseline.
    skitl.selection.LossSelector : the out-of-fold-loss baseline.

    Examples
    --------
    >>> from sklearn.datasets import load_digits
    >>> from skitl import InfluenceSampleSelector
    >>> X, y = load_digits(return_X_y=True)
    >>> sel = InfluenceSampleSelector(random_state=0)
    >>> X_kept, y_kept = sel.fit_resample(X[:300] / 16, y[:300])
    >>> len(y_kept) == 300 - sel.n_removed_
    True
    """

    _parameter_constraints = {
        **FeatureSelector._parameter_constraints,
        "params": [StrOptions({"head", "all"}), list, tuple],
        "hessian": [StrOptions(_HESSIANS)],
        "damping": [StrOptions({"auto"}), Interval(numbers.Real, 0, None, closed="left")],
        "val_trim": [StrOptions({"auto"}), Interval(numbers.Real, 0, 1, closed="left")],
        "threshold": [None, Interval(numbers.Real, None, None, closed="both")],
        "solver": [StrOptions(_HEAD_SOLVERS | _DEEP_SOLVERS)],
        "solver_options": [None, dict],
        "alpha": [StrOptions({"scale", "auto"}), Interval(numbers.Real, 0, None,
                                                           closed="left")],
        "target_validation": [StrOptions({"cross_fit", "whole"})],
    }

    _scoring_params = ("params", "hessian", "alpha", "damping", "cv", "val_trim",
                       "solver", "target_validation", "random_state")

    def __init__(
        self,
        estimator=None,
        *,
        params="head",
        hessian="exact",
        alpha="scale",
        damping="auto",
        cv=5,
        val_trim="auto",
        target_validation="whole",
        threshold=0.0,
        max_remove=None,
        remove_from="auxiliary",
        solver="auto",
        solver_options=None,
        batch_size=256,
        memory=None,
        feature_dir=None,
        device="auto",
        random_state=None,
        verbose=0,
    ):
        self.estimator = estimator
        self.params = params
        self.hessian = hessian
        self.alpha = alpha
        self.damping = damping
        self.cv = cv
        self.val_trim = val_trim
        self.target_validation = target_validation
        self.threshold = threshold
        self.max_remove = max_remove
        self.remove_from = remove_from
        self.solver = solver
        self.solver_options = solver_options
        self.batch_size = batch_size
        self.memory = memory
        self.feature_dir = feature_dir
        self.device = device
        self.random_state = random_state
        self.verbose = verbose

    # -- the plan: every check between parameters, before any network --------

    def _deep(self):
        return self.params != "head"

    def _derived_settings(self, y_val, target):
        deep = self._deep()
        if isinstance(self.params, (list, tuple)) and not (
            self.params and all(isinstance(p, str) for p in self.params)
        ):
            raise ValueError(
                "params must be 'head', 'all' or a non-empty list of parameter "
                f"name patterns, got {self.params!r}."
            )
        if deep and self.estimator is None:
            raise ValueError(
                f"params={self.params!r} needs a network: pass "
                "estimator=TransferClassifier(...)."
            )
        if not deep:
            if self.hessian == "ekfac":
                raise ValueError(
                    "hessian='ekfac' approximates deeper parameters; the head's exact "
                    "Hessian is cheaper and exact (hessian='exact')."
                )
            if self.solver not in _HEAD_SOLVERS:
                raise ValueError(
                    f"solver={self.solver!r} is for deeper parameters; the head takes "
                    f"{sorted(_HEAD_SOLVERS)}."
                )
            if self.alpha == 0 and self.damping == 0:
                raise ValueError(
                    "alpha=0 with damping=0 leaves the head Hessian singular; use "
                    "alpha > 0 or damping='auto'."
                )
        elif self.solver not in _DEEP_SOLVERS:
            raise ValueError(
                f"solver={self.solver!r} is for the head; deeper parameters take "
                f"{sorted(_DEEP_SOLVERS)}."
            )
        options = typed_options("deep" if deep else "head", self.solver,
                                self.solver_options, hessian=self._engine_hessian())
        # The held-out folds of max_remove="auto" come free with the head
        # and with cross-fitting; a deep solve against a whole validation set
        # pays one solve per fold for them, so only when asked for.
        whole = y_val is not None or (target is not None
                                      and self.target_validation == "whole")
        eval_folds = (not deep or not whole or isinstance(self.max_remove, str))
        return {"solver_options": tuple(sorted(vars(options).items())),
                "eval_folds": eval_folds}

    def _engine_hessian(self):
        if not self._deep():
            return "identity" if self.hessian == "identity" else "exact"
        return self.hessian

    def _check_plan(self, plan, y, y_val):
        super()._check_plan(plan, y, y_val)
        if plan.mode.startswith("target"):
            check_target_classes(y, plan.target, self.classes_)
        if plan.mode == "target_cross_fit":
            warn_small_folds(y, self.cv, self.classes_, target=plan.target)
        elif plan.mode == "cross_fit":
            warn_small_folds(y, self.cv, self.classes_)

    # -- scoring --------------------------------------------------------------

    def _score(self, plan, net, head_name, X, y, X_val, y_val):
        k = len(self.classes_)
        res = influence_scores(
            net, X, y, X_val, y_val, target=plan.target if X_val is None else None,
            target_validation=self.target_validation, params=self.params,
            head=head_name, alpha=self.alpha, hessian=self._engine_hessian(),
            damping=self.damping, val_trim=self.val_trim, cv=self.cv, adapt_folds=True,
            refit_head=True,
            solver=self.solver, solver_options=dict(plan.scoring["solver_options"]),
            eval_folds=plan.scoring["eval_folds"], n_classes=k,
            batch_size=self.batch_size, device=self._device(),
            feature_dir=getattr(self, "_feature_path", None),
            random_state=self.random_state, verbose=self.verbose)
        network = None
        if net is not None:
            W, b = res.W, res.b
            if W is None:  # cross-fitting: the head fitted on all of (X, y)
                W, b = fit_head(res.features, y, k, alpha=res.info["alpha"]["value"])
            network = install_head(net, head_name, W, b).eval()
        cross = plan.mode in ("cross_fit", "target_cross_fit")
        per_fold = res.per_fold if cross else []
        info = {
            "mode": plan.mode,
            "alpha": res.info["alpha"]["value"],
            "alpha_rule": res.info["alpha"]["rule"],
            "params": list(res.params),
            "hessian": self._engine_hessian(),
            "solver": res.solver,
            "damping": max(f["damping"] for f in res.per_fold),
            "residual": max(f["residual"] for f in res.per_fold),
            "n_iter": max(f["n_iter"] for f in res.per_fold),
            "n_folds": len(per_fold),
            "per_fold": per_fold,
            "seconds": {"features": res.seconds["features"],
                        "scores": res.seconds["total"] - res.seconds["features"],
                        "total": res.seconds["total"]},
            "oof_proba": res.oof_proba,
            "oof_loss": res.oof_loss,
        }
        return Scored(res.scores, {"influence_": info, "network_": network},
                      res.features, res.features_val, res.eval_folds)

    def attribution(self, X, y, X_query, y_query, *, block_size=256, out=None):
        """Influence of each training sample on each query's loss, as fitted.

        ``A[i, j]``: the predicted increase of query ``j``'s loss if training
        sample ``i`` were removed (positive = it helps that query), with the
        fitted configuration (the pretrained network's head features, the
        ``alpha`` in ``influence_["alpha"]``); the mean over the queries is
        the score against them as a validation set. One head fit and one
        factorisation serve every query (see
        :func:`skitl.influence.attribution_matrix`). Head parameters only.

        Parameters
        ----------
        X : array-like of shape (n_samples, ...) or torch Dataset
            The training samples (those given to :meth:`fit`).
        y : array-like of shape (n_samples,)
            Their labels.
        X_query : array-like of shape (n_queries, ...) or torch Dataset
            The samples whose loss is attributed (test images, say).
        y_query : array-like of shape (n_queries,)
            Their labels (classes seen in :meth:`fit`).
        block_size : int, default=256
            Queries per block (memory: one ``(n_samples, block_size)`` block).
        out : array-like of shape (n_samples, n_queries), optional
            Where to write the matrix (a ``numpy.memmap`` for a large one).

        Returns
        -------
        matrix : ndarray of shape (n_samples, n_queries)
        """
        from sklearn.utils.validation import check_is_fitted

        from ..influence import attribution_matrix
        from ..utils import check_X, check_y

        check_is_fitted(self, "scores_")
        if self.params != "head":
            raise ValueError(
                f"attribution is computed for the head; this selector analysed "
                f"params={self.params!r}.")
        X, X_query = check_X(X, name="X"), check_X(X_query, name="X_query")
        y = self._encoder.transform(check_y(y, n_samples=len(X)))
        y_query = check_y(y_query, name="y_query", n_samples=len(X_query))
        unseen = np.setdiff1d(np.unique(y_query), self.classes_)
        if len(unseen):
            raise ValueError(f"y_query contains labels not seen in fit: {unseen.tolist()}.")
        net, head_name = self._network()
        F, Fq = (self._features(net, head_name, Z) for Z in (X, X_query))
        return attribution_matrix(F, y, Fq, self._encoder.transform(y_query),
                                  n_classes=len(self.classes_),
                                  alpha=self.influence_["alpha"], damping=self.damping,
                                  block_size=block_size, out=out,
                                  device=self._device())

    def _rule_alpha(self):
        # max_remove="auto" refits heads with the alpha the scores used
        return self.influence_["alpha"]

    def _device(self):
        from ..utils import resolve_device

        return resolve_device(self.device)

    def fit(self, X, y, X_val=None, y_val=None, *, sample_domain=None):
        """Score every sample of ``(X, y)`` against the target and decide which to keep.

        Parameters
        ----------
        X : array-like of shape (n_samples, ...) or torch Dataset
            Training inputs: the target training set, or a pool of target and
            auxiliary samples.
        y : array-like of shape (n_samples,)
            Training labels (possibly noisy).
        X_val : array-like or torch Dataset, default=None
            A separate validation set from the target distribution, assumed
            clean: every training sample is scored against it.
        y_val : array-like of shape (n_val,), default=None
            Its labels.
        sample_domain : array-like of int of shape (n_samples,), default=None
            Domain of each training sample: negative = target, positive =
            auxiliary / source (skada's convention). Without ``X_val``, the
            target samples validate (see ``target_validation``).

        Returns
        -------
        self : InfluenceSampleSelector
            The fitted selector.
        """
        return super().fit(X, y, X_val, y_val, sample_domain=sample_domain)
