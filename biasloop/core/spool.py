"""The spool between stages and the MLflow logger: where run records wait, and the helpers both sides share.

A record is a folder holding ``record.json`` (tags, params, metrics, times, status; see
:mod:`biasloop.core.tracking`). This module holds what the stage side (:mod:`biasloop.core.tracking`)
and the logger side (:mod:`biasloop.core.mlflow_logger`) both need: where the spool is, its lock,
which records are ready, the process identities that tell a dead stage from a running one, and
MLflow's key rules. Nothing here imports MLflow.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import random
import re
import socket
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

from biasloop.core.pipeline_run import RECORD

log = logging.getLogger(__name__)
T = TypeVar("T")

SPOOL_ENV = "BIASLOOP_TRACKING_SPOOL"
LOCK = ".lock"
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


def repo_root() -> Path:
    return Path(os.environ.get("DVC_ROOT") or os.getcwd()).resolve()


def default_uri() -> str:
    """``sqlite:///<DVC_ROOT or cwd>/mlflow.db``."""
    return f"sqlite:///{repo_root() / 'mlflow.db'}"


def spool_dir(uri: str) -> Path:
    """Where runs wait for the logger: ``$BIASLOOP_TRACKING_SPOOL``, else beside a SQLite database
    (``<db folder>/.mlflow-spool``), else ``<DVC_ROOT>/.cache/mlflow-spool``."""
    override = os.environ.get(SPOOL_ENV)
    if override:
        return Path(override)
    if uri.startswith("sqlite:///"):
        return Path(uri.removeprefix("sqlite:///")).resolve().parent / ".mlflow-spool"
    return repo_root() / ".cache" / "mlflow-spool"


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


def retry(call: Callable[[], T], what: str, attempts: int = 12) -> T:
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


def now_ms() -> int:
    return int(time.time() * 1000)


def write_json_atomic(path: Path, data: Any) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, path)


# ------------------------------------------------------------------------------------ the logger side
def spool_lock(spool: Path, blocking: bool) -> Any:
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
