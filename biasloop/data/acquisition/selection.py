"""Selection over LAION-style metadata: the rows whose caption mentions an occupation, deduplicated and capped.

LAION's metadata is a set of parquet files with one row per image (``URL``, ``TEXT`` and more columns).
The occupation search is :func:`biasloop.data.retrieval.retrieve_lazy` (the same matcher, plurals and
gender-indicator tagging as the ``retrieve`` stage) run on a lazy scan of every file, on polars'
streaming engine, so memory is bounded by the matches, not by the metadata (LAION-2B: about 2.3 billion
rows in 128 files; a common occupation matches 10^4 to 10^5 of them).

Then, per occupation:

1. rows with an empty URL or caption are never matched (they are filtered in the scan);
2. **duplicate URLs** are counted and dropped (LAION repeats a URL under several captions; the first
   occurrence in file order is kept);
3. the rest are put in a seeded random order (``sha256("<seed>:<url>")``, so the order of a URL does not
   depend on the files it came with or on polars' hash) and the first ``max_per_occupation`` are kept.

A URL selected for several occupations is downloaded once: the selection has one row per URL, with the
list of occupations it was selected for. ``sample_id`` (``s000000000``, ...) numbers the rows in that
seeded order; the download, filter and acquisition table join on it.
"""

from __future__ import annotations

import dataclasses
import glob
import hashlib
from collections.abc import Mapping, Sequence
from pathlib import Path

import polars as pl

from biasloop.data.retrieval import retrieve_lazy

SELECTION_COLUMNS = ("sample_id", "url", "caption", "occupations", "indicator")


@dataclasses.dataclass(frozen=True)
class SelectConfig:
    """``laion_select``: which metadata files, which columns, how many images per occupation."""

    metadata: tuple[str, ...] = ()  # parquet files or globs; empty: no acquisition (the default study)
    url_column: str = "URL"  # LAION's column names
    caption_column: str = "TEXT"
    keep_columns: tuple[str, ...] = ()  # more metadata columns carried into the selection (e.g. WIDTH, punsafe)
    max_per_occupation: int = 1000  # images requested per occupation after URL dedupe
    seed: int = 0  # seed of the random order the cap keeps the first of


def metadata_files(patterns: Sequence[str]) -> list[Path]:
    """The parquet files named by ``patterns`` (paths or globs), sorted within each pattern.

    Raises:
        FileNotFoundError: when a pattern names no file.
    """
    files: list[Path] = []
    for pattern in patterns:
        found = (
            sorted(glob.glob(pattern)) if glob.has_magic(pattern) else ([pattern] if Path(pattern).is_file() else [])
        )
        if not found:
            raise FileNotFoundError(f"laion_select.metadata: {pattern!r} names no file")
        files.extend(Path(f) for f in found)
    return list(dict.fromkeys(files))


def scan_metadata(files: Sequence[str | Path], config: SelectConfig) -> pl.LazyFrame:
    """A lazy scan of the metadata with the columns renamed to ``id`` (the URL), ``caption`` and ``keep``.

    Raises:
        ValueError: naming the file when it is not a parquet file, or the column when a configured column
            is missing.
    """
    wanted = [config.url_column, config.caption_column, *config.keep_columns]
    for path in files:
        try:
            names = pl.scan_parquet(path).collect_schema().names()
        except Exception as exc:  # noqa: BLE001 - polars raises ComputeError, OSError, ... for a non-parquet file
            raise ValueError(f"{path}: not a readable parquet file ({type(exc).__name__}: {exc})") from exc
        missing = [c for c in wanted if c not in names]
        if missing:
            raise ValueError(
                f"{path}: missing column(s) {missing} (has {names}); see laion_select.url_column/caption_column"
            )
    clash = {"id", "caption", "url"} & set(config.keep_columns)
    if clash:
        raise ValueError(f"laion_select.keep_columns: {sorted(clash)} would clash with the selection's own columns")
    return (
        pl.scan_parquet([str(f) for f in files])
        .select(
            pl.col(config.url_column).cast(pl.String).str.strip_chars().alias("id"),
            pl.col(config.caption_column).cast(pl.String).alias("caption"),
            *[pl.col(c) for c in config.keep_columns],
        )
        .filter(pl.col("id").is_not_null() & (pl.col("id") != "") & pl.col("caption").is_not_null())
    )


def _order_key(seed: int, url: str) -> str:
    return hashlib.sha256(f"{seed}:{url}".encode()).hexdigest()


def select_rows(
    scan: pl.LazyFrame,
    occupations: Sequence[str],
    config: SelectConfig,
    plurals: Mapping[str, str | Sequence[str]] | None = None,
    first_names: bool = False,
) -> tuple[pl.DataFrame, dict]:
    """Select the rows to download.

    Args:
        scan: from :func:`scan_metadata`.
        occupations: occupation names (see :func:`biasloop.data.retrieval.occupation_forms`).
        config: the cap, seed and carried columns.
        plurals, first_names: as for :func:`biasloop.data.retrieval.retrieve_lazy`.

    Returns:
        ``(selection, counts)``: the selection (:data:`SELECTION_COLUMNS` plus ``keep_columns``; one row
        per URL; ``indicator`` from the caption kept for it) and ``{occupation: {"matched",
        "duplicate_url", "over_cap", "requested"}}`` (matched = requested + duplicates + over the cap).
    """
    if config.max_per_occupation < 1:
        raise ValueError(f"laion_select.max_per_occupation must be at least 1, got {config.max_per_occupation}")
    matches = retrieve_lazy(scan, occupations, plurals, first_names, keep=list(config.keep_columns))
    matches = matches.select("occupation", "id", "caption", "indicator", *config.keep_columns).collect(
        engine="streaming"
    )
    matched = dict(matches.group_by("occupation").len().iter_rows())
    unique = matches.unique(["occupation", "id"], keep="first", maintain_order=True)
    unique_counts = dict(unique.group_by("occupation").len().iter_rows())
    keys = [_order_key(config.seed, url) for url in unique["id"].to_list()]
    capped = (
        unique.with_columns(pl.Series("_order", keys, dtype=pl.String))
        .sort("occupation", "_order")
        .filter(pl.int_range(pl.len()).over("occupation") < config.max_per_occupation)
    )
    requested = dict(capped.group_by("occupation").len().iter_rows())
    counts = {
        name: {
            "matched": int(matched.get(name, 0)),
            "duplicate_url": int(matched.get(name, 0) - unique_counts.get(name, 0)),
            "over_cap": int(unique_counts.get(name, 0) - requested.get(name, 0)),
            "requested": int(requested.get(name, 0)),
        }
        for name in occupations
    }
    per_url = (
        capped.sort("_order", "occupation")
        .group_by("id", maintain_order=True)
        .agg(
            pl.col("occupation").alias("occupations"),
            pl.col("caption").first(),
            pl.col("indicator").first(),
            *[pl.col(c).first() for c in config.keep_columns],
        )
    )
    selection = per_url.with_columns(
        pl.format("s{}", pl.int_range(pl.len(), dtype=pl.UInt64).cast(pl.String).str.zfill(9)).alias("sample_id")
    ).rename({"id": "url"})
    return selection.select(*SELECTION_COLUMNS, *config.keep_columns), counts
