"""Where a stage's seconds go: start-up (process start to first useful work) and compute.

Every stage process reports two events, measured from the moment the operating system started the
process (so the interpreter's own start-up and every import count):

- ``startup``: the stage's tracking is set up and its real work begins (imports, params, tracking);
- ``end``: the stage's work is done and its outputs are written.

Each event is a log line (``stage timing: {...}``, JSON) and, when the environment variable
``BIASLOOP_TIMINGS`` names a file, one JSON line appended to it: ``benchmarks/pipeline.py`` sets it and
aggregates the lines into per-stage start-up and compute seconds.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any

TIMINGS_ENV = "BIASLOOP_TIMINGS"
log = logging.getLogger(__name__)
_IMPORTED_AT = time.time()  # fallback when the process start time cannot be read
_current: dict[str, Any] = {}  # the stage this process runs, set at start-up (one stage per process)
_notes: dict[str, Any] = {}  # facts every later record carries (the thread count the stage chose)


def process_started_at() -> float:
    """Unix time at which the OS started this process (Linux: ``/proc``; 10 ms resolution).

    Falls back to psutil, then to the time this module was imported (which misses the interpreter's
    start-up and the imports before it).
    """
    try:
        stat = Path("/proc/self/stat").read_text()
        # Field 22 (starttime, clock ticks after boot); fields after the command name, which may hold spaces.
        ticks = int(stat.rsplit(")", 1)[1].split()[19])
        boot = next(
            int(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines() if line.startswith("btime ")
        )
        return boot + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        pass
    try:
        import psutil

        return float(psutil.Process().create_time())
    except Exception:
        return _IMPORTED_AT


def report(event: str, **fields: Any) -> dict[str, Any]:
    """Log one timing event and append it to ``$BIASLOOP_TIMINGS`` when set.

    Args:
        event: ``startup`` or ``end``.
        fields: ``stage`` and ``generation`` (remembered from the ``startup`` event for ``end``), or
            anything else worth recording.

    Returns:
        The record: ``event, stage, generation, pid, process_start, time, seconds_since_start``.
    """
    if event == "startup":
        _current.clear()
        _current.update({k: v for k, v in fields.items() if k in ("stage", "generation")})
    now = time.time()
    started = process_started_at()
    record = {
        "event": event,
        **_current,
        **_notes,
        **fields,
        "pid": os.getpid(),
        "process_start": round(started, 3),
        "time": round(now, 3),
        "seconds_since_start": round(now - started, 3),
    }
    log.info("stage timing: %s", json.dumps(record))
    path = os.environ.get(TIMINGS_ENV)
    if path:
        try:
            with open(path, "a", encoding="utf-8") as handle:  # one short line per write: appends do not interleave
                handle.write(json.dumps(record) + "\n")
        except OSError as exc:
            log.warning("could not append the timing record to %s: %s", path, exc)
    return record


def annotate(**fields: Any) -> None:
    """Add ``fields`` to every later record of this process (e.g. ``cpu_threads``)."""
    _notes.update(fields)


def runtime_facts() -> dict[str, Any]:
    """How this stage process ran, where it changes the numbers: ``{"cpu_threads": n}`` (torch CPU threads,
    set by :func:`biasloop.core.stage.load_configs`); empty before. Stages put it in their metrics JSON and
    :func:`biasloop.core.tracking.stage_run` in the MLflow run's params."""
    return {"cpu_threads": _notes["cpu_threads"]} if "cpu_threads" in _notes else {}


def stage_started(stage: str, generation: int | None = None) -> None:
    """Mark the end of start-up (called by :func:`biasloop.core.tracking.stage_run` once tracking is ready)."""
    report("startup", stage=stage, generation=generation)


def stage_finished(status: str) -> None:
    """Mark the end of the stage's work (called by :func:`biasloop.core.stage.run_main`); no-op without a start-up."""
    if _current:
        report("end", status=status)
