"""``biasloop doctor``'s checks of DVC: ``dvc status``, this checkout's running processes, and who holds
DVC's locks (``.dvc/tmp/lock``, ``.dvc/tmp/rwlock``); a lock a live process holds is never to be deleted."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from biasloop.cli.doctor.findings import Report

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
    from biasloop.core.processes import PROC, checkout_processes, read_process

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
    _check_lock(report, root, tmp / "lock", proc, running, name)
    rwlock = tmp / "rwlock"
    if rwlock.exists():
        _check_rwlock(report, rwlock, proc, running, name)
    return running


def _check_lock(report: Report, root: Path, lock: Path, proc: Path, running: list, name: Callable[[int], str]) -> None:
    """DVC's repository lock: held by a live dvc (in use), left by a killed one (hardlink locks only), or free."""
    from biasloop.core.processes import lock_holders

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


def _check_rwlock(report: Report, rwlock: Path, proc: Path, running: list, name: Callable[[int], str]) -> None:
    """DVC's read/write lock: entries of live processes (in use), of recycled PIDs, or of ended ones."""
    from biasloop.core.processes import kind_of, read_process

    ours = {process.pid for process in running}
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
        return
    live = {pid: (cmd, read_process(pid, proc)) for pid, cmd, _ in users if pid > 0}
    live = {pid: (cmd, info) for pid, (cmd, info) in live.items() if info is not None}
    # a live dvc, or a process whose working directory is hidden from us (another user's), may be using it
    using = {
        pid: cmd
        for pid, (cmd, info) in live.items()
        if pid in ours or kind_of(info.cmdline) is not None or info.cwd is None
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
