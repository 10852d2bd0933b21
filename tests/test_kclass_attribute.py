"""A K-class attribute's amplification (biasloop.metrics.kclass.attribute): hand-computed tables, the
decomposition summing to the measured shift, interval coverage in a simulated 3-class world, the K = 2
case against the binary paradox table, and the ground-truth parts absent (not zero) without truth."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import yaml

from biasloop.core.config import from_dict
from biasloop.data.hues import oracle_tones
from biasloop.data.indicators import FEMALE_TERMS, MALE_TERMS, TONE_TERMS, label_caption, tag_tone_indicators
from biasloop.data.world import WorldConfig, build_world
from biasloop.metrics.kclass.attribute import (
    attribute_amplification,
    class_counts,
    confusion_from_instrument,
    generation_attributes,
    with_unmarked,
)
from biasloop.metrics.kclass.attribute_terms import corrected_class_table
from biasloop.metrics.kclass.correction import Confusion, confusion_matrix
from biasloop.metrics.kclass.estimands import total_variation
from biasloop.metrics.kclass.table import class_amplification_table
from biasloop.metrics.paradox import paradox_table
from stages import paradox

CLASSES = ("light", "medium", "dark")


def _hand_frames() -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    """Two occupations of keyword-selected training images and neutral-prompt images (see the test)."""
    train = pl.DataFrame(
        {
            "selection": ["keyword"] * 10,
            "occupation": ["nurse"] * 6 + ["chef"] * 4,
            "id": ["n0", "n1", "n2", "n3", "n4", "n5", "c0", "c1", "c2", "c3"],
            "tone_label": ["light", "light", "light", "medium", "dark", "abstain", "dark", "dark", "dark", "light"],
            "true_tone": ["light", "light", "light", "medium", "dark", "light", "dark", "dark", "medium", "light"],
            "label": ["female"] * 4 + ["male", "abstain"] + ["male"] * 4,
        }
    )
    captions = ["a nurse"] * 4 + ["a dark-skinned nurse", "a nurse", "a chef", "a chef with Dark Skin", "a chef"]
    matches = pl.DataFrame(
        {"occupation": train["occupation"], "id": train["id"], "caption": [*captions, "a fair skinned chef"]}
    )
    gen = pl.DataFrame(
        {
            "prompt_kind": ["neutral"] * 9,
            "occupation": ["nurse"] * 5 + ["chef"] * 4,
            "tone_label": ["light", "light", "light", "medium", "abstain", "dark", "dark", "dark", "dark"],
            "oracle_tone": ["light", "light", "medium", "medium", "light", "dark", "dark", "medium", "medium"],
            "label": ["female"] * 5 + ["male"] * 4,
        }
    )
    return train, gen, matches


def test_hand_computed_tables_decomposition_and_cells() -> None:
    train, gen, matches = _hand_frames()
    result = attribute_amplification(
        "tone", CLASSES, train, gen, None, matches=matches, words=TONE_TERMS, n_boot=200, seed=1, min_cell_size=2
    )
    pairings = result["pairings"]
    assert pairings["prompt_vs_nn"] == {"missing": True} and pairings["captions_vs_keyword"] == {"missing": True}
    entry = pairings["prompt_vs_keyword"]
    rows = {r["occupation"]: r for r in entry["measured"]["per_occupation"]}
    # nurse: training light 3, medium 1, dark 1 (1 abstained); generated light 3, medium 1 (1 abstained)
    assert rows["nurse"]["counts_train"] == {"light": 3, "medium": 1, "dark": 1}
    assert rows["nurse"]["counts_gen"] == {"light": 3, "medium": 1, "dark": 0}
    assert (rows["nurse"]["n_abstain_train"], rows["nurse"]["n_abstain_gen"]) == (1, 1)
    # TV: nurse 1/2 (0.15 + 0.05 + 0.2) = 0.2; chef (0.25, 0, 0.75) -> (0, 0, 1): 0.25
    assert entry["measured"]["estimands"]["tv_raw"] == pytest.approx((0.2 + 0.25) / 2, abs=1e-12)
    # truth: true training classes against the oracle: nurse (4/6, 1/6, 1/6) -> (0.6, 0.4, 0) = 7/30;
    # chef (0.25, 0.25, 0.5) -> (0, 0.5, 0.5) = 0.25
    assert entry["truth"]["estimands"]["tv_raw"] == pytest.approx((7 / 30 + 0.25) / 2, abs=1e-12)
    assert entry["corrected"] is None
    terms = entry["decomposition"]
    assert terms["ground_truth"] is True and terms["available"] is True
    # majority light (nurse), dark (chef). Ideal: unmarked captions' true classes: nurse n0-n3, n5 ->
    # (0.8, 0.2, 0); chef c0, c2 (c1 "Dark Skin" and c3 "fair skinned" are marked) -> (0, 0.5, 0.5).
    # nurse: measured 0.75 - 0.6 = 0.15, data 0.8 - 4/6, generator 0.6 - 0.8, instrument 0.15 - (0.6 - 4/6)
    # chef: measured 1 - 0.75 = 0.25, data 0.5 - 0.5, generator 0.5 - 0.5, instrument (1 - 0.5) - (0.75 - 0.5)
    expected = {
        "measured": (0.15 + 0.25) / 2,
        "data": (0.8 - 4 / 6 + 0.0) / 2,
        "generator": (0.6 - 0.8 + 0.0) / 2,
        "instrument": (0.15 - (0.6 - 4 / 6) + (1 - 0.5) - (0.75 - 0.5)) / 2,
    }
    for name, value in expected.items():
        assert terms[name]["estimate"] == pytest.approx(value, abs=1e-12), name
    assert terms["sum_of_terms"] == pytest.approx(terms["measured"]["estimate"], abs=1e-12)
    for name in expected:
        lo, hi = terms[name]["ci"]
        assert lo <= hi
    # cells with >= 2 training images: female x light (n0-n2) and male x dark (n4, c0-c2)
    cells = entry["cells"]
    assert cells["cells"] == ["female x light", "male x dark"]
    assert cells["train"]["counts"] == {"female x light": 3, "male x dark": 4}
    assert cells["train"]["shares"]["male x dark"] == pytest.approx(4 / 7)
    assert cells["train"]["excluded"] == [{"cell": "female x medium", "size": 1}, {"cell": "male x light", "size": 1}]
    assert cells["gen"]["counts"] == {"female x light": 3, "male x dark": 4}
    assert cells["gen"]["excluded"] == [{"cell": "female x medium", "size": 1}]


def test_terms_sum_to_the_measured_shift_on_random_frames() -> None:
    """On random frames (abstentions on both labellers, a given unmarked column), the terms telescope exactly,
    in total and occupation by occupation."""
    rng = np.random.default_rng(3)
    n = 300
    occupations = rng.choice(["a", "b", "c", "d"], n)
    train = pl.DataFrame(
        {
            "selection": "keyword",
            "occupation": occupations,
            "id": [f"i{i}" for i in range(n)],
            "tone_label": rng.choice([*CLASSES, "abstain"], n),
            "true_tone": rng.choice(CLASSES, n),
            "tone_unmarked": rng.random(n) < 0.7,
        }
    )
    gen = pl.DataFrame(
        {
            "prompt_kind": "neutral",
            "occupation": rng.choice(["a", "b", "c", "d"], n),
            "tone_label": rng.choice(CLASSES, n),
            "oracle_tone": rng.choice([*CLASSES, "abstain"], n),
        }
    )
    result = attribute_amplification("tone", CLASSES, train, gen, None, matches=None, words=TONE_TERMS, n_boot=50)
    terms = result["pairings"]["prompt_vs_keyword"]["decomposition"]
    assert terms["sum_of_terms"] == pytest.approx(terms["measured"]["estimate"], abs=1e-12)
    rows = terms["per_occupation"]
    assert sum(r["data"] + r["generator"] + r["instrument"] for r in rows) / len(rows) == pytest.approx(
        terms["measured"]["estimate"], abs=1e-12
    )


def _simulate(rng, p_train, p_gen, rates, m):
    """Counts ``(occupations, K)`` of labels for true classes drawn from ``p`` and read through ``rates``."""
    out = []
    for p in (p_train, p_gen):
        true = np.stack([rng.multinomial(m, row) for row in p])
        out.append(np.stack([sum(rng.multinomial(n, rates[t]) for t, n in enumerate(row)) for row in true]))
    return out


def test_intervals_cover_the_noise_free_gap_in_a_three_class_world() -> None:
    """Coverage over repeated draws of a 3-class world (oracle = truth, a known confusion): the measured
    interval covers the gap of the label distributions ``C^T p``, the corrected interval (with a confusion
    estimated from 300 held-out images per class each time) covers the true classes' gap, and the truth
    table's interval (noise-free labels) covers it too."""
    rng = np.random.default_rng(26)
    p_train = np.array([[0.6, 0.3, 0.1], [0.2, 0.3, 0.5], [0.34, 0.33, 0.33], [0.1, 0.2, 0.7]])
    p_gen = np.array([[0.7, 0.25, 0.05], [0.2, 0.25, 0.55], [0.34, 0.33, 0.33], [0.05, 0.15, 0.8]])
    rates = np.array([[0.85, 0.12, 0.03], [0.1, 0.8, 0.1], [0.02, 0.13, 0.85]])
    true_gap = np.mean(total_variation(p_gen, p_train))
    label_gap = np.mean(total_variation(p_gen @ rates, p_train @ rates))
    names = ["a", "b", "c", "d"]
    covered = {"measured": 0, "corrected": 0, "truth": 0}
    repeats = 120
    for _ in range(repeats):
        train, gen = _simulate(rng, p_train, p_gen, rates, 400)
        held_out = np.stack([rng.multinomial(300, row) for row in rates])
        confusion = Confusion(CLASSES, held_out, np.zeros(3, np.int64))
        measured = class_amplification_table(names, CLASSES, train, gen, n_boot=0)["estimands"]["gap"]["ci"]
        corrected = corrected_class_table(names, train, gen, confusion, 200, int(rng.integers(1 << 30)))
        lo, hi = corrected["estimands"]["gap"]["ci"]
        truth = [np.stack([rng.multinomial(400, row) for row in p]) for p in (p_train, p_gen)]
        truth_ci = class_amplification_table(names, CLASSES, *truth, n_boot=0)["estimands"]["gap"]["ci"]
        covered["measured"] += measured[0] <= label_gap <= measured[1]
        covered["corrected"] += lo <= true_gap <= hi
        covered["truth"] += truth_ci[0] <= true_gap <= truth_ci[1]
    assert {k: v / repeats for k, v in covered.items()} == {k: pytest.approx(1.0, abs=0.1) for k in covered}


