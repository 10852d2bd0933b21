"""`dvc plots show` with the project's template draws its plots in a browser with networking off.

Uses the npm tarballs `make plots-template` cached in `.cache/vega/` (a test downloads nothing; it
skips when they are absent) and Debian's Chromium (`make chromium`), run inside `unshare -n` (a
network namespace with no interface but loopback) where available, else with every host name
resolving to nothing. DVC's default CDN page, rendered the same way, draws nothing: the control that
shows the check can fail. About 40 s.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from biasloop.report.dvc_plots_template import SCRIPTS
from tests.conftest import REPO_ROOT

pytestmark = pytest.mark.slow

DVC_YAML = """plots:
  - amplification_by_generation:
      template: linear
      x: generation
      y:
        amplification.csv: [amplification_abs, amplification_dir]
  - shares:
      template: scatter
      x: share_train
      y:
        shares.csv: share_gen
"""


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


def _offline_prefix() -> list[str]:
    probe = subprocess.run(["unshare", "-n", "true"], capture_output=True) if shutil.which("unshare") else None
    return ["unshare", "-n"] if probe is not None and probe.returncode == 0 else []


def _render(page: Path, profile: Path) -> str:
    """The page's DOM after its scripts ran, in headless Chromium without network."""
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--virtual-time-budget=10000",
        "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE localhost",
        f"--user-data-dir={profile}",
    ]
    result = subprocess.run(
        [*_offline_prefix(), _chromium(), *flags, "--dump-dom", page.as_uri()],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


def _dvc(repo: Path, *args: str) -> None:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    result = subprocess.run(
        [sys.executable, "-m", "dvc", *args], cwd=repo, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, f"dvc {' '.join(args)}: {result.stdout[-2000:]}{result.stderr[-2000:]}"


def test_dvc_plots_page_renders_offline(tmp_path: Path) -> None:
    cache = REPO_ROOT / ".cache" / "vega"
    if not all((cache / script.tarball).exists() for script in SCRIPTS):
        pytest.skip("vega builds not cached: run `make plots-template` (npm, once)")
    if _chromium() is None:
        pytest.skip("Chromium is not installed (make test installs Debian's chromium)")
    repo = tmp_path / "repo"
    repo.mkdir()
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    _dvc(repo, "init", "-q")
    _dvc(repo, "config", "core.analytics", "false")
    (repo / "dvc.yaml").write_text(DVC_YAML)
    (repo / "amplification.csv").write_text(
        "generation,amplification_abs,amplification_dir\n0,0.10,0.09\n1,0.12,0.11\n2,0.13,0.12\n"
    )
    (repo / "shares.csv").write_text("share_train,share_gen\n0.02,0.00\n0.5,0.55\n0.9,0.97\n")
    command = [
        sys.executable,
        "-m",
        "biasloop.cli",
        "plots-template",
        "--cache",
        str(cache),
        "--out",
        str(repo / "template.html"),
    ]
    made = subprocess.run(command, cwd=repo, capture_output=True, text=True, timeout=300)
    assert made.returncode == 0, made.stdout + made.stderr
    assert "template.html" in (repo / ".dvc" / "config.local").read_text()

    _dvc(repo, "plots", "show", "-o", "offline")
    page = (repo / "offline" / "index.html").read_text()
    assert "cdn.jsdelivr" not in page and page.count("vegaEmbed(") == 2
    dom = _render(repo / "offline" / "index.html", tmp_path / "profile")
    # vega-embed draws each plot into a canvas inside its container (class "vega-embed").
    assert dom.count('class="vega-embed') == 2 and dom.count("<canvas") == 2, dom[-3000:]

    # The control: DVC's default page (CDN scripts) draws nothing without network.
    _dvc(repo, "config", "--local", "--unset", "plots.html_template")
    _dvc(repo, "plots", "show", "-o", "cdn")
    assert "cdn.jsdelivr" in (repo / "cdn" / "index.html").read_text()
    assert "<canvas" not in _render(repo / "cdn" / "index.html", tmp_path / "profile-cdn")
