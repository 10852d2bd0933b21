"""MLflow tracking: one run per stage execution, optional, never required.

The tracking URI defaults to ``sqlite:///<DVC_ROOT>/mlflow.db``. DVC sets ``DVC_ROOT`` for every stage
command, and for queued experiments (which run in temporary copies) it points at the original
repository, so every experiment's runs land in one database that ``mlflow ui`` shows. SQLite allows
one writer at a time; ``dvc queue start -j 2`` runs two writers, so every call is retried with backoff
on "database is locked" instead of losing the run.

A stage killed by SIGKILL cannot close its run. Each run is tagged with the host and the process that
owns it (``biasloop.host``, ``biasloop.process``: pid and its start time), and every stage start marks
the experiment's ``RUNNING`` runs whose process is gone on this host ``KILLED``
(:func:`close_stale_runs`); runs of live processes (parallel queued experiments) are left alone.
SIGTERM (``dvc`` interrupted) ends the run ``KILLED`` at once.

The experiment is created as MLflow's model-training kind (tag ``mlflow.experimentKind:
custom_model_development``), so ``mlflow ui`` opens it on its runs, not on the GenAI traces overview.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import re
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar

from biasloop.core.config import TrackingConfig

log = logging.getLogger(__name__)
T = TypeVar("T")

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


def _root() -> Path:
    return Path(os.environ.get("DVC_ROOT") or os.getcwd()).resolve()


def default_uri() -> str:
    """``sqlite:///<DVC_ROOT or cwd>/mlflow.db``."""
    return f"sqlite:///{_root() / 'mlflow.db'}"


def flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Flatten nested mappings into ``a.b.c`` keys; lists of scalars become ``a.0``, ``a.1``."""
    flat: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{name}."))
        elif isinstance(value, (list, tuple)) and all(not isinstance(v, (Mapping, list, tuple)) for v in value):
            if len(value) <= 10:
                for i, item in enumerate(value):
                    flat[f"{name}.{i}"] = item
            else:
                flat[name] = str(list(value))[:500]
        elif isinstance(value, (list, tuple)):
            continue  # tables of rows belong in artifacts, not params/metrics
        else:
            flat[name] = value
    return flat


_NOT_TRANSIENT = {"INVALID_PARAMETER_VALUE", "BAD_REQUEST", "RESOURCE_ALREADY_EXISTS", "RESOURCE_DOES_NOT_EXIST"}


def mlflow_key(name: str) -> str:
    """``name`` with the characters MLflow rejects in param/metric keys replaced (``recall@10`` -> ``recall_at_10``).

    MLflow keys may hold alphanumerics, ``_ - . / :`` and spaces; anything else fails the whole batch.
    """
    return re.sub(r"[^A-Za-z0-9_\-./: ]", "_", name.replace("@", "_at_"))


def _quietly(method: Callable[..., None]) -> Callable[..., None]:
    """Tracking calls log a warning instead of failing the stage when MLflow keeps erroring."""

    def wrapper(self: "StageRun", *args: Any, **kwargs: Any) -> None:
        try:
            method(self, *args, **kwargs)
        except Exception as exc:
            log.warning("MLflow %s failed: %s", method.__name__, exc)

    wrapper.__name__ = method.__name__
    wrapper.__doc__ = method.__doc__
    return wrapper


def _retry(call: Callable[[], T], what: str, attempts: int = 12) -> T:
    """Run ``call``, retrying with jittered backoff (SQLite lock contention between queued runs)."""
    delay = 0.2
    for attempt in range(1, attempts + 1):
        try:
            return call()
        except Exception as exc:  # MLflow wraps sqlite errors in several exception types
            if attempt == attempts or getattr(exc, "error_code", None) in _NOT_TRANSIENT:
                raise  # a rejected request fails the same way every time: no retrying for a minute
            log.debug("MLflow %s failed (%s); retry %d", what, exc, attempt)
            time.sleep(delay + random.uniform(0, delay))
            delay = min(delay * 2, 5.0)
    raise AssertionError("unreachable")


EXPERIMENT_KIND_TAG = "mlflow.experimentKind"  # read by the MLflow 3 UI to pick the experiment's default view
MODEL_TRAINING_KIND = "custom_model_development"  # the UI's "Model training" type (vs. "genai_development")
HOST_TAG, PROCESS_TAG = "biasloop.host", "biasloop.process"


def _process_start(pid: int) -> str | None:
    """The start time of process ``pid`` in clock ticks since boot (/proc), or None when unknown or gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]  # field 22, counted after the parenthesised command name


