"""Corpus sources read as a stream of :class:`Record`: webdataset ``.tar`` shards, or a parquet listing of
image files. Bad members and rows become records with a ``problem``; a bad source raises
:class:`CorpusError`.
"""

from __future__ import annotations

import json
import posixpath
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import polars as pl

from biasloop.data.corpus.records import IMAGE_EXTENSIONS, CorpusConfig, CorpusError, Record

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
            yield _listed_record(row, row_number, columns, listing, root, config.max_file_bytes)
            row_number += 1


def _listed_record(
    row: dict[str, Any], row_number: int, columns: dict[str, str], listing: Path, root: Path, max_file_bytes: int
) -> Record:
    """The :class:`Record` of one listing row: its image file's bytes, or the problem that left it unread."""
    where = f"{listing}, row {row_number}"
    sample_id = str(row[columns["id"]]) if "id" in columns and row[columns["id"]] is not None else f"{row_number:08d}"
    relative = row[columns["image"]]
    if not relative:
        return Record(sample_id, row[columns["caption"]], None, where, ("no_image", "empty image path"))
    if _unsafe_member_name(relative):
        return Record(
            sample_id,
            None,
            None,
            f"{where} ({relative})",
            ("unsafe_name", "image path is absolute or contains '..'; not read"),
        )
    image_path = root / relative
    where = f"{where} ({image_path})"
    target = image_path.resolve()
    if not target.is_relative_to(root):  # a symbolic link on the way points out of the folder
        return Record(
            sample_id,
            None,
            None,
            where,
            (
                "outside_folder",
                f"image path leads to {target}, outside {root}, through a symbolic link; not read",
            ),
        )
    if not target.exists():
        return Record(sample_id, None, None, where, ("missing_file", "image file not found"))
    if not target.is_file():  # a folder, a FIFO (reading would block), a device
        return Record(sample_id, None, None, where, ("not_a_file", "image path is not a regular file; not read"))
    size = target.stat().st_size
    if size > max_file_bytes:
        return Record(
            sample_id,
            None,
            None,
            where,
            ("file_too_large", f"image file has {size} bytes (corpus.max_file_bytes {max_file_bytes})"),
        )
    with target.open("rb") as handle:  # at most the limit, even if the file grew since stat
        data = handle.read(max_file_bytes + 1)
    if len(data) > max_file_bytes:
        return Record(
            sample_id,
            None,
            None,
            where,
            (
                "file_too_large",
                f"image file grew past corpus.max_file_bytes {max_file_bytes} while read",
            ),
        )
    return Record(sample_id, row[columns["caption"]], data, where)
