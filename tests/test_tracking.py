"""MLflow tracking: one run per stage execution with tags, off by a param, concurrent writers safe."""

from __future__ import annotations

import multiprocessing
from pathlib import Path

import pytest

from biasloop.core.config import TrackingConfig
from biasloop.core.tracking import flatten, stage_run


def test_flatten() -> None:
    assert flatten({"a": {"b": 1, "c": [1, 2]}, "d": "x", "rows": [{"x": 1}]}) == {"a.b": 1, "a.c.0": 1, "a.c.1": 2, "d": "x"}


def _runs(uri: str) -> list:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("biasloop")
    return client.search_runs([experiment.experiment_id]) if experiment else []


def test_run_recorded_with_tags(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DVC_EXP_NAME", "sweep-1")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    with stage_run("generate", TrackingConfig(uri=uri), {"generator": {"steps": 5}}, generation=2) as run:
        run.log_metrics({"loss": 0.5, "nested": {"x": 1}, "label": "text", "recall": {"recall@10": 0.25}})
        (tmp_path / "a.txt").write_text("hi")
        run.log_artifact(tmp_path / "a.txt")
    (recorded,) = _runs(uri)
    assert recorded.info.status == "FINISHED"
    assert recorded.data.tags["stage"] == "generate" and recorded.data.tags["generation"] == "2"
    assert recorded.data.tags["dvc_exp_name"] == "sweep-1"
    assert recorded.data.params["generator.steps"] == "5"
    # "@" is not allowed in MLflow keys: renamed, not a failed batch that loses every metric
    assert recorded.data.metrics == {"loss": 0.5, "nested.x": 1.0, "recall.recall_at_10": 0.25}


def test_rejected_batch_is_not_retried(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A request MLflow rejects as invalid fails at once with a warning (no minute of backoff)."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    with stage_run("evaluate", TrackingConfig(uri=uri)) as run:
        sleeps: list[float] = []
        monkeypatch.setattr("biasloop.core.tracking.time.sleep", sleeps.append)
        run.log_params({"key": "a"})
        run.log_params({"key": "b"})  # changing a logged param is rejected (INVALID_PARAMETER_VALUE)
        monkeypatch.undo()
    assert "MLflow log_params failed" in caplog.text
    assert sleeps == []  # no retry backoff


def test_failed_stage_marks_run_failed(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    with pytest.raises(RuntimeError), stage_run("corpus", TrackingConfig(uri=uri)):
        raise RuntimeError("boom")
    assert _runs(uri)[0].info.status == "FAILED"


def test_disabled_tracking_writes_nothing(tmp_path: Path) -> None:
    with stage_run("corpus", TrackingConfig(enabled=False, uri=f"sqlite:///{tmp_path / 'x.db'}")) as run:
        run.log_metrics({"a": 1})
        assert not run.active
    assert not (tmp_path / "x.db").exists()


def _write_runs(uri: str, worker: int) -> None:
    for i in range(4):
        with stage_run(f"stage{worker}", TrackingConfig(uri=uri), {"i": i}) as run:
            run.log_metrics({"value": i})


def test_two_writers_lose_no_runs(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    with stage_run("init", TrackingConfig(uri=uri)):
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
