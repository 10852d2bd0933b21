"""The audit round trip on the tiny-world run: export its prompts, make the images outside the pipeline
with its own generator (a short script, as a user would with any model), import them with
``generator.backend: images`` and `dvc repro`: label, paradox and evaluate give the in-pipeline numbers."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import yaml

from tests.tiny_repo import copy_repo, run

# What a user's generation script does with an export: one image per row, saved as PNG, listed in
# manifest.csv. Here the "model" is the run's own generation-0 generator, sampled as generate@0 samples
# it (its batch size and base.cpu_threads torch threads, so the floats round the same).
MAKE_IMAGES = """
import csv, sys
from pathlib import Path

import polars as pl
import torch
import yaml
from PIL import Image

from biasloop.models.generators import load_generator

params = yaml.safe_load(Path("params.yaml").read_text())
torch.set_num_threads(int(params["base"]["cpu_threads"]))
rows = pl.read_csv(sys.argv[1])
out = Path(sys.argv[2])
generator = load_generator("artifacts/models/gen0/generator")
size = params["generate"]["batch_size"]
prompts, seeds, ids = rows["prompt"].to_list(), rows["seed"].to_list(), rows["prompt_id"].to_list()
with (out / "manifest.csv").open("w", newline="") as handle:
    writer = csv.writer(handle)
    writer.writerow(["prompt_id", "file"])
    for start in range(0, len(prompts), size):
        images = generator.generate(prompts[start : start + size], seeds[start : start + size], batch_size=size,
            guidance_scale=params["sampling"]["guidance_scale"], steps=params["sampling"]["steps"])
        for key, image in zip(ids[start : start + size], images):
            Image.fromarray(image).save(out / f"{key}.png")
            writer.writerow([key, f"{key}.png"])
"""


@pytest.mark.slow
def test_images_made_outside_give_the_in_pipeline_paradox_table(tiny_pipeline, tmp_path: Path) -> None:
    repo = copy_repo(tiny_pipeline.repo, tmp_path / "repo")
    before = pl.read_csv(repo / "plots/paradox.csv")
    evaluated = json.loads((repo / "metrics/generations/gen0.json").read_text())
    run([sys.executable, "-m", "biasloop.cli", "prompts", "export", "--out", "prompts.csv"], repo)
    exported = pl.read_csv(repo / "prompts.csv")
    manifest = pl.read_parquet(repo / "artifacts/gen0/generate/manifest.parquet")
    assert exported["seed"].to_list() == manifest["seed"].to_list()
    assert exported["prompt"].to_list() == manifest["prompt"].to_list()

    (repo / "make_images.py").write_text(MAKE_IMAGES)
    run([sys.executable, "make_images.py", "prompts.csv", "imports"], repo)
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["generator"]["backend"] = "images"
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    result = run(["dvc", "repro", "paradox", "evaluate@0"], repo)
    for stage in ("pretrain", "generate@0", "label@0"):
        assert f"Running stage '{stage}'" in result.stdout
    # label@0 labelled the imported images exactly as the generated ones: DVC sees paradox's inputs
    # unchanged and skips it; run paradox and evaluate@0 on them anyway
    assert "Stage 'paradox' didn't change" in result.stdout
    result = run(["dvc", "repro", "--force", "--single-item", "paradox", "evaluate@0"], repo)
    for stage in ("paradox", "evaluate@0"):
        assert f"Running stage '{stage}'" in result.stdout

    report = json.loads((repo / "artifacts/gen0/generate/import.json").read_text())
    assert report["n_served"] == len(exported) and report["n_skipped"] == report["n_extra"] == 0
    after = pl.read_csv(repo / "plots/paradox.csv")
    assert after.columns == before.columns and len(after) == len(before)
    for column in before.columns:
        if before[column].dtype.is_numeric():
            np.testing.assert_allclose(after[column].to_numpy(), before[column].to_numpy(), rtol=0, atol=1e-12)
        else:
            assert after[column].to_list() == before[column].to_list()
    again = json.loads((repo / "metrics/generations/gen0.json").read_text())
    for key in ("amplification", "amplification_corrected", "per_occupation", "paradox", "decomposition"):
        assert again[key] == evaluated[key], key
