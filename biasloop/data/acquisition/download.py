"""Download of the selected rows with img2dataset (LAION's own downloader) into webdataset shards.

:func:`download_selection` writes the selection as img2dataset's input (a parquet of ``url, caption,
sample_id``) and calls :func:`img2dataset.download` with ``output_format="webdataset"``: tar shards of
``<key>.jpg``, ``<key>.txt`` (the caption) and ``<key>.json`` (the source row: url, caption, sample_id,
status, width, height, ...), plus one ``<shard>.parquet`` (every URL's status and error) and
``<shard>_stats.json`` per shard.

**Resumable**: img2dataset's default ``incremental_mode="incremental"`` skips the shards whose
``_stats.json`` exists, so a rerun after an interruption fetches only the missing shards. The shards
depend on the input's order, so a changed selection must not reuse them: the folder records the SHA-256
of the input it was made from (``.biasloop-input.sha256``; not ``.json``, which img2dataset would read as
a shard's stats) and is emptied when the selection differs.

**Only public web images** (:mod:`.fetch_policy`): :func:`refuse_urls` takes every URL that is not
``http``/``https`` to a public address out of img2dataset's input and gives it a status row with its
reason (``refused_scheme``, ``refused_address``, ``refused_url``); :func:`run_img2dataset` runs
img2dataset with :class:`.checked_download.CheckedDownloader`, so each connection it opens (redirects
included) is checked again on the address it actually connects to. ``local_mirror_networks`` lists the
networks a user trusts (their own mirror; a test server on loopback).

**Polite and offline-clean**: ``X-Robots-Tag`` opt-outs (``noai``, ``noimageai``, ``noindex``,
``noimageindex``) are respected (img2dataset's default, kept); wandb is off; albumentations' update check
is disabled (``NO_ALBUMENTATIONS_UPDATE=1``, img2dataset imports it); timeouts and retries are params.

**At scale**: ``distributor`` is img2dataset's: ``multiprocessing`` (one machine, the default),
``pyspark`` or ``ray``; ``cluster_address`` (a Spark master URL or a Ray address) connects to a cluster
first (:func:`connect_cluster`), otherwise Spark runs ``local[processes_count]`` and Ray a local cluster.
Ray probes cloud metadata endpoints and 8.8.8.8 when it starts, so it is never the default.

:func:`download_table` turns the per-shard parquet files into the per-occupation table of requested /
downloaded / failed by reason (:func:`failure_reason`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import polars as pl

from biasloop.data.acquisition.fetch_policy import REFUSAL_REASONS, parse_networks, url_refusal

INPUT_MARKER = ".biasloop-input.sha256"
DOWNLOAD_COLUMNS = ("sample_id", "key", "url", "status", "reason", "error_message")


@dataclasses.dataclass(frozen=True)
class DownloadConfig:
    """``laion_download``: img2dataset's settings (see its README for each)."""

    distributor: Literal["multiprocessing", "pyspark", "ray"] = "multiprocessing"
    processes_count: int = 4  # download processes per machine (multiprocessing) or Spark/Ray task slots
    thread_count: int = 32  # download threads per process
    timeout: int = 10  # seconds per HTTP request
    retries: int = 1  # extra attempts after a failed request
    image_size: int = 256  # pixels per side of the stored image
    resize_mode: Literal["no", "keep_ratio", "keep_ratio_largest", "center_crop", "border"] = "center_crop"
    encode_quality: int = 95  # JPEG quality of the stored image
    number_sample_per_shard: int = 10000  # rows of the selection per tar shard (the resumable unit)
    min_image_size: int = 0  # drop images whose smaller side is under this many pixels
    user_agent_token: str | None = "biasloop"  # names the crawler in the User-Agent and in X-Robots-Tag matching
    disallowed_header_directives: tuple[str, ...] = (
        "noai",
        "noimageai",
        "noindex",
        "noimageindex",
    )  # opt-outs honoured
    cluster_address: str | None = None  # pyspark: Spark master URL; ray: Ray address; null: a local session/cluster
    local_mirror_networks: tuple[
        str, ...
    ] = ()  # networks (CIDR) fetched although private/loopback: your own mirror, a test server
    max_response_bytes: int = 50_000_000  # bytes of one response body at most (img2dataset holds it in memory)
    max_response_seconds: float = 60.0  # seconds to receive one body after its headers (timeout is per network read)