def test_correction_with_an_identity_confusion_changes_nothing() -> None:
    confusion = Confusion(CLASSES, np.diag([500, 500, 500]), np.zeros(3, np.int64))
    train, gen = np.array([[6, 3, 1], [1, 1, 8]]), np.array([[8, 2, 0], [0, 2, 8]])
    table = corrected_class_table(["a", "b"], train, gen, confusion, 400, 0)
    assert table["per_occupation"][0]["p_train"] == pytest.approx({"light": 0.6, "medium": 0.3, "dark": 0.1})
    assert table["estimands"]["tv_raw"] == pytest.approx((0.2 + 0.1) / 2)
    # shift to the majority: a (light) 0.8 - 0.6, b (dark) 0.8 - 0.8
    assert table["estimands"]["shift"]["estimate"] == pytest.approx(0.1)
    assert table["undefined_share"] == 0.0


def _binary_world(rng: np.random.Generator) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    rows, gen_rows = [], []
    for occupation, share in (("nurse", 0.8), ("engineer", 0.25), ("chef", 0.45)):
        for i in range(80):
            truth = "female" if rng.random() < share else "male"
            label = truth if rng.random() < 0.9 else ("abstain" if rng.random() < 0.5 else "female")
            marked = rng.random() < (0.3 if truth == "male" and occupation == "nurse" else 0.1)
            caption = f"a {'male' if truth == 'male' else 'female'} {occupation}" if marked else f"the {occupation}"
            for selection in ("keyword", "nn") if i % 2 else ("keyword",):
                rows.append((selection, occupation, f"{occupation}{i}", label, truth, caption))
        for _ in range(60):
            oracle = "female" if rng.random() < min(share * 1.2, 1) else "male"
            gen_rows.append(("neutral", occupation, oracle if rng.random() < 0.9 else "male", oracle))
    train = pl.DataFrame(
        rows, schema=["selection", "occupation", "id", "label", "true_gender", "caption"], orient="row"
    )
    matches = train.select("occupation", "id", "caption").unique(maintain_order=True)
    matches = matches.with_columns(indicator=pl.col("caption").map_elements(lambda c: label_caption(c).label))
    gen = pl.DataFrame(gen_rows, schema=["prompt_kind", "occupation", "label", "oracle_label"], orient="row")
    return train.drop("caption"), gen.with_columns(p_female=pl.lit(0.5), source_id=pl.lit(None, pl.String)), matches


