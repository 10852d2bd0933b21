"""MLflow tracking: one run per stage execution, optional, never required, and off the stage's clock.

A stage does not talk to MLflow itself. :func:`stage_run` writes the run as a **record** (a folder
holding ``record.json``: tags, params, metrics, start and end times, status, and copies of the logged
artifacts) into a **spool** folder beside the tracking database, and a detached, low-priority logger
process (``python -m biasloop.core.tracking --spool DIR``) replays every finished record into MLflow
and then deletes it. Importing MLflow and opening its SQLite store cost 2 to 5 s per process; the stage
pays none of it, and one logger serves every stage that finishes while it runs (it waits
``LINGER_SECONDS`` for more before exiting). ``tracking.background: false`` replays the record in the
stage process instead (the same code, synchronously). ``tracking.enabled: false`` writes nothing and
imports nothing.

No run is lost: a record is written (atomically) when the run opens and after every call, so a stage
that dies leaves a record that the next logger logs as KILLED (its process, named by pid and start time
in the tag ``biasloop.process``, is gone from this host, ``biasloop.host``); SIGTERM (``dvc``
interrupted) ends the run KILLED at once; a record that
MLflow cannot take stays in the spool for the next logger; ``python -m biasloop.core.tracking --spool
DIR --linger 0`` drains a spool by hand. A logger writes the MLflow run id into the record before
logging into it, so a logger that dies halfway is resumed, not duplicated.

The tracking URI defaults to ``sqlite:///<DVC_ROOT>/mlflow.db``. DVC sets ``DVC_ROOT`` for every stage
command, and for queued experiments (which run in temporary copies) it points at the original
repository, so every experiment's runs land in one database that ``mlflow ui`` shows. SQLite allows
one writer at a time: one logger at a time drains a spool (a file lock), and every MLflow call is
retried with backoff on "database is locked" (other writers: a second spool, ``mlflow ui``). The
experiment is created as MLflow's model-training kind (``mlflow.experimentKind``), so ``mlflow ui``
opens it on its runs.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import logging
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from biasloop.core.config import TrackingConfig
from biasloop.core.timing import runtime_facts, stage_started

log = logging.getLogger(__name__)
T = TypeVar("T")

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

SPOOL_ENV = "BIASLOOP_TRACKING_SPOOL"
RECORD = "record.json"
RUN_ID_FILE = "mlflow_run_id"
LOCK = ".lock"
LINGER_SECONDS = 20.0  # how long a background logger waits for the next finished stage before exiting
LINGER_ENV = "BIASLOOP_TRACKING_LINGER"  # overrides LINGER_SECONDS (seconds)
TERMINAL = ("FINISHED", "FAILED", "KILLED")
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


class _Terminated(BaseException):
    """SIGTERM while a stage runs (dvc interrupted): unwinds so the run is recorded KILLED."""


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


def _root() -> Path:
    return Path(os.environ.get("DVC_ROOT") or os.getcwd()).resolve()


def default_uri() -> str:
    """``sqlite:///<DVC_ROOT or cwd>/mlflow.db``."""
    return f"sqlite:///{_root() / 'mlflow.db'}"


def spool_dir(uri: str) -> Path:
    """Where runs wait for the logger: ``$BIASLOOP_TRACKING_SPOOL``, else beside a SQLite database
    (``<db folder>/.mlflow-spool``), else ``<DVC_ROOT>/.cache/mlflow-spool``."""
    override = os.environ.get(SPOOL_ENV)
    if override:
        return Path(override)
    if uri.startswith("sqlite:///"):
        return Path(uri.removeprefix("sqlite:///")).resolve().parent / ".mlflow-spool"
    return _root() / ".cache" / "mlflow-spool"


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


def _retry(call: Callable[[], T], what: str, attempts: int = 12) -> T:
    """Run ``call``, retrying with jittered backoff (SQLite lock contention between writers)."""
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


def _git_revision() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def _now_ms() -> int:
    return int(time.time() * 1000)


def _write_json_atomic(path: Path, data: Any) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, path)


