"""From LAION-style metadata to filtered webdataset shards: select, download (img2dataset), filter.

- :mod:`.selection`: occupation retrieval over metadata parquet files (streaming), URL dedupe, cap.
- :mod:`.download`: img2dataset into webdataset shards; per-occupation requested/downloaded/failed.
- :mod:`.filtering`: exactly one face (MediaPipe BlazeFace) and no NSFW (open_nsfw); dropped by reason.

The kept shards are an ordinary webdataset corpus (``corpus.source: webdataset``).
"""

from biasloop.data.acquisition.download import (
    DownloadConfig,
    download_table,
    failure_reason,
    read_download_status,
)
from biasloop.data.acquisition.filtering import (
    FilterConfig,
    filter_shards,
    filter_table,
)
from biasloop.data.acquisition.selection import SelectConfig, scan_metadata, select_rows

__all__ = [
    "DownloadConfig", "FilterConfig", "SelectConfig", "download_table", "failure_reason", "filter_shards",
    "filter_table", "read_download_status", "scan_metadata", "select_rows",
]
