"""The second attribute (tone) through the corpus, instrument and labelling stages, in-process on a tiny
glyph world: its columns and JSON entries, checked by hand against the labels and the ground truth, and
perceived gender's columns unchanged by it."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import yaml

from biasloop.core.config import from_dict
from biasloop.data.corpus import write_corpus
from biasloop.data.world import WorldConfig, build_world
from biasloop.models.instrument import encode_cross_fitted, label_images, load_cross_fitted
from stages import corpus as corpus_stage, instrument, label, label_dataset, label_train
from tests.conftest import committed_params, tiny_world_params

TONES = ["light", "medium", "dark"]
THRESHOLD = committed_params()["attributes"]["tone"]["abstain"]["min_top_probability"]  # 0.5
TONE_COLUMNS = ["tone_label", "tone_p_light", "tone_p_medium", "tone_p_dark"]
GENDER_TRAIN = ["selection", "occupation", "id", "p_female", "label", "instrument_fold", "true_gender"]


def _params(data_dir: Path, root: Path) -> dict:
    """The committed params on a tiny world (3 occupations, 40 samples each), a fast instrument."""
    params = tiny_world_params(data_dir, root)
    params["instrument"].update(text_encoder="fake:32", epochs=3, batch_size=64)
    return params


def _write(params: dict, path: str) -> str:
    Path(path).write_text(yaml.safe_dump(params, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> Iterator[Path]:
    """A tiny corpus and its trained instrument (params.yaml: with tone; gender.yaml: attributes without
    tone), the working directory for the module's tests; selections, a manifest for label@N."""
    root = tmp_path_factory.mktemp("attributes")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(root)
        patch.setenv("BIASLOOP_EMBEDDING_CACHE", str(root / "embedding-cache"))
        params = _params(data_dir, root)
        _write(params, "params.yaml")
        del params["attributes"]["tone"]
        _write(params, "gender.yaml")
        samples, images = build_world(from_dict(WorldConfig, params["world"], "world"), params["occupations"])
        write_corpus(samples, images, "artifacts/corpus", shard_size=64)
        argv = ["--corpus", "artifacts/corpus/captions.parquet", "--out", "artifacts/instrument"]
        assert instrument.main(["--params", "params.yaml", *argv, "--metrics", "metrics/instrument.json"]) == 0
        corpus = pl.read_parquet("artifacts/corpus/captions.parquet")
        people = corpus.filter(pl.col("true_occupation").is_not_null())
        train, test = people.filter(pl.col("split") == "train"), people.filter(pl.col("split") == "test")
        Path("artifacts/neighbours").mkdir(parents=True)
        pl.concat(
            [
                train.head(30).select(selection=pl.lit("keyword"), occupation="true_occupation", id="id"),
                train.head(7).select(selection=pl.lit("nn"), occupation="true_occupation", id="id"),
            ]
        ).write_parquet("artifacts/neighbours/selections.parquet")
        Path("artifacts/gen0/generate").mkdir(parents=True)
        pl.concat([train.head(12), test.head(12)]).select(
            prompt_kind=pl.lit("neutral"),
            occupation="true_occupation",
            prompt="caption",
            seed=pl.int_range(0, pl.len()),
            image_ref="image_ref",
        ).write_parquet("artifacts/gen0/generate/manifest.parquet")
        yield root


def _label_train(params: str, out: str) -> pl.DataFrame:
    argv = ["--instrument", "artifacts/instrument", "--selections", "artifacts/neighbours/selections.parquet"]
    assert label_train.main(["--params", params, *argv, "--out", out]) == 0
    return pl.read_parquet(out)


def _label(params: str, out: str) -> pl.DataFrame:
    argv = ["--generation", "0", "--manifest", "artifacts/gen0/generate/manifest.parquet"]
    assert label.main(["--params", params, *argv, "--out", out]) == 0
    return pl.read_parquet(out)


def _label_dataset(params: str, out: str) -> pl.DataFrame:
    argv = ["--generation", "0", "--dataset", "artifacts/corpus/captions.parquet"]
    assert label_dataset.main(["--params", params, *argv, "--out", out]) == 0
    return pl.read_parquet(out)


def _check_tone_columns(frame: pl.DataFrame) -> None:
    """Probabilities sum to 1; the label is the top class when its probability exceeds the threshold, else abstain."""
    probs = frame.select("tone_p_light", "tone_p_medium", "tone_p_dark").to_numpy()
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=0, atol=1e-12)
    expected = np.where(probs.max(axis=1) > THRESHOLD, np.array(TONES, dtype=object)[probs.argmax(axis=1)], "abstain")
    assert frame["tone_label"].to_list() == expected.tolist()


