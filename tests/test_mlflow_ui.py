"""`mlflow ui` at the address docs/operations.md gives opens on the runs table: the pipeline run's parent row,
and beneath it, once expanded, its stage runs.

The store is made in this process by the project's own tracking code (``stage_run`` with the logger run
inline): four stage runs of one pipeline run, whose DVC process is stood in for by a ``sleep`` this test
starts and ends. `mlflow ui` serves it on a free loopback port; headless Chromium opens the documented
address and the screenshot is left in the test's tmp folder (``mlflow_runs.png``).
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from tests.headless import headless_chromium

pytestmark = pytest.mark.slow  # MLflow's store, its server and a browser: about a minute on 2 busy cores

ROOT = Path(__file__).resolve().parents[1]
STAGES = [("corpus", None), ("evaluate", 0), ("evaluate", 1), ("summarize", None)]
STAGE_NAMES = ["corpus", "evaluate@0", "evaluate@1", "summarize"]


def _documented_address() -> str:
    """The runs-table address docs/operations.md tells a user to open (port 5000)."""
    text = (ROOT / "docs" / "operations.md").read_text()
    (address,) = set(re.findall(r"<(http://127\.0\.0\.1:5000/#/experiments/[^>]+)>", text))
    return address


def _make_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A SQLite store holding one pipeline run ("sweep-7") with its four stage runs nested beneath it."""
    from biasloop.core import pipeline_run
    from biasloop.core.config import TrackingConfig
    from biasloop.core.mlflow_logger import drain
    from biasloop.core.processes import read_process
    from biasloop.core.tracking import spool_dir, stage_run

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.chdir(tmp_path)
    Path("params.yaml").write_text(yaml.safe_dump({"synthetic_ratio": 0.4, "base": {"seed": 0}}))
    monkeypatch.setenv("DVC_EXP_NAME", "sweep-7")
    monkeypatch.delenv("DVC_ROOT", raising=False)
    owner = subprocess.Popen(["sleep", "600"])  # stands in for the `dvc repro` process the stages run under
    try:
        monkeypatch.setattr(pipeline_run, "dvc_ancestor", lambda *args, **kwargs: read_process(owner.pid))
        for stage, generation in STAGES:
            config = TrackingConfig(uri=uri, background=False)
            with stage_run(stage, config, {"synthetic_ratio": 0.4}, generation=generation) as run:
                run.log_metrics({"shift": 0.1 * (generation or 0)})
    finally:
        owner.kill()
        owner.wait()
    drain(spool_dir(uri))  # the pipeline's process has ended: its parent run is closed
    return uri


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _wait_for_server(url: str, server: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise AssertionError(f"mlflow ui exited with {server.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise AssertionError(f"mlflow ui did not answer {url} in {timeout:.0f} s")


def test_mlflow_ui_opens_on_the_runs_table_with_stages_nested(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("selenium")
    uri = _make_store(tmp_path, monkeypatch)
    from mlflow.tracking import MlflowClient

    experiment_id = MlflowClient(tracking_uri=uri).get_experiment_by_name("biasloop").experiment_id
    address = _documented_address()
    assert f"/#/experiments/{experiment_id}?" in address  # the id the docs give is the one biasloop creates
    port = _free_port()
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", "MLFLOW_DISABLE_TELEMETRY": "true"}
    mlflow = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri, "--host", "127.0.0.1"]
    log = (tmp_path / "mlflow_ui.log").open("w")
    # its own session: the server's workers are stopped with it, through its process group (its pid)
    server = subprocess.Popen(
        [*mlflow, "--port", str(port)], env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    try:
        _wait_for_server(f"http://127.0.0.1:{port}/health", server, timeout=180)
        with headless_chromium(tmp_path / "profile") as browser:
            from selenium.webdriver.common.by import By
            from selenium.webdriver.support import expected_conditions
            from selenium.webdriver.support.ui import WebDriverWait

            wait = WebDriverWait(browser, 120)
            browser.get(address.replace("127.0.0.1:5000", f"127.0.0.1:{port}"))
            parent_cell = "//div[@role='gridcell'][.//a[normalize-space()='sweep-7']]"
            wait.until(expected_conditions.presence_of_element_located((By.XPATH, parent_cell)))
            assert "/runs" in browser.current_url and "workflowType=machine_learning" in browser.current_url
            assert "Traces" not in browser.title and "Overview" not in browser.title
            shown = lambda: browser.execute_script("return document.body.innerText")  # noqa: E731
            assert not any(name in shown() for name in STAGE_NAMES)  # the children are folded under the parent
            browser.find_element(By.XPATH, f"{parent_cell}//button").click()
            wait.until(lambda _: all(name in shown() for name in STAGE_NAMES))
            browser.save_screenshot(str(tmp_path / "mlflow_runs.png"))
            names = browser.execute_script(  # run names in the table's row order
                "return [...document.querySelectorAll('[role=row]')].filter((row) => row.querySelector('a'))"
                ".sort((a, b) => a.getAttribute('aria-rowindex') - b.getAttribute('aria-rowindex'))"
                ".map((row) => row.querySelector(\"[col-id='attributes.`Run Name`'] a\")?.innerText)"
                ".filter((name) => name)"
            )
            assert names[0] == "sweep-7" and sorted(names[1:]) == STAGE_NAMES, names
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=60)
        log.close()
    assert (tmp_path / "mlflow_runs.png").stat().st_size > 0
