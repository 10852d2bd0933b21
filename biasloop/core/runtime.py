"""Where and how fast models run: the device, and the torch CPU threads of a stage."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator

from biasloop.core.config import ConfigError

QUEUE_WORKSPACE = os.sep.join(("", ".dvc", "tmp", "exps", ""))


def _procs_running(proc: str) -> int | None:
    """Runnable threads on the machine, this one included (``procs_running`` of ``/proc/stat``)."""
    try:
        with open(f"{proc}/stat", "rb") as handle:
            for line in handle:
                if line.startswith(b"procs_running "):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return None


def busy_cpus(samples: int = 3, interval: float = 0.05, proc: str = "/proc") -> int:
    """CPUs other processes keep busy now: runnable threads (state R) of other processes at normal or
    higher priority, the fewest seen over ``samples`` looks ``interval`` seconds apart (a CPU-bound
    process is runnable at every look; a short blip is not). Niced work (the background MLflow logger)
    does not count: the scheduler gives way to us. 0 where ``/proc`` cannot be read.
    """
    own = os.getpid()
    counts = []
    for look in range(max(1, samples)):
        if look:
            time.sleep(interval)
        if _procs_running(proc) == 1:  # only this process is runnable: an idle machine, no scan needed
            return 0
        count = 0
        try:
            pids = [entry for entry in os.listdir(proc) if entry.isdigit() and int(entry) != own]
        except OSError:
            return 0
        for pid in pids:
            try:
                tasks = os.listdir(f"{proc}/{pid}/task")
            except OSError:
                continue
            for tid in tasks:
                try:
                    with open(f"{proc}/{pid}/task/{tid}/stat", "rb") as handle:
                        fields = handle.read().rsplit(b")", 1)[1].split()
                except (OSError, IndexError):
                    continue
                # fields[0] is the state; fields[16] the nice value (stat fields 3 and 19)
                if fields and fields[0] == b"R" and len(fields) > 16 and int(fields[16]) <= 0:
                    count += 1
        counts.append(count)
    return min(counts)


def resolve_cpu_threads(
    threads: int, cwd: str | None = None, cpus: int | None = None, busy: int | None = None
) -> int:
    """CPU threads a stage may use: ``threads`` when positive; for 0 (automatic) the CPUs no other
    process is using (``cpus - busy``, at least 1), and 1 in a queued experiment's temporary workspace
    (``.dvc/tmp/exps/...``, where ``dvc queue start -j N`` runs several experiments at once).

    Why: torch's OpenMP threads meet at a barrier after every operation, and the tiny models here run
    thousands of short operations, so a thread that shares its core with another process stalls the
    others at every barrier. Measured on 2 cores (``benchmarks/threads.py``, ``benchmarks/results/threads.json``):
    a tiny-diffusion step took 0.23 s with 2 threads on an idle machine and 0.45 s with 1, but 1.1 s
    with 2 threads while another process used the other core; one thread beside a busy process runs at
    its idle speed.

    Args:
        threads: ``base.cpu_threads`` (0: automatic).
        cwd: working directory (default: the current one).
        cpus: CPUs this process may run on (default: its affinity mask).
        busy: CPUs other processes keep busy (default: :func:`busy_cpus`).
    """
    if threads < 0:
        raise ConfigError(f"base.cpu_threads: expected 0 (automatic) or a positive count, found {threads}")
    if threads > 0:
        return threads
    if QUEUE_WORKSPACE in (cwd if cwd is not None else os.getcwd()) + os.sep:
        return 1
    if cpus is None:  # the CPUs this process may run on (a container or taskset may allow fewer than exist)
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    if busy is None:
        busy = busy_cpus()
    return max(1, cpus - busy)


def resolve_device(device: str) -> str:
    """``auto`` becomes ``cuda`` when a CUDA GPU is visible, else ``cpu``."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


@contextlib.contextmanager
def cpu_threads(threads: int | None, device: str = "cpu") -> Iterator[None]:
    """Run the block with ``threads`` torch CPU threads (no-op for None or a GPU device); restore after."""
    import torch

    if threads is None or not str(device).startswith("cpu"):
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(max(1, int(threads)))
    try:
        yield
    finally:
        torch.set_num_threads(before)
