"""MLflow tracking: one run per stage execution with tags, off by a param, concurrent writers safe,
logged through the spool by the stage itself (background: false) or by a detached logger."""

from __future__ import annotations

import json
import multiprocessing
import os
import subprocess
import sys
from pathlib import Path

import pytest

from biasloop.core.config import TrackingConfig
from biasloop.core.tracking import drain, flatten, pending_records, spool_dir, stage_run, wait_for_logger

INLINE = {"background": False}


def test_flatten() -> None:
    assert flatten({"a": {"b": 1, "c": [1, 2]}, "d": "x", "rows": [{"x": 1}]}) == {
        "a.b": 1,
        "a.c.0": 1,
        "a.c.1": 2,
        "d": "x",
    }


def _runs(uri: str) -> list:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("biasloop")
    return client.search_runs([experiment.experiment_id]) if experiment else []


def test_run_recorded_with_tags(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DVC_EXP_NAME", "sweep-1")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    with stage_run("generate", TrackingConfig(uri=uri, **INLINE), {"generator": {"steps": 5}}, generation=2) as run:
        run.log_metrics({"loss": 0.5, "nested": {"x": 1}, "label": "text", "recall": {"recall@10": 0.25}})
        (tmp_path / "a.txt").write_text("hi")
        run.log_artifact(tmp_path / "a.txt")
    (recorded,) = _runs(uri)
    assert recorded.info.status == "FINISHED"
    assert recorded.data.tags["stage"] == "generate" and recorded.data.tags["generation"] == "2"
    assert recorded.data.tags["dvc_exp_name"] == "sweep-1"
    assert recorded.data.tags["biasloop.process"].startswith(f"{os.getpid()}:")
    assert recorded.data.params["generator.steps"] == "5"
    # "@" is not allowed in MLflow keys: renamed, not a failed batch that loses every metric
    assert recorded.data.metrics == {"loss": 0.5, "nested.x": 1.0, "recall.recall_at_10": 0.25}
    assert recorded.info.end_time >= recorded.info.start_time
    assert not pending_records(spool_dir(uri)) and not list(spool_dir(uri).glob("0*"))  # logged, then deleted


def test_changed_param_is_refused_in_the_stage(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """MLflow params are immutable: the stage is told at once, and the run keeps the first value."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    with stage_run("evaluate", TrackingConfig(uri=uri, **INLINE)) as run:
        run.log_params({"key": "a"})
        run.log_params({"key": "b"})
    assert "MLflow log_params failed" in caplog.text
    assert _runs(uri)[0].data.params == {"key": "a"}


def test_rejected_batch_is_not_retried(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A request MLflow rejects as invalid fails at once with a warning (no minute of backoff); the rest is logged."""
    monkeypatch.setenv("BIASLOOP_TRACKING_LINGER", "0.5")  # the detached logger leaves at once, not after 20 s
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    with stage_run("evaluate", TrackingConfig(uri=uri, background=True)) as run:
        run.log_params({"key": "a"})
        run.log_metrics({"kept": 1.0})
        record = json.loads((run.folder / "record.json").read_text())
        record["params"]["bad key {"] = "x"  # a key MLflow rejects (INVALID_PARAMETER_VALUE)
        run.record["params"] = record["params"]
    assert wait_for_logger(spool_dir(uri))  # the detached logger may take it first: the same code path
    sleeps: list[float] = []
    monkeypatch.setattr("biasloop.core.tracking.time.sleep", sleeps.append)
    drain(spool_dir(uri))
    monkeypatch.undo()
    (recorded,) = _runs(uri)
    assert recorded.data.metrics == {"kept": 1.0} and recorded.info.status == "FINISHED"
    assert sleeps == []  # no retry backoff in this process


def test_failed_stage_marks_run_failed(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    with pytest.raises(RuntimeError), stage_run("corpus", TrackingConfig(uri=uri, **INLINE)):
        raise RuntimeError("boom")
    assert _runs(uri)[0].info.status == "FAILED"


def test_sigterm_ends_the_run_killed(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    code = (
        "import os, signal; from biasloop.core.config import TrackingConfig; from biasloop.core.tracking import stage_run\n"
        f"with stage_run('retrain', TrackingConfig(uri={uri!r}, background=False)) as run:\n"
        "    os.kill(os.getpid(), signal.SIGTERM)"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).resolve().parents[1])
    assert result.returncode == 128 + 15
    (recorded,) = _runs(uri)
    assert recorded.info.status == "KILLED"


def test_a_stage_that_dies_still_leaves_its_run(tmp_path: Path) -> None:
    """A process killed inside a run leaves a RUNNING record; the next drain logs it as KILLED."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    code = (
        "import os; from biasloop.core.config import TrackingConfig; from biasloop.core.tracking import stage_run\n"
        f"with stage_run('pretrain', TrackingConfig(uri={uri!r}, background=False)) as run:\n"
        "    run.log_metrics({'step': 3}); os._exit(9)"
    )
    assert subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).resolve().parents[1]).returncode == 9
    assert len(pending_records(spool_dir(uri))) == 1
    assert drain(spool_dir(uri)) == 1
    (recorded,) = _runs(uri)
    assert recorded.info.status == "KILLED" and recorded.data.metrics == {"step": 3.0}
    assert "ended without closing the run" in recorded.data.tags["biasloop.closed_because"]


@pytest.mark.slow
def test_background_logger_logs_every_run_and_exits(tmp_path: Path) -> None:
    """The stage imports no MLflow; a detached logger logs the runs and leaves when the spool is empty."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    code = (
        "import sys; from biasloop.core.config import TrackingConfig; from biasloop.core import tracking\n"
        "tracking.LINGER_SECONDS = 1.0\n"
        "for i in range(3):\n"
        f"    with tracking.stage_run('s', TrackingConfig(uri={uri!r}), {{'i': i}}) as run:\n"
        "        run.log_metrics({'value': i})\n"
        "assert 'mlflow' not in sys.modules, 'the stage imported mlflow'"
    )
    subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).resolve().parents[1], check=True)
    assert wait_for_logger(spool_dir(uri), timeout=180)
    runs = _runs(uri)
    assert sorted(r.data.params["i"] for r in runs) == ["0", "1", "2"]
    assert all(r.info.status == "FINISHED" for r in runs)


def test_disabled_tracking_writes_nothing(tmp_path: Path) -> None:
    with stage_run("corpus", TrackingConfig(enabled=False, uri=f"sqlite:///{tmp_path / 'x.db'}")) as run:
        run.log_metrics({"a": 1})
        assert not run.active
    assert not (tmp_path / "x.db").exists()


def _write_runs(uri: str, worker: int) -> None:
    for i in range(4):
        with stage_run(f"stage{worker}", TrackingConfig(uri=uri, **INLINE), {"i": i}) as run:
            run.log_metrics({"value": i})


def test_two_writers_lose_no_runs(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    with stage_run("init", TrackingConfig(uri=uri, **INLINE)):
        pass  # create the schema once, as the first pipeline stage does
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=_write_runs, args=(uri, w)) for w in range(2)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(180)
        assert worker.exitcode == 0
    runs = _runs(uri)
    assert len(runs) == 9
    assert all(r.info.status == "FINISHED" for r in runs)
