"""neighbours: the four training-caption selections of the paradox study, by Sentence-BERT similarity.

Embeds the retrieved captions and each occupation's prompts (``neighbours.prompts``, "a" turned into
"an" before a vowel) with a cached text encoder, so no text is ever embedded twice for a model (the
cache lives in ``<DVC_ROOT>/.cache/embeddings``, shared by every experiment); ranks each occupation's
captions by cosine similarity to the mean of its prompt embeddings (ties: smaller id first).

Inputs:   --matches  retrieve's matches parquet (occupation, id, caption, indicator, ...)
Outputs:  --out      selections parquet: selection, occupation, id, similarity, rank, where selection is
                     keyword (every retrieved caption), keyword_no_indicator (indicator "none"), nn (top
                     k per occupation) or nn_no_indicator (top k among captions without an indicator)
          --metrics  JSON: counts per selection and occupation, embedding seconds, cache hits/misses
Params:   base, tracking, occupations, neighbours

Example:
    python -m stages.neighbours --matches artifacts/retrieve/matches.parquet \\
        --out artifacts/neighbours/selections.parquet --metrics metrics/neighbours.json
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from biasloop.core.config import to_dict
from biasloop.core.io import write_json, write_parquet
from biasloop.core.runtime import resolve_device
from biasloop.core.stage import load_configs, make_parser, runtime_facts, stage_main
from biasloop.core.tracking import stage_run
from biasloop.data.embeddings import CachedTextEncoder, load_text_encoder
from biasloop.data.retrieval import (
    SELECTIONS,
    NeighboursConfig,
    parse_occupations,
    select_neighbours,
)
from biasloop.data.text import fill_template

log = logging.getLogger("neighbours")


@stage_main(log)
def main(argv: Sequence[str] | None = None) -> None:
    parser = make_parser(__doc__, "python -m stages.neighbours")
    parser.add_argument(
        "--matches",
        default="artifacts/retrieve/matches.parquet",
        help="retrieve's matches parquet (default: %(default)s)",
    )
    parser.add_argument(
        "--out", default="artifacts/neighbours/selections.parquet", help="selections parquet (default: %(default)s)"
    )
    parser.add_argument("--metrics", default="metrics/neighbours.json", help="metrics JSON (default: %(default)s)")
    args = parser.parse_args(argv)
    configs = load_configs(args.params, {"occupations": None, "neighbours": NeighboursConfig})
    config: NeighboursConfig = configs["neighbours"]
    occupations = parse_occupations(configs["occupations"])
    if config.k < 1 or config.batch_size < 1 or not config.prompts:
        raise ValueError("neighbours: k and batch_size must be at least 1 and prompts non-empty")
    prompts = {o: [fill_template(template, occupation=o) for template in config.prompts] for o in occupations}
    if not Path(args.matches).exists():
        raise FileNotFoundError(f"matches {args.matches} not found (run the retrieve stage first)")
    matches = pl.read_parquet(args.matches, columns=["occupation", "id", "caption", "indicator"])
    unknown = set(matches["occupation"].unique()) - set(occupations)
    if unknown:
        log.warning("ignoring matches for occupations not in params: %s", sorted(unknown))
        matches = matches.filter(pl.col("occupation").is_in(occupations))

    with stage_run(
        "neighbours", configs["tracking"], {"occupations": list(occupations), "neighbours": to_dict(config)}
    ) as run:
        start = time.perf_counter()
        encoder = CachedTextEncoder(
            load_text_encoder(
                config.model, device=resolve_device(configs["base"].device), allow_download=config.allow_download
            )
        )
        load_seconds = time.perf_counter() - start
        captions = matches.select("caption").unique(maintain_order=True).with_row_index("row")
        log.info(
            "embedding %d distinct captions and %d prompts with %s (cache %s)",
            len(captions),
            sum(map(len, prompts.values())),
            encoder.name,
            encoder.model_dir,
        )
        start = time.perf_counter()
        caption_vectors = encoder.encode(captions["caption"].to_list(), batch_size=config.batch_size, progress=True)
        prompt_vectors = encoder.encode([p for o in occupations for p in prompts[o]], batch_size=config.batch_size)
        embed_seconds = time.perf_counter() - start
        log.info("embedding done in %.1f s: %s", embed_seconds, encoder.stats())

        queries = prompt_vectors.reshape(len(occupations), len(config.prompts), -1).mean(axis=1)
        queries /= np.maximum(np.linalg.norm(queries, axis=1, keepdims=True), 1e-12)
        rows = matches.join(captions, on="caption", how="left", maintain_order="left")["row"].to_numpy()
        occupation_index = matches["occupation"].replace_strict({o: i for i, o in enumerate(occupations)}).to_numpy()
        similarity = np.einsum("ij,ij->i", caption_vectors[rows], queries[occupation_index])
        selections = select_neighbours(matches, similarity, config.k)

        per_selection = {name: _selection_summary(selections, name, occupations, config.k) for name in SELECTIONS}
        stats = encoder.stats()
        metrics = {
            "model": encoder.name,
            "k": config.k,
            "n_distinct_captions": len(captions),
            "model_load_seconds": round(load_seconds, 3),
            "embedding_seconds": round(embed_seconds, 3),
            "cache_hits": stats["hits"],
            "cache_misses": stats["misses"],
            "embedded": stats["embedded"],
            "selections": per_selection,
        }
        write_parquet(args.out, selections)
        write_json(args.metrics, {**metrics, **runtime_facts()})
        log.info("wrote %d selection rows to %s", len(selections), args.out)
        run.log_metrics(metrics)
        run.log_artifact(args.metrics)


def _selection_summary(selections: pl.DataFrame, name: str, occupations: Sequence[str], k: int) -> dict[str, Any]:
    """One selection's size, mean similarity and captions per occupation; warns when a nearest-neighbour
    selection has fewer than ``k`` captions for an occupation."""
    chosen = selections.filter(pl.col("selection") == name)
    counts = dict(chosen.group_by("occupation").len().iter_rows())
    short = [o for o in occupations if counts.get(o, 0) < k]
    if name.startswith("nn") and short:
        log.warning("%s: fewer than k=%d captions for %s", name, k, ", ".join(short))
    return {
        "n": len(chosen),
        "mean_similarity": float(chosen["similarity"].mean()) if len(chosen) else None,
        "occupations": {o: int(counts.get(o, 0)) for o in occupations},
    }


if __name__ == "__main__":
    raise SystemExit(main())
