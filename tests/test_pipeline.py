"""The whole pipeline: `dvc repro` on a tiny world with 2 generations, in a temporary copy of the repo."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO_ROOT, committed_text

pytestmark = pytest.mark.slow

TINY = {
    "occupations": ["engineer", "teacher", "nurse"],
    "world": {"samples_per_occupation": 60, "distractors": 10, "near_misses": 6},
    "neighbours": {"k": 20},
    "evaluate": {"n_boot": 50},
    "loop": {"generator_steps": 4},
}


def _merge(target: dict, update: dict) -> None:
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(target.get(key), dict):
            _merge(target[key], value)
        else:
            target[key] = value


def _tiny_overrides(params: dict) -> dict:
    """Shrink every training section that exists to a few steps (keys the sections actually have)."""
    overrides = json.loads(json.dumps(TINY))
    shrink = {
        "generator": {"train_steps": 6, "batch_size": 16},
        "sampling": {"steps": 2},
        "generate": {"n_per_prompt": 4, "max_captions_per_occupation": 4},
        "instrument": {"epochs": 3},
        "downstream": {"epochs": 1},
        "captioner": {"epochs": 1, "leakage": {"seeds": 1, "epochs": 3}},
        "classifier": {"epochs": 1},
    }
    for section, values in shrink.items():
        present = params.get(section) or {}
        overrides[section] = {k: v for k, v in values.items() if k in present}
    return overrides


def _run(cmd: list[str], cwd: Path, timeout: int = 1500) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "BIASLOOP_EMBEDDING_CACHE": str(cwd / ".cache" / "embeddings"),
    }
    env.pop("DVC_ROOT", None)
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{' '.join(cmd)} failed:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    return result


def copy_tracked(repo: Path) -> None:
    """Copy the files git tracks in this checkout into ``repo`` (without dvc.lock: a fresh pipeline)."""
    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=REPO_ROOT, capture_output=True, check=True).stdout
    for name in filter(None, tracked.decode().split("\0")):
        source = REPO_ROOT / name
        if source.is_file():
            (repo / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, repo / name)
    (repo / "dvc.lock").unlink(missing_ok=True)
    (repo / "params.yaml").write_text(committed_text("params.yaml"))  # not a `dvc exp run -S` leftover


@pytest.fixture(scope="module")
def pipeline_repo(tiny_pipeline, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the session's tiny-world `dvc repro` (conftest.tiny_pipeline: 2 generations, run offline)."""
    from tests.tiny_repo import copy_repo

    return copy_repo(tiny_pipeline.repo, tmp_path_factory.mktemp("pipeline") / "repo")


def test_repro_writes_summary_and_report(pipeline_repo: Path) -> None:
    summary = json.loads((pipeline_repo / "metrics/summary.json").read_text())
    assert {"gen0", "gen1"} <= set(summary)
    # A few training steps make noise images the instrument may abstain on: the keys exist, values are
    # fractions when the instrument labelled something.
    for generation in ("gen0", "gen1"):
        assert "amplification_abs" in summary[generation] and "recall_at_10" in summary[generation]
        value = summary[generation]["amplification_abs"]
        assert value is None or 0.0 <= value <= 1.0
        assert 0.0 <= summary[generation]["recall_at_10"] <= 1.0
        for key in (
            "captioner_bleu4",
            "captioner_cider_d",
            "captioner_lic_m",
            "captioner_lic_d",
            "captioner_leakage",
            "classifier_accuracy",
            "classifier_dp_difference",
        ):
            assert summary[generation][key] is not None, (generation, key)
        assert "captioner_error" in summary[generation] and "classifier_worst_group_accuracy" in summary[generation]
    paradox = json.loads((pipeline_repo / "metrics/paradox.json").read_text())
    assert set(paradox["table"]) == {
        "prompt_vs_keyword",
        "captions_vs_keyword",
        "prompt_vs_nn",
        "prompt_vs_nn_no_indicator",
    }
    assert paradox["table"]["captions_vs_keyword"]["paired_by_source"] is True
    for generation in ("gen0", "gen1"):
        assert {"noise_floor_abs", "excess_abs", "excess_abs_lo", "p_value_abs"} <= set(summary[generation])
    keyword = summary["paradox"]["prompt_vs_keyword"]
    assert {"shift", "shift_lo", "shift_hi", "gap", "a_abs_raw", "excess_abs", "n_images_train"} <= set(keyword)
    assert list(summary)[0] == "headline" and summary["headline"] == keyword
    decomposition = paradox["table"]["prompt_vs_keyword"]["decomposition"]
    if decomposition["available"]:  # the glyph world: ground truth splits the shift
        assert (
            abs(keyword["data"] + keyword["generator"] + keyword["instrument"] - decomposition["measured"]["estimate"])
            < 1e-12
        )
    else:  # a tiny generator's images may all be grey: the oracle abstains, and the JSON says why
        assert decomposition["reason"] and "data" not in keyword
    # tone, the committed params' second attribute: measured beside gender, with its decomposition when the
    # tiny generator's images let the oracle read them
    tone = paradox["attributes"]["tone"]["pairings"]["prompt_vs_keyword"]
    assert set(tone) >= {"measured", "corrected", "truth", "decomposition", "cells"}
    terms = tone["decomposition"]
    if terms.get("available") and terms.get("ground_truth"):
        total = terms["data"]["estimate"] + terms["generator"]["estimate"] + terms["instrument"]["estimate"]
        assert abs(total - terms["measured"]["estimate"]) < 1e-12
    assert {"gen0", "gen1", "classes", "paradox"} <= set(summary["attributes"]["tone"])
    headline = json.loads((pipeline_repo / "metrics/headline.json").read_text())
    assert {"tone_shift", "tone_gap"} <= set(headline)
    assert (pipeline_repo / "plots/attributes/tone.csv").stat().st_size > 0
    report = (pipeline_repo / "plots/report.html").read_text()
    assert "id='attribute-tone'" in report
    assert "data:image/png;base64," in report
    assert "Downstream tasks across generations" in report
    assert "The LAION acquisition path is off" in report  # laion_filter's {"enabled": false}, one line
    for name in (
        "amplification.csv",
        "shares.csv",
        "downstream.csv",
        "tasks.csv",
        "paradox_shares.png",
        "generations.png",
    ):
        assert (pipeline_repo / "plots" / name).stat().st_size > 0
    dataset = pipeline_repo / "artifacts/gen1/mix/dataset.parquet"
    assert dataset.exists()


