"""The paradox stage's decomposition, in-process on a tiny glyph world: (a) recomputed by hand from the
corpus captions and retrieve's matches; a + b + c = measured; the instrument checked against the oracle."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import yaml

from biasloop.core.config import from_dict
from biasloop.core.io import load_images
from biasloop.data.corpus import write_corpus
from biasloop.data.hues import oracle_labels
from biasloop.data.world import MarkednessConfig, WorldConfig, build_world
from biasloop.metrics.decomposition import decompose
from stages import neighbours, paradox, retrieve


def _instrument(truth: pl.Series, ambiguous: pl.Series, rng: np.random.Generator) -> list[str]:
    """A stand-in instrument: the true gender, wrong 10% of the time, abstaining on ambiguous hues."""
    flip = rng.random(len(truth)) < 0.1
    out = []
    for gender, unsure, wrong in zip(truth.to_list(), ambiguous.to_list(), flip):
        if gender is None or unsure:
            out.append("abstain")
        else:
            out.append({"female": "male", "male": "female"}[gender] if wrong else gender)
    return out


@pytest.fixture()
def workspace(tmp_path: Path, tiny_params: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A tiny world's corpus, retrieve's matches, neighbours' selections, hand-made instrument labels of
    the selected training images, and "generated" images: held-out world images for the neutral prompts
    and, for captions as prompts, each caption's own training image (a perfect copier)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("BIASLOOP_EMBEDDING_CACHE", str(tmp_path / "embedding-cache"))
    params = yaml.safe_load(tiny_params.read_text())
    params["world"]["samples_per_occupation"] = 150
    params["neighbours"].update(model="fake:32", k=30)
    params["evaluate"]["n_boot"] = 200
    tiny_params.write_text(yaml.safe_dump(params, sort_keys=False))
    samples, images = build_world(from_dict(WorldConfig, params["world"], "world"), params["occupations"])
    write_corpus(samples, images, "artifacts/corpus", shard_size=256)
    assert (
        retrieve.main(
            [
                "--corpus",
                "artifacts/corpus/captions.parquet",
                "--out",
                "artifacts/retrieve/matches.parquet",
                "--metrics",
                "metrics/retrieve.json",
            ]
        )
        == 0
    )
    assert (
        neighbours.main(
            [
                "--matches",
                "artifacts/retrieve/matches.parquet",
                "--out",
                "artifacts/neighbours/selections.parquet",
                "--metrics",
                "metrics/neighbours.json",
            ]
        )
        == 0
    )

    rng = np.random.default_rng(5)
    corpus = pl.read_parquet("artifacts/corpus/captions.parquet")
    selections = pl.read_parquet("artifacts/neighbours/selections.parquet")
    train = selections.select("selection", "occupation", "id").join(
        corpus.select("id", "true_gender", "true_ambiguous"), on="id", how="left"
    )
    train = train.with_columns(
        label=pl.Series(_instrument(train["true_gender"], train["true_ambiguous"], rng)),
        p_female=pl.lit(0.5),
        instrument_fold=pl.lit(0),
    )
    train.select("selection", "occupation", "id", "p_female", "label", "instrument_fold", "true_gender").write_parquet(
        "train_predictions.parquet"
    )

    held_out = corpus.filter((pl.col("split") == "test") & pl.col("true_occupation").is_not_null())
    neutral = held_out.select(
        prompt_kind=pl.lit("neutral"),
        occupation="true_occupation",
        source_id=pl.lit(None, dtype=pl.String),
        image_ref="image_ref",
        true_gender="true_gender",
        true_ambiguous="true_ambiguous",
    )
    sources = (
        train.filter(pl.col("selection") == "keyword")
        .group_by("occupation", maintain_order=True)
        .head(25)
        .join(corpus.select("id", "image_ref"), on="id")
    )
    copies = sources.select(
        prompt_kind=pl.lit("caption"),
        occupation="occupation",
        source_id="id",
        image_ref="image_ref",
        true_gender="true_gender",
        true_ambiguous="true_ambiguous",
    )
    generated = pl.concat([neutral, copies])
    generated = generated.with_columns(
        label=pl.Series(_instrument(generated["true_gender"], generated["true_ambiguous"], rng)),
        p_female=pl.lit(0.5),
        oracle_label=pl.Series(
            oracle_labels(
                load_images(generated["image_ref"].to_list()),
                params["world"]["hue_female"],
                params["world"]["hue_male"],
            ).tolist()
        ),
    ).drop("true_gender", "true_ambiguous")
    generated.write_parquet("generated_predictions.parquet")
    Path("metrics").mkdir(exist_ok=True)
    Path("metrics/instrument.json").write_text(json.dumps({"tpr": 0.9, "fpr": 0.1}))
    return tmp_path


def _run_paradox() -> int:
    return paradox.main(
        [
            "--params",
            "params.yaml",
            "--train-predictions",
            "train_predictions.parquet",
            "--generated",
            "generated_predictions.parquet",
            "--instrument-metrics",
            "metrics/instrument.json",
            "--matches",
            "artifacts/retrieve/matches.parquet",
            "--out",
            "metrics/paradox.json",
            "--table",
            "plots/paradox.csv",
            "--plot",
            "plots/paradox_shares.png",
        ]
    )


def test_paradox_stage_decomposition_by_hand(workspace: Path) -> None:
    assert _run_paradox() == 0
    result = json.loads(Path("metrics/paradox.json").read_text())
    table = result["table"]

    # (a) by hand for prompt vs keyword: the keyword selection is every retrieved caption (the matches);
    # F_train_true from their true_gender, F_ideal from those with indicator "none", weights from the
    # instrument's labels of the selection.
    captions = pl.read_parquet("artifacts/corpus/captions.parquet").select("id", "true_gender")
    matches = pl.read_parquet("artifacts/retrieve/matches.parquet").join(captions, on="id", how="left")
    known = matches.filter(pl.col("true_gender").is_not_null())
    truth = known.group_by("occupation").agg(
        train_true=(pl.col("true_gender") == "female").mean(),
        ideal=(pl.col("true_gender") == "female").filter(pl.col("indicator") == "none").mean(),
    )
    measured = (
        pl.read_parquet("train_predictions.parquet")
        .filter((pl.col("selection") == "keyword") & pl.col("label").is_in(["female", "male"]))
        .group_by("occupation")
        .agg(train_measured=(pl.col("label") == "female").mean())
    )
    by_hand = truth.join(measured, on="occupation").with_columns(
        term=(pl.col("train_measured") - 0.5).sign() * (pl.col("ideal") - pl.col("train_true"))
    )
    keyword = table["prompt_vs_keyword"]
    assert keyword["decomposition"]["ground_truth"] is True
    assert keyword["decomposition"]["data"]["estimate"] == pytest.approx(by_hand["term"].mean(), abs=1e-9)
    assert keyword["ideal"]["shift"]["estimate"] == pytest.approx(by_hand["term"].mean(), abs=1e-9)
    gap = (by_hand["ideal"] - by_hand["train_true"]).abs().mean()
    assert keyword["ideal"]["gap"]["estimate"] == pytest.approx(gap, abs=1e-9)
    # the measured shift of the decomposition is the amplification table's shift_to_majority
    assert keyword["decomposition"]["measured"]["estimate"] == pytest.approx(
        keyword["measured"]["shift_to_majority"], abs=1e-12
    )

    for name, entry in table.items():
        terms = entry["decomposition"]
        assert terms["available"] and terms["ground_truth"], name
        parts = terms["data"]["estimate"] + terms["generator"]["estimate"] + terms["instrument"]["estimate"]
        assert abs(parts - terms["measured"]["estimate"]) < 1e-12, name
        for term in ("data", "generator", "instrument"):
            lo, hi = terms[term]["ci"]
            assert lo <= terms[term]["estimate"] <= hi, (name, term)
    # captions as prompts: paired, (a) = 0 by construction; the generator copied each caption's image, so
    # the oracle reproduces the training truth and (b) is 0 up to the oracle's abstentions (ambiguous hues)
    paired = table["captions_vs_keyword"]["decomposition"]
    assert paired["paired"] and paired["data"]["estimate"] == 0.0
    assert abs(paired["generator"]["estimate"]) < 0.05
    # nearest neighbours without indicators: every caption unmarked, so the ideal learner is the selection
    assert table["prompt_vs_nn_no_indicator"]["decomposition"]["data"]["estimate"] == pytest.approx(0.0, abs=1e-12)

    agreement = result["instrument_on_generated"]
    assert agreement["available"] and set(agreement["by_prompt_kind"]) == {"neutral", "caption"}
    overall = agreement["all"]["overall"]
    assert overall["n"] == len(pl.read_parquet("generated_predictions.parquet"))
    assert 0.8 < overall["accuracy"] < 0.97 and overall["tpr"] > 0.8 and overall["fpr"] < 0.2  # a 10% flip rate
    assert len(agreement["all"]["per_occupation"]) == 3


def test_paradox_stage_without_ground_truth(workspace: Path) -> None:
    """A corpus without truth (LAION): no true_gender, no oracle. (a) comes from instrument labels and
    (b) + (c) is one term; the JSON says so."""
    pl.read_parquet("train_predictions.parquet").with_columns(true_gender=pl.lit(None, dtype=pl.String)).write_parquet(
        "train_predictions.parquet"
    )
    pl.read_parquet("generated_predictions.parquet").with_columns(
        oracle_label=pl.lit(None, dtype=pl.String)
    ).write_parquet("generated_predictions.parquet")
    assert _run_paradox() == 0
    result = json.loads(Path("metrics/paradox.json").read_text())
    terms = result["table"]["prompt_vs_keyword"]["decomposition"]
    assert terms["ground_truth"] is False and "true_gender" in terms["reason"]
    assert "generator_and_instrument" in terms and "generator" not in terms
    assert (
        abs(terms["data"]["estimate"] + terms["generator_and_instrument"]["estimate"] - terms["measured"]["estimate"])
        < 1e-12
    )
    assert result["table"]["prompt_vs_keyword"]["ideal"]["basis"] == "instrument"
    assert result["instrument_on_generated"]["available"] is False


def test_world_without_markedness_has_no_data_term(data_dir: Path) -> None:
    """With the world's markedness counter at 0 a caption's indicator does not depend on the gender's
    being the minority: the data term's interval contains 0 (and with the default counter it does not)."""
    config = WorldConfig(
        samples_per_occupation=400,
        glyphs=str(data_dir / "glyphs" / "mnist"),
        occupation_table=str(data_dir / "occupations" / "occupations_bls.tsv"),
    )
    occupations = ["carpenter", "engineer", "lawyer", "teacher", "librarian", "nurse"]
    ends = {}
    for counter in (0.0, 0.4):
        world = dataclasses.replace(config, markedness=MarkednessConfig(base=0.1, counter=counter))
        samples, _ = build_world(world, occupations)
        train = samples.filter(pl.col("true_gender").is_not_null()).select(
            occupation="true_occupation", true_gender="true_gender", indicator="true_indicator", label="true_gender"
        )
        generated = train.select("occupation", oracle_label="true_gender", label="true_gender")
        ends[counter] = decompose(train, generated, n_boot=1000, seed=0)["decomposition"]["data"]["ci"]
    assert ends[0.0][0] <= 0 <= ends[0.0][1]
    assert ends[0.4][0] > 0
