"""``biasloop generations N``: set the number of generations in ``params.yaml``.

DVC templates have no arithmetic, so the ``foreach`` lists of ``dvc.yaml`` (``generations``;
``rounds`` with one ``{gen, prev, previous}`` item per later generation (``previous``: dataset prev's folder); ``datasets`` with each generation's
dataset for the captioner and classifier) are written out here.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "generations",
        help="set the number of generations in params.yaml",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("count", type=int, help="number of generations, counting generation 0 (trained on real data)")
    parser.add_argument("--params", default="params.yaml", help="params file to rewrite (default: %(default)s)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from biasloop.study.generations import rewrite_generations

    path = Path(args.params)
    path.write_text(rewrite_generations(path.read_text(), args.count))
    print(f"{path}: {args.count} generations (0..{args.count - 1}); run `dvc repro` to build them")
    return 0
