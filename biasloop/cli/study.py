"""``biasloop study run|collect``: a replicated grid (ratios x seeds, every cell all generations) as DVC experiments.

    biasloop study run              queue the `study` grid of params.yaml (dvc exp run --queue, one
                                    experiment per ratio x seed), start the workers (dvc queue start -j N)
                                    and wait, one line per finished experiment; exit 1 naming failed ones
    biasloop study collect          read the study's experiments (dvc exp show --json), write
                                    metrics/study.json and plots/study_*.csv|png; exit 1 when a cell
                                    failed or is missing, unless --allow-missing

Cells are named study-<name>-r<ratio>-s<seed>, so `dvc exp show`, `dvc exp apply NAME` and
`dvc metrics diff` work on each, and running `study run` again resumes: succeeded cells are kept, failed
ones queued again. Afterwards `dvc repro` adds a Study section to plots/report.html.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("study", help="run and aggregate a replicated grid of DVC experiments",
                                   description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="study_command", required=True, metavar="{run,collect}")

    run_parser = commands.add_parser(
        "run", help="queue the grid, start workers, wait",
        description="Queue every cell of the `study` section of params.yaml as a DVC experiment "
                    "(dvc exp run --queue -S synthetic_ratio=R -S base.seed=S --name study-<name>-rR-sS), "
                    "start `dvc queue start -j N` and wait, printing a line per finished experiment. "
                    "Exits 1 naming the failed experiments (their logs: dvc queue logs NAME).")
    run_parser.add_argument("--params", default="params.yaml", help="params file with the study section (default: %(default)s)")
    run_parser.add_argument("--name", help="study name (default: study.name); cells are study-<name>-r<ratio>-s<seed>")
    run_parser.add_argument("--jobs", "-j", type=int, help="queue workers (default: study.jobs)")
    run_parser.add_argument("--no-wait", action="store_true", help="return after starting the workers")
    run_parser.add_argument("--rerun", action="store_true", help="run cells that already succeeded again")
    run_parser.add_argument("--dry-run", action="store_true", help="print the dvc commands, run nothing")
    run_parser.set_defaults(run=run_study_command)

    collect_parser = commands.add_parser(
        "collect", help="aggregate the study into metrics/study.json and plots/study_*",
        description="Read the study's experiments from `dvc exp show --json` (the baseline HEAD unless --rev "
                    "or --all-commits) and write, per synthetic_ratio x generation, the mean over seeds of the "
                    "headline metrics with the between-seed SD, a 95% t interval and the number of seeds, and "
                    "the trend slopes against ratio and generation with seed-clustered intervals. Failed or "
                    "missing cells are listed, never averaged over; they make the command exit 1 without "
                    "writing anything unless --allow-missing.")
    collect_parser.add_argument("--params", default="params.yaml", help="params file with the study section (default: %(default)s)")
    collect_parser.add_argument("--name", help="study name (default: study.name)")
    collect_parser.add_argument("--names", nargs="+", metavar="EXP",
                                help="explicit experiment names instead of the grid's study-<name>-... names")
    source = collect_parser.add_mutually_exclusive_group()
    source.add_argument("--rev", help="baseline commit whose experiments to read (default: HEAD)")
    source.add_argument("--all-commits", action="store_true", help="read experiments of every baseline commit")
    source.add_argument("--exp-json", help="read this saved `dvc exp show --json` output instead of running dvc")
    collect_parser.add_argument("--out", default="metrics/study.json", help="study JSON (default: %(default)s)")
    collect_parser.add_argument("--plots", default="plots", help="folder for study_*.csv and study_*.png (default: %(default)s)")
    collect_parser.add_argument("--allow-missing", action="store_true",
                                help="write the outputs and exit 0 even when cells failed or are missing (they stay listed)")
    collect_parser.add_argument("--allow-mixed", action="store_true",
                                help="accept cells from several baseline commits or differing in unswept params")
    collect_parser.set_defaults(run=run_collect_command)


def run_study_command(args: argparse.Namespace) -> int:
    from biasloop.core.config import ConfigError
    from biasloop.study.grid import load_study_config, run_study

    try:
        config = load_study_config(args.params, args.name)
    except ConfigError as exc:
        print(f"error: {args.params}: {exc}", file=sys.stderr)
        return 2
    cells = len(config.ratios) * len(config.seeds)
    print(f"study '{config.name}': {len(config.ratios)} ratios x {len(config.seeds)} seeds = {cells} experiments, "
          f"{config.generations} generations each", flush=True)
    try:
        failed = run_study(config, args.params, jobs=args.jobs, wait=not args.no_wait, rerun=args.rerun,
                           dry_run=args.dry_run, echo=lambda line: print(line, flush=True))
    except RuntimeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if failed:
        print(f"error: {len(failed)} of {cells} experiments failed: {', '.join(failed)} "
              f"(logs: dvc queue logs NAME; `biasloop study run` queues them again)", file=sys.stderr)
        return 1
    if not args.no_wait and not args.dry_run:
        print(f"all {cells} experiments succeeded; next: biasloop study collect")
    return 0


def run_collect_command(args: argparse.Namespace) -> int:
    from biasloop.core.config import ConfigError
    from biasloop.study.collect import collect_study, study_problems, write_study_outputs
    from biasloop.study.experiments import exp_show, parse_exp_show
    from biasloop.study.grid import load_study_config

    try:
        config = load_study_config(args.params, args.name)
    except ConfigError as exc:
        print(f"error: {args.params}: {exc}", file=sys.stderr)
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
            data = exp_show(rev=args.rev, all_commits=args.all_commits)
        except RuntimeError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    study = collect_study(parse_exp_show(data), config, names=args.names)
    problems = study_problems(study)
    for line in problems:
        print(line, file=sys.stderr)
    blocking = bool(study["failed"] or study["missing"]) and not args.allow_missing
    mixed = bool(study["inconsistent"]) and not args.allow_mixed
    if study["n_cells_used"] == 0:
        print("error: no successful experiment of this study to aggregate "
              f"(looked for {config.prefix + '*' if not args.names else ', '.join(args.names)})", file=sys.stderr)
        return 1
    if blocking or mixed:
        reasons = (["failed or missing cells (--allow-missing to aggregate the rest)"] if blocking else []) + \
                  (["inconsistent cells (--allow-mixed to accept them)"] if mixed else [])
        print(f"error: nothing written: {' and '.join(reasons)}", file=sys.stderr)
        return 1
    if study["amplification_note"]:
        print(f"note: {study['amplification_note']}", file=sys.stderr)
    written = write_study_outputs(study, args.out, args.plots)
    head = study["headline"]["slope_vs_ratio_at_last_generation"]
    ci = head["ci"]
    slope = "n/a" if head["slope"] is None else f"{100 * head['slope']:.2f} pp"
    interval = f" [{100 * ci[0]:.2f}, {100 * ci[1]:.2f}]" if ci else ""
    print(f"{study['n_cells_used']} of {study['n_cells_expected']} cells aggregated; "
          f"{study['amplification_metric']} vs synthetic_ratio at the last generation: {slope}{interval} per unit ratio "
          f"({head['n']} seeds)")
    print("wrote " + ", ".join(written) + "; `dvc repro` adds the Study section to plots/report.html")
    return 0