def test_every_stage_run_reaches_mlflow_through_the_background_logger(pipeline_repo: Path) -> None:
    """Stages spool their runs; the detached logger writes them all (one per stage execution), then exits."""
    from mlflow.tracking import MlflowClient

    from biasloop.core.tracking import pending_records, wait_for_logger

    spool = pipeline_repo / ".mlflow-spool"
    assert wait_for_logger(spool, timeout=300)
    assert pending_records(spool) == []
    client = MlflowClient(tracking_uri=f"sqlite:///{pipeline_repo / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("biasloop")
    runs = client.search_runs([experiment.experiment_id])
    stage_runs = [run for run in runs if "stage" in run.data.tags]
    names = sorted(run.data.tags["mlflow.runName"] for run in stage_runs)
    assert "corpus" in names and "summarize" in names and "generate@1" in names and "retrain@1" in names
    assert len(names) == len(set(names))  # one run per stage execution, none twice
    # nested under the `dvc repro`'s parent run, which has ended; the per-generation metrics at their step
    parents = {run.info.run_id: run for run in runs if "stage" not in run.data.tags}
    assert {run.data.tags.get("mlflow.parentRunId") for run in stage_runs} <= set(parents)
    assert all(
        parent.data.tags["mlflow.runName"].startswith("repro-") and parent.info.status == "FINISHED"
        for parent in parents.values()
    )
    evaluate = next(run for run in stage_runs if run.data.tags["mlflow.runName"] == "evaluate@1")
    assert evaluate.data.params["synthetic_ratio"] and evaluate.data.tags["mlflow.source.name"] == "stages/evaluate.py"
    logged = sorted(evaluate.data.metrics)  # on a tiny world the estimands may be undefined (None, not logged)
    assert logged and {m.step for m in client.get_metric_history(evaluate.info.run_id, logged[0])} == {1}


def test_second_repro_is_a_no_op(pipeline_repo: Path) -> None:
    result = _run(["dvc", "repro"], pipeline_repo)
    assert "Running stage" not in result.stdout
    status = _run(["dvc", "status", "--json"], pipeline_repo)
    assert json.loads(status.stdout or "{}") == {}


def _changed_stages(repo: Path, section: str, key: str, value: object) -> set[str]:
    params_path = repo / "params.yaml"
    original = params_path.read_text()
    params = yaml.safe_load(original)
    if key:
        params[section][key] = value
    else:
        params[section] = value
    params_path.write_text(yaml.safe_dump(params, sort_keys=False))
    try:
        status = _run(["dvc", "status", "--json"], repo)
        return {name.split(":")[-1] for name in json.loads(status.stdout or "{}")}
    finally:
        params_path.write_text(original)


def test_changed_params_rerun_only_their_stages(pipeline_repo: Path) -> None:
    # `dvc status` names the stages whose own declarations changed (their downstream reruns follow from outputs).
    # summarize declares only the params it reads (base, tracking, synthetic_ratio, generations, world.seed).
    assert _changed_stages(pipeline_repo, "synthetic_ratio", "", 0.8) == {"mix@1", "summarize"}
    # Sampling-time params: the sampling stages rerun, no training stage (pretrain, retrain, instrument) does.
    assert _changed_stages(pipeline_repo, "sampling", "guidance_scale", 3.0) == {"generate@0", "generate@1", "mix@1"}
    assert _changed_stages(pipeline_repo, "neighbours", "k", 7) == {"neighbours"}
    assert _changed_stages(pipeline_repo, "captioner", "epochs", 2) == {"captioner@0", "captioner@1"}
    assert _changed_stages(pipeline_repo, "classifier", "epochs", 2) == {"classifier@0", "classifier@1"}
