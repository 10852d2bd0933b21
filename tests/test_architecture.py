"""The tree's rules, checked: no import cycles in the library, no stage importing a stage, no module
importing a layer above its own (the table ``ALLOWED_IMPORTS``), and each DVC stage's ``deps`` list every
project file the stage executes (otherwise DVC would not rerun it when that file changes, and committed
numbers would go stale silently).

Imports are read with ``ast``, including the ones inside functions (the library imports heavy modules
lazily), so the check covers what a stage can execute, not only what it imports at start-up.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("biasloop", "stages")
# Files a stage reads that are not Python imports: each module here -> the extra files it loads.
DATA_FILES = {"biasloop/models/downstream_clip.py": ("biasloop/models/model_configs",)}


def module_file(module: str, root: Path = ROOT) -> Path | None:
    """The project file of a dotted module name (``biasloop.core.io`` -> ``biasloop/core/io.py``), or None."""
    parts = module.split(".")
    if parts[0] not in PACKAGES:
        return None
    base = root.joinpath(*parts)
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def imported_modules(path: Path, source: str | None = None, root: Path = ROOT) -> Iterator[str]:
    """Every module ``path`` imports, at any depth of the file (``from a import b`` yields ``a`` and
    ``a.b``, in case ``a.b`` is a module); relative imports are resolved against ``path``'s package.
    ``source`` stands for the file's text (a made-up module in a test)."""
    tree = ast.parse(path.read_text() if source is None else source, filename=str(path))
    package = path.relative_to(root).with_suffix("").parts[:-1]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name
        elif isinstance(node, ast.ImportFrom):
            base = node.module
            if node.level:
                prefix = package[: len(package) - node.level + 1]
                base = ".".join((*prefix, *([node.module] if node.module else [])))
            if base:
                yield base
                for alias in node.names:
                    yield f"{base}.{alias.name}"


def parents(module: str) -> list[str]:
    """``a.b.c`` -> ``["a", "a.b"]``: the packages whose ``__init__`` runs before the module."""
    parts = module.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def import_graph(root: Path = ROOT) -> dict[Path, set[Path]]:
    """Project file -> project files it imports directly (package ``__init__`` files included)."""
    graph: dict[Path, set[Path]] = {}
    for package in PACKAGES:
        for path in (root / package).rglob("*.py"):
            targets = set()
            for module in imported_modules(path, root=root):
                for name in (*parents(module), module):
                    target = module_file(name, root)
                    if target is not None and target != path:
                        targets.add(target)
            graph[path] = targets
    return graph


def executed_files(start: Path, graph: dict[Path, set[Path]]) -> set[Path]:
    """``start`` and every project file reachable from it through imports."""
    seen, todo = {start}, [start]
    while todo:
        for target in graph.get(todo.pop(), ()):
            if target not in seen:
                seen.add(target)
                todo.append(target)
    return seen


def has_code(path: Path) -> bool:
    """False for a file that is only a docstring (an ``__init__.py`` that runs nothing)."""
    body = ast.parse(path.read_text()).body
    return any(not (isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant)) for n in body)


