"""The influence engine: which training samples help or hurt the validation loss.

Function-level API, independent of scikit-learn estimators. Sign convention:
``scores[i]`` is the predicted *increase* of the mean
validation loss if training sample ``i`` is removed; positive = helpful,
negative = harmful.
"""

from ._api import influence_scores
from ._crossfit import cross_fit_head_influence, make_folds, trim_weights
from ._deep import deep_influence
from ._ekfac import EKFAC
from ._features import extract_features
from ._head import (
    attribution_matrix,
    choose_solver,
    fit_head,
    head_influence,
    predict_proba_head,
)
from ._options import (
    ArnoldiOptions,
    CGOptions,
    EKFACOptions,
    HeadOptions,
    IdentityOptions,
    LiSSAOptions,
    solver_options,
)
from ._params import select_parameters
from ._prefix import PrefixCache, prefix_cache
from ._prior import feature_scale
from ._results import CrossFitResult, EvalFolds, InfluenceResult
from ._solvers import arnoldi, arnoldi_solve, conjugate_gradient, lissa, power_iteration

__all__ = [
    "EKFAC",
    "ArnoldiOptions",
    "CGOptions",
    "CrossFitResult",
    "EKFACOptions",
    "EvalFolds",
    "HeadOptions",
    "IdentityOptions",
    "InfluenceResult",
    "LiSSAOptions",
    "PrefixCache",
    "arnoldi",
    "attribution_matrix",
    "arnoldi_solve",
    "choose_solver",
    "conjugate_gradient",
    "cross_fit_head_influence",
    "deep_influence",
    "extract_features",
    "feature_scale",
    "fit_head",
    "head_influence",
    "influence_scores",
    "lissa",
    "make_folds",
    "power_iteration",
    "predict_proba_head",
    "prefix_cache",
    "select_parameters",
    "solver_options",
    "trim_weights",
]
