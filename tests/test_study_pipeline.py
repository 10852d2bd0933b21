"""A 2-cell study on a tiny world: `biasloop study run` queues real DVC experiments, `collect` reads them;
the same grid through the Ray executor (a local Ray instance, a bare Git remote and a directory DVC
remote) collects to the same cells in a fresh clone."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest
import yaml

from tests.test_pipeline import _run
from tests.tiny_repo import GIT, TinyPipeline, copy_repo

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def queue_study(tiny_pipeline: TinyPipeline, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A copy of the tiny-world run with a committed 2-cell study (a directory DVC remote as its default
    remote, for the Ray executor), run through the DVC queue and collected: (repo, `study run`'s output)."""
    root = tmp_path_factory.mktemp("study")
    # A copy of the session's tiny-world run: the cells find every stage that does not depend on the ratio
    # (the corpus, the instrument, generation 0) in DVC's run cache.
    repo = copy_repo(tiny_pipeline.repo, root / "repo")
    params = yaml.safe_load((repo / "params.yaml").read_text())
    # One generation in params.yaml, two in the study: the cells get the generation lists as -S overrides.
    params["generations"] = [0]
    params["rounds"] = {}
    params["datasets"] = {"0": params["datasets"]["0"]}
    params["study"] = {**params["study"], "default": "tiny", "jobs": 1, "poll_seconds": 10}
    params["study"]["ray"] = {**params["study"].get("ray", {}), "scratch": str(root / "scratch")}
    params["studies"] = {
        "tiny": {
            "generations": 2,
            "axes": {"synthetic_ratio": [0.0, 0.8]},
            "seeds": [0],
            "metrics": ["gap", "shift", "recall_at_10"],
            "secondary": ["slopes"],
            "endpoints": {
                "gap_vs_ratio": {"metric": "gap", "generation": 1, "slope_vs": "synthetic_ratio", "margin": 0.05}
            },
        }
    }
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    _run(["dvc", "remote", "add", "-q", "-d", "-f", "store", str(root / "dvc-store")], repo)
    _run(["dvc", "commit", "-f", "-q", "data.dvc"], repo)  # queued experiments check data/ out of the cache
    _run([*GIT, "add", "-A"], repo)
    _run([*GIT, "commit", "-qm", "tiny study"], repo)

    # Two tiny cells one after the other: more than 25 min on a 2-core machine at load average 12.
    # --timeout: a cell that never finishes fails the test with its log tail (the pytest limit would not say why).
    result = _run([sys.executable, "-m", "biasloop.cli", "study", "run", "--timeout", "40"], repo, timeout=3000)
    return repo, result.stdout


def test_two_cell_study_runs_as_dvc_experiments_and_collects(queue_study: tuple[Path, str]) -> None:
    repo, stdout = queue_study
    assert "[2/2]" in stdout and "all 2 experiments succeeded" in stdout, stdout
    assert "generations=[0,1]" in stdout and "+rounds.1=" in stdout

    # The cells reused generation 0's training (the baseline's lock, or DVC's run cache) and ran generation 1.
    for name in ("study-tiny-r0-s0", "study-tiny-r0.8-s0"):
        log = _run(["dvc", "queue", "logs", name], repo).stdout
        assert re.search(r"Stage 'pretrain' (is cached - skipping run|didn't change, skipping)", log), log[-3000:]
        assert "Running stage 'mix@1'" in log and "Running stage 'pretrain'" not in log, log[-3000:]

    # Running it again queues nothing: both cells already succeeded.
    again = _run([sys.executable, "-m", "biasloop.cli", "study", "run", "--no-wait"], repo)
    assert "not queued again" in again.stdout and "dvc exp run --queue" not in again.stdout

    result = _run([sys.executable, "-m", "biasloop.cli", "study", "collect"], repo)
    assert "primary gap_vs_ratio" in result.stdout, result.stdout
    study = json.loads((repo / "metrics/studies/tiny.json").read_text())
    assert study["n_cells_used"] == 2 and not study["failed"] and not study["missing"] and not study["inconsistent"]
    # A few training steps make noise images the instrument may abstain on: then no gap at all, and
    # collect says so in its notes instead of reading anything else.
    gap_path = study["metric_paths"]["gap"]
    assert gap_path in ("gen{gen}.gap", "gen{gen}.excess_abs") or any(
        note.startswith("gap: none of") for note in study["notes"]
    ), study["notes"]
    assert {c["name"] for c in study["cells"]} == {"study-tiny-r0-s0", "study-tiny-r0.8-s0"}
    assert all(c["generations"] == [0, 1] and len(c["rev"]) == 40 for c in study["cells"])
    assert study["common_params"]["generations"] == [0, 1]
    assert [(e["coords"]["synthetic_ratio"], e["generation"]) for e in study["summary"]] == [
        (0.0, 0),
        (0.0, 1),
        (0.8, 0),
        (0.8, 1),
    ]
    recall = [e["metrics"]["recall_at_10"] for e in study["summary"]]
    assert all(r["n"] == 1 and r["sd"] is None for r in recall)
    # One seed: the primary slope has a value but no interval, and no verdict beyond "not resolved".
    endpoint = study["endpoints"]["gap_vs_ratio"]
    assert endpoint["n"] == (1 if gap_path else 0) and endpoint["ci"] is None and endpoint["verdict"] == "not resolved"
    # Common random numbers: generation 0 does not depend on the ratio, so both cells share it exactly.
    gen0 = [e["metrics"]["recall_at_10"]["mean"] for e in study["summary"] if e["generation"] == 0]
    assert gen0[0] == gen0[1]
    for name in ("tiny_summary.csv", "tiny_runs.csv", "tiny_intervals.csv", "tiny_intervals.png"):
        assert (repo / "plots/studies" / name).stat().st_size > 0


