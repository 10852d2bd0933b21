"""params.yaml is a fixed point of DVC's params writer: `dvc exp run -S key=value` changes one line.

`dvc exp run -S` applies its overrides with ``dvc.utils.hydra.apply_overrides``, a ruamel round trip
that rewrites every list and every value (nulls become empty values, flow lists become block lists,
a list's trailing blank line is dropped). These tests run that very function on a copy of the file.
"""

from __future__ import annotations

import difflib
from pathlib import Path

import pytest
import yaml

from biasloop.study.generations import rewrite_generations
from tests.conftest import committed_text

apply_overrides = pytest.importorskip("dvc.utils.hydra").apply_overrides


def _changed_lines(before: str, after: str) -> tuple[list[str], list[str]]:
    removed, added = [], []
    for line in difflib.unified_diff(before.splitlines(), after.splitlines(), lineterm="", n=0):
        if line.startswith(("---", "+++", "@@")):
            continue
        (removed if line.startswith("-") else added).append(line[1:])
    return removed, added


def _round_trip(text: str, overrides: list[str], tmp_path: Path) -> str:
    path = tmp_path / "params.yaml"
    path.write_text(text)
    apply_overrides(str(path), overrides)
    return path.read_text()


@pytest.mark.parametrize(
    ("override", "old", "new"),
    [
        ("synthetic_ratio=0.8", "synthetic_ratio: 0.4", "synthetic_ratio: 0.8"),
        ("base.seed=3", "  seed: 0 ", "  seed: 3 "),
        ("world.markedness.counter=0", "    counter: 0.4 ", "    counter: 0 "),
        ("evaluate.n_boot=50", "  n_boot: 1000 ", "  n_boot: 50 "),
        ("neighbours.model=all-mpnet-base-v2", "  model:  ", "  model: all-mpnet-base-v2"),
    ],
)
def test_set_param_changes_exactly_one_line(override: str, old: str, new: str, tmp_path: Path) -> None:
    original = committed_text("params.yaml")
    rewritten = _round_trip(original, [override], tmp_path)
    removed, added = _changed_lines(original, rewritten)
    assert len(removed) == 1 and len(added) == 1, (
        f"dvc exp run -S {override} would change {len(removed)} line(s) of params.yaml, not 1; keep the layout "
        "described at the top of params.yaml:\n"
        + "\n".join(f"- {r}" for r in removed)
        + "\n"
        + "\n".join(f"+ {a}" for a in added)
    )
    assert removed[0].startswith(old) and added[0].startswith(new), (removed, added)
    if "#" in removed[0]:  # the comment on the changed line is kept
        assert removed[0][removed[0].index("#") :] == added[0][added[0].index("#") :]


def test_list_param_changes_only_its_items(tmp_path: Path) -> None:
    original = committed_text("params.yaml")
    rewritten = _round_trip(original, ["generator.channels=[32,64,64]"], tmp_path)
    removed, added = _changed_lines(original, rewritten)
    # Only the item lines change (difflib may pair them differently): [16, 32, 32] -> [32, 64, 64].
    assert len(removed) == len(added) <= 3 and all(line.startswith("  - ") for line in removed + added), (
        removed,
        added,
    )
    assert len(rewritten.splitlines()) == len(original.splitlines())
    assert yaml.safe_load(rewritten)["generator"]["channels"] == [32, 64, 64]


def test_generations_rewrite_keeps_the_layout(tmp_path: Path) -> None:
    original = committed_text("params.yaml")
    count = len(yaml.safe_load(original)["generations"])
    assert rewrite_generations(original, count) == original
    five = rewrite_generations(original, 5)
    assert _round_trip(five, ["synthetic_ratio=0.4"], tmp_path) == five  # still DVC's fixed point
