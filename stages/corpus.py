"""corpus: build the glyph world, or ingest a LAION-style corpus, into one normalised form.

Inputs:   data/ (occupation table + MNIST glyph pool for the world; tar shards or a parquet
          listing for ``corpus.source: webdataset | folder``)
Outputs:  artifacts/corpus/captions.parquet  (id, caption, image_ref, true_occupation, true_gender,
                                             true_indicator, true_ambiguous, split)
          artifacts/corpus/images/*.npy       (uint8 image shards)
          artifacts/corpus/skipped.parquet    (where, id, reason, detail: records left out of an
                                             ingested corpus; empty for the world)
          metrics/corpus.json                 (counts, skipped records by reason; world: share of women
                                             per occupation, markedness check; with world.tone.enabled,
                                             attributes.tone: the training split's tone statistics)
          plots/corpus_contact_sheet.png      (a grid of samples per occupation)
Params:   base, tracking, occupations, world, corpus

With ``world.tone.enabled`` the world's samples also have ``true_tone`` and ``true_tone_indicator``
(``biasloop.data.tones``), and ``metrics/corpus.json`` gets ``attributes.tone`` over the training split:
``overall`` (each tone's share of all people), ``per_occupation`` (``table_<tone>``: the tone table's
fraction; ``share_<tone>``: the drawn share; ``share_<tone>_no_indicator``: that share among captions
without a tone adjective; ``indicator_rate``: the share of captions with one; ``n``), and the mean total
variation distance from uniform of all captions and of unmarked ones (``mtv_all_captions``,
``mtv_no_indicator_captions``; :func:`biasloop.data.tones.tone_statistics`). Tone off: no such key.

Ingested corpora stream: one shard of images is in memory at a time. Unreadable records are skipped
and listed in skipped.parquet; the stage fails (exit 2, nothing written) when more than
corpus.max_bad_fraction of them are skipped.

Example:
    python -m stages.corpus --out artifacts/corpus --metrics metrics/corpus.json \\
        --contact-sheet plots/corpus_contact_sheet.png
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import polars as pl

from biasloop.core.config import to_dict
from biasloop.core.io import load_images, timed, write_json
from biasloop.core.stage import load_configs, make_parser, runtime_facts, stage_main
from biasloop.core.tracking import stage_run
from biasloop.data.corpus import (
    CorpusConfig,
    CorpusError,
    ingest_corpus,
    iter_folder,
    iter_webdataset,
    write_corpus,
)
from biasloop.data.tones import TONES, read_tone_table, tone_statistics
from biasloop.data.world import (
    WorldConfig,
    build_world,
    read_occupation_shares,
    world_statistics,
)
from biasloop.report.plots import contact_sheet

log = logging.getLogger("corpus")


@stage_main(log)
def main(argv: Sequence[str] | None = None) -> None:
    parser = make_parser(__doc__, "python -m stages.corpus")
    parser.add_argument("--out", default="artifacts/corpus", help="output folder (default: %(default)s)")
    parser.add_argument("--metrics", default="metrics/corpus.json", help="metrics JSON (default: %(default)s)")
    parser.add_argument(
        "--contact-sheet", default="plots/corpus_contact_sheet.png", help="contact sheet PNG (default: %(default)s)"
    )
    args = parser.parse_args(argv)
    configs = load_configs(args.params, {"occupations": None, "world": WorldConfig, "corpus": CorpusConfig})
    corpus: CorpusConfig = configs["corpus"]
    world: WorldConfig = configs["world"]
    occupations = configs["occupations"] or []

    params = {"corpus": to_dict(corpus), "occupations": occupations}
    if corpus.source == "world":
        params["world"] = to_dict(world)
    with stage_run("corpus", configs["tracking"], params) as run:
        with timed(f"building corpus from source={corpus.source}", log):
            if corpus.source == "world":
                samples, images = build_world(world, list(occupations))
                table = write_corpus(samples, images, args.out, corpus.shard_size)
                ingestion = None
            else:
                if corpus.path is None:
                    raise CorpusError(
                        f"corpus.path: the {corpus.source} source needs "
                        f"{'a folder of .tar shards' if corpus.source == 'webdataset' else 'a parquet listing'}"
                    )
                records = (
                    iter_webdataset(corpus.path, max_member_bytes=corpus.max_file_bytes)
                    if corpus.source == "webdataset"
                    else iter_folder(corpus)
                )
                ingestion = ingest_corpus(records, corpus, args.out)
                # The first shard is enough for the contact sheet; the whole table is never in memory.
                table = pl.scan_parquet(f"{args.out}/captions.parquet").head(corpus.shard_size).collect()
                images = load_images(table["image_ref"].to_list())

        if ingestion is None:
            counts = table["split"].value_counts()
            n_split = dict(zip(counts["split"].to_list(), counts["count"].to_list()))
        else:
            n_split = {"train": 0, "test": 0} | dict(ingestion.n_split)
        metrics: dict = {
            "n_samples": sum(n_split.values()),
            "n_train": int(n_split.get("train", 0)),
            "n_test": int(n_split.get("test", 0)),
            "image_size": int(images.shape[1]),
        }
        log.info(
            "wrote %d samples (%d train, %d test) to %s",
            metrics["n_samples"],
            metrics["n_train"],
            metrics["n_test"],
            args.out,
        )
        if ingestion is not None:
            metrics["ingestion"] = ingestion.to_metrics()
        if corpus.source == "world":
            metrics.update(world_statistics(table, read_occupation_shares(world.occupation_table)))
            if world.tone.enabled:
                metrics["attributes"] = {"tone": _tone_metrics(table, world)}
        write_json(args.metrics, {**metrics, **runtime_facts()})
        contact_sheet(table, images, args.contact_sheet, seed=configs["base"].seed)
        run.log_metrics({k: v for k, v in metrics.items() if k not in ("per_occupation", "attributes")})
        run.log_artifact(args.contact_sheet)


def _tone_metrics(table: pl.DataFrame, world: WorldConfig) -> dict:
    """``attributes.tone`` of metrics/corpus.json: the training split's tone shares and markedness."""
    train = table.filter(pl.col("split") == "train")
    people = train.filter(pl.col("true_tone").is_not_null())
    overall = {t: float((people["true_tone"] == t).mean()) if len(people) else None for t in TONES}
    statistics = tone_statistics(train, read_tone_table(world.tone.table))
    log.info(
        "tone (training split): shares %s, mean TV from uniform %.3f (captions without a tone word %.3f)",
        {t: round(v, 3) for t, v in overall.items() if v is not None},
        statistics["mtv_all_captions"],
        statistics["mtv_no_indicator_captions"],
    )
    return {"split": "train", "classes": list(TONES), "n": len(people), "overall": overall, **statistics}


if __name__ == "__main__":
    raise SystemExit(main())
