"""The instrument, label_train and label@N stages, in-process, on a tiny glyph corpus."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import yaml

from biasloop.core.config import from_dict
from biasloop.core.io import load_images
from biasloop.data.corpus import write_corpus
from biasloop.data.world import WorldConfig, build_world
from biasloop.models.instrument import load_cross_fitted, load_instrument, mixture_fold
from stages import instrument, label, label_train
from tests.conftest import REPO_ROOT

OCCUPATIONS = ["engineer", "teacher", "nurse"]


@pytest.fixture()
def workspace(tmp_path: Path, tiny_params: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """tmp_path as the working directory: a tiny corpus in artifacts/corpus and a fast params.yaml."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("BIASLOOP_EMBEDDING_CACHE", str(tmp_path / "embedding-cache"))
    params = yaml.safe_load(tiny_params.read_text())
    params["instrument"].update(text_encoder="fake:32", epochs=3, batch_size=64)
    # the tone table is a repository path: absolute, since the stages run in tmp_path
    params["world"]["tone"]["table"] = str(REPO_ROOT / params["world"]["tone"]["table"])
    tiny_params.write_text(yaml.safe_dump(params, sort_keys=False))
    samples, images = build_world(from_dict(WorldConfig, params["world"], "world"), params["occupations"])
    write_corpus(samples, images, "artifacts/corpus", shard_size=64)
    return tmp_path


def _set(params_path: Path, **instrument: object) -> None:
    params = yaml.safe_load(params_path.read_text())
    params["instrument"].update(instrument)
    params_path.write_text(yaml.safe_dump(params, sort_keys=False))


def _run_instrument(*extra: str) -> int:
    return instrument.main(
        [
            "--params",
            "params.yaml",
            "--corpus",
            "artifacts/corpus/captions.parquet",
            "--out",
            "artifacts/instrument",
            "--metrics",
            "metrics/instrument.json",
            *extra,
        ]
    )


