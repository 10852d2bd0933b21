"""The captioner@N and classifier@N stages, in-process, on a tiny glyph corpus (generation 0 on the corpus,
generation 1 on a mixed dataset), and their numbers in the summary and the report."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import yaml

from biasloop.core.config import from_dict
from biasloop.core.io import load_images, write_image_shards
from biasloop.data.corpus import write_corpus
from biasloop.data.world import WorldConfig, build_world
from biasloop.loop.mixing import build_dataset
from biasloop.report.html import render_report
from biasloop.report.summary import task_row
from stages import captioner, classifier

pytestmark = pytest.mark.slow


@pytest.fixture()
def workspace(tmp_path: Path, tiny_params: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """tmp_path as the working directory: a tiny corpus, a generation-1 dataset, fast task params."""
    monkeypatch.chdir(tmp_path)
    params = yaml.safe_load(tiny_params.read_text())
    params["world"]["samples_per_occupation"] = 80
    params["captioner"].update(epochs=3, cpu_threads=1)
    params["captioner"]["leakage"].update(seeds=2, epochs=5)
    params["classifier"].update(epochs=2, cpu_threads=1, min_group_size=3)
    tiny_params.write_text(yaml.safe_dump(params, sort_keys=False))
    samples, images = build_world(from_dict(WorldConfig, params["world"], "world"), params["occupations"])
    write_corpus(samples, images, "artifacts/corpus", shard_size=64)
    corpus = pl.read_parquet("artifacts/corpus/captions.parquet").filter(pl.col("split") == "train")
    replaced = np.arange(0, len(corpus), 3)  # a third of the images "generated": here, the corpus's mirrored
    mirrored = load_images(corpus["image_ref"].to_list())[replaced][:, :, ::-1]
    refs = write_image_shards(np.ascontiguousarray(mirrored), "artifacts/gen1/mix/images", shard_size=64)
    build_dataset(corpus, replaced, refs).write_parquet("artifacts/gen1/mix/dataset.parquet")
    return tmp_path


def _args(generation: int, task: str) -> list[str]:
    dataset = (
        "artifacts/corpus/captions.parquet" if generation == 0 else f"artifacts/gen{generation}/mix/dataset.parquet"
    )
    return [
        "--params",
        "params.yaml",
        "--generation",
        str(generation),
        "--dataset",
        dataset,
        "--corpus",
        "artifacts/corpus/captions.parquet",
        "--instrument",
        "artifacts/instrument",
        "--out",
        f"artifacts/gen{generation}/{task}",
        "--metrics",
        f"metrics/generations/{task}_gen{generation}.json",
    ]


def test_captioner_and_classifier_stages(workspace: Path) -> None:
    test = pl.read_parquet("artifacts/corpus/captions.parquet").filter(pl.col("split") == "test")
    rows = []
    for generation in (0, 1):
        assert captioner.main(_args(generation, "captioner")) == 0
        assert classifier.main(_args(generation, "classifier")) == 0
        caption_metrics = json.loads(Path(f"metrics/generations/captioner_gen{generation}.json").read_text())
        classifier_metrics = json.loads(Path(f"metrics/generations/classifier_gen{generation}.json").read_text())
        assert caption_metrics["generation"] == classifier_metrics["generation"] == generation
        quality = caption_metrics["quality"]
        assert quality["n_images"] == len(test) and 0 <= quality["bleu4"] <= 1 and quality["cider_d"] >= 0
        assert caption_metrics["misprediction"]["n_images"] == test["true_gender"].is_not_null().sum()
        leakage = caption_metrics["leakage"]
        assert len(leakage["per_seed"]) == 2 and leakage["leakage"] == pytest.approx(
            leakage["lic_m"] - leakage["lic_d"]
        )
        captions = pl.read_parquet(f"artifacts/gen{generation}/captioner/captions.parquet")
        assert (
            captions["id"].to_list() == test["id"].to_list()
            and captions["reference"].to_list() == test["caption"].to_list()
        )
        assert classifier_metrics["n_test"] == test["true_occupation"].is_not_null().sum()
        assert 0 <= classifier_metrics["accuracy"] <= 1 and set(classifier_metrics["accuracy_by_gender"]) == {
            "female",
            "male",
        }
        predictions = pl.read_parquet(f"artifacts/gen{generation}/classifier/predictions.parquet")
        assert set(predictions["predicted"].to_list()) <= {"engineer", "teacher", "nurse"}
        rows.append({"generation": generation, **task_row(caption_metrics, classifier_metrics)})
    # generation 1 trained on the mixed dataset: its training pairs are the dataset's rows.
    gen1 = json.loads(Path("metrics/generations/captioner_gen1.json").read_text())
    assert gen1["training"]["n_pairs"] == len(pl.read_parquet("artifacts/gen1/mix/dataset.parquet"))
    for key in (
        "captioner_bleu4",
        "captioner_cider_d",
        "captioner_error",
        "captioner_lic_m",
        "captioner_lic_d",
        "captioner_leakage",
        "classifier_accuracy",
        "classifier_dp_difference",
        "classifier_eo_difference",
        "classifier_worst_group_accuracy",
    ):
        assert rows[1][key] is not None, key
    text = render_report(workspace / "report.html", rows, None, None, {}, {})
    assert "Downstream tasks across generations" in text and "LIC_M (%)" in text


def test_a_bad_dataset_path_fails_with_a_message(workspace: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = _args(1, "captioner")
    args[args.index("--dataset") + 1] = "artifacts/gen9/mix/dataset.parquet"
    assert captioner.main(args) == 2
    assert "artifacts/gen9/mix/dataset.parquet" in capsys.readouterr().err
    assert not Path("metrics/generations/captioner_gen1.json").exists()
