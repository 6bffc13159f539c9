"""Transfer-learning classifiers."""

from ._transfer import TransferClassifier

__all__ = ["TransferClassifier"]
