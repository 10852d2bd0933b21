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

The code is in four modules: this one (the stage side: :func:`stage_run`, and the logger's command
line), :mod:`biasloop.core.spool` (what both sides share), :mod:`biasloop.core.mlflow_logger` (the
logger side) and :mod:`biasloop.core.pipeline_run` (parent runs).

Runs follow MLflow's conventions: the stage runs of one `dvc repro` (or DVC experiment) are nested under
one parent run named after the experiment (:mod:`biasloop.core.pipeline_run` says how they find it);
every run carries ``mlflow.source.git.commit``, ``mlflow.source.name`` (the stage's module),
``mlflow.runName`` (``evaluate@2``) and the params its stage declares in ``dvc.yaml`` plus
``synthetic_ratio``; a per-generation stage logs its metrics at ``step = generation``.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from biasloop.core import pipeline_run
from biasloop.core.config import TrackingConfig
from biasloop.core.mlflow_logger import drain, log_record, wait_for_logger  # noqa: F401 (the logger's API, here too)
from biasloop.core.pipeline_run import PIPELINES, RECORD
from biasloop.core.spool import (  # noqa: F401 (re-exported: the tracking API in one place)
    EXPERIMENT_KIND_TAG,
    HOST_TAG,
    MODEL_TRAINING_KIND,
    PROCESS_TAG,
    default_uri,
    flatten,
    mlflow_key,
    now_ms,
    pending_records,
    process_alive,
    process_identity,
    spool_dir,
    spool_lock,
    write_json_atomic,
)
from biasloop.core.timing import runtime_facts, stage_started

log = logging.getLogger(__name__)

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

LINGER_SECONDS = 20.0  # how long a background logger waits for the next finished stage before exiting
LINGER_ENV = "BIASLOOP_TRACKING_LINGER"  # overrides LINGER_SECONDS (seconds)


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


def git_revision() -> str | None:
    """The commit checked out in the working folder (``git rev-parse HEAD``), or None outside a Git work tree."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


# ------------------------------------------------------------------------------------ the stage side
class StageRun:
    """Handle a stage uses to record params, metrics and artifacts; a no-op when tracking is off.

    Every call updates the run's record on disk at once (a stage that dies keeps what it logged).
    MLflow's own rules are checked here, where the stage can be told: a param keeps its first value.
    """

    def __init__(self, folder: Path | None = None, record: dict[str, Any] | None = None, step: int = 0) -> None:
        self.folder = folder
        self.record = record
        self.step = step  # the default step of logged metrics: the generation of a per-generation stage

    @property
    def active(self) -> bool:
        return self.folder is not None

    def _save(self) -> None:
        try:
            write_json_atomic(self.folder / RECORD, self.record)
        except OSError as exc:
            log.warning("could not write the tracking record %s: %s", self.folder, exc)

    def log_params(self, params: Mapping[str, Any], only_new: bool = False) -> None:
        """Log (nested) params; values are stringified and cut to MLflow's length limit (6,000).
        ``only_new``: keys already logged keep their value without a warning."""
        if not self.active:
            return
        logged = self.record["params"]
        for key, value in flatten(params).items():
            key, value = mlflow_key(key), str(value)[:6000]
            if only_new and key in logged:
                continue
            if key in logged and logged[key] != value:
                log.warning(
                    "MLflow log_params failed: param %r changed from %r to %r (params are immutable)",
                    key,
                    logged[key],
                    value,
                )
                continue
            logged[key] = value
        self._save()

    def log_metrics(self, metrics: Mapping[str, Any], step: int | None = None, pipeline: bool = False) -> None:
        """Log the numeric leaves of a (nested) metrics dict; other values are skipped.

        Args:
            metrics: the metrics, nested or flat.
            step: MLflow's step; None: the run's generation (0 for a stage that is not per generation).
            pipeline: log them into the parent run of the pipeline run too (its row in the runs table),
                when there is one.
        """
        if not self.active:
            return
        now = now_ms()
        rows = [
            [mlflow_key(k), float(v), now, self.step if step is None else step]
            for k, v in flatten(metrics).items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and v == v
        ]
        self.record["metrics"].extend(rows)
        if pipeline and self.record.get("parent"):
            self.record.setdefault("parent_metrics", []).extend(rows)
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
    write_json_atomic(tmp / RECORD, record)
    os.replace(tmp, spool / name)
    return spool / name


def _open_pipeline(spool: Path, uri: str, experiment: str, commit: str | None) -> str | None:
    """The key of this stage's pipeline run (:mod:`biasloop.core.pipeline_run`), its parent record
    written into ``spool/.pipelines/<key>`` unless a stage of it did already; None outside DVC."""
    ancestor = pipeline_run.dvc_ancestor()
    if ancestor is None:
        return None
    key = pipeline_run.pipeline_key(ancestor)
    folder = spool / PIPELINES / key
    if folder.exists():
        return key
    record = pipeline_run.parent_record(ancestor, key, uri, experiment, commit)
    record["params"] = {mlflow_key(k): str(v)[:6000] for k, v in flatten(record["params"]).items()}
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.parent / f".{key}.{uuid.uuid4().hex[:8]}.tmp"
    tmp.mkdir()
    write_json_atomic(tmp / RECORD, record)
    try:
        os.rename(tmp, folder)  # fails when another stage of this pipeline run wrote it first
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
    return key


def _run_tags(stage: str, generation: int | None, revision: str | None) -> dict[str, str]:
    """A stage run's MLflow tags: stage, host, process, run name, source file, commit and DVC experiment."""
    tags = {
        "stage": stage,
        HOST_TAG: socket.gethostname(),
        PROCESS_TAG: process_identity(),
        pipeline_run.RUN_NAME_TAG: stage if generation is None else f"{stage}@{generation}",
        pipeline_run.SOURCE_TAG: f"stages/{stage}.py",
        pipeline_run.SOURCE_TYPE_TAG: "LOCAL",
    }
    if generation is not None:
        tags["generation"] = str(generation)
    if revision:
        tags[pipeline_run.COMMIT_TAG] = revision
    for env_name in ("DVC_EXP_NAME", "DVC_EXP_BASELINE_REV"):
        if os.environ.get(env_name):
            tags[env_name.lower()] = os.environ[env_name]
    return tags


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
        revision = git_revision()
        tags = _run_tags(stage, generation, revision)
        spool = spool_dir(uri)
        parent = _open_pipeline(spool, uri, config.experiment, revision)
        if parent:
            tags[pipeline_run.PIPELINE_TAG] = parent
        record = {
            "uri": uri,
            "experiment": config.experiment,
            "tags": tags,
            "params": {},
            "metrics": [],
            "artifacts": [],
            "status": "RUNNING",
            "start_time": now_ms(),
            "end_time": None,
            "process": tags[PROCESS_TAG],
            "host": tags[HOST_TAG],
            "parent": parent,
        }
        handle = StageRun(_open_record(spool, record), record, step=generation or 0)
        if params:
            handle.log_params(params)
        if os.environ.get("DVC_ROOT"):  # run by DVC: the params this stage declares in dvc.yaml, as DVC reads them
            handle.log_params(pipeline_run.declared_params(stage, pipeline_run.read_params_file()), only_new=True)
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
        record.update(status=status, end_time=now_ms())
        handle._save()
        try:
            if config.background:
                start_logger(spool)
            else:
                drain(spool, linger=0.0)
        except Exception as exc:
            log.warning("MLflow run %s stays in %s for the next logger: %s", handle.folder.name, spool, exc)


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
    held = spool_lock(spool, blocking=False)
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
        # It works in the spool, not the stage's folder: a queued experiment's temporary copy is deleted
        # when the experiment ends, and a process whose working directory is gone cannot import MLflow.
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "biasloop.core.tracking",
                "--spool",
                str(spool.resolve()),
                "--linger",
                str(linger),
                "--follow",
            ],
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=output,
            start_new_session=True,
            env=env,
            close_fds=True,
            cwd=spool.resolve(),
        )
    return True


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m biasloop.core.tracking --spool DIR [--linger S]``: log a spool's runs into MLflow."""
    parser = argparse.ArgumentParser(prog="python -m biasloop.core.tracking", description=main.__doc__)
    parser.add_argument("--spool", required=True, help="spool folder (beside the tracking database: .mlflow-spool)")
    parser.add_argument("--linger", type=float, default=0.0, help="seconds to wait for new records once empty")
    parser.add_argument(
        "--follow",
        action="store_true",
        help="also wait while a DVC pipeline run that logged here is alive, and end its parent run",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(process)d %(levelname)s %(message)s")
    with contextlib.suppress(OSError):
        os.nice(10)  # the pipeline's own stages come first
    count = drain(args.spool, linger=args.linger, follow=args.follow)
    log.info("logger done: %d runs logged from %s", count, args.spool)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
