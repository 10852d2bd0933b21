"""The Ray executor: a study's cells as Ray tasks on a cluster, shared through DVC's experiment remotes.

``biasloop study run --executor ray [--address ray://head:10001]`` (docs/cluster.md). Each cell that
the Git remote does not already hold becomes one Ray task (:func:`biasloop.study.cell.run_cell`) that
clones the baseline commit (this checkout's HEAD, which must be on the Git remote) into its node's
scratch space, runs ``dvc exp run`` with the cell's ``-S`` overrides and name, and pushes the experiment
with ``dvc exp push`` to the Git remote and DVC remote (``study.ray``). Ray reserves ``study.ray.cpus``
CPUs and ``study.ray.gpus`` GPUs per cell, and runs a failed or killed cell again up to
``study.ray.retries`` times (``max_retries`` with ``retry_exceptions``). A line is printed per finished
cell; a cell failed after its last attempt is listed with its log (node and path) and exit status.
Ctrl-C cancels the cells not finished (``ray.cancel``: a running cell stops its commands).
``biasloop study collect --pull`` then fetches the experiments (``dvc exp pull``) before aggregating.

Without an address, a local Ray instance is started on this machine with ``study.jobs x study.ray.cpus``
CPUs, every server on the loopback address, no dashboard and no usage statistics. ``import ray`` happens
only here, so the DVC-queue executor never needs Ray.
"""

from __future__ import annotations

import os
import subprocess
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from biasloop.core.config import read_params
from biasloop.study.cell import CellFailed, CellJob, run_cell
from biasloop.study.config import StudyConfig, check_param_paths
from biasloop.study.experiments import git_remote_url, remote_experiment_names
from biasloop.study.grid import cell_overrides, format_seconds, study_cells

LOOPBACK = "127.0.0.1"


def _git(args: list[str], repo: str | Path) -> str:
    result = subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"`git {' '.join(args)}` exited with {result.returncode}: {result.stderr.strip()}")
    return result.stdout.strip()


def baseline_commit(repo: str | Path, git_url: str) -> str:
    """This checkout's HEAD, checked to be what the cells will run: no change to a tracked file (the
    cells clone the commit, not this folder), and the commit on the Git remote (contained in one of
    its branches or tags as far as this checkout knows them).

    Raises:
        RuntimeError: naming the changed files, or the ``git push`` that is missing.
    """
    head = _git(["rev-parse", "HEAD"], repo)
    changed = _git(["status", "--porcelain", "--untracked-files=no"], repo)
    if changed:
        raise RuntimeError(
            f"tracked files differ from HEAD ({', '.join(line[3:] for line in changed.splitlines()[:5])}): "
            "the cells run the commit, not this folder; commit (and push) first"
        )
    tips = [line.split()[0] for line in _git(["ls-remote", git_url], repo).splitlines() if line.strip()]
    for tip in tips:
        known = subprocess.run(["git", "cat-file", "-e", f"{tip}^{{commit}}"], cwd=repo, capture_output=True)
        if (
            known.returncode == 0
            and subprocess.run(
                ["git", "merge-base", "--is-ancestor", head, tip], cwd=repo, capture_output=True
            ).returncode
            == 0
        ):
            return head
    raise RuntimeError(f"the baseline commit {head[:7]} is not on the Git remote {git_url}: `git push` it first")


def cell_jobs(
    config: StudyConfig,
    params_path: str | Path = "params.yaml",
    *,
    repo: str | Path = ".",
    rerun: bool = False,
    dvc: str = "dvc",
    echo: Callable[[str], None] = print,
) -> list[CellJob]:
    """The study's cells that the Git remote does not hold yet (every cell with ``rerun``), as jobs.

    Raises:
        ConfigError: naming a param path of the study that the params file does not have.
        RuntimeError: when the baseline commit is not what the cells would run (:func:`baseline_commit`).
    """
    params = read_params(params_path)
    check_param_paths(config, params)  # before anything runs: a misspelt path would fail every cell
    settings = config.settings.ray
    git_url = git_remote_url(settings.git_remote, repo)
    baseline = baseline_commit(repo, git_url)
    done = set(remote_experiment_names(git_url, rev=baseline, dvc=dvc, cwd=str(repo)))
    jobs = []
    for cell in study_cells(config):
        if cell.name in done and not rerun:
            echo(f"{cell.name}: already on {git_url}; not run again")
            continue
        overrides = tuple(cell_overrides(cell, config, params))
        jobs.append(
            CellJob(
                study=config.name,
                name=cell.name,
                overrides=overrides,
                git_url=git_url,
                baseline_rev=baseline,
                dvc_remote=settings.dvc_remote,
                scratch=settings.scratch,
                force=cell.name in done,
                dvc=dvc,
            )
        )
    return jobs