def test_instrument_then_label_stages(workspace: Path) -> None:
    assert _run_instrument() == 0
    metrics = json.loads((workspace / "metrics/instrument.json").read_text())
    corpus = pl.read_parquet("artifacts/corpus/captions.parquet")
    held_out = corpus.filter((pl.col("split") == "test") & pl.col("true_gender").is_not_null())
    assert metrics["status"] == "measured" and metrics["n"] == len(held_out) > 0
    for key in ("accuracy", "abstain_rate", "tpr", "fpr", "confusion", "occupation_accuracy", "training_seconds"):
        assert key in metrics
    assert metrics["training_seconds"] > 0 and 0 <= metrics["abstain_rate"] <= 1
    # the thread count the numbers were computed with, in the metrics and the MLflow run's params
    threads = yaml.safe_load(Path("params.yaml").read_text())["base"]["cpu_threads"]
    assert metrics["cpu_threads"] == threads
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=yaml.safe_load(Path("params.yaml").read_text())["tracking"]["uri"])
    (run,) = client.search_runs([client.get_experiment_by_name("biasloop").experiment_id])
    assert run.data.params["cpu_threads"] == str(threads)
    assert sum(metrics["confusion"].values()) == metrics["n"]
    assert not list((workspace / "artifacts").glob(".instrument.*"))  # atomic: no temporary left
    # cross-fitted: K fold models over the train split, the labels' origin stated, rates held out
    folds = yaml.safe_load(Path("params.yaml").read_text())["instrument"]["folds"]
    assert metrics["labels"] == f"cross-fitted, {folds} folds" and metrics["folds"] == folds >= 2
    assert len(metrics["per_fold"]) == folds and metrics["out_of_fold"]["n"] > 0
    assert metrics["n_labelled_in_training"] == 0  # the confusion rates come from images no model trained on
    fold_table = pl.read_parquet("artifacts/instrument/folds.parquet")
    train_refs = corpus.filter(pl.col("split") == "train")["image_ref"]
    assert sorted(fold_table["image_ref"].to_list()) == sorted(train_refs.to_list())
    assert fold_table["fold"].value_counts()["count"].max() - fold_table["fold"].value_counts()["count"].min() <= 1
    for k in range(folds):
        assert (workspace / f"artifacts/instrument/fold{k}/instrument.json").exists()

    # label_train: each distinct id classified once, every selection row labelled.
    train = corpus.filter((pl.col("split") == "train") & pl.col("true_occupation").is_not_null())
    picked = train.head(12)
    selections = pl.concat(
        [
            picked.select(selection=pl.lit("keyword"), occupation="true_occupation", id="id"),
            picked.head(5).select(selection=pl.lit("nn"), occupation="true_occupation", id="id"),
        ]
    ).with_columns(similarity=pl.lit(0.5), rank=pl.int_range(1, pl.len() + 1).over("selection"))
    Path("artifacts/neighbours").mkdir(parents=True)
    selections.write_parquet("artifacts/neighbours/selections.parquet")
    assert (
        label_train.main(
            [
                "--params",
                "params.yaml",
                "--instrument",
                "artifacts/instrument",
                "--selections",
                "artifacts/neighbours/selections.parquet",
                "--corpus",
                "artifacts/corpus/captions.parquet",
                "--out",
                "artifacts/label_train/predictions.parquet",
            ]
        )
        == 0
    )
    predictions = pl.read_parquet("artifacts/label_train/predictions.parquet")
    tone = [
        "tone_label",
        "tone_p_light",
        "tone_p_medium",
        "tone_p_dark",
    ]  # the K-class attribute (test_stage_attributes)
    assert predictions.columns == [
        "selection",
        "occupation",
        "id",
        "p_female",
        "label",
        "instrument_fold",
        "true_gender",
        *tone,
        "true_tone",
    ]
    assert len(predictions) == 17
    assert predictions.group_by("id").agg(pl.col("p_female").n_unique())["p_female"].max() == 1
    assert set(predictions["label"]) <= {"female", "male", "abstain"}
    threshold = yaml.safe_load(Path("params.yaml").read_text())["label"]["abstain_threshold"]
    for row in predictions.iter_rows(named=True):
        expected = "female" if row["p_female"] > 1 - threshold else "male" if row["p_female"] < threshold else "abstain"
        assert row["label"] == expected
    truth = dict(corpus.select("id", "true_gender").iter_rows())
    assert all(truth[i] == g for i, g in predictions.select("id", "true_gender").iter_rows())
    # out of sample: each training image labelled by the fold model that did not train on it, and by that one
    ref_of = dict(corpus.select("id", "image_ref").iter_rows())
    fold_of = dict(fold_table.iter_rows())
    per_image = predictions.unique("id").sort("id")
    assert per_image["instrument_fold"].to_list() == [fold_of[ref_of[i]] for i in per_image["id"]]
    for k in range(folds):
        mine = per_image.filter(pl.col("instrument_fold") == k)
        if len(mine):
            alone = load_instrument(f"artifacts/instrument/fold{k}").p_female(
                load_images([ref_of[i] for i in mine["id"]])
            )
            assert alone.tolist() == mine["p_female"].to_list()

    # label@N: the manifest's columns plus gender and occupation predictions.
    # a training image labelled by its own fold's model; held-out ones (as generated images) by the mixture's
    held_out_known = corpus.filter((pl.col("split") == "test") & pl.col("true_occupation").is_not_null())
    manifest = pl.concat([train.head(5), held_out_known.head(4)]).select(
        prompt_kind=pl.lit("neutral"),
        occupation="true_occupation",
        prompt="caption",
        seed=pl.int_range(0, pl.len()),
        image_ref="image_ref",
    )
    Path("artifacts/gen0/generate").mkdir(parents=True)
    manifest.write_parquet("artifacts/gen0/generate/manifest.parquet")
    assert (
        label.main(
            [
                "--params",
                "params.yaml",
                "--generation",
                "0",
                "--instrument",
                "artifacts/instrument",
                "--manifest",
                "artifacts/gen0/generate/manifest.parquet",
                "--out",
                "artifacts/gen0/label/predictions.parquet",
            ]
        )
        == 0
    )
    generated = pl.read_parquet("artifacts/gen0/label/predictions.parquet")
    assert generated.columns == [
        *manifest.columns,
        "p_female",
        "label",
        "p_occupation",
        "predicted_occupation",
        "instrument_fold",
        "oracle_label",
        *tone,
        "oracle_tone",
    ]
    # the glyph world's oracle reads each image's hue: the true gender, or abstain on an ambiguous hue
    truth = corpus.select("image_ref", "true_gender", "true_ambiguous")
    checked = generated.join(truth, on="image_ref", how="left")
    clear = checked.filter(~pl.col("true_ambiguous"))
    assert (clear["oracle_label"] == clear["true_gender"]).all()
    assert (checked.filter(pl.col("true_ambiguous"))["oracle_label"] == "abstain").all()
    # another corpus (here: the same images declared a folder corpus) has no oracle: a null column
    params = yaml.safe_load(Path("params.yaml").read_text())
    params["corpus"]["source"] = "folder"
    Path("other.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    assert (
        label.main(
            [
                "--params",
                "other.yaml",
                "--generation",
                "0",
                "--instrument",
                "artifacts/instrument",
                "--manifest",
                "artifacts/gen0/generate/manifest.parquet",
                "--out",
                "other.parquet",
            ]
        )
        == 0
    )
    other = pl.read_parquet("other.parquet")
    assert other["oracle_label"].is_null().all() and other["label"].to_list() == generated["label"].to_list()
    assert (
        generated["instrument_fold"].to_list()
        == load_cross_fitted("artifacts/instrument").fold_for(manifest["image_ref"].to_list()).tolist()
    )
    assert (
        generated["instrument_fold"].to_list()
        == [fold_of[r] for r in manifest["image_ref"][:5]]
        + mixture_fold(manifest["image_ref"][5:].to_list(), folds, seed=0).tolist()
    )
    assert len(generated) == 9 and set(generated["predicted_occupation"]) <= set(OCCUPATIONS)
    assert generated["p_occupation"].is_between(0, 1).all() and generated["p_female"].is_between(0, 1).all()


