"""The package's shape (issue 29): no import circle (lazy and type-checking imports included), one place that renames
files into place, a root grouped by role, and GKD in its own subpackage."""

import ast
from pathlib import Path

from conftest import REPO

PACKAGE = REPO / "lightvessel_monai"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph(package: Path = PACKAGE) -> dict[str, set[str]]:
    """``{module: modules of the package it imports}``, from the source (function-level and
    ``if TYPE_CHECKING`` imports included: each is a circle waiting for a refactor to make it real)."""
    files = {module_name(p): p for p in package.rglob("*.py")}
    graph: dict[str, set[str]] = {m: set() for m in files}
    for module, path in files.items():
        here = module if path.name == "__init__.py" else module.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                graph[module] |= {a.name for a in node.names if a.name in files}
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parent = here.split(".")[: len(here.split(".")) - node.level + 1]
                    base = ".".join(parent + ([node.module] if node.module else []))
                for alias in node.names:
                    target = f"{base}.{alias.name}"
                    if target in files:
                        graph[module].add(target)
                    elif base in files:
                        graph[module].add(base)
    return graph


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (or a module that imports itself)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1 or v in graph[v]:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_circle_finder_finds_a_circle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": {"e"}}
    assert sorted(circles(graph)) == [["a", "b", "c"], ["e"]]
    assert circles({"a": {"b"}, "b": set()}) == []


def test_the_package_has_no_import_circle():
    graph = import_graph()
    assert "lightvessel_monai.handlers.rank0" in graph["lightvessel_monai.handlers"]  # the graph is read at all
    assert circles(graph) == [], "import circles: " + "; ".join(" <-> ".join(c) for c in circles(graph))


def test_every_atomic_write_goes_through_files_atomic_write():
    # a hand-rolled "temp file, then rename" forgets the fsync, the permissions or the clean-up of a failed write
    renames = [
        f"{path.relative_to(REPO)}:{node.lineno}"
        for path in PACKAGE.rglob("*.py")
        if path.relative_to(PACKAGE) != Path("files.py")
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr in ("replace", "rename")
        and isinstance(node.func.value, ast.Name)
        and node.func.value.id == "os"
    ]
    assert renames == [], f"os.replace/os.rename outside files.atomic_write: {renames}"


ROOT_MODULES = {"__init__.py", "checkpoints.py", "errors.py", "files.py", "taps.py"}
SUBPACKAGES = {
    "cine",
    "compare",
    "data",
    "engines",
    "export",
    "gkd",
    "handlers",
    "losses",
    "metrics",
    "networks",
    "pipeline",
    "reporting",
}


def test_the_package_root_is_grouped_by_role():
    # a new module goes into the subpackage of its role (pipeline, compare, reporting, ...), not into a flat root
    modules = {p.name for p in PACKAGE.glob("*.py")}
    packages = {p.parent.name for p in PACKAGE.glob("*/__init__.py")}
    assert modules == ROOT_MODULES, f"modules at the package root: {sorted(modules - ROOT_MODULES)} are new"
    assert packages == SUBPACKAGES


def test_gkd_lives_in_its_subpackage_and_nothing_else_imports_it():
    graph = import_graph()
    gkd = {m for m in graph if m.startswith("lightvessel_monai.gkd")}
    assert {
        "lightvessel_monai.gkd.losses",
        "lightvessel_monai.gkd.msan",
        "lightvessel_monai.gkd.alignment",
        "lightvessel_monai.gkd.semantic_distance",
    } <= gkd
    importers = sorted(m for m, targets in graph.items() if m not in gkd and targets & gkd)
    assert importers == [], f"modules outside gkd/ that import it: {importers}"