def check_download_config(config: DownloadConfig) -> None:
    """Raise ValueError naming the key when ``local_mirror_networks`` or a response cap is invalid."""
    parse_networks(config.local_mirror_networks)
    if config.max_response_bytes < 1:
        raise ValueError(f"laion_download.max_response_bytes must be at least 1, got {config.max_response_bytes}")
    if not config.max_response_seconds > 0:
        raise ValueError(f"laion_download.max_response_seconds must be positive, got {config.max_response_seconds}")


def connect_cluster(config: DownloadConfig) -> None:
    """Start the Spark session or Ray connection img2dataset's distributor will use.

    img2dataset's ``pyspark`` distributor uses the active Spark session and otherwise creates a
    ``local[processes_count]`` one; its ``ray`` distributor uses the connected Ray cluster and otherwise
    starts a local one. ``cluster_address`` points them at a real cluster.
    """
    if config.cluster_address is None or config.distributor == "multiprocessing":
        return
    if config.distributor == "pyspark":
        from pyspark.sql import SparkSession

        SparkSession.builder.master(config.cluster_address).appName("biasloop-laion-download").getOrCreate()
    else:
        import ray

        ray.init(address=config.cluster_address, ignore_reinit_error=True)


def refuse_urls(
    selection: pl.DataFrame, local_mirror_networks: Sequence[str] = ()
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Split the selection into the rows img2dataset may fetch and a status row per refused URL.

    The check is :func:`.fetch_policy.url_refusal` on the URL string, without DNS lookups (names are
    judged when img2dataset connects; looking up LAION's ~10^5 hosts here would be slow, and the answer
    could change before the connection anyway).

    Returns:
        ``(allowed_rows, refused_status)``: ``refused_status`` has :data:`DOWNLOAD_COLUMNS`, ``status``
        ``refused``, ``reason`` one of :data:`.fetch_policy.REFUSAL_REASONS` and the detail in ``error_message``.

    Raises:
        ValueError: when an entry of ``local_mirror_networks`` is not a network.
    """
    networks = parse_networks(local_mirror_networks)
    refusals = [url_refusal(url, networks) for url in selection["url"].to_list()]
    refused_mask = pl.Series([r is not None for r in refusals], dtype=pl.Boolean)
    refused = [r for r in refusals if r is not None]
    status = selection.filter(refused_mask).select(
        "sample_id",
        pl.lit(None, dtype=pl.String).alias("key"),
        pl.col("url").cast(pl.String),
        pl.lit("refused", dtype=pl.String).alias("status"),
        pl.Series("reason", [r.reason for r in refused], dtype=pl.String),
        pl.Series("error_message", [str(r) for r in refused], dtype=pl.String),
    )
    return selection.filter(~refused_mask), status


def _input_digest(frame: pl.DataFrame) -> str:
    digest = hashlib.sha256()
    for url, caption, sample_id in frame.select("url", "caption", "sample_id").iter_rows():
        digest.update(f"{sample_id}\t{url}\t{caption}\n".encode())
    return digest.hexdigest()


def prepare_output(selection: pl.DataFrame, folder: str | Path) -> tuple[Path, bool]:
    """Write img2dataset's input into ``folder`` and clear shards made from a different selection.

    Returns:
        ``(input_parquet, resumed)``: ``resumed`` is true when ``folder`` already held shards of this
        same selection (img2dataset then fetches only the shards that are missing).
    """
    folder = Path(folder)
    rows = selection.select("url", "caption", "sample_id")
    digest = _input_digest(rows)
    marker = folder / INPUT_MARKER
    resumed = marker.exists() and marker.read_text().strip() == digest
    if folder.exists() and not resumed:
        shutil.rmtree(folder)
    (folder / "_input").mkdir(parents=True, exist_ok=True)
    input_path = folder / "_input" / "urls.parquet"
    rows.write_parquet(input_path)
    marker.write_text(digest + "\n")
    return input_path, resumed


def run_img2dataset(input_path: str | Path, shards: str | Path, config: DownloadConfig) -> None:
    """Call :func:`img2dataset.download` on ``input_path`` (``url, caption, sample_id``) into ``shards``.

    Call it from a process whose main module is import-safe (``if __name__ == "__main__":``): the
    multiprocessing distributor spawns processes that re-import it.
    """
    os.environ["NO_ALBUMENTATIONS_UPDATE"] = "1"
    os.environ.setdefault("WANDB_MODE", "disabled")
    os.environ.setdefault("WANDB_SILENT", "true")
    from img2dataset import download

    from biasloop.data.acquisition.checked_download import checked_img2dataset

    connect_cluster(config)
    check_download_config(config)
    with checked_img2dataset(config.local_mirror_networks, config.max_response_bytes, config.max_response_seconds):
        download(
            url_list=str(input_path),
            output_folder=str(shards),
            input_format="parquet",
            url_col="url",
            caption_col="caption",
            save_additional_columns=["sample_id"],
            output_format="webdataset",
            image_size=config.image_size,
            resize_mode=config.resize_mode,
            encode_quality=config.encode_quality,
            processes_count=config.processes_count,
            thread_count=config.thread_count,
            timeout=config.timeout,
            retries=config.retries,
            number_sample_per_shard=config.number_sample_per_shard,
            min_image_size=config.min_image_size,
            distributor=config.distributor,
            enable_wandb=False,
            incremental_mode="incremental",
            user_agent_token=config.user_agent_token,
            # img2dataset reads an empty list as "respect nothing"; None would restore its defaults
            disallowed_header_directives=list(config.disallowed_header_directives),
        )


def unfinished_shards(shards: str | Path) -> list[str]:
    """The shards img2dataset started but did not finish (``["00003"]``): files without ``<shard>_stats.json``.

    img2dataset writes ``<shard>.tar`` and ``<shard>.parquet`` as it goes and ``<shard>_stats.json`` last; a
    shard that failed after its retries (a full disk, a crashed worker) leaves a partial tar the filter would
    read. Remove them with :func:`remove_shards`: their URLs then count as ``missing`` and a rerun fetches them.
    """
    shards = Path(shards)
    finished = {p.name.removesuffix("_stats.json") for p in shards.glob("*_stats.json")}
    return sorted({p.stem for p in (*shards.glob("*.tar"), *shards.glob("*.parquet"))} - finished)


def remove_shards(shards: str | Path, names: Sequence[str]) -> None:
    """Delete the ``.tar`` and ``.parquet`` files of the shards ``names`` in ``shards``."""
    for name in names:
        for suffix in (".tar", ".parquet"):
            (Path(shards) / f"{name}{suffix}").unlink(missing_ok=True)


def check_space_left(folder: str | Path, probe_bytes: int = 2**20) -> None:
    """Raise :class:`biasloop.core.io.DiskFullError` naming ``folder`` when ``probe_bytes`` cannot be written
    there (img2dataset's workers report a full disk only as a failed shard on their own output)."""
    from biasloop.core.io import disk_full_error

    probe = Path(folder) / ".biasloop-space-probe"
    try:
        with open(probe, "wb") as handle:
            handle.write(b"\0" * probe_bytes)
            handle.flush()
            os.fsync(handle.fileno())
    except OSError as exc:
        full = disk_full_error(exc, folder)
        if full is not None:
            raise full from exc
        raise
    finally:
        probe.unlink(missing_ok=True)


_HTTP_ERROR = re.compile(r"HTTP Error (\d{3})")
_REFUSED = re.compile(r"\b(" + "|".join(REFUSAL_REASONS) + r"):")


def failure_reason(status: str | None, error_message: str | None) -> str:
    """A short reason for one URL's outcome.

    ``downloaded``; ``opted_out`` (an ``X-Robots-Tag`` directive forbids the use); ``http_<code>``
    (e.g. ``http_404``); ``timeout``; ``connection`` (refused, reset, DNS); ``not_an_image`` (the body
    did not decode as an image: an HTML page, a truncated file); ``too_small`` / ``too_large`` /
    ``aspect_ratio`` (img2dataset's size filters); ``refused_scheme`` / ``refused_address`` /
    ``refused_url`` (the fetch policy refused the URL, a redirect or the connection);
    ``response_too_large`` (over ``max_response_bytes``); ``other``.
    """
    if status == "success":
        return "downloaded"
    refused = _REFUSED.search(error_message or "")
    if refused:
        return refused.group(1)
    if "response_too_large:" in (error_message or ""):
        return "response_too_large"
    message = (error_message or "").lower()
    if "x-robots-tag" in message:
        return "opted_out"
    http = _HTTP_ERROR.search(error_message or "")
    if http:
        return f"http_{http.group(1)}"
    if "timed out" in message or "timeout" in message:
        return "timeout"
    if status == "failed_to_resize" or "decoding error" in message:
        for needle, reason in (
            ("too small", "too_small"),
            ("too large", "too_large"),
            ("aspect ratio", "aspect_ratio"),
        ):
            if needle in message:
                return reason
        return "not_an_image"
    if any(
        w in message for w in ("urlopen error", "connection", "name or service", "remote end closed", "reset by peer")
    ):
        return "connection"
    return "other"


def read_download_status(shards: str | Path) -> pl.DataFrame:
    """Every URL's outcome from img2dataset's per-shard parquet files: :data:`DOWNLOAD_COLUMNS`.

    Raises:
        FileNotFoundError: when ``shards`` holds no per-shard parquet (the download did not run).
    """
    files = sorted(Path(shards).glob("*.parquet"))
    if not files:
        raise FileNotFoundError(f"{shards}: no img2dataset shard parquet files (did the download run?)")
    frame = pl.concat(
        [pl.read_parquet(f, columns=["sample_id", "key", "url", "status", "error_message"]) for f in files],
        how="vertical_relaxed",
    )
    reasons = [failure_reason(s, e) for s, e in frame.select("status", "error_message").iter_rows()]
    return frame.with_columns(pl.Series("reason", reasons, dtype=pl.String)).select(DOWNLOAD_COLUMNS)


def download_table(selection: pl.DataFrame, status: pl.DataFrame, occupations: Sequence[str]) -> pl.DataFrame:
    """Per occupation: ``requested``, ``downloaded`` and ``failed_<reason>`` counts (a URL counts for every
    occupation it was selected for).

    Rows of the selection with no status (a shard that never finished) count as ``failed_missing``.
    """
    joined = (
        selection.select("sample_id", "occupations")
        .join(status.select("sample_id", "reason"), on="sample_id", how="left")
        .with_columns(pl.col("reason").fill_null("missing"))
        .explode("occupations")
        .rename({"occupations": "occupation"})
    )
    reasons = sorted(set(joined["reason"].to_list()) - {"downloaded"})
    rows = []
    for name in occupations:
        part = joined.filter(pl.col("occupation") == name)
        counts = dict(part.group_by("reason").len().iter_rows())
        rows.append(
            {
                "occupation": name,
                "requested": len(part),
                "downloaded": counts.get("downloaded", 0),
                **{f"failed_{r}": counts.get(r, 0) for r in reasons},
            }
        )
    return pl.DataFrame(rows, schema_overrides={"requested": pl.Int64, "downloaded": pl.Int64})
