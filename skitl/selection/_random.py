"""RandomSelector: the control every pruning result must beat."""

from sklearn.utils import check_random_state

from ._base import MAX_REMOVE, BaseSelector


class RandomSelector(BaseSelector):
    """Remove a given number (or fraction) of samples uniformly at random.

    The control every pruning result must beat: with ``max_remove`` set to the
    count another selector removed, it tells whether *which* samples were
    removed mattered. ``X_val`` / ``y_val`` are accepted for a uniform
    interface and not used; ``sample_domain`` restricts removal to auxiliary
    samples (``remove_from="auxiliary"``).

    Parameters
    ----------
    max_remove : int or float in [0, 1), default=0.1
        How many samples to remove (a count or a fraction of the training
        set).
    remove_from : {"auxiliary", "all"}, default="auxiliary"
        With ``sample_domain``: draw only among auxiliary samples, or among
        all. Ignored without ``sample_domain``.
    random_state : int, RandomState instance or None, default=None
        Seeds the draw.

    Attributes
    ----------
    scores_ : ndarray of shape (n_samples,)
        Uniform random numbers; the lowest ``max_remove`` candidates are
        removed.
    support_ : ndarray of bool, shape (n_samples,)
        Kept samples.
    sample_indices_ : ndarray of int
        Indices of the kept samples, ascending.
    n_removed_ : int
        Number of samples removed.
    n_protected_ : int
        Draws kept because their class reached its floor.
    classes_ : ndarray
        Class labels seen in ``fit``.
    n_features_in_ : int
        ``X.shape[1]`` of the training array.
    feature_names_in_ : ndarray of str
        Column names, when fitted on a DataFrame with string column names.
    """

    _parameter_constraints = {
        **BaseSelector._parameter_constraints,
        "max_remove": MAX_REMOVE,
        "random_state": ["random_state"],
    }

    def __init__(self, max_remove=0.1, *, remove_from="auxiliary", random_state=None):
        self.max_remove = max_remove
        self.remove_from = remove_from
        self.random_state = random_state

    def _compute_scores(self, plan, X, y, X_val, y_val):
        return check_random_state(self.random_state).uniform(size=len(y))
