"""A study grid: the ``study`` section of ``params.yaml``, its cells, and DVC's queue running them.

Every cell is an ordinary DVC experiment queued with ``dvc exp run --queue -S synthetic_ratio=R
-S base.seed=S --name study-<name>-r<R>-s<S>``: it differs from the baseline, and from every other
cell, only by the swept params (and, when ``study.generations`` differs from the ``generations`` list
of ``params.yaml``, the same generation lists for every cell). Every cell runs all the study's
generations; the generation axis is read from each cell's per-generation metrics
(``metrics/summary.json``: ``gen0``, ``gen1``, ...), so it costs no extra runs.

Cells are queued ratio-major (every seed of the first ratio, then the next ratio): DVC's workers take
the queue in order, so the first workers run different seeds, and a later cell with a seed already run
finds that seed's ratio-independent stages (corpus to generation 0) in DVC's run cache instead of
recomputing them. Cells with the same seed share those stages and the random streams of the later
ones (common random numbers), so a ratio's effect is not confounded with a seed's.
"""

from __future__ import annotations

import re
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from biasloop.core.config import ConfigError, load_section, read_params
from biasloop.study.experiments import exp_show, latest_by_name, parse_exp_show, run_dvc

RATIO_PARAM = "synthetic_ratio"
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")


@dataclass(frozen=True)
class StudyConfig:
    """The ``study`` section of ``params.yaml`` (see the comments there).

    Attributes:
        name: the study's name; its cells are the experiments named ``study-<name>-r<ratio>-s<seed>``.
        ratios: ``synthetic_ratio`` values swept (fractions in [0, 1]).
        seeds: replicate seeds; a cell sets every param in ``seed_params`` to its seed.
        seed_params: the params a seed sets (dotted keys of ``params.yaml``).
        generations: generations every cell runs (0 .. generations-1).
        jobs: DVC queue workers started by ``biasloop study run`` (``dvc queue start -j``).
        poll_seconds: seconds between two looks at the queue while waiting.
    """

    name: str = "default"
    ratios: tuple[float, ...] = (0.0, 0.4, 0.8)
    seeds: tuple[int, ...] = (0, 1, 2)
    seed_params: tuple[str, ...] = ("base.seed",)
    generations: int = 3
    jobs: int = 2
    poll_seconds: float = 30.0

    def __post_init__(self) -> None:
        if not NAME_PATTERN.match(self.name):
            raise ConfigError(f"study.name: letters, digits, '-' and '_' only (an experiment name), found {self.name!r}")
        if not self.ratios or any(not 0.0 <= r <= 1.0 for r in self.ratios) or len(set(self.ratios)) != len(self.ratios):
            raise ConfigError(f"study.ratios: distinct fractions in [0, 1] needed, found {list(self.ratios)}")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ConfigError(f"study.seeds: distinct integers needed, found {list(self.seeds)}")
        if not self.seed_params:
            raise ConfigError("study.seed_params: at least one param (base.seed) must carry the seed")
        if self.generations < 1:
            raise ConfigError(f"study.generations: at least 1 needed, found {self.generations}")
        if self.jobs < 1 or self.poll_seconds <= 0:
            raise ConfigError(f"study.jobs must be >= 1 and study.poll_seconds > 0, found {self.jobs}, {self.poll_seconds}")

    @property
    def prefix(self) -> str:
        """The experiment-name prefix shared by the study's cells."""
        return f"study-{self.name}-"


@dataclass(frozen=True)
class Cell:
    """One grid cell: an experiment name and the swept values it sets."""

    name: str
    ratio: float
    seed: int


def load_study_config(params_path: str | Path = "params.yaml", name: str | None = None) -> StudyConfig:
    """Read ``study`` from the params file (``name`` overrides ``study.name``); ConfigError names a bad key."""
    params = read_params(params_path)
    section = dict(params.get("study") or {})
    if name is not None:
        section["name"] = name
    return load_section(StudyConfig, "study", {"study": section})


def format_ratio(ratio: float) -> str:
    """``0.4`` -> ``"0.4"``, ``0.0`` -> ``"0"``: the spelling used in cell names."""
    return f"{ratio:g}"


def cell_name(config: StudyConfig, ratio: float, seed: int) -> str:
    """``study-<name>-r<ratio>-s<seed>``, e.g. ``study-default-r0.4-s1``."""
    return f"{config.prefix}r{format_ratio(ratio)}-s{seed}"


