"""Corpus ingestion into one normalised form, streaming, with skip-and-record for bad web data.

Whatever the source (the glyph world, img2dataset-style webdataset tar shards, or a folder of images
listed in a parquet), the ``corpus`` stage writes:

- ``captions.parquet``: ``id, caption, image_ref, true_occupation, true_gender, true_indicator,
  true_ambiguous, split`` (ground truth null where unknown; ``split`` is ``train`` or ``test``);
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
"""

from __future__ import annotations

import contextlib
import dataclasses
import io as _io
import json
import logging
import math
import posixpath
import re
import tarfile
import unicodedata
import warnings
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, Literal, NamedTuple

import numpy as np
import polars as pl

from biasloop.core.config import ConfigError

log = logging.getLogger(__name__)

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
CAPTION_SCHEMA = {
    "id": pl.String,
    "caption": pl.String,
    "image_ref": pl.String,
    "true_occupation": pl.String,
    "true_gender": pl.String,
    "true_indicator": pl.String,
    "true_ambiguous": pl.Boolean,
    "split": pl.String,
}
SKIPPED_SCHEMA = {"where": pl.String, "id": pl.String, "reason": pl.String, "detail": pl.String}
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp")
SKIP_REASONS = {
    "empty_file": "the image file has 0 bytes",
    "file_too_large": "the image file is larger than corpus.max_file_bytes",
    "decompression_bomb": "the image claims more pixels than corpus.max_image_pixels",
    "unreadable_image": "the image cannot be decoded (truncated, corrupt, not an image)",
    "image_too_small": "the image's shorter side is below corpus.min_image_side",
    "no_image": "the record has no image",
    "no_caption": "the record has no caption (or an empty one)",
    "caption_not_utf8": "the caption is not valid UTF-8",
    "caption_too_long": "the caption is longer than corpus.max_caption_chars",
    "bad_json": "the record's .json member is not a JSON object",
    "duplicate_id": "an earlier record has the same id",
    "unsafe_name": "a tar member or listed path is absolute or climbs out with '..'",
    "not_a_file": "a tar member is a link or a device, or a listed path a FIFO or a device, not a regular file",
    "missing_file": "the listed image file does not exist",
    "outside_folder": "a listed path leads outside the listing's folder through a symbolic link",
    "empty_shard": "a tar shard holds no samples (no record is lost)",
}
_WARN_FIRST = 20  # skipped records logged one by one; the rest only in skipped.parquet and the counts


class CorpusError(ValueError):
    """Bad corpus input; the message names the file and the record."""


@dataclasses.dataclass(frozen=True)
class CorpusConfig:
    """``corpus``: where the captioned images come from, and what bad records get."""

    source: Literal["world", "webdataset", "folder"] = "world"  # world = the embedded glyph world
    path: str | None = None  # webdataset: folder of .tar shards; folder: a parquet listing captions and images
    caption_column: str = "caption"  # folder source: column holding the caption
    image_column: str = "image_path"  # folder source: column holding the image path (relative to the parquet)
    id_column: str | None = None  # folder source: column holding a unique id (null: row number)
    image_size: int = 16  # ingested images are centre-cropped and resized to this many pixels per side
    shard_size: int = 4096  # images per .npy shard
    test_fraction: float = 0.15  # ingested corpora: share held out as split "test" (the world has its own)
    seed: int = 0  # seed of the train/test split of ingested corpora
    max_bad_fraction: float = 0.05  # ingested corpora: fail when a larger share of records is skipped
    max_image_pixels: int = 50_000_000  # width x height above which an image is skipped unread (decompression bomb)
    max_file_bytes: int = 50_000_000  # image files larger than this are skipped unread
    min_image_side: int = 8  # images whose shorter side has fewer pixels are skipped
    max_caption_chars: int = 10_000  # longer captions are skipped

    def __post_init__(self) -> None:
        checks = {
            "image_size": self.image_size >= 1,
            "shard_size": self.shard_size >= 1,
            "test_fraction": 0.0 <= self.test_fraction < 1.0,
            "max_bad_fraction": 0.0 <= self.max_bad_fraction <= 1.0,
            "max_image_pixels": self.max_image_pixels >= 1,
            "max_file_bytes": self.max_file_bytes >= 1,
            "min_image_side": self.min_image_side >= 1,
            "max_caption_chars": self.max_caption_chars >= 1,
        }
        ranges = {"test_fraction": "in [0, 1)", "max_bad_fraction": "in [0, 1]"}
        for name, ok in checks.items():
            value = getattr(self, name)
            if not ok or (isinstance(value, float) and not math.isfinite(value)):
                raise ConfigError(f"corpus.{name}: expected {ranges.get(name, 'at least 1')}, found {value!r}")


