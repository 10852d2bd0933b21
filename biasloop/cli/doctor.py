"""``biasloop doctor``: what to look at when something is off.

Prints, one line each: which checkout and environment ``biasloop`` runs from (and whether the
``python``, ``dvc`` and ``mlflow`` on ``PATH`` are the same environment's, as stage ``cmd``s need);
package versions; CPU threads and device; whether ``dvc status`` is clean; where MLflow writes and how
many runs it holds (and RUNNING ones left by killed stages); the offline settings; this checkout's
running processes (PID and command) and who holds DVC's locks (``.dvc/tmp/lock``, ``.dvc/tmp/rwlock``):
a lock a live process holds is in use (wait, or ``biasloop stop``); deleting a lock is advised only
when no process of this checkout runs and the lock names none that lives. Lines marked
``!!`` are problems, with what to do; the exit status is 1 when there is one, else 0.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

PACKAGES = (
    "dvc",
    "mlflow",
    "torch",
    "torchvision",
    "diffusers",
    "open_clip_torch",
    "sentence-transformers",
    "polars",
    "numpy",
    "fairlearn",
)


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "doctor",
        help="environment, versions, threads, dvc status, running processes and locks, where MLflow writes",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--params", default="params.yaml", help="params file to read base/tracking from (default: %(default)s)"
    )
    parser.add_argument("--skip-dvc-status", action="store_true", help="do not run `dvc status` (a few seconds)")
    parser.add_argument("--json", action="store_true", help="print the findings as JSON")
    parser.set_defaults(run=run)


class Report:
    """Findings as ``(level, topic, text)``; level ``ok``, ``info`` or ``problem``."""

    def __init__(self) -> None:
        self.lines: list[tuple[str, str, str]] = []

    def add(self, level: str, topic: str, text: str) -> None:
        self.lines.append((level, topic, text))

    @property
    def problems(self) -> int:
        return sum(level == "problem" for level, _, _ in self.lines)

    def render(self) -> str:
        mark = {"ok": "ok", "info": "  ", "problem": "!!"}
        width = max((len(topic) for _, topic, _ in self.lines), default=0)
        return "\n".join(f"{mark[level]} {topic.ljust(width)}  {text}" for level, topic, text in self.lines)


def _git(root: Path, *args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=20, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def _same_file(a: str | Path | None, b: str | Path | None) -> bool:
    try:
        return a is not None and b is not None and os.path.samefile(a, b)
    except OSError:
        return False


def check_environment(report: Report, root: Path) -> None:
    """Which checkout's code runs, from which environment; PATH's python/dvc/mlflow."""
    import biasloop
    from biasloop.core.environment import shared_environment

    code = Path(biasloop.__file__).resolve().parent.parent
    toplevel = _git(root, "rev-parse", "--show-toplevel")
    revision = _git(root, "rev-parse", "--short", "HEAD")
    dirty = _git(root, "status", "--porcelain", "--untracked-files=no")
    report.add(
        "info", "checkout", f"{toplevel or root} at {revision or '?'}{' (uncommitted changes)' if dirty else ''}"
    )
    if toplevel and not _same_file(code, toplevel):
        report.add(
            "problem",
            "biasloop code",
            f"{code} is not this checkout: run `make venv` here and `source .venv/bin/activate`",
        )
    else:
        report.add("ok", "biasloop code", str(code))
    prefix = Path(sys.prefix)
    shared = shared_environment(prefix)
    report.add("info", "python", f"{sys.executable} (Python {sys.version.split()[0]})")
    if shared != prefix:
        report.add("ok", "environment", f"{prefix} over the shared {shared}")
    else:
        report.add("info", "environment", f"{prefix} (no per-checkout .venv: `make venv` makes one)")
    bin_dir = Path(sys.executable).parent
    found = {command: shutil.which(command) for command in ("python", "dvc", "mlflow")}
    ours = {command: bool(path) and _same_file(Path(path).parent, bin_dir) for command, path in found.items()}
    for command in ("python", "dvc", "mlflow"):
        if ours[command]:
            report.add("ok", f"PATH {command}", str(found[command]))
        elif command == "dvc" and found["dvc"]:
            report.add(
                "problem",
                "PATH dvc",
                f"{found['dvc']} is another environment's: its stages may run another python; "
                f"`source {bin_dir / 'activate'}`",
            )
        else:
            report.add(
                "info",
                f"PATH {command}",
                f"{found[command] or 'not on PATH'}; `source {bin_dir / 'activate'}` "
                f"puts dvc, biasloop and mlflow on PATH ({bin_dir / 'dvc'} works without it)",
            )


def check_versions(report: Report) -> None:
    versions = []
    for name in PACKAGES:
        try:
            versions.append(f"{name} {importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            versions.append(f"{name} missing")
    report.add("info", "versions", ", ".join(versions))


def check_threads(report: Report, params: dict) -> None:
    from biasloop.core.config import BaseConfig
    from biasloop.core.runtime import resolve_cpu_threads

    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    setting = (params.get("base") or {}).get("cpu_threads", BaseConfig.cpu_threads)
    try:
        threads = resolve_cpu_threads(setting)
        how = (
            "fixed: the same numbers at any load"
            if setting != "auto"
            else "auto: 1 inside queued experiments; numbers depend on the load"
        )
        report.add(
            "info",
            "threads",
            f"{cpus} CPUs usable of {os.cpu_count()}; base.cpu_threads={setting} -> {threads} per stage "
            f"({how}); OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')} (ignored: the params decide)",
        )
    except Exception as exc:
        report.add("problem", "threads", f"base.cpu_threads: {exc}")
    try:
        import torch

        gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
        report.add("info", "device", f"base.device={(params.get('base') or {}).get('device', 'cpu')}; CUDA GPU: {gpu}")
    except Exception as exc:
        report.add("problem", "device", f"torch does not import: {exc}")


LOCK_MESSAGES = ("Unable to acquire lock", "is busy", "rwlock", "being blocked by")


def check_dvc(report: Report, root: Path, running: list | None = None) -> None:
    """``dvc status``: clean, which stages changed, or the error (an unparsable dvc.lock, say). A lock error
    is reported with the processes that hold it (``check_running``), never with dvc's advice to delete it."""
    dvc = Path(sys.executable).parent / "dvc"
    command = [str(dvc)] if dvc.exists() else [sys.executable, "-m", "dvc"]
    try:
        result = subprocess.run([*command, "status", "--json"], cwd=root, capture_output=True, text=True, timeout=300)
    except (OSError, subprocess.SubprocessError) as exc:
        report.add("problem", "dvc status", f"could not run: {exc}")
        return
    if result.returncode != 0 and any(text in result.stderr for text in LOCK_MESSAGES):
        who = "; ".join(process.describe(120) for process in running or [])
        report.add(
            "info" if running else "problem",
            "dvc status",
            f"not checked: the repository is locked by {who}; wait for it to finish (or `biasloop stop`)"
            if running
            else "not checked: dvc could not take its lock and no process of this checkout runs: see the "
            "DVC lock lines (another user's dvc, or a lock on a network file system)",
        )
        return
    if result.returncode != 0:
        message = (result.stderr.strip().splitlines() or ["failed"])[-1]
        hint = " (see docs/operations.md, 'Recovering from an interrupted run')" if "dvc.lock" in result.stderr else ""
        report.add("problem", "dvc status", f"{message}{hint}")
        return
    try:
        changed = json.loads(result.stdout or "{}")
    except json.JSONDecodeError:
        changed = {"?": result.stdout.strip()[:200]}
    if not changed:
        report.add("ok", "dvc status", "clean: outputs match dvc.lock")
    else:
        names = sorted(name.split(":")[-1] for name in changed)
        report.add(
            "info",
            "dvc status",
            f"{len(names)} changed: {', '.join(names[:12])}{' ...' if len(names) > 12 else ''} "
            "(`dvc repro` rebuilds them)",
        )


