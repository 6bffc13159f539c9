"""Sample selectors: influence-based pruning and the baselines it is compared with.

Every selector shares one contract (:class:`BaseSelector`): ``fit(X, y,
X_val=None, y_val=None, *, sample_domain=None)`` scores each training sample
(``scores_``, higher = keep), ``support_`` / ``sample_indices_`` say what is
kept, and ``fit_resample`` returns the kept rows (imbalanced-learn's sampler
protocol).
"""

from ._agnostic import TargetAgnostic
from ._base import BaseSelector, removal_mask
from ._confident import ConfidentLearningSelector
from ._domain import DomainClassifierSelector
from ._influence import InfluenceSampleSelector
from ._loss import LossSelector
from ._random import RandomSelector
from ._target_only import TargetOnlySelector

__all__ = [
    "BaseSelector",
    "ConfidentLearningSelector",
    "DomainClassifierSelector",
    "InfluenceSampleSelector",
    "LossSelector",
    "RandomSelector",
    "TargetAgnostic",
    "TargetOnlySelector",
    "removal_mask",
]