def test_two_classes_equal_the_binary_paradox_numbers() -> None:
    train, gen, matches = _binary_world(np.random.default_rng(2))
    rates = {"tpr": 0.9, "fpr": 0.15}
    binary = paradox_table(train.with_columns(p_female=pl.lit(0.5)), gen, rates, n_boot=50, seed=0, matches=matches)
    kclass = attribute_amplification(
        "g",
        ("female", "male"),
        train.with_columns(g_label=pl.col("label"), true_g=pl.col("true_gender")),
        gen.with_columns(g_label=pl.col("label"), oracle_g=pl.col("oracle_label")),
        Confusion(("female", "male"), np.array([[90, 10], [15, 85]]), np.zeros(2, np.int64)),
        matches=matches,
        words={"female": FEMALE_TERMS, "male": MALE_TERMS},
        n_boot=50,
    )
    for pairing in ("prompt_vs_keyword", "prompt_vs_nn"):
        ours, theirs = kclass["pairings"][pairing], binary[pairing]
        for estimand in ("gap", "shift"):
            mine, reference = ours["measured"]["estimands"][estimand], theirs["measured"]["estimands"][estimand]
            assert mine["estimate"] == pytest.approx(reference["estimate"], abs=1e-12)
            assert mine["ci"] == pytest.approx(reference["ci"], abs=1e-12)
        assert ours["measured"]["estimands"]["tv_raw"] == pytest.approx(
            theirs["measured"]["amplification_abs"], abs=1e-12
        )
        # the correction's point values: the binary corrected shares, and their mean absolute difference
        corrected = {r["occupation"]: r for r in ours["corrected"]["per_occupation"]}
        for row in theirs["corrected"]["per_occupation"]:
            assert corrected[row["occupation"]]["p_train"]["female"] == pytest.approx(row["share_train"], abs=1e-12)
            assert corrected[row["occupation"]]["p_gen"]["female"] == pytest.approx(row["share_gen"], abs=1e-12)
        assert ours["corrected"]["estimands"]["tv_raw"] == pytest.approx(
            theirs["corrected"]["amplification_abs"], abs=1e-12
        )
        for term in ("measured", "data", "generator", "instrument"):
            assert ours["decomposition"][term]["estimate"] == pytest.approx(
                theirs["decomposition"][term]["estimate"], abs=1e-12
            ), (pairing, term)


