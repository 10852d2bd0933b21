"""laion_filter: keep downloaded images with exactly one face and nothing NSFW; the acquisition table.

Face rule ``laion_filter.faces`` (``off | at_least_one | exactly_one``) with MediaPipe BlazeFace
(full-range), NSFW threshold ``laion_filter.nsfw_threshold`` with open_nsfw (ONNX). Kept samples become
the corpus (``corpus.source: webdataset``, ``corpus.path: artifacts/laion_filter/kept``); dropped ones are
kept aside so what the filter removed can be measured.

Inputs:   artifacts/laion_select/selection.parquet, metrics/laion_select.json
          artifacts/laion_download (shards/*.tar, status.parquet)
Outputs:  artifacts/laion_filter/kept/*.tar, dropped/*.tar   (webdataset shards; .json has n_faces, nsfw_score, filter_reason)
          artifacts/laion_filter/samples.parquet               (key, sample_id, n_faces, face_score, nsfw_score, reason)
          metrics/acquisition.json                             (per occupation: matched, duplicate_url, over_cap,
                                                                requested, downloaded, failed_<reason>,
                                                                filtered_<reason>, kept, shares of women)
          plots/acquisition.csv                                (the same table, one row per occupation)
Params:   base, tracking, occupations, laion_filter

Example:
    python -m stages.laion_filter --selection artifacts/laion_select/selection.parquet \\
        --select-metrics metrics/laion_select.json --download artifacts/laion_download \\
        --out artifacts/laion_filter --metrics metrics/acquisition.json --table plots/acquisition.csv
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path

import polars as pl

from biasloop.core.config import to_dict
from biasloop.core.io import atomic_path, timed, write_json
from biasloop.core.stage import load_configs, make_parser, stage_main
from biasloop.core.tracking import stage_run
from biasloop.data.acquisition.download import download_table
from biasloop.data.acquisition.filtering import (
    FILTER_COLUMNS,
    FilterConfig,
    acquisition_table,
    dropped_gender_shares,
    filter_shards,
    filter_table,
)
from biasloop.data.retrieval import parse_occupations

log = logging.getLogger("laion_filter")


@stage_main(log)
def main(argv: Sequence[str] | None = None) -> None:
    parser = make_parser(__doc__, "python -m stages.laion_filter")
    parser.add_argument("--selection", default="artifacts/laion_select/selection.parquet", help="selection parquet")
    parser.add_argument("--select-metrics", default="metrics/laion_select.json", help="laion_select metrics JSON")
    parser.add_argument("--download", default="artifacts/laion_download", help="laion_download folder")
    parser.add_argument("--out", default="artifacts/laion_filter", help="output folder (default: %(default)s)")
    parser.add_argument("--metrics", default="metrics/acquisition.json", help="acquisition table JSON")
    parser.add_argument("--table", default="plots/acquisition.csv", help="acquisition table CSV")
    args = parser.parse_args(argv)
    configs = load_configs(args.params, {"occupations": None, "laion_filter": FilterConfig})
    config: FilterConfig = configs["laion_filter"]
    occupations = parse_occupations(configs["occupations"])
    for path in (args.selection, args.select_metrics, Path(args.download) / "status.parquet"):
        if not Path(path).exists():
            raise FileNotFoundError(f"{path}: not found (run laion_select and laion_download first)")
    selection = pl.read_parquet(args.selection)
    select_metrics = json.loads(Path(args.select_metrics).read_text())
    shards = sorted((Path(args.download) / "shards").glob("*.tar"))

    with stage_run("laion_filter", configs["tracking"], {"laion_filter": to_dict(config)}) as run:
        with atomic_path(args.out) as tmp:
            tmp.mkdir()
            if shards:
                with timed(f"filtering {len(shards)} shard(s)", log):
                    filtered = filter_shards(shards, tmp, config)
            else:
                log.info("no downloaded shards: nothing to filter")
                (tmp / "kept").mkdir()
                (tmp / "dropped").mkdir()
                filtered = pl.DataFrame(schema={c: pl.String for c in FILTER_COLUMNS})
            filtered.write_parquet(tmp / "samples.parquet")
        if not select_metrics.get("enabled"):
            write_json(args.metrics, {"enabled": False})
            with atomic_path(args.table) as tmp:
                tmp.write_text("occupation\n")
            return
        status = pl.read_parquet(Path(args.download) / "status.parquet")
        table = acquisition_table(
            select_metrics["occupations"],
            download_table(selection, status, occupations),
            filter_table(selection, filtered, occupations).join(
                dropped_gender_shares(selection, filtered, occupations), on="occupation"
            ),
        )
        reasons = dict(filtered.group_by("reason").len().iter_rows())
        log.info("filter outcome: %s", reasons)
        write_json(
            args.metrics,
            {
                "enabled": True,
                "n_filtered": len(filtered),
                "reasons": reasons,
                "occupations": table.rows_by_key("occupation", named=True, unique=True),
            },
        )
        with atomic_path(args.table) as tmp:
            table.write_csv(tmp)
        run.log_metrics({"n_kept": reasons.get("kept", 0), "n_filtered": len(filtered)})


if __name__ == "__main__":
    raise SystemExit(main())
