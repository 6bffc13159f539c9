"""ConfidentLearningSelector: cleanlab's label issues as a selector."""

import numpy as np
from sklearn.utils._param_validation import StrOptions

from ._loss import LossSelector
from ._plan import warn_small_folds
from ._scoring import FeatureSelector, Scored


class ConfidentLearningSelector(FeatureSelector):
    """Remove the label issues cleanlab's confident learning finds.

    The predicted probabilities come from a head fitted on the pretrained
    network's features, out of fold (as in
    :class:`~skitl.selection.LossSelector`) or, with ``X_val`` / ``y_val``,
    from a head fitted on the target set; cleanlab's ``find_label_issues``
    then flags the samples. Needs the optional dependency:
    ``pip install "skitl[cleanlab]"``.

    Parameters
    ----------
    estimator : TransferClassifier, default=None
        Whose pretrained network gives the features; ``None`` uses X itself.
    cv : int, default=5
        Number of stratified folds.
    alpha : float, default=1e-3
        L2 strength of the head.
    filter_by : str, default="prune_by_noise_rate"
        Passed to ``cleanlab.filter.find_label_issues``.
    max_remove : int, float in [0, 1), "auto" or None, default=None
        Caps removal, lowest self-confidence first; ``"auto"`` chooses the
        count from the target loss of refitted heads.
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
        Predicted probability of the given label (self-confidence).
    label_issues_ : ndarray of bool
        cleanlab's verdict before the class guards and ``max_remove``.
    oof_proba_ : ndarray of shape (n_samples, n_classes)
        The probabilities given to cleanlab.
    oof_loss_ : ndarray of shape (n_samples,)
        Their cross-entropy.
    support_ : ndarray of bool, shape (n_samples,)
        Kept samples.
    sample_indices_ : ndarray of int
        Indices of the kept samples, ascending.
    n_removed_ : int
        Number of samples removed.
    n_protected_ : int
        Label issues kept because their class reached its floor.
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
        "filter_by": [StrOptions({
            "prune_by_noise_rate", "prune_by_class", "both", "confident_learning",
            "predicted_neq_given", "low_normalized_margin", "low_self_confidence",
        })],
    }

    _scoring_params = ("alpha", "cv", "filter_by", "random_state")

    def __init__(
        self,
        estimator=None,
        *,
        cv=5,
        alpha=1e-3,
        filter_by="prune_by_noise_rate",
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
        self.filter_by = filter_by
        self.max_remove = max_remove
        self.remove_from = remove_from
        self.batch_size = batch_size
        self.memory = memory
        self.feature_dir = feature_dir
        self.device = device
        self.random_state = random_state
        self.verbose = verbose

    def _check_plan(self, plan, y, y_val):
        super()._check_plan(plan, y, y_val)
        if y_val is None:  # the pool is cross-fitted, target or not
            warn_small_folds(y, self.cv, self.classes_)

    def _score(self, plan, net, head_name, X, y, X_val, y_val):
        try:
            from cleanlab.filter import find_label_issues
        except ImportError as exc:
            raise ImportError(
                "ConfidentLearningSelector needs cleanlab, an optional dependency: "
                'pip install "skitl[cleanlab]"'
            ) from exc
        F = self._features(net, head_name, X)
        F_val = None if X_val is None else self._features(net, head_name, X_val)
        proba, loss = LossSelector._probabilities(self, F, y, F_val, y_val)
        issues = np.asarray(
            find_label_issues(labels=y, pred_probs=proba, filter_by=self.filter_by),
            dtype=bool,
        )
        scores = proba[np.arange(len(y)), y]
        info = {"label_issues_": issues, "oof_proba_": proba, "oof_loss_": loss}
        return Scored(scores, info, F, F_val, self._fixed_order_folds(plan, y, y_val,
                                                                      scores))

    def _candidates(self, scores):
        return self.label_issues_
