"""skitl: instance-based deep transfer learning for scikit-learn.

Two estimators carry the method: :class:`InfluenceSampleSelector` scores each
target training sample by its influence on the validation loss and removes the
harmful ones, and :class:`TransferClassifier` fine-tunes a pretrained network
on what is left. Baseline selectors live in :mod:`skitl.selection`, the
influence engine in :mod:`skitl.influence`, data sets in :mod:`skitl.datasets`.
"""

from .classification import TransferClassifier
from .selection import InfluenceSampleSelector

__version__ = "0.1.0.dev0"

__all__ = ["InfluenceSampleSelector", "TransferClassifier"]
