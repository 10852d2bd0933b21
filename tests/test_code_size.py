"""Size limits on the library and the stages: no module over 450 lines, no function over 80.

Long modules mix ideas and long functions hide steps a reader must hold at once. Lines are physical lines of the file; a function's lines run from its `def` to
its last line (`ast` end_lineno), docstring and nested functions included. Tests are exempt.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("biasloop", "stages")
MAX_MODULE_LINES = 450
MAX_FUNCTION_LINES = 80


def oversized(source: str, name: str) -> list[str]:
    """The size offences in one module's source: a line per module or function over its limit."""
    found = []
    lines = len(source.splitlines())
    if lines > MAX_MODULE_LINES:
        found.append(f"{name}: {lines} lines (max {MAX_MODULE_LINES})")
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            length = node.end_lineno - node.lineno + 1
            if length > MAX_FUNCTION_LINES:
                found.append(f"{name}:{node.lineno} {node.name}: {length} lines (max {MAX_FUNCTION_LINES})")
    return found


def test_no_module_or_function_over_its_size_limit() -> None:
    offences = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            offences += oversized(path.read_text(), str(path.relative_to(ROOT)))
    assert not offences, "split by meaning:\n" + "\n".join(offences)


def test_the_size_check_fails_on_a_long_function_and_a_long_module() -> None:
    body = "\n".join(f"    x{i} = {i}" for i in range(80))
    long_function = f"def long():\n{body}\n"  # 81 lines
    assert oversized(long_function, "m.py") == ["m.py:1 long: 81 lines (max 80)"]
    assert oversized(long_function.replace("    x79 = 79\n", ""), "m.py") == []
    long_module = "\n".join(f"x{i} = {i}" for i in range(451))
    assert oversized(long_module, "m.py") == ["m.py: 451 lines (max 450)"]
    assert oversized("\n".join(long_module.splitlines()[:450]), "m.py") == []
