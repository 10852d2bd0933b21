"""A killed stage's MLflow run: process identity, and the experiment's kind.

What a SIGKILL or SIGTERM leaves in MLflow is tested in ``tests/test_tracking.py`` (the spool records a
run from its start; the next drain logs a dead process's run KILLED).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from biasloop.core.config import TrackingConfig
from biasloop.core.tracking import EXPERIMENT_KIND_TAG, MODEL_TRAINING_KIND, process_alive, process_identity, stage_run


def test_process_identity_names_a_live_process() -> None:
    assert process_alive(process_identity())
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    identity = process_identity(child.pid)
    child.wait()
    assert not process_alive(identity)
    assert not process_alive(f"{os.getpid()}:1")  # same pid, another start time: a recycled pid


def test_experiment_is_model_training_kind(tmp_path: Path) -> None:
    """``mlflow ui`` opens a model-training experiment on its runs (not on the GenAI traces overview)."""
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    with stage_run("corpus", TrackingConfig(uri=uri, experiment="fresh", background=False)):
        pass
    assert (
        MlflowClient(tracking_uri=uri).get_experiment_by_name("fresh").tags[EXPERIMENT_KIND_TAG] == MODEL_TRAINING_KIND
    )
