"""A temporary copy of this repository with a tiny world, for tests that run DVC end to end."""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from biasloop.core.config import dataset_folder
from tests.conftest import REPO_ROOT, committed_params
from tests.test_pipeline import _merge, _tiny_overrides

GIT = ["git", "-c", "user.email=t@t", "-c", "user.name=t"]


def environment(repo: Path, **extra: str) -> dict[str, str]:
    """The environment of a user in ``repo`` with this test's Python environment activated."""
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "BIASLOOP_EMBEDDING_CACHE": str(repo / ".cache" / "embeddings"),
        **extra,
    }
    env.pop("DVC_ROOT", None)
    return env


def run(
    cmd: list[str], repo: Path, timeout: float = 1500, check: bool = True, **extra: str
) -> subprocess.CompletedProcess:
    result = subprocess.run(
        cmd, cwd=repo, env=environment(repo, **extra), capture_output=True, text=True, timeout=timeout
    )
    if check:
        assert result.returncode == 0, f"{' '.join(cmd)} failed:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    return result


def make_tiny_repo(repo: Path, generations: int = 2) -> Path:
    """Copy the checkout's files (tracked and new) to ``repo``, shrink params, materialise data/, commit."""
    if shutil.which("git") is None:
        import pytest

        pytest.skip("git is needed for dvc")
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO_ROOT,
        capture_output=True,
        check=True,
    ).stdout
    for name in filter(None, listed.decode().split("\0")):
        source = REPO_ROOT / name
        # summarize's study inputs are committed placeholders, not outputs of this pipeline
        study_input = name == "metrics/study.json" or name.startswith("metrics/studies/")
        outputs = name.startswith(("artifacts/", "metrics/", "plots/")) and not study_input
        if source.is_file() and not outputs:
            (repo / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, repo / name)
    (repo / "dvc.lock").unlink(missing_ok=True)
    params = committed_params()  # not the working copy a `dvc exp run -S` may have left changed
    _merge(params, _tiny_overrides(params))
    params["generations"] = list(range(generations))
    params["rounds"] = {
        str(n): {"gen": n, "prev": n - 1, "previous": dataset_folder(n - 1)} for n in range(1, generations)
    }
    params["datasets"] = {str(n): params["datasets"][str(n)] for n in range(generations)}
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run(["git", "init", "-q"], repo)
    run([sys.executable, "-m", "biasloop.cli", "data", "--out", "data"], repo)
    run([*GIT, "add", "-A"], repo)
    run([*GIT, "commit", "-qm", "tiny"], repo)
    return repo


def lock_outs(repo: Path, stages: set[str] | None = None) -> dict[str, str]:
    """``{out path: md5}`` of every stage in ``dvc.lock`` (only those named in ``stages`` when given)."""
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    return {
        out["path"]: out["md5"]
        for name, stage in lock["stages"].items()
        if stages is None or name in stages
        for out in stage.get("outs", [])
    }


def mlflow_runs(repo: Path) -> list:
    """Every run in ``repo``'s MLflow database, once the background logger has logged what was spooled
    (and what a dead stage left there)."""
    from mlflow.tracking import MlflowClient

    from biasloop.core.tracking import drain, spool_dir, wait_for_logger

    uri = f"sqlite:///{repo / 'mlflow.db'}"
    wait_for_logger(spool_dir(uri), timeout=300)
    drain(spool_dir(uri))
    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("biasloop")
    return client.search_runs([experiment.experiment_id], max_results=5000) if experiment else []


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


def no_network_prefix() -> list[str]:
    if (
        shutil.which("unshare")
        and subprocess.run(["unshare", "-n", "true"], capture_output=True, check=False).returncode == 0
    ):
        return ["unshare", "-n"]
    return []


@dataclasses.dataclass(frozen=True)
class TinyPipeline:
    """A tiny-world repository after one offline ``dvc repro`` (see :func:`offline_pipeline`)."""

    repo: Path
    network_log: Path  # connections the guard refused (absent or empty: none)
    prefix: list[str]  # ["unshare", "-n"] where a network namespace was available, else []
    stdout: str  # dvc repro's output


def offline_pipeline(repo: Path, guard: Path) -> TinyPipeline:
    """Make a tiny repo and run its whole pipeline once with networking off: inside ``unshare -n`` where
    available, and always under GUARD (a ``sitecustomize`` on ``PYTHONPATH``, so in DVC and every stage).
    Returns once the background MLflow logger has logged every run and left, so a copy (:func:`copy_repo`)
    gets a complete ``mlflow.db`` and an empty spool."""
    from biasloop.core.tracking import spool_dir, wait_for_logger

    make_tiny_repo(repo)
    guard.mkdir(parents=True, exist_ok=True)
    (guard / "sitecustomize.py").write_text(GUARD)
    log = guard / "network.log"
    prefix = no_network_prefix()
    result = run([*prefix, "dvc", "repro"], repo, PYTHONPATH=str(guard), BIASLOOP_NETWORK_LOG=str(log))
    assert wait_for_logger(spool_dir(f"sqlite:///{repo / 'mlflow.db'}"), timeout=300)
    return TinyPipeline(repo, log, prefix, result.stdout)


def copy_repo(source: Path, destination: Path) -> Path:
    """A copy of a tiny repo after its pipeline ran (git history, DVC cache and lock, outputs, MLflow
    database), for a test that changes it. The copy's MLflow experiment keeps the source's artifact folder."""
    shutil.copytree(source, destination, symlinks=True)
    return destination