def start_ray(config: StudyConfig, address: str | None, echo: Callable[[str], None] = print, jobs: int | None = None):
    """``ray.init`` on the cluster at ``address`` (``study.ray.address`` when None), or a local instance.

    The local instance: ``jobs`` (None: ``study.jobs``) cells at once, so ``jobs x study.ray.cpus`` CPUs (and as many GPUs per cell as asked), every
    server bound to the loopback address, no dashboard. Ray turns ``_node_ip_address="127.0.0.1"`` into
    the machine's own address unless told that it runs on one machine (``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``,
    read into ``ray_constants.ENABLE_RAY_CLUSTER`` when ray is imported, checked in Ray 2.60), so both are
    set, and the node's address is checked after the start.

    Returns:
        The ``ray`` module, initialised.
    """
    address = address or config.settings.ray.address
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if not address:
        os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # for Ray's own processes
    try:
        import ray
        import ray._private.ray_constants
        import ray.cloudpickle
    except ImportError as exc:
        raise RuntimeError("the ray executor needs Ray: `make venv` installs it (docs/cluster.md)") from exc
    import biasloop.study.cell

    # The task body travels by value: a node needs dvc and git, not this checkout's biasloop.
    ray.cloudpickle.register_pickle_by_value(biasloop.study.cell)
    if address:
        context = ray.init(address=address, log_to_driver=False)
        if getattr(context, "dashboard_url", None):
            echo(f"Ray dashboard: http://{context.dashboard_url} (the cells are tasks named biasloop:<cell>)")
        return ray
    ray._private.ray_constants.ENABLE_RAY_CLUSTER = False  # the same, for a ray imported before the variable was set
    settings = config.settings.ray
    ray.init(
        num_cpus=max(1, round((jobs or config.jobs) * settings.cpus)),
        num_gpus=round((jobs or config.jobs) * settings.gpus),
        include_dashboard=False,
        _node_ip_address=LOOPBACK,
        log_to_driver=False,
    )
    addresses = {node["NodeManagerAddress"] for node in ray.nodes()}
    if addresses != {LOOPBACK}:
        ray.shutdown()
        raise RuntimeError(f"the local Ray instance is not on the loopback address only: {sorted(addresses)}")
    return ray


def run_jobs(
    ray: Any, jobs: list[CellJob], config: StudyConfig, echo: Callable[[str], None] = print
) -> list[dict[str, Any]]:
    """Submit every job as a Ray task, print a line per finished cell, and return the failed ones.

    Returns:
        One record per cell failed after its last attempt: ``name``, ``log`` (``host:path``, or the
        cell's folder on its node when its worker died), ``returncode`` (None when the worker died),
        ``error`` (the step and its exit status, or the worker's death) and ``tail`` (the log's last lines).

    Raises:
        KeyboardInterrupt: after cancelling the unfinished cells (Ctrl-C).
    """
    settings = config.settings.ray
    task = ray.remote(run_cell)
    options = {"num_cpus": settings.cpus, "num_gpus": settings.gpus}
    options.update(max_retries=settings.retries, retry_exceptions=True)  # a failed step, or a killed worker
    refs = {task.options(name=f"biasloop:{job.name}", **options).remote(job): job for job in jobs}
    echo(
        f"submitted {len(jobs)} cell(s) to Ray ({settings.cpus:g} CPU, {settings.gpus:g} GPU each; "
        f"up to {settings.retries + 1} attempts); Ctrl-C cancels the unfinished ones"
    )
    pending, failed, start = list(refs), [], time.monotonic()
    try:
        while pending:
            ready, pending = ray.wait(pending, num_returns=1)
            for ref in ready:
                job = refs[ref]
                count = f"[{len(jobs) - len(pending)}/{len(jobs)}] {job.name}"
                after = format_seconds(time.monotonic() - start)
                try:
                    result = ray.get(ref)
                except Exception as exc:  # the cell's last attempt failed, or its worker died
                    failed.append(_failure(job, exc))
                    echo(f"{count}: failed after {after}: {failed[-1]['error']}; log: {failed[-1]['log']}")
                    if failed[-1]["tail"]:
                        echo(textwrap.indent(failed[-1]["tail"], "    "))
                    continue
                echo(f"{count}: success after {after} on {result['host']} (attempt {result['attempt']})")
    except KeyboardInterrupt:
        for ref in pending:
            ray.cancel(ref)  # a running cell gets KeyboardInterrupt and stops its commands
        ray.wait(pending, num_returns=len(pending), timeout=30)
        echo(f"cancelled {len(pending)} unfinished cell(s): {', '.join(refs[r].name for r in pending)}")
        raise
    return failed


def _failure(job: CellJob, exc: Exception) -> dict[str, Any]:
    cause = getattr(exc, "cause", None) or exc
    if isinstance(cause, CellFailed):
        error = f"{cause.step} exited with {cause.returncode}"
        return {"name": job.name, "log": cause.log, "returncode": cause.returncode, "error": error, "tail": cause.tail}
    return {
        "name": job.name,
        "log": f"{job.folder()} on its node",
        "tail": "",
        "returncode": None,
        "error": f"{type(cause).__name__}: {str(cause).splitlines()[0] if str(cause) else ''}",
    }


def run_study_ray(
    config: StudyConfig,
    params_path: str | Path = "params.yaml",
    *,
    address: str | None = None,
    jobs: int | None = None,
    rerun: bool = False,
    dry_run: bool = False,
    repo: str | Path = ".",
    dvc: str = "dvc",
    echo: Callable[[str], None] = print,
) -> list[dict[str, Any]]:
    """Run the study's cells that the Git remote lacks on Ray, and return the failed ones (see the
    module docstring). ``jobs``: cells at once on a local instance (None: ``study.jobs``); ``dry_run``:
    print the cells and their overrides, start nothing."""
    to_run = cell_jobs(config, params_path, repo=repo, rerun=rerun, dvc=dvc, echo=echo)
    for job in to_run:
        echo(
            ("would run: " if dry_run else "") + f"{job.name}: dvc exp run {' '.join('-S ' + o for o in job.overrides)}"
        )
    if dry_run or not to_run:
        return []
    ray = start_ray(config, address, echo, jobs)
    try:
        return run_jobs(ray, to_run, config, echo)
    finally:
        ray.shutdown()
