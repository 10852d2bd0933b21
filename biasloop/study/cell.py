"""One study cell on a node of a cluster: clone the baseline commit, run the experiment, push it.

This is the body of the Ray executor's task (:mod:`biasloop.study.ray_executor`). In a fresh folder of
the node's scratch space it runs, each step's output appended to one log file per attempt:

1. ``git clone <git remote>`` and ``git checkout <baseline commit>``;
2. ``dvc pull --allow-missing --run-cache``: the baseline's outputs, so the stages a cell shares with the
   baseline are skipped as in a queued experiment, and the run cache of cells pushed before;
3. ``dvc exp run -S <override> ... --name <cell name>``: the cell, as ``dvc queue`` would run it;
4. ``dvc exp push --run-cache origin <cell name>``: the experiment's commit to the Git remote, its
   outputs and run cache to the DVC remote (``-r`` when one is named).

A step that exits non-zero raises :class:`CellFailed` naming the step, its exit status and the log; the
executor retries the cell (Ray's ``max_retries``). Each command runs in its own process group, recorded
in the cell's folder: a cell interrupted (``ray.cancel``) stops its group, and the next attempt on a
node stops what an attempt killed with its worker left running. The folder keeps the logs and loses the
clone once the experiment is pushed.

Standard library only: the executor ships this module to the nodes by value, so a node needs the
project's environment (``dvc``, ``git`` and what the stages import) but no installed biasloop.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

LOG_TAIL_LINES = 20
STOP_GRACE_SECONDS = 10.0  # SIGTERM, then SIGKILL after this long
WAIT_SECONDS = 1.0  # a cancelled cell stops its commands within about this long


@dataclass(frozen=True)
class CellJob:
    """What a node needs to run one cell.

    Attributes:
        study: the study's name (the scratch folder's name).
        name: the experiment name (``study-<study>-<label>-s<seed>``).
        overrides: the ``-S`` overrides of ``dvc exp run`` (grid.cell_overrides).
        git_url: the Git remote's URL or path, as seen from the nodes.
        baseline_rev: the commit every cell starts from (the driver's HEAD).
        dvc_remote: the DVC remote's name in the committed .dvc/config; None: its default remote.
        scratch: the folder cells clone into; None: the node's temporary folder.
        force: push over an experiment of the same name already on the remote (``--rerun``).
        dvc: the ``dvc`` command on the nodes.
        git: the ``git`` command on the nodes.
    """

    study: str
    name: str
    overrides: tuple[str, ...]
    git_url: str
    baseline_rev: str
    dvc_remote: str | None = None
    scratch: str | None = None
    force: bool = False
    dvc: str = "dvc"
    git: str = "git"

    def folder(self) -> Path:
        """``<scratch>/biasloop-study-<study>/<cell name>``: the cell's logs and, while it runs, its clone."""
        return Path(self.scratch or tempfile.gettempdir()) / f"biasloop-study-{self.study}" / self.name

    def steps(self, repo: Path) -> list[tuple[str, list[str], Path]]:
        """(step, command, working folder) in order."""
        remote = ["-r", self.dvc_remote] if self.dvc_remote else []
        run = [self.dvc, "exp", "run"]
        for override in self.overrides:
            run += ["-S", override]
        push = [self.dvc, "exp", "push", "--run-cache", *remote, *(["--force"] if self.force else [])]
        return [
            ("clone", [self.git, "clone", "--quiet", "--no-checkout", self.git_url, str(repo)], repo.parent),
            ("checkout", [self.git, "checkout", "--quiet", "--detach", self.baseline_rev], repo),
            ("pull", [self.dvc, "pull", "--allow-missing", "--run-cache", *remote], repo),
            ("run", [*run, "--name", self.name], repo),
            ("push", [*push, "origin", self.name], repo),
        ]


class CellFailed(RuntimeError):
    """A step of a cell exited non-zero.

    Attributes:
        name: the cell's experiment name.
        step: ``clone``, ``checkout``, ``pull``, ``run`` or ``push``.
        returncode: the step's exit status.
        log: ``host:path`` of the attempt's log file.
        tail: the log's last lines.
    """

    def __init__(self, name: str, step: str, returncode: int, log: str, tail: str) -> None:
        super().__init__(f"{name}: {step} exited with {returncode}; log: {log}\n{tail}")
        self.name, self.step, self.returncode, self.log, self.tail = name, step, returncode, log, tail

    def __reduce__(self):  # pickled across processes with every field
        return (CellFailed, (self.name, self.step, self.returncode, self.log, self.tail))


def run_cell(job: CellJob) -> dict[str, object]:
    """Run one attempt of ``job`` on this node (see the module docstring).

    Returns:
        ``name``, ``host``, ``log`` (path on ``host``), ``attempt`` (this node's attempt number) and
        ``seconds`` the attempt took.

    Raises:
        CellFailed: when a step exits non-zero (the clone is kept for a look; the next attempt removes it).
    """
    folder = job.folder()
    folder.mkdir(parents=True, exist_ok=True)
    stop_leftover(folder)
    attempt = len(list(folder.glob("attempt-*.log"))) + 1
    log = folder / f"attempt-{attempt}-{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}.log"
    host = socket.gethostname()
    repo = folder / "repo"
    shutil.rmtree(repo, ignore_errors=True)
    start = time.monotonic()
    with open(log, "a", encoding="utf-8") as out:
        out.write(f"# cell {job.name}, attempt {attempt} on {host}, baseline {job.baseline_rev}\n")
        for step, command, cwd in job.steps(repo):
            out.write(f"\n$ {' '.join(command)}\n")
            out.flush()
            returncode = _run_in_group(command, cwd, out, folder)
            if returncode != 0:
                out.close()
                tail = "\n".join(log.read_text(errors="replace").rstrip().splitlines()[-LOG_TAIL_LINES:])
                raise CellFailed(job.name, step, returncode, f"{host}:{log}", tail)
    shutil.rmtree(repo, ignore_errors=True)
    return {"name": job.name, "host": host, "log": str(log), "attempt": attempt, "seconds": time.monotonic() - start}


def _run_in_group(command: list[str], cwd: Path, out, folder: Path) -> int:
    """Run ``command`` in a new process group (recorded in ``folder/running.pgid``) and return its exit
    status; on any interruption (``ray.cancel`` raises KeyboardInterrupt here) stop the whole group first."""
    process = subprocess.Popen(
        command, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
    )
    marker = folder / "running.pgid"
    marker.write_text(str(process.pid))
    try:
        while True:  # short waits: Ray raises the cancel's KeyboardInterrupt only while Python code runs
            try:
                return process.wait(timeout=WAIT_SECONDS)
            except subprocess.TimeoutExpired:
                continue
    except BaseException:
        _stop_group(process.pid)
        raise
    finally:
        marker.unlink(missing_ok=True)


def _stop_group(pgid: int) -> None:
    """SIGTERM to process group ``pgid``, SIGKILL to what is left after STOP_GRACE_SECONDS."""
    for sig, wait in ((signal.SIGTERM, STOP_GRACE_SECONDS), (signal.SIGKILL, 0.0)):
        try:
            os.killpg(pgid, sig)
        except (ProcessLookupError, PermissionError):
            return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline and _group_alive(pgid):
            time.sleep(0.2)


def _group_alive(pgid: int) -> bool:
    """Whether a process of group ``pgid`` still runs (a zombie, exited but not yet reaped, does not)."""
    try:
        os.killpg(pgid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    if not Path("/proc").is_dir():
        return True
    return any(state != "Z" for state in _group_members(pgid).values())


def stop_leftover(folder: Path) -> bool:
    """Stop the process group an earlier attempt recorded in ``folder`` (its worker was killed, so its
    commands were not stopped); only when a process of that group still works inside ``folder``, so a
    process group id reused by an unrelated program is left alone. Returns whether one was stopped."""
    marker = folder / "running.pgid"
    try:
        pgid = int(marker.read_text())
    except (OSError, ValueError):
        return False
    inside = [pid for pid in _group_members(pgid) if _cwd_within(pid, folder)]
    if inside:
        _stop_group(pgid)
    marker.unlink(missing_ok=True)
    return bool(inside)


def _group_members(pgid: int) -> dict[int, str]:
    """Process id -> state letter (``R``, ``S``, ``Z``, ...) of each process of group ``pgid``, read from
    /proc (empty where there is no /proc)."""
    members = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if len(fields) > 2 and fields[2] == str(pgid):
            members[int(stat.parent.name)] = fields[0]
    return members


def _cwd_within(pid: int, folder: Path) -> bool:
    try:
        return Path(os.readlink(f"/proc/{pid}/cwd")).is_relative_to(folder.resolve())
    except OSError:
        return False
