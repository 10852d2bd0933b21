"""A study grid: the cells of a named study (``studies.<name>`` of params.yaml) and DVC's queue running them.

Every cell is an ordinary DVC experiment queued with ``dvc exp run --queue -S <path>=<value> ...
--name study-<name>-<cell>-s<seed>``: it differs from the baseline, and from every other cell, only by
its variant's and axes' params and the seed params (and, when the study's ``generations`` differs from
the ``generations`` list of ``params.yaml``, the same generation lists for every cell). The generation
axis is read from each cell's per-generation metrics, so it costs no extra runs.

Cell names are deterministic and readable: the variant's name, then one ``<label><value>`` part per
axis in the declared order, where the label is the param's last path component (``guidance_scale1.5``,
``snr_gamma0``; the full path with ``_`` for ``.`` when two axes share it; ``r`` for
``synthetic_ratio``, as before), then ``s<seed>``: ``study-default-r0.4-s1``,
``study-generator-guidance_scale1.5-snr_gamma0-train_steps300-s3``, ``study-loop-accumulate-r0.8-s0``.

Cells are queued cell-major (every seed of the first cell, then the next cell; the first axis
outermost): DVC's workers take the queue in order, so the first workers run different seeds, and a
later cell finds the stages it shares with an earlier cell of the same seed (the corpus when only
training params differ; every training stage when only sampling params differ) in DVC's run cache
instead of recomputing them. Queued experiments do use the run cache (checked with DVC 3.67:
docs/studies.md); two workers running the same stage at once both compute it.
"""

from __future__ import annotations

import itertools
import re
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from biasloop.core.config import read_params
from biasloop.core.processes import checkout_processes
from biasloop.study.config import VARIANT, StudyConfig, check_param_paths, same_value
from biasloop.study.experiments import exp_show, latest_by_name, parse_exp_show, run_dvc

RATIO_PARAM = "synthetic_ratio"
LABELS = {RATIO_PARAM: "r"}  # short labels kept from the first studies' cell names


@dataclass(frozen=True)
class Cell:
    """One experiment of a study: a cell of the grid for one seed.

    Attributes:
        name: the experiment name, ``study-<study>-<label>-s<seed>``.
        label: the cell's part of the name, without study and seed (``r0.4``, ``replace-r0.8``).
        coords: axis -> value, ``variant`` first when the study has variants, then the axis paths.
        setting: param path -> value the cell sets (the variant's params, then the axes').
        seed: the replicate seed (every ``study.seed_params`` param is set to it).
    """

    name: str
    label: str
    coords: tuple[tuple[str, Any], ...]
    setting: tuple[tuple[str, Any], ...]
    seed: int


def format_value(value: Any) -> str:
    """A param value as cell names spell it: ``0.4`` -> ``0.4``, ``0.0`` -> ``0``, ``True`` -> ``true``."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:g}"
    return re.sub(r"[^A-Za-z0-9._-]", "_", str(value))


def format_ratio(ratio: float) -> str:
    """``0.4`` -> ``"0.4"``, ``0.0`` -> ``"0"``: the spelling used in cell names."""
    return format_value(float(ratio))


def axis_labels(paths: list[str]) -> dict[str, str]:
    """Axis path -> its label in cell names (see the module docstring)."""
    last = [p.rsplit(".", 1)[-1] for p in paths]
    return {
        p: LABELS.get(p) or (short if last.count(short) == 1 else p.replace(".", "_")) for p, short in zip(paths, last)
    }


def cell_label(config: StudyConfig, coords: dict[str, Any]) -> str:
    """The name part of the cell at ``coords`` (axis -> value): ``replace-r0.8``."""
    labels = axis_labels(list(config.spec.axes))
    parts = [str(coords[VARIANT])] if config.spec.variants else []
    parts += [f"{labels[path]}{format_value(coords[path])}" for path in config.spec.axes]
    return "-".join(parts)


def cell_name(config: StudyConfig, coords: dict[str, Any], seed: int) -> str:
    """``study-<name>-<label>-s<seed>``, e.g. ``study-default-r0.4-s1``."""
    return f"{config.prefix}{cell_label(config, coords)}-s{seed}"


def grid_points(config: StudyConfig) -> list[dict[str, Any]]:
    """Every combination of the study's variants and axis values (coords), first axis outermost."""
    axes = config.axis_names()
    return [dict(zip(axes, values)) for values in itertools.product(*(config.axis_values(a) for a in axes))]


