"""laion_select: the LAION metadata rows to download, per occupation (streaming, URL-deduplicated, capped).

Scans every parquet file of ``laion_select.metadata`` (columns ``laion_select.url_column`` /
``caption_column``, LAION's ``URL`` / ``TEXT``) with the ``retrieve`` stage's matcher on polars' streaming
engine, drops duplicate URLs, and keeps at most ``laion_select.max_per_occupation`` URLs per occupation
in a seeded random order. An empty ``metadata`` list (the default study) writes an empty selection.

Inputs:   the metadata parquet files named in params (not tracked by DVC: put them under data/ to track them)
Outputs:  artifacts/laion_select/selection.parquet  (sample_id, url, caption, occupations, indicator, ...)
          metrics/laion_select.json                 (per occupation: matched, duplicate_url, over_cap, requested)
Params:   base, tracking, occupations, retrieve (plurals, first_names), laion_select

Example:
    python -m stages.laion_select --out artifacts/laion_select/selection.parquet --metrics metrics/laion_select.json
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import polars as pl

from biasloop.core.config import to_dict
from biasloop.core.io import timed, write_json, write_parquet
from biasloop.core.stage import load_configs, make_parser, stage_main
from biasloop.core.tracking import stage_run
from biasloop.data.acquisition.selection import (
    SELECTION_COLUMNS,
    SelectConfig,
    metadata_files,
    scan_metadata,
    select_rows,
)
from biasloop.data.retrieval import RetrieveConfig, parse_occupations

log = logging.getLogger("laion_select")


@stage_main(log)
def main(argv: Sequence[str] | None = None) -> None:
    parser = make_parser(__doc__, "python -m stages.laion_select")
    parser.add_argument(
        "--out", default="artifacts/laion_select/selection.parquet", help="selection parquet (default: %(default)s)"
    )
    parser.add_argument("--metrics", default="metrics/laion_select.json", help="metrics JSON (default: %(default)s)")
    args = parser.parse_args(argv)
    configs = load_configs(args.params, {"occupations": None, "retrieve": RetrieveConfig, "laion_select": SelectConfig})
    config: SelectConfig = configs["laion_select"]
    retrieve: RetrieveConfig = configs["retrieve"]
    occupations = parse_occupations(configs["occupations"])

    with stage_run("laion_select", configs["tracking"], {"laion_select": to_dict(config)}) as run:
        if not config.metadata:
            log.info("laion_select.metadata is empty: no acquisition (writing an empty selection)")
            schema = {
                "sample_id": pl.String,
                "url": pl.String,
                "caption": pl.String,
                "occupations": pl.List(pl.String),
                "indicator": pl.String,
            }
            write_parquet(args.out, pl.DataFrame(schema=schema).select(SELECTION_COLUMNS))
            write_json(args.metrics, {"enabled": False})
            return
        files = metadata_files(config.metadata)
        scan = scan_metadata(files, config)
        n_rows = scan.select(pl.len()).collect(engine="streaming").item()
        with timed(f"selecting from {n_rows} metadata rows in {len(files)} file(s)", log) as timing:
            selection, counts = select_rows(scan, occupations, config, retrieve.plurals, retrieve.first_names)
        for name, row in counts.items():
            log.info("%s: %s", name, row)
        write_parquet(args.out, selection)
        metrics = {
            "enabled": True,
            "n_files": len(files),
            "n_rows": n_rows,
            "n_urls": len(selection),
            "seconds": round(timing["seconds"], 3),
            "occupations": counts,
        }
        write_json(args.metrics, metrics)
        run.log_metrics({"n_rows": n_rows, "n_urls": len(selection)})


if __name__ == "__main__":
    raise SystemExit(main())
