"""``biasloop prompts export``: every image ``generate@N`` would ask for, for a generator outside the pipeline.

Writes one row per image (CSV, or JSON Lines for ``.jsonl``): ``prompt_id`` (stable: a hash of prompt and
seed), ``generation``, ``prompt_kind`` (``neutral`` prompt or ``caption`` used as prompt), ``occupation``,
``prompt``, ``seed`` (the seed ``generate@N`` gives the image; use it where the model takes one),
``n_images`` (how many images the export asks for that prompt), ``template`` (neutral prompts) and
``source_id`` (the corpus caption a caption prompt comes from: the paradox pairs the image with its
training image). It reads the params file's ``occupations``, ``generate`` and ``base.seed`` and the
pipeline's selections and corpus tables (run ``dvc repro neighbours`` first). Make one image per row,
list them in a ``manifest.csv`` (``prompt_id,file``) and audit them (docs/audit.md).
"""

from __future__ import annotations

import argparse


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "prompts",
        help="export the prompts (with prompt_id and seed) for images made outside the pipeline",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    export = actions.add_parser(
        "export", help="write every prompt generate@N asks for", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    export.add_argument("--out", required=True, help="output file: .csv or .jsonl")
    export.add_argument("--format", choices=("csv", "jsonl"), help="file format (default: from the suffix of --out)")
    export.add_argument("--generation", type=int, default=0, help="generation N whose seeds (default: %(default)s)")
    export.add_argument("--params", default="params.yaml", help="params file (default: %(default)s)")
    export.add_argument(
        "--selections", default="artifacts/neighbours/selections.parquet", help="selections (default: %(default)s)"
    )
    export.add_argument("--corpus", default="artifacts/corpus/captions.parquet", help="corpus (default: %(default)s)")
    export.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    import polars as pl

    from biasloop.core.config import BaseConfig, load_section, read_params
    from biasloop.loop.export import export_prompts, write_prompts
    from biasloop.loop.prompts import GenerateConfig

    params = read_params(args.params)
    occupations = list(params.get("occupations") or [])
    if not occupations:
        raise ValueError(f"{args.params}: occupations: at least one occupation is needed")
    for path in (args.selections, args.corpus):
        if not Path(path).exists():
            raise FileNotFoundError(f"{path}: not found (run `dvc repro neighbours` first)")
    frame = export_prompts(
        load_section(GenerateConfig, "generate", params),
        occupations,
        pl.read_parquet(args.selections),
        pl.read_parquet(args.corpus, columns=["id", "caption"]),
        load_section(BaseConfig, "base", params).seed,
        args.generation,
    )
    out = write_prompts(frame, args.out, args.format)
    kinds = frame.group_by("prompt_kind").len().sort("prompt_kind").rows()
    summary = ", ".join(f"{n} {kind}" for kind, n in kinds)
    print(f"{out}: {len(frame)} images ({summary}) for {len(occupations)} occupations, generation {args.generation}")
    return 0
