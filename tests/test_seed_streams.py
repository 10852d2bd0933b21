"""Every seed comes from a named stream (``biasloop.core.seeds.stream_seed``): no ``seed + generation``
arithmetic and no ad-hoc ``default_rng([seed, ...])`` keys in the library or the stages (issue 21)."""

from __future__ import annotations

import ast
from pathlib import Path

from biasloop.core.seeds import stream_seed

ROOT = Path(__file__).resolve().parents[1]


def _mentions_seed(node: ast.AST) -> bool:
    """A name or attribute called like a seed (``seed``, ``base.seed``, ``configs["base"].seed``)."""
    return (isinstance(node, ast.Name) and "seed" in node.id.lower()) or (
        isinstance(node, ast.Attribute) and "seed" in node.attr.lower()
    )


def seed_arithmetic(source: str, filename: str) -> list[str]:
    """``file:line`` of each arithmetic on a seed and each ``default_rng`` keyed by a list holding one."""
    found = []
    for node in ast.walk(ast.parse(source, filename=filename)):
        if (
            isinstance(node, ast.BinOp)
            and isinstance(node.op, (ast.Add, ast.Sub, ast.Mult))
            and (_mentions_seed(node.left) or _mentions_seed(node.right))
        ):
            found.append(f"{filename}:{node.lineno}")
        elif (
            isinstance(node, ast.Call)
            and getattr(node.func, "attr", getattr(node.func, "id", None)) == "default_rng"
            and node.args
            and isinstance(node.args[0], (ast.List, ast.Tuple))
            and any(_mentions_seed(element) for element in node.args[0].elts)
        ):
            found.append(f"{filename}:{node.lineno}")
    return found


def test_no_seed_arithmetic_in_library_or_stages() -> None:
    offenders = []
    for package in ("biasloop", "stages"):
        for path in sorted((ROOT / package).rglob("*.py")):
            offenders += seed_arithmetic(path.read_text(), path.relative_to(ROOT).as_posix())
    assert not offenders, f"derive these seeds with stream_seed(base.seed, name, *keys): {offenders}"


def test_the_check_can_fail() -> None:
    source = (
        "s = configs['base'].seed + args.generation\nt = seed * 1000 + run\n"
        "rng = np.random.default_rng([seed, generation, 7])\nok = stream_seed(seed, 'x', 1)\n"
    )
    assert sorted(seed_arithmetic(source, "x.py")) == ["x.py:1", "x.py:2", "x.py:3"]


def test_neighbouring_seeds_and_generations_do_not_share_a_stream() -> None:
    # what base.seed + generation got wrong: seed 0 at generation 1 was seed 1 at generation 0
    for stream in ("captioner", "classifier", "generate-noise", "mix-noise", "replacement-order"):
        assert stream_seed(0, stream, 1) != stream_seed(1, stream, 0)
    assert stream_seed(0, "captioner", 0) != stream_seed(0, "classifier", 0)
