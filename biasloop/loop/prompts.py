"""What the ``generate@N`` stage asks the generator for: neutral prompts and captions used as prompts.

For each occupation: every neutral template (``"a photo of {article} {occupation}"``) ``n_per_prompt`` times,
and a capped, seeded sample of the captions the ``keyword`` selection retrieved for it, each used as a
prompt (the paradox study's captions-as-prompts control). The caption sample depends on ``base.seed``
only, so every generation is asked the same questions; image seeds also depend on the generation.
"""

from __future__ import annotations

import dataclasses
import logging
import zlib

import numpy as np
import polars as pl

from biasloop.core.seeds import stream_seed
from biasloop.data.text import fill_template

log = logging.getLogger(__name__)

MANIFEST_COLUMNS = ("prompt_kind", "occupation", "prompt", "seed", "image_ref", "template", "source_id")


@dataclasses.dataclass(frozen=True)
class GenerateConfig:
    """``generate``: the images each generation's generator makes for measurement."""

    neutral_prompts: tuple[str, ...] = ("a photo of {article} {occupation}", "{article} {occupation} at work")
    n_per_prompt: int = 60  # images per neutral template and occupation (benchmarks/noise_floor.py)
    caption_selection: str = "keyword"  # selection whose captions are used as prompts
    max_captions_per_occupation: int = 120  # captions-as-prompts per occupation (seeded sample; one image each)
    batch_size: int = 256  # images per generator call
    shard_size: int = 4096  # images per .npy shard
    num_processes: int = (
        1  # processes (GPUs) generating in parallel under `accelerate launch`; results do not depend on it
    )


def plan_prompts(
    config: GenerateConfig,
    occupations: list[str] | tuple[str, ...],
    selections: pl.DataFrame,
    corpus: pl.DataFrame,
    seed: int,
) -> pl.DataFrame:
    """The prompts to generate, one row per image (without seeds and image refs).

    Args:
        config: the ``generate`` params.
        occupations: occupations to generate for, in order.
        selections: ``selection, occupation, id, similarity, rank`` (from the neighbours stage).
        corpus: ``id, caption, ...`` (captions of the selected ids).
        seed: ``base.seed``; decides the caption sample.

    Returns:
        ``prompt_kind, occupation, prompt, template, source_id`` rows: neutral prompts first, then
        captions, occupation by occupation.
    """
    if config.n_per_prompt < 0 or config.max_captions_per_occupation < 0:
        raise ValueError("generate.n_per_prompt and generate.max_captions_per_occupation must be >= 0")
    for column in ("selection", "occupation", "id"):
        if column not in selections.columns:
            raise ValueError(f"selections: missing column {column!r} (has {selections.columns})")
    known = selections["selection"].unique().to_list()
    if config.max_captions_per_occupation and config.caption_selection not in known:
        raise ValueError(f"generate.caption_selection: {config.caption_selection!r} not in the selections {known}")
    chosen = (
        selections.filter(pl.col("selection") == config.caption_selection)
        .select("occupation", "id")
        .join(corpus.select("id", "caption"), on="id", how="inner")
        .sort("occupation", "id")
    )
    rows: dict[str, list] = {k: [] for k in ("prompt_kind", "occupation", "prompt", "template", "source_id")}

    def add(kind: str, occupation: str, prompt: str, template: str | None, source: str | None) -> None:
        rows["prompt_kind"].append(kind)
        rows["occupation"].append(occupation)
        rows["prompt"].append(prompt)
        rows["template"].append(template)
        rows["source_id"].append(source)

    for occupation in occupations:
        for template in config.neutral_prompts:
            prompt = fill_template(template, occupation=occupation)
            for _ in range(config.n_per_prompt):
                add("neutral", occupation, prompt, template, None)
    for occupation in occupations:
        pool = chosen.filter(pl.col("occupation") == occupation)
        if len(pool) == 0:
            if config.max_captions_per_occupation:
                log.warning("no %r captions for %s: no captions-as-prompts", config.caption_selection, occupation)
            continue
        rng = np.random.default_rng(stream_seed(seed, "caption-prompts", zlib.crc32(occupation.encode())))
        take = min(config.max_captions_per_occupation, len(pool))
        picked = np.sort(rng.choice(len(pool), size=take, replace=False))
        for caption, source in zip(pool["caption"].gather(picked), pool["id"].gather(picked)):
            add("caption", occupation, caption, None, source)
    return pl.DataFrame(
        rows,
        schema={
            "prompt_kind": pl.String,
            "occupation": pl.String,
            "prompt": pl.String,
            "template": pl.String,
            "source_id": pl.String,
        },
    )
