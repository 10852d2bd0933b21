"""The corpus's schema, its ``corpus`` config, and the checks one record passes (caption, image).

Skip reasons are the keys of :data:`SKIP_REASONS`; the package docstring (:mod:`biasloop.data.corpus`) says
what a corpus folder holds.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io as _io
import math
import re
import unicodedata
import warnings
from collections.abc import Iterator
from typing import Any, Literal, NamedTuple

import numpy as np
import polars as pl

from biasloop.core.config import ConfigError

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
# Ground truth of the glyph world's second attribute (world.tone): written after CAPTION_COLUMNS, and only
# when the source has it, so a corpus without tone is byte for byte what it was before tone existed.
OPTIONAL_CAPTION_SCHEMA = {"true_tone": pl.String, "true_tone_indicator": pl.String}
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
