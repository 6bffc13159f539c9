"""Result types of the influence engine (no imports from the rest of it)."""

from dataclasses import dataclass, field

import numpy as np


@dataclass
class InfluenceResult:
    """Influence scores and how they were computed.

    Attributes
    ----------
    scores : ndarray of shape (n_train,)
        ``scores[i] = (1/n) g_valᵀ H⁻¹ ∇L_i``: the predicted increase of the
        mean validation loss if training sample ``i`` is removed (positive =
        helpful, negative = harmful).
    damping : float
        Damping actually added to the Hessian.
    solver : str
        ``"cholesky"``, ``"cg"``, ``"lissa"``, ``"arnoldi"``, ``"ekfac"`` or
        ``"none"`` (identity Hessian).
    hessian : str
        ``"exact"``, ``"ggn"``, ``"ekfac"`` or ``"identity"``.
    residual : float
        Relative residual ``‖(H + λ) s − g‖ / ‖g‖`` of the solve (NaN where it
        was not measured, e.g. for approximate inverses).
    n_iter : int
        Solver iterations (0 for direct solves).
    seconds : dict
        Wall time per phase (``features``, ``fit``, ``gradients``, ``solve``,
        ``scores``, ``total``).
    params : list of str
        Names of the parameters analysed.
    W, b : ndarray or None
        The fitted head (head path only), float64.
    info : dict
        Solver-specific extras (e.g. LiSSA scale, Arnoldi eigenvalues).
    mode : str
        Where the validation loss came from (:func:`influence_scores`):
        ``"validation_set"``, ``"cross_fit"``, ``"target_cross_fit"`` or
        ``"target_whole"``.
    per_fold : list of dict
        ``damping``, ``residual`` and ``n_iter`` of every fold (one entry
        without cross-fitting).
    oof_proba, oof_loss : ndarray or None
        Out-of-fold head probabilities and losses (cross-fitted head path).
    features, features_val : ndarray, numpy.memmap or None
        The head features the scores were computed on (set by
        :func:`influence_scores`).
    eval_folds : EvalFolds or None
        What ``max_remove="auto"`` judges a removal count on (when asked).
    """

    scores: np.ndarray
    damping: float
    solver: str
    hessian: str
    residual: float
    n_iter: int
    seconds: dict
    params: list
    W: np.ndarray = None
    b: np.ndarray = None
    info: dict = field(default_factory=dict)
    mode: str = "validation_set"
    per_fold: list = field(default_factory=list)
    oof_proba: np.ndarray = None
    oof_loss: np.ndarray = None
    features: object = None
    features_val: object = None
    eval_folds: object = None


@dataclass
class EvalFolds:
    """Held-out target folds on which a removal count is judged.

    ``max_remove="auto"`` refits the head without the first ``c``
    candidates for a grid of counts ``c`` and measures each fold's weighted
    loss; the candidates are ordered by scores computed *without* the fold.

    Attributes
    ----------
    fold_of : ndarray of int of shape (n_rows,)
        The fold each row is held out in (``-1``: never). Rows are training
        rows (``on="train"``) or validation rows (``on="val"``).
    on : {"train", "val"}
        ``"train"``: fold ``f`` evaluates on the training rows it holds out,
        and the refitted head trains on every other training row.
        ``"val"``: it evaluates on validation rows, and the head trains on
        all training rows.
    weights : list of ndarray
        Per fold, the weights of its held-out rows (ascending row order).
    order : ndarray of shape (n_folds, n_train)
        Row ``f``: the score of every training sample computed without fold
        ``f``.
    """

    fold_of: np.ndarray
    on: str
    weights: list
    order: np.ndarray

    @property
    def n_folds(self):
        """Number of folds."""
        return len(self.weights)

    def fold(self, f):
        """The rows of fold ``f``.

        Parameters
        ----------
        f : int
            Fold number.

        Returns
        -------
        train_idx : ndarray of int or None
            Training rows the refitted head trains on (``None``: all of them,
            with ``on="val"``).
        eval_idx : ndarray of int
            The held-out rows (training or validation rows, see ``on``).
        """
        held = np.flatnonzero(self.fold_of == f)
        if self.on == "val":
            return None, held
        return np.flatnonzero(self.fold_of != f), held


