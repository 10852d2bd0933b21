"""From LAION-style metadata to filtered webdataset shards: select, download (img2dataset), filter.

- :mod:`.selection`: occupation retrieval over metadata parquet files (streaming), URL dedupe, cap.
- :mod:`.fetch_policy`: which URLs may be fetched (http/https to public addresses); the connect-time check.
- :mod:`.download`: img2dataset into webdataset shards (its connections checked by
  :mod:`.checked_download`); per-occupation requested/downloaded/failed/refused.
- :mod:`.filtering`: exactly one face (MediaPipe BlazeFace) and no NSFW (open_nsfw); dropped by reason.

The kept shards are an ordinary webdataset corpus (``corpus.source: webdataset``).
"""

from biasloop.data.acquisition.download import (
    DownloadConfig,
    download_table,
    failure_reason,
    read_download_status,
    refuse_urls,
)
from biasloop.data.acquisition.fetch_policy import Refusal, url_refusal
from biasloop.data.acquisition.filtering import (
    FilterConfig,
    filter_shards,
    filter_table,
)
from biasloop.data.acquisition.selection import SelectConfig, scan_metadata, select_rows

__all__ = [
    "DownloadConfig",
    "FilterConfig",
    "Refusal",
    "SelectConfig",
    "download_table",
    "failure_reason",
    "filter_shards",
    "filter_table",
    "read_download_status",
    "refuse_urls",
    "scan_metadata",
    "select_rows",
    "url_refusal",
]
