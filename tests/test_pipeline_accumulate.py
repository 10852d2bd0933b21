"""loop.mode accumulate end to end: `dvc repro` of the evaluate stages of generations 1 and 2 on a tiny world.

Only what those two stages need runs (no captioner, classifier, paradox or summary), so generation 2's
dataset grows from generation 1's (mix@2 reads artifacts/gen1/mix) as it does in a full run.
"""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest
import yaml

from tests.tiny_repo import make_tiny_repo, run

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def accumulate_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    repo = make_tiny_repo(tmp_path_factory.mktemp("accumulate") / "repo", generations=3)
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["loop"]["mode"] = "accumulate"
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run(["dvc", "repro", "evaluate@1", "evaluate@2"], repo)
    return repo


def test_accumulate_grows_each_dataset_from_the_previous_one(accumulate_repo: Path) -> None:
    corpus = pl.read_parquet(accumulate_repo / "artifacts/corpus/captions.parquet").filter(pl.col("split") == "train")
    ratio = yaml.safe_load((accumulate_repo / "params.yaml").read_text())["synthetic_ratio"]
    new = round(ratio * len(corpus))
    one = pl.read_parquet(accumulate_repo / "artifacts/gen1/mix/dataset.parquet")
    two = pl.read_parquet(accumulate_repo / "artifacts/gen2/mix/dataset.parquet")
    assert len(one) == len(corpus) + new and len(two) == len(corpus) + 2 * new
    assert set(corpus["id"]) <= set(one.filter(~pl.col("synthetic"))["id"])  # real data kept
    assert one["id"].to_list() == two["id"].to_list()[: len(one)]  # dataset 1 inside dataset 2
    assert all(ref.startswith("artifacts/gen2/mix/") for ref in two.filter(pl.col("synthetic"))["image_ref"])
    labelled = pl.read_parquet(accumulate_repo / "artifacts/gen2/label_dataset/predictions.parquet")
    assert len(labelled) == len(two) and int(labelled["synthetic"].sum()) == 2 * new


def test_each_generation_reports_amplification_against_corpus_and_training_dataset(accumulate_repo: Path) -> None:
    for generation in (1, 2):
        metrics = json.loads((accumulate_repo / f"metrics/generations/gen{generation}.json").read_text())
        assert "amplification_abs" in metrics["amplification"]  # against the real corpus
        against = metrics["amplification_vs_training_dataset"]
        assert against["available"], against
        assert "amplification_abs" in against["measured"] and "amplification_abs" in against["dataset_vs_real_corpus"]
        assert against["n_synthetic_dataset"] > 0
