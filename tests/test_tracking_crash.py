"""MLflow runs of killed stages do not stay RUNNING; the experiment opens on its runs in `mlflow ui`."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from biasloop.core.config import TrackingConfig
from biasloop.core.tracking import (
    EXPERIMENT_KIND_TAG,
    MODEL_TRAINING_KIND,
    process_alive,
    process_identity,
    stage_run,
)
from tests.conftest import REPO_ROOT

CHILD = """
import sys, time
from pathlib import Path
from biasloop.core.config import TrackingConfig
from biasloop.core.tracking import stage_run
with stage_run("generate", TrackingConfig(uri=sys.argv[1]), generation=1) as run:
    Path(sys.argv[2]).write_text(run.run_id)
    time.sleep(120)
"""


def _client(uri: str):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def _start_child(tmp_path: Path, uri: str) -> tuple[subprocess.Popen, str]:
    ready = tmp_path / "run_id.txt"
    child = subprocess.Popen([sys.executable, "-c", CHILD, uri, str(ready)], cwd=REPO_ROOT)
    deadline = time.monotonic() + 120
    while not ready.exists() or not ready.read_text():
        assert child.poll() is None, "the child stage exited before opening its run"
        assert time.monotonic() < deadline, "the child stage did not open its run in 120 s"
        time.sleep(0.2)
    return child, ready.read_text()


def test_process_identity_names_a_live_process() -> None:
    assert process_alive(process_identity())
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    identity = process_identity(child.pid)
    child.wait()
    assert not process_alive(identity)
    assert not process_alive(f"{os.getpid()}:1")  # same pid, another start time: a recycled pid


@pytest.mark.slow
def test_sigkilled_stage_run_is_marked_killed_at_the_next_start(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    child, killed_run = _start_child(tmp_path, uri)
    (tmp_path / "live").mkdir()
    live_child, live_run = _start_child(tmp_path / "live", uri)
    try:
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
        client = _client(uri)
        assert client.get_run(killed_run).info.status == "RUNNING"  # what SIGKILL leaves behind
        with stage_run("generate", TrackingConfig(uri=uri), generation=1):
            pass
        assert client.get_run(killed_run).info.status == "KILLED"
        assert "ended without closing" in client.get_run(killed_run).data.tags["biasloop.closed_because"]
        # A parallel stage that is still running (a queued experiment beside this one) is left alone.
        assert client.get_run(live_run).info.status == "RUNNING"
    finally:
        live_child.kill()
        live_child.wait()


@pytest.mark.slow
def test_sigterm_closes_the_run_killed(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    child, run_id = _start_child(tmp_path, uri)
    child.send_signal(signal.SIGTERM)
    assert child.wait(timeout=60) == 128 + signal.SIGTERM
    assert _client(uri).get_run(run_id).info.status == "KILLED"


def test_experiment_is_model_training_kind(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = _client(uri)
    client.create_experiment("biasloop")  # as an older biasloop made it: no kind tag
    with stage_run("corpus", TrackingConfig(uri=uri)):
        pass
    assert client.get_experiment_by_name("biasloop").tags[EXPERIMENT_KIND_TAG] == MODEL_TRAINING_KIND
    with stage_run("corpus", TrackingConfig(uri=uri, experiment="fresh")):
        pass
    assert client.get_experiment_by_name("fresh").tags[EXPERIMENT_KIND_TAG] == MODEL_TRAINING_KIND
