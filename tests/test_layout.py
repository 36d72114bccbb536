"""The layout rules of docs/architecture.md: imports that must never exist, and module size.

Imports are read from the source with ``ast`` (module level and inside functions alike), so a
lazy import inside a function counts too; ``if TYPE_CHECKING:`` blocks are exempt.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
MAX_LINES = 600


def imports_of(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    skipped = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skipped |= {id(n) for n in ast.walk(node)}
    found = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
    return found


def python_files(*parts: str) -> list[Path]:
    return sorted((REPO.joinpath(*parts)).rglob("*.py"))


FORBIDDEN = [
    (("megaproc", "data"), ("megaproc.trainer", "megaproc.engine", "megaproc.hooks")),
    (("megaproc", "synthetic"), ("megaproc.trainer", "megaproc.engine", "megaproc.hooks",
                                 "megaproc.data", "torch.distributed", "deepspeed")),
    (("data_tools",), ("deepspeed", "megaproc.trainer", "megaproc.engine", "megaproc.hooks")),
    (("megaproc", "hooks"), ("megaproc.trainer",)),
    (("megaproc", "models"), ("megaproc.data",)),
]


@pytest.mark.parametrize("folder, banned", FORBIDDEN, ids=["/".join(f) for f, _ in FORBIDDEN])
def test_forbidden_imports(folder, banned):
    offences = []
    for path in python_files(*folder):
        for module in imports_of(path):
            if any(module == b or module.startswith(b + ".") for b in banned):
                offences.append(f"{path.relative_to(REPO)} imports {module}")
    assert not offences, offences


def test_config_imports_only_errors_of_megaproc():
    mods = {m for m in imports_of(REPO / "megaproc" / "config.py") if m.startswith("megaproc")}
    assert mods <= {"megaproc.errors"}


def test_no_module_over_the_size_limit():
    big = [f"{p.relative_to(REPO)}: {n} lines" for p in python_files("megaproc") + python_files("data_tools")
           if (n := len(p.read_text().splitlines())) > MAX_LINES]
    assert not big, big
