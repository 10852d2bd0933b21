"""retrieve: per occupation, the corpus captions that mention it, tagged with their gender indicators.

Whole-word, case-insensitive keyword search over singular and plural forms (irregular plurals from
``retrieve.plurals``), one streaming polars scan over the corpus, so a corpus larger than memory works;
each retrieved caption is labelled male | female | both | none from the paradox study's word lists.

Inputs:   --corpus  captions parquet (id, caption; ground truth true_occupation / true_indicator
                    and split where present)
Outputs:  --out     matches parquet: occupation, id, caption, indicator, male_terms, female_terms
                    (terms are list[str]), one row per (occupation, caption that mentions it)
          --metrics JSON: counts and indicator shares per occupation, the occupations no caption
                    mentions (also a warning: they drop out of every average), speed, and, when the corpus has
                    ground truth, precision/recall against true_occupation and agreement with
                    true_indicator
Params:   base, tracking, occupations, retrieve

Example:
    python -m stages.retrieve --corpus artifacts/corpus/captions.parquet \\
        --out artifacts/retrieve/matches.parquet --metrics metrics/retrieve.json
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path

import polars as pl

from biasloop.core.config import to_dict
from biasloop.core.io import write_json, write_parquet
from biasloop.core.stage import load_configs, make_parser, runtime_facts, stage_main
from biasloop.core.tracking import stage_run
from biasloop.data.retrieval import (
    RetrieveConfig,
    evaluate_against_truth,
    indicator_shares,
    occupations_without_matches,
    parse_occupations,
    retrieve_lazy,
    streaming_problems,
)

log = logging.getLogger("retrieve")
TRUTH_COLUMNS = ("true_occupation", "true_indicator")


@stage_main(log)
def main(argv: Sequence[str] | None = None) -> None:
    parser = make_parser(__doc__, "python -m stages.retrieve")
    parser.add_argument(
        "--corpus", default="artifacts/corpus/captions.parquet", help="captions parquet (default: %(default)s)"
    )
    parser.add_argument(
        "--out", default="artifacts/retrieve/matches.parquet", help="matches parquet (default: %(default)s)"
    )
    parser.add_argument("--metrics", default="metrics/retrieve.json", help="metrics JSON (default: %(default)s)")
    args = parser.parse_args(argv)
    configs = load_configs(args.params, {"occupations": None, "retrieve": RetrieveConfig})
    config: RetrieveConfig = configs["retrieve"]
    occupations = parse_occupations(configs["occupations"])
    if not Path(args.corpus).exists():
        raise FileNotFoundError(f"corpus {args.corpus} not found (run the corpus stage first)")

    corpus = pl.scan_parquet(args.corpus)
    columns = corpus.collect_schema().names()
    if config.split is not None:
        if "split" not in columns:
            raise ValueError(f"retrieve.split: {args.corpus} has no split column (set retrieve.split: null)")
        corpus = corpus.filter(pl.col("split") == config.split)
    truth = [c for c in TRUTH_COLUMNS if c in columns]

    with stage_run(
        "retrieve", configs["tracking"], {"occupations": list(occupations), "retrieve": to_dict(config)}
    ) as run:
        n_captions = corpus.select(pl.len()).collect(engine="streaming").item()
        query = retrieve_lazy(corpus, occupations, config.plurals, config.first_names, keep=truth)
        for node in streaming_problems(query):
            log.warning("retrieval plan node %r does not stream: memory may grow with the corpus", node)
        log.info("scanning %d captions (split=%s) for %d occupations", n_captions, config.split, len(occupations))
        start = time.perf_counter()
        matches = query.collect(engine="streaming")
        seconds = time.perf_counter() - start
        log.info(
            "retrieved %d matches (%d captions) in %.1f s (%.0f captions/s)",
            len(matches),
            matches["id"].n_unique(),
            seconds,
            n_captions / max(seconds, 1e-9),
        )

        missing = occupations_without_matches(matches, occupations)
        if missing:
            log.warning(
                "no caption mentions %d of %d occupations: %s; they have no training share and drop "
                "out of every average over occupations",
                len(missing),
                len(occupations),
                ", ".join(missing),
            )
        metrics = {
            "n_captions": n_captions,
            "n_occupations": len(occupations),
            "n_occupations_with_matches": len(occupations) - len(missing),
            "occupations_without_matches": missing,
            "n_matches": len(matches),
            "n_captions_retrieved": matches["id"].n_unique(),
            "seconds": round(seconds, 3),
            "captions_per_second": round(n_captions / max(seconds, 1e-9)),
            "indicators": indicator_shares(matches, occupations),
        }
        if truth:
            metrics["ground_truth"] = evaluate_against_truth(matches, corpus, occupations)
            log.info(
                "against ground truth: precision %s, recall %s, indicator agreement %s",
                metrics["ground_truth"].get("precision"),
                metrics["ground_truth"].get("recall"),
                metrics["ground_truth"].get("indicator_agreement"),
            )
        write_parquet(args.out, matches.drop(truth))
        write_json(args.metrics, {**metrics, **runtime_facts()})
        log.info("wrote %s and %s", args.out, args.metrics)
        run.log_metrics(metrics)
        run.log_artifact(args.metrics)


if __name__ == "__main__":
    raise SystemExit(main())
