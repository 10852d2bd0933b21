"""MLflow runs nest as MLflow's users expect: one parent run per pipeline run (one `dvc repro` or DVC
experiment), named after the experiment and holding its params, each stage run beneath it with the
standard tags, the params its stage declares plus synthetic_ratio, and per-generation metrics at
``step = generation``.

A stand-in ``dvc`` program (a script named ``dvc``, which is how /proc shows the real one) runs the
stages through ``sh -c`` as DVC does, in a tmp git repository with its own dvc.yaml and params.yaml;
the detached logger writes a SQLite store in tmp.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from biasloop.core.config import TrackingConfig
from biasloop.core.pipeline_run import COMMIT_TAG, PARENT_TAG, PIPELINES, SOURCE_TAG, declared_params
from biasloop.core.tracking import spool_dir, stage_run, wait_for_logger

STAGE = """\
import os, sys
from biasloop.core.config import TrackingConfig
from biasloop.core.tracking import stage_run
name, generation = sys.argv[1], None if sys.argv[2] == "-" else int(sys.argv[2])
with stage_run(name, TrackingConfig(uri=os.environ["TEST_URI"]), {name: {"own": 1}}, generation=generation) as run:
    run.log_metrics({"shift": 0.1 * (generation or 0)})
    if name == "summarize":
        for step in (0, 1):
            run.log_metrics({"shift": 0.1 * step}, step=step, pipeline=True)
    if sys.argv[3:] == ["fail"]:
        raise RuntimeError("this stage fails")
"""

FAKE_DVC = """\
import subprocess, sys
for spec in sys.argv[2:]:
    code = subprocess.run(["/bin/sh", "-c", f"{sys.executable} stage.py {spec}"]).returncode
    if code:
        sys.exit(code)
