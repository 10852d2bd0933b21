"""Shared fixtures: a materialised data/ folder and a tiny params file for in-process stage tests.

The tests read their own copy of every input: the committed ``params.yaml`` and ``dvc.lock``
(:func:`committed_text`), never the working copies, which `dvc exp run -S ...`, `dvc repro` or a user's
edit may have left changed.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault(
    "NO_ALBUMENTATIONS_UPDATE", "1"
)  # img2dataset imports albumentations, which would ask PyPI for a newer version
# Every DVC command a test runs (child processes inherit this), `dvc init` included: no usage report is
# written to the system temp folder and no daemon tries the network (a fresh repo has no `core.analytics`).
os.environ["DVC_NO_ANALYTICS"] = "1"

THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OMP_WAIT_POLICY")

if os.environ.get("PYTEST_XDIST_WORKER"):
    # Two workers share the machine's cores: torch in each on one thread (two threads per worker would
    # oversubscribe 2 cores and slow every training step several-fold). Stages set their own count.
    import torch

    torch.set_num_threads(1)


@functools.cache
def committed_text(name: str) -> str:
    """The text of checkout file ``name`` as committed (``git show HEAD:name``); the working copy where
    git or the commit is unavailable (an exported tarball)."""
    try:
        return subprocess.run(
            ["git", "show", f"HEAD:{name}"], cwd=REPO_ROOT, capture_output=True, check=True, text=True
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return (REPO_ROOT / name).read_text()


def committed_params() -> dict:
    """The committed params.yaml, parsed (a fresh copy each call)."""
    return yaml.safe_load(committed_text("params.yaml"))


# The order `make test` hands files to its two xdist workers (``--dist loadfile --no-loadscope-reorder``):
# the longest first. The crash test makes the tiny-world run while the accumulate pipeline runs on the other
# worker; the other files that read the tiny-world run follow. (Pinning them to one worker with
# `xdist_group` needs `--dist loadgroup`, which does nothing under pytest 9: xdist 3.8 renames `_nodeid`.)
LONG_FILES_FIRST = (
    "test_study_pipeline.py",  # the queue and the Ray executor on the tiny world: the longest file
    "test_pipeline_accumulate.py",  # its own pipeline: runs while the other worker builds the tiny one
    "test_crash_safety.py",
    "test_audit_round_trip.py",
    "test_offline_and_queue.py",
    "test_pipeline.py",
    "test_study_ray.py",
    "test_mlflow_ui.py",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Run the long files first (:data:`LONG_FILES_FIRST`, in that order), then the rest as collected."""
    rank = {name: position for position, name in enumerate(LONG_FILES_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: a file's tests keep their order


@pytest.fixture(autouse=True)
def _restore_threads() -> Iterator[None]:
    """A stage called in-process sets torch's thread count and the thread variables for its params
    (``biasloop.core.runtime.apply_cpu_threads``) and notes the count for its metrics and MLflow params
    (``biasloop.core.timing.runtime_facts``); each test starts with none noted and they are put back after
    it, so no test sees another's setting."""
    from biasloop.core import timing

    saved = {name: os.environ.get(name) for name in THREAD_VARIABLES}
    torch = sys.modules.get("torch")
    threads = torch.get_num_threads() if torch is not None else None
    notes = dict(timing._notes)
    timing._notes.clear()  # a module fixture that ran a stage in-process noted its threads before this saved them
    yield
    timing._notes.clear()
    timing._notes.update(notes)
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
    torch = sys.modules.get("torch")
    if torch is not None and threads is not None and torch.get_num_threads() != threads:
        torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """data/ as `biasloop data` writes it (occupation table + MNIST glyph pool), once per session."""
    from biasloop.cli import main

    out = tmp_path_factory.mktemp("data") / "data"
    assert main(["data", "--out", str(out)]) == 0
    return out


def tiny_world_params(data_dir: Path, root: Path) -> dict:
    """The committed params on a tiny world (3 occupations, 40 samples each), tracking into ``root``."""
    params = committed_params()
    params["occupations"] = ["engineer", "teacher", "nurse"]
    params["world"].update(
        samples_per_occupation=40,
        distractors=10,
        near_misses=6,
        glyphs=str(data_dir / "glyphs" / "mnist"),
        occupation_table=str(data_dir / "occupations" / "occupations_bls.tsv"),
    )
    params["tracking"]["uri"] = f"sqlite:///{root / 'mlflow.db'}"
    params["tracking"]["background"] = False  # in-process stage tests log synchronously: no process outlives them
    return params


@pytest.fixture()
def tiny_params(tmp_path: Path, data_dir: Path) -> Path:
    """A params.yaml for a tiny world (:func:`tiny_world_params`), tracking into tmp_path."""
    params = tiny_world_params(data_dir, tmp_path)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path


@pytest.fixture(scope="session")
def tiny_pipeline(tmp_path_factory: pytest.TempPathFactory):  # -> tests.tiny_repo.TinyPipeline
    """One offline `dvc repro` of the tiny world (2 generations) per test run, shared by the tests that read
    a pipeline's outputs (test_pipeline, test_offline_and_queue, test_study_pipeline, test_crash_safety).
    Read-only: a test that changes the repository works on its own copy (``tests.tiny_repo.copy_repo``).

    Under pytest-xdist (``make test`` runs two workers) the first worker that needs it builds it in the
    run's shared temporary folder while holding a file lock; the others wait for it and read it there.
    """
    from filelock import FileLock

    from tests.tiny_repo import TinyPipeline, offline_pipeline

    if not os.environ.get("PYTEST_XDIST_WORKER"):
        root = tmp_path_factory.mktemp("tiny-pipeline")
        return offline_pipeline(root / "repo", root / "guard")
    shared = tmp_path_factory.getbasetemp().parent / "tiny-pipeline"  # the folder every worker's basetemp is in
    made = shared / "pipeline.json"
    with FileLock(f"{shared}.lock"):
        if made.exists():
            fields = json.loads(made.read_text())
            return TinyPipeline(Path(fields["repo"]), Path(fields["network_log"]), fields["prefix"], fields["stdout"])
        shared.mkdir(exist_ok=True)
        pipeline = offline_pipeline(shared / "repo", shared / "guard")
        made.write_text(
            json.dumps(
                {
                    "repo": str(pipeline.repo),
                    "network_log": str(pipeline.network_log),
                    "prefix": pipeline.prefix,
                    "stdout": pipeline.stdout,
                }
            )
        )
        return pipeline
