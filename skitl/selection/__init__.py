"""Sample selectors: influence-based pruning and the baselines it is compared with."""

from ._base import BaseSelector, removal_mask
from ._baselines import ConfidentLearningSelector, LossSelector, RandomSelector
from ._influence import InfluenceSampleSelector

__all__ = [
    "BaseSelector",
    "ConfidentLearningSelector",
    "InfluenceSampleSelector",
    "LossSelector",
    "RandomSelector",
    "removal_mask",
]
