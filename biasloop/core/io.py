"""File formats and atomic writes shared by every stage.

Images live in **shards**: ``.npy`` files holding ``uint8`` arrays of shape ``(n, height, width, 3)``.
A sample points at its image with an ``image_ref`` string ``"<shard path>#<row>"``, the shard path
relative to the repository root (the working directory of every DVC stage), so a dataset manifest can
reference images of several stages (the corpus, generation N) without copying them.

Every output is written atomically: to a temporary sibling first, then renamed into place, so a stage
that fails leaves no half-written file or folder behind. A write that fails because the disk is full
(numpy, polars and Python report it three different ways) becomes one :class:`DiskFullError` naming the
output, the bytes free and, when known, the bytes one write needed; :func:`biasloop.core.stage.run_main`
prints it as one line.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)


class DiskFullError(OSError):
    """Writing ``path`` failed because its file system is full (``ENOSPC``) or over quota (``EDQUOT``)."""

    def __init__(
        self, path: str | Path, free_bytes: int | None, needed_bytes: int | None = None, code: int = errno.ENOSPC
    ) -> None:
        super().__init__(code, os.strerror(code), str(path))
        self.path, self.free_bytes, self.needed_bytes = Path(path), free_bytes, needed_bytes

    def __str__(self) -> str:
        name = "ENOSPC" if self.errno == errno.ENOSPC else "EDQUOT"
        space = [] if self.free_bytes is None else [f"{_bytes(self.free_bytes)} free"]
        if self.needed_bytes is not None:
            space.append(f"one write needed {_bytes(self.needed_bytes)}")
        detail = f" ({', '.join(space)})" if space else ""
        return (
            f"disk full ({name}): could not write {self.path}{detail}; nothing was left behind: "
            f"free space on {self.path.parent.resolve()} and rerun"
        )


def _bytes(n: int) -> str:
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{n / size:.1f} {unit} ({n:,} bytes)"
    return f"{n:,} bytes"


# numpy's tofile() loses errno ("3145728 requested and 589696 written"); polars (Rust) raises ComputeError
# "... No space left on device (os error 28)"; Python raises OSError(ENOSPC).
_SHORT_WRITE = re.compile(r"(\d+) requested and (\d+) written")
_FULL_MESSAGES = {
    errno.ENOSPC: ("no space left on device", "os error 28", "database or disk is full"),  # last: sqlite
    errno.EDQUOT: ("disk quota exceeded", "os error 122"),
}


def _free_bytes(path: Path) -> int | None:
    for folder in (path, *path.parents):
        if folder.exists():
            try:
                return shutil.disk_usage(folder).free
            except OSError:
                return None
    return None


def disk_full_error(exc: BaseException, path: str | Path) -> DiskFullError | None:
    """``exc`` as a :class:`DiskFullError` for the output ``path`` when it says the disk is full, else None.

    Call it before the partial output is removed, so the free space measured is the space the write had.
    """
    if isinstance(exc, DiskFullError):
        return exc
    path = Path(path)
    message = str(exc).lower()
    code = getattr(exc, "errno", None) if isinstance(exc, OSError) else None
    if code not in _FULL_MESSAGES:
        code = next((c for c, needles in _FULL_MESSAGES.items() if any(n in message for n in needles)), None)
    free = _free_bytes(path.parent)
    short = _SHORT_WRITE.search(message) if isinstance(exc, OSError) and code is None else None
    if short is not None:
        needed = int(short.group(1)) - int(short.group(2))
        # a short write is a full disk only if the space was missing (it could also be an I/O error)
        if free is None or free >= needed:
            return None
        return DiskFullError(path, free, int(short.group(1)))
    return None if code is None else DiskFullError(path, free, code=code)


def describe_disk_full(exc: BaseException) -> str | None:
    """One line saying the disk is full, for any exception that says so (else None): what a command prints."""
    if isinstance(exc, DiskFullError):
        return str(exc)
    filename = getattr(exc, "filename", None)
    found = disk_full_error(exc, filename or "an output file")
    return None if found is None else str(found)


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it onto ``path``.

    Works for a file or a folder written at the yielded path. On an exception the temporary
    path is removed and ``path`` is left as it was; an exception that says the disk is full is
    raised as a :class:`DiskFullError` naming ``path`` (chained to the original).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent)) / path.name
    try:
        yield tmp
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()
        os.replace(tmp, path)
    except BaseException as exc:
        full = disk_full_error(exc, path)
        if full is not None and full is not exc:
            raise full from exc
        raise
    finally:
        shutil.rmtree(tmp.parent, ignore_errors=True)


def write_json(path: str | Path, data: Any) -> None:
    """Write ``data`` as indented JSON, atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=False, default=_json_default) + "\n")


