"""Where and how fast models run: the device, and the torch CPU threads of a stage."""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Iterator

from biasloop.core.config import ConfigError

QUEUE_WORKSPACE = os.sep.join(("", ".dvc", "tmp", "exps", ""))
AUTO = "auto"  # base.cpu_threads: the free CPUs at stage start (an opt-in; results then depend on the load)


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
    threads: int | str,
    cwd: str | None = None,
    cpus: int | None = None,
    busy: int | None = None,
    environ: dict[str, str] | None = None,
) -> int:
    """CPU threads a stage uses: ``threads`` when it is a count (the default: the same count on every
    machine and at any load, so the numbers do not move with how busy the machine is); for ``auto`` (an
    opt-in for speed) the CPUs no other process is using (``cpus - busy``, at least 1), 1 in a queued
    experiment's temporary workspace (``.dvc/tmp/exps/...``, where ``dvc queue start -j N`` runs several
    experiments at once), and in a process started by ``accelerate launch`` for a stage's
    ``num_processes`` the count its launching stage chose (``OMP_NUM_THREADS``, set by
    :func:`apply_cpu_threads`), so every process of a stage runs with the thread count one process would.

    Why a fixed count: on Intel CPUs with AVX-512/AMX, MKL's float32 matrix products round differently
    with 1 and 2 threads (one byte of 3,072 generated in ``tests/test_stage_generate.py`` moved by 1;
    MiniLM vectors moved by 1.2e-7), and the difference grows over hundreds of training steps: a rerun
    on a busy machine that picked 1 thread changed every metric (instrument accuracy 0.9946 vs 0.9928). Why ``auto`` exists: torch's OpenMP threads meet at a barrier after every
    operation, so a thread that shares its core with another process stalls the others (measured on 2
    cores, ``benchmarks/threads.py``: 2 threads beside a busy process ran 3x slower than 2 threads idle).

    Args:
        threads: ``base.cpu_threads``: a positive count, or ``"auto"``.
        cwd: working directory (default: the current one).
        cpus: CPUs this process may run on (default: its affinity mask).
        busy: CPUs other processes keep busy (default: :func:`busy_cpus`).
        environ: the environment (default: ``os.environ``).

    Returns:
        The thread count, at least 1.
    """
    if threads != AUTO:
        if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
            raise ConfigError(f"base.cpu_threads: expected a positive count or '{AUTO}', found {threads!r}")
        return threads
    environ = os.environ if environ is None else environ
    launched = environ.get("OMP_NUM_THREADS", "")
    if environ.get("WORLD_SIZE", "1").strip() not in ("", "1") and launched.isdigit() and int(launched) > 0:
        return int(launched)
    if QUEUE_WORKSPACE in (cwd if cwd is not None else os.getcwd()) + os.sep:
        return 1
    if cpus is None:  # the CPUs this process may run on (a container or taskset may allow fewer than exist)
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    if busy is None:
        busy = busy_cpus()
    return max(1, cpus - busy)


def apply_cpu_threads(threads: int) -> None:
    """Make ``threads`` the CPU thread count of torch in this process and in the processes it starts.

    Sets ``OMP_NUM_THREADS`` and ``MKL_NUM_THREADS`` (torch reads both when it is imported, and
    ``MKL_NUM_THREADS`` wins: ``OMP_NUM_THREADS=1 MKL_NUM_THREADS=2`` runs 2 threads) and, where torch is
    already imported (a stage called in-process, as the tests do), ``torch.set_num_threads``, which sets
    OpenMP's and MKL's counts alike. Launched processes (``num_processes``) inherit the variables.
    """
    for variable in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[variable] = str(threads)
    torch = sys.modules.get("torch")
    if torch is not None and hasattr(torch, "set_num_threads"):
        torch.set_num_threads(threads)


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
