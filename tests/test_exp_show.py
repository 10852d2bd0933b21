"""`dvc exp show`'s first screen: the headline metrics and the varied param fit in 120 columns.

The invocation is read from docs/operations.md ("Comparing runs"), so the page and the test cannot drift
apart. It runs in a tiny git + DVC repository in tmp holding this checkout's `metrics:` declarations,
params.yaml and metrics files, with one experiment saved beside the baseline (`dvc exp save`, no
pipeline run) under a name as long as the ones DVC makes up (adjective-noun, 10 characters).
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from rich.cells import cell_len

from stages.summarize import HEADLINE_KEYS, headline_metrics
from tests.conftest import REPO_ROOT, committed_params

SCREEN_COLUMNS = 120
EXPERIMENT_NAME = "fishy-bung"  # the length of DVC's generated names


def documented_invocation() -> list[str]:
    """The `dvc exp show` command line of docs/operations.md's "Comparing runs" section."""
    text = (REPO_ROOT / "docs" / "operations.md").read_text()
    section = text.split("## Comparing runs", 1)[1]
    line = next(line for line in section.splitlines() if line.startswith("dvc exp show"))
    return shlex.split(line)


def test_headline_is_the_last_generation_in_percentage_points() -> None:
    rows = [{"generation": 1, "shift": 0.2, "data": 0.1}, {"generation": 0, "shift": 0.1}]
    rows[0].update(shift_lo=0.181234, shift_hi=0.22, gap=0.19, generator=0.08, instrument=None)
    headline = headline_metrics(rows)
    assert list(headline) == list(HEADLINE_KEYS)
    assert headline == {
        "shift": 20.0,
        "shift_lo": 18.1,
        "shift_hi": 22.0,
        "gap": 19.0,
        "data_term": 10.0,
        "generator": 8.0,
        "instrument": None,
    }
    assert len(HEADLINE_KEYS) <= 12


def test_headline_is_declared_first_and_written_by_summarize() -> None:
    pipeline = yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text())
    assert pipeline["metrics"][0] == "metrics/headline.json"
    summarize = pipeline["stages"]["summarize"]
    assert "--headline metrics/headline.json" in " ".join(summarize["cmd"].split())
    assert any("metrics/headline.json" in out for out in summarize["outs"] if isinstance(out, dict))
    headline = json.loads((REPO_ROOT / "metrics" / "headline.json").read_text())
    attributes = [name for name in committed_params()["attributes"] if name != "gender"]  # the K-class ones
    assert list(headline) == [*HEADLINE_KEYS, *(f"{name}_{key}" for name in attributes for key in ("shift", "gap"))]


def test_no_headline_key_is_also_a_param_or_a_dependency_column() -> None:
    """`dvc exp show` names a column by the key alone; a dependency path or param of the same name takes
    the column (the data term is ``data_term``, since ``data`` is the data/ dependency)."""
    from biasloop.core.tracking import flatten

    pipeline = yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text())
    paths = set()
    for stage in pipeline["stages"].values():
        body = stage.get("do", stage)
        for item in [*(body.get("deps") or []), *(body.get("outs") or [])]:
            paths.update(item if isinstance(item, dict) else [item])
    assert not set(HEADLINE_KEYS) & (paths | set(flatten(committed_params())))


def _dvc(args: list[str], repo: Path, **extra: str) -> str:
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
        "DVC_NO_ANALYTICS": "1",
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@t",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@t",
        **extra,
    }
    env.pop("DVC_ROOT", None)
    result = subprocess.run(args, cwd=repo, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"{' '.join(args)}:\n{result.stdout}\n{result.stderr}"
    return result.stdout


def test_documented_exp_show_puts_the_headline_and_synthetic_ratio_on_the_first_screen(tmp_path: Path) -> None:
    if shutil.which("git") is None:
        pytest.skip("git is needed for dvc")
    repo = tmp_path / "repo"
    (repo / "metrics").mkdir(parents=True)
    declared = yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text())["metrics"]
    # a stage with the checkout's `data` dependency: its column shares a name space with the metrics
    stage = {"use_data": {"cmd": "echo ok", "deps": ["data"]}}
    (repo / "dvc.yaml").write_text(yaml.safe_dump({"metrics": declared, "stages": stage}))
    (repo / "data").mkdir()
    (repo / "data" / "glyphs.txt").write_text("0\n")
    for name in declared:
        shutil.copy(REPO_ROOT / name, repo / name)
    params = committed_params()
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    _dvc(["git", "init", "-q"], repo)
    _dvc(["dvc", "init", "-q"], repo)
    _dvc(["dvc", "repro", "-q"], repo)
    _dvc(["git", "add", "-A"], repo)
    _dvc(["git", "commit", "-qm", "baseline"], repo)
    varied = 0.8 if params["synthetic_ratio"] != 0.8 else 0.2
    params["synthetic_ratio"] = varied
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    _dvc(["dvc", "exp", "save", "-q", "-n", EXPERIMENT_NAME], repo)

    command = documented_invocation()
    assert command[:3] == ["dvc", "exp", "show"]
    # wider than the screen, so nothing is folded into "…": a column counts only if it starts before 120
    table = _dvc([*command, "--no-pager"], repo, COLUMNS="1000")
    lines = [line.rstrip() for line in table.splitlines() if line.strip() and not set(line.strip()) <= {"─"}]
    header = lines[0]
    print(table)
    assert cell_len(header) <= SCREEN_COLUMNS, f"the header is {cell_len(header)} columns wide:\n{header}"
    assert header.split() == ["Experiment", *HEADLINE_KEYS, "synthetic_ratio"]
    experiment_row = next(line for line in lines if EXPERIMENT_NAME in line)
    assert cell_len(experiment_row) <= SCREEN_COLUMNS
    assert experiment_row.split()[-1] == str(varied)
    headline = json.loads((repo / "metrics" / "headline.json").read_text())
    shown = experiment_row.split()[-1 - len(HEADLINE_KEYS) : -1]
    for key, cell in zip(HEADLINE_KEYS, shown):
        assert cell == "-" if headline[key] is None else float(cell) == pytest.approx(headline[key]), (key, cell)
