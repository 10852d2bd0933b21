"""Where and how fast models run: the device, and the torch CPU threads of a stage."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

from biasloop.core.config import ConfigError

QUEUE_WORKSPACE = os.sep.join(("", ".dvc", "tmp", "exps", ""))


def resolve_cpu_threads(threads: int, cwd: str | None = None, cpus: int | None = None) -> int:
    """CPU threads a stage may use: ``threads`` when positive; for 0 (automatic) every CPU, except in a
    queued experiment's temporary workspace (``.dvc/tmp/exps/...``, where ``dvc queue start -j N`` runs
    several experiments at once), which gets 1 thread so parallel workers do not oversubscribe the cores.

    Measured on 2 cores: a tiny-diffusion training step took 0.45 s with 1 thread and 0.23 s with 2 on an
    idle machine, but 1.1 s with 2 threads while another process used the other core.
    """
    if threads < 0:
        raise ConfigError(f"base.cpu_threads: expected 0 (automatic) or a positive count, found {threads}")
    if threads > 0:
        return threads
    if QUEUE_WORKSPACE in (cwd if cwd is not None else os.getcwd()) + os.sep:
        return 1
    if cpus is None:  # the CPUs this process may run on (a container or taskset may allow fewer than exist)
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, cpus)


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