def process_identity(pid: int | None = None) -> str:
    """``"<pid>:<start time>"``: names a process, not a recycled pid."""
    pid = os.getpid() if pid is None else pid
    return f"{pid}:{_process_start(pid) or '?'}"


def process_alive(identity: str) -> bool:
    """Whether the process named by :func:`process_identity` still runs (on this host)."""
    pid_text, _, start = identity.partition(":")
    try:
        pid = int(pid_text)
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, another user's
    except ValueError:
        return True  # not ours to judge
    now = _process_start(pid)
    return start in ("", "?") or now is None or now == start


def close_stale_runs(client: Any, experiment_id: str) -> list[str]:
    """Mark ``KILLED`` the experiment's RUNNING runs whose owning process on this host is gone.

    Returns the ids of the runs it closed. Runs of other hosts, of live processes, or without the
    process tag (not biasloop's) are left as they are.
    """
    host = socket.gethostname()
    closed = []
    running = client.search_runs([experiment_id], filter_string="attributes.status = 'RUNNING'", max_results=1000)
    for run in running:
        tags = run.data.tags
        if tags.get(HOST_TAG) != host or PROCESS_TAG not in tags or process_alive(tags[PROCESS_TAG]):
            continue
        client.set_tag(run.info.run_id, "biasloop.closed_because", f"process {tags[PROCESS_TAG]} ended without closing the run")
        client.set_terminated(run.info.run_id, "KILLED")
        closed.append(run.info.run_id)
        log.warning("MLflow run %s (%s) was left RUNNING by a killed process: marked KILLED",
                    run.info.run_id[:8], tags.get("mlflow.runName", "?"))
    return closed


class _Terminated(BaseException):
    """SIGTERM while a stage runs (dvc interrupted): unwinds so the run is closed KILLED."""


