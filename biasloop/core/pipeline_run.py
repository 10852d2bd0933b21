"""The parent MLflow run of one pipeline run, and the params each stage run carries.

MLflow's convention for a pipeline or a sweep is one parent run with a child run per step, nested by
the tag ``mlflow.parentRunId``. Here one **pipeline run** is one DVC process that runs stages: a
`dvc repro`, a `dvc exp run` in the workspace, or one queued experiment (DVC runs each queued
experiment in its own `dvc exp exec-run` process, in a temporary copy of the repository).

**How the stages of one pipeline run find their common parent.** Each stage is a child process of that
DVC process (through a shell). A stage walks up its ancestors in ``/proc`` to the nearest ``dvc``
process (:func:`biasloop.core.processes.kind_of`; a queue worker is not one, its ``exec-run`` child is)
and names the pipeline run by that process's host, pid and start time (``/proc/<pid>/stat`` field 22),
hashed into a key. This needs nothing from DVC and nothing shared between stages: every stage of one
`dvc repro` finds the same process, two concurrent experiments find different ones, a recycled pid has
another start time, and a second `dvc repro` of the same commit is a second parent. The DVC experiment
name (``DVC_EXP_NAME``, which DVC sets for `dvc exp run` and queued experiments) only names the run; it
cannot be the key, since plain `dvc repro` has none and an experiment can be rerun under its name. A
stage run by hand (``python -m stages.corpus``, a test) has no DVC ancestor and no parent.

**How the parent reaches MLflow without a stage waiting.** The first stage of a pipeline run writes the
parent's record (tags, all of ``params.yaml`` as params, the DVC process as its owner) into the spool's
``.pipelines/<key>/`` folder (an atomic rename: one writer wins); every stage's record names the key.
The logger (:mod:`biasloop.core.tracking`) creates the parent MLflow run when it logs the first child,
nests each child under it, and ends it once the DVC process is gone and its children are logged:
FAILED when a child failed or was killed, else FINISHED. The detached logger stays while a pipeline
run it serves is alive, so the parent ends within a second of `dvc repro`; with ``tracking.background:
false`` the next drain ends it.
"""

from __future__ import annotations

import getpass
import hashlib
import os
import socket
import time
from pathlib import Path
from typing import Any

import yaml

from biasloop.core.processes import ProcessInfo, kind_of, read_process

PIPELINES = ".pipelines"  # in the spool: one folder per pipeline run (hidden from pending_records)
RECORD = "record.json"  # a run's record in its spool folder (biasloop.core.tracking)
RUN_ID_FILE = "mlflow_run_id"  # the MLflow run id, once the logger created the run
COMMIT_TAG, SOURCE_TAG, SOURCE_TYPE_TAG = "mlflow.source.git.commit", "mlflow.source.name", "mlflow.source.type"
RUN_NAME_TAG, PARENT_TAG, USER_TAG = "mlflow.runName", "mlflow.parentRunId", "mlflow.user"
PIPELINE_TAG = "biasloop.pipeline"
VARIED_PARAMS = ("synthetic_ratio",)  # top-level params every stage run carries, declared or not


def dvc_ancestor(pid: int | None = None, max_depth: int = 64) -> ProcessInfo | None:
    """The nearest ``dvc`` process among ``pid``'s ancestors (this process's by default), or None."""
    info = read_process(os.getpid() if pid is None else pid)
    for _ in range(max_depth):
        if info is None or info.ppid <= 1:
            return None
        info = read_process(info.ppid)
        if info is not None and kind_of(info.cmdline) == "dvc":
            return info
    return None


def _boot_time() -> float | None:
    try:
        for line in Path("/proc/stat").read_text().splitlines():
            if line.startswith("btime "):
                return float(line.split()[1])
    except OSError:
        pass
    return None


def process_start_ms(info: ProcessInfo) -> int:
    """When ``info``'s process started (ms since the epoch; now when /proc cannot tell)."""
    boot = _boot_time()
    try:
        if boot is not None:
            return int((boot + int(info.start) / os.sysconf("SC_CLK_TCK")) * 1000)
    except (ValueError, OSError):
        pass
    return int(time.time() * 1000)


def pipeline_name(commit: str | None) -> str:
    """The parent run's name: the DVC experiment's (``DVC_EXP_NAME``), else ``repro-<short commit>``."""
    return os.environ.get("DVC_EXP_NAME") or (f"repro-{commit[:7]}" if commit else "repro")


def read_params_file(path: Path = Path("params.yaml")) -> dict[str, Any]:
    """``params.yaml`` of the stage's working directory (a queued experiment's own copy); {} if absent."""
    try:
        return yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError):
        return {}


def declared_params(stage: str, params: dict[str, Any], pipeline: Path = Path("dvc.yaml")) -> dict[str, Any]:
    """The params ``stage`` declares in ``dvc.yaml`` (``base``, ``evaluate.seed``, or all of params.yaml for
    ``params.yaml:``), with their values from ``params``, plus :data:`VARIED_PARAMS`; {} when there is no
    ``dvc.yaml`` or no such stage."""
    try:
        entry = (yaml.safe_load(pipeline.read_text()) or {}).get("stages", {}).get(stage)
    except (OSError, yaml.YAMLError):
        return {}
    if not isinstance(entry, dict):
        return {}
    entry = entry.get("do", entry)  # a foreach stage declares its params under do:
    keys: list[str] = []
    for item in entry.get("params") or []:
        if isinstance(item, str):
            keys.append(item)
        elif isinstance(item, dict):
            for file, listed in item.items():
                if file == "params.yaml":
                    keys.extend(listed if listed else list(params))
    out: dict[str, Any] = {}
    for key in [*keys, *VARIED_PARAMS]:
        value: Any = params
        for part in key.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        if value is not None:
            out[key] = value
    return out


def pipeline_key(ancestor: ProcessInfo) -> str:
    """The pipeline run's key: a hash of its DVC process's host, pid and start time."""
    return hashlib.sha1(f"{socket.gethostname()}:{ancestor.pid}:{ancestor.start}".encode()).hexdigest()[:16]


def parent_record(ancestor: ProcessInfo, key: str, uri: str, experiment: str, commit: str | None) -> dict[str, Any]:
    """The parent run's record (tags, all of params.yaml unflattened, its DVC process as owner)."""
    tags = {
        RUN_NAME_TAG: pipeline_name(commit),
        SOURCE_TAG: "dvc.yaml",
        SOURCE_TYPE_TAG: "LOCAL",
        PIPELINE_TAG: key,
        "dvc_command": " ".join(ancestor.cmdline[1:])[:500],
    }
    if commit:
        tags[COMMIT_TAG] = commit
    for env_name in ("DVC_EXP_NAME", "DVC_EXP_BASELINE_REV"):
        if os.environ.get(env_name):
            tags[env_name.lower()] = os.environ[env_name]
    try:
        tags[USER_TAG] = getpass.getuser()
    except (KeyError, OSError):
        pass
    return {
        "uri": uri,
        "experiment": experiment,
        "tags": tags,
        "params": read_params_file(),
        "start_time": process_start_ms(ancestor),
        "process": f"{ancestor.pid}:{ancestor.start}",
        "host": socket.gethostname(),
    }
