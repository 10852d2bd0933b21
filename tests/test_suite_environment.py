"""The tests' own environment: DVC analytics off in every repository a test creates."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path


def _usage_reports(folder: Path) -> set[str]:
    """Files in ``folder`` holding a DVC usage report (``dvc.analytics`` writes ``{"cmd_class": ...}`` to a
    temporary file and hands it to a daemon that sends it)."""
    found = set()
    for entry in folder.iterdir():
        try:
            if entry.is_file() and entry.stat().st_size < 100_000 and b'"cmd_class"' in entry.read_bytes():
                found.add(entry.name)
        except OSError:
            continue
    return found


def test_dvc_init_writes_no_usage_report(tmp_path: Path) -> None:
    """A fresh repository has no `core.analytics false` yet: only DVC_NO_ANALYTICS (set for the whole suite
    by conftest) keeps `dvc init` from writing a report into the system temp folder."""
    assert os.environ.get("DVC_NO_ANALYTICS") == "1"
    system_temp = Path(tempfile.gettempdir())
    before = _usage_reports(system_temp)
    done = subprocess.run(
        [sys.executable, "-m", "dvc", "init", "--no-scm", "-q"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert (tmp_path / ".dvc").is_dir()
    assert _usage_reports(system_temp) - before == set()