def test_without_ground_truth_the_truth_parts_are_absent() -> None:
    train, gen, matches = _hand_frames()
    result = attribute_amplification(
        "tone",
        CLASSES,
        train.drop("true_tone"),
        gen.drop("oracle_tone"),
        None,
        matches=matches,
        words=TONE_TERMS,
        n_boot=20,
    )
    entry = result["pairings"]["prompt_vs_keyword"]
    assert entry["truth"] is None
    terms = entry["decomposition"]
    assert terms["ground_truth"] is False
    assert "generator" not in terms and "instrument" not in terms
    assert terms["data"]["estimate"] + terms["generator_and_instrument"]["estimate"] == pytest.approx(
        terms["measured"]["estimate"], abs=1e-12
    )
    # no captions: no ideal learner for an unpaired pairing
    bare = attribute_amplification("tone", CLASSES, train, gen, None, matches=None, words=TONE_TERMS, n_boot=0)
    assert bare["pairings"]["prompt_vs_keyword"]["decomposition"]["available"] is False


def test_unmarked_captions_agree_with_the_tone_indicator_tagger() -> None:
    captions = ["a nurse", "a dark-skinned nurse", "a Fair Skin chef", "olive skinned doctor", "a darkroom chef", None]
    frame = pl.DataFrame({"occupation": ["x"] * 6, "id": [str(i) for i in range(6)], "caption": captions})
    ours = with_unmarked(frame.select("occupation", "id"), frame, "tone", TONE_TERMS)["tone_unmarked"].to_list()
    tagged = tag_tone_indicators(frame)["tone_indicator"].to_list()
    assert ours == [tag == "none" for tag in tagged]
    assert ours == [True, False, False, False, True, True]