def cell_setting(config: StudyConfig, coords: dict[str, Any]) -> dict[str, Any]:
    """Param path -> value that the cell at ``coords`` sets (without the seed params)."""
    setting = dict(config.spec.variants[coords[VARIANT]]) if config.spec.variants else {}
    setting.update({path: coords[path] for path in config.spec.axes})
    return setting


def matches(coords: dict[str, Any], fixed: dict[str, Any]) -> bool:
    """Whether the cell at ``coords`` has every axis value of ``fixed``."""
    return all(same_value(coords[axis], value) for axis, value in fixed.items())


def primary_points(config: StudyConfig) -> list[dict[str, Any]]:
    """The grid points a primary endpoint reads (they run ``seeds + primary_seeds``)."""
    points = []
    for point in grid_points(config):
        for endpoint in config.spec.endpoints.values():
            subtracted = {**endpoint.at, **(endpoint.minus or {})}
            if matches(point, endpoint.at) or (endpoint.minus is not None and matches(point, subtracted)):
                points.append(point)
                break
    return points


def study_cells(config: StudyConfig) -> list[Cell]:
    """Every experiment of the study in queue order: cell-major, seeds inner (see the module docstring)."""
    primary = primary_points(config)
    cells = []
    for point in grid_points(config):
        seeds = list(config.spec.seeds) + (list(config.spec.primary_seeds) if point in primary else [])
        setting = tuple(cell_setting(config, point).items())
        for seed in seeds:
            cells.append(
                Cell(
                    cell_name(config, point, seed), cell_label(config, point), tuple(point.items()), setting, int(seed)
                )
            )
    return cells


def _hydra_value(value: Any) -> str:
    """A params value in the override grammar DVC's ``-S`` reads (Hydra): lists, dicts, quoted strings."""
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_hydra_value(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ",".join(_hydra_value(v) for v in value) + "]"
    if isinstance(value, str):
        return "'" + value.replace("'", "\\'") + "'"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:g}" if "e" not in f"{value:g}" else repr(value)
    return str(value)


def generation_overrides(params: dict[str, Any], generations: int) -> list[str]:
    """``-S`` overrides (DVC's Hydra syntax) that give a cell ``generations`` generations.

    The edit is the one ``biasloop generations N`` makes to params.yaml (the ``generations`` list and
    the per-generation ``rounds`` and ``datasets`` mappings), written as overrides so the workspace's
    params.yaml is left alone: ``+key.n=...`` adds an item, ``key.n=...`` replaces one, ``~key.n``
    deletes one. Empty when params.yaml already has ``generations`` generations.
    """
    import yaml

    from biasloop.study.generations import rewrite_generations

    target = yaml.safe_load(rewrite_generations(yaml.safe_dump(params, sort_keys=False), generations))
    overrides = []
    for key in ("generations", "rounds", "datasets"):
        if key not in params and key not in target:
            continue
        current, wanted = params.get(key), target.get(key)
        if not isinstance(wanted, dict):
            if current != wanted:
                overrides.append(f"{key}={_hydra_value(wanted)}")
            continue
        current = {str(k): v for k, v in (current or {}).items()}
        wanted = {str(k): v for k, v in wanted.items()}
        order = sorted(set(current) | set(wanted), key=lambda k: (not k.isdigit(), int(k) if k.isdigit() else 0, k))
        for item in order:
            if item not in wanted:
                overrides.append(f"~{key}.{item}")
            elif current.get(item) != wanted[item]:
                overrides.append(f"{'+' if item not in current else ''}{key}.{item}={_hydra_value(wanted[item])}")
    return overrides


def cell_overrides(cell: Cell, config: StudyConfig, params: dict[str, Any]) -> list[str]:
    """Every ``-S`` override of a cell: its setting, the seed params, then the generation lists."""
    return (
        [f"{path}={_hydra_value(value)}" for path, value in cell.setting]
        + [f"{key}={cell.seed}" for key in config.seed_params]
        + generation_overrides(params, config.generations)
    )


def queue_command(cell: Cell, config: StudyConfig, params: dict[str, Any]) -> list[str]:
    """The ``dvc exp run --queue`` arguments (after ``dvc``) that queue ``cell``."""
    args = ["exp", "run", "--queue"]
    for override in cell_overrides(cell, config, params):
        args += ["-S", override]
    return args + ["--name", cell.name]


