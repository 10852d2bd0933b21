"""``biasloop study list|run|collect``: named studies (grids over any params x seeds) as DVC experiments.

    biasloop study list             the studies of params.yaml (`studies:`), their cells and experiments
    biasloop study run [--name N]   queue every experiment of study N (default: study.default; one per
                                    cell x seed, dvc exp run --queue), start the workers (dvc queue start
                                    -j N) and wait, one line per finished experiment; exit 1 naming failed ones
    biasloop study run --executor ray [--address ray://HEAD:10001]
                                    each cell a Ray task: clone the baseline commit, dvc exp run, dvc exp
                                    push to study.ray.git_remote (docs/cluster.md)
    biasloop study collect [--name N] [--pull]
                                    (--pull: dvc exp pull the study's experiments first) read the study's
                                    experiments (dvc exp show --json), write
                                    metrics/studies/N.json and plots/studies/N_*.csv|png; exit 1 when a
                                    cell failed or is missing, unless --allow-missing

Experiments are named study-<name>-<cell>-s<seed> (study-default-r0.4-s1,
study-generator-guidance_scale1.5-snr_gamma0-train_steps300-s3), so `dvc exp show`, `dvc exp apply NAME`
and `dvc metrics diff` work on each, and running `study run` again resumes: succeeded experiments are
kept, failed ones queued again (with Ray: cells already on the Git remote are kept). Param paths are
checked against params.yaml before anything runs.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "study",
        help="run and aggregate a replicated grid of DVC experiments",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="study_command", required=True, metavar="{list,run,collect}")
    list_parser = commands.add_parser(
        "list",
        help="the studies of params.yaml with their cells and experiments",
        description="List each study of params.yaml's `studies:` section: its cells, "
        "experiments, generations and primary endpoints.",
    )
    _add_params(list_parser)
    list_parser.set_defaults(run=run_list_command)
    _add_run_parser(commands)
    _add_collect_parser(commands)


def _add_params(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--params", default="params.yaml", help="params file with the studies (default: %(default)s)")


def _add_run_parser(commands: argparse._SubParsersAction) -> None:
    run_parser = commands.add_parser(
        "run",
        help="run the grid: queue it and start workers, or submit it to Ray; wait",
        description="Queue every cell x seed of a study of params.yaml as a DVC experiment "
        "(dvc exp run --queue -S PATH=VALUE ... -S base.seed=S -S world.seed=S --name "
        "study-<name>-<cell>-sS), start `dvc queue start -j N` and wait, printing a line per finished "
        "experiment; or, with --executor ray, run each cell as a Ray task that clones the baseline "
        "commit, runs it and pushes it with `dvc exp push` (docs/cluster.md). Exits 2 naming an unknown "
        "param path, 1 naming the failed experiments and their logs, 130 on Ctrl-C.",
    )
    _add_params(run_parser)
    run_parser.add_argument("--name", help="study to run, a key of `studies:` (default: study.default)")
    run_parser.add_argument(
        "--executor",
        choices=("dvc-queue", "ray"),
        help="where the cells run: this machine's DVC queue, or a Ray cluster (default: study.executor)",
    )
    run_parser.add_argument(
        "--address",
        help="ray: the cluster to join, e.g. ray://head:10001 or auto (default: study.ray.address; "
        "none: a local Ray instance on this machine, loopback only)",
    )
    run_parser.add_argument(
        "--jobs",
        "-j",
        type=int,
        help="cells at once: queue workers, or a local Ray instance's cells (default: study.jobs)",
    )
    run_parser.add_argument("--no-wait", action="store_true", help="dvc-queue: return after starting the workers")
    run_parser.add_argument(
        "--timeout",
        type=float,
        metavar="MINUTES",
        help="dvc-queue: stop waiting after this many minutes, naming the unfinished experiments with "
        "the last lines of their logs (exit 1); the queue keeps running (default: no limit)",
    )
    run_parser.add_argument("--rerun", action="store_true", help="run cells that already succeeded again")
    run_parser.add_argument("--dry-run", action="store_true", help="print what would run, run nothing")
    run_parser.set_defaults(run=run_study_command)


def _add_collect_parser(commands: argparse._SubParsersAction) -> None:
    collect_parser = commands.add_parser(
        "collect",
        help="aggregate the study into metrics/studies/<name>.json and plots/studies/<name>_*",
        description="Read the study's experiments from `dvc exp show --json` (the baseline HEAD unless --rev "
        "or --all-commits) and write per cell x generation the mean and SD over seeds of the study's "
        "metrics; its primary endpoints with plain 95% t intervals over seeds; every other interval "
        "(levels, slopes, contrasts) Holm-adjusted; and for each a p-value, a TOST p-value where a "
        "margin is declared, and a verdict (effect / equivalent within +-m / not resolved / zero in every seed). Failed or "
        "missing cells are listed, never averaged over; they make the command exit 1 without "
        "writing anything unless --allow-missing. With --pull (the default when study.executor is ray), "
        "first fetch the study's experiments that are not here yet from study.ray.git_remote "
        "(dvc exp pull --no-cache).",
    )
    _add_params(collect_parser)
    collect_parser.add_argument("--name", help="study to collect, a key of `studies:` (default: study.default)")
    collect_parser.add_argument(
        "--names",
        nargs="+",
        metavar="EXP",
        help="explicit experiment names instead of the grid's study-<name>-... names",
    )
    source = collect_parser.add_mutually_exclusive_group()
    source.add_argument("--rev", help="baseline commit whose experiments to read (default: HEAD)")
    source.add_argument("--all-commits", action="store_true", help="read experiments of every baseline commit")
    source.add_argument("--exp-json", help="read this saved `dvc exp show --json` output instead of running dvc")
    collect_parser.add_argument(
        "--pull",
        action=argparse.BooleanOptionalAction,
        help="fetch the study's experiments from study.ray.git_remote first (default: when study.executor is ray)",
    )
    collect_parser.add_argument(
        "--out-dir", default="metrics/studies", help="folder of <name>.json (default: %(default)s)"
    )
    collect_parser.add_argument(
        "--plots",
        default="plots/studies",
        help="folder for <name>_*.csv and <name>_intervals.png (default: %(default)s)",
    )
    collect_parser.add_argument(
        "--allow-missing",
        action="store_true",
        help="write the outputs and exit 0 even when cells failed or are missing (they stay listed)",
    )
    collect_parser.add_argument(
        "--allow-mixed",
        action="store_true",
        help="accept cells from several baseline commits or differing in unswept params",
    )
    collect_parser.set_defaults(run=run_collect_command)


def _load(args: argparse.Namespace):
    from biasloop.core.config import ConfigError
    from biasloop.study.config import load_study_config

    try:
        return load_study_config(args.params, args.name)
    except ConfigError as exc:
        print(f"error: {args.params}: {exc}", file=sys.stderr)
        return None


def run_list_command(args: argparse.Namespace) -> int:
    from biasloop.core.config import ConfigError, read_params
    from biasloop.study.config import load_study_config, study_names
    from biasloop.study.grid import grid_points, study_cells

    params = read_params(args.params)
    for name in study_names(params):
        try:
            config = load_study_config(params, name)
        except ConfigError as exc:
            print(f"{name}: error: {exc}")
            continue
        endpoints = ", ".join(config.spec.endpoints) or "none"
        print(
            f"{name}: {len(grid_points(config))} cells, {len(study_cells(config))} experiments, "
            f"{config.generations} generation(s); primary endpoints: {endpoints}"
        )
    return 0


def run_study_command(args: argparse.Namespace) -> int:
    from biasloop.core.config import ConfigError
    from biasloop.study.grid import grid_points, study_cells

    config = _load(args)
    if config is None:
        return 2
    experiments = len(study_cells(config))
    executor = args.executor or config.settings.executor
    print(
        f"study '{config.name}': {len(grid_points(config))} cells, {experiments} experiments, "
        f"{config.generations} generation(s) each; executor: {executor}",
        flush=True,
    )
    start = time.monotonic()
    try:
        failed = _run_cells(config, args, executor)
    except ConfigError as exc:
        print(f"error: {args.params}: {exc}", file=sys.stderr)
        return 2
    except RuntimeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted: the unfinished cells were cancelled; run the command again to resume", file=sys.stderr)
        return 130
    if failed:
        logs = "dvc queue logs NAME" if executor == "dvc-queue" else "the log named on each cell's line"
        print(
            f"error: {len(failed)} of {experiments} experiments failed: {', '.join(failed)} "
            f"(logs: {logs}; `biasloop study run --name {config.name}` runs them again)",
            file=sys.stderr,
        )
        return 1
    if not args.no_wait and not args.dry_run:
        minutes = (time.monotonic() - start) / 60
        print(
            f"all {experiments} experiments succeeded; this run waited {minutes:.0f} min (write the study's cost "
            f"beside it); next: biasloop study collect --name {config.name}"
        )
    return 0


def _run_cells(config, args: argparse.Namespace, executor: str) -> list[str]:
    """Run the study's cells with ``executor``; the names of the failed ones."""
    echo = lambda line: print(line, flush=True)  # noqa: E731
    if executor == "ray":
        from biasloop.study.ray_executor import run_study_ray

        failed = run_study_ray(
            config,
            args.params,
            address=args.address,
            jobs=args.jobs,
            rerun=args.rerun,
            dry_run=args.dry_run,
            echo=echo,
        )
        return [record["name"] for record in failed]
    from biasloop.study.grid import run_study

    return run_study(
        config,
        args.params,
        jobs=args.jobs,
        wait=not args.no_wait,
        rerun=args.rerun,
        dry_run=args.dry_run,
        echo=echo,
        timeout=None if args.timeout is None else args.timeout * 60,
    )