@contextlib.contextmanager
def _sigterm_unwinds() -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        raise _Terminated(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _git_revision() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


class StageRun:
    """Handle a stage uses to record params, metrics and artifacts; a no-op when tracking is off."""

    def __init__(self, client: Any = None, run_id: str | None = None) -> None:
        self._client = client
        self.run_id = run_id

    @property
    def active(self) -> bool:
        return self._client is not None

    @_quietly
    def log_params(self, params: Mapping[str, Any]) -> None:
        """Log (nested) params; values are stringified and cut to MLflow's length limit."""
        if not self.active:
            return
        from mlflow.entities import Param

        items = [Param(mlflow_key(k), str(v)[:6000]) for k, v in flatten(params).items()]
        for start in range(0, len(items), 100):
            chunk = items[start : start + 100]
            _retry(lambda c=chunk: self._client.log_batch(self.run_id, params=c), "log params")

    @_quietly
    def log_metrics(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        """Log the numeric leaves of a (nested) metrics dict; other values are skipped."""
        if not self.active:
            return
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [
            Metric(mlflow_key(k), float(v), now, step or 0)
            for k, v in flatten(metrics).items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and v == v
        ]
        for start in range(0, len(items), 500):
            chunk = items[start : start + 500]
            _retry(lambda c=chunk: self._client.log_batch(self.run_id, metrics=c), "log metrics")

    @_quietly
    def log_artifact(self, path: str | Path) -> None:
        """Copy a file (or folder) into the run's artifacts."""
        if not self.active:
            return
        path = Path(path)
        if path.is_dir():
            _retry(lambda: self._client.log_artifacts(self.run_id, str(path), path.name), "log artifacts")
        elif path.exists():
            _retry(lambda: self._client.log_artifact(self.run_id, str(path)), "log artifact")

    @_quietly
    def set_tags(self, tags: Mapping[str, Any]) -> None:
        if not self.active:
            return
        for key, value in tags.items():
            _retry(lambda k=key, v=value: self._client.set_tag(self.run_id, k, str(v)), "set tag")


@contextlib.contextmanager
def stage_run(
    stage: str,
    config: TrackingConfig,
    params: Mapping[str, Any] | None = None,
    generation: int | None = None,
) -> Iterator[StageRun]:
    """Open one MLflow run for one stage execution.

    Args:
        stage: the DVC stage name (``corpus``, ``generate``).
        config: the ``tracking`` params section; ``enabled: false`` gives a no-op handle.
        params: the params the stage declared, logged flattened.
        generation: the generation index for per-generation stages.

    Yields:
        A :class:`StageRun`. The run ends FINISHED, or FAILED when the block raises.
        Tracking errors are logged as warnings and never fail the stage.
    """
    if not config.enabled:
        yield StageRun()
        return
    try:
        import mlflow
        from mlflow.tracking import MlflowClient

        uri = config.uri or default_uri()
        client = MlflowClient(tracking_uri=uri)

        def experiment_id() -> str:
            found = client.get_experiment_by_name(config.experiment)
            if found is not None:
                return found.experiment_id
            try:
                # Artifacts beside the database (not in whichever folder a stage ran from).
                database = Path(uri.removeprefix("sqlite:///")) if uri.startswith("sqlite:///") else _root() / "x"
                return client.create_experiment(
                    config.experiment, artifact_location=(database.parent / "mlartifacts").as_uri(),
                    tags={EXPERIMENT_KIND_TAG: MODEL_TRAINING_KIND},
                )
            except mlflow.exceptions.MlflowException:
                found = client.get_experiment_by_name(config.experiment)  # created by a parallel run
                if found is None:
                    raise
                return found.experiment_id

        exp_id = _retry(experiment_id, "get experiment")
        experiment = _retry(lambda: client.get_experiment(exp_id), "get experiment")
        if EXPERIMENT_KIND_TAG not in experiment.tags:  # a database from before the tag
            _retry(lambda: client.set_experiment_tag(exp_id, EXPERIMENT_KIND_TAG, MODEL_TRAINING_KIND), "tag experiment")
        _retry(lambda: close_stale_runs(client, exp_id), "close stale runs")
        tags = {"stage": stage, HOST_TAG: socket.gethostname(), PROCESS_TAG: process_identity(), "mlflow.runName": stage if generation is None else f"{stage}@{generation}"}
        if generation is not None:
            tags["generation"] = str(generation)
        revision = _git_revision()
        if revision:
            tags["git_revision"] = revision
        for env_name in ("DVC_EXP_NAME", "DVC_EXP_BASELINE_REV"):
            if os.environ.get(env_name):
                tags[env_name.lower()] = os.environ[env_name]
        run = _retry(lambda: client.create_run(exp_id, tags=tags), "create run")
        handle = StageRun(client, run.info.run_id)
        if params:
            handle.log_params(params)
        log.info("MLflow run %s (%s) in %s", run.info.run_id[:8], tags["mlflow.runName"], uri)
    except Exception as exc:  # tracking must never stop the pipeline
        log.warning("MLflow tracking disabled for this run: %s", exc)
        yield StageRun()
        return
    status = "FAILED"
    try:
        with _sigterm_unwinds():
            try:
                yield handle
            except (_Terminated, KeyboardInterrupt):
                status = "KILLED"
                raise
        status = "FINISHED"
    except _Terminated:
        raise SystemExit(128 + signal.SIGTERM) from None  # the exit status a SIGTERM'd process reports
    finally:
        try:
            _retry(lambda: client.set_terminated(handle.run_id, status), "end run")
        except Exception as exc:
            log.warning("could not close MLflow run %s: %s", handle.run_id, exc)