def test_instrument_without_ground_truth_then_labelled_csv(workspace: Path) -> None:
    """A corpus with no gender labels: accuracy unknown, unless instrument.labelled_csv names some."""
    corpus = pl.read_parquet("artifacts/corpus/captions.parquet")
    corpus.with_columns(true_gender=pl.lit(None, dtype=pl.String)).write_parquet("artifacts/corpus/captions.parquet")
    # the open-clip backend from a repository config at random weights: nothing is downloaded
    _set(Path("params.yaml"), backend="open-clip", model="biasloop-tiny-clip", pretrained=None)
    assert _run_instrument() == 0
    metrics = json.loads(Path("metrics/instrument.json").read_text())
    assert metrics["status"] == "unknown" and metrics["accuracy"] is None and metrics["tpr"] is None
    assert (
        metrics["backend"] == "open-clip"
        and metrics["folds"] == 1
        and "not trained on this corpus" in metrics["labels"]
    )

    corpus.filter(pl.col("true_gender").is_not_null()).head(10).select("image_ref", "true_gender").write_csv("lab.csv")
    _set(Path("params.yaml"), labelled_csv="lab.csv")
    assert _run_instrument() == 0
    metrics = json.loads(Path("metrics/instrument.json").read_text())
    assert metrics["status"] == "measured" and metrics["n"] == 10 and metrics["labelled_source"] == "lab.csv"


