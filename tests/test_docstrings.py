"""Docstrings of the public API: complete, valid numpydoc, and self-contained.

Three checks:

(a) no comment or string under ``skitl/`` cites a file users do not have (the
    internal design notes, work directories);
(b) numpydoc validation of every public class, function and method reachable
    from the public modules' ``__all__``, for the codes in ``CHECKED_CODES``;
(c) every fitted attribute of every public estimator (public names ending in
    ``_`` after ``fit`` on tiny data) is listed in its ``Attributes`` section.
"""

import dataclasses
import importlib
import inspect
import io
import pathlib
import pkgutil
import re
import tokenize

import numpy as np
import pytest
import torch.nn as nn
from sklearn.base import BaseEstimator

import skitl

ROOT = pathlib.Path(__file__).resolve().parents[1]

# The numpydoc codes checked, and why these: each is a fact a user relies on,
# not a matter of style.
#   GL08  the object has no docstring at all;
#   SS01  no one-line summary (the API tables show it);
#   GL06  unknown section name (numpydoc drops or garbles it when rendering);
#   PR01  a parameter of the signature is not documented;
#   PR02  a documented parameter is not in the signature (renamed / removed);
#   PR04  a parameter has no type ("name : type, default=value" is the rule);
#   PR07  a parameter has no description (see also _undescribed_parameters);
#   PR10  "name: type" without the space, which numpydoc does not parse;
#   RT01  a function that returns something has no Returns section;
#   YD01  a generator has no Yields section.
# Left out on purpose: style codes (capitals, final periods, verb forms:
# SS02-SS06, PR08/PR09, RT04/RT05), order (GL07, PR03), and sections that
# are good practice but not required everywhere (ES01, SA01, EX01, RT02/RT03).
CHECKED_CODES = {"GL08", "SS01", "GL06", "PR01", "PR02", "PR04", "PR07", "PR10",
                 "RT01", "YD01"}

# Files a user of skitl does not have: the internal design notes and the
# machines' work directories.
FORBIDDEN = re.compile(r"\bDESIGN\b|/work/|\bbriefs?/")


def _numpydoc():
    """numpydoc's validation and parsing modules, or a skip."""
    validate = pytest.importorskip(
        "numpydoc.validate", reason="numpydoc is not installed (pip install -e '.[test]')")
    docscrape = pytest.importorskip("numpydoc.docscrape")
    return validate, docscrape


def _doc_section(cls, section):
    """Names listed in one section of a class docstring ("a, b : int" gives both)."""
    _, docscrape = _numpydoc()
    names = set()
    for param in docscrape.NumpyDocString(inspect.getdoc(cls) or "")[section]:
        names.update(n.strip() for n in param.name.split(","))
    return names


# ---------------------------------------------------------------------------
# the public API, from __all__
# ---------------------------------------------------------------------------
def public_modules():
    names = ["skitl"]
    names += [f"skitl.{m.name}" for m in pkgutil.iter_modules(skitl.__path__)
              if not m.name.startswith("_")]
    return names


def public_objects():
    """``{import path: object}`` of every public class and function, once each.

    The path is the shortest public one (``skitl.InfluenceSampleSelector``
    rather than ``skitl.selection.InfluenceSampleSelector``).
    """
    found, seen = {}, set()
    for modname in public_modules():
        module = importlib.import_module(modname)
        for name in getattr(module, "__all__", []):
            obj = getattr(module, name)
            if (inspect.isclass(obj) or inspect.isroutine(obj)) and id(obj) not in seen:
                seen.add(id(obj))
                found[f"{modname}.{name}"] = obj
    return found


def _own_members(cls):
    """Public methods and properties of ``cls`` defined by skitl (inherited included)."""
    members = {}
    for klass in reversed(cls.__mro__):
        if not klass.__module__.startswith("skitl"):
            continue
        for name, value in vars(klass).items():
            if name.startswith("_"):
                continue
            if isinstance(value, (staticmethod, classmethod)):
                value = value.__func__
            if inspect.isfunction(value) or isinstance(value, property):
                members[name] = value
    return members


def documented_targets():
    """Import paths numpydoc validates: public objects and their own methods."""
    paths, seen = [], set()
    for path, obj in public_objects().items():
        paths.append(path)
        if inspect.isclass(obj):
            for name, member in sorted(_own_members(obj).items()):
                if id(member) not in seen:
                    seen.add(id(member))
                    paths.append(f"{path}.{name}")
    return paths