def format_seconds(seconds: float) -> str:
    """``75.2`` -> ``"1m15s"``, ``3725`` -> ``"1h02m05s"``: how long a cell or a study took."""
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else f"{minutes}m{secs:02d}s"


def run_study(
    config: StudyConfig,
    params_path: str | Path = "params.yaml",
    *,
    jobs: int | None = None,
    wait: bool = True,
    rerun: bool = False,
    dry_run: bool = False,
    dvc: str = "dvc",
    echo: Callable[[str], None] = print,
    sleep: Callable[[float], None] = time.sleep,
    timeout: float | None = None,
) -> list[str]:
    """Queue the study's cells that have not run, start the workers, and wait for every cell.

    A cell that already succeeded under the current baseline (HEAD) is kept (``rerun`` queues it again
    after ``dvc exp remove``); a queued or running one is waited for; a failed one is removed from the
    queue (``dvc queue remove``) and queued again. So running the command again resumes a study.

    Args:
        config: the study.
        params_path: the params file the cells start from (the workspace's ``params.yaml``).
        jobs: workers (``dvc queue start -j``); None: ``config.jobs``.
        wait: False: return after starting the workers.
        rerun: queue cells that already succeeded again.
        dry_run: print the commands, run nothing.
        dvc: the ``dvc`` executable.
        echo: where progress lines go.
        sleep: the wait between two looks at the queue (tests pass a no-op).
        timeout: seconds to wait at most (None: no limit); see :func:`wait_for_cells`.

    Returns:
        The names of the cells that failed (empty when every cell succeeded, or when not waiting).

    Raises:
        ConfigError: naming a param path of the study that the params file does not have.
    """
    params = read_params(params_path)
    check_param_paths(config, params)  # before anything is queued: a misspelt path would fail every cell
    cells = study_cells(config)
    existing = {} if dry_run else latest_by_name(parse_exp_show(exp_show(dvc=dvc)), config.prefix)
    to_queue: list[Cell] = []
    for cell in cells:
        exp = existing.get(cell.name)
        if exp is None:
            to_queue.append(cell)
        elif exp.state == "failed":
            echo(f"{cell.name}: failed before; removing it from the queue and queueing it again")
            if not dry_run:
                run_dvc(["queue", "remove", cell.name], dvc=dvc)
            to_queue.append(cell)
        elif exp.state == "success" and rerun:
            echo(f"{cell.name}: succeeded before; removing it to run it again (--rerun)")
            run_dvc(["exp", "remove", cell.name], dvc=dvc)
            to_queue.append(cell)
        else:
            echo(f"{cell.name}: already {exp.state} ({exp.rev[:7]}); not queued again")
    overrides = generation_overrides(params, config.generations)
    if overrides:
        echo(f"every cell runs {config.generations} generations: {' '.join('-S ' + o for o in overrides)}")
    for cell in to_queue:
        args = queue_command(cell, config, params)
        echo(("would run: " if dry_run else "") + "dvc " + " ".join(_quote(a) for a in args))
        if not dry_run:
            run_dvc(args, dvc=dvc)
    workers = jobs or config.jobs
    start_args = ["queue", "start", "-j", str(workers)]
    if dry_run:
        echo("would run: dvc " + " ".join(start_args))
        return []
    if to_queue:
        run_dvc(start_args, dvc=dvc)
        echo(f"queued {len(to_queue)} of {len(cells)} cells; started {workers} worker(s) (`dvc queue status` to watch)")
    if not wait:
        return []
    from biasloop.core.tracking import git_revision

    baseline = git_revision()  # the cells' baseline: a commit made while the study runs moves HEAD, not it
    names = [c.name for c in cells]
    return wait_for_cells(config, names, dvc=dvc, echo=echo, sleep=sleep, timeout=timeout, rev=baseline)


def _quote(arg: str) -> str:
    return f"'{arg}'" if re.search(r"[\s{}\[\],~+]", arg) else arg