def test_confusion_from_instrument_and_counts() -> None:
    confusion = confusion_from_instrument(
        {"classes": list(CLASSES), "confusion": [[8, 1, 1], [0, 9, 1], [0, 0, 10]], "abstained": [2, 0, 1]}
    )
    assert confusion.rates()[0].tolist() == pytest.approx([0.8, 0.1, 0.1])
    same = confusion_from_instrument({"classes": list(CLASSES), "confusion": confusion.label_counts()})
    assert same.counts.tolist() == confusion.counts.tolist() and same.abstained.tolist() == [2, 0, 1]
    frame = pl.DataFrame({"occupation": ["a", "a", "b", "b"], "c": ["dark", "abstain", None, "light"]})
    counts, other = class_counts(frame, "c", CLASSES, ["a", "b"])
    assert counts.tolist() == [[0, 0, 1], [1, 0, 0]] and other.tolist() == [1, 1]


def test_generation_attributes_mirror_both_comparisons() -> None:
    train, gen, matches = _hand_frames()
    instrument = {"attributes": {"tone": {"classes": list(CLASSES), "confusion": [[9, 1, 0], [1, 8, 1], [0, 1, 9]]}}}

    class Spec:
        indicators = TONE_TERMS

    dataset = train.select(pl.col("id").alias("source_id"), "tone_label").with_columns(synthetic=False)
    out = generation_attributes(
        instrument, {"tone": Spec()}, train, gen, matches, dataset, n_boot=20, seed=0, min_cell_size=2
    )["tone"]
    assert out["amplification"]["estimands"]["tv_raw"] == pytest.approx((0.2 + 0.25) / 2)
    assert out["amplification_corrected"]["available"] is True
    versus = out["amplification_vs_training_dataset"]
    # generation 0's dataset is the corpus: the same numbers, and no drift
    assert versus["measured"]["estimands"]["tv_raw"] == pytest.approx((0.2 + 0.25) / 2)
    assert versus["dataset_vs_real_corpus"]["estimands"]["tv_raw"] == 0.0
    assert generation_attributes({}, {}, train, gen, matches, None, n_boot=0, seed=0, min_cell_size=2) == {}


def _run_paradox_stage(train: pl.DataFrame, gen: pl.DataFrame, out: str, tables: str) -> dict:
    train.write_parquet("train.parquet")
    gen.write_parquet("gen.parquet")
    argv = ["--params", "params.yaml", "--train-predictions", "train.parquet", "--generated", "gen.parquet"]
    argv += ["--instrument-metrics", "instrument.json", "--matches", "matches.parquet", "--out", out]
    argv += ["--table", f"{tables}/paradox.csv", "--plot", f"{tables}/shares.png", "--attribute-tables", tables]
    assert paradox.main([*argv, "--decomposition-plot", f"{tables}/decomposition.png"]) == 0
    return json.loads(Path(out).read_text())