def _resolve(path):
    module_path, _, rest = path.partition(".")
    obj = importlib.import_module(module_path)
    for part in rest.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            obj = importlib.import_module(f"{obj.__name__}.{part}")
    return obj


# ---------------------------------------------------------------------------
# (a) no citation of files users do not have
# ---------------------------------------------------------------------------
def _comments_and_strings(path):
    with open(path, "rb") as fh:
        for tok in tokenize.tokenize(fh.readline):
            if tok.type in (tokenize.COMMENT, tokenize.STRING) or (
                    tok.type == getattr(tokenize, "FSTRING_MIDDLE", -1)):
                yield tok.start[0], tok.string


def test_no_reference_to_files_users_do_not_have():
    hits = []
    for path in sorted((ROOT / "skitl").rglob("*.py")):
        for line, text in _comments_and_strings(path):
            for match in FORBIDDEN.finditer(text):
                hits.append(f"{path.relative_to(ROOT)}:{line + text[:match.start()].count(chr(10))}"
                            f": {match.group(0)!r}")
    assert not hits, (
        "Docstrings and comments must say what they mean instead of citing files "
        "users do not have:\n" + "\n".join(hits)
    )


def test_forbidden_pattern_catches_citations():
    """The pattern above finds what it must (so (a) cannot pass vacuously)."""
    assert FORBIDDEN.search("see DESIGN.md §1")
    assert FORBIDDEN.search("(DESIGN §4)")
    assert FORBIDDEN.search("/work/shared/data")
    assert not FORBIDDEN.search("the design of the head")
    text = '"""Doc."""\n# DESIGN.md says\nx = 1\n'
    toks = list(tokenize.tokenize(io.BytesIO(text.encode()).readline))
    assert any(FORBIDDEN.search(t.string) for t in toks if t.type == tokenize.COMMENT)


# ---------------------------------------------------------------------------
# (b) numpydoc validation
# ---------------------------------------------------------------------------
def _undescribed_parameters(doc):
    """Parameters documented without a description.

    numpydoc skips PR07 when the type is a set of options (``{"a", "b"}``),
    so this looks at every documented parameter itself.
    """
    return [name for name, (_, desc) in doc.doc_all_parameters.items()
            if not "".join(desc).strip()]


def _record_errors(cls):
    """For result records (dataclass, NamedTuple): every field documented.

    Their fields are outputs, so they may be listed as Attributes rather than
    Parameters; numpydoc's PR01 / PR02 would insist on Parameters.
    """
    if dataclasses.is_dataclass(cls):
        fields = [f.name for f in dataclasses.fields(cls) if f.init]
    else:
        fields = list(cls._fields)
    documented = set()
    for section in ("Parameters", "Attributes", "Other Parameters"):
        documented |= _doc_section(cls, section)
    missing = [f for f in fields if f not in documented]
    return [("PR01", f"Fields {missing} not documented")] if missing else []


@pytest.mark.parametrize("path", documented_targets())
def test_numpydoc(path):
    numpydoc_validate, _ = _numpydoc()
    obj = _resolve(path)
    result = numpydoc_validate.validate(path)
    is_record = inspect.isclass(obj) and (
        dataclasses.is_dataclass(obj) or hasattr(obj, "_fields"))
    errors = [(code, msg) for code, msg in result["errors"] if code in CHECKED_CODES
              and not (is_record and code in ("PR01", "PR02"))]
    if is_record:
        errors += _record_errors(obj)
    if result["docstring"]:
        doc = numpydoc_validate.Validator(numpydoc_validate.get_doc_object(obj))
        reported = {msg for _, msg in errors}
        for name in _undescribed_parameters(doc):
            msg = f'Parameter "{name}" has no description'
            if msg not in reported:
                errors.append(("PR07", msg))
    where = f"{result['file']}:{result['file_line']}" if result.get("file") else path
    assert not errors, f"{path} ({where}):\n" + "\n".join(
        f"  {code}: {msg}" for code, msg in errors)


def test_validation_sees_the_public_api():
    """The walk over __all__ reaches the estimators, their methods and the engine."""
    targets = documented_targets()
    for expected in ("skitl.InfluenceSampleSelector", "skitl.TransferClassifier",
                     "skitl.TransferClassifier.fit", "skitl.InfluenceSampleSelector.fit",
                     "skitl.influence.influence_scores", "skitl.datasets.load_digits_transfer",
                     "skitl.models.pretrain_source_cnn"):
        assert expected in targets
    assert not any(".selection.InfluenceSampleSelector" in t for t in targets)


