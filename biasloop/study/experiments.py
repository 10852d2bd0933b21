"""DVC experiments as records: run ``dvc exp show --json`` and read what it prints.

The JSON (DVC 3.x, checked with DVC 3.67 on a small repo) is a list with one entry per revision: first
the workspace, then each baseline commit::

    [{"rev": "workspace", "name": null, "data": {...}, "error": null, "experiments": null},
     {"rev": "<baseline sha>", "name": "main", "data": {...}, "error": null,
      "experiments": [
        {"name": "study-default-r0.4-s1",
         "executor": {"state": "success" | "failed" | "queued" | "running", "name": ..., "local": {...}},
         "revs": [{"rev": "<experiment commit sha>", "name": "study-default-r0.4-s1", "error": null,
                   "experiments": null,
                   "data": {"rev": ..., "timestamp": "2026-11-26T15:27:36",
                            "params": {"params.yaml": {"data": {...}}},
                            "metrics": {"metrics/summary.json": {"data": {...}}},
                            "deps": {...}, "outs": {...}, "meta": {}}}]}]}]

``executor`` is null for experiments that did not come from the queue (``dvc exp run`` in the
workspace, or pulled from a remote); they are finished. A failed experiment's ``data.metrics`` are the
baseline's (stale), and a queued one's are empty: metrics are read only from successful experiments.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

STATES = ("success", "failed", "queued", "running")

METRICS_FILE = "metrics/summary.json"  # the headline file dvc.yaml declares under `metrics:`
PARAMS_FILE = "params.yaml"


@dataclass(frozen=True)
class Experiment:
    """One DVC experiment as `dvc exp show --json` reports it.

    Attributes:
        name: the experiment name (``--name``).
        rev: the experiment's commit (its own git revision: baseline + params changes + results);
            for a queued or failed one, the stash entry DVC queued.
        baseline_rev: the commit the experiment was derived from.
        baseline_name: the branch or tag of the baseline, when it has one.
        state: ``success``, ``failed``, ``queued`` or ``running``.
        params: ``params.yaml`` as the experiment ran it.
        metrics: ``metrics/summary.json`` of a successful experiment; None otherwise.
        error: DVC's error message, when it reports one.
        timestamp: ISO time of the experiment's commit (None when unknown).
        log: path of the queue worker's log file, when DVC reports one.
    """

    name: str
    rev: str
    baseline_rev: str
    baseline_name: str | None
    state: str
    params: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] | None = None
    error: str | None = None
    timestamp: str | None = None
    log: str | None = None


def _file_data(section: dict | None, path: str) -> dict[str, Any] | None:
    entry = (section or {}).get(path)
    if not isinstance(entry, dict):
        return None
    data = entry.get("data")
    return data if isinstance(data, dict) else None


def parse_exp_show(data: list[dict[str, Any]]) -> list[Experiment]:
    """Every experiment in ``dvc exp show --json`` output, in the order DVC lists them.

    Args:
        data: the parsed JSON (a list of revision entries; see the module docstring for the shape).

    Returns:
        One :class:`Experiment` per experiment under any baseline (the workspace and the baseline
        commits themselves are not experiments and are left out).

    Raises:
        ValueError: when ``data`` is not in the shape ``dvc exp show --json`` prints.
    """
    if not isinstance(data, list):
        raise ValueError(f"dvc exp show --json: expected a list of revisions, found {type(data).__name__}")
    experiments: list[Experiment] = []
    for baseline in data:
        if not isinstance(baseline, dict) or "rev" not in baseline:
            raise ValueError(f"dvc exp show --json: a revision entry without 'rev': {str(baseline)[:200]}")
        for group in baseline.get("experiments") or []:
            executor = group.get("executor") or {}
            revs = group.get("revs") or []
            if not revs:
                continue
            last = revs[0]
            exp_data = last.get("data") or {}
            error = last.get("error")
            state = executor.get("state") or ("failed" if error else "success")
            if state not in STATES:
                raise ValueError(f"dvc exp show --json: experiment {group.get('name')!r} has unknown state {state!r}")
            local = executor.get("local") or {}
            experiments.append(
                Experiment(
                    name=group.get("name") or last.get("name") or last["rev"][:7],
                    rev=last["rev"],
                    baseline_rev=baseline["rev"],
                    baseline_name=baseline.get("name"),
                    state=state,
                    params=_file_data(exp_data.get("params"), PARAMS_FILE) or {},
                    metrics=_file_data(exp_data.get("metrics"), METRICS_FILE) if state == "success" else None,
                    error=(error or {}).get("msg") if isinstance(error, dict) else error,
                    timestamp=exp_data.get("timestamp"),
                    log=local.get("log"),
                )
            )
    return experiments


def latest_by_name(experiments: list[Experiment], prefix: str = "") -> dict[str, Experiment]:
    """Experiments whose name starts with ``prefix``, by name; the newest when a name appears under
    several baselines (``--all-commits``)."""
    found: dict[str, Experiment] = {}
    for exp in experiments:
        if exp.name.startswith(prefix):
            current = found.get(exp.name)
            if current is None or (exp.timestamp or "") > (current.timestamp or ""):
                found[exp.name] = exp
    return found


EXP_SHOW_ATTEMPTS = 5  # tries of `dvc exp show` when a worker's workspace is half made


DVC_TIMEOUT_SECONDS = 300.0  # one DVC command; `dvc exp show` can wait on the queue's lock indefinitely


class DvcTimeout(RuntimeError):
    """A DVC command that did not finish in its time (it was killed)."""


def run_dvc(args: list[str], dvc: str = "dvc", cwd: str | None = None, timeout: float = DVC_TIMEOUT_SECONDS) -> str:
    """Run ``dvc ARGS`` and return its stdout.

    Args:
        timeout: seconds the command may take; it is killed after that. A bound matters while a queue
            runs: ``dvc exp show`` takes the experiments' lock and has been seen to wait on it for good,
            holding up the worker too (treeverse/dvc#8762).

    Raises:
        RuntimeError: naming the command and quoting DVC's stderr when it exits non-zero.
        DvcTimeout: naming the command when it ran past ``timeout``.
        FileNotFoundError: when the ``dvc`` executable is not on PATH.
    """
    if dvc == "dvc" and shutil.which("dvc") is None and (Path(sys.executable).parent / "dvc").is_file():
        dvc = str(Path(sys.executable).parent / "dvc")  # `.venv/bin/biasloop` run without the venv on PATH
    # Files, not pipes: `dvc queue start` leaves a daemon worker holding its stdout, and reading a pipe
    # to its end would wait for the worker (the whole queue) to finish.
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        try:
            returncode = subprocess.run(
                [dvc, *args], stdout=out, stderr=err, stdin=subprocess.DEVNULL, cwd=cwd, timeout=timeout
            ).returncode
        except FileNotFoundError as exc:
            raise FileNotFoundError(f"{dvc}: not found (activate the project's environment)") from exc
        except subprocess.TimeoutExpired as exc:
            raise DvcTimeout(f"`{dvc} {' '.join(args)}` did not finish in {timeout:.0f} s; it was stopped") from exc
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    if returncode != 0:
        raise RuntimeError(f"`{dvc} {' '.join(args)}` exited with {returncode}:\n{stderr.strip()[-2000:]}")
    return stdout


def exp_show(rev: str | None = None, all_commits: bool = False, dvc: str = "dvc", cwd: str | None = None) -> list[dict]:
    """``dvc exp show --json`` for the baseline ``rev`` (HEAD when None), or every commit.

    Returns:
        The parsed JSON, as :func:`parse_exp_show` reads it.
    """
    args = ["exp", "show", "--json"]
    if all_commits:
        args.append("--all-commits")
    elif rev:
        args += ["--rev", rev]
    for attempt in range(EXP_SHOW_ATTEMPTS):
        try:
            out = run_dvc(args, dvc=dvc, cwd=cwd)
            break
        except RuntimeError as exc:
            # While a queue worker creates or removes an experiment's temporary workspace, DVC can fail
            # to list it ("directory '.dvc/tmp/exps/tmp.../.dvc' does not exist"); the next look succeeds.
            # A look stopped for taking too long is tried again too.
            retry = isinstance(exc, DvcTimeout) or "does not exist" in str(exc)
            if not retry or attempt == EXP_SHOW_ATTEMPTS - 1:
                raise
            time.sleep(2.0)
    try:
        return json.loads(out or "[]")
    except json.JSONDecodeError as exc:
        raise ValueError(f"`dvc {' '.join(args)}` printed something that is not JSON: {out[:200]!r}") from exc


def git_remote_url(remote: str, repo: str | Path = ".") -> str:
    """The URL (or absolute path) of ``remote``: a name of ``repo``'s Git remotes, or a URL or path.

    A relative path is made absolute against ``repo``, so a clone elsewhere (a cluster's node) reads the
    same remote.

    Raises:
        RuntimeError: when ``remote`` is none of these.
    """
    names = subprocess.run(["git", "remote"], cwd=repo, capture_output=True, text=True).stdout.split()
    if remote in names:
        remote = subprocess.run(
            ["git", "remote", "get-url", remote], cwd=repo, capture_output=True, text=True, check=True
        ).stdout.strip()
    if "://" in remote or re.match(r"^[\w.-]+@[\w.-]+:", remote):  # a URL, or scp-like user@host:path
        return remote
    path = (Path(repo) / remote).resolve()
    if not path.exists():
        raise RuntimeError(
            f"Git remote {remote!r}: neither a remote of this repository ({', '.join(names) or 'none'}; "
            "`git remote add NAME URL`) nor a URL or an existing path (study.ray.git_remote)"
        )
    return str(path)


def remote_experiment_names(
    git_url: str, rev: str | None = None, all_commits: bool = False, dvc: str = "dvc", cwd: str | None = None
) -> list[str]:
    """Names of the experiments on a Git remote (``dvc exp list URL --name-only``) derived from ``rev``
    (HEAD when None), or from every commit."""
    args = ["exp", "list", git_url, "--name-only"]
    if all_commits:
        args.append("--all-commits")
    elif rev:
        args += ["--rev", rev]
    return [line.strip() for line in run_dvc(args, dvc=dvc, cwd=cwd).splitlines() if line.strip()]


def pull_experiments(
    git_url: str,
    names: list[str],
    *,
    present: set[str] | frozenset[str] = frozenset(),
    rev: str | None = None,
    all_commits: bool = False,
    dvc: str = "dvc",
    cwd: str | None = None,
) -> tuple[list[str], list[str]]:
    """Fetch the named experiments from a Git remote that are not here yet (``dvc exp pull --no-cache``).

    Only the experiments' commits come (``metrics/summary.json`` and params are in them, which is what a
    study's aggregation reads); ``dvc exp pull REMOTE NAME`` fetches one's data too. Running it again
    fetches nothing new: an experiment already ``present`` is left as it is.

    Returns:
        (pulled, not on the remote): the names fetched now, and those the remote does not have.
    """
    on_remote = set(remote_experiment_names(git_url, rev=rev, all_commits=all_commits, dvc=dvc, cwd=cwd))
    wanted = [n for n in names if n in on_remote and n not in present]
    if wanted:
        run_dvc(["exp", "pull", "--no-cache", git_url, *wanted], dvc=dvc, cwd=cwd)
    return wanted, [n for n in names if n not in on_remote and n not in present]