def test_paradox_stage_adds_the_attribute_and_keeps_gender_identical(
    tmp_path: Path, tiny_params: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """metrics/paradox.json's gender keys are the same with and without the tone columns; tone's section
    and plots/paradox_tone.csv come only with them (a header without)."""
    monkeypatch.chdir(tmp_path)
    params = yaml.safe_load(tiny_params.read_text())
    params["evaluate"]["n_boot"] = 50
    Path("params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    rng = np.random.default_rng(7)
    train, gen, matches = _binary_world(rng)
    matches.write_parquet("matches.parquet")
    tone = {"classes": list(CLASSES), "confusion": [[90, 8, 2], [9, 80, 11], [1, 9, 90]], "abstained": [3, 5, 2]}
    Path("instrument.json").write_text(json.dumps({"tpr": 0.9, "fpr": 0.1, "attributes": {"tone": tone}}))
    with_tone = _run_paradox_stage(
        train.with_columns(
            tone_label=pl.Series(rng.choice([*CLASSES, "abstain"], len(train))), true_tone=pl.lit("dark")
        ),
        gen.with_columns(tone_label=pl.Series(rng.choice(CLASSES, len(gen))), oracle_tone=pl.lit("medium")),
        "with.json",
        "with",
    )
    without = _run_paradox_stage(train, gen, "without.json", "without")
    assert "attributes" not in without and list(with_tone["attributes"]) == ["tone"]
    assert json.dumps({k: v for k, v in with_tone.items() if k != "attributes"}) == json.dumps(without)
    assert Path("with/paradox.csv").read_bytes() == Path("without/paradox.csv").read_bytes()
    shares = pl.read_csv("with/paradox_tone.csv")
    # 3 occupations x 3 classes for each of measured, corrected, truth, on 2 pairings (keyword, nn)
    assert len(shares) == 3 * 3 * 3 * 2 and set(shares["class"]) == set(CLASSES)
    assert pl.read_csv("without/paradox_tone.csv").is_empty()
    entry = with_tone["attributes"]["tone"]["pairings"]["prompt_vs_keyword"]
    assert entry["truth"]["per_occupation"][0]["p_gen"] == {"light": 0.0, "medium": 1.0, "dark": 0.0}


def _tone_instrument(truth: list[str], rng: np.random.Generator, error: float = 0.1) -> list[str]:
    """A stand-in tone instrument: the true class, another class at random ``error`` of the time."""
    return [rng.choice([c for c in CLASSES if c != t]) if rng.random() < error else t for t in truth]


def test_glyph_world_tone_against_its_ground_truth(tiny_params: Path) -> None:
    """A tiny glyph world with tone: held-out images stand in for generated ones (a perfect generator of
    the world), the oracle reads their true tone, the measured gap's interval holds the ground-truth gap,
    the decomposition sums to the measured shift, and the world's markedness (minority tones named in
    captions) makes the ideal learner's data term positive."""
    params = yaml.safe_load(tiny_params.read_text())
    world = params["world"]
    world["samples_per_occupation"] = 200
    world["tone"]["table"] = str(Path(__file__).resolve().parents[1] / world["tone"]["table"])
    samples, images = build_world(from_dict(WorldConfig, world, "world"), params["occupations"])
    people = samples.with_row_index("row").filter(pl.col("true_occupation").is_not_null())
    rng = np.random.default_rng(11)
    train = people.filter(pl.col("split") == "train").select(
        pl.lit("keyword").alias("selection"),
        pl.col("true_occupation").alias("occupation"),
        "id",
        pl.col("true_gender").alias("label"),
        "true_gender",
        "true_tone",
    )
    train = train.with_columns(tone_label=pl.Series(_tone_instrument(train["true_tone"].to_list(), rng)))
    held_out = people.filter(pl.col("split") == "test")
    values = {c: world["tone"][f"value_{c}"] for c in CLASSES}
    oracle = oracle_tones(images[held_out["row"].to_numpy()], values)
    assert np.mean(oracle == held_out["true_tone"].to_numpy()) >= 0.99
    gen = held_out.select(
        pl.lit("neutral").alias("prompt_kind"),
        pl.col("true_occupation").alias("occupation"),
        pl.col("true_gender").alias("label"),
        tone_label=pl.Series(_tone_instrument(held_out["true_tone"].to_list(), rng)),
        oracle_tone=pl.Series(oracle.tolist()),
    )
    matches = people.select(pl.col("true_occupation").alias("occupation"), "id", "caption")
    truth = rng.choice(CLASSES, 3000).tolist()
    confusion = confusion_matrix(truth, _tone_instrument(truth, rng), CLASSES)
    result = attribute_amplification(
        "tone", CLASSES, train, gen, confusion, matches=matches, words=TONE_TERMS, n_boot=300, seed=0
    )
    entry = result["pairings"]["prompt_vs_keyword"]
    lo, hi = entry["measured"]["estimands"]["gap"]["ci"]
    assert lo <= entry["truth"]["estimands"]["gap"]["estimate"] <= hi
    terms = entry["decomposition"]
    assert terms["ground_truth"] is True
    assert terms["data"]["estimate"] + terms["generator"]["estimate"] + terms["instrument"]["estimate"] == (
        pytest.approx(terms["measured"]["estimate"], abs=1e-12)
    )
    assert terms["data"]["ci"][0] > 0
    assert entry["corrected"]["available"] is True
