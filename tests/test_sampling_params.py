"""Sampling-time params (``sampling``) are declared by the sampling stages only, so changing them retrains nothing.

DVC reruns a stage when a param it declares changes (DESIGN.md, "Sampling-time vs. training-time params").
The end-to-end check (``dvc status`` after editing ``sampling.guidance_scale`` in a tiny run) is in
``tests/test_pipeline.py::test_changed_params_rerun_only_their_stages``; this one reads dvc.yaml.
"""

from __future__ import annotations

import dataclasses

import yaml

from biasloop.core.config import load_section, read_params
from biasloop.models.generators import GeneratorConfig, SamplingConfig
from tests.conftest import REPO_ROOT

SAMPLING_STAGES = {"generate", "mix"}
TRAINING_STAGES = {"pretrain", "retrain", "instrument"}


def declared_params() -> dict[str, set[str]]:
    """Stage name -> the params keys it declares (``section`` or ``section.key``)."""
    stages = yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text())["stages"]
    out = {}
    for name, stage in stages.items():
        keys = set()
        for entry in stage.get("do", stage).get("params", []):
            keys.update(entry if isinstance(entry, dict) else [entry])
        out[name] = keys
    return out


def test_only_the_sampling_stages_declare_sampling() -> None:
    declared = declared_params()
    for name in SAMPLING_STAGES:
        assert "sampling" in declared[name], f"dvc.yaml stage {name}: add `sampling` to its params"
    readers = {
        name for name, keys in declared.items() if any(k == "sampling" or k.startswith("sampling.") for k in keys)
    }
    assert readers == SAMPLING_STAGES, readers
    for name in TRAINING_STAGES:
        assert not any(k.startswith(("sampling", "generate")) for k in declared[name]), (name, declared[name])


def test_the_training_section_holds_no_sampling_key() -> None:
    params = read_params(REPO_ROOT / "params.yaml")
    assert not {"guidance_scale", "sampling_steps"} & set(params["generator"])
    assert load_section(SamplingConfig, "sampling", params) == SamplingConfig(
        guidance_scale=params["sampling"]["guidance_scale"], steps=params["sampling"]["steps"]
    )
    training_keys = {f.name for f in dataclasses.fields(GeneratorConfig)}
    assert not training_keys & {f.name for f in dataclasses.fields(SamplingConfig)}
