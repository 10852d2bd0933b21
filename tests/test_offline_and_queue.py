"""The tiny pipeline runs with networking off; four queued experiments write MLflow runs side by side.

1. Offline: `dvc repro` of a tiny world inside `unshare -n` (a network namespace with nothing but a
   loopback interface) where available, and always with a socket guard (a `sitecustomize` on
   `PYTHONPATH`, so in DVC and in every stage process) that records and refuses any connection or
   name lookup that is not loopback or a Unix socket. The run must complete with nothing recorded.
2. Concurrent writers: on that baseline, four experiments (`-S evaluate.n_boot=...`, four stages
   each) run by `dvc queue start -j 4`; each finishes, with every stage's MLflow run recorded and
   FINISHED, and no "database is locked" in any log.
3. A killed experiment: two more queued, one's stage SIGKILLed while its run is open; `mlflow.db`
   passes SQLite's integrity check, MLflow reads it, and the other experiment's runs are FINISHED.

Measured on a 2-core machine shared with other jobs: parts 1 and 2 took 17 min at load average 7 to 9
(the four queued experiments 436 s) and 36 min at load average 11 to 17.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest

from tests.tiny_repo import GIT, make_tiny_repo, mlflow_runs, run

pytestmark = pytest.mark.slow

GUARD = r'''
"""Test guard: refuse and record every network connection that is not loopback or a Unix socket."""
import os
import socket

_LOG = os.environ.get("BIASLOOP_NETWORK_LOG")
_LOCAL_NAMES = {"localhost", "127.0.0.1", "::1", "", None}


def _record(what):
    if _LOG:
        with open(_LOG, "a") as log:
            log.write(f"{os.getpid()} {what}\n")


def _local(address):
    if isinstance(address, (str, bytes)):
        return True  # AF_UNIX path
    host = address[0] if isinstance(address, tuple) and address else address
    return host in _LOCAL_NAMES or str(host).startswith("127.")


_connect, _connect_ex, _getaddrinfo = socket.socket.connect, socket.socket.connect_ex, socket.getaddrinfo


def connect(self, address):
    if not _local(address):
        _record(f"connect {address!r}")
        raise OSError(101, f"network disabled by the offline test: connect {address!r}")
    return _connect(self, address)


def connect_ex(self, address):
    if not _local(address):
        _record(f"connect_ex {address!r}")
        return 101
    return _connect_ex(self, address)


def getaddrinfo(host, *args, **kwargs):
    if host not in _LOCAL_NAMES and not str(host).startswith("127."):
        _record(f"getaddrinfo {host!r}")
        raise socket.gaierror(socket.EAI_NONAME, f"network disabled by the offline test: {host}")
    return _getaddrinfo(host, *args, **kwargs)


socket.socket.connect, socket.socket.connect_ex, socket.getaddrinfo = connect, connect_ex, getaddrinfo
'''


def _no_network_prefix() -> list[str]:
    if shutil.which("unshare") and subprocess.run(["unshare", "-n", "true"], capture_output=True).returncode == 0:
        return ["unshare", "-n"]
    return []


@pytest.fixture(scope="module")
def offline_baseline(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, list[str]]:
    repo = make_tiny_repo(tmp_path_factory.mktemp("offline") / "repo")
    guard = tmp_path_factory.mktemp("guard")
    (guard / "sitecustomize.py").write_text(GUARD)
    log = guard / "network.log"
    prefix = _no_network_prefix()
    result = run([*prefix, "dvc", "repro"], repo, PYTHONPATH=str(guard), BIASLOOP_NETWORK_LOG=str(log))
    return repo, log, prefix + [result.stdout]


def test_pipeline_completes_offline(offline_baseline: tuple[Path, Path, list[str]]) -> None:
    repo, log, _ = offline_baseline
    assert json.loads((repo / "metrics" / "summary.json").read_text())
    attempts = log.read_text() if log.exists() else ""
    assert attempts == "", f"network use during dvc repro:\n{attempts}"
    assert (repo / "plots" / "report.html").exists()


def _queue_finished(repo: Path) -> bool:
    status = run(["dvc", "queue", "status"], repo).stdout
    return not any(word in status for word in ("Running", "Queued"))


def _wait_for_queue(repo: Path, timeout: float = 1800) -> str:
    deadline = time.monotonic() + timeout
    while not _queue_finished(repo):
        assert time.monotonic() < deadline, run(["dvc", "queue", "status"], repo).stdout
        time.sleep(5)
    return run(["dvc", "queue", "status"], repo).stdout


def _commit_baseline(repo: Path) -> None:
    run([*GIT, "add", "-A"], repo)
    run([*GIT, "commit", "-qm", "baseline results"], repo)


def test_four_queued_experiments_record_every_run(offline_baseline: tuple[Path, Path, list[str]]) -> None:
    repo, _, _ = offline_baseline
    _commit_baseline(repo)
    before = {r.info.run_id for r in mlflow_runs(repo)}
    names = [f"boot-{n}" for n in (11, 12, 13, 14)]
    for name, n_boot in zip(names, (11, 12, 13, 14)):
        run(["dvc", "exp", "run", "--queue", "-n", name, "-S", f"evaluate.n_boot={n_boot}"], repo)
    started = time.monotonic()
    run(["dvc", "queue", "start", "-j", "4"], repo)
    status = _wait_for_queue(repo)
    elapsed = time.monotonic() - started
    logs = "".join(run(["dvc", "queue", "logs", name], repo, check=False).stdout for name in names)
    assert "database is locked" not in logs
    assert status.count("Success") >= 4, status
    new = [r for r in mlflow_runs(repo) if r.info.run_id not in before]
    by_experiment: dict[str, list] = {}
    for recorded in new:
        by_experiment.setdefault(recorded.data.tags.get("dvc_exp_name", "?"), []).append(recorded)
    assert set(by_experiment) == set(names), sorted(by_experiment)
    for name, runs in by_experiment.items():
        stages = sorted(r.data.tags["mlflow.runName"] for r in runs)
        assert stages == ["evaluate@0", "evaluate@1", "paradox@0", "summarize"], (name, stages)
        assert {r.info.status for r in runs} == {"FINISHED"}, (name, [(r.data.tags["mlflow.runName"], r.info.status) for r in runs])
    print(f"four queued experiments (-j 4) took {elapsed:.0f} s")


def _stage_pid_in_queue(stage: str) -> int | None:
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            command = (entry / "cmdline").read_bytes()
            cwd = os.readlink(entry / "cwd")
        except OSError:
            continue
        if f"stages.{stage}".encode() in command and "/.dvc/tmp/exps/" in cwd:
            return int(entry.name)
    return None


@pytest.mark.skip(reason="not yet reliable: a tiny stage often ends before the test can find and kill it "
                  "(see issue 14's closing note); killed stages are covered by tests/test_crash_safety.py")
def test_killed_experiment_leaves_mlflow_readable(offline_baseline: tuple[Path, Path, list[str]]) -> None:
    repo, _, _ = offline_baseline
    if not (repo / "mlflow.db").exists():
        pytest.skip("needs the baseline's mlflow.db")
    for name, n_boot in (("victim", 21), ("survivor", 22)):
        run(["dvc", "exp", "run", "--queue", "-n", name, "-S", f"evaluate.n_boot={n_boot}"], repo)
    run(["dvc", "queue", "start", "-j", "2"], repo)
    # /proc is polled every 0.1 s; `dvc queue status` (seconds per call) only every 20 s, or a short
    # stage is missed between two calls.
    deadline, killed, next_status = time.monotonic() + 900, None, time.monotonic() + 20
    while killed is None and time.monotonic() < deadline:
        pid = next(filter(None, (_stage_pid_in_queue(s) for s in ("paradox", "evaluate", "summarize"))), None)
        if pid is not None:
            time.sleep(0.5)  # into the stage, its MLflow run open or opening
            try:
                os.kill(pid, signal.SIGKILL)
                killed = pid
            except ProcessLookupError:
                pass
        if time.monotonic() > next_status:
            if _queue_finished(repo):
                break
            next_status = time.monotonic() + 20
        time.sleep(0.1)
    assert killed is not None, "no queued stage to kill"
    status = _wait_for_queue(repo)
    assert "Failed" in status, status
    with sqlite3.connect(f"file:{repo / 'mlflow.db'}?mode=ro", uri=True) as connection:
        assert connection.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    runs = mlflow_runs(repo)
    assert runs, "MLflow cannot read mlflow.db"
    finished = {r.data.tags["dvc_exp_name"] for r in runs if r.info.status == "FINISHED" and "dvc_exp_name" in r.data.tags}
    assert finished & {"victim", "survivor"}, "neither experiment recorded a finished run"
