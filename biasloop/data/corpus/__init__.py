"""Corpus ingestion into one normalised form, streaming, with skip-and-record for bad web data.

Whatever the source (the glyph world, img2dataset-style webdataset tar shards, or a folder of images
listed in a parquet), the ``corpus`` stage writes:

- ``captions.parquet``: ``id, caption, image_ref, true_occupation, true_gender, true_indicator,
  true_ambiguous, split`` (ground truth null where unknown; ``split`` is ``train`` or ``test``), then
  ``true_tone, true_tone_indicator`` only for a glyph world with tone (:data:`OPTIONAL_CAPTION_SCHEMA`);
- ``images/NNNNN.npy``: ``uint8`` image shards (see :mod:`biasloop.core.io`), every image square at the
  corpus's image size;
- ``skipped.parquet``: ``where, id, reason, detail``, one row per record left out of an ingested
  corpus (``where`` names the file and the record; ``reason`` a key of :data:`SKIP_REASONS`); empty
  for the glyph world.

**Memory.** :class:`CorpusWriter` holds one shard of images and its caption rows; each full shard is
written (``images/NNNNN.npy`` and a caption part) before the next is read, and the parts are joined
into ``captions.parquet`` by a streaming polars sink. Tar shards are read member by member and a
folder listing in row batches, so peak memory is bounded by a shard whatever the corpus size (plus a
set of the ids seen, for the duplicate check: about 130 bytes per record). See
``benchmarks/ingestion.py``.

**Bad input.** Web data is full of broken records, so ingestion skips a bad *record* and records why
(:data:`SKIP_REASONS`), and fails only when the skipped share exceeds ``corpus.max_bad_fraction``. A
bad *source* (missing folder, no shards, an unreadable tar, a listing with missing or mistyped columns)
fails at once. Failures raise :class:`CorpusError` with one line naming the file and the record;
nothing is written then (the output folder is written atomically).

Modules: :mod:`~biasloop.data.corpus.records` (schema, config, checks of one record),
:mod:`~biasloop.data.corpus.readers` (webdataset shards, parquet listings) and
:mod:`~biasloop.data.corpus.writer` (the corpus folder, ingestion).
"""

from biasloop.data.corpus.readers import iter_folder, iter_webdataset
from biasloop.data.corpus.records import (
    CAPTION_COLUMNS,
    CAPTION_SCHEMA,
    IMAGE_EXTENSIONS,
    OPTIONAL_CAPTION_SCHEMA,
    SKIP_REASONS,
    SKIPPED_SCHEMA,
    CorpusConfig,
    CorpusError,
    Record,
    Skipped,
    clean_caption,
    decode_image,
    pixel_limit,
)
from biasloop.data.corpus.writer import CorpusWriter, IngestReport, ingest, ingest_corpus, iter_decoded, write_corpus

__all__ = [
    "CAPTION_COLUMNS",
    "CAPTION_SCHEMA",
    "IMAGE_EXTENSIONS",
    "OPTIONAL_CAPTION_SCHEMA",
    "SKIPPED_SCHEMA",
    "SKIP_REASONS",
    "CorpusConfig",
    "CorpusError",
    "CorpusWriter",
    "IngestReport",
    "Record",
    "Skipped",
    "clean_caption",
    "decode_image",
    "ingest",
    "ingest_corpus",
    "iter_decoded",
    "iter_decoded",
    "iter_folder",
    "iter_webdataset",
    "pixel_limit",
    "write_corpus",
]
