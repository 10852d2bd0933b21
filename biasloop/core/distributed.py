"""Several processes (GPUs, nodes) for the embarrassingly parallel stages (``generate@N``, ``label@N``),
with Hugging Face accelerate.

A stage whose ``num_processes`` param is above 1 re-runs itself under ``accelerate launch`` (or is
started under ``accelerate launch`` / ``torchrun`` by the user, e.g. across nodes). Work is split by
**batch index**: with batches ``b = 0, 1, ...`` of ``batch_size`` items, process ``r`` of ``P`` takes the
batches with ``b % P == r``. Every batch holds the same items whatever ``P`` is, and each item's seed
is fixed by its index, so the outputs do not depend on the number of processes (a test checks that 2
CPU processes write byte-identical images to 1; ``label@N`` deals its forward passes the same way,
``biasloop.models.instrument.labelling.label_units``, and a test checks its predictions file likewise). Each
process saves its part beside the output; after a barrier the main process merges the parts in index
order and writes the output atomically.

Launch facts (accelerate 1.15): on CPU ``accelerate launch --multi_gpu --num_processes 2
--main_process_port 0`` starts two processes (``--cpu --num_processes 2`` starts only one) and the
processes use ``PartialState(cpu=True)`` (gloo); on GPUs the same command without ``cpu``.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np


def launched_world() -> tuple[int, int]:
    """``(rank, world_size)`` of this process as set by ``accelerate launch`` / ``torchrun``; ``(0, 1)`` alone."""
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def process_batches(n_items: int, batch_size: int, rank: int, world: int) -> list[range]:
    """The item ranges (batches of ``batch_size``) process ``rank`` of ``world`` handles: batch ``b`` goes to
    process ``b % world``."""
    if batch_size < 1 or world < 1 or not 0 <= rank < world:
        raise ValueError(f"bad split: batch_size={batch_size}, rank={rank}, world={world}")
    starts = range(0, n_items, batch_size)
    return [range(s, min(s + batch_size, n_items)) for b, s in enumerate(starts) if b % world == rank]


def relaunch_command(module: str, argv: Sequence[str], num_processes: int, device: str) -> list[str]:
    """The ``accelerate launch`` command running ``python -m module argv`` in ``num_processes`` processes."""
    return [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--num_processes",
        str(num_processes),
        "--num_machines",
        "1",
        "--multi_gpu",
        "--main_process_port",
        "0",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "-m",
        module,
        *argv,
    ]


def relaunch(module: str, argv: Sequence[str], num_processes: int, device: str) -> None:
    """Run this stage again under ``accelerate launch``; raises RuntimeError when it fails."""
    command = relaunch_command(module, argv, num_processes, device)
    completed = subprocess.run(command, check=False)
    if completed.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} exited with status {completed.returncode}")


def join_or_relaunch(
    module: str, argv: Sequence[str] | None, num_processes: int, device: str, tracking: Any
) -> tuple[ProcessGroup, Any] | None:
    """How a splittable stage starts: relaunched, or as one process of the group.

    With ``num_processes`` above 1 in a process nobody launched, run ``python -m module argv`` again
    under ``accelerate launch`` and return None (the caller returns: the launched processes did the
    work). Otherwise return this process's :class:`ProcessGroup` and the tracking config it uses:
    ``tracking`` on the main process, tracking turned off on the others (one MLflow run per stage).

    Args:
        module: the stage's module (``stages.generate``).
        argv: the stage's arguments (None: ``sys.argv[1:]``).
        num_processes: the stage's ``num_processes`` param.
        device: the resolved ``base.device``.
        tracking: the stage's ``TrackingConfig`` (a dataclass with ``enabled``).
    """
    if num_processes > 1 and launched_world()[1] == 1:
        logging.getLogger(module.rpartition(".")[2]).info(
            "re-running under accelerate launch with %d processes", num_processes
        )
        relaunch(module, list(argv) if argv is not None else sys.argv[1:], num_processes, device)
        return None
    group = ProcessGroup(device)
    return group, (tracking if group.is_main else dataclasses.replace(tracking, enabled=False))


class ProcessGroup:
    """The launched processes (accelerate's ``PartialState``); a no-op group of one when not launched."""

    def __init__(self, device: str) -> None:
        self.rank, self.world = launched_world()
        self._state = None
        if self.world > 1:
            from accelerate import PartialState

            self._state = PartialState(cpu=device == "cpu")
            self.rank, self.world = self._state.process_index, self._state.num_processes

    def device(self, device: str) -> str:
        """This process's device: ``cuda`` becomes ``cuda:<LOCAL_RANK>`` when launched on several GPUs."""
        if self.world > 1 and device == "cuda":
            return f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
        return device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self._state is not None:
            self._state.wait_for_everyone()

    def gather(self, parts_dir: Path, indices: np.ndarray, arrays: np.ndarray) -> np.ndarray | None:
        """Merge every process's ``arrays`` (rows at ``indices``) in index order; the main process gets
        the merged array, the others None. ``parts_dir`` must be shared by the processes (one node, or a
        shared file system) and is removed afterwards."""
        if self.world == 1:
            return arrays[np.argsort(indices, kind="stable")]
        parts_dir.mkdir(parents=True, exist_ok=True)
        np.savez(parts_dir / f"part-{self.rank:05d}.npz", indices=indices, arrays=arrays)
        self.barrier()
        merged = None
        if self.is_main:
            parts = [np.load(parts_dir / f"part-{r:05d}.npz") for r in range(self.world)]
            parts = [p for p in parts if len(p["indices"])]  # a process may have had no batch
            all_indices = np.concatenate([p["indices"] for p in parts])
            merged = np.concatenate([p["arrays"] for p in parts])[np.argsort(all_indices, kind="stable")]
            shutil.rmtree(parts_dir, ignore_errors=True)
        self.barrier()
        return merged
