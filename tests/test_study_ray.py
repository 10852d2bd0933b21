"""The Ray executor on a local Ray instance (2 CPUs, loopback only) with a fake `dvc`: a cell whose worker
is killed mid-run is tried again and the study completes; a cell that always fails is reported with its
log and exit status and the command exits non-zero; Ctrl-C cancels the unfinished cells. The real
pipeline through Ray: tests/test_study_pipeline.py."""

from __future__ import annotations

import copy
import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from biasloop.study.cell import CellJob, stop_leftover
from biasloop.study.config import load_study_config
from biasloop.study.experiments import pull_experiments
from biasloop.study.ray_executor import cell_jobs, run_jobs, start_ray
from tests.test_study import BASE_PARAMS

pytestmark = pytest.mark.slow
needs_ray = pytest.mark.skipif(importlib.util.find_spec("ray") is None, reason="ray is not installed (make venv)")

GIT = ["git", "-c", "user.email=t@t", "-c", "user.name=t"]

# A stand-in for dvc on the nodes: `exp run` does what BEHAVIOUR says for the cell, `exp push` records the
# cell as pushed beside the bare Git remote, `exp list` lists what was pushed, `pull` does nothing.
FAKE_DVC = r"""#!{python}
import json, os, signal, sys, time
from pathlib import Path

STATE = Path({state!r})
args = sys.argv[1:]
pushed = STATE / "pushed.txt"
if args[:2] == ["exp", "list"]:
    print(pushed.read_text() if pushed.exists() else "", end="")
elif args[:2] == ["exp", "run"]:
    name = args[args.index("--name") + 1]
    behaviour = json.loads((STATE / "behaviour.json").read_text()).get(name, "ok")
    with open(STATE / "runs.txt", "a") as runs:
        runs.write(f"{{name}} {{' '.join(args)}}\n")
    print(f"running {{name}} in {{os.getcwd()}}", flush=True)
    if behaviour == "kill-once" and not (STATE / f"{{name}}.killed").exists():
        (STATE / f"{{name}}.killed").write_text(str(os.getpid()))
        os.kill(os.getppid(), signal.SIGKILL)  # the Ray worker running the cell dies; this process lingers
        time.sleep(120)
    if behaviour == "fail":
        print("error: the stage failed", flush=True)
        sys.exit(3)
    if behaviour == "sleep":
        (STATE / f"{{name}}.sleeping").write_text(str(os.getpid()))
        time.sleep(120)
elif args[:2] == ["exp", "push"]:
    with open(pushed, "a") as out:
        out.write(args[-1] + "\n")
"""

STUDY = {
    "generations": 2,
    "axes": {"synthetic_ratio": [0.0, 0.8]},
    "seeds": [0],
    "metrics": ["gap"],
}


def _project(tmp_path: Path, behaviour: dict[str, str], retries: int = 2) -> tuple[Path, Path, Path]:
    """A committed project with a 2-cell study, pushed to a bare Git remote; the fake dvc and its state."""
    state = tmp_path / "state"
    state.mkdir()
    (state / "behaviour.json").write_text(json.dumps(behaviour))
    fake = tmp_path / "bin" / "dvc"
    fake.parent.mkdir()
    fake.write_text(FAKE_DVC.format(python=sys.executable, state=str(state)))
    fake.chmod(0o755)
    repo, bare = tmp_path / "repo", tmp_path / "remote.git"
    repo.mkdir()
    params = copy.deepcopy(BASE_PARAMS)
    params["study"] = {"default": "t", "jobs": 2, "ray": {"retries": retries, "scratch": str(tmp_path / "scratch")}}
    params["studies"] = {"t": STUDY}
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    for command in (["git", "init", "-q"], [*GIT, "add", "-A"], [*GIT, "commit", "-qm", "study"]):
        subprocess.run(command, cwd=repo, check=True)
    subprocess.run(["git", "clone", "-q", "--bare", str(repo), str(bare)], check=True)
    subprocess.run(["git", "remote", "add", "origin", str(bare)], cwd=repo, check=True)
    subprocess.run(["git", "fetch", "-q", "origin"], cwd=repo, check=True)
    return repo, fake, state


@pytest.fixture(scope="module")
def local_ray():
    """One local Ray instance for the in-process tests: 2 CPUs (study.jobs 2 x 1 CPU), loopback only."""
    pytest.importorskip("ray")
    config = load_study_config({"study": {"default": "t", "jobs": 2}, "studies": {"t": STUDY}})
    lines: list[str] = []
    ray = start_ray(config, None, lines.append)
    yield ray
    ray.shutdown()