def test_instrument_json_has_tone_counted_against_the_truth(workspace: Path) -> None:
    metrics = json.loads(Path("metrics/instrument.json").read_text())
    tone = metrics["attributes"]["tone"]
    assert list(metrics["attributes"]) == ["tone"] and tone["classes"] == TONES and tone["status"] == "measured"
    corpus = pl.read_parquet("artifacts/corpus/captions.parquet")
    held_out = corpus.filter((pl.col("split") == "test") & pl.col("true_tone").is_not_null())
    confusion, abstained = np.array(tone["confusion"]), np.array(tone["abstained"])
    assert confusion.shape == (3, 3) and abstained.shape == (3,)
    # every held-out person counted once: confident in the 3 x 3 table, the rest abstained, row by true class
    assert confusion.sum() == tone["n_confident"] and confusion.sum() + abstained.sum() == tone["n"] == len(held_out)
    by_class = held_out["true_tone"].value_counts()
    assert (confusion.sum(axis=1) + abstained).tolist() == [
        int(by_class.filter(pl.col("true_tone") == t)["count"].sum()) for t in TONES
    ]
    # the table from the labels of one fold model per image (the one the hash picks), by hand
    from biasloop.core.attributes import load_attributes
    from biasloop.models.instrument import label_attribute

    spec = load_attributes(yaml.safe_load(Path("params.yaml").read_text()))["tone"]
    labels = label_attribute(load_cross_fitted("artifacts/instrument"), spec, held_out["image_ref"].to_list())["label"]
    pairs = list(zip(held_out["true_tone"].to_list(), labels.to_list()))
    assert tone["confusion"] == [[pairs.count((t, j)) for j in TONES] for t in TONES]
    assert tone["abstained"] == [pairs.count((t, "abstain")) for t in TONES]
    assert tone["accuracy"] == pytest.approx(np.trace(confusion) / confusion.sum())
    assert tone["abstain_rate"] == pytest.approx(abstained.sum() / len(held_out))
    assert tone["threshold"] == THRESHOLD
    # gender's keys as before
    assert metrics["status"] == "measured" and sum(metrics["confusion"].values()) == metrics["n"]


def test_instrument_without_the_truth_gives_only_abstain_rate_and_shares(workspace: Path) -> None:
    corpus = pl.read_parquet("artifacts/corpus/captions.parquet").drop("true_tone", "true_tone_indicator")
    corpus.write_parquet("no_tone.parquet")
    argv = ["--corpus", "no_tone.parquet", "--out", "no_tone_instrument", "--metrics", "no_tone.json"]
    assert instrument.main(["--params", "params.yaml", *argv]) == 0
    tone = json.loads(Path("no_tone.json").read_text())["attributes"]["tone"]
    assert tone["status"] == "unknown" and "confusion" not in tone and "accuracy" not in tone
    assert tone["n"] == int((corpus["split"] == "test").sum())  # every held-out image, distractors included
    assert 0 <= tone["abstain_rate"] <= 1 and set(tone["shares"]) == set(TONES)
    confident = [s for s in tone["shares"].values() if s is not None]
    assert not confident or sum(confident) == pytest.approx(1.0)


def test_label_train_adds_tone_and_leaves_gender_unchanged(workspace: Path) -> None:
    with_tone = _label_train("params.yaml", "with.parquet")
    without = _label_train("gender.yaml", "without.parquet")
    assert with_tone.columns == [*GENDER_TRAIN, *TONE_COLUMNS, "true_tone"] and without.columns == GENDER_TRAIN
    assert with_tone.select(GENDER_TRAIN).equals(without)
    _check_tone_columns(with_tone)
    truth = dict(pl.read_parquet("artifacts/corpus/captions.parquet").select("id", "true_tone").iter_rows())
    assert with_tone["true_tone"].to_list() == [truth[i] for i in with_tone["id"]]
    assert set(with_tone["true_tone"]) <= set(TONES)
    # and gender's labels equal the images' labels before tone existed (label_images encoding them itself)
    corpus = pl.read_parquet("artifacts/corpus/captions.parquet")
    per_image = without.unique("id", keep="first").sort("id")
    refs = per_image.join(corpus.select("id", "image_ref"), on="id", how="left")["image_ref"].to_list()
    alone = label_images(load_cross_fitted("artifacts/instrument"), refs, 0.1, batch_size=512)
    assert per_image["p_female"].to_list() == alone["p_female"].to_list()


