"""Corpus ingestion into one normalised form.

Whatever the source (the glyph world, img2dataset-style webdataset tar shards, or a folder of images
listed in a parquet), the ``corpus`` stage writes:

- ``captions.parquet``: ``id, caption, image_ref, true_occupation, true_gender, true_indicator,
  true_ambiguous, split`` (ground truth null where unknown; ``split`` is ``train`` or ``test``);
- ``images/NNNNN.npy``: ``uint8`` image shards (see :mod:`biasloop.core.io`), every image square at the
  corpus's image size.

Bad input raises :class:`CorpusError` naming the file and the record; nothing is written then.
"""

from __future__ import annotations

import dataclasses
import io as _io
import json
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import numpy as np
import polars as pl

CAPTION_COLUMNS = (
    "id",
    "caption",
    "image_ref",
    "true_occupation",
    "true_gender",
    "true_indicator",
    "true_ambiguous",
    "split",
)
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp")


class CorpusError(ValueError):
    """Bad corpus input; the message names the file and the record."""


@dataclasses.dataclass(frozen=True)
class CorpusConfig:
    """``corpus``: where the captioned images come from."""

    source: Literal["world", "webdataset", "folder"] = "world"  # world = the embedded glyph world
    path: str | None = None  # webdataset: folder of .tar shards; folder: a parquet listing captions and images
    caption_column: str = "caption"  # folder source: column holding the caption
    image_column: str = "image_path"  # folder source: column holding the image path (relative to the parquet)
    id_column: str | None = None  # folder source: column holding a unique id (null: row number)
    image_size: int = 16  # ingested images are centre-cropped and resized to this many pixels per side
    shard_size: int = 4096  # images per .npy shard
    test_fraction: float = 0.15  # ingested corpora: share held out as split "test" (the world has its own)
    seed: int = 0  # seed of the train/test split of ingested corpora


def _to_square_rgb(data: bytes, size: int, where: str) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(_io.BytesIO(data)) as image:
            image = image.convert("RGB")
            side = min(image.size)
            left, top = (image.width - side) // 2, (image.height - side) // 2
            image = image.crop((left, top, left + side, top + side)).resize((size, size), Image.BICUBIC)
            return np.asarray(image, dtype=np.uint8)
    except (UnidentifiedImageError, OSError) as exc:
        raise CorpusError(f"{where}: unreadable image ({exc})") from exc


