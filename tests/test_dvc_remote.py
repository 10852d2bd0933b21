"""The default DVC remote: a folder on this machine outside every checkout, named in the committed
.dvc/config, so `dvc push` works at once and a fresh clone on the same machine `dvc pull`s a committed
run's outputs instead of recomputing them.

The push/pull test copies the checkout's .dvc/config into two clones of a one-stage repository in tmp,
with HOME pointing into tmp (the remote's ``~`` resolves there, never into the user's real remote).
"""

from __future__ import annotations

import configparser
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT

PIPELINE = """stages:
  make:
    cmd: "mkdir -p out && echo generated > out/images.txt && echo '{\\"score\\": 1}' > score.json"
    outs:
      - out
    metrics:
      - score.json:
          cache: false
"""


def _remote() -> tuple[str, str]:
    config = configparser.ConfigParser()
    config.read(REPO_ROOT / ".dvc" / "config")
    name = config["core"]["remote"]
    return name, config[f"'remote \"{name}\"'"]["url"]  # DVC writes the section as 'remote "name"'


def test_the_default_remote_is_outside_the_checkout() -> None:
    name, url = _remote()
    assert url.startswith("~/"), f"remote {name!r}: {url!r} is not a per-user folder a fresh clone resolves alike"
    path = Path(os.path.expanduser(url)).resolve()
    assert not path.is_relative_to(REPO_ROOT.resolve())


def _run(cmd: list[str], cwd: Path, home: Path) -> str:
    env = {
        **os.environ,
        "HOME": str(home),
        "DVC_NO_ANALYTICS": "1",
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
    }
    env.pop("DVC_ROOT", None)
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"{' '.join(cmd)}:\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}"
    return result.stdout + result.stderr


def test_a_fresh_clone_pulls_what_another_pushed_and_reruns_nothing(tmp_path: Path) -> None:
    if shutil.which("git") is None:
        pytest.skip("git is needed for dvc")
    home, first, second = tmp_path / "home", tmp_path / "first", tmp_path / "second"
    home.mkdir()
    first.mkdir()
    git = ["git", "-c", "user.email=t@t", "-c", "user.name=t"]
    dvc = [sys.executable, "-m", "dvc"]
    _run([*git, "init", "-q"], first, home)
    _run([*dvc, "init", "-q"], first, home)
    shutil.copy(REPO_ROOT / ".dvc" / "config", first / ".dvc" / "config")
    (first / "dvc.yaml").write_text(PIPELINE)
    assert "Running stage 'make'" in _run([*dvc, "repro"], first, home)
    _run([*git, "add", "-A"], first, home)
    _run([*git, "commit", "-qm", "a run"], first, home)
    _run([*dvc, "push"], first, home)
    _, url = _remote()
    remote = Path(url.replace("~", str(home), 1))
    assert any(p.is_file() for p in remote.rglob("*")), "nothing was pushed"

    _run([*git, "clone", "-q", str(first), str(second)], tmp_path, home)
    assert not (second / "out").exists()
    _run([*dvc, "pull"], second, home)
    assert (second / "out" / "images.txt").read_text() == "generated\n"
    assert "up to date" in _run([*dvc, "status"], second, home)
    assert "Running stage" not in _run([*dvc, "repro"], second, home)
