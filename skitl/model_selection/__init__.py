"""Model selection for pools of target and auxiliary samples.

A search that decides by the target: splitters whose test folds hold target
samples only and whose training folds keep every auxiliary sample, the grid
of selectors such a search compares, and a report that says which
candidates the target cannot tell apart.
"""

from ._search import search_report, selector_grid
from ._split import TargetStratifiedKFold, TargetStratifiedShuffleSplit, stack_target

__all__ = [
    "TargetStratifiedKFold",
    "TargetStratifiedShuffleSplit",
    "search_report",
    "selector_grid",
    "stack_target",
]
