"""``biasloop doctor``: what to look at when something is off.

Prints, one line each: which checkout and environment ``biasloop`` runs from (and whether the
``python``, ``dvc`` and ``mlflow`` on ``PATH`` are the same environment's, as stage ``cmd``s need);
package versions; CPU threads and device; whether ``dvc status`` is clean; where MLflow writes and how
many runs it holds (and RUNNING ones left by killed stages); the offline settings; this checkout's
running processes (PID and command) and who holds DVC's locks (``.dvc/tmp/lock``, ``.dvc/tmp/rwlock``):
a lock a live process holds is in use (wait, or ``biasloop stop``); deleting a lock is advised only
when no process of this checkout runs and the lock names none that lives. Lines marked
``!!`` are problems, with what to do; the exit status is 1 when there is one, else 0.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from biasloop.cli.doctor.dvc import check_dvc, check_running
from biasloop.cli.doctor.environment import (
    check_environment,
    check_mlflow,
    check_offline,
    check_threads,
    check_versions,
)
from biasloop.cli.doctor.findings import Report, _git

__all__ = ["Report", "add_parser", "check_dvc", "check_mlflow", "check_running", "run"]


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "doctor",
        help="environment, versions, threads, dvc status, running processes and locks, where MLflow writes",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--params", default="params.yaml", help="params file to read base/tracking from (default: %(default)s)"
    )
    parser.add_argument("--skip-dvc-status", action="store_true", help="do not run `dvc status` (a few seconds)")
    parser.add_argument("--json", action="store_true", help="print the findings as JSON")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from biasloop.core.config import ConfigError, read_params

    root = Path(_git(Path.cwd(), "rev-parse", "--show-toplevel") or Path.cwd())
    report = Report()
    try:
        params = read_params(root / args.params if not Path(args.params).is_absolute() else args.params)
    except (ConfigError, FileNotFoundError) as exc:
        report.add("problem", "params", str(exc))
        params = {}
    check_environment(report, root)
    check_versions(report)
    check_threads(report, params)
    running = check_running(report, root)
    if not args.skip_dvc_status:
        check_dvc(report, root, running)
    check_mlflow(report, root, params)
    check_offline(report, root)
    if args.json:
        print(
            json.dumps(
                [{"level": level, "topic": topic, "text": text} for level, topic, text in report.lines], indent=1
            )
        )
    else:
        print(report.render())
        print(f"\n{report.problems} problem(s)" if report.problems else "\nno problems found")
    return 1 if report.problems else 0
