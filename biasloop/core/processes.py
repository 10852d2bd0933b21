"""This checkout's running processes, found in ``/proc``, and stopping them by PID.

A process belongs to the checkout at ``root`` when it is one of the pipeline's kinds (``dvc``, a DVC
queue worker, ``python -m stages.<name>``, the background MLflow logger ``python -m
biasloop.core.tracking``) and either its working directory is ``root`` or below it (DVC's queue copies
run in ``root/.dvc/tmp/exps/...``), or an argument names a path in ``root`` (the logger's ``--spool``);
every descendant of such a process whose working directory is in ``root`` belongs to it too (a stage's
worker processes). Other checkouts' processes are never matched: ``/work/a`` is not inside
``/work/ab``, and a process working in another directory is not ours because it runs ``root``'s python.

:func:`stop` signals only the PIDs found here, each checked to still be the process found (its start
time in ``/proc/<pid>/stat``) right before it is signalled, so a recycled PID is never hit.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

PROC = Path("/proc")
KINDS = ("queue worker", "dvc", "stage", "mlflow logger", "child")  # the order stop() signals them in


@dataclass(frozen=True)
class ProcessInfo:
    """One process as ``/proc`` shows it."""

    pid: int
    ppid: int
    start: str  # start time in clock ticks since boot (stat field 22): with pid, names one process
    cwd: str | None  # None when /proc does not tell (another user's process)
    cmdline: tuple[str, ...]

    @property
    def command(self) -> str:
        return " ".join(self.cmdline)


@dataclass(frozen=True)
class CheckoutProcess:
    """A process of the checkout: what it is (one of ``KINDS``) and why it is the checkout's."""

    info: ProcessInfo
    kind: str
    why: str

    @property
    def pid(self) -> int:
        return self.info.pid

    def describe(self, width: int = 160) -> str:
        command = self.info.command
        command = command if len(command) <= width else command[: width - 3] + "..."
        return f"PID {self.pid} ({self.kind}, {self.why}): {command}"


def read_process(pid: int, proc: Path = PROC) -> ProcessInfo | None:
    """``/proc/<pid>``'s parent, start time, working directory and command line; None when it is gone
    (or a kernel thread, which has no command line)."""
    base = proc / str(pid)
    try:
        stat = (base / "stat").read_text()
        raw = (base / "cmdline").read_bytes()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[-1].split()
    if len(fields) < 20 or not raw:
        return None
    try:
        cwd: str | None = os.readlink(base / "cwd")
    except OSError:
        cwd = None
    cmdline = tuple(part.decode(errors="replace") for part in raw.rstrip(b"\0").split(b"\0"))
    return ProcessInfo(pid=pid, ppid=int(fields[1]), start=fields[19], cwd=cwd, cmdline=cmdline)


def list_processes(proc: Path = PROC) -> list[ProcessInfo]:
    """Every readable process in ``proc``."""
    try:
        pids = sorted(int(entry) for entry in os.listdir(proc) if entry.isdigit())
    except OSError:
        return []
    return [info for info in (read_process(pid, proc) for pid in pids) if info is not None]


def _within(path: str, root: str) -> bool:
    path = path.rstrip("/") or "/"
    return path == root or path.startswith(root.rstrip("/") + "/")


def _program(cmdline: tuple[str, ...]) -> tuple[str, list[str]]:
    """What a command line runs and its arguments: ``("dvc", [...])`` for ``dvc ...``,
    ``.../python .../bin/dvc ...`` and ``python .../dvc/__main__.py ...`` (``"-m dvc"`` for ``python -m dvc``);
    ``("-m stages.corpus", [...])`` for a module."""
    if not cmdline:
        return "", []
    first, rest = os.path.basename(cmdline[0]), list(cmdline[1:])
    if first.startswith("python"):
        options = []
        while rest and rest[0].startswith("-") and rest[0] != "-m":
            options.append(rest.pop(0))
        if rest[:1] == ["-m"] and len(rest) > 1:
            return f"-m {rest[1]}", rest[2:]
        if rest and not rest[0].startswith("-"):
            script = rest[0].rstrip("/")
            name = os.path.basename(script)
            if name == "__main__.py":  # dvc's daemon runs ``python .../site-packages/dvc/__main__.py ...``
                name = os.path.basename(os.path.dirname(script))
            return name, rest[1:]
        return first, rest
    return first, rest


def kind_of(cmdline: tuple[str, ...]) -> str | None:
    """Which of the pipeline's processes a command line is (``KINDS`` but "child"), or None."""
    program, args = _program(cmdline)
    if program in ("dvc", "-m dvc"):
        return "queue worker" if "queue-worker" in args else "dvc"
    if program.startswith("-m stages."):
        return "stage"
    if program == "-m biasloop.core.tracking":
        return "mlflow logger"
    return None


def _names_path_in(args: Iterable[str], root: str) -> bool:
    for arg in args:
        value = arg.split("=", 1)[1] if arg.startswith("-") and "=" in arg else arg
        if value.startswith("/") and _within(value, root):
            return True
    return False


