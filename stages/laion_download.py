"""laion_download: download the selected URLs with img2dataset into webdataset shards (resumable).

The folder persists between runs (``persist: true`` in dvc.yaml): a rerun after an interruption fetches
only the shards that are missing; a changed selection starts over. Only ``http``/``https`` URLs to public
addresses are fetched (``laion_download.local_mirror_networks`` adds your own mirror's networks): other URLs
get a status row ``refused_scheme`` / ``refused_address`` / ``refused_url`` and never reach img2dataset, and
every connection img2dataset opens (redirects included) is checked again (see docs/laion.md). ``laion_download.distributor``
picks img2dataset's distributor: ``multiprocessing`` (default), ``pyspark`` or ``ray`` (see docs/laion.md).

Inputs:   artifacts/laion_select/selection.parquet
Outputs:  artifacts/laion_download/shards/        (NNNNN.tar: <key>.jpg/.txt/.json; NNNNN.parquet; NNNNN_stats.json)
          artifacts/laion_download/status.parquet (sample_id, key, url, status, reason, error_message)
          metrics/laion_download.json             (per occupation: requested, downloaded, failed_<reason>)
Params:   base, tracking, occupations, laion_download

Example:
    python -m stages.laion_download --selection artifacts/laion_select/selection.parquet \\
        --out artifacts/laion_download --metrics metrics/laion_download.json
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import polars as pl

from biasloop.core.config import to_dict
from biasloop.core.io import timed, write_json, write_parquet
from biasloop.core.stage import load_configs, make_parser, stage_main
from biasloop.core.tracking import stage_run
from biasloop.data.acquisition.download import (
    DOWNLOAD_COLUMNS,
    DownloadConfig,
    check_download_config,
    check_space_left,
    download_table,
    prepare_output,
    read_download_status,
    refuse_urls,
    remove_shards,
    run_img2dataset,
    unfinished_shards,
)
from biasloop.data.retrieval import parse_occupations

log = logging.getLogger("laion_download")


@stage_main(log)
def main(argv: Sequence[str] | None = None) -> None:
    parser = make_parser(__doc__, "python -m stages.laion_download")
    parser.add_argument("--selection", default="artifacts/laion_select/selection.parquet", help="selection parquet")
    parser.add_argument("--out", default="artifacts/laion_download", help="output folder (default: %(default)s)")
    parser.add_argument("--metrics", default="metrics/laion_download.json", help="metrics JSON (default: %(default)s)")
    args = parser.parse_args(argv)
    configs = load_configs(args.params, {"occupations": None, "laion_download": DownloadConfig})
    config: DownloadConfig = configs["laion_download"]
    occupations = parse_occupations(configs["occupations"])
    check_download_config(config)  # a bad mirror network or size cap fails here (exit 2), before any run starts
    if not Path(args.selection).exists():
        raise FileNotFoundError(f"{args.selection}: not found (run laion_select first)")
    selection = pl.read_parquet(args.selection)
    out = Path(args.out)

    with stage_run("laion_download", configs["tracking"], {"laion_download": to_dict(config)}) as run:
        if len(selection) == 0:
            log.info("empty selection: nothing to download")
            (out / "shards").mkdir(parents=True, exist_ok=True)
            write_parquet(out / "status.parquet", pl.DataFrame(schema={c: pl.String for c in DOWNLOAD_COLUMNS}))
            write_json(args.metrics, {"enabled": False})
            return
        allowed, refused = refuse_urls(selection, config.local_mirror_networks)
        if len(refused):
            log.warning(
                "%d of %d URLs refused before any fetch: %s",
                len(refused),
                len(selection),
                dict(refused.group_by("reason").len().sort("reason").iter_rows()),
            )
        input_path, resumed = prepare_output(allowed, out / "shards")
        log.info(
            "%d URLs to download (%s) with distributor=%s",
            len(allowed),
            "resuming: finished shards are kept" if resumed else "fresh start",
            config.distributor,
        )
        with timed("img2dataset download", log) as timing:
            if len(allowed):
                run_img2dataset(input_path, out / "shards", config)
        unfinished = unfinished_shards(out / "shards")
        if unfinished:
            try:
                check_space_left(out / "shards")  # before removing them: a full disk fails the stage, naming it
            finally:
                remove_shards(out / "shards", unfinished)
            log.warning(
                "%d shard(s) did not finish (their URLs count as missing; a rerun fetches them): %s",
                len(unfinished),
                ", ".join(unfinished[:20]),
            )
        has_status = any((out / "shards").glob("*.parquet"))
        fetched = read_download_status(out / "shards") if has_status else refused.clear()
        status = pl.concat([fetched, refused], how="vertical_relaxed").sort("sample_id")
        write_parquet(out / "status.parquet", status)
        table = download_table(selection, status, occupations)
        n_ok = int((status["reason"] == "downloaded").sum())
        log.info(
            "downloaded %d of %d URLs in %.1f s; failures: %s",
            n_ok,
            len(selection),
            timing["seconds"],
            dict(status.filter(pl.col("reason") != "downloaded").group_by("reason").len().iter_rows()),
        )
        write_json(
            args.metrics,
            {
                "enabled": True,
                "n_urls": len(selection),
                "n_downloaded": n_ok,
                "n_refused": len(refused),
                "seconds": round(timing["seconds"], 3),
                "occupations": table.rows_by_key("occupation", named=True, unique=True),
            },
        )
        run.log_metrics({"n_urls": len(selection), "n_downloaded": n_ok, "n_refused": len(refused)})


if __name__ == "__main__":  # img2dataset's processes are spawned: they re-import the main module
    raise SystemExit(main())
