"""The logger side of MLflow tracking: replays spooled run records into MLflow (see
:mod:`biasloop.core.tracking`), nests each stage run under its pipeline run's parent and ends the parent
when the pipeline run is over (:mod:`biasloop.core.pipeline_run`). Run by the detached logger process
(``python -m biasloop.core.tracking --spool DIR``), or in the stage with ``tracking.background: false``.
"""

from __future__ import annotations

import json
import logging
import shutil
import socket
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from biasloop.core.pipeline_run import PARENT_TAG, PIPELINES, RECORD, RUN_ID_FILE
from biasloop.core.spool import (
    EXPERIMENT_KIND_TAG,
    MODEL_TRAINING_KIND,
    TERMINAL,
    now_ms,
    pending_records,
    process_alive,
    repo_root,
    retry,
    spool_lock,
)

log = logging.getLogger(__name__)


def experiment_id_for(client: Any, name: str, uri: str) -> str:
    """The id of MLflow experiment ``name``, created (model-training kind, artifacts beside the database)
    when missing."""
    import mlflow

    found = client.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    try:
        # Artifacts beside the database (not in whichever folder a stage ran from).
        database = Path(uri.removeprefix("sqlite:///")) if uri.startswith("sqlite:///") else repo_root() / "x"
        return client.create_experiment(
            name,
            artifact_location=(database.parent / "mlartifacts").as_uri(),
            tags={EXPERIMENT_KIND_TAG: MODEL_TRAINING_KIND},
        )
    except mlflow.exceptions.MlflowException:
        found = client.get_experiment_by_name(name)  # created by another writer
        if found is None:
            raise
        return found.experiment_id


def _quietly(what: str, call: Callable[[], Any]) -> None:
    """One logging call: retried while transient; a rejected request is a warning, not a lost run."""
    try:
        retry(call, what)
    except Exception as exc:
        log.warning("MLflow %s failed: %s", what, exc)


def log_record(folder: Path, clients: dict[str, Any] | None = None) -> str:
    """Replay one spooled run into MLflow; returns its MLflow run id. The folder is left in place."""
    from mlflow.entities import Metric, Param
    from mlflow.tracking import MlflowClient

    clients = {} if clients is None else clients
    record = json.loads((folder / RECORD).read_text())
    status, end_time = record.get("status"), record.get("end_time")
    if status not in TERMINAL:  # its process died before the run ended (SIGKILL, power cut)
        status, end_time = "KILLED", end_time or now_ms()
        record["tags"]["biasloop.closed_because"] = f"process {record.get('process')} ended without closing the run"
    uri = record["uri"]
    if uri not in clients:
        clients[uri] = MlflowClient(tracking_uri=uri)
    client = clients[uri]
    run_id_path = folder / RUN_ID_FILE
    experiment = retry(lambda: experiment_id_for(client, record["experiment"], uri), "get experiment")
    parent = parent_run_id(folder.parent, record["parent"], client, experiment) if record.get("parent") else None
    if run_id_path.exists():
        run_id = run_id_path.read_text().strip()  # a logger died halfway: resume the same run
    else:
        tags = {**record["tags"], PARENT_TAG: parent} if parent else record["tags"]
        run = retry(lambda: client.create_run(experiment, start_time=record["start_time"], tags=tags), "create run")
        run_id = run.info.run_id
        run_id_path.write_text(run_id + "\n")
    params = [Param(k, v) for k, v in record["params"].items()]
    for start in range(0, len(params), 100):
        _quietly("log_params", lambda c=params[start : start + 100]: client.log_batch(run_id, params=c))
    for target, rows in ((run_id, record["metrics"]), (parent, record.get("parent_metrics") or [])):
        metrics = [Metric(k, v, ts, step) for k, v, ts, step in rows]
        for start in range(0, len(metrics), 500):
            _quietly("log_metrics", lambda c=metrics[start : start + 500], t=target: client.log_batch(t, metrics=c))
    for artifact in record["artifacts"]:
        path = folder / artifact["path"]
        if artifact.get("is_dir"):
            _quietly("log_artifacts", lambda p=path: client.log_artifacts(run_id, str(p), p.name))
        else:
            _quietly("log_artifact", lambda p=path: client.log_artifact(run_id, str(p)))
    retry(lambda: client.set_terminated(run_id, status, end_time), "end run")
    return run_id


# ------------------------------------------------------------- the logger side: pipeline runs' parents
def parent_run_id(spool: Path, key: str, client: Any, experiment_id: str) -> str | None:
    """The MLflow run id of pipeline run ``key``, created (with its params) the first time; None when its
    record is gone."""
    from mlflow.entities import Param

    folder = spool / PIPELINES / key
    run_id_path = folder / RUN_ID_FILE
    if run_id_path.exists():
        return run_id_path.read_text().strip()
    try:
        record = json.loads((folder / RECORD).read_text())
    except (OSError, ValueError):
        return None
    run = retry(
        lambda: client.create_run(experiment_id, start_time=record["start_time"], tags=record["tags"]),
        "create parent run",
    )
    run_id_path.write_text(run.info.run_id + "\n")
    params = [Param(k, v) for k, v in record["params"].items()]
    for start in range(0, len(params), 100):
        _quietly("log_params", lambda c=params[start : start + 100]: client.log_batch(run.info.run_id, params=c))
    return run.info.run_id