def check_running(report: Report, root: Path, proc: Path | None = None) -> list:
    """This checkout's running processes (dvc, stages, queue workers, the MLflow logger) and who holds DVC's
    locks: a lock held by a live process is in use, not left over; it is never to be deleted.

    Returns the checkout's processes (:class:`biasloop.core.processes.CheckoutProcess`).
    """
    from biasloop.core.processes import PROC, checkout_processes, kind_of, lock_holders, read_process

    proc = PROC if proc is None else proc
    running = checkout_processes(root, proc=proc)
    by_pid = {process.pid: process for process in running}

    def name(pid: int) -> str:
        if pid in by_pid:
            return by_pid[pid].describe(120)
        info = read_process(pid, proc)
        return f"PID {pid}: {info.command[:120]}" if info else f"PID {pid}"

    if running:
        report.add(
            "info",
            "running",
            f"{len(running)} process(es) of this checkout: "
            + "; ".join(process.describe(120) for process in running)
            + " (wait for them to finish, or `biasloop stop` ends them)",
        )
    else:
        report.add("ok", "running", "no dvc, stage, queue worker or MLflow logger of this checkout is running")
    tmp = root / ".dvc" / "tmp"
    lock = tmp / "lock"
    config = "".join(
        p.read_text(errors="replace") for p in (root / ".dvc" / "config", root / ".dvc" / "config.local") if p.is_file()
    )
    hardlink = "hardlink_lock" in config and "true" in config.split("hardlink_lock", 1)[1].split("\n", 1)[0].lower()
    holders = lock_holders(lock, proc) if lock.exists() and not hardlink else []
    if hardlink:  # flufl's lock: a file that exists while held (a killed dvc leaves it), not in /proc/locks
        if lock.exists() and running:
            report.add(
                "info",
                "DVC lock",
                f"{lock} exists (core.hardlink_lock: held while it exists) and this "
                "checkout's processes run: wait for them (or `biasloop stop`); do not delete it",
            )
        elif lock.exists():
            report.add(
                "problem",
                "DVC lock",
                f"{lock} exists (core.hardlink_lock) and no process of this checkout "
                f"runs: a killed dvc left it; `rm {lock}` is safe",
            )
    elif holders is None:
        report.add(
            "info",
            "DVC lock",
            f"{lock}: who holds it is unknown ({proc}/locks unreadable); "
            + (
                "this checkout's processes run: wait for them (or `biasloop stop`); do not delete it"
                if running
                else "dvc releases it when it exits: nothing to remove"
            ),
        )
    elif holders:
        report.add(
            "info",
            "DVC lock",
            f"{lock} held by {', '.join(name(pid) for pid in holders)}: a dvc command is "
            "running; wait for it to finish (or `biasloop stop`); do not delete the lock",
        )
    elif lock.exists():
        report.add("ok", "DVC lock", f"not held ({lock} stays after dvc exits; nothing to remove)")
    rwlock = tmp / "rwlock"
    if not rwlock.exists():
        return running
    try:
        entries = json.loads(rwlock.read_text() or "{}")
        users = [
            (int(info["pid"]), str(info.get("cmd", "?")), path)
            for mode in ("read", "write")
            for path, infos in (entries.get(mode) or {}).items()
            for info in (infos if isinstance(infos, list) else [infos])
        ]
    except (OSError, ValueError, TypeError, KeyError, AttributeError) as exc:
        if running:
            report.add(
                "info",
                "DVC rwlock",
                f"{rwlock} unreadable ({exc}) while this checkout's processes run: "
                "wait for them to finish, then run `biasloop doctor` again",
            )
        else:
            report.add(
                "problem",
                "DVC rwlock",
                f"{rwlock} unreadable ({exc}) and no process of this checkout runs: `rm {rwlock}` is safe",
            )
        return running
    live = {pid: (cmd, read_process(pid, proc)) for pid, cmd, _ in users if pid > 0}
    live = {pid: (cmd, info) for pid, (cmd, info) in live.items() if info is not None}
    # a live dvc, or a process whose working directory is hidden from us (another user's), may be using it
    using = {
        pid: cmd
        for pid, (cmd, info) in live.items()
        if pid in by_pid or kind_of(info.cmdline) is not None or info.cwd is None
    }
    if using:
        holders_text = "; ".join(f"{name(pid)} (for: {cmd})" for pid, cmd in sorted(using.items()))
        report.add(
            "info",
            "DVC rwlock",
            f"held by {holders_text}" + ": in use; wait for it to finish (or `biasloop stop`); do not delete the lock",
        )
    elif live and running:
        report.add(
            "info",
            "DVC rwlock",
            "names PID(s) "
            + ", ".join(str(pid) for pid in sorted(live))
            + " that now run something else, while this checkout's processes run: wait for them to finish, "
            "then run `biasloop doctor` again",
        )
    elif live:
        report.add(
            "problem",
            "DVC rwlock",
            f"{rwlock} names PID(s) "
            + "; ".join(f"{pid} (was: {cmd}; now: {info.command[:80]})" for pid, (cmd, info) in sorted(live.items()))
            + " that now run other programs (recycled PIDs) and no process of this checkout runs: "
            f"`rm {rwlock}` "
            "is safe (dvc would wait for them)",
        )
    elif users:
        report.add(
            "ok",
            "DVC rwlock",
            f"only entries of ended processes ({len(users)}); dvc drops them itself "
            "at its next command: nothing to remove",
        )
    return running


