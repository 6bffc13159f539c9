"""Typed options of every inverse-Hessian solver, in one registry.

Each solver has a small frozen dataclass of its options with their defaults,
written once here. :func:`solver_options` turns a user's dict (or keyword
arguments) into the dataclass of the solver that will run, and rejects an
unknown or misspelt option, naming it and the valid ones, before any
forward pass, gradient or factorisation runs.

What ``damping="auto"`` means depends on the solver, because the solvers
see different matrices:

===========================  ==================================================
solver                       ``damping="auto"``
===========================  ==================================================
head (Cholesky or CG)        0: the softmax null space is deflated exactly;
                             escalated to 1e-9, 1e-6, 1e-3 times the mean
                             diagonal of ``H`` only if the solve fails
deep CG, LiSSA, Arnoldi      1.0 times each module's mean eigenvalue (one
                             scalar, their mean, for Arnoldi)
deep EK-FAC                  0.1 times each module's mean eigenvalue
                             (kronfluence's rule)
deep identity                0 (no inverse)
===========================  ==================================================
"""

import dataclasses
from dataclasses import dataclass


@dataclass(frozen=True)
class HeadOptions:
    """Options of the head solvers (``"cholesky"`` and ``"cg"``).

    Attributes
    ----------
    tol : float, default=1e-10
        Relative residual tolerance of CG (the dense Cholesky solve is exact).
    max_iter : int or None, default=None
        Most CG iterations (``None``: ten times the number of unknowns).
    """

    tol: float = 1e-10
    max_iter: int = None


@dataclass(frozen=True)
class CGOptions:
    """Options of conjugate gradient on the deep path.

    Attributes
    ----------
    tol : float, default=1e-3
        Relative residual to reach.
    max_iter : int, default=500
        Most iterations.
    preconditioner : {"auto", "blocks", "ekfac", "nystrom", None}, default="auto"
        ``"auto"``: ``"blocks"`` with ``damping="auto"``, none otherwise;
        ``"blocks"``: each module's parameters scaled by that block's mean
        eigenvalue plus damping; ``"ekfac"``: EK-FAC's damped inverse;
        ``"nystrom"``: a randomized Nyström preconditioner of rank ``rank``
        (needs ``damping > 0``).
    rank : int, default=32
        Rank of the Nyström sketch.
    n_label_samples : int, default=1
        Sampled labels per sample of the EK-FAC statistics (``"ekfac"``).
    on_failure : {"warn", "raise"}, default="warn"
        A ``ConvergenceWarning`` or a ``RuntimeError`` when ``tol`` is not
        reached.
    random_state : int, default=0
        Seeds the damping estimate and the sketches.
    """

    tol: float = 1e-3
    max_iter: int = 500
    preconditioner: str = "auto"
    rank: int = 32
    n_label_samples: int = 1
    on_failure: str = "warn"
    random_state: int = 0

    def __post_init__(self):
        if self.preconditioner not in ("auto", "blocks", "ekfac", "nystrom", None):
            raise ValueError("preconditioner must be 'auto', 'blocks', 'ekfac', "
                             f"'nystrom' or None, got {self.preconditioner!r}.")
        if self.on_failure not in ("warn", "raise"):
            raise ValueError(f"on_failure must be 'warn' or 'raise', got "
                             f"{self.on_failure!r}.")


@dataclass(frozen=True)
class LiSSAOptions:
    """Options of LiSSA (a Neumann series on mini-batch Hessians).

    Attributes
    ----------
    depth : int, default=1000
        Terms of the series.
    scale : float or None, default=None
        Divides the operator so that the series converges (``None``: a power
        iteration estimate of the largest eigenvalue).
    lissa_batch_size : int or None, default=None
        Samples per mini-batch Hessian (``None``: the engine's batch size).
    tol : float, default=1e-8
        Stop when a step changes the estimate by less than this, relatively.
    random_state : int, default=0
        Seeds the mini-batches.
    """

    depth: int = 1000
    scale: float = None
    lissa_batch_size: int = None
    tol: float = 1e-8
    random_state: int = 0