def json_float(value: Any) -> float | None:
    """``value`` as a float for JSON, with NaN (undefined) written as null."""
    value = float(value)
    return None if np.isnan(value) else value


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def write_parquet(path: str | Path, frame: Any) -> None:
    """Write a polars DataFrame to parquet atomically (zstd, statistics on)."""
    with atomic_path(path) as tmp:
        frame.write_parquet(tmp, compression="zstd", statistics=True)


def write_image_shards(
    images: np.ndarray, folder: str | Path, shard_size: int, ref_root: str | Path | None = None
) -> list[str]:
    """Write ``images`` into ``folder`` as ``00000.npy, 00001.npy, ...`` shards.

    Args:
        images: ``uint8`` array ``(n, height, width, 3)``.
        folder: an existing (usually temporary) folder to write the shards into.
        shard_size: images per shard.
        ref_root: the folder the refs should name instead of ``folder`` (the final location when
            ``folder`` is a temporary path that will be renamed); defaults to ``folder``.

    Returns:
        One ``image_ref`` per image, in order.
    """
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"expected uint8 images (n, h, w, 3), got {images.dtype} {images.shape}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    ref_root = Path(ref_root) if ref_root is not None else folder
    refs: list[str] = []
    for shard_index, start in enumerate(range(0, len(images), shard_size)):
        name = f"{shard_index:05d}.npy"
        chunk = np.ascontiguousarray(images[start : start + shard_size])
        np.save(folder / name, chunk, allow_pickle=False)
        refs.extend(f"{(ref_root / name).as_posix()}#{row}" for row in range(len(chunk)))
    return refs


def parse_image_ref(ref: str) -> tuple[str, int]:
    """Split ``"<shard>#<row>"`` into its shard path and row."""
    shard, sep, row = ref.rpartition("#")
    if not sep or not row.isdigit():
        raise ValueError(f"bad image_ref {ref!r}: expected '<shard path>#<row>'")
    return shard, int(row)


def load_images(refs: Sequence[str], root: str | Path = ".") -> np.ndarray:
    """Load the images behind ``refs`` (in order) as one ``uint8`` array ``(n, h, w, 3)``.

    Shards are memory-mapped and each is opened once, so loading a subset stays cheap.
    """
    root = Path(root)
    if len(refs) == 0:
        raise ValueError("no image refs to load")
    parsed = [parse_image_ref(r) for r in refs]
    shards: dict[str, np.ndarray] = {}
    first = None
    out = None
    for i, (shard, row) in enumerate(parsed):
        if shard not in shards:
            shard_path = root / shard
            if not shard_path.exists():
                raise FileNotFoundError(f"image shard {shard_path} (from image_ref {refs[i]!r}) not found")
            shards[shard] = np.load(shard_path, mmap_mode="r", allow_pickle=False)
        array = shards[shard]
        if row >= len(array):
            raise IndexError(f"image_ref {refs[i]!r}: shard has only {len(array)} images")
        if out is None:
            first = array.shape[1:]
            out = np.empty((len(refs), *first), dtype=np.uint8)
        elif array.shape[1:] != first:
            raise ValueError(f"image_ref {refs[i]!r} has shape {array.shape[1:]}, expected {first}")
        out[i] = array[row]
    return out


def setup_logging(level: str = "INFO") -> None:
    """Log lines as ``12:00:01 stage-name INFO message``."""
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
        datefmt="%H:%M:%S",
    )


@contextlib.contextmanager
def timed(what: str, logger: logging.Logger | None = None) -> Iterator[dict[str, float]]:
    """Log how long a block took; the yielded dict receives ``seconds`` at the end."""
    logger = logger or log
    result: dict[str, float] = {}
    start = time.perf_counter()
    logger.info("%s ...", what)
    try:
        yield result
    finally:
        result["seconds"] = time.perf_counter() - start
        logger.info("%s done in %.1f s", what, result["seconds"])
