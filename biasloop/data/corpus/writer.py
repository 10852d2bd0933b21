"""Writing a corpus folder a shard at a time (:class:`CorpusWriter`), and ingestion: records decoded,
validated, split into train/test and written, with an :class:`IngestReport` of what was skipped.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from biasloop.data.corpus.records import (
    _WARN_FIRST,
    CAPTION_COLUMNS,
    CAPTION_SCHEMA,
    OPTIONAL_CAPTION_SCHEMA,
    SKIPPED_SCHEMA,
    CorpusConfig,
    CorpusError,
    Record,
    Skipped,
    _Skip,
    clean_caption,
    decode_image,
    pixel_limit,
)

log = logging.getLogger(__name__)

# --------------------------------------------------------------------------------------------------
# Writing


class CorpusWriter:
    """Write a corpus folder (captions, image shards, skipped records) atomically, a shard at a time.

    Use as a context manager. Rows go through :meth:`add` (one sample) or :meth:`add_frame` (a frame
    and its images); every ``shard_size`` images become ``images/NNNNN.npy`` and a caption part, so
    at most one shard is in memory. On a clean exit the parts are joined into ``captions.parquet``
    and the folder is renamed onto ``out_dir``; on an exception nothing is left behind.
    ``optional_columns`` (keys of :data:`OPTIONAL_CAPTION_SCHEMA`) are written after the caption columns.
    """

    def __init__(self, out_dir: str | Path, shard_size: int, optional_columns: tuple[str, ...] = ()) -> None:
        if shard_size < 1:
            raise ValueError(f"shard_size must be at least 1, got {shard_size}")
        unknown = [c for c in optional_columns if c not in OPTIONAL_CAPTION_SCHEMA]
        if unknown:
            raise ValueError(f"optional column {unknown[0]!r} unknown (known: {', '.join(OPTIONAL_CAPTION_SCHEMA)})")
        self.columns = CAPTION_COLUMNS + tuple(optional_columns)
        self.schema = CAPTION_SCHEMA | {c: OPTIONAL_CAPTION_SCHEMA[c] for c in optional_columns}
        self.out_dir = Path(out_dir)
        self.shard_size = shard_size
        self.n_written = 0
        self._stack = contextlib.ExitStack()
        self._rows: list[dict[str, Any]] = []
        self._images: np.ndarray | None = None
        self._shards = 0
        self._skipped: list[Skipped] = []
        self.tmp: Path | None = None

    def __enter__(self) -> CorpusWriter:
        from biasloop.core.io import atomic_path

        self.tmp = self._stack.enter_context(atomic_path(self.out_dir))
        (self.tmp / "images").mkdir(parents=True)
        (self.tmp / "parts").mkdir()
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> bool:
        if exc_type is None:
            try:
                self._finish()
            except BaseException as error:
                self._stack.__exit__(type(error), error, error.__traceback__)  # removes the temporary folder
                raise
        return bool(self._stack.__exit__(exc_type, exc, tb))

    def add(self, row: dict[str, Any], image: np.ndarray) -> None:
        """Add one sample: ``row`` has caption columns (missing ones are null, no ``image_ref``)."""
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3:
            raise ValueError(f"expected a uint8 (h, w, 3) image, got {image.dtype} {image.shape}")
        if self._images is None:
            self._images = np.empty((self.shard_size, *image.shape), dtype=np.uint8)
        elif image.shape != self._images.shape[1:]:
            raise ValueError(f"image of shape {image.shape} in a corpus of {self._images.shape[1:]} images")
        self._images[len(self._rows)] = image
        self._rows.append(row)
        if len(self._rows) == self.shard_size:
            self._flush()

    def add_frame(self, samples: pl.DataFrame, images: np.ndarray) -> None:
        """Add every row of ``samples`` with the image of the same index."""
        if len(samples) != len(images):
            raise ValueError(f"{len(samples)} caption rows but {len(images)} images")
        for index, row in enumerate(samples.iter_rows(named=True)):
            self.add(row, images[index])

    def skip(self, skipped: Skipped) -> None:
        """Record a record left out (written to ``skipped.parquet``)."""
        self._skipped.append(skipped)

    def _flush(self) -> None:
        if not self._rows:
            return
        assert self.tmp is not None and self._images is not None
        name = f"{self._shards:05d}.npy"
        np.save(self.tmp / "images" / name, self._images[: len(self._rows)], allow_pickle=False)
        shard_ref = (self.out_dir / "images" / name).as_posix()
        rows = [
            {**{c: row.get(c) for c in self.columns}, "image_ref": f"{shard_ref}#{i}"}
            for i, row in enumerate(self._rows)
        ]
        part = pl.DataFrame(rows, schema=self.schema)
        part.write_parquet(self.tmp / "parts" / f"{self._shards:05d}.parquet")
        self.n_written += len(rows)
        self._shards += 1
        self._rows = []

    def _finish(self) -> None:
        assert self.tmp is not None
        self._flush()
        parts = sorted((self.tmp / "parts").glob("*.parquet"))
        if parts:
            pl.scan_parquet(parts).sink_parquet(self.tmp / "captions.parquet", compression="zstd", statistics=True)
        else:
            pl.DataFrame(schema=self.schema).write_parquet(self.tmp / "captions.parquet")
        for part in parts:
            part.unlink()
        (self.tmp / "parts").rmdir()
        pl.DataFrame(self._skipped, schema=SKIPPED_SCHEMA, orient="row").write_parquet(self.tmp / "skipped.parquet")


def write_corpus(samples: pl.DataFrame, images: np.ndarray, out_dir: str | Path, shard_size: int) -> pl.DataFrame:
    """Write ``captions.parquet`` and the image shards of an in-memory corpus into ``out_dir`` atomically.

    The rows go through :class:`CorpusWriter` one shard at a time (``images`` may be a memory map); the
    columns of :data:`OPTIONAL_CAPTION_SCHEMA` that ``samples`` has (a world with tone) are written too.

    Returns:
        The written caption table (with ``image_ref``).
    """
    optional = tuple(c for c in OPTIONAL_CAPTION_SCHEMA if c in samples.columns)
    with CorpusWriter(out_dir, shard_size, optional) as writer:
        writer.add_frame(samples, images)
    return pl.read_parquet(Path(out_dir) / "captions.parquet")


# --------------------------------------------------------------------------------------------------
# Ingestion


@dataclasses.dataclass
class IngestReport:
    """What an ingestion read, kept and skipped (JSON-ready with :meth:`to_metrics`)."""

    n_records: int = 0  # records read (empty shards are not records)
    n_kept: int = 0
    n_captions_cleaned: int = 0  # kept captions in which control characters became spaces
    n_empty_shards: int = 0
    n_split: Counter = dataclasses.field(default_factory=Counter)  # kept records per split
    skipped_by_reason: Counter = dataclasses.field(default_factory=Counter)
    first_skipped: Skipped | None = None
    max_bad_fraction: float = 0.0

    @property
    def n_skipped(self) -> int:
        return sum(n for reason, n in self.skipped_by_reason.items() if reason != "empty_shard")

    @property
    def skipped_share(self) -> float:
        return self.n_skipped / self.n_records if self.n_records else 0.0

    def to_metrics(self) -> dict[str, Any]:
        return {
            "n_records": self.n_records,
            "n_kept": self.n_kept,
            "n_skipped": self.n_skipped,
            "skipped_share": round(self.skipped_share, 6),
            "max_bad_fraction": self.max_bad_fraction,
            "skipped_by_reason": dict(sorted(self.skipped_by_reason.items())),
            "n_captions_cleaned": self.n_captions_cleaned,
            "n_empty_shards": self.n_empty_shards,
        }

    def check(self) -> None:
        """Raise :class:`CorpusError` when nothing was kept or too large a share was skipped."""
        reasons = ", ".join(f"{reason} {n}" for reason, n in self.skipped_by_reason.most_common())
        first = f"; first: {self.first_skipped.where}: {self.first_skipped.detail}" if self.first_skipped else ""
        if self.skipped_share > self.max_bad_fraction:
            raise CorpusError(
                f"corpus: {self.n_skipped} of {self.n_records} records skipped ({self.skipped_share:.1%}), "
                f"above corpus.max_bad_fraction {self.max_bad_fraction} ({reasons}){first}"
            )
        if self.n_kept == 0:
            raise CorpusError(f"corpus: no samples found{f' ({reasons}){first}' if reasons else ''}")


def _as_record(item: Record | tuple) -> Record:
    return item if isinstance(item, Record) else Record(*item)


def iter_decoded(
    records: Iterable[Record | tuple], config: CorpusConfig, report: IngestReport, on_skip: Any = None
) -> Iterator[dict[str, Any]]:
    """Decode and validate records, skipping bad ones; yield caption rows with their ``image``.

    Args:
        records: :class:`Record` s or ``(id, caption, image_bytes, where)`` tuples.
        config: the corpus config (image size, limits, split seed and share).
        report: counts are added to it.
        on_skip: called with each :class:`Skipped`.

    Yields:
        ``{"id", "caption", "split", "image"}`` per kept record, in order; ``split`` draws one
        uniform number per kept record from ``numpy.random.default_rng(config.seed)`` (``test`` when
        below ``config.test_fraction``), so the split does not depend on the shard size.
    """
    rng = np.random.default_rng(config.seed)
    seen: set[str] = set()
    report.max_bad_fraction = config.max_bad_fraction
    with pixel_limit(config.max_image_pixels):
        for item in records:
            record = _as_record(item)
            try:
                if record.problem is not None:
                    raise _Skip(*record.problem)
                if record.id in seen:
                    raise _Skip("duplicate_id", f"duplicate id {record.id!r} (an earlier record has it)")
                caption, cleaned = clean_caption(record.caption, config.max_caption_chars)
                image = decode_image(record.image, config)
            except _Skip as skip:
                skipped = Skipped(record.where, record.id, skip.reason, skip.detail)
                if skip.reason == "empty_shard":
                    report.n_empty_shards += 1
                else:
                    report.n_records += 1
                    report.first_skipped = report.first_skipped or skipped
                report.skipped_by_reason[skip.reason] += 1
                n_logged = sum(report.skipped_by_reason.values())
                if n_logged <= _WARN_FIRST:
                    log.warning(
                        "skipped %s: %s%s",
                        record.where,
                        skip.detail,
                        " (further skips only in skipped.parquet)" if n_logged == _WARN_FIRST else "",
                    )
                if on_skip is not None:
                    on_skip(skipped)
                continue
            report.n_records += 1
            report.n_kept += 1
            report.n_captions_cleaned += int(cleaned)
            seen.add(str(record.id))
            split = "test" if rng.random() < config.test_fraction else "train"
            report.n_split[split] += 1
            yield {"id": str(record.id), "caption": caption, "split": split, "image": image}


def ingest_corpus(records: Iterable[Record | tuple], config: CorpusConfig, out_dir: str | Path) -> IngestReport:
    """Stream records into a corpus folder, skipping and recording bad ones (memory: one shard).

    Writes ``captions.parquet``, ``images/*.npy`` and ``skipped.parquet`` into ``out_dir`` atomically.

    Returns:
        The :class:`IngestReport` (counts by skip reason).

    Raises:
        CorpusError: a bad source, no usable record, or more than ``config.max_bad_fraction`` of the
            records skipped; ``out_dir`` is then left as it was.
    """
    report = IngestReport()
    with CorpusWriter(out_dir, config.shard_size) as writer:
        for row in iter_decoded(records, config, report, on_skip=writer.skip):
            image = row.pop("image")
            writer.add(row, image)
        report.check()
    log.info(
        "ingested %d of %d records (%d skipped) into %s", report.n_kept, report.n_records, report.n_skipped, out_dir
    )
    return report


def ingest(records: Iterable[Record | tuple], config: CorpusConfig) -> tuple[pl.DataFrame, np.ndarray]:
    """Decode, validate and normalise records in memory (small corpora and tests; the stage streams).

    Bad records are skipped as in :func:`ingest_corpus` (logged, not returned).

    Returns:
        ``(samples, images)``: a frame with the caption columns except ``image_ref`` and the
        ``uint8`` images in the same order.

    Raises:
        CorpusError: no usable record, or more than ``config.max_bad_fraction`` of them skipped.
    """
    report = IngestReport()
    rows = list(iter_decoded(records, config, report))
    report.check()
    images = np.stack([row.pop("image") for row in rows])
    samples = pl.DataFrame(
        [{c: row.get(c) for c in CAPTION_COLUMNS if c != "image_ref"} for row in rows],
        schema={c: t for c, t in CAPTION_SCHEMA.items() if c != "image_ref"},
    )
    return samples, images