def test_label_adds_tone_and_the_world_oracle(workspace: Path) -> None:
    with_tone = _label("params.yaml", "gen_with.parquet")
    without = _label("gender.yaml", "gen_without.parquet")
    assert with_tone.columns == [*without.columns, *TONE_COLUMNS, "oracle_tone"]
    assert "oracle_tone" not in without.columns and with_tone.select(without.columns).equals(without)
    _check_tone_columns(with_tone)
    # the oracle reads the brightness: every world person's drawn brightness lies in its tone's band
    truth = pl.read_parquet("artifacts/corpus/captions.parquet").select("image_ref", "true_tone")
    checked = with_tone.join(truth, on="image_ref", how="left")
    assert checked["oracle_tone"].to_list() == checked["true_tone"].to_list() and len(checked) == 24
    # no oracle off the glyph world, or for a world without tone
    params = yaml.safe_load(Path("params.yaml").read_text())
    params["corpus"]["source"] = "folder"
    other = _label(_write(params, "folder.yaml"), "gen_folder.parquet")
    assert other["oracle_tone"].is_null().all() and other["tone_label"].to_list() == with_tone["tone_label"].to_list()
    params["corpus"]["source"], params["world"]["tone"]["enabled"] = "world", False
    assert _label(_write(params, "toneless.yaml"), "gen_toneless.parquet")["oracle_tone"].is_null().all()


def test_label_dataset_adds_tone_with_the_source_truth(workspace: Path) -> None:
    with_tone = _label_dataset("params.yaml", "data_with.parquet")
    without = _label_dataset("gender.yaml", "data_without.parquet")
    assert with_tone.columns == [*without.columns, *TONE_COLUMNS, "true_tone"]
    assert with_tone.select(without.columns).equals(without)
    _check_tone_columns(with_tone)
    corpus = pl.read_parquet("artifacts/corpus/captions.parquet").filter(pl.col("split") == "train")
    assert with_tone["id"].to_list() == corpus["id"].to_list()
    assert with_tone["true_tone"].to_list() == corpus["true_tone"].to_list()
    # a dataset of generated rows (no true_tone of its own) gets its source caption's
    mixed = corpus.with_columns(
        id=pl.concat_str(pl.lit("gen-"), pl.col("id")), source_id="id", synthetic=pl.lit(True)
    ).drop("true_tone", "true_tone_indicator")
    mixed.write_parquet("mixed.parquet")
    argv = ["--generation", "1", "--dataset", "mixed.parquet", "--out", "data_mixed.parquet"]
    assert label_dataset.main(["--params", "params.yaml", *argv]) == 0
    assert pl.read_parquet("data_mixed.parquet")["true_tone"].to_list() == corpus["true_tone"].to_list()


def test_corpus_metrics_have_tone_statistics_only_with_tone_on(workspace: Path) -> None:
    argv = ["--out", "corpus_out", "--contact-sheet", "sheet.png"]
    assert corpus_stage.main(["--params", "params.yaml", *argv, "--metrics", "corpus_on.json"]) == 0
    tone = json.loads(Path("corpus_on.json").read_text())["attributes"]["tone"]
    train = pl.read_parquet("corpus_out/captions.parquet").filter(
        (pl.col("split") == "train") & pl.col("true_tone").is_not_null()
    )
    assert tone["split"] == "train" and tone["n"] == len(train) == sum(r["n"] for r in tone["per_occupation"])
    for t in TONES:
        assert tone["overall"][t] == pytest.approx(float((train["true_tone"] == t).mean()))
    nurse = next(r for r in tone["per_occupation"] if r["occupation"] == "nurse")
    nurses = train.filter(pl.col("true_occupation") == "nurse")
    assert nurse["share_dark"] == pytest.approx(float((nurses["true_tone"] == "dark").mean()))
    assert nurse["indicator_rate"] == pytest.approx(float((nurses["true_tone_indicator"] != "none").mean()))
    params = yaml.safe_load(Path("params.yaml").read_text())
    params["world"]["tone"]["enabled"] = False
    off = ["--params", _write(params, "off.yaml"), "--out", "corpus_off", "--contact-sheet", "sheet_off.png"]
    assert corpus_stage.main([*off, "--metrics", "corpus_off.json"]) == 0
    assert "attributes" not in json.loads(Path("corpus_off.json").read_text())


def test_encode_cross_fitted_reuses_known_vectors(workspace: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Known images are taken from the given vectors, not encoded again; the rest are encoded."""
    instrument_ = load_cross_fitted("artifacts/instrument")
    refs = pl.read_parquet("artifacts/corpus/captions.parquet")["image_ref"].to_list()[:20]
    fresh = encode_cross_fitted(instrument_, refs, 8)
    known = (refs[:15], fresh[:15] + 1.0)  # marked: taken from here, these rows come back + 1
    reused = encode_cross_fitted(instrument_, refs[10:], 8, known=known)
    np.testing.assert_array_equal(reused[:5], fresh[10:15] + 1.0)
    # encoded in another batch (5 images, not within 20): the same up to float32 rounding
    np.testing.assert_allclose(reused[5:], fresh[15:], rtol=0, atol=1e-6)