def check_mlflow(report: Report, root: Path, params: dict) -> None:
    from biasloop.core.tracking import default_uri

    tracking = params.get("tracking") or {}
    if tracking.get("enabled") is False:
        report.add("info", "MLflow", "tracking.enabled is false: no runs recorded")
        return
    previous = os.environ.get("DVC_ROOT")
    os.environ["DVC_ROOT"] = str(root)  # where a stage run from this root writes
    try:
        uri = tracking.get("uri") or default_uri()
    finally:
        if previous is None:
            os.environ.pop("DVC_ROOT", None)
        else:
            os.environ["DVC_ROOT"] = previous
    experiment_name = tracking.get("experiment", "biasloop")
    if not uri.startswith("sqlite:///"):
        report.add("info", "MLflow", f"{uri}, experiment {experiment_name}")
        return
    database = Path(uri.removeprefix("sqlite:///"))
    if not database.exists():
        report.add("info", "MLflow", f"{uri} (not created yet: the first stage run makes it)")
        return
    try:
        import sqlite3

        with sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=10) as connection:
            counts = dict(
                connection.execute(
                    "SELECT r.status, COUNT(*) FROM runs r JOIN experiments e ON r.experiment_id = e.experiment_id "
                    "WHERE e.name = ? AND r.lifecycle_stage = 'active' GROUP BY r.status",
                    (experiment_name,),
                ).fetchall()
            )
    except Exception as exc:
        report.add("problem", "MLflow", f"{database} is not readable: {exc}")
        return
    summary = ", ".join(f"{n} {status}" for status, n in sorted(counts.items())) or "no runs"
    report.add("ok", "MLflow", f"{uri}, experiment {experiment_name}: {summary}")
    if counts.get("RUNNING"):
        report.add(
            "info",
            "MLflow RUNNING",
            f"{counts['RUNNING']} run(s) RUNNING: stages running now, or killed ones "
            "(marked KILLED when the next stage starts)",
        )
    report.add(
        "info", "MLflow UI", f"MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false mlflow ui --backend-store-uri {uri} --port 5000"
    )


