"""The code's shape, checked: no import cycles between modules (function-local imports count), no
function over 80 lines, and ruff (lint and format, configured in pyproject.toml) clean."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
MAX_FUNCTION_LINES = 80


def _module(path: Path) -> str:
    return ".".join(path.relative_to(SRC).with_suffix("").parts).removesuffix(".__init__")


def _imports(tree: ast.AST, modules: set[str]) -> set[str]:
    """needlework modules a file imports anywhere in it (`from a.b import c` counts a.b.c when c is a module)."""
    out = set()
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("needlework"):
            names = [f"{node.module}.{a.name}" for a in node.names] + [node.module]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names if a.name.startswith("needlework")]
        out |= {n for n in names if n in modules}
    return out


def _graph() -> tuple[dict[str, set[str]], dict[str, ast.AST]]:
    files = {_module(p): p for p in SRC.rglob("*.py")}
    trees = {m: ast.parse(p.read_text(), str(p)) for m, p in files.items()}
    packages = {m for m, p in files.items() if p.name == "__init__.py"}
    # a package's __init__ only names its submodules: importing through it is not a dependency on them
    graph = {m: _imports(t, set(files)) - packages - {m} for m, t in trees.items()}
    return graph, trees


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the stack, 2: done

    def visit(m: str, path: list[str]) -> list[str] | None:
        state[m] = 1
        for n in sorted(graph.get(m, ())):
            if state.get(n) == 1:
                return path[path.index(n) :] + [n] if n in path else [m, n]
            if n not in state and (found := visit(n, path + [n])):
                return found
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state and (found := visit(m, [m])):
            return found
    return None


def test_no_import_cycles():
    graph, _ = _graph()
    assert _cycle(graph) is None, " -> ".join(_cycle(graph) or [])


def test_the_cycle_finder_finds_a_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_no_function_over_80_lines():
    _, trees = _graph()
    long = [
        f"{m}.{node.name} ({node.end_lineno - node.lineno + 1} lines)"
        for m, tree in trees.items()
        for node in ast.walk(tree)
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES
    ]
    assert not long, long


@pytest.mark.skipif(shutil.which("ruff", path=str(Path(sys.executable).parent)) is None, reason="ruff is in the test extras")
@pytest.mark.parametrize("args", [["check"], ["format", "--check"]], ids=["lint", "format"])
def test_ruff_is_clean(args):
    ruff = shutil.which("ruff", path=str(Path(sys.executable).parent))
    p = subprocess.run([ruff, *args, "src", "tests", "benchmarks"], cwd=ROOT, capture_output=True, text=True)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-2000:]


def test_the_cli_starts_without_torch():
    """Options come from the config dataclasses, which live apart from the code that needs torch,
    so `needlework --help` stays fast (about a second instead of ten)."""
    code = "import sys, needlework.cli; heavy = {'torch', 'transformers', 'scipy.stats'} & set(sys.modules); assert not heavy, heavy"
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr[-2000:]


def test_test_modules_have_unique_names():
    """pytest imports test files and their helpers by basename (the test folders are not packages),
    so two `test_x.py` (or two `x_helpers.py`) in different folders stop the suite at collection."""
    names = [p.name for p in (ROOT / "tests").rglob("*.py") if p.name not in ("conftest.py", "__init__.py")]
    assert len(names) == len(set(names)), sorted(n for n in names if names.count(n) > 1)