def test_local_ray_is_on_loopback_only(local_ray) -> None:
    assert local_ray.cluster_resources()["CPU"] == 2
    assert {node["NodeManagerAddress"] for node in local_ray.nodes()} == {"127.0.0.1"}
    listening = subprocess.run(["ss", "-ltnH"], capture_output=True, text=True)
    if listening.returncode == 0:  # every Ray server of this session listens on 127.0.0.1 only
        pids = {str(os.getpid()), *(_children(os.getpid()))}
        owned = subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True).stdout.splitlines()
        ours = [line for line in owned if any(f"pid={pid}," in line for pid in pids)]
        hosts = {line.split()[3].rsplit(":", 1)[0].strip("[]") for line in ours}
        assert ours and hosts <= {"127.0.0.1", "::ffff:127.0.0.1"}, ours


def _children(pid: int) -> set[str]:
    """Every descendant process of ``pid`` (Ray's servers and workers)."""
    found, todo = set(), [str(pid)]
    while todo:
        parent = todo.pop()
        kids = subprocess.run(["pgrep", "-P", parent], capture_output=True, text=True).stdout.split()
        found.update(kids)
        todo += kids
    return found


def test_a_killed_cell_is_tried_again_and_the_study_completes(local_ray, tmp_path: Path) -> None:
    repo, fake, state = _project(tmp_path, {"study-t-r0.8-s0": "kill-once"})
    config = load_study_config(str(repo / "params.yaml"))
    jobs = cell_jobs(config, repo / "params.yaml", repo=repo, dvc=str(fake), echo=lambda line: None)
    assert [job.name for job in jobs] == ["study-t-r0-s0", "study-t-r0.8-s0"]
    assert jobs[1].overrides[:3] == ("synthetic_ratio=0.8", "base.seed=0", "world.seed=0")
    lines: list[str] = []
    failed = run_jobs(local_ray, jobs, config, lines.append)
    assert failed == [], failed
    assert sorted((state / "pushed.txt").read_text().split()) == ["study-t-r0-s0", "study-t-r0.8-s0"]
    finished = [line for line in lines if line.startswith("[")]
    assert len(finished) == 2 and all(": success after " in line for line in finished), lines
    assert any("study-t-r0.8-s0: success" in line and "(attempt 2)" in line for line in finished), lines
    # The first attempt's dvc, left running when its worker was killed, was stopped by the second attempt.
    lingering = int((state / "study-t-r0.8-s0.killed").read_text())
    assert not Path(f"/proc/{lingering}").exists() or "Z" in Path(f"/proc/{lingering}/stat").read_text().split()[2]
    runs = (state / "runs.txt").read_text().splitlines()
    assert sum(line.startswith("study-t-r0.8-s0 ") for line in runs) == 2
    # The clone ran the baseline commit; once pushed, only the logs stay in the cell's folder.
    folder = jobs[1].folder()
    assert folder.parent == tmp_path / "scratch" / "biasloop-study-t" and not (folder / "repo").exists()
    assert len(list(folder.glob("attempt-*.log"))) == 2
    # Run again: the remote has both cells, so nothing is submitted.
    again: list[str] = []
    assert cell_jobs(config, repo / "params.yaml", repo=repo, dvc=str(fake), echo=again.append) == []
    assert all("not run again" in line for line in again) and len(again) == 2


def _cli(repo: Path, fake: Path, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "PATH": f"{fake.parent}:{Path(sys.executable).parent}:{os.environ['PATH']}"}
    env["RAY_USAGE_STATS_ENABLED"] = "0"
    return subprocess.Popen(
        [sys.executable, "-m", "biasloop.cli", "study", "run", "--executor", "ray", *extra],
        cwd=repo,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@needs_ray
def test_a_cell_that_always_fails_is_reported_with_its_log_and_exit_status(tmp_path: Path) -> None:
    repo, fake, state = _project(tmp_path, {"study-t-r0-s0": "fail"}, retries=1)
    process = _cli(repo, fake, "--jobs", "2")
    stdout, stderr = process.communicate(timeout=300)
    assert process.returncode == 1, stdout + stderr
    assert "study-t-r0.8-s0: success" in stdout, stdout
    assert "study-t-r0-s0: failed after" in stdout and "run exited with 3" in stdout, stdout
    assert "error: 1 of 2 experiments failed: study-t-r0-s0" in stderr, stderr
    runs = (state / "runs.txt").read_text().splitlines()
    assert sum(line.startswith("study-t-r0-s0 ") for line in runs) == 2  # retries: 1 -> two attempts
    log = next(line.split("log: ", 1)[1] for line in stdout.splitlines() if "study-t-r0-s0: failed" in line)
    path = Path(log.split(":", 1)[1])
    assert path.is_file() and "error: the stage failed" in path.read_text(), log
    assert (state / "pushed.txt").read_text().split() == ["study-t-r0.8-s0"]


@needs_ray
def test_ctrl_c_cancels_the_unfinished_cells(tmp_path: Path) -> None:
    repo, fake, state = _project(tmp_path, {"study-t-r0-s0": "sleep", "study-t-r0.8-s0": "sleep"})
    process = _cli(repo, fake)
    sleeping = [state / "study-t-r0-s0.sleeping", state / "study-t-r0.8-s0.sleeping"]
    deadline = time.monotonic() + 240
    while not all(p.exists() for p in sleeping) and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.5)
    assert all(p.exists() for p in sleeping), process.communicate(timeout=60)
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stdout + stderr
    assert "cancelled 2 unfinished cell(s)" in stdout, stdout + stderr
    for marker in sleeping:  # each cell stopped its dvc
        pid = int(marker.read_text())
        assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().split()[2]
    assert not (state / "pushed.txt").exists()


