"""``biasloop data``: materialise ``data/`` (the BLS occupation table, the MNIST glyph pool and, given
the ``mediapipe==0.10.14`` wheel, the BlazeFace face detector the LAION filter uses).

The bytes are the same on every machine, so ``data.dvc`` matches after ``make data``, which fetches the
wheel with ``pip download mediapipe==0.10.14 --no-deps`` (once, into the environment cache).
"""

from __future__ import annotations

import argparse
import shutil
from importlib import resources
from pathlib import Path


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "data",
        help="materialise data/: the BLS occupation table and the MNIST glyph pool",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--out", default="data", help="folder to write (default: %(default)s)")
    parser.add_argument(
        "--mediapipe-wheel",
        default=None,
        help="the mediapipe==0.10.14 wheel: extract BlazeFace (full-range) and its licence into "
        "OUT/face_detection (default: skip; the LAION filter needs it)",
    )
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
    what = "occupation table, 5,000 MNIST glyphs"
    if args.mediapipe_wheel:
        from biasloop.data.acquisition.filtering import extract_face_model

        extract_face_model(args.mediapipe_wheel, root / "face_detection")
        what += ", BlazeFace full-range face detector"
    print(f"materialised {root}/ ({what})")
    return 0
