"""Every image ``generate@N`` asks for, written out for a generator outside the pipeline.

``biasloop prompts export`` writes :func:`export_prompts`'s table: one row per image, in ``generate@N``'s
order, with the image's ``prompt_id`` (:func:`biasloop.models.generators.image_folder.prompt_id`, a hash
of prompt and seed), the seed ``generate@N`` would give it (:func:`image_seeds`), and what the paradox
needs to pair it: ``prompt_kind`` (``neutral`` prompts, and ``caption``\\ s used as prompts with the
``source_id`` of the caption), the ``occupation`` and, for a neutral prompt, its ``template``.
``n_images`` is how many images the export asks for that prompt (``generate.n_per_prompt`` for each
neutral template and occupation, 1 per caption). Images made for these rows and put in a folder with a
``manifest.csv`` are what ``generator.backend: images`` serves (docs/audit.md).
"""

from __future__ import annotations

from pathlib import Path

import polars as pl

from biasloop.core.io import atomic_path
from biasloop.loop.mixing import generation_seeds
from biasloop.loop.prompts import GenerateConfig, plan_prompts
from biasloop.models.generators.image_folder import prompt_id

GENERATE_SEED_STREAM = "generate-noise"  # generate@N's stream of per-image seeds (mix@N uses mix-noise)
EXPORT_COLUMNS = (
    "prompt_id",
    "generation",
    "prompt_kind",
    "occupation",
    "prompt",
    "seed",
    "n_images",
    "template",
    "source_id",
)
FORMATS = ("csv", "jsonl")


def image_seeds(seed: int, generation: int, count: int) -> list[int]:
    """``generate@N``'s per-image seeds: image ``i``'s is the ``i``-th draw of stream ``generate-noise``, N."""
    return generation_seeds(seed, generation, count, stream=GENERATE_SEED_STREAM)


def export_prompts(
    config: GenerateConfig,
    occupations: list[str] | tuple[str, ...],
    selections: pl.DataFrame,
    corpus: pl.DataFrame,
    seed: int,
    generation: int = 0,
) -> pl.DataFrame:
    """The requests of ``generate@N``, one row per image (:data:`EXPORT_COLUMNS`, see the module docstring).

    Args:
        config, occupations, selections, corpus, seed: as for :func:`biasloop.loop.prompts.plan_prompts`.
        generation: N (the seeds depend on it; the prompts do not).

    Raises:
        ValueError: nothing to ask for, or two rows with one ``prompt_id`` (a repeated seed).
    """
    plan = plan_prompts(config, occupations, selections, corpus, seed)
    if len(plan) == 0:
        raise ValueError("nothing to export: no neutral prompts and no selected captions")
    seeds = image_seeds(seed, generation, len(plan))
    ids = [prompt_id(p, s) for p, s in zip(plan["prompt"].to_list(), seeds)]
    frame = plan.with_columns(
        pl.Series("prompt_id", ids, dtype=pl.String),
        pl.lit(generation, dtype=pl.Int64).alias("generation"),
        pl.Series("seed", seeds, dtype=pl.Int64),
        pl.len().over("prompt_kind", "occupation", "prompt").cast(pl.Int64).alias("n_images"),
    ).select(EXPORT_COLUMNS)
    if frame["prompt_id"].n_unique() != len(frame):
        raise ValueError("two requested images share a prompt and a seed: their prompt_ids collide")
    return frame


def write_prompts(frame: pl.DataFrame, path: str | Path, fmt: str | None = None) -> Path:
    """Write an export as CSV or JSON Lines (``fmt``, or the suffix of ``path``), atomically."""
    path = Path(path)
    fmt = fmt or path.suffix.lstrip(".").lower()
    if fmt not in FORMATS:
        raise ValueError(f"{path}: format {fmt!r} unknown (expected one of {list(FORMATS)}: .csv or .jsonl)")
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        if fmt == "csv":
            frame.write_csv(tmp)
        else:
            frame.write_ndjson(tmp)
    return path


def read_prompts(path: str | Path) -> pl.DataFrame:
    """An export written by :func:`write_prompts` (``.csv`` or ``.jsonl``), checked for its key columns."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found")
    if path.suffix.lower() == ".jsonl":
        frame = pl.read_ndjson(path, infer_schema_length=None)
    else:
        frame = pl.read_csv(path, schema_overrides={"source_id": pl.String, "template": pl.String})
    missing = [c for c in ("prompt_id", "prompt_kind", "occupation", "prompt", "seed") if c not in frame.columns]
    if missing:
        raise ValueError(f"{path}: missing column(s) {missing}: not a `biasloop prompts export` file")
    if "source_id" not in frame.columns:
        frame = frame.with_columns(pl.lit(None, dtype=pl.String).alias("source_id"))
    return frame
