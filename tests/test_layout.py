"""The layers of docs/architecture.md: no import cycle, imports that must never exist, few hidden
(function-local) imports, and module size.

Imports are read from the source with ``ast`` (module level and inside functions alike);
``if TYPE_CHECKING:`` blocks are exempt.  Executing ``import a.b.c`` also runs ``a/__init__`` and
``a/b/__init__``, so those count as edges too, except the packages the importer itself lives in
(Python is already executing them).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("megaproc", "data_tools")
MAX_LINES = 600
MAX_LOCAL_IMPORTS = 20  # function-local imports of the project's own modules, whole project


# ----------------------------------------------------------------------------- the graph
def project_modules(root: Path, packages=PACKAGES) -> dict[str, Path]:
    """Dotted module name -> file, for every ``.py`` file of ``packages`` under ``root``."""
    modules = {}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            modules[".".join(parts)] = path
    return modules


def _executed(name: str, modules: dict, importer: str) -> list[str]:
    """Project modules that ``import name`` runs from ``importer``."""
    parts, found = name.split("."), []
    for i in range(1, len(parts) + 1):
        module = ".".join(parts[:i])
        if module not in modules:
            continue
        if i < len(parts) and (importer == module or importer.startswith(module + ".")):
            continue  # a package the importer lives in is already executing
        found.append(module)
    return found


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    skipped = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skipped |= {id(n) for body in node.body for n in ast.walk(body)}
    return skipped


def import_edges(root: Path, packages=PACKAGES,
                 hidden: dict[str, int] | None = None) -> dict[str, list[tuple[str, bool]]]:
    """``{module: [(imported project module, inside a function?), ...]}``; with ``hidden`` the
    function-local import statements naming a project module are counted per module there."""
    modules = project_modules(root, packages)
    edges: dict[str, list[tuple[str, bool]]] = {}
    hidden = {} if hidden is None else hidden
    for name, path in modules.items():
        tree = ast.parse(path.read_text())
        skipped = _type_checking_nodes(tree)
        local_nodes = {id(n) for f in ast.walk(tree)
                       if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
                       for n in ast.walk(f)}
        is_package = path.name == "__init__.py"
        found = edges.setdefault(name, [])
        for node in ast.walk(tree):
            if id(node) in skipped:
                continue
            targets = []
            if isinstance(node, ast.Import):
                targets = [t for alias in node.names for t in _executed(alias.name, modules, name)]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = name.split(".") if is_package else name.split(".")[:-1]
                    base = base[:len(base) - (node.level - 1)]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                targets = _executed(target, modules, name)
                targets += [f"{target}.{a.name}" for a in node.names
                            if f"{target}.{a.name}" in modules]
            found += [(t, id(node) in local_nodes) for t in targets if t != name]
            if targets and id(node) in local_nodes:
                hidden[name] = hidden.get(name, 0) + 1
    return edges


def find_cycles(edges: dict[str, list[tuple[str, bool]]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), sorted."""
    graph = {m: sorted({t for t, _ in targets}) for m, targets in edges.items()}
    index, low, stack, on_stack, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return sorted(out)


HIDDEN_IMPORTS: dict[str, int] = {}
EDGES = import_edges(REPO, hidden=HIDDEN_IMPORTS)


def imports_of(module: str) -> set[str]:
    """Every module (project or not) that ``module``'s source imports, anywhere in the file."""
    tree = ast.parse(project_modules(REPO)[module].read_text())
    skipped, found = _type_checking_nodes(tree), set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
    return found


# ----------------------------------------------------------------------------- rules
def test_no_import_cycle():
    assert find_cycles(EDGES) == []


def test_the_cycle_check_finds_a_cycle_it_is_fed(tmp_path):
    pkg = tmp_path / "megaproc"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("from megaproc.sub.a import f\n")
    (pkg / "sub" / "a.py").write_text("def f():\n    from megaproc import b  # inside a function\n")
    (pkg / "b.py").write_text("import megaproc.sub.a\n")
    (pkg / "c.py").write_text("from . import b\n")
    edges = import_edges(tmp_path, ("megaproc",))
    assert find_cycles(edges) == [["megaproc.b", "megaproc.sub", "megaproc.sub.a"]]
    assert ("megaproc.b", True) in edges["megaproc.sub.a"]
    (pkg / "sub" / "a.py").write_text("def f():\n    return 1\n")
    assert find_cycles(import_edges(tmp_path, ("megaproc",))) == []


FORBIDDEN = [
    ("megaproc.data", ("megaproc.trainer", "megaproc.engine", "megaproc.hooks", "megaproc.runs",
                       "megaproc.models", "data_tools")),
    ("megaproc.synthetic", ("megaproc.trainer", "megaproc.engine", "megaproc.hooks",
                            "megaproc.data", "megaproc.runs", "torch.distributed", "deepspeed")),
    ("megaproc.models", ("megaproc.data", "megaproc.trainer", "megaproc.hooks", "megaproc.runs")),
    ("megaproc.hooks", ("megaproc.trainer", "megaproc.runs")),
    ("megaproc.eval", ("megaproc.trainer", "megaproc.hooks", "megaproc.runs")),
    ("megaproc.checkpoint", ("megaproc.trainer", "megaproc.hooks", "megaproc.runs",
                             "megaproc.data")),
    ("megaproc", ("data_tools",)),
    ("data_tools", ("deepspeed", "megaproc.trainer", "megaproc.engine", "megaproc.hooks",
                    "megaproc.runs")),
]


@pytest.mark.parametrize("package, banned", FORBIDDEN, ids=[p for p, _ in FORBIDDEN])
def test_forbidden_imports(package, banned):
    offences = []
    for module in project_modules(REPO):
        if module != package and not module.startswith(package + "."):
            continue
        for imported in imports_of(module):
            if any(imported == b or imported.startswith(b + ".") for b in banned):
                offences.append(f"{module} imports {imported}")
    assert not offences, offences


@pytest.mark.parametrize("module, allowed", [
    ("megaproc.errors", set()),
    ("megaproc.files", set()),
    ("megaproc.config_parsing", {"megaproc.errors"}),
    ("megaproc.config", {"megaproc.errors", "megaproc.config_parsing"}),
])
def test_leaf_modules_import_only_what_they_may(module, allowed):
    assert {t for t, _ in EDGES[module] if t != "megaproc"} <= allowed


def test_few_hidden_imports_of_the_project_s_own_modules():
    assert sum(HIDDEN_IMPORTS.values()) <= MAX_LOCAL_IMPORTS, HIDDEN_IMPORTS


def test_no_module_over_the_size_limit():
    big = [f"{p.relative_to(REPO)}: {n} lines" for p in project_modules(REPO).values()
           if (n := len(p.read_text().splitlines())) > MAX_LINES]
    assert not big, big
