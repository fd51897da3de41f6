"""The direction of the house: ``common/`` is shared by the methods and knows none of them.

A static walk (``ast`` over the source files, nothing imported): every ``import`` and
``from ... import`` statement of every module under ``common/``, at any depth (a lazy import
inside a function counts too), is checked against the method packages and the registry.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# what sits above common/: the methods, the baseline and the registry that names them all
ABOVE_COMMON = ("suave", "daino", "supervised", "registry")


def imported_modules(source: str) -> list[tuple[int, str]]:
    """(line, module) of every absolute import in ``source``; relative imports stay inside
    their package and are skipped."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.append((node.lineno, node.module))
    return found


def upward_imports(path: Path) -> list[str]:
    return [f"{path.relative_to(ROOT)}:{line} imports {module}"
            for line, module in imported_modules(path.read_text(encoding="utf-8"))
            if module.split(".")[0] in ABOVE_COMMON]  # fmt: skip


def test_walk_finds_imports_at_any_depth():
    source = "import os\nfrom suave.method import Suave\ndef f():\n    import daino.loss\n"
    assert imported_modules(source) == [(1, "os"), (2, "suave.method"), (4, "daino.loss")]


def test_common_never_imports_a_method_or_the_registry():
    files = sorted((ROOT / "common").rglob("*.py"))
    assert len(files) > 30  # the walk really sees the package
    bad = [hit for path in files for hit in upward_imports(path)]
    assert not bad, "common/ must not know the methods:\n" + "\n".join(bad)


@pytest.mark.parametrize("package", ["suave", "daino", "supervised"])
def test_methods_never_import_the_registry(package):
    """The registry imports the methods; the other way round would be a circle."""
    bad = [f"{path.relative_to(ROOT)}:{line}" for path in sorted((ROOT / package).rglob("*.py"))
           for line, module in imported_modules(path.read_text(encoding="utf-8"))
           if module.split(".")[0] == "registry"]  # fmt: skip
    assert not bad, "imports the registry: " + ", ".join(bad)