class Record(NamedTuple):
    """One sample as a source yields it; ``problem`` is ``(reason, detail)`` when already known bad."""

    id: str | None
    caption: str | None
    image: bytes | None
    where: str
    problem: tuple[str, str] | None = None


class Skipped(NamedTuple):
    """A record left out of the corpus: where it is (file and record), its id, a reason code, the detail."""

    where: str
    id: str | None
    reason: str
    detail: str


class _Skip(Exception):
    """Internal: a record is bad for ``reason`` (a key of :data:`SKIP_REASONS`)."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason, self.detail = reason, detail


# --------------------------------------------------------------------------------------------------
# Decoding one record


def clean_caption(raw: str | bytes | None, max_chars: int) -> tuple[str, bool]:
    """Validate and normalise a caption.

    Control characters (Unicode category Cc: NUL, tabs, newlines, escapes) become spaces and the ends
    are stripped.

    Returns:
        ``(caption, cleaned)``; ``cleaned`` is True when a control character was replaced.

    Raises:
        _Skip: ``no_caption`` (missing or blank), ``caption_not_utf8`` (bytes that are not UTF-8) or
            ``caption_too_long`` (more than ``max_chars`` characters after cleaning).
    """
    if raw is None:
        raise _Skip("no_caption", "no caption (.txt member or json 'caption')")
    if isinstance(raw, bytes):
        try:
            raw = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise _Skip("caption_not_utf8", f"caption is not UTF-8 ({exc.reason} at byte {exc.start})") from None
    if not isinstance(raw, str):
        raise _Skip("no_caption", f"caption is a {type(raw).__name__}, not text")
    cleaned_text = "".join(" " if unicodedata.category(ch) == "Cc" else ch for ch in raw)
    caption = cleaned_text.strip()
    if not caption:
        raise _Skip("no_caption", "empty caption")
    if len(caption) > max_chars:
        raise _Skip("caption_too_long", f"caption has {len(caption)} characters (corpus.max_caption_chars {max_chars})")
    return caption, cleaned_text != raw


@contextlib.contextmanager
def pixel_limit(max_pixels: int) -> Iterator[None]:
    """Set PIL's decompression-bomb limit to ``max_pixels`` for the block (restored afterwards).

    PIL refuses to open an image of more than twice ``Image.MAX_IMAGE_PIXELS`` pixels with
    ``DecompressionBombError`` (not an ``OSError``) and warns above it; :func:`decode_image` skips
    everything above ``max_pixels`` itself.
    """
    from PIL import Image

    previous = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = max_pixels
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            yield
    finally:
        Image.MAX_IMAGE_PIXELS = previous


def _to_rgb(image: Any) -> Any:
    """Any PIL mode as 8-bit RGB: alpha composited onto white, 16/32-bit grey scaled, CMYK converted."""
    from PIL import Image

    mode = image.mode
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        # 16-bit grey (PNG, TIFF): scale 0..65535 to 0..255; PIL's own convert would clip at 255.
        grey = np.asarray(image, dtype=np.float64)
        grey = np.clip(np.rint(grey / 257.0), 0, 255).astype(np.uint8)
        return Image.fromarray(grey).convert("RGB")
    if mode == "F":
        return Image.fromarray(np.clip(np.rint(np.asarray(image)), 0, 255).astype(np.uint8)).convert("RGB")
    has_alpha = mode in ("RGBA", "LA", "PA", "RGBa", "La") or (mode == "P" and "transparency" in image.info)
    if has_alpha:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def decode_image(data: bytes | None, config: CorpusConfig) -> np.ndarray:
    """Decode image bytes into a square ``uint8`` RGB array of ``config.image_size`` pixels per side.

    The image is EXIF-rotated, centre-cropped to a square and resized (bicubic); JPEGs are decoded at
    a reduced DCT scale first when much larger than needed. Call it inside :func:`pixel_limit`.

    Raises:
        _Skip: with the reason code (``empty_file``, ``file_too_large``, ``decompression_bomb``,
            ``image_too_small``, ``unreadable_image``).
    """
    from PIL import Image, ImageOps

    if data is None:
        raise _Skip("no_image", f"no image member ({', '.join(IMAGE_EXTENSIONS)})")
    if len(data) == 0:
        raise _Skip("empty_file", "image file has 0 bytes")
    if len(data) > config.max_file_bytes:
        raise _Skip(
            "file_too_large", f"image file has {len(data)} bytes (corpus.max_file_bytes {config.max_file_bytes})"
        )
    size = config.image_size
    try:
        with Image.open(_io.BytesIO(data)) as image:
            width, height = image.size
            if width * height > config.max_image_pixels:
                raise _Skip(
                    "decompression_bomb",
                    f"image claims {width}x{height} pixels (corpus.max_image_pixels {config.max_image_pixels})",
                )
            if min(width, height) < config.min_image_side:
                raise _Skip(
                    "image_too_small",
                    f"image is {width}x{height} pixels (corpus.min_image_side {config.min_image_side})",
                )
            image.draft("RGB", (size, size))  # JPEG only: decode at 1/2, 1/4 or 1/8 scale when that is enough
            image = ImageOps.exif_transpose(image)
            image = _to_rgb(image)
            side = min(image.size)
            left, top = (image.width - side) // 2, (image.height - side) // 2
            image = image.crop((left, top, left + side, top + side)).resize((size, size), Image.BICUBIC)
            return np.asarray(image, dtype=np.uint8)
    except _Skip:
        raise
    except Image.DecompressionBombError as exc:  # not an OSError: PIL's own limit, set by pixel_limit
        raise _Skip("decompression_bomb", str(exc).split("\n")[0]) from None
    except MemoryError:
        raise
    except Exception as exc:  # noqa: BLE001 - PIL's plugins raise OSError, ValueError, SyntaxError, EOFError, ...
        # Without the object addresses PIL puts in some messages ("<_io.BytesIO object at 0x7f..>"),
        # so that skipped.parquet is byte-identical across runs.
        message = re.sub(r"\s*<[^<>]* at 0x[0-9a-fA-F]+>", "", " ".join(str(exc).split()))[:200]
        raise _Skip("unreadable_image", f"unreadable image ({type(exc).__name__}: {message})") from None


# --------------------------------------------------------------------------------------------------
# Sources


# Member names go through posixpath, not pathlib: Python 3.11's pathlib interns every path part, which
# grows memory with the number of records read.
def _unsafe_member_name(name: str) -> bool:
    name = name.replace("\\", "/")
    return name.startswith("/") or ".." in name.split("/") or (len(name) > 1 and name[1] == ":")


def _webdataset_sample(shard: Path, key: str, parts: dict[str, bytes | int]) -> Record:
    """One sample from its members' bytes (an int in place of bytes: the size of a member left unread)."""
    where = f"{shard}, sample {key!r}"
    for suffix, part in parts.items():
        if isinstance(part, int):
            return Record(
                posixpath.basename(key),
                None,
                None,
                where,
                ("file_too_large", f"member {suffix} has {part} bytes (corpus.max_file_bytes); not read"),
            )
    image = next((parts[ext] for ext in IMAGE_EXTENSIONS if ext in parts), None)
    meta: dict = {}
    if ".json" in parts:
        try:
            meta = json.loads(parts[".json"].decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            return Record(posixpath.basename(key), None, image, where, ("bad_json", f"bad .json member ({exc})"))
        except RecursionError:  # [[[[... nested deeper than Python's parser recurses
            return Record(
                posixpath.basename(key), None, image, where, ("bad_json", "bad .json member (nested too deeply)")
            )
        if not isinstance(meta, dict):
            return Record(
                posixpath.basename(key),
                None,
                image,
                where,
                ("bad_json", f".json member is a {type(meta).__name__}, not an object"),
            )
    caption: Any = parts[".txt"] if ".txt" in parts else meta.get("caption")
    sample_id = str(meta.get("key") or posixpath.basename(key))
    return Record(sample_id, caption, image, where)


def iter_webdataset(folder: str | Path, max_member_bytes: int | None = None) -> Iterator[Record]:
    """Yield a :class:`Record` for every sample of the ``.tar`` shards in ``folder``, streaming.

    A sample is the consecutive members sharing a key (``00000012.jpg``, ``00000012.txt``,
    ``00000012.json``), as webdataset and img2dataset write them. The caption is the ``.txt`` member,
    else the ``caption`` field of the ``.json`` member. The id is the ``.json``'s ``key`` field when
    present, else the member key. One sample's members are in memory at a time.

    Members that are links or devices, whose names are absolute or contain ``..``, or (with
    ``max_member_bytes``) that are larger, are never read: they come out as records with a
    ``problem``, as does an empty shard.

    Raises:
        CorpusError: the folder is missing or has no shards, or a shard is not a readable tar file.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise CorpusError(f"{folder}: webdataset folder not found")
    shards = sorted(folder.glob("*.tar"))
    if not shards:
        raise CorpusError(f"{folder}: no .tar shards")
    for shard in shards:
        if not shard.is_file():  # a FIFO named x.tar would block the read forever; a device never ends
            raise CorpusError(f"{shard}: not a regular file (a folder, FIFO or device), not a tar shard")
        n_samples = 0
        try:
            with tarfile.open(shard) as archive:
                key: str | None = None
                parts: dict[str, bytes | int] = {}
                for member in archive:
                    if member.isdir():
                        continue
                    member_key, suffix = posixpath.splitext(member.name)
                    suffix = suffix.lower()
                    if _unsafe_member_name(member.name):
                        yield Record(
                            None,
                            None,
                            None,
                            f"{shard}, member {member.name!r}",
                            ("unsafe_name", "member name is absolute or contains '..'; not read"),
                        )
                        continue
                    if not member.isfile():
                        kind = "symlink" if member.issym() else "hard link" if member.islnk() else "special file"
                        yield Record(
                            None,
                            None,
                            None,
                            f"{shard}, member {member.name!r}",
                            ("not_a_file", f"member is a {kind}; not read"),
                        )
                        continue
                    if member_key != key:
                        if key is not None:
                            n_samples += 1
                            yield _webdataset_sample(shard, key, parts)
                        key, parts = member_key, {}
                    if max_member_bytes is not None and member.size > max_member_bytes:
                        parts[suffix] = member.size
                        continue
                    handle = archive.extractfile(member)
                    parts[suffix] = handle.read() if handle else b""
                if key is not None:
                    n_samples += 1
                    yield _webdataset_sample(shard, key, parts)
        except tarfile.TarError as exc:
            raise CorpusError(f"{shard}: not a readable tar file ({exc})") from exc
        except (EOFError, OSError) as exc:
            raise CorpusError(f"{shard}: truncated or unreadable tar file ({exc})") from exc
        if n_samples == 0:
            yield Record(None, None, None, str(shard), ("empty_shard", "empty shard (no samples)"))


def _check_listing_columns(listing: Path, config: CorpusConfig) -> dict[str, str]:
    try:
        schema = pl.read_parquet_schema(listing)
    except Exception as exc:  # noqa: BLE001 - polars raises ComputeError, OSError, ... for a non-parquet file
        raise CorpusError(f"{listing}: not a readable parquet file ({' '.join(str(exc).split())[:200]})") from None
    columns = {"caption": config.caption_column, "image": config.image_column}
    if config.id_column:
        columns["id"] = config.id_column
    missing = [c for c in columns.values() if c not in schema]
    if missing:
        raise CorpusError(f"{listing}: missing column(s) {missing} (has {list(schema)})")
    for role in ("caption", "image"):
        dtype = schema[columns[role]]
        if dtype != pl.String:
            raise CorpusError(f"{listing}: column {columns[role]!r} ({role}) is {dtype}, expected text (String)")
    if "id" in columns and (schema[columns["id"]].is_nested() or schema[columns["id"]] == pl.Binary):
        raise CorpusError(
            f"{listing}: column {columns['id']!r} (id) is {schema[columns['id']]}, expected text or a number"
        )
    return columns


def iter_folder(config: CorpusConfig, batch_rows: int = 1024) -> Iterator[Record]:
    """Yield a :class:`Record` per row of a parquet listing captions and image paths, in row batches.

    Image paths are relative to the listing's folder and must stay inside it, symbolic links resolved: a
    path through a link to elsewhere (``images -> /home/me``) is skipped (``outside_folder``), never read;
    so is one that is not a regular file (a FIFO would block the read).

    Raises:
        CorpusError: no listing, a missing column, or a caption/image column that is not text.
    """
    if config.path is None:
        raise CorpusError("corpus.path: the folder source needs a parquet file")
    listing = Path(config.path)
    if not listing.is_file():
        raise CorpusError(f"{listing}: parquet listing not found")
    columns = _check_listing_columns(listing, config)
    root = listing.parent.resolve()
    row_number = 0
    for batch in pl.scan_parquet(listing).select(list(columns.values())).collect_batches(chunk_size=batch_rows):
        for row in batch.iter_rows(named=True):
            where = f"{listing}, row {row_number}"
            sample_id = (
                str(row[columns["id"]]) if "id" in columns and row[columns["id"]] is not None else f"{row_number:08d}"
            )
            row_number += 1
            relative = row[columns["image"]]
            if not relative:
                yield Record(sample_id, row[columns["caption"]], None, where, ("no_image", "empty image path"))
                continue
            if _unsafe_member_name(relative):
                yield Record(
                    sample_id,
                    None,
                    None,
                    f"{where} ({relative})",
                    ("unsafe_name", "image path is absolute or contains '..'; not read"),
                )
                continue
            image_path = root / relative
            where = f"{where} ({image_path})"
            target = image_path.resolve()
            if not target.is_relative_to(root):  # a symbolic link on the way points out of the folder
                yield Record(
                    sample_id,
                    None,
                    None,
                    where,
                    (
                        "outside_folder",
                        f"image path leads to {target}, outside {root}, through a symbolic link; not read",
                    ),
                )
                continue
            if not target.exists():
                yield Record(sample_id, None, None, where, ("missing_file", "image file not found"))
                continue
            if not target.is_file():  # a folder, a FIFO (reading would block), a device
                yield Record(sample_id, None, None, where, ("not_a_file", "image path is not a regular file; not read"))
                continue
            size = target.stat().st_size
            if size > config.max_file_bytes:
                yield Record(
                    sample_id,
                    None,
                    None,
                    where,
                    ("file_too_large", f"image file has {size} bytes (corpus.max_file_bytes {config.max_file_bytes})"),
                )
                continue
            with target.open("rb") as handle:  # at most the limit, even if the file grew since stat
                data = handle.read(config.max_file_bytes + 1)
            if len(data) > config.max_file_bytes:
                yield Record(
                    sample_id,
                    None,
                    None,
                    where,
                    (
                        "file_too_large",
                        f"image file grew past corpus.max_file_bytes {config.max_file_bytes} while read",
                    ),
                )
                continue
            yield Record(sample_id, row[columns["caption"]], data, where)


# --------------------------------------------------------------------------------------------------
# Writing


class CorpusWriter:
    """Write a corpus folder (captions, image shards, skipped records) atomically, a shard at a time.

    Use as a context manager. Rows go through :meth:`add` (one sample) or :meth:`add_frame` (a frame
    and its images); every ``shard_size`` images become ``images/NNNNN.npy`` and a caption part, so
    at most one shard is in memory. On a clean exit the parts are joined into ``captions.parquet``
    and the folder is renamed onto ``out_dir``; on an exception nothing is left behind.
    """

    def __init__(self, out_dir: str | Path, shard_size: int) -> None:
        if shard_size < 1:
            raise ValueError(f"shard_size must be at least 1, got {shard_size}")
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
            {**{c: row.get(c) for c in CAPTION_COLUMNS}, "image_ref": f"{shard_ref}#{i}"}
            for i, row in enumerate(self._rows)
        ]
        part = pl.DataFrame(rows, schema=CAPTION_SCHEMA)
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
            pl.DataFrame(schema=CAPTION_SCHEMA).write_parquet(self.tmp / "captions.parquet")
        for part in parts:
            part.unlink()
        (self.tmp / "parts").rmdir()
        pl.DataFrame(self._skipped, schema=SKIPPED_SCHEMA, orient="row").write_parquet(self.tmp / "skipped.parquet")


def write_corpus(samples: pl.DataFrame, images: np.ndarray, out_dir: str | Path, shard_size: int) -> pl.DataFrame:
    """Write ``captions.parquet`` and the image shards of an in-memory corpus into ``out_dir`` atomically.

    The rows go through :class:`CorpusWriter` one shard at a time (``images`` may be a memory map).

    Returns:
        The written caption table (with ``image_ref``).
    """
    with CorpusWriter(out_dir, shard_size) as writer:
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
