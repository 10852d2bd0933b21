"""A dvc.lock write interrupted by SIGTERM: DVC's in-place write truncates it; the guard keeps it whole.

The child process runs DVC's own lock-writing path (``modify_yaml`` on a copy of the project's
dvc.lock, as ``dvc repro`` does after each stage) and is sent SIGTERM when half the new text has
reached the file. Only the speed is altered (the write pauses at half way), not what is written.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO_ROOT, committed_text

pytestmark = pytest.mark.slow

CHILD = r"""
import io, os, signal, sys, time
from pathlib import Path
if sys.argv[2] == "guarded":
    from biasloop.core.dvc_guard import install
    assert install()
from dvc.utils.serialize import _yaml, modify_yaml
real_dump = _yaml._dump

def dump_then_stall(data, stream):
    text = io.StringIO()
    real_dump(data, text)
    text = text.getvalue()
    # Where the kill lands: inside label@1's second deps entry (the issue's message), else half way.
    stage = text.find("  label@1:")
    second_dep = text.find("    - path:", text.find("    - path:", stage) + 1) if stage >= 0 else -1
    cut = second_dep + len("    - pa") if second_dep >= 0 else len(text) // 2
    stream.write(text[:cut])
    stream.flush()
    Path(sys.argv[3]).write_text("partly written")
    time.sleep(60)  # SIGTERM arrives here
    stream.write(text[cut:])

_yaml._dump = dump_then_stall
with modify_yaml(sys.argv[1]) as lock:
    lock["stages"]["corpus"]["cmd"] += " --changed"
"""


def _interrupted_write(tmp_path: Path, mode: str) -> Path:
    folder = tmp_path / mode
    folder.mkdir()
    lock = folder / "dvc.lock"
    lock.write_text(committed_text("dvc.lock"))
    marker = folder / "half"
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(lock), mode, str(marker)], cwd=REPO_ROOT)
    deadline = time.monotonic() + 120
    while not marker.exists():
        assert child.poll() is None and time.monotonic() < deadline, "the child did not reach the write"
        time.sleep(0.05)
    child.send_signal(signal.SIGTERM)
    assert child.wait(timeout=30) == -signal.SIGTERM
    return lock


def _lock_problem(lock: Path) -> str | None:
    """DVC's own lockfile check: None when valid, else its message."""
    from dvc.exceptions import DvcException
    from dvc.schema import COMPILED_LOCKFILE_SCHEMA
    from dvc.utils.strictyaml import YAMLValidationError, load

    try:
        load(str(lock), schema=COMPILED_LOCKFILE_SCHEMA)
    except (YAMLValidationError, DvcException) as exc:
        return str(exc) + str(getattr(exc, "__cause__", "") or "")
    return None


def test_unguarded_dvc_truncates_the_lock_on_sigterm(tmp_path: Path) -> None:
    lock = _interrupted_write(tmp_path, "unguarded")
    assert 0 < lock.stat().st_size < len(committed_text("dvc.lock").encode())
    problem = _lock_problem(lock)
    assert problem is not None
    if "label@1" in committed_text("dvc.lock"):
        assert "expected a dictionary" in problem and "label@1" in problem, problem


def test_guarded_dvc_keeps_the_previous_lock_on_sigterm(tmp_path: Path) -> None:
    lock = _interrupted_write(tmp_path, "guarded")
    assert lock.read_bytes() == committed_text("dvc.lock").encode()
    assert _lock_problem(lock) is None
    leftovers = [p.name for p in lock.parent.iterdir() if p.name.endswith(".partial")]
    assert len(leftovers) == 1  # the unfinished new text, beside it; never read by DVC
    assert yaml.safe_load(lock.read_text())["stages"]


def test_guard_writes_what_dvc_writes(tmp_path: Path) -> None:
    """Same bytes as DVC's own writer; file mode kept."""
    from dvc.utils.serialize import modify_yaml

    from biasloop.core.dvc_guard import install

    plain, guarded = tmp_path / "plain.lock", tmp_path / "guarded.lock"
    for path in (plain, guarded):
        path.write_text(committed_text("dvc.lock"))
        path.chmod(0o640)
    with modify_yaml(str(plain)) as lock:
        lock["stages"]["corpus"]["cmd"] += " --changed"
    script = (
        "import sys; from biasloop.core.dvc_guard import install; assert install(); "
        "from dvc.utils.serialize import modify_yaml\n"
        "with modify_yaml(sys.argv[1]) as lock: lock['stages']['corpus']['cmd'] += ' --changed'"
    )
    subprocess.run([sys.executable, "-c", script, str(guarded)], cwd=REPO_ROOT, check=True, timeout=120)
    assert guarded.read_bytes() == plain.read_bytes()
    assert guarded.stat().st_mode & 0o777 == 0o640
    assert install  # imported without side effects in this process