def check_offline(report: Report, root: Path) -> None:
    settings = {name: os.environ.get(name, "unset") for name in ("HF_HUB_OFFLINE", "MLFLOW_DISABLE_TELEMETRY")}
    config = (root / ".dvc" / "config").read_text() if (root / ".dvc" / "config").exists() else ""
    analytics = "analytics = false" in config
    local = root / ".dvc" / "config.local"  # where `biasloop plots-template` records the template
    template = "html_template" in config + (local.read_text() if local.exists() else "")
    report.add(
        "ok" if analytics else "problem",
        "DVC analytics",
        "off" if analytics else "on: `dvc config core.analytics false`",
    )
    report.add(
        "info",
        "offline",
        ", ".join(f"{k}={v}" for k, v in settings.items())
        + f" (stages set them); dvc plots template: {'local vega' if template else 'CDN (needs network)'}",
    )


def run(args: argparse.Namespace) -> int:
    from biasloop.core.config import ConfigError, read_params

    root = Path(_git(Path.cwd(), "rev-parse", "--show-toplevel") or Path.cwd())
    report = Report()
    try:
        params = read_params(root / args.params if not Path(args.params).is_absolute() else args.params)
    except (ConfigError, FileNotFoundError) as exc:
        report.add("problem", "params", str(exc))
        params = {}
    check_environment(report, root)
    check_versions(report)
    check_threads(report, params)
    running = check_running(report, root)
    if not args.skip_dvc_status:
        check_dvc(report, root, running)
    check_mlflow(report, root, params)
    check_offline(report, root)
    if args.json:
        print(
            json.dumps(
                [{"level": level, "topic": topic, "text": text} for level, topic, text in report.lines], indent=1
            )
        )
    else:
        print(report.render())
        print(f"\n{report.problems} problem(s)" if report.problems else "\nno problems found")
    return 1 if report.problems else 0