@dataclass(frozen=True)
class ArnoldiOptions:
    """Options of the low-rank Arnoldi inverse (Schioppa et al. 2022).

    Attributes
    ----------
    n_iter : int, default=100
        Arnoldi iterations (Hessian-vector products).
    rank : int, default=20
        Top eigenpairs kept.
    random_state : int, default=0
        Seeds the start vector and the damping estimate.
    """

    n_iter: int = 100
    rank: int = 20
    random_state: int = 0


@dataclass(frozen=True)
class EKFACOptions:
    """Options of the EK-FAC inverse (George et al. 2018; kronfluence).

    Attributes
    ----------
    n_label_samples : int, default=1
        Labels sampled from the model per sample for the statistics.
    measure_residual : bool, default=True
        Measure the residual of the approximate solve against the GGN (one
        extra pass over the training data).
    random_state : int, default=0
        Seeds the sampled labels.
    """

    n_label_samples: int = 1
    measure_residual: bool = True
    random_state: int = 0


@dataclass(frozen=True)
class IdentityOptions:
    """Options of the identity "inverse" (gradient similarity): none to set.

    Attributes
    ----------
    random_state : int, default=0
        Accepted for a uniform interface; nothing random runs.
    """

    random_state: int = 0


#: ``(path, solver)`` -> the options class; ``path`` is ``"head"`` or
#: ``"deep"``, ``solver`` the concrete solver (``"ekfac"`` and ``"identity"``
#: stand for the Hessians that bring their own inverse).
REGISTRY = {
    ("head", "cholesky"): HeadOptions,
    ("head", "cg"): HeadOptions,
    ("head", "auto"): HeadOptions,
    ("deep", "cg"): CGOptions,
    ("deep", "lissa"): LiSSAOptions,
    ("deep", "arnoldi"): ArnoldiOptions,
    ("deep", "ekfac"): EKFACOptions,
    ("deep", "identity"): IdentityOptions,
}


def deep_solver_name(hessian, solver):
    """The registry's solver name on the deep path: ``"auto"`` means CG, and
    ``hessian="ekfac"`` / ``"identity"`` bring their own inverse."""
    if hessian in ("ekfac", "identity"):
        return hessian
    return "cg" if solver == "auto" else solver


def solver_options(path, solver, options=None, *, hessian="ggn"):
    """The typed options of the solver that will run.

    Parameters
    ----------
    path : {"head", "deep"}
        Which engine solves.
    solver : str
        ``"auto"``, ``"cholesky"``, ``"cg"`` (head) or ``"auto"``, ``"cg"``,
        ``"lissa"``, ``"arnoldi"`` (deep).
    options : dict, dataclass instance or None, default=None
        Option values; missing ones take their defaults. A dataclass
        instance of the right class is returned as it is.
    hessian : str, default="ggn"
        On the deep path ``"ekfac"`` and ``"identity"`` select their own
        options whatever ``solver`` says.

    Returns
    -------
    options : dataclass instance
        One of :class:`HeadOptions`, :class:`CGOptions`,
        :class:`LiSSAOptions`, :class:`ArnoldiOptions`,
        :class:`EKFACOptions`, :class:`IdentityOptions`.

    Raises
    ------
    TypeError
        An option the solver does not have (the message names it and lists
        the valid ones).
    ValueError
        An unknown ``path`` / ``solver``, or an invalid option value.
    """
    name = deep_solver_name(hessian, solver) if path == "deep" else solver
    cls = REGISTRY.get((path, name))
    if cls is None:
        valid = sorted(s for p, s in REGISTRY if p == path and s not in ("ekfac",
                                                                         "identity"))
        raise ValueError(f"solver={solver!r} is not a {path} solver; valid: {valid}.")
    if isinstance(options, cls):
        return options
    if dataclasses.is_dataclass(options):
        raise TypeError(f"{type(options).__name__} are not the options of the {path} "
                        f"solver {name!r}; it takes {cls.__name__}.")
    given = dict(options or {})
    fields = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(given) - set(fields))
    if unknown:
        raise TypeError(
            f"Unknown option(s) {unknown} for the {path} solver {name!r} "
            f"(hessian={hessian!r}); valid options: {fields}.")
    return cls(**given)