def wait_for_cells(
    config: StudyConfig,
    names: list[str],
    *,
    dvc: str = "dvc",
    echo: Callable[[str], None] = print,
    sleep: Callable[[float], None] = time.sleep,
    timeout: float | None = None,
    clock: Callable[[], float] = time.monotonic,
    rev: str | None = None,
) -> list[str]:
    """Poll ``dvc exp show`` until every named cell has succeeded or failed; a line per finished cell.

    Args:
        rev: the cells' baseline commit (None: HEAD at each look).
        timeout: seconds to wait at most (None: no limit); the queue keeps running after it.
        clock: the time source (tests pass a fake one).

    Returns:
        The names of the failed cells.

    Raises:
        RuntimeError: when a cell is neither finished nor in the queue (removed while waiting), when the
            queue has no worker left while cells are still queued or marked running (a worker that died
            leaves its cell "running"), or when ``timeout`` passes first; each names the cells, their
            states and the last lines of their queue logs.
    """
    start = clock()
    reported: dict[str, str] = {}
    idle_looks = 0  # consecutive looks with unfinished cells and no worker (one look may catch a worker starting)
    absent_looks = {name: 0 for name in names}  # a task moving from the queue to a worker may be unlisted once
    while True:
        found = latest_by_name(parse_exp_show(exp_show(rev=rev, dvc=dvc)), config.prefix)
        for name in names:
            exp = found.get(name)
            if exp is None:
                absent_looks[name] += 1
                if absent_looks[name] >= 3:
                    raise RuntimeError(f"{name}: not in `dvc exp show` any more (removed from the queue?)")
                continue
            absent_looks[name] = 0
            if exp.state in ("success", "failed") and name not in reported:
                reported[name] = exp.state
                note = f"; log: dvc queue logs {name}" if exp.state == "failed" else f" ({exp.rev[:7]})"
                echo(
                    f"[{len(reported)}/{len(names)}] {name}: {exp.state} after {format_seconds(time.monotonic() - start)}{note}"
                )
                sys.stdout.flush()
        if len(reported) == len(names):
            return [n for n in names if reported[n] == "failed"]
        states = {n: found[n].state for n in names if n in found}
        unfinished = {n: state for n, state in states.items() if state in ("queued", "running")}
        stalled = bool(unfinished) and not _workers_alive(dvc)
        idle_looks = idle_looks + 1 if stalled else 0
        if idle_looks >= 2:
            raise RuntimeError(
                f"no queue worker is running, yet {_describe(unfinished)}"
                f"{_log_tails(unfinished, dvc)}\nstart one with `dvc queue start -j N` (a cell left "
                "'running' by a worker that died: `dvc queue kill NAME` first) and run "
                "`biasloop study run` again to wait"
            )
        waited = clock() - start
        if timeout is not None and waited >= timeout:
            raise RuntimeError(
                f"gave up waiting after {format_seconds(waited)}: {_describe(unfinished)}"
                f"{_log_tails(unfinished, dvc)}\nthe queue keeps running (`dvc queue status`); "
                "`biasloop study run` again waits for it"
            )
        sleep(config.poll_seconds)


def _describe(states: dict[str, str]) -> str:
    """``"cell-a running, cell-b queued"``."""
    return ", ".join(f"{name} {state}" for name, state in states.items()) or "no cell is unfinished"


LOG_TAIL_LINES = 15


def _log_tails(states: dict[str, str], dvc: str) -> str:
    """The last lines of each running cell's ``dvc queue logs``, each under a header line (empty when
    none is running or DVC cannot show them)."""
    parts = []
    for name, state in states.items():
        if state != "running":
            continue
        try:
            log = run_dvc(["queue", "logs", name], dvc=dvc)
        except (RuntimeError, OSError) as exc:
            log = f"(no log: {exc})"
        tail = "\n".join(log.rstrip().splitlines()[-LOG_TAIL_LINES:])
        parts.append(f"\n--- last lines of `dvc queue logs {name}`:\n{tail}")
    return "".join(parts)


def _workers_alive(dvc: str) -> bool:
    """Whether a queue worker is there: ``dvc queue status`` reports an active or idle one (a worker may be
    starting up), or a ``dvc exp queue-worker`` process of this checkout runs. DVC's count alone is not
    enough: right after ``dvc queue kill`` and ``dvc queue start`` it has said "0 active" while a worker ran."""
    status = run_dvc(["queue", "status"], dvc=dvc)
    match = re.search(r"Worker status:\s*(\d+)\s*active,\s*(\d+)\s*idle", status)
    if match is None or int(match.group(1)) + int(match.group(2)) > 0:
        return True
    return any(p.kind == "queue worker" for p in checkout_processes(Path.cwd()))
