"""Share and amplification metrics against hand-computed values."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from biasloop.metrics.amplification import (
    abstain_rate,
    amplification_table,
    bias_amp,
    corrected_share,
    count_table,
    gender_mad,
    pearson,
    share_female,
    shift_to_majority,
)
from biasloop.models.instrument import confusion_rates, label_from_p

# Two occupations. Training: nurse 8 women / 2 men (F = 0.8), engineer 1 / 9 (F = 0.1).
# Generated:             nurse 9 / 1 (F = 0.9),         engineer 0 / 10 (F = 0.0).
TRAIN = pl.DataFrame({"occupation": ["nurse", "engineer"], "n_female": [8, 1], "n_male": [2, 9]})
GEN = pl.DataFrame({"occupation": ["nurse", "engineer"], "n_female": [9, 0], "n_male": [1, 10]})


def test_hand_computed_aggregates() -> None:
    result = amplification_table(TRAIN, GEN, n_boot=200, seed=0)
    # A_abs = (|0.9-0.8| + |0.0-0.1|) / 2 = 0.1
    assert result["amplification_abs"] == pytest.approx(0.1)
    # A_dir = ((0.4-0.3) + (0.5-0.4)) / 2 = 0.1
    assert result["amplification_dir"] == pytest.approx(0.1)
    # shift = (+1 * 0.1 + -1 * -0.1) / 2 = 0.1 ; BiasAmp (its two-group alias): nurse women +0.1,
    # engineer men +0.1 -> 0.1, so the table carries it once, under shift_to_majority
    assert result["shift_to_majority"] == pytest.approx(0.1)
    assert "bias_amp" not in result and "bias_amp" in result["aliases"]
    # the other alias: A_dir = MAD gen - MAD train
    assert result["amplification_dir"] == pytest.approx(result["mad_gen"] - result["mad_train"])
    # MAD train = (0.3 + 0.4) / 2 = 0.35 ; gen = (0.4 + 0.5) / 2 = 0.45 ; two points correlate perfectly
    assert result["mad_train"] == pytest.approx(0.35)
    assert result["mad_gen"] == pytest.approx(0.45)
    assert result["pearson"] == pytest.approx(1.0)
    rows = {r["occupation"]: r for r in result["per_occupation"]}
    assert rows["nurse"]["difference"] == pytest.approx(0.1)
    assert rows["engineer"]["share_gen"] == 0.0


def test_abstentions_change_the_share() -> None:
    predictions = pl.DataFrame(
        {
            "occupation": ["chef"] * 10,
            "label": ["female"] * 6 + ["male"] * 2 + ["abstain"] * 2,
        }
    )
    counts = count_table(predictions)
    assert counts.row(0) == ("chef", 6, 2, 2)
    # 6 / (6 + 2) = 0.75, not 6 / 10 = 0.6: abstained images leave the denominator
    assert share_female(6, 2) == pytest.approx(0.75)
    result = amplification_table(counts, counts, n_boot=50)
    assert result["per_occupation"][0]["share_train"] == pytest.approx(0.75)
    assert result["per_occupation"][0]["abstain_rate_train"] == pytest.approx(0.2)


def test_labels_from_probabilities() -> None:
    assert label_from_p([0.95, 0.05, 0.5, 0.9, 0.1], 0.1).tolist() == [
        "female",
        "male",
        "abstain",
        "abstain",
        "abstain",
    ]
    with pytest.raises(ValueError):
        label_from_p([0.5], 0.7)


def test_correction_formula() -> None:
    # tpr 0.9, fpr 0.1: F_true = (F_obs - 0.1) / 0.8
    assert corrected_share(0.5, 0.9, 0.1) == pytest.approx(0.5)
    assert corrected_share(0.82, 0.9, 0.1) == pytest.approx(0.9)
    assert corrected_share(0.05, 0.9, 0.1) == 0.0  # clipped
    assert corrected_share(0.97, 0.9, 0.1) == 1.0
    with pytest.raises(ValueError, match="tpr"):
        corrected_share(0.5, 0.4, 0.4)


def test_corrected_table_and_ground_truth_train() -> None:
    result = amplification_table(TRAIN, GEN, n_boot=50, confusion={"tpr": 0.9, "fpr": 0.1})
    # corrected shares: train nurse (0.8-0.1)/0.8 = 0.875, engineer 0.0; gen nurse 1.0, engineer 0.0
    # A_abs = (0.125 + 0) / 2 = 0.0625
    assert result["corrected"]["amplification_abs"] == pytest.approx(0.0625)
    truth = amplification_table(TRAIN, GEN, n_boot=50, confusion={"tpr": 0.9, "fpr": 0.1}, correct_train=False)
    # train kept at 0.8 / 0.1, gen corrected to 1.0 / 0.0: A_abs = (0.2 + 0.1) / 2 = 0.15
    assert truth["corrected"]["amplification_abs"] == pytest.approx(0.15)


def test_confusion_rates() -> None:
    truth = ["female"] * 10 + ["male"] * 10 + [None]
    labels = ["female"] * 8 + ["male"] + ["abstain"] + ["male"] * 7 + ["female"] * 2 + ["abstain"] + ["female"]
    rates = confusion_rates(truth, labels)
    # confident women: 8 female, 1 male -> tpr 8/9 ; confident men: 2 female, 7 male -> fpr 2/9
    assert rates["tpr"] == pytest.approx(8 / 9)
    assert rates["fpr"] == pytest.approx(2 / 9)
    assert rates["accuracy"] == pytest.approx(15 / 18)
    assert rates["abstain_rate"] == pytest.approx(2 / 20)
    assert rates["n"] == 20


def test_bias_amp_multi_group() -> None:
    # occupation 1: train (0.5, 0.3, 0.2) -> only group 0 is above 1/3; gen 0.6: +0.1
    # occupation 2: train (0.2, 0.2, 0.6) -> group 2; gen 0.8: +0.2 ; mean = 0.15
    train = np.array([[0.5, 0.3, 0.2], [0.2, 0.2, 0.6]])
    gen = np.array([[0.6, 0.2, 0.2], [0.1, 0.1, 0.8]])
    assert bias_amp(train, gen) == pytest.approx(0.15)


def test_bootstrap_interval_is_seeded_and_covers_the_estimate() -> None:
    train = pl.DataFrame({"occupation": list("abcd"), "n_female": [30, 60, 10, 90], "n_male": [70, 40, 90, 10]})
    gen = pl.DataFrame({"occupation": list("abcd"), "n_female": [20, 70, 5, 95], "n_male": [80, 30, 95, 5]})
    first = amplification_table(train, gen, n_boot=300, seed=4)
    assert first == amplification_table(train, gen, n_boot=300, seed=4)
    assert first["excess_abs_ci"] != amplification_table(train, gen, n_boot=300, seed=5)["excess_abs_ci"]
    for name in ("shift_to_majority", "mad_train", "mad_gen"):
        lo, hi = first[f"{name}_ci"]
        assert lo <= first[name] <= hi
    for suffix in ("abs", "dir"):
        lo, hi = first[f"excess_{suffix}_ci"]
        assert lo <= first[f"excess_{suffix}"] <= hi
        assert first[f"excess_{suffix}"] == pytest.approx(
            first[f"amplification_{suffix}"] - first[f"noise_floor_{suffix}"]
        )
        assert 0 < first[f"p_value_{suffix}"] <= 1


def test_unmatched_and_dropped() -> None:
    train = pl.DataFrame({"occupation": ["a", "b", "c"], "n_female": [1, 0, 2], "n_male": [1, 0, 2]})
    gen = pl.DataFrame({"occupation": ["a", "b", "d"], "n_female": [2, 1, 1], "n_male": [0, 1, 1]})
    result = amplification_table(train, gen, n_boot=20)
    assert result["unmatched"] == {"train_only": ["c"], "gen_only": ["d"]}
    assert result["dropped"] == ["b"]  # no confident training image
    assert result["n_occupations"] == 1
    assert result["amplification_abs"] == pytest.approx(0.5)


def test_regression_towards_parity_is_negative() -> None:
    # train nurse F = 0.8, engineer F = 0.1 ; gen nurse 0.6, engineer 0.3 (both move towards 1/2)
    # A_abs = (0.2 + 0.2) / 2 = 0.2 ; A_dir = ((0.1 - 0.3) + (0.2 - 0.4)) / 2 = -0.2
    # shift = (+1 * -0.2 + -1 * +0.2) / 2 = -0.2 ; MAD gen = (0.1 + 0.2) / 2 = 0.15
    gen = pl.DataFrame({"occupation": ["nurse", "engineer"], "n_female": [6, 3], "n_male": [4, 7]})
    result = amplification_table(TRAIN, gen, n_boot=0)
    assert result["amplification_abs"] == pytest.approx(0.2)
    assert result["amplification_dir"] == pytest.approx(-0.2)
    assert result["shift_to_majority"] == pytest.approx(-0.2)
    assert result["mad_gen"] == pytest.approx(0.15)
    # n_boot = 0: no interval and no noise floor
    assert result["excess_abs_ci"] == [None, None] and result["noise_floor_abs"] is None
    assert result["shift_to_majority_ci"] == [None, None]


def test_abstentions_in_the_amplification_table() -> None:
    # train chef 6 female, 2 male, 2 abstain: F = 6/8 = 0.75 (6/10 = 0.6 if abstentions counted as men)
    # gen chef 9 female, 1 male, 10 abstain: F = 0.9, abstain rate 10/20 = 0.5 ; A_abs = 0.15
    train = pl.DataFrame({"occupation": ["chef"], "n_female": [6], "n_male": [2], "n_abstain": [2]})
    gen = pl.DataFrame({"occupation": ["chef"], "n_female": [9], "n_male": [1], "n_abstain": [10]})
    result = amplification_table(train, gen, n_boot=0)
    row = result["per_occupation"][0]
    assert (row["share_train"], row["share_gen"], row["abstain_rate_gen"]) == pytest.approx((0.75, 0.9, 0.5))
    assert result["amplification_abs"] == pytest.approx(0.15)
    assert result["pearson"] is None  # one occupation: undefined


def test_two_group_bias_amp_equals_shift_including_parity() -> None:
    # F_train (0.5, 0.7), F_gen (0.9, 0.8): parity counts 0 in both; second occupation +0.1 -> mean 0.05
    train, gen = np.array([0.5, 0.7]), np.array([0.9, 0.8])
    assert shift_to_majority(train, gen) == pytest.approx(0.05)
    assert bias_amp(np.stack([train, 1 - train], -1), np.stack([gen, 1 - gen], -1)) == pytest.approx(0.05)


def test_small_helpers() -> None:
    assert np.isnan(share_female(0, 0))
    assert abstain_rate(6, 2, 2) == pytest.approx(0.2)
    assert np.isnan(pearson([0.1, 0.1, 0.1], [0.2, 0.3, 0.4]))  # constant side: the mean rounds off
    # x = (0, 1, 2), y = (0, 1, 1): cov = 1, var x = 2, var y = 2/3 -> r = 1 / sqrt(4/3) = 0.866
    assert pearson([0, 1, 2], [0, 1, 1]) == pytest.approx(np.sqrt(3) / 2)
    assert gender_mad([0.8, 0.1]) == pytest.approx(0.35)


def test_per_occupation_intervals_cover_the_shares() -> None:
    result = amplification_table(TRAIN, GEN, n_boot=200, seed=1)
    for row in result["per_occupation"]:
        for side in ("train", "gen"):
            lo, hi = row[f"share_{side}_ci"]
            assert 0.0 <= lo <= row[f"share_{side}"] <= hi <= 1.0


@pytest.mark.parametrize(
    ("table", "message"),
    [
        (pl.DataFrame({"occupation": ["a", "a"], "n_female": [1, 1], "n_male": [1, 1]}), "repeats occupation"),
        (pl.DataFrame({"occupation": ["a"], "n_female": [-1], "n_male": [1]}), "negative count"),
        (pl.DataFrame({"occupation": ["a"], "n_female": [1]}), "no 'n_male' column"),
    ],
)
def test_bad_count_tables(table: pl.DataFrame, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        amplification_table(table, TRAIN)
