"""Shared fixtures: a materialised data/ folder and a tiny params file for in-process stage tests."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """data/ as `biasloop data` writes it (occupation table + MNIST glyph pool), once per session."""
    from biasloop.cli import main

    out = tmp_path_factory.mktemp("data") / "data"
    assert main(["data", "--out", str(out)]) == 0
    return out


@pytest.fixture()
def tiny_params(tmp_path: Path, data_dir: Path) -> Path:
    """A params.yaml for a tiny world (3 occupations, 40 samples each), tracking into tmp_path."""
    params = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())
    params["occupations"] = ["engineer", "teacher", "nurse"]
    params["world"].update(
        samples_per_occupation=40,
        distractors=10,
        near_misses=6,
        glyphs=str(data_dir / "glyphs" / "mnist"),
        occupation_table=str(data_dir / "occupations" / "occupations_bls.tsv"),
    )
    params["tracking"]["uri"] = f"sqlite:///{tmp_path / 'mlflow.db'}"
    params["tracking"]["background"] = False  # in-process stage tests log synchronously: no process outlives them
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path