def test_ray_cells_pushed_from_clones_collect_in_a_fresh_clone_as_the_queue_cells(
    queue_study: tuple[Path, str], tmp_path: Path
) -> None:
    pytest.importorskip("ray")
    repo, _ = queue_study
    _run([sys.executable, "-m", "biasloop.cli", "study", "collect"], repo)
    queue = json.loads((repo / "metrics/studies/tiny.json").read_text())
    # The project as a cluster sees it: the baseline commit on a bare Git remote, its data and outputs on
    # the directory DVC remote the commit names (.dvc/config).
    _run(["dvc", "push", "-q"], repo)
    bare = tmp_path / "project.git"
    _run(["git", "clone", "-q", "--bare", str(repo), str(bare)], tmp_path)
    driver, laptop = tmp_path / "driver", tmp_path / "laptop"
    _run(["git", "clone", "-q", str(bare), str(driver)], tmp_path)

    # A local Ray instance with 2 CPUs (loopback only): both cells at once, each in its own clone.
    command = [sys.executable, "-m", "biasloop.cli", "study", "run", "--executor", "ray", "--jobs", "2"]
    result = _run(command, driver, timeout=3000)
    assert "[2/2]" in result.stdout and "all 2 experiments succeeded" in result.stdout, result.stdout
    assert "submitted 2 cell(s) to Ray" in result.stdout
    listed = _run(["dvc", "exp", "list", str(bare), "--name-only"], driver).stdout.split()
    assert sorted(listed) == ["study-tiny-r0-s0", "study-tiny-r0.8-s0"]
    # Each cell pulled the baseline's outputs, so it reused generation 0 and ran generation 1.
    scratch = yaml.safe_load((repo / "params.yaml").read_text())["study"]["ray"]["scratch"]
    for name in listed:
        log = "".join(p.read_text() for p in (Path(scratch) / "biasloop-study-tiny" / name).glob("attempt-*.log"))
        assert "Running stage 'mix@1'" in log and "Running stage 'pretrain'" not in log, log[-3000:]
    # Again: both cells are on the remote, nothing runs.
    again = _run(command, driver)
    assert again.stdout.count("not run again") == 2 and "submitted" not in again.stdout, again.stdout

    # A fresh clone collects: it pulls both experiments, then aggregates them; a second collect pulls none.
    _run(["git", "clone", "-q", str(bare), str(laptop)], tmp_path)
    collect = [sys.executable, "-m", "biasloop.cli", "study", "collect", "--pull"]
    result = _run(collect, laptop)
    assert "pulled 2 experiment(s)" in result.stdout, result.stdout
    assert "pulled 0 experiment(s)" in _run(collect, laptop).stdout
    ray = json.loads((laptop / "metrics/studies/tiny.json").read_text())
    assert ray["n_cells_used"] == 2 and not ray["failed"] and not ray["missing"] and not ray["inconsistent"]
    assert {c["baseline_rev"] for c in ray["cells"]} == {c["baseline_rev"] for c in queue["cells"]}
    assert {c["rev"] for c in ray["cells"]}.isdisjoint(c["rev"] for c in queue["cells"])  # other commits
    for key in ("metric_paths", "common_params", "summary", "runs", "endpoints", "intervals"):
        assert ray[key] == queue[key], key
