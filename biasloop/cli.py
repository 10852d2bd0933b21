"""The ``biasloop`` command: helpers around the DVC pipeline.

    biasloop data                  materialise data/ (occupation table + MNIST glyph pool)
    biasloop amplify TRAIN GEN     amplification table from two per-occupation count files
    biasloop generations N         rewrite the generation lists in params.yaml for N generations
"""

from __future__ import annotations

import argparse
import shutil
import sys
from collections.abc import Sequence
from importlib import resources
from pathlib import Path


def _data(args: argparse.Namespace) -> int:
    from biasloop.world import materialise_glyph_pool

    root = Path(args.out)
    occupations = root / "occupations"
    occupations.mkdir(parents=True, exist_ok=True)
    packaged = resources.files("biasloop") / "data"
    for name in ("occupations_bls.tsv", "occupations_bls.LICENSE", "occupations_bls.SOURCE.md"):
        with resources.as_file(packaged / name) as source:
            shutil.copyfile(source, occupations / name)
    materialise_glyph_pool(root / "glyphs" / "mnist")
    print(f"materialised {root}/ (occupation table, 5,000 MNIST glyphs)")
    return 0


def rewrite_generations(text: str, count: int) -> str:
    """Return params.yaml ``text`` with the ``generations`` and ``rounds`` lists set for ``count``.

    ``generations`` lists 0 .. count-1 (generation 0 is trained on real data); ``rounds`` maps each
    later generation to its ``{gen, prev}`` item (keys name the stages: ``mix@1``, ``retrain@1``). Comments and other keys are kept as they are.
    """
    if count < 1:
        raise ValueError("generations: need at least 1")
    lines = text.splitlines()
    out: list[str] = []
    i = 0
    found = set()
    while i < len(lines):
        line = lines[i]
        key = line.split(":", 1)[0]
        if key in ("generations", "rounds") and not line.startswith((" ", "#")):
            found.add(key)
            comment = line[line.index("#") :] if "#" in line else ""
            if key == "generations":
                out.append(f"generations:  {comment}".rstrip())
                out.extend(f"  - {n}" for n in range(count))
            else:
                out.append(f"rounds:  {comment}".rstrip())
                out.extend(f'  "{n}": {{gen: {n}, prev: {n - 1}}}' for n in range(1, count))
                if count == 1:
                    out[-1] = ("rounds: {}  " + comment).rstrip()
            i += 1
            while i < len(lines) and lines[i].startswith((" ", "-")) and lines[i].strip():
                i += 1
            continue
        out.append(line)
        i += 1
    missing = {"generations", "rounds"} - found
    if missing:
        raise ValueError(f"params file has no top-level {sorted(missing)} list")
    return "\n".join(out) + "\n"


def _generations(args: argparse.Namespace) -> int:
    path = Path(args.params)
    path.write_text(rewrite_generations(path.read_text(), args.count))
    print(f"{path}: {args.count} generations (0..{args.count - 1}); run `dvc repro` to build them")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="biasloop", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    data = sub.add_parser("data", help="materialise data/: the BLS occupation table and the MNIST glyph pool")
    data.add_argument("--out", default="data", help="folder to write (default: %(default)s)")
    data.set_defaults(func=_data)

    amplify = sub.add_parser(
        "amplify",
        help="amplification table from two per-occupation count CSVs",
        description="See `biasloop amplify --help`.",
        add_help=False,
    )
    amplify.set_defaults(func=None)

    gens = sub.add_parser("generations", help="set the number of generations in params.yaml")
    gens.add_argument("count", type=int, help="number of generations, counting generation 0 (trained on real data)")
    gens.add_argument("--params", default="params.yaml", help="params file to rewrite (default: %(default)s)")
    gens.set_defaults(func=_generations)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["amplify"]:
        from biasloop.amplify import main as amplify_main

        return amplify_main(argv[1:])
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
