"""The import rule, function-local imports included: the core (everything but ``cli``)
never imports rich, click or ``onnxopt.cli``; passes never import ``onnxopt.validate``,
``onnxopt.bench`` or ``onnxopt.cli``."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CORE = [p for p in sorted((REPO / "onnxopt").rglob("*.py"))
        if "cli" not in p.relative_to(REPO / "onnxopt").parts and p.name != "__main__.py"]
PASSES = sorted((REPO / "passes").glob("*.py"))


def imported_modules(path: Path) -> list[str]:
    names = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
    return names


def forbidden(path: Path, prefixes: tuple[str, ...]) -> list[str]:
    return [name for name in imported_modules(path) if any(name == p or name.startswith(p + ".") for p in prefixes)]


@pytest.mark.parametrize("path", CORE, ids=lambda p: str(p.relative_to(REPO)))
def test_core_imports_no_ui(path):
    assert forbidden(path, ("rich", "click", "onnxopt.cli")) == []


@pytest.mark.parametrize("path", PASSES, ids=lambda p: str(p.relative_to(REPO)))
def test_passes_import_no_validation_benchmark_or_ui(path):
    assert forbidden(path, ("onnxopt.validate", "onnxopt.bench", "onnxopt.cli", "rich", "click")) == []


def test_the_rule_catches_a_function_local_import(tmp_path):
    fake = tmp_path / "fake.py"
    fake.write_text("def render():\n    from onnxopt.cli.tables import print_metrics\n    return print_metrics\n")
    assert forbidden(fake, ("onnxopt.cli",)) == ["onnxopt.cli.tables"]
