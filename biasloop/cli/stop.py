"""``biasloop stop``: end this checkout's running pipeline, and nothing of another checkout.

Finds this checkout's processes in ``/proc``: ``dvc`` (``repro``, ``exp run``, queue workers),
``python -m stages.<name>``, the background MLflow logger (``python -m biasloop.core.tracking``) and
their workers, by their working directory (the checkout, or a DVC queue copy under its
``.dvc/tmp/exps/``) or a checkout path among their arguments. Lists them, then sends each PID SIGTERM
(a stage records its MLflow run as KILLED), waits ``--timeout`` seconds and sends SIGKILL to what still
runs. ``--dry-run`` only lists. A process of another checkout, even one running the same stages, is
never signalled (``pkill -f 'python -m stages'`` would end every checkout's). Exit status 0, or 1 when
a process still runs afterwards.
"""

from __future__ import annotations

import argparse
import subprocess
from pathlib import Path


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "stop",
        help="stop this checkout's dvc, stages and MLflow logger (by PID)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--dry-run", action="store_true", help="list the processes, signal none")
    parser.add_argument(
        "--timeout", type=float, default=10.0, help="seconds between SIGTERM and SIGKILL (default: %(default)s)"
    )
    parser.add_argument(
        "--root", default=None, help="the checkout (default: the git checkout of the current directory)"
    )
    parser.set_defaults(run=run)


def checkout_root(start: Path) -> Path:
    """The git checkout ``start`` is in (its top level; the checkout itself from inside one of its DVC queue
    copies, ``<checkout>/.dvc/tmp/exps/...``), or ``start`` itself outside git."""
    start = start.resolve()
    marker = "/.dvc/tmp/exps/"
    if marker in f"{start}/":
        return Path(f"{start}/".split(marker, 1)[0])
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--show-toplevel"], cwd=start, capture_output=True, text=True, timeout=20, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return start
    return Path(out.stdout.strip()).resolve() if out.returncode == 0 and out.stdout.strip() else start


def run(args: argparse.Namespace) -> int:
    from biasloop.core.processes import checkout_processes, stop

    if args.timeout < 0:
        raise ValueError(f"--timeout must be 0 or more seconds, not {args.timeout:g}")
    root = Path(args.root).resolve() if args.root else checkout_root(Path.cwd())
    if not root.is_dir():
        raise FileNotFoundError(f"--root {root}: no such folder")
    if not ((root / ".dvc").is_dir() or (root / "dvc.yaml").is_file()):
        # a folder above several checkouts (/, the home folder) would take in every checkout's processes
        raise ValueError(
            f"{root} is not a DVC checkout (no .dvc folder or dvc.yaml): run `biasloop stop` "
            "inside the checkout, or give --root the checkout"
        )
    found = checkout_processes(root)
    if not found:
        print(f"no process of {root} is running")
        return 0
    print(f"{len(found)} process(es) of {root}:")
    for process in found:
        print(f"  {process.describe()}")
    if args.dry_run:
        print("--dry-run: none signalled")
        return 0
    stopped = stop(root, timeout=args.timeout, say=lambda line: print(f"  {line}"))
    left = checkout_processes(root)
    print(f"stopped {len(stopped)} process(es)" + (f"; {len(left)} still running" if left else ""))
    spool = root / ".mlflow-spool"
    if spool.is_dir() and any(p.is_dir() and not p.name.startswith(".") for p in spool.iterdir()):
        print(
            f"runs not yet in MLflow wait in {spool}: the next stage logs them, or "
            f"`python -m biasloop.core.tracking --spool {spool}`"
        )
    print("rerun with `dvc repro` (or the same `dvc exp run`): a stopped stage is redone from scratch")
    return 1 if left else 0