def test_validation_catches_bad_parameter_docs(tmp_path, monkeypatch):
    """Missing and undescribed parameters are caught (the checks cannot pass vacuously)."""
    numpydoc_validate, _ = _numpydoc()
    module = tmp_path / "skitl_docstring_probe.py"
    module.write_text(
        "def f(a, b, c):\n"
        '    """Do something.\n\n    Parameters\n    ----------\n'
        '    a : int\n        The first.\n    b : {"x", "y"}\n\n'
        '    Returns\n    -------\n    int\n        A number.\n    """\n'
        "    return a\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    import skitl_docstring_probe as probe

    codes = [c for c, _ in numpydoc_validate.validate("skitl_docstring_probe.f")["errors"]
             if c in CHECKED_CODES]
    # numpydoc reports the missing "c" but not the undescribed "b" (its type is
    # a set of options), which is why _undescribed_parameters exists.
    assert codes == ["PR01"]
    doc = numpydoc_validate.Validator(numpydoc_validate.get_doc_object(probe.f))
    assert _undescribed_parameters(doc) == ["b"]


# ---------------------------------------------------------------------------
# (c) fitted attributes are documented
# ---------------------------------------------------------------------------
def _mlp():
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))


def _tiny_data():
    rng = np.random.RandomState(0)
    y = np.repeat([0, 1, 2], 20)
    X = (rng.randn(60, 4) + y[:, None]).astype(np.float32)
    y_val = np.repeat([0, 1, 2], 10)
    X_val = (rng.randn(30, 4) + y_val[:, None]).astype(np.float32)
    return X, y, X_val, y_val


def _undersampler():
    from imblearn.under_sampling import RandomUnderSampler

    return RandomUnderSampler(random_state=0)


# How to fit each public estimator on tiny tabular data: a list of
# (constructor parameters, fit keyword arguments) per class name; several
# entries reveal attributes that only some settings create. An estimator not
# listed is fitted with its defaults; add an entry when that is not possible.
FIT_CASES = {
    "TransferClassifier": [({"module": _mlp, "max_epochs": 1, "random_state": 0}, {})],
    "InfluenceSampleSelector": [({"random_state": 0}, {}),
                                ({"max_remove": "auto", "random_state": 0}, {}),
                                ({"random_state": 0}, {"validation": True})],
    "LossSelector": [({"random_state": 0}, {}),
                     ({"max_remove": "auto", "random_state": 0}, {})],
    "DomainClassifierSelector": [({"random_state": 0}, {"validation": True})],
    "ConfidentLearningSelector": [({"random_state": 0}, {})],
    "RandomSelector": [({"random_state": 0}, {})],
    "TargetOnlySelector": [({}, {"sample_domain": True})],
    "TargetAgnostic": [({"sampler": _undersampler()}, {"sample_domain": True})],
}


def public_estimators():
    return {path: obj for path, obj in public_objects().items()
            if inspect.isclass(obj) and issubclass(obj, BaseEstimator)
            and not obj.__name__.startswith("Base")}


@pytest.mark.parametrize("path", sorted(public_estimators()))
def test_fitted_attributes_documented(path):
    cls = public_estimators()[path]
    if cls.__name__ == "ConfidentLearningSelector":
        pytest.importorskip("cleanlab", reason="cleanlab is an optional dependency")
    X, y, X_val, y_val = _tiny_data()
    cases = [(p, kw, False) for p, kw in FIT_CASES.get(cls.__name__, [({}, {})])]
    try:
        import pandas  # noqa: F401
    except ImportError:
        pass
    else:
        # a DataFrame with string column names adds feature_names_in_
        cases.append((*cases[0][:2], True))
    fitted = set()
    for params, fit_kwargs, frame in cases:
        Xf, X_valf = X, X_val
        if frame:
            import pandas as pd

            Xf, X_valf = (pd.DataFrame(a, columns=["a", "b", "c", "d"]) for a in (X, X_val))
        est = cls(**params)
        if fit_kwargs.get("validation"):
            est.fit(Xf, y, X_val=X_valf, y_val=y_val)
        elif fit_kwargs.get("sample_domain"):
            est.fit(Xf, y, sample_domain=np.where(np.arange(len(y)) % 2 == 0, -1, 1))
        else:
            est.fit(Xf, y)
        fitted |= {k for k in vars(est) if k.endswith("_") and not k.startswith("_")}
    assert fitted, f"{path} set no fitted attribute: is the fit case right?"
    missing = sorted(fitted - _doc_section(cls, "Attributes"))
    assert not missing, (
        f"{path}: fitted attributes missing from the docstring's Attributes "
        f"section: {missing}"
    )
