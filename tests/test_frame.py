"""amplification_frame: per-image labels in, per-occupation shares, estimands and decomposition out,
checked against values computed by hand."""

from __future__ import annotations

import polars as pl
import pytest

from biasloop.metrics.frame import amplification_frame


def _rows(side: str, occupation: str, labels: dict[str, int], **extra: list) -> pl.DataFrame:
    values = [label for label, n in labels.items() for _ in range(n)]
    return pl.DataFrame({"side": side, "occupation": occupation, "label": values, **extra})


# engineer: train 3 F / 7 M (0.30), gen 2 F / 8 M / 1 abstain (0.20);
# nurse:    train 8 F / 2 M (0.80), gen 6 F / 4 M (0.60).
TRAIN = pl.concat(
    [_rows("train", "engineer", {"female": 3, "male": 7}), _rows("train", "nurse", {"female": 8, "male": 2})]
)
GEN = pl.concat(
    [_rows("gen", "engineer", {"female": 2, "male": 8, "abstain": 1}), _rows("gen", "nurse", {"female": 6, "male": 4})]
)


def test_shares_and_estimands_by_hand() -> None:
    frame = amplification_frame(pl.concat([TRAIN, GEN]), n_boot=200, seed=3)
    rows = {r["occupation"]: r for r in frame.by_occupation.iter_rows(named=True)}
    assert rows["engineer"]["share_train"] == pytest.approx(0.3) and rows["engineer"]["share_gen"] == pytest.approx(0.2)
    assert rows["nurse"]["difference"] == pytest.approx(-0.2) and rows["engineer"]["n_abstain_gen"] == 1
    assert rows["nurse"]["share_gen_lo"] <= 0.6 <= rows["nurse"]["share_gen_hi"]
    # shift = mean sign(p_train - 1/2) (p_gen - p_train) = ((-1)(-0.1) + (+1)(-0.2)) / 2
    assert frame.overall["estimands"]["shift"]["estimate"] == pytest.approx(-0.05)
    assert frame.overall["estimands"]["a_abs_raw"] == pytest.approx(0.15)  # (0.1 + 0.2) / 2
    lo, hi = frame.overall["estimands"]["shift"]["ci"]
    assert lo < -0.05 < hi
    assert frame.overall["n_images_gen"] == 21 and frame.overall["n_confident_train"] == 20
    assert frame.decomposition["available"] is False and not frame.paired  # no caption indicators


def test_counts_reference_equals_train_rows_and_pandas_input() -> None:
    counts = pl.DataFrame({"occupation": ["engineer", "nurse"], "n_female": [3, 8], "n_male": [7, 2]})
    by_rows = amplification_frame(pl.concat([TRAIN, GEN]), n_boot=100)
    by_counts = amplification_frame(GEN.drop("side").to_pandas(), counts.to_pandas(), n_boot=100)
    assert by_counts.overall == by_rows.overall
    assert by_counts.decomposition["available"] is False and "counts" in by_counts.decomposition["reason"]


def test_decomposition_data_term_from_unmarked_captions() -> None:
    # One marked caption per occupation: engineer unmarked 2 F / 7 M (2/9), nurse unmarked 8 F / 1 M (8/9).
    indicator = {
        "engineer": ["female"] + ["none"] * 9,  # the first female image's caption says "female engineer"
        "nurse": ["none"] * 8 + ["male", "none"],  # the first male image's caption says "male nurse"
    }
    train = TRAIN.with_columns(pl.Series("indicator", indicator["engineer"] + indicator["nurse"]))
    frame = amplification_frame(pl.concat([train, GEN], how="diagonal"), n_boot=50)
    terms = frame.decomposition
    # data = mean s_o (F_unmarked - F_train): ((-1)(2/9 - 0.3) + (+1)(8/9 - 0.8)) / 2
    assert terms["data"]["estimate"] == pytest.approx(((0.3 - 2 / 9) + (8 / 9 - 0.8)) / 2)
    assert terms["data"]["estimate"] + terms["generator_and_instrument"]["estimate"] == pytest.approx(-0.05)


def test_pairs_are_matched_by_id() -> None:
    # engineer pairs (train, gen): (F,F) (M,M) (M,F) (M,M): train 1/4, gen 2/4;
    # nurse pairs: (F,F) (F,M) (F,F) (M,F): train 3/4, gen 3/4.
    pairs = {"engineer": [("female", "female"), ("male", "male"), ("male", "female"), ("male", "male")],
             "nurse": [("female", "female"), ("female", "male"), ("female", "female"), ("male", "female")]}  # fmt: skip
    rows = []
    for occupation, items in pairs.items():
        for i, (train, gen) in enumerate(items):
            rows += [("train", occupation, train, f"{occupation}{i}"), ("gen", occupation, gen, f"{occupation}{i}")]
    rows.append(("gen", "nurse", "male", "unpaired"))  # no training image: left out
    labels = pl.DataFrame(rows, schema=["side", "occupation", "label", "pair"], orient="row")
    frame = amplification_frame(labels, n_boot=50)
    assert frame.paired and frame.table["n_pairs"] == 8
    assert frame.overall["estimands"]["shift"]["estimate"] == pytest.approx(((-1) * (0.5 - 0.25) + 0.0) / 2)
    assert frame.decomposition["data"]["estimate"] == 0.0  # paired: the ideal learner is the training image


def test_bad_labels_are_named() -> None:
    with pytest.raises(ValueError, match="'woman'"):
        amplification_frame(GEN.with_columns(pl.lit("woman").alias("label")), TRAIN)
    with pytest.raises(ValueError, match="no reference"):
        amplification_frame(GEN)
    with pytest.raises(ValueError, match="one reference"):
        amplification_frame(
            pl.concat([TRAIN, GEN]), pl.DataFrame({"occupation": ["x"], "n_female": [1], "n_male": [1]})
        )


def test_same_numbers_as_the_paradox_stage() -> None:
    """The frame of a pairing equals that pairing in paradox_table (same functions, same seed streams)."""
    from biasloop.metrics.paradox import headline, paradox_table

    train = TRAIN.drop("side").with_columns(
        selection=pl.lit("keyword"), id=pl.Series([f"c{i}" for i in range(len(TRAIN))])
    )
    generated = GEN.drop("side").with_columns(prompt_kind=pl.lit("neutral"), source_id=pl.lit(None, pl.String))
    confusion = {"tpr": 0.9, "fpr": 0.05}
    table = paradox_table(train, generated, confusion, n_boot=100, seed=7)["prompt_vs_keyword"]
    frame = amplification_frame(pl.concat([TRAIN, GEN]), confusion=confusion, n_boot=100, seed=7)
    assert frame.overall == headline(table["measured"])
    assert frame.corrected == headline(table["corrected"])