def find_cycle(graph: dict[Path, set[Path]]) -> list[Path] | None:
    """One import cycle as a list of files, or None."""
    state: dict[Path, int] = {}  # 1: on the stack, 2: done
    stack: list[Path] = []

    def visit(node: Path) -> list[Path] | None:
        state[node] = 1
        stack.append(node)
        for target in sorted(graph.get(node, ())):
            # A package __init__ importing its own submodule is how packages re-export names; not a cycle.
            if node.name == "__init__.py" and target.is_relative_to(node.parent):
                continue
            if state.get(target) == 1:
                return stack[stack.index(target) :] + [target]
            if target not in state and (found := visit(target)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def stage_deps(root: Path = ROOT) -> dict[str, tuple[Path, list[str]]]:
    """DVC stage name -> (its stage module, its ``deps`` with ``${item...}`` left as written)."""
    pipeline = yaml.safe_load((root / "dvc.yaml").read_text())
    out = {}
    for name, stage in pipeline["stages"].items():
        spec = stage.get("do", stage)
        match = re.search(r"python -m (stages\.\w+)", spec["cmd"])
        assert match, f"dvc.yaml stage {name}: cmd does not run `python -m stages.<name>`"
        out[name] = (module_file(match.group(1), root), [str(d) for d in spec.get("deps", [])])
    return out


def missing_deps(stage_module: Path, deps: list[str], graph: dict[Path, set[Path]], root: Path = ROOT) -> list[str]:
    """Project files the stage executes (or reads, see DATA_FILES) that no dep covers."""
    covered = [root / d.rstrip("/") for d in deps if "${" not in d]
    needed = set()
    for path in executed_files(stage_module, graph):
        if path.name != "__init__.py" or has_code(path):
            needed.add(path)
        needed.update(root / extra for extra in DATA_FILES.get(path.relative_to(root).as_posix(), ()))
    return sorted(
        p.relative_to(root).as_posix() for p in needed if not any(p == c or p.is_relative_to(c) for c in covered)
    )


# The layers, lowest first: core <- data <- models <- metrics, loop <- report <- study <- cli, stages on
# top. A package imports from itself and from the packages this table lists for it, never from one above
# (metrics and loop, side by side, do not import each other). docs/architecture.md states the same table.
LAYER_ORDER = ("core", "data", "models", ("metrics", "loop"), "report", "study", "cli", "stages")
ALLOWED_IMPORTS: dict[str, frozenset[str]] = {}
for _rank, _layer in enumerate(LAYER_ORDER):
    _below = frozenset(p for lower in LAYER_ORDER[:_rank] for p in ((lower,) if isinstance(lower, str) else lower))
    for _package in (_layer,) if isinstance(_layer, str) else _layer:
        ALLOWED_IMPORTS[_package] = _below
# Modules directly under biasloop/: the package's docstring, and `python -m biasloop` (the cli's entry point).
ROOT_MODULES = {"biasloop/__init__.py": None, "biasloop/__main__.py": "cli"}


def layer_of_module(module: str) -> str | None:
    """The layer (package) of a dotted project module: ``biasloop.metrics.paired`` -> ``metrics``;
    ``stages.x`` -> ``stages``; None for ``biasloop`` itself and for modules outside the project."""
    parts = module.split(".")
    if parts[0] == "stages":
        return "stages"
    if parts[0] != "biasloop" or len(parts) < 2:
        return None
    return parts[1] if parts[1] in ALLOWED_IMPORTS else None


def layer_of_file(path: Path, root: Path = ROOT) -> str | None:
    """The layer of a project file: its package folder (``biasloop/<layer>/...`` or ``stages/``)."""
    rel = path.relative_to(root)
    if rel.parts[0] == "stages":
        return "stages"
    if len(rel.parts) == 2:
        return ROOT_MODULES[rel.as_posix()]
    return rel.parts[1]


def upward_imports(path: Path, root: Path = ROOT, source: str | None = None) -> list[str]:
    """``"<file> imports <module> (<layer> is above <layer>)"`` for each import of ``path`` (or of
    ``source``, its made-up text) that the layer table does not allow."""
    layer = layer_of_file(path, root)
    if layer is None:
        return []
    offending: list[str] = []
    for module in sorted(set(imported_modules(path, source, root))):  # a.b sorts before a.b.c
        target = layer_of_module(module)
        if target is not None and target != layer and target not in ALLOWED_IMPORTS[layer]:
            if not any(module.startswith(seen + ".") for seen in offending):  # `from a.b import c`: once
                offending.append(module)
    return [
        f"{path.relative_to(root).as_posix()} imports {m} ({layer_of_module(m)} is not below {layer})"
        for m in offending
    ]


GRAPH = import_graph()


def test_no_import_cycle_in_the_library() -> None:
    cycle = find_cycle({k: v for k, v in GRAPH.items() if k.is_relative_to(ROOT / "biasloop")})
    assert cycle is None, "import cycle: " + " -> ".join(p.relative_to(ROOT).as_posix() for p in cycle)


def test_no_stage_imports_another_stage_and_the_library_imports_no_stage() -> None:
    offenders = [
        f"{path.relative_to(ROOT).as_posix()} imports {target.relative_to(ROOT).as_posix()}"
        for path, targets in GRAPH.items()
        for target in targets
        if target.is_relative_to(ROOT / "stages") and target.name != "__init__.py"
    ]
    assert not offenders, offenders


def test_every_package_has_a_layer() -> None:
    packages = {p.name for p in (ROOT / "biasloop").iterdir() if (p / "__init__.py").is_file()}
    assert packages <= set(ALLOWED_IMPORTS), f"add to LAYER_ORDER: {sorted(packages - set(ALLOWED_IMPORTS))}"
    modules = {p.relative_to(ROOT).as_posix() for p in (ROOT / "biasloop").glob("*.py")}
    assert modules <= set(ROOT_MODULES), f"add to ROOT_MODULES: {sorted(modules - set(ROOT_MODULES))}"


def test_no_module_imports_a_layer_above_its_own() -> None:
    offences = [
        o for package in PACKAGES for path in sorted((ROOT / package).rglob("*.py")) for o in upward_imports(path)
    ]
    assert not offences, "\n".join(offences)


def test_the_layer_check_fails_on_an_upward_import() -> None:
    """Made-up modules: an upward import (at the top or lazily inside a function, absolute or relative) is
    reported; a downward one, an import from the same package and a third-party import are not."""
    metrics_module = ROOT / "biasloop" / "metrics" / "made_up.py"
    assert upward_imports(metrics_module, source="from biasloop.report.plots import generation_curves\n") == [
        "biasloop/metrics/made_up.py imports biasloop.report.plots (report is not below metrics)"
    ]
    assert upward_imports(metrics_module, source="def f():\n    import biasloop.loop.mixing\n")
    assert upward_imports(metrics_module, source="from ..cli import generations\n")  # biasloop.cli.generations
    assert upward_imports(ROOT / "biasloop" / "core" / "made_up.py", source="from biasloop import models\n")
    allowed = (
        "import numpy\nfrom biasloop.core.io import write_json\nfrom biasloop.models import instrument\n"
        "from . import paired\nfrom biasloop.metrics.rows import x\n"
    )
    assert upward_imports(metrics_module, source=allowed) == []


@pytest.mark.parametrize("stage", sorted(stage_deps()))
def test_stage_deps_list_every_file_the_stage_executes(stage: str) -> None:
    module, deps = stage_deps()[stage]
    missing = missing_deps(module, deps, GRAPH)
    assert not missing, f"dvc.yaml stage {stage}: add to deps: {missing}"


def test_the_checks_can_fail(tmp_path: Path) -> None:
    """A cycle, a stage importing a stage and a missing dep are each detected on a made-up tree."""
    (tmp_path / "biasloop").mkdir()
    (tmp_path / "stages").mkdir()
    (tmp_path / "biasloop" / "__init__.py").write_text('"""doc only."""\n')
    (tmp_path / "biasloop" / "a.py").write_text("from biasloop.b import x\n")
    (tmp_path / "biasloop" / "b.py").write_text("def f():\n    from biasloop import a\n")
    (tmp_path / "stages" / "__init__.py").write_text("")
    (tmp_path / "stages" / "one.py").write_text("from stages.two import main\nimport biasloop.a\n")
    (tmp_path / "stages" / "two.py").write_text("")
    graph = import_graph(tmp_path)
    cycle = find_cycle(graph)
    assert cycle and {p.name for p in cycle} == {"a.py", "b.py"}
    assert tmp_path / "stages" / "two.py" in graph[tmp_path / "stages" / "one.py"]
    missing = missing_deps(tmp_path / "stages" / "one.py", ["stages/one.py", "biasloop/a.py"], graph, tmp_path)
    assert missing == ["biasloop/b.py", "stages/two.py"]  # the docstring-only __init__.py is not required
