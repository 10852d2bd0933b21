"""Each checkout runs its own code: two clones, each with its `.venv` over one shared environment.

The failure this guards against: `make env` used to install the checkout editable into the shared
environment, so `biasloop` ran whichever clone had run `make` last (and broke when that clone was
deleted). Takes about 30 s (two `make venv`, a one-stage `dvc repro` per clone).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from biasloop.core.environment import shared_environment, site_packages
from tests.conftest import REPO_ROOT, committed_text

pytestmark = pytest.mark.slow

GIT = ["git", "-c", "user.email=t@t", "-c", "user.name=t"]
BARE_PATH = "/usr/bin:/bin"  # no environment activated: what a user's shell has before `source .venv/bin/activate`


def _run(cmd: list[str], cwd: Path, **env: str) -> str:
    environment = {
        "HOME": os.environ.get("HOME", "/root"),
        "PATH": BARE_PATH,
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "DVC_NO_ANALYTICS": "1",
        **env,
    }
    result = subprocess.run(cmd, cwd=cwd, env=environment, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"{' '.join(cmd)} in {cwd} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result.stdout


def _copy_tracked(destination: Path) -> None:
    tracked = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO_ROOT,
        capture_output=True,
        check=True,
    ).stdout
    for name in filter(None, tracked.decode().split("\0")):
        source = REPO_ROOT / name
        if source.is_file():
            (destination / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, destination / name)
    (destination / "params.yaml").write_text(committed_text("params.yaml"))  # not a `dvc exp run -S` leftover


def _snapshot(folder: Path) -> dict[str, float]:
    return {entry.name: entry.stat().st_mtime for entry in folder.iterdir()}


PROBE = """stages:
  probe:
    cmd: python -c "import biasloop, sys; open('where.txt', 'w').write(biasloop.__file__ + ' ' + sys.prefix)"
    outs:
      - where.txt:
          cache: false
"""


def test_two_clones_each_run_their_own_code(tmp_path: Path) -> None:
    if shutil.which("git") is None or shutil.which("make") is None:
        pytest.skip("needs git and make")
    shared = shared_environment()
    if not (shared / "bin" / "python").exists():
        pytest.skip(f"no shared environment at {shared}")
    shared_site = site_packages(shared)
    before = (_snapshot(shared_site), _snapshot(shared / "bin"))

    origin = tmp_path / "origin"
    _copy_tracked(origin)
    _run(["git", "init", "-q"], origin)
    _run([*GIT, "add", "-A"], origin)
    _run([*GIT, "commit", "-qm", "origin"], origin)
    clones = {name: tmp_path / name for name in ("a", "b")}
    for name, clone in clones.items():
        _run(["git", "clone", "-q", str(origin), str(clone)], tmp_path)
        cli = clone / "biasloop" / "cli" / "__init__.py"
        cli.write_text(
            cli.read_text().replace('"""The ``biasloop`` command:', f'"""[clone {name}] The ``biasloop`` command:', 1)
        )
        (clone / "probe").mkdir()
        (clone / "probe" / "dvc.yaml").write_text(PROBE)
        _run(["make", "venv", f"VENV={shared}"], clone)

    elsewhere = tmp_path  # not a clone's root: nothing importable from the working directory
    for name, clone in clones.items():
        python = clone / ".venv" / "bin" / "python"
        where = _run(
            [str(python), "-c", "import biasloop, stages; print(biasloop.__file__); print(stages.__file__)"], elsewhere
        )
        assert where.split() == [str(clone / "biasloop" / "__init__.py"), str(clone / "stages" / "__init__.py")]
        assert f"[clone {name}]" in _run([str(clone / ".venv" / "bin" / "biasloop"), "--help"], elsewhere)
        # dvc from .venv/bin, not activated: the stage's `python` is this clone's.
        _run([str(clone / ".venv" / "bin" / "dvc"), "repro", "-q", "probe/dvc.yaml"], clone)
        module, prefix = (clone / "probe" / "where.txt").read_text().split()
        assert module == str(clone / "biasloop" / "__init__.py") and prefix == str(clone / ".venv")

    # The failure: a second clone made, used and deleted must not break the first.
    shutil.rmtree(clones["a"])
    assert "[clone b]" in _run([str(clones["b"] / ".venv" / "bin" / "biasloop"), "--help"], elsewhere)
    assert "mlflow, version" in _run([str(clones["b"] / ".venv" / "bin" / "mlflow"), "--version"], elsewhere)
    assert (_snapshot(shared_site), _snapshot(shared / "bin")) == before, "the shared environment was modified"
