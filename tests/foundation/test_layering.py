"""The import rule, read from every module's source (function-local imports included).

    cli       -> everything
    search    -> passes, pipeline, validate, bench and the core
    passes    -> only passbase, registry, report, irutil, errors, runtime, analysis, decomp, recover
    validate, bench -> never passes or search
    foundation (errors, report, irutil, io, runtime, analysis, decomp, recover) -> nothing above it
    decomp    -> neither onnx nor onnx_ir
    nothing outside cli imports rich, click or onnxopt.cli

and no two modules import each other, directly or around a circle (function-local imports
count: a cycle ties two rooms together however late it is imported). The last tests show that
the rule fails on a fake module that breaks it.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PACKAGE = REPO / "onnxopt"


def module_name(path: Path) -> str:
    """Dotted name of a source file: ``passes/`` is installed as ``onnxopt.passes``."""
    if path.is_relative_to(REPO / "passes"):
        parts = ["onnxopt", "passes", *path.relative_to(REPO / "passes").with_suffix("").parts]
    else:
        parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


SOURCES = {module_name(p): p for p in [*sorted(PACKAGE.rglob("*.py")), *sorted((REPO / "passes").glob("*.py"))]}


def imported_modules(path: Path, module_level_only: bool = False) -> list[str]:
    """Absolute names imported by ``path``; ``from a import b`` yields ``a.b`` when that is a module."""
    tree = ast.parse(path.read_text())
    nodes = _module_level(tree) if module_level_only else ast.walk(tree)
    names = []
    for node in nodes:
        if isinstance(node, ast.Import):
            names.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            submodules = [f"{node.module}.{a.name}" for a in node.names if f"{node.module}.{a.name}" in SOURCES]
            names.extend(submodules if len(submodules) == len(node.names) else [node.module, *submodules])
    return names


def _module_level(tree: ast.Module):
    """Import statements that run when the module is imported (not in functions or TYPE_CHECKING)."""
    for node in tree.body:
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node
        elif isinstance(node, ast.If) and "TYPE_CHECKING" not in ast.unparse(node.test):
            yield from (n for n in ast.walk(node) if isinstance(n, ast.Import | ast.ImportFrom))
        elif isinstance(node, ast.Try):
            yield from (n for n in ast.walk(node) if isinstance(n, ast.Import | ast.ImportFrom))


def _under(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def violations(module: str, path: Path) -> list[str]:
    """The imports of ``module`` that break the rule, as ``"imported (why)"`` lines."""
    found = []
    for name in imported_modules(path):
        if not _under(module, ("onnxopt.cli", "onnxopt.__main__")) and _under(name, ("rich", "click", "onnxopt.cli")):
            found.append(f"{name} (only cli may use the terminal libraries)")
        elif _under(module, ("onnxopt.passes",)) and name.startswith("onnxopt") and not _under(name, PASSES_MAY):
            found.append(f"{name} (passes import only {', '.join(PASSES_MAY)})")
        elif _under(module, ("onnxopt.validate", "onnxopt.bench")) and _under(name, ("onnxopt.passes", "onnxopt.search")):
            found.append(f"{name} (validate and bench never import passes or search)")
        elif _under(module, FOUNDATION) and name.startswith("onnxopt") and not _under(name, FOUNDATION):
            found.append(f"{name} (the foundation imports nothing above it)")
        elif _under(module, ("onnxopt.decomp",)) and _under(name, ("onnx", "onnx_ir")):
            found.append(f"{name} (decomp is pure numpy)")
    return found


PASSES_MAY = ("onnxopt.passbase", "onnxopt.registry", "onnxopt.report", "onnxopt.irutil", "onnxopt.errors",
              "onnxopt.runtime", "onnxopt.analysis", "onnxopt.decomp", "onnxopt.recover", "onnxopt.passes")
FOUNDATION = ("onnxopt.errors", "onnxopt.report", "onnxopt.irutil", "onnxopt.io", "onnxopt.runtime",
              "onnxopt.analysis", "onnxopt.decomp", "onnxopt.recover")


@pytest.mark.parametrize("module", sorted(SOURCES))
def test_module_follows_the_import_rule(module):
    assert violations(module, SOURCES[module]) == []


# The registry loads the built-in passes on first lookup (they register themselves when
# imported): the one import back up, inside a function, that the rule allows.
PLUGIN_LOADING = {("onnxopt.registry", "onnxopt.passes")}


def import_cycles(sources: dict[str, Path], module_level_only: bool = False) -> list[list[str]]:
    """Cycles among the modules' imports (a package's ``__init__`` counts as its name)."""
    graph = {m: sorted({n for n in imported_modules(p, module_level_only) if n in sources and n != m
                        and (m, n) not in PLUGIN_LOADING}) for m, p in sources.items()}
    cycles, state = [], {}

    def visit(module: str, stack: list[str]) -> None:
        state[module] = "open"
        for target in graph[module]:
            if state.get(target) == "open":
                cycles.append(stack[stack.index(target):] + [target])
            elif target not in state:
                visit(target, [*stack, target])
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    # a package importing its own submodules is not a cycle with them unless they import it back
    return [c for c in cycles if not all(c[i + 1].startswith(c[i] + ".") for i in range(len(c) - 1))]


def test_no_import_cycles():
    assert import_cycles(SOURCES) == []


# --- the rule fails where it should ----------------------------------------------------------


@pytest.mark.parametrize(("module", "source", "why"), [
    ("onnxopt.passes.fake", "def f():\n    from onnxopt.pipeline import run_passes\n", "passes import only"),
    ("onnxopt.passes.fake", "import onnxopt.validate.gate\n", "passes import only"),
    ("onnxopt.validate.fake", "def f():\n    import onnxopt.search\n", "never import passes or search"),
    ("onnxopt.bench.fake", "from onnxopt.passes import fp16\n", "never import passes or search"),
    ("onnxopt.report", "def render():\n    import rich\n", "terminal libraries"),
    ("onnxopt.runtime.fake", "from onnxopt.validate.data import open_data\n", "nothing above it"),
    ("onnxopt.decomp.fake", "def f():\n    import onnx_ir\n", "pure numpy"),
])
def test_the_rule_catches_a_forbidden_import(tmp_path, module, source, why):
    fake = tmp_path / "fake.py"
    fake.write_text(source)
    found = violations(module, fake)
    assert len(found) == 1 and why in found[0]


def test_the_rule_lets_cli_import_anything(tmp_path):
    fake = tmp_path / "fake.py"
    fake.write_text("import rich\nfrom onnxopt.passes import fp16\nfrom onnxopt.search import run_search\n")
    assert violations("onnxopt.cli.fake", fake) == []


def test_the_cycle_check_finds_a_cycle(tmp_path):
    (tmp_path / "a.py").write_text("import onnxopt.fake_b\n")
    (tmp_path / "b.py").write_text("def f():\n    pass\nimport onnxopt.fake_a\n")
    (tmp_path / "c.py").write_text("def f():\n    import onnxopt.fake_b\n")
    (tmp_path / "d.py").write_text("import onnxopt.fake_c\n")
    sources = {f"onnxopt.fake_{n}": tmp_path / f"{n}.py" for n in "abcd"}
    assert import_cycles(sources) == [["onnxopt.fake_a", "onnxopt.fake_b", "onnxopt.fake_a"]]


def test_the_cycle_check_counts_a_function_local_import(tmp_path):
    (tmp_path / "a.py").write_text("import onnxopt.fake_b\n")
    (tmp_path / "b.py").write_text("def f():\n    import onnxopt.fake_a\n")
    sources = {f"onnxopt.fake_{n}": tmp_path / f"{n}.py" for n in "ab"}
    assert import_cycles(sources) == [["onnxopt.fake_a", "onnxopt.fake_b", "onnxopt.fake_a"]]
    assert import_cycles(sources, module_level_only=True) == []