def study_cells(config: StudyConfig) -> list[Cell]:
    """The grid in queue order: ratio-major, seeds inner (see the module docstring for why)."""
    return [Cell(cell_name(config, r, s), float(r), int(s)) for r in config.ratios for s in config.seeds]


def _hydra_value(value: Any) -> str:
    """A params value in the override grammar DVC's ``-S`` reads (Hydra): lists, dicts, quoted strings."""
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_hydra_value(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ",".join(_hydra_value(v) for v in value) + "]"
    if isinstance(value, str):
        return "'" + value.replace("'", "\\'") + "'"
    return str(value)


def generation_overrides(params: dict[str, Any], generations: int) -> list[str]:
    """``-S`` overrides (DVC's Hydra syntax) that give a cell ``generations`` generations.

    The edit is the one ``biasloop generations N`` makes to params.yaml (the ``generations`` list and
    the per-generation ``rounds`` and ``datasets`` mappings), written as overrides so the workspace's
    params.yaml is left alone: ``+key.n=...`` adds an item, ``key.n=...`` replaces one, ``~key.n``
    deletes one. Empty when params.yaml already has ``generations`` generations.
    """
    import yaml

    from biasloop.cli.generations import rewrite_generations

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
    """Every ``-S`` override of a cell: the ratio, the seed params, then the generation lists."""
    return ([f"{RATIO_PARAM}={format_ratio(cell.ratio)}"] + [f"{key}={cell.seed}" for key in config.seed_params]
            + generation_overrides(params, config.generations))


def queue_command(cell: Cell, config: StudyConfig, params: dict[str, Any]) -> list[str]:
    """The ``dvc exp run --queue`` arguments (after ``dvc``) that queue ``cell``."""
    args = ["exp", "run", "--queue"]
    for override in cell_overrides(cell, config, params):
        args += ["-S", override]
    return args + ["--name", cell.name]


def _format_seconds(seconds: float) -> str:
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

    Returns:
        The names of the cells that failed (empty when every cell succeeded, or when not waiting).
    """
    params = read_params(params_path)
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
    return wait_for_cells(config, [c.name for c in cells], dvc=dvc, echo=echo, sleep=sleep)


def _quote(arg: str) -> str:
    return f"'{arg}'" if re.search(r"[\s{}\[\],~+]", arg) else arg


def wait_for_cells(
    config: StudyConfig,
    names: list[str],
    *,
    dvc: str = "dvc",
    echo: Callable[[str], None] = print,
    sleep: Callable[[float], None] = time.sleep,
) -> list[str]:
    """Poll ``dvc exp show`` until every named cell has succeeded or failed; a line per finished cell.

    Returns:
        The names of the failed cells.

    Raises:
        RuntimeError: when a cell is neither finished nor in the queue (removed while waiting), or the
            queue has no worker left while cells are still queued.
    """
    start = time.monotonic()
    reported: dict[str, str] = {}
    idle_looks = 0  # consecutive looks with queued cells and no worker (one look may catch a worker starting)
    absent_looks = {name: 0 for name in names}  # a task moving from the queue to a worker may be unlisted once
    while True:
        found = latest_by_name(parse_exp_show(exp_show(dvc=dvc)), config.prefix)
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
                echo(f"[{len(reported)}/{len(names)}] {name}: {exp.state} after {_format_seconds(time.monotonic() - start)}{note}")
                sys.stdout.flush()
        if len(reported) == len(names):
            return [n for n in names if reported[n] == "failed"]
        states = {n: found[n].state for n in names if n in found}
        pending = [n for n, state in states.items() if state == "queued"]
        stalled = pending and "running" not in states.values() and not _workers_alive(dvc)
        idle_looks = idle_looks + 1 if stalled else 0
        if idle_looks >= 2:
            raise RuntimeError(f"cells {', '.join(pending)} are queued but no queue worker is running: "
                               "start one with `dvc queue start -j N` and run `biasloop study run` again to wait")
        sleep(config.poll_seconds)


def _workers_alive(dvc: str) -> bool:
    """Whether ``dvc queue status`` reports an active or idle worker (a worker may be starting up)."""
    status = run_dvc(["queue", "status"], dvc=dvc)
    match = re.search(r"Worker status:\s*(\d+)\s*active,\s*(\d+)\s*idle", status)
    return match is None or int(match.group(1)) + int(match.group(2)) > 0
