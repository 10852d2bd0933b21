"""`biasloop doctor`: one line per finding; names the checkout, environment, MLflow database."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from biasloop.cli import main
from biasloop.cli.doctor import Report, check_mlflow
from tests.conftest import REPO_ROOT


def test_doctor_reports_checkout_environment_and_mlflow(
    capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(REPO_ROOT)
    status = main(["doctor", "--skip-dvc-status", "--json"])
    findings = {line["topic"]: line for line in json.loads(capsys.readouterr().out)}
    assert {"checkout", "biasloop code", "environment", "versions", "threads", "MLflow", "DVC analytics"} <= set(
        findings
    )
    assert findings["biasloop code"]["level"] == "ok" and str(REPO_ROOT) in findings["biasloop code"]["text"]
    assert "mlflow" in findings["versions"]["text"] and "dvc" in findings["versions"]["text"]
    assert status == (1 if any(line["level"] == "problem" for line in findings.values()) else 0)


def test_doctor_counts_runs_and_flags_an_unreadable_database(tmp_path: Path) -> None:
    from biasloop.core.config import TrackingConfig
    from biasloop.core.tracking import stage_run

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    with stage_run("corpus", TrackingConfig(uri=uri, background=False)):  # logged before the check
        pass
    report = Report()
    check_mlflow(report, tmp_path, {"tracking": {"uri": uri, "experiment": "biasloop"}})
    assert ("ok", "MLflow") == report.lines[0][:2] and "1 FINISHED" in report.lines[0][2]
    (tmp_path / "mlflow.db").write_bytes(b"not a database" * 100)
    broken = Report()
    check_mlflow(broken, tmp_path, {"tracking": {"uri": uri}})
    assert broken.problems == 1 and "not readable" in broken.lines[0][2]