def running_pipelines(spool: Path) -> list[Path]:
    """Pipeline-run folders in ``spool`` whose DVC process still runs on this host."""
    host = socket.gethostname()
    running = []
    for folder in sorted((spool / PIPELINES).glob("[!.]*")):
        try:
            record = json.loads((folder / RECORD).read_text())
        except (OSError, ValueError):
            continue
        if record.get("host") == host and process_alive(str(record.get("process", ""))):
            running.append(folder)
    return running


def close_ended_pipelines(spool: Path, clients: dict[str, Any], waiting_children: set[str]) -> int:
    """End the parent run of every pipeline run whose DVC process is gone and whose children are all
    logged (``waiting_children``: keys of records still in the spool); returns how many were ended."""
    from mlflow.tracking import MlflowClient

    running = set(running_pipelines(spool))
    closed = 0
    for folder in sorted((spool / PIPELINES).glob("[!.]*")):
        if folder in running or folder.name in waiting_children:
            continue
        try:
            record = json.loads((folder / RECORD).read_text())
        except (OSError, ValueError):
            continue
        if record.get("host") != socket.gethostname():
            continue  # another machine's pipeline run (a shared folder): only its own logger can tell it ended
        uri = record["uri"]
        if uri not in clients:
            clients[uri] = MlflowClient(tracking_uri=uri)
        client = clients[uri]
        experiment = retry(partial(experiment_id_for, client, record["experiment"], uri), "get experiment")
        run_id = parent_run_id(spool, folder.name, client, experiment)
        if run_id is None:
            continue
        children = retry(
            partial(client.search_runs, [experiment], f"tags.`{PARENT_TAG}` = '{run_id}'"), "search child runs"
        )
        failed = any(child.info.status in ("FAILED", "KILLED") for child in children)
        end = max([c.info.end_time for c in children if c.info.end_time] or [int(time.time() * 1000)])
        retry(partial(client.set_terminated, run_id, "FAILED" if failed else "FINISHED", end), "end parent run")
        shutil.rmtree(folder, ignore_errors=True)
        log.info("ended parent run %s (%s) of pipeline run %s", run_id, "FAILED" if failed else "FINISHED", folder.name)
        closed += 1
    return closed


def _parent_key(folder: Path) -> str | None:
    try:
        return json.loads((folder / RECORD).read_text()).get("parent")
    except (OSError, ValueError):
        return None


def drain(spool: str | Path, linger: float = 0.0, poll: float = 0.5, follow: bool = False) -> int:
    """Log every ready record in ``spool`` into MLflow and delete it; one drainer at a time (file lock).
    Ends the parent run of each pipeline run whose DVC process is gone and whose stage runs are logged.

    Args:
        spool: the spool folder.
        linger: after the spool runs dry, keep watching it this many seconds for new records.
        poll: seconds between looks while lingering.
        follow: also keep watching while a pipeline run with a record here is alive (the detached
            logger: it ends that run's parent when DVC exits). Never in a stage: DVC waits for it.

    Returns:
        The number of runs logged. A record MLflow refuses is left in place (warning) for the next drain.
    """
    spool = Path(spool)
    if not spool.exists():
        return 0
    logged = 0
    refused: set[Path] = set()
    clients: dict[str, Any] = {}
    held = spool_lock(spool, blocking=True)
    while held is not None:
        idle_since = time.monotonic()
        while True:
            ready = [f for f in pending_records(spool) if f not in refused]
            for folder in ready:
                try:
                    run_id = log_record(folder, clients)
                except Exception as exc:
                    log.warning("could not log %s to MLflow (kept for the next logger): %s", folder, exc)
                    refused.add(folder)
                    continue
                shutil.rmtree(folder, ignore_errors=True)
                logged += 1
                log.info("logged %s as MLflow run %s", folder.name, run_id)
            if (spool / PIPELINES).exists():
                waiting = {_parent_key(f) for f in spool.iterdir() if f.is_dir() and not f.name.startswith(".")}
                try:
                    close_ended_pipelines(spool, clients, waiting)
                except Exception as exc:
                    log.warning("could not end a pipeline's parent run (the next logger will): %s", exc)
            if ready or (follow and running_pipelines(spool)):
                idle_since = time.monotonic()
                if not ready:
                    time.sleep(poll)
            elif time.monotonic() - idle_since >= linger:
                break
            else:
                time.sleep(poll)
        held.close()
        # A stage that finished after our last look saw the lock held and started no logger: look again.
        if not [f for f in pending_records(spool) if f not in refused]:
            break
        held = spool_lock(spool, blocking=False)
    return logged


def wait_for_logger(spool: str | Path, timeout: float = 120.0) -> bool:
    """Wait until no logger holds ``spool``'s lock and no ready record is left; True if so in time."""
    spool = Path(spool)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not spool.exists():
            return True
        held = spool_lock(spool, blocking=False)
        if held is not None:
            held.close()
            if not pending_records(spool):
                return True
        time.sleep(0.2)
    return False
