"""The layout of the tests (a unit test of the tree): shared helpers live in tests/support/;
no test module imports another test module or tests/conftest.py, and conftest.py only
declares fixtures and hooks (pytest imports it under its own name: a second copy of any
state in it would be a second world counter, a second set of keys)."""

from __future__ import annotations

import ast
from pathlib import Path

TESTS = Path(__file__).resolve().parent


def imported(tree: ast.Module) -> list[str]:
    """Every module a file imports, anywhere in it (also inside functions)."""
    names: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
        elif isinstance(node, ast.ImportFrom) and node.level > 0:
            names.append("." * node.level + (node.module or ""))
    return names


def forbidden(name: str) -> bool:
    last = name.rsplit(".", 1)[-1]
    return (name.startswith(".") or last == "conftest" or last.startswith("test_")
            or name in ("tests.pg", "pg"))


def test_no_test_module_imports_another_or_the_conftest() -> None:
    found = {
        f"{path.relative_to(TESTS)}: {name}"
        for path in sorted(TESTS.rglob("*.py"))
        for name in imported(ast.parse(path.read_text(encoding="utf-8")))
        if forbidden(name)
    }
    assert found == set(), "import from tests.support instead"


def is_fixture(decorator: ast.expr) -> bool:
    target = decorator.func if isinstance(decorator, ast.Call) else decorator
    return isinstance(target, ast.Attribute) and target.attr == "fixture"


def test_the_conftest_only_declares_fixtures_and_hooks() -> None:
    tree = ast.parse((TESTS / "conftest.py").read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, ast.FunctionDef):
            assert node.name.startswith("pytest_") or any(
                is_fixture(d) for d in node.decorator_list), node.name
        else:
            assert isinstance(node, ast.Import | ast.ImportFrom) or (
                isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)), \
                f"conftest.py line {node.lineno}: only fixtures and hooks (see tests/support/)"


def test_the_support_package_holds_no_tests() -> None:
    for path in sorted((TESTS / "support").glob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        tests = [node.name for node in tree.body
                 if isinstance(node, ast.FunctionDef) and node.name.startswith("test_")]
        assert tests == [], path.name