# ------------------------------------------------------------------------------------ the stage side
class StageRun:
    """Handle a stage uses to record params, metrics and artifacts; a no-op when tracking is off.

    Every call updates the run's record on disk at once (a stage that dies keeps what it logged).
    MLflow's own rules are checked here, where the stage can be told: a param keeps its first value.
    """

    def __init__(self, folder: Path | None = None, record: dict[str, Any] | None = None) -> None:
        self.folder = folder
        self.record = record

    @property
    def active(self) -> bool:
        return self.folder is not None

    def _save(self) -> None:
        try:
            _write_json_atomic(self.folder / RECORD, self.record)
        except OSError as exc:
            log.warning("could not write the tracking record %s: %s", self.folder, exc)

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Log (nested) params; values are stringified and cut to MLflow's length limit (6,000)."""
        if not self.active:
            return
        logged = self.record["params"]
        for key, value in flatten(params).items():
            key, value = mlflow_key(key), str(value)[:6000]
            if key in logged and logged[key] != value:
                log.warning("MLflow log_params failed: param %r changed from %r to %r (params are immutable)",
                            key, logged[key], value)
                continue
            logged[key] = value
        self._save()

    def log_metrics(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        """Log the numeric leaves of a (nested) metrics dict; other values are skipped."""
        if not self.active:
            return
        now = _now_ms()
        self.record["metrics"].extend(
            [mlflow_key(k), float(v), now, step or 0]
            for k, v in flatten(metrics).items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and v == v
        )
        self._save()

    def log_artifact(self, path: str | Path) -> None:
        """Copy a file (or folder) into the run's artifacts (copied now: the stage may rewrite it later)."""
        if not self.active:
            return
        path = Path(path)
        if not path.exists():
            return
        slot = Path("artifacts") / str(len(self.record["artifacts"])) / path.name
        try:
            (self.folder / slot).parent.mkdir(parents=True, exist_ok=True)
            if path.is_dir():
                shutil.copytree(path, self.folder / slot)
            else:
                shutil.copy2(path, self.folder / slot)
        except OSError as exc:
            log.warning("MLflow log_artifact failed: could not copy %s: %s", path, exc)
            return
        self.record["artifacts"].append({"path": slot.as_posix(), "is_dir": path.is_dir()})
        self._save()

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        if not self.active:
            return
        self.record["tags"].update({str(k): str(v) for k, v in tags.items()})
        self._save()


def _open_record(spool: Path, record: dict[str, Any]) -> Path:
    """Create the run's folder in the spool (hidden until complete, then renamed into place)."""
    spool.mkdir(parents=True, exist_ok=True)
    gitignore = spool / ".gitignore"
    if not gitignore.exists():
        gitignore.write_text("# runs waiting for the MLflow logger: local, never versioned\n*\n")
    name = f"{time.time_ns():020d}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp = spool / f".{name}.tmp"
    tmp.mkdir()
    _write_json_atomic(tmp / RECORD, record)
    os.replace(tmp, spool / name)
    return spool / name


@contextlib.contextmanager
def stage_run(
    stage: str,
    config: TrackingConfig,
    params: Mapping[str, Any] | None = None,
    generation: int | None = None,
) -> Iterator[StageRun]:
    """Record one stage execution as one MLflow run.

    Args:
        stage: the DVC stage name (``corpus``, ``generate``).
        config: the ``tracking`` params section; ``enabled: false`` gives a no-op handle.
        params: the params the stage declared, logged flattened.
        generation: the generation index for per-generation stages.

    Yields:
        A :class:`StageRun`. The run ends FINISHED, or FAILED when the block raises. It reaches MLflow
        through the spool (see the module docstring); tracking errors are logged as warnings and never
        fail the stage.
    """
    if not config.enabled:
        stage_started(stage, generation)
        yield StageRun()
        return
    uri = config.uri or default_uri()
    try:
        tags = {"stage": stage, HOST_TAG: socket.gethostname(), PROCESS_TAG: process_identity(),
                "mlflow.runName": stage if generation is None else f"{stage}@{generation}"}
        if generation is not None:
            tags["generation"] = str(generation)
        revision = _git_revision()
        if revision:
            tags["git_revision"] = revision
        for env_name in ("DVC_EXP_NAME", "DVC_EXP_BASELINE_REV"):
            if os.environ.get(env_name):
                tags[env_name.lower()] = os.environ[env_name]
        record = {"uri": uri, "experiment": config.experiment, "tags": tags, "params": {}, "metrics": [],
                  "artifacts": [], "status": "RUNNING", "start_time": _now_ms(), "end_time": None,
                  "process": tags[PROCESS_TAG], "host": tags[HOST_TAG]}
        spool = spool_dir(uri)
        handle = StageRun(_open_record(spool, record), record)
        if params:
            handle.log_params(params)
        handle.log_params(runtime_facts())  # the thread count changes the numbers: every run says which
        log.info("tracking run %s (%s) for %s via %s", handle.folder.name, tags["mlflow.runName"], uri, spool)
    except Exception as exc:  # tracking must never stop the pipeline
        log.warning("MLflow tracking disabled for this run: %s", exc)
        stage_started(stage, generation)
        yield StageRun()
        return
    stage_started(stage, generation)
    status = "FAILED"
    try:
        with _sigterm_unwinds():
            try:
                yield handle
                status = "FINISHED"
            except (_Terminated, KeyboardInterrupt):
                status = "KILLED"
                raise
    except _Terminated:
        raise SystemExit(128 + signal.SIGTERM) from None  # the exit status a SIGTERM'd process reports
    finally:
        record.update(status=status, end_time=_now_ms())
        handle._save()
        try:
            if config.background:
                start_logger(spool)
            else:
                drain(spool, linger=0.0)
        except Exception as exc:
            log.warning("MLflow run %s stays in %s for the next logger: %s", handle.folder.name, spool, exc)


# ------------------------------------------------------------------------------------ the logger side
def _lock(spool: Path, blocking: bool) -> Any:
    """The spool's lock file, locked (or None when ``blocking`` is False and another logger holds it)."""
    import fcntl

    handle = open(spool / LOCK, "a+")  # noqa: SIM115 (held across the drain)
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
    except OSError as exc:
        handle.close()
        if exc.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
            return None
        raise
    return handle


def pending_records(spool: Path) -> list[Path]:
    """Record folders in ``spool`` that are ready to log: ended, or left RUNNING by a process that died."""
    if not spool.exists():
        return []
    ready = []
    for folder in sorted(p for p in spool.iterdir() if p.is_dir() and not p.name.startswith(".")):
        try:
            record = json.loads((folder / RECORD).read_text())
        except (OSError, ValueError):
            continue  # being written
        same_host = record.get("host", "") == socket.gethostname()
        if record.get("status") in TERMINAL or (same_host and not process_alive(str(record.get("process", "")))):
            ready.append(folder)
    return ready


def start_logger(spool: Path, linger: float | None = None) -> bool:
    """Start a detached logger for ``spool`` unless one is running (it will see the new record).

    Args:
        spool: the spool folder.
        linger: seconds the logger waits for another finished run before exiting (None: the
            environment's ``BIASLOOP_TRACKING_LINGER``, else ``LINGER_SECONDS``; tests shorten it).

    Returns:
        True when a new logger process was started.
    """
    if linger is None:
        linger = float(os.environ.get(LINGER_ENV) or LINGER_SECONDS)
    held = _lock(spool, blocking=False)
    if held is None:
        return False  # a logger holds the lock; it looks at the spool again after releasing it
    held.close()
    package_root = str(Path(__file__).resolve().parents[2])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")]))}
    log_path = spool / "logger.log"
    if log_path.exists() and log_path.stat().st_size > 1_000_000:
        log_path.unlink(missing_ok=True)
    with open(log_path, "ab") as output:
        # A new session, no inherited pipes: DVC (which reads the stage's output) does not wait for it.
        subprocess.Popen(
            [sys.executable, "-m", "biasloop.core.tracking", "--spool", str(spool), "--linger", str(linger)],
            stdin=subprocess.DEVNULL, stdout=output, stderr=output, start_new_session=True, env=env,
            close_fds=True,
        )
    return True


def _experiment_id(client: Any, name: str, uri: str) -> str:
    import mlflow

    found = client.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    try:
        # Artifacts beside the database (not in whichever folder a stage ran from).
        database = Path(uri.removeprefix("sqlite:///")) if uri.startswith("sqlite:///") else _root() / "x"
        return client.create_experiment(name, artifact_location=(database.parent / "mlartifacts").as_uri(),
                                        tags={EXPERIMENT_KIND_TAG: MODEL_TRAINING_KIND})
    except mlflow.exceptions.MlflowException:
        found = client.get_experiment_by_name(name)  # created by another writer
        if found is None:
            raise
        return found.experiment_id


def _quietly(what: str, call: Callable[[], Any]) -> None:
    """One logging call: retried while transient; a rejected request is a warning, not a lost run."""
    try:
        _retry(call, what)
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
        status, end_time = "KILLED", end_time or _now_ms()
        record["tags"]["biasloop.closed_because"] = f"process {record.get('process')} ended without closing the run"
    uri = record["uri"]
    if uri not in clients:
        clients[uri] = MlflowClient(tracking_uri=uri)
    client = clients[uri]
    run_id_path = folder / RUN_ID_FILE
    if run_id_path.exists():
        run_id = run_id_path.read_text().strip()  # a logger died halfway: resume the same run
    else:
        experiment = _retry(lambda: _experiment_id(client, record["experiment"], uri), "get experiment")
        run = _retry(lambda: client.create_run(experiment, start_time=record["start_time"], tags=record["tags"]),
                     "create run")
        run_id = run.info.run_id
        run_id_path.write_text(run_id + "\n")
    params = [Param(k, v) for k, v in record["params"].items()]
    for start in range(0, len(params), 100):
        _quietly("log_params", lambda c=params[start : start + 100]: client.log_batch(run_id, params=c))
    metrics = [Metric(k, v, ts, step) for k, v, ts, step in record["metrics"]]
    for start in range(0, len(metrics), 500):
        _quietly("log_metrics", lambda c=metrics[start : start + 500]: client.log_batch(run_id, metrics=c))
    for artifact in record["artifacts"]:
        path = folder / artifact["path"]
        if artifact.get("is_dir"):
            _quietly("log_artifacts", lambda p=path: client.log_artifacts(run_id, str(p), p.name))
        else:
            _quietly("log_artifact", lambda p=path: client.log_artifact(run_id, str(p)))
    _retry(lambda: client.set_terminated(run_id, status, end_time), "end run")
    return run_id


def drain(spool: str | Path, linger: float = 0.0, poll: float = 0.5) -> int:
    """Log every ready record in ``spool`` into MLflow and delete it; one drainer at a time (file lock).

    Args:
        spool: the spool folder.
        linger: after the spool runs dry, keep watching it this many seconds for new records.
        poll: seconds between looks while lingering.

    Returns:
        The number of runs logged. A record MLflow refuses is left in place (warning) for the next drain.
    """
    spool = Path(spool)
    if not spool.exists():
        return 0
    logged = 0
    refused: set[Path] = set()
    clients: dict[str, Any] = {}
    held = _lock(spool, blocking=True)
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
            if ready:
                idle_since = time.monotonic()
            elif time.monotonic() - idle_since >= linger:
                break
            else:
                time.sleep(poll)
        held.close()
        # A stage that finished after our last look saw the lock held and started no logger: look again.
        if not [f for f in pending_records(spool) if f not in refused]:
            break
        held = _lock(spool, blocking=False)
    return logged


def wait_for_logger(spool: str | Path, timeout: float = 120.0) -> bool:
    """Wait until no logger holds ``spool``'s lock and no ready record is left; True if so in time."""
    spool = Path(spool)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not spool.exists():
            return True
        held = _lock(spool, blocking=False)
        if held is not None:
            held.close()
            if not pending_records(spool):
                return True
        time.sleep(0.2)
    return False


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m biasloop.core.tracking --spool DIR [--linger S]``: log a spool's runs into MLflow."""
    parser = argparse.ArgumentParser(prog="python -m biasloop.core.tracking", description=main.__doc__)
    parser.add_argument("--spool", required=True, help="spool folder (beside the tracking database: .mlflow-spool)")
    parser.add_argument("--linger", type=float, default=0.0, help="seconds to wait for new records once empty")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(process)d %(levelname)s %(message)s")
    with contextlib.suppress(OSError):
        os.nice(10)  # the pipeline's own stages come first
    count = drain(args.spool, linger=args.linger)
    log.info("logger done: %d runs logged from %s", count, args.spool)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