"""

PIPELINE = {
    "stages": {
        "corpus": {"cmd": "x", "params": ["base"]},
        "evaluate": {"foreach": [0, 1], "do": {"cmd": "x", "params": ["evaluate", "base.seed"]}},
        "summarize": {"cmd": "x", "params": [{"params.yaml": None}]},
    }
}
PARAMS = {"base": {"seed": 3, "device": "cpu"}, "synthetic_ratio": 0.6, "evaluate": {"k": 10}, "other": {"x": 1}}


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-c", "user.email=t@t", "-c", "user.name=t", *args],
        cwd=repo,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()


def _pipeline_repo(tmp_path: Path) -> tuple[Path, str]:
    repo = tmp_path / "repo"
    (repo / "bin").mkdir(parents=True)
    (repo / "bin" / "dvc").write_text(FAKE_DVC)
    (repo / "stage.py").write_text(STAGE)
    (repo / "dvc.yaml").write_text(yaml.safe_dump(PIPELINE))
    (repo / "params.yaml").write_text(yaml.safe_dump(PARAMS))
    _git(repo, "init", "-q")
    _git(repo, "add", "-A")
    _git(repo, "commit", "-qm", "pipeline")
    return repo, _git(repo, "rev-parse", "HEAD")


def _dvc_repro(repo: Path, uri: str, specs: list[str], monkeypatch: pytest.MonkeyPatch, **env: str) -> int:
    with monkeypatch.context() as patch:
        for name, value in {"TEST_URI": uri, "DVC_ROOT": str(repo), "BIASLOOP_TRACKING_LINGER": "0.5", **env}.items():
            patch.setenv(name, value)
        if "DVC_EXP_NAME" not in env:
            patch.delenv("DVC_EXP_NAME", raising=False)
        return subprocess.run(
            [sys.executable, str(repo / "bin" / "dvc"), "repro", *specs], cwd=repo, timeout=300
        ).returncode


def test_stage_runs_nest_under_one_parent_per_pipeline_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from mlflow.tracking import MlflowClient

    repo, commit = _pipeline_repo(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    stages = ["corpus - x", "evaluate 0 x", "evaluate 1 x", "summarize - x"]
    assert _dvc_repro(repo, uri, stages, monkeypatch, DVC_EXP_NAME="sweep-7") == 0
    assert _dvc_repro(repo, uri, ["corpus - x", "evaluate 0 fail"], monkeypatch) != 0
    assert wait_for_logger(spool_dir(uri), timeout=180)
    assert not list((spool_dir(uri) / PIPELINES).glob("[!.]*")), "a parent run was left open"

    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("biasloop").experiment_id
    runs = client.search_runs([experiment])
    parents = {r.data.tags["mlflow.runName"]: r for r in runs if PARENT_TAG not in r.data.tags}
    assert set(parents) == {"sweep-7", f"repro-{commit[:7]}"}
    sweep = parents["sweep-7"]
    assert sweep.info.status == "FINISHED" and parents[f"repro-{commit[:7]}"].info.status == "FAILED"
    assert sweep.data.tags[COMMIT_TAG] == commit and sweep.data.tags["dvc_exp_name"] == "sweep-7"
    assert sweep.data.params["synthetic_ratio"] == "0.6" and sweep.data.params["other.x"] == "1"
    history = client.get_metric_history(sweep.info.run_id, "shift")  # summarize's curve, on the parent's row
    assert sorted((m.step, m.value) for m in history) == [(0, 0.0), (1, 0.1)]

    children = {r.data.tags["mlflow.runName"]: r for r in runs if r.data.tags.get(PARENT_TAG) == sweep.info.run_id}
    assert set(children) == {"corpus", "evaluate@0", "evaluate@1", "summarize"}
    for name, child in children.items():
        assert child.info.status == "FINISHED"
        assert child.data.tags[COMMIT_TAG] == commit
        assert child.data.tags[SOURCE_TAG] == f"stages/{name.split('@')[0]}.py"
        assert child.data.params["synthetic_ratio"] == "0.6"  # the varied param, declared or not
    assert children["corpus"].data.params["base.device"] == "cpu" and "evaluate.k" not in children["corpus"].data.params
    assert children["evaluate@1"].data.params["evaluate.k"] == "10"
    assert (
        children["evaluate@1"].data.params["base.seed"] == "3"
        and "base.device" not in children["evaluate@1"].data.params
    )
    assert children["summarize"].data.params["other.x"] == "1"
    (point,) = client.get_metric_history(children["evaluate@1"].info.run_id, "shift")
    assert point.step == 1  # per-generation metrics at step = generation

    failed = [r for r in runs if r.data.tags.get(PARENT_TAG) == parents[f"repro-{commit[:7]}"].info.run_id]
    assert sorted((r.data.tags["mlflow.runName"], r.info.status) for r in failed) == [
        ("corpus", "FINISHED"),
        ("evaluate@0", "FAILED"),
    ]


def test_a_stage_run_outside_dvc_has_no_parent(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    with stage_run("label", TrackingConfig(uri=uri, background=False), generation=2) as run:
        run.log_metrics({"abstain_rate": 0.1})
        run.log_metrics({"shift": 0.3}, pipeline=True)  # no pipeline run: only this run
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    (recorded,) = client.search_runs([client.get_experiment_by_name("biasloop").experiment_id])
    assert PARENT_TAG not in recorded.data.tags and recorded.data.tags["mlflow.runName"] == "label@2"
    assert [m.step for m in client.get_metric_history(recorded.info.run_id, "abstain_rate")] == [2]


def test_declared_params_follow_dvc_yaml(tmp_path: Path) -> None:
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump(PIPELINE))
    assert declared_params("evaluate", PARAMS, tmp_path / "dvc.yaml") == {
        "evaluate": {"k": 10},
        "base.seed": 3,
        "synthetic_ratio": 0.6,
    }
    assert declared_params("summarize", PARAMS, tmp_path / "dvc.yaml") == {**PARAMS}
    assert declared_params("missing", PARAMS, tmp_path / "dvc.yaml") == {}