def iter_webdataset(folder: str | Path) -> Iterator[tuple[str, str, bytes, str]]:
    """Yield ``(id, caption, image_bytes, where)`` for every sample of the ``.tar`` shards in ``folder``.

    A sample is the members sharing a key (``00000012.jpg``, ``00000012.txt``, ``00000012.json``). The
    caption is the ``.txt`` member, else the ``caption`` field of the ``.json`` member. The id is the
    ``.json``'s ``key`` field when present, else the member key.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise CorpusError(f"{folder}: webdataset folder not found")
    shards = sorted(folder.glob("*.tar"))
    if not shards:
        raise CorpusError(f"{folder}: no .tar shards")
    for shard in shards:
        try:
            archive = tarfile.open(shard)
        except tarfile.TarError as exc:
            raise CorpusError(f"{shard}: not a readable tar file ({exc})") from exc
        with archive:
            samples: dict[str, dict[str, bytes]] = {}
            for member in archive:
                if not member.isfile():
                    continue
                name = Path(member.name)
                key = str(name.with_suffix(""))
                handle = archive.extractfile(member)
                samples.setdefault(key, {})[name.suffix.lower()] = handle.read() if handle else b""
            if not samples:
                raise CorpusError(f"{shard}: empty shard (no samples)")
            for key, parts in samples.items():
                where = f"{shard}, sample {key!r}"
                image = next((parts[ext] for ext in IMAGE_EXTENSIONS if ext in parts), None)
                if image is None:
                    raise CorpusError(f"{where}: no image member ({', '.join(IMAGE_EXTENSIONS)})")
                meta = {}
                if ".json" in parts:
                    try:
                        meta = json.loads(parts[".json"].decode("utf-8"))
                    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
                        raise CorpusError(f"{where}: bad .json member ({exc})") from exc
                if ".txt" in parts:
                    caption = parts[".txt"].decode("utf-8", errors="replace").strip()
                else:
                    caption = str(meta.get("caption") or "").strip()
                if not caption:
                    raise CorpusError(f"{where}: no caption (.txt member or json 'caption')")
                yield str(meta.get("key") or Path(key).name), caption, image, where


def iter_folder(config: CorpusConfig) -> Iterator[tuple[str, str, bytes, str]]:
    """Yield ``(id, caption, image_bytes, where)`` from a parquet listing captions and image paths."""
    if config.path is None:
        raise CorpusError("corpus.path: the folder source needs a parquet file")
    listing = Path(config.path)
    if not listing.exists():
        raise CorpusError(f"{listing}: parquet listing not found")
    frame = pl.read_parquet(listing)
    needed = [config.caption_column, config.image_column] + ([config.id_column] if config.id_column else [])
    missing = [c for c in needed if c not in frame.columns]
    if missing:
        raise CorpusError(f"{listing}: missing column(s) {missing} (has {frame.columns})")
    for row_number, row in enumerate(frame.iter_rows(named=True)):
        where = f"{listing}, row {row_number}"
        sample_id = str(row[config.id_column]) if config.id_column else f"{row_number:08d}"
        caption = row[config.caption_column]
        if not isinstance(caption, str) or not caption.strip():
            raise CorpusError(f"{where}: empty caption")
        image_path = listing.parent / str(row[config.image_column])
        if not image_path.exists():
            raise CorpusError(f"{where}: image {image_path} not found")
        yield sample_id, caption.strip(), image_path.read_bytes(), f"{where} ({image_path})"


def ingest(records: Iterator[tuple[str, str, bytes, str]], config: CorpusConfig) -> tuple[pl.DataFrame, np.ndarray]:
    """Decode, validate and normalise ingested records.

    Returns:
        ``(samples, images)``: a frame with the caption columns except ``image_ref`` and the
        ``uint8`` images in the same order.

    Raises:
        CorpusError: duplicate id, unreadable image, or empty input, naming the record.
    """
    ids: list[str] = []
    captions: list[str] = []
    images: list[np.ndarray] = []
    seen: dict[str, str] = {}
    for sample_id, caption, data, where in records:
        if sample_id in seen:
            raise CorpusError(f"{where}: duplicate id {sample_id!r} (first seen at {seen[sample_id]})")
        seen[sample_id] = where
        images.append(_to_square_rgb(data, config.image_size, where))
        ids.append(sample_id)
        captions.append(caption)
    if not ids:
        raise CorpusError("corpus: no samples found")
    rng = np.random.default_rng(config.seed)
    split = np.where(rng.random(len(ids)) < config.test_fraction, "test", "train")
    null = pl.Series([None] * len(ids), dtype=pl.String)
    samples = pl.DataFrame(
        {
            "id": ids,
            "caption": captions,
            "true_occupation": null,
            "true_gender": null,
            "true_indicator": null,
            "true_ambiguous": pl.Series([None] * len(ids), dtype=pl.Boolean),
            "split": split,
        }
    )
    return samples, np.stack(images)


def write_corpus(samples: pl.DataFrame, images: np.ndarray, out_dir: str | Path, shard_size: int) -> pl.DataFrame:
    """Write ``captions.parquet`` and the image shards into ``out_dir`` atomically.

    Returns the written caption table (with ``image_ref``).
    """
    from biasloop.core.io import atomic_path, write_image_shards

    out_dir = Path(out_dir)
    with atomic_path(out_dir) as tmp:
        tmp.mkdir()
        refs = write_image_shards(images, tmp / "images", shard_size, ref_root=out_dir / "images")
        table = samples.with_columns(pl.Series("image_ref", refs)).select(CAPTION_COLUMNS)
        table.write_parquet(tmp / "captions.parquet", compression="zstd", statistics=True)
    return table