def run_collect_command(args: argparse.Namespace) -> int:
    from biasloop.study.collect import collect_study, study_problems
    from biasloop.study.experiments import exp_show, parse_exp_show
    from biasloop.study.outputs import write_study_outputs

    config = _load(args)
    if config is None:
        return 2
    if args.exp_json:
        path = Path(args.exp_json)
        if not path.exists():
            raise FileNotFoundError(f"{path}: not found")
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}: not JSON: {exc}") from exc
    else:
        try:
            if args.pull or (args.pull is None and config.settings.executor == "ray"):
                _pull(config, args)
            data = exp_show(rev=args.rev, all_commits=args.all_commits)
        except RuntimeError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    study = collect_study(parse_exp_show(data), config, names=args.names)
    for line in study_problems(study):
        print(line, file=sys.stderr)
    blocking = bool(study["failed"] or study["missing"]) and not args.allow_missing
    mixed = bool(study["inconsistent"]) and not args.allow_mixed
    if study["n_cells_used"] == 0:
        print(
            "error: no successful experiment of this study to aggregate "
            f"(looked for {config.prefix + '*' if not args.names else ', '.join(args.names)})",
            file=sys.stderr,
        )
        return 1
    if blocking or mixed:
        reasons = (["failed or missing cells (--allow-missing to aggregate the rest)"] if blocking else []) + (
            ["inconsistent cells (--allow-mixed to accept them)"] if mixed else []
        )
        print(f"error: nothing written: {' and '.join(reasons)}", file=sys.stderr)
        return 1
    for note in study["notes"]:
        print(f"note: {note}", file=sys.stderr)
    written = write_study_outputs(study, args.out_dir, args.plots)
    print(
        f"{study['n_cells_used']} of {study['n_cells_expected']} experiments aggregated; "
        f"{study['family_size']} secondary intervals Holm-adjusted"
    )
    for name, endpoint in study["endpoints"].items():
        ci = endpoint["ci"]
        interval = f" [{ci[0]:.4g}, {ci[1]:.4g}]" if ci else " (no interval)"
        estimate = "n/a" if endpoint["estimate"] is None else f"{endpoint['estimate']:.4g}"
        print(f"primary {name}: {endpoint['label']}: {estimate}{interval}, n={endpoint['n']}: {endpoint['verdict']}")
    print("wrote " + ", ".join(written))
    return 0


def _pull(config, args: argparse.Namespace) -> None:
    """Fetch the study's experiments that are not here yet from ``study.ray.git_remote``."""
    from biasloop.study.experiments import exp_show, git_remote_url, latest_by_name, parse_exp_show, pull_experiments
    from biasloop.study.grid import study_cells

    url = git_remote_url(config.settings.ray.git_remote)
    names = args.names or [cell.name for cell in study_cells(config)]
    here = latest_by_name(parse_exp_show(exp_show(rev=args.rev, all_commits=args.all_commits)))
    present = {name for name, exp in here.items() if exp.state == "success"}
    pulled, absent = pull_experiments(url, names, present=present, rev=args.rev, all_commits=args.all_commits)
    print(
        f"pulled {len(pulled)} experiment(s) from {url}; {len(names) - len(pulled) - len(absent)} already here"
        + (f"; not on the remote: {', '.join(absent)}" if absent else ""),
        flush=True,
    )
