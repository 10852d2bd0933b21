"""``biasloop plots-template``: make ``dvc plots show`` / ``dvc plots diff`` pages open offline.

Writes an HTML template with vega, vega-lite and vega-embed inlined (pinned npm builds, fetched once
with ``npm pack`` into ``.cache/vega/``; see ``biasloop/report/dvc_plots_template.py``) and points
this clone's DVC at it (``plots.html_template`` in ``.dvc/config.local``, which is per clone and
git-ignored, so a fresh clone never refers to a file it does not have yet). ``make env`` runs it.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "plots-template",
        help="an offline HTML template for dvc plots show/diff",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--cache", default=".cache/vega", help="folder for the npm tarballs (default: %(default)s)")
    parser.add_argument(
        "--out", default=".cache/vega/dvc_plots_template.html", help="template to write (default: %(default)s)"
    )
    parser.add_argument(
        "--no-config", action="store_true", help="write the template only; leave .dvc/config.local alone"
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from biasloop.report.dvc_plots_template import write_template

    out = Path(args.out).absolute()
    offline, message = write_template(out, Path(args.cache))
    print(message)
    if not args.no_config:
        if not Path(".dvc").is_dir():
            raise FileNotFoundError(".dvc: not in a DVC repository's root (or use --no-config)")
        relative = os.path.relpath(out, Path(".dvc").absolute())  # DVC resolves it from .dvc/
        result = subprocess.run(
            [sys.executable, "-m", "dvc", "config", "--local", "plots.html_template", relative],
            capture_output=True,
            text=True,
        )
        if result.returncode != 0:
            raise ValueError(f"dvc config --local plots.html_template failed: {result.stderr.strip()}")
        print(f".dvc/config.local: plots.html_template = {relative}")
    return 0 if offline else 1