def checkout_processes(
    root: str | Path, processes: Iterable[ProcessInfo] | None = None, *, proc: Path = PROC, exclude: Iterable[int] = ()
) -> list[CheckoutProcess]:
    """The processes of the checkout at ``root`` (see the module's docstring), in ``KINDS`` order.

    Args:
        root: the checkout (resolved here).
        processes: what ``/proc`` holds (read from ``proc`` when None).
        exclude: PIDs never to list; the caller and its ancestors are always left out.
    """
    root_text = str(Path(root).resolve())
    processes = list_processes(proc) if processes is None else list(processes)
    by_pid = {info.pid: info for info in processes}
    skip = set(exclude)
    pid = os.getpid()
    while pid > 1 and pid not in skip:  # never the caller or the shell that started it
        skip.add(pid)
        pid = by_pid[pid].ppid if pid in by_pid else 0
    found: dict[int, CheckoutProcess] = {}
    for info in processes:
        kind = kind_of(info.cmdline)
        if info.pid in skip or kind is None:
            continue
        if info.cwd is not None and _within(info.cwd, root_text):
            in_queue_copy = "/.dvc/tmp/exps/" in info.cwd[len(root_text) :] + "/"
            why = "in a DVC queue copy" if in_queue_copy else "works in the checkout"
        elif _names_path_in(_program(info.cmdline)[1], root_text):
            why = "its arguments name the checkout"
        else:
            continue
        found[info.pid] = CheckoutProcess(info, kind, why)
    children: dict[int, list[ProcessInfo]] = {}
    for info in processes:
        children.setdefault(info.ppid, []).append(info)
    todo = list(found)
    while todo:  # descendants working in the checkout: a stage's workers, the stage a dvc started
        parent = todo.pop()
        for child in children.get(parent, []):
            if child.pid in found or child.pid in skip or child.cwd is None or not _within(child.cwd, root_text):
                continue
            found[child.pid] = CheckoutProcess(child, kind_of(child.cmdline) or "child", f"started by PID {parent}")
            todo.append(child.pid)
    return sorted(found.values(), key=lambda p: (KINDS.index(p.kind), p.pid))


# ------------------------------------------------------------------------------------------- locks
def lock_holders(path: str | Path, proc: Path = PROC) -> list[int] | None:
    """PIDs holding a POSIX or flock lock on the file at ``path`` (``/proc/locks``): [] when none or when
    there is no such file, None when ``/proc/locks`` cannot be read. Waiters (``->`` lines) are not holders."""
    try:
        st = os.stat(path)
    except OSError:
        return []
    try:
        lines = (proc / "locks").read_text().splitlines()
    except OSError:
        return None
    holders = []
    for line in lines:
        fields = line.split()
        if len(fields) < 6 or fields[1] == "->":
            continue
        try:
            pid = int(fields[4])
            major, minor, inode = fields[5].split(":")
            same = (int(major, 16), int(minor, 16), int(inode)) == (os.major(st.st_dev), os.minor(st.st_dev), st.st_ino)
        except ValueError:
            continue
        if same and pid not in holders:
            holders.append(pid)
    return holders


# -------------------------------------------------------------------------------------------- stop
def _same_process(process: CheckoutProcess, proc: Path) -> bool:
    now = read_process(process.pid, proc)
    return now is not None and now.start == process.info.start


def _signal(process: CheckoutProcess, signum: int, proc: Path) -> bool:
    """Send ``signum`` to ``process`` if its PID still names it; True when sent."""
    if not _same_process(process, proc):
        return False
    try:
        os.kill(process.pid, signum)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def _alive(process: CheckoutProcess, proc: Path) -> bool:
    now = read_process(process.pid, proc)
    if now is None or now.start != process.info.start:
        return False
    try:  # a zombie (ended, not yet reaped by its parent) has ended
        return (proc / str(process.pid) / "stat").read_text().rsplit(")", 1)[-1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def stop(
    root: str | Path,
    *,
    timeout: float = 10.0,
    proc: Path = PROC,
    rounds: int = 3,
    say: Callable[[str], None] = print,
    exclude: Iterable[int] = (),
) -> list[CheckoutProcess]:
    """SIGTERM every process of the checkout at ``root``, wait up to ``timeout`` seconds, SIGKILL the rest.

    Looks again after each round (``rounds`` at most) for processes started meanwhile (the next stage of
    a ``dvc`` that was just signalled, a logger a stopping stage started). Returns the processes signalled.
    """
    signalled: dict[tuple[int, str], CheckoutProcess] = {}
    for _ in range(rounds):
        new = [
            p for p in checkout_processes(root, proc=proc, exclude=exclude) if (p.pid, p.info.start) not in signalled
        ]
        if not new:
            break
        for process in new:  # KINDS order: dvc and its queue workers first, so they start nothing more
            if _signal(process, signal.SIGTERM, proc):
                say(f"SIGTERM {process.describe()}")
                signalled[(process.pid, process.info.start)] = process
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and any(_alive(p, proc) for p in signalled.values()):
            time.sleep(0.1)
        for process in signalled.values():
            if _alive(process, proc) and _signal(process, signal.SIGKILL, proc):
                say(f"SIGKILL PID {process.pid} (still running {timeout:g} s after SIGTERM)")
    return list(signalled.values())
