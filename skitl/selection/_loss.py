"""LossSelector: remove what a head on the pretrained features finds hardest."""

import numbers

import numpy as np
from sklearn.utils._param_validation import Interval

from ..influence import cross_fit_head_influence, fit_head, predict_proba_head
from ._plan import warn_small_folds
from ._scoring import FeatureSelector, Scored


def _loss(F, y, W, b):
    proba = predict_proba_head(F, W, b)
    return proba, -np.log(np.clip(proba[np.arange(len(y)), y], 1e-300, None))


class LossSelector(FeatureSelector):
    """Remove the samples with the highest loss under the pretrained features.

    Without a target set, a head is fitted on the pretrained network's
    features with ``cv``-fold cross-fitting and each sample's loss is taken
    from the fold in which it was held out: the small-loss trick of the
    noisy-label literature and the strongest simple baseline for influence
    under label noise. With ``X_val`` / ``y_val`` the loss is that of a head
    fitted on the target set, so the samples a target model finds least
    plausible go. With ``sample_domain`` the pool is cross-fitted as without a
    target and only auxiliary samples are removed (``remove_from``).

    Parameters
    ----------
    estimator : TransferClassifier, default=None
        Whose pretrained network gives the features; ``None`` uses X itself.
    cv : int, default=5
        Number of stratified folds.
    alpha : float, default=1e-3
        L2 strength of the head, as in :class:`~skitl.InfluenceSampleSelector`.
    threshold : float or None, default=None
        Remove samples whose score ``-loss`` is below it (i.e. loss above
        ``-threshold``); ``None`` leaves the count to ``max_remove``.
    max_remove : int, float in [0, 1), "auto" or None, default=0.1
        Largest number (or fraction) of samples removed, highest loss first;
        ``"auto"`` chooses the count from the target loss of refitted heads
        (see :class:`~skitl.InfluenceSampleSelector`; the order comes from
        the scores of all the data).
    remove_from : {"auxiliary", "all"}, default="auxiliary"
        With ``sample_domain``: remove only auxiliary samples, or any.
    batch_size : int, default=256
        Batch size of the forward pass.
    memory : None, str or joblib.Memory, default=None
        Caches the scores, keyed by the data, the network's weights and the
        scoring parameters (not the removal rule).
    feature_dir : None, bool or str, default=None
        Where the network's features live during ``fit``: in memory
        (``None``), or as float32 memmaps in a temporary directory
        (``True``) or in a new subdirectory of the given directory, removed
        when ``fit`` ends. On disk, memory does not grow with the number of
        samples: the head algebra reads the features by chunks.
    device : str, default="auto"
        Torch device.
    random_state : int, RandomState instance or None, default=None
        Seeds the folds.
    verbose : int, default=0
        Progress output when > 0.

    Attributes
    ----------
    scores_ : ndarray of shape (n_samples,)
        Minus the cross-entropy (higher = keep).
    oof_proba_ : ndarray of shape (n_samples, n_classes)
        The probabilities the loss was computed from (out of fold, or from
        the target head).
    oof_loss_ : ndarray of shape (n_samples,)
        The loss itself.
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
        ``X.shape[1]`` of the training array.
    feature_names_in_ : ndarray of str
        Column names, when fitted on a DataFrame with string column names.
    estimator_ : TransferClassifier or None
        A clone of ``estimator``.
    removal_search_ : dict
        With ``max_remove="auto"``: the counts tried and their target loss.
    """

    _parameter_constraints = {
        **FeatureSelector._parameter_constraints,
        "threshold": [None, Interval(numbers.Real, None, None, closed="both")],
    }

    def __init__(
        self,
        estimator=None,
        *,
        cv=5,
        alpha=1e-3,
        threshold=None,
        max_remove=0.1,
        remove_from="auxiliary",
        batch_size=256,
        memory=None,
        feature_dir=None,
        device="auto",
        random_state=None,
        verbose=0,
    ):
        self.estimator = estimator
        self.cv = cv
        self.alpha = alpha
        self.threshold = threshold
        self.max_remove = max_remove
        self.remove_from = remove_from
        self.batch_size = batch_size
        self.memory = memory
        self.feature_dir = feature_dir
        self.device = device
        self.random_state = random_state
        self.verbose = verbose

    def _probabilities(self, F, y, F_val, y_val):
        k = len(self.classes_)
        if F_val is not None:
            W, b = fit_head(F_val, y_val, k, alpha=self.alpha)
            return _loss(F, y, W, b)
        # identity Hessian: only the out-of-fold probabilities are used, and
        # they do not depend on the curvature.
        res = cross_fit_head_influence(
            F, y, n_classes=k, cv=self.cv, alpha=self.alpha, val_trim=0.0,
            hessian="identity", random_state=self.random_state, verbose=self.verbose,
            adapt_folds=True,
        )
        return res.oof_proba, res.oof_loss

    def _check_plan(self, plan, y, y_val):
        super()._check_plan(plan, y, y_val)
        if y_val is None:  # the pool is cross-fitted, target or not
            warn_small_folds(y, self.cv, self.classes_)

    def _score(self, plan, net, head_name, X, y, X_val, y_val):
        F = self._features(net, head_name, X)
        F_val = None if X_val is None else self._features(net, head_name, X_val)
        proba, loss = self._probabilities(F, y, F_val, y_val)
        scores = -loss
        return Scored(scores, {"oof_proba_": proba, "oof_loss_": loss}, F, F_val,
                      self._fixed_order_folds(plan, y, y_val, scores))