def test_stop_leftover_leaves_an_unrelated_process_group_alone(tmp_path: Path) -> None:
    folder = tmp_path / "cell"
    folder.mkdir()
    other = subprocess.Popen(["sleep", "30"], start_new_session=True, cwd=tmp_path)
    try:
        (folder / "running.pgid").write_text(str(other.pid))
        assert stop_leftover(folder) is False and other.poll() is None
        inside = subprocess.Popen(["sleep", "30"], start_new_session=True, cwd=folder)
        (folder / "running.pgid").write_text(str(inside.pid))
        assert stop_leftover(folder) is True
        assert inside.wait(timeout=20) == -signal.SIGTERM
    finally:
        other.kill()
    job = CellJob("t", "study-t-r0-s0", ("synthetic_ratio=0",), "/remote.git", "abc", dvc_remote="store")
    steps = {step: command for step, command, _ in job.steps(tmp_path / "repo")}
    assert steps["pull"] == ["dvc", "pull", "--allow-missing", "--run-cache", "-r", "store"]
    assert steps["run"] == ["dvc", "exp", "run", "-S", "synthetic_ratio=0", "--name", "study-t-r0-s0"]
    assert steps["push"] == ["dvc", "exp", "push", "--run-cache", "-r", "store", "origin", "study-t-r0-s0"]


def test_collect_pulls_what_the_remote_has_once(tmp_path: Path) -> None:
    """`dvc exp pull` through pull_experiments, with real DVC: a fresh clone fetches the two pushed
    experiments; again, nothing; a name the remote lacks is named, and nothing fails."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", "DVC_NO_ANALYTICS": "1"}
    work, bare = tmp_path / "work", tmp_path / "remote.git"
    work.mkdir()

    def sh(*command: str, cwd: Path = work) -> str:
        return subprocess.run(command, cwd=cwd, env=env, check=True, capture_output=True, text=True).stdout

    (work / "params.yaml").write_text("p: 1\n")
    sh("git", "init", "-q")
    sh("dvc", "init", "-q")
    sh("dvc", "remote", "add", "-q", "-d", "store", str(tmp_path / "store"))
    script = "import json, yaml; json.dump({'v': yaml.safe_load(open('params.yaml'))['p'] * 2}, open('m.json', 'w'))"
    sh("dvc", "stage", "add", "-q", "-n", "s", "-p", "p", "-M", "m.json", f'python -c "{script}"')
    sh("dvc", "repro", "-q")
    sh(*GIT, "add", "-A")
    sh(*GIT, "commit", "-qm", "base")
    sh("git", "clone", "-q", "--bare", str(work), str(bare), cwd=tmp_path)
    for value, name in ((2, "study-t-a"), (3, "study-t-b")):
        sh("dvc", "exp", "run", "-q", "-S", f"p={value}", "--name", name)
        sh("dvc", "exp", "push", "-q", str(bare), name)
    laptop = tmp_path / "laptop"
    sh("git", "clone", "-q", str(bare), str(laptop), cwd=tmp_path)
    names = ["study-t-a", "study-t-b", "study-t-c"]
    assert pull_experiments(str(bare), names, cwd=str(laptop)) == (["study-t-a", "study-t-b"], ["study-t-c"])
    shown = json.loads(sh("dvc", "exp", "show", "--json", cwd=laptop))
    metrics = {e["name"]: e["revs"][0]["data"]["metrics"]["m.json"]["data"] for e in shown[1]["experiments"]}
    assert metrics == {"study-t-a": {"v": 4}, "study-t-b": {"v": 6}}
    present = set(metrics)
    assert pull_experiments(str(bare), names, present=present, cwd=str(laptop)) == ([], ["study-t-c"])
