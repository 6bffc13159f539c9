"""The floors of the code: each imports only from below, and no import cycle.

Read from the source with ``ast`` (no import side effects): every ``import``
of a skitl module becomes an edge of a graph whose nodes are the modules;
importing a package means importing its ``__init__``, which imports what it
re-exports.
"""

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1] / "skitl"

#: Floors, lowest first; a module may import its own floor and the floors below.
FLOORS = [
    ("ground", ("skitl.utils", "skitl.datasets", "skitl.models")),
    ("plumbing", ("skitl._network",)),
    ("engine", ("skitl.influence",)),
    ("estimators", ("skitl.selection", "skitl.classification", "skitl.metrics",
                    "skitl.model_selection", "skitl.skada")),
    ("top", ("skitl._experiment", "skitl._demo", "skitl._cli", "skitl.__main__",
             "skitl")),
]


def _module_name(path):
    rel = path.relative_to(ROOT.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _modules():
    return {_module_name(p): p for p in ROOT.rglob("*.py")}


def _resolve(module, node, is_package):
    """The skitl modules an import statement names."""
    out = []
    if isinstance(node, ast.Import):
        out = [a.name for a in node.names if a.name.split(".")[0] == "skitl"]
    elif isinstance(node, ast.ImportFrom):
        if node.level:
            base = module.split(".")
            base = base if is_package else base[:-1]
            base = base[: len(base) - (node.level - 1)]
            target = ".".join(base + ([node.module] if node.module else []))
        else:
            target = node.module or ""
        if target.split(".")[0] != "skitl":
            return []
        out.append(target)
        # ``from .pkg import mod`` imports the submodule pkg.mod
        out += [f"{target}.{a.name}" for a in node.names]
    return out


def _graph():
    mods = _modules()
    graph = {}
    for name, path in mods.items():
        tree = ast.parse(path.read_text())
        edges = set()
        for node in ast.walk(tree):
            for target in _resolve(name, node, path.name == "__init__.py"):
                if target in mods and target != name:
                    edges.add(target)
        graph[name] = edges
    return graph


def _floor(module):
    best = None
    for level, (_, prefixes) in enumerate(FLOORS):
        for prefix in prefixes:
            if module == prefix or module.startswith(prefix + "."):
                if best is None or len(prefix) > len(best[1]):
                    best = (level, prefix)
    return best[0]


def test_every_module_has_a_floor():
    for name in _modules():
        assert _floor(name) is not None, name


def test_imports_go_down_only():
    bad = []
    for name, edges in _graph().items():
        for target in edges:
            if _floor(target) > _floor(name):
                bad.append(f"{name} -> {target}")
    assert bad == []


def _cycle(graph, nodes):
    state = {}

    def visit(n, stack):
        state[n] = 1
        for m in graph.get(n, ()):
            if m not in nodes:
                continue
            if state.get(m) == 1:
                return stack + [n, m]
            if m not in state:
                found = visit(m, stack + [n])
                if found:
                    return found
        state[n] = 2
        return None

    for n in sorted(nodes):
        if n not in state:
            found = visit(n, [])
            if found:
                return found
    return None


@pytest.mark.parametrize("package", ["skitl.influence", "skitl.selection", "skitl.utils",
                                     "skitl.classification"])
def test_no_import_cycle_inside_a_package(package):
    """Between the private modules of a package (its ``__init__`` only
    re-exports them and is left out)."""
    graph = _graph()
    nodes = {n for n in graph if n.startswith(package + ".")}
    assert nodes
    assert _cycle(graph, nodes) is None


def test_result_types_import_nothing_of_the_engine():
    assert {t for t in _graph()["skitl.influence._results"]
            if t.startswith("skitl.influence")} == set()