@dataclass
class CrossFitResult:
    """Cross-fitted influence and out-of-fold statistics of every sample.

    Attributes
    ----------
    scores : ndarray of shape (n,)
        Mean over the folds in which the sample was trained on of its
        influence on that fold's (weighted) validation loss: the predicted
        increase of that loss if the sample is removed (positive = helpful).
    oof_proba : ndarray of shape (n, k)
        Probabilities from the head fitted without the sample's fold. With a
        ``target`` mask, non-target samples are never held out: theirs is
        the mean over folds of the probabilities of the fold heads, which
        were trained on them (in-sample).
    oof_loss : ndarray of shape (n,)
        Cross-entropy under ``oof_proba`` (in-sample for non-target samples).
    oof_self_influence : ndarray of shape (n,)
        Self-influence of each held-out sample under the head fitted without
        its fold. ``self_influence_hessian="exact"`` (asked for with
        ``self_influence=True``, and only where a dense factor of ``H`` fits):
        ``(1/n_fold) ∇L_iᵀ H⁻¹ ∇L_i`` with ``H`` the Hessian of that head,
        damping included. ``"identity"`` (the default, and the fallback): the
        squared gradient norm ``(1/n_fold) ‖∇L_i‖²``, which needs no factor.
        NaN for non-target samples (never held out) when a ``target`` mask
        was given.
    self_influence_hessian : str
        ``"exact"`` or ``"identity"``, as above.
    fold_of : ndarray of int of shape (n,)
        The fold in which each sample was held out (validation), ``-1`` for
        samples never held out (non-target samples with a ``target`` mask).
    val_weights_per_fold : list of ndarray
        The weights :func:`trim_weights` gave each fold's validation samples.
    damping : list of float
        Damping used per fold.
    residual : list of float
        Relative solver residual per fold.
    solver : str
        The solver of the folds (``"cholesky"`` or ``"cg"``; ``"none"`` for
        the identity Hessian).
    seconds : dict
        Wall time by phase, summed over folds.
    target : ndarray of bool of shape (n,) or None
        The target mask the folds ran over (None: all samples).
    passes : dict
        Passes over each fold's training features by phase (``fit``,
        ``gradients``, ``solve``, ``scores``), summed over folds: the cost
        that dominates for features on disk.
    order_scores : ndarray of shape (n_folds, n) or None
        Row ``f``: every sample's score computed without fold ``f`` (the
        order in which ``max_remove="auto"`` removes candidates when judging
        on that fold); only when asked for.
    folds : list of (train_idx, val_idx)
        Sorted index arrays of each fold, built from ``fold_of`` when read
        (a property: the result itself keeps one small integer per sample,
        not ``cv`` index arrays of length ``n``).
    """

    scores: np.ndarray
    oof_proba: np.ndarray
    oof_loss: np.ndarray
    oof_self_influence: np.ndarray
    self_influence_hessian: str
    fold_of: np.ndarray
    val_weights_per_fold: list
    damping: list
    residual: list
    solver: str
    seconds: dict = field(default_factory=dict)
    target: np.ndarray = None
    passes: dict = field(default_factory=dict)
    order_scores: np.ndarray = None

    @property
    def folds(self):
        """Sorted ``(train_idx, val_idx)`` index arrays of each fold.

        Rebuilt from ``fold_of`` at every access, so the result keeps one
        small integer per sample instead of ``cv`` pairs of index arrays.

        Returns
        -------
        folds : list of (ndarray, ndarray)
            One pair per fold; ``train_idx`` holds every sample not held out
            in that fold (non-target samples included).
        """
        return [fold_indices(self.fold_of, f) for f in range(len(self.val_weights_per_fold))]


def fold_indices(fold_of, f):
    """Sorted ``(train_idx, val_idx)`` of fold ``f`` from the per-sample fold numbers."""
    return np.flatnonzero(fold_of != f), np.flatnonzero(fold_of == f)
