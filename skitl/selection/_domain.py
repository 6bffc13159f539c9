"""DomainClassifierSelector: keep what looks like the target (density ratio)."""

import numbers

import numpy as np
from scipy.special import expit
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold, cross_val_predict
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils._param_validation import Interval

from ._scoring import FeatureSelector, Scored


class DomainClassifierSelector(FeatureSelector):
    """Remove the training samples that look least like the target.

    A probabilistic classifier (logistic regression on standardised
    pretrained features) learns to tell target samples from the rest; its
    out-of-fold probability ``p(target | x)`` gives the density ratio
    ``w(x) = p_target(x) / p_pool(x)`` of every training sample, the classic
    importance weight of covariate-shift adaptation (as in discriminator
    reweighting). This is the baseline instance-based transfer with
    influence has to beat when harmful samples are correctly labelled but
    come from another distribution: it judges where a sample comes from,
    not what it does to the target loss.

    The target is ``X_val`` (a target sample set; every training sample is
    then a candidate) or, with ``sample_domain``, the target samples of the
    pool (only auxiliary samples are candidates unless
    ``remove_from="all"``). Labels are not used. One of the two is required.

    Parameters
    ----------
    estimator : TransferClassifier, default=None
        Whose pretrained network gives the features; ``None`` uses X itself.
    cv : int, default=5
        Folds of the out-of-fold domain probabilities (stratified by domain).
    alpha : float, default=1e-3
        L2 strength of the domain classifier, in the head's convention:
        ``LogisticRegression(C=1/(alpha n))`` on standardised features; also
        the head's strength for ``max_remove="auto"``.
    threshold : float, default=0.0
        Remove samples whose score (the log density ratio) is below it: the
        default removes what is more typical of the auxiliary data than of
        the target.
    max_remove : int, float in [0, 1), "auto" or None, default=None
        Caps removal, least target-like first; ``"auto"`` chooses the count
        from the target loss of refitted heads.
    remove_from : {"auxiliary", "all"}, default="auxiliary"
        With ``sample_domain``: remove only auxiliary samples, or any.
    batch_size : int, default=256
        Batch size of the forward pass.
    memory : None, str or joblib.Memory, default=None
        Caches the scores (not the removal rule).
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
        Log density ratio ``log p_target(x) - log p_other(x)`` estimated out
        of fold (higher = more target-like = keep).
    target_proba_ : ndarray of shape (n_samples,)
        Out-of-fold probability that each training sample is a target sample.
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

    See Also
    --------
    skitl.InfluenceSampleSelector : judges samples by their effect on the
        target loss.
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
        threshold=0.0,
        max_remove=None,
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

    def _check_plan(self, plan, y, y_val):
        target = plan.target
        if y_val is None and target is None:
            raise ValueError(
                "DomainClassifierSelector needs a target: pass X_val / y_val or "
                "sample_domain (negative for target samples)."
            )
        n_target = len(y_val) if y_val is not None else int(target.sum())
        n_other = len(y) if y_val is not None else int((~target).sum())
        if min(n_target, n_other) < self.cv:
            raise ValueError(
                f"cv={self.cv} folds need at least {self.cv} target and {self.cv} "
                f"other samples; got {n_target} target and {n_other} other."
            )
        super()._check_plan(plan, y, y_val)

    def _score(self, plan, net, head_name, X, y, X_val, y_val):
        F = self._features(net, head_name, X)
        F_val = None if X_val is None else self._features(net, head_name, X_val)
        if F_val is not None:
            Z = np.vstack([F, F_val])
            d = np.r_[np.zeros(len(F), dtype=int), np.ones(len(F_val), dtype=int)]
        else:
            Z, d = F, plan.target.astype(int)
        clf = make_pipeline(
            StandardScaler(),
            LogisticRegression(C=1.0 / (max(self.alpha, 1e-12) * len(Z)), max_iter=2000),
        )
        folds = StratifiedKFold(self.cv, shuffle=True, random_state=self.random_state)
        # The decision function is the log odds itself: finite wherever the
        # features are, also on a pool the classifier separates perfectly,
        # where a (float32) probability rounds to exactly 0 or 1.
        logit = cross_val_predict(clf, np.asarray(Z, dtype=np.float64), d, cv=folds,
                                  method="decision_function")[: len(F)]
        prior = d.mean()
        # the odds of target against the rest, corrected for their sizes
        scores = logit - np.log(prior / (1 - prior))
        return Scored(scores, {"target_proba_": expit(logit)}, F, F_val,
                      self._fixed_order_folds(plan, y, y_val, scores))