def test_stage_errors_are_one_line(workspace: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert _run_instrument("--corpus", "missing.parquet") == 2
    _set(Path("params.yaml"), backend="clip-of-the-future")
    with pytest.raises(SystemExit) as exit_info:
        _run_instrument()
    assert exit_info.value.code == 2
    assert "instrument.backend" in capsys.readouterr().err
    _set(Path("params.yaml"), backend="locked-text-clip")
    assert (
        label_train.main(["--params", "params.yaml", "--instrument", "nowhere", "--selections", "missing.parquet"]) == 2
    )
    assert "missing.parquet" in capsys.readouterr().err


def test_evaluate_groups_unlabelled_held_out_images_with_the_instrument(workspace: Path) -> None:
    """evaluate@N's perceived groups, for a corpus without gender labels: the instrument's out-of-sample labels."""
    from biasloop.metrics.evaluation import perceived_groups
    from biasloop.models.instrument import label_images

    assert _run_instrument() == 0
    test = pl.read_parquet("artifacts/corpus/captions.parquet").filter(pl.col("split") == "test").head(20)
    unlabelled = test.with_columns(true_gender=pl.lit(None, dtype=pl.String))
    groups = perceived_groups(unlabelled, "artifacts/instrument", "cpu", 0.1)
    labels = label_images(load_cross_fitted("artifacts/instrument"), test["image_ref"].to_list(), 0.1)[
        "label"
    ].to_list()
    assert groups == [None if label == "abstain" else label for label in labels]
    assert perceived_groups(test, "artifacts/instrument", "cpu", 0.1) == test["true_gender"].to_list()


def test_label_units_cover_every_row_once_in_forward_passes_of_one_model() -> None:
    from biasloop.models.instrument import label_units

    class TwoFolds:  # rows 0, 2, 3, 5, 6 go to model 1, the rest to model 0
        def fold_for(self, refs: list[str]) -> np.ndarray:
            return np.array([1, 0, 1, 1, 0, 1, 1], dtype=np.int64)[: len(refs)]

    units = label_units(TwoFolds(), [f"x.npy#{i}" for i in range(7)], batch_size=2)
    assert [u.tolist() for u in units] == [[1, 4], [0, 2], [3, 5], [6]]
    with pytest.raises(ValueError, match="batch_size"):
        label_units(TwoFolds(), ["x.npy#0"], batch_size=0)


@pytest.mark.slow
def test_label_with_two_processes_writes_the_same_labels_as_one(
    workspace: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """label.num_processes: 2 re-runs label@N under `accelerate launch` on CPU; the forward passes are
    dealt by index, so the predictions file is byte-identical to one process's, and both equal one
    label_images call over every image (the labels of the single-process stage before the split). This
    process's torch starts with another thread count than base.cpu_threads (see test_stage_generate)."""
    import torch

    from biasloop.models.instrument import label_images

    monkeypatch.setenv(
        "PYTHONPATH", str(Path(__file__).resolve().parents[1])
    )  # the launched processes import this checkout
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("MKL_NUM_THREADS", raising=False)
    assert _run_instrument() == 0
    corpus = pl.read_parquet("artifacts/corpus/captions.parquet").filter(pl.col("true_occupation").is_not_null())
    # training images (labelled by their own fold's model) and held-out ones (by the fold mixture), interleaved
    manifest = (
        corpus.sort("split", "id")
        .gather_every(3)
        .head(23)
        .select(
            prompt_kind=pl.lit("neutral"),
            occupation="true_occupation",
            prompt="caption",
            seed=pl.int_range(0, pl.len()),
            image_ref="image_ref",
        )
    )
    assert set(corpus.filter(pl.col("image_ref").is_in(manifest["image_ref"].implode()))["split"]) == {"train", "test"}
    Path("artifacts/gen0/generate").mkdir(parents=True)
    manifest.write_parquet("artifacts/gen0/generate/manifest.parquet")
    params = yaml.safe_load(Path("params.yaml").read_text())
    params["label"]["batch_size"] = 4  # 23 images over 2 fold models: 6 or 7 forward passes, 3 or 4 per process
    torch.set_num_threads(3 - params["base"]["cpu_threads"])

    def run(processes: int, out: str) -> pl.DataFrame:
        params["label"]["num_processes"] = processes
        Path("params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        assert (
            label.main(
                [
                    "--params",
                    "params.yaml",
                    "--generation",
                    "0",
                    "--instrument",
                    "artifacts/instrument",
                    "--manifest",
                    "artifacts/gen0/generate/manifest.parquet",
                    "--out",
                    out,
                ]
            )
            == 0
        )
        return pl.read_parquet(out)

    one = run(1, "artifacts/one/predictions.parquet")
    two = run(2, "artifacts/two/predictions.parquet")
    assert (
        Path("artifacts/one/predictions.parquet").read_bytes() == Path("artifacts/two/predictions.parquet").read_bytes()
    )
    assert one.equals(two) and len(one) == 23 and one["instrument_fold"].n_unique() == 2
    whole = label_images(
        load_cross_fitted("artifacts/instrument"),
        manifest["image_ref"].to_list(),
        0.1,
        batch_size=4,
        occupations=OCCUPATIONS,
        asked=manifest["occupation"].to_list(),
    )
    assert one.select(whole.columns).equals(whole)
    assert not list(Path("artifacts/two").glob(".predictions*"))  # the parts folder is gone
