"""``biasloop data``: materialise ``data/`` (the BLS occupation table and the MNIST glyph pool).

The bytes are the same on every machine, so ``data.dvc`` matches after ``make data``.
"""

from __future__ import annotations

import argparse
import shutil
from importlib import resources
from pathlib import Path


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("data", help="materialise data/: the BLS occupation table and the MNIST glyph pool",
                                   description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="data", help="folder to write (default: %(default)s)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from biasloop.data.world import materialise_glyph_pool

    root = Path(args.out)
    occupations = root / "occupations"
    occupations.mkdir(parents=True, exist_ok=True)
    packaged = resources.files("biasloop.data") / "assets"
    for name in ("occupations_bls.tsv", "occupations_bls.LICENSE", "occupations_bls.SOURCE.md"):
        with resources.as_file(packaged / name) as source:
            shutil.copyfile(source, occupations / name)
    materialise_glyph_pool(root / "glyphs" / "mnist")
    print(f"materialised {root}/ (occupation table, 5,000 MNIST glyphs)")
    return 0
