"""Retrieval and group-fairness metrics against hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest

from biasloop.metrics.downstream import group_fairness, max_skew_at_k, ndkl, recall_at_k


def test_recall_at_k_and_gap() -> None:
    # True image of text i is image i. Ranks of the true image: text0 -> 0, text1 -> 2, text2 -> 1, text3 -> 0
    similarity = np.array(
        [
            [0.9, 0.1, 0.2, 0.0],
            [0.8, 0.5, 0.7, 0.0],
            [0.9, 0.1, 0.5, 0.0],
            [0.1, 0.2, 0.3, 0.4],
        ]
    )
    result = recall_at_k(similarity, ks=(1, 2), groups=["female", "male", "female", "male"])
    assert result["recall@1"] == pytest.approx(2 / 4)
    assert result["recall@2"] == pytest.approx(3 / 4)
    # female: texts 0 (rank 0), 2 (rank 1); male: texts 1 (rank 2), 3 (rank 0)
    assert result["by_group"]["female"] == {"recall@1": 0.5, "recall@2": 1.0}
    assert result["by_group"]["male"] == {"recall@1": 0.5, "recall@2": 0.5}
    assert result["recall@2_gap"] == pytest.approx(0.5)
    assert result["recall@2_gap_signed"] == pytest.approx(-0.5)


def test_max_skew() -> None:
    # top-4: 3 women, 1 man; desired 1/2 each: skew_f = ln(0.75/0.5), skew_m = ln(0.25/0.5)
    assert max_skew_at_k(["female", "female", "male", "female", "male"], k=4) == pytest.approx(math.log(1.5))
    assert max_skew_at_k(["male"] * 10, k=10) == pytest.approx(math.log(2))
    assert max_skew_at_k(["female", "male"], k=2) == pytest.approx(0.0)
    assert max_skew_at_k(["female", "male"], k=2, desired=[0.8, 0.2]) == pytest.approx(math.log(0.5 / 0.2))


def test_ndkl() -> None:
    # ranking f, m: prefix 1 = (1, 0): KL = ln 2 ; prefix 2 = (0.5, 0.5): KL = 0
    # NDKL = (ln2 / log2(2) + 0 / log2(3)) / (1 + 1/log2(3))
    expected = math.log(2) / (1 + 1 / math.log2(3))
    assert ndkl(["female", "male"]) == pytest.approx(expected)
    assert ndkl(["male", "male", "male"]) == pytest.approx(math.log(2))  # every prefix all men


def test_group_fairness_with_fairlearn() -> None:
    true = ["nurse", "nurse", "nurse", "nurse", "chef", "chef", "chef", "chef"]
    pred = ["nurse", "nurse", "chef", "nurse", "chef", "chef", "chef", "nurse"]
    gender = ["female", "female", "male", "male", "female", "female", "male", "male"]
    result = group_fairness(true, pred, gender)
    by_group = {(g["occupation"], g["gender"]): g["accuracy"] for g in result["accuracy_by_group"]}
    assert by_group == {
        ("chef", "female"): 1.0,
        ("chef", "male"): 0.5,
        ("nurse", "female"): 1.0,
        ("nurse", "male"): 0.5,
    }
    assert result["worst_group_accuracy"] == 0.5
    assert result["overall_accuracy"] == pytest.approx(6 / 8)
    rows = {r["occupation"]: r for r in result["per_occupation"]}
    # "nurse" predicted for women: 2/4, for men: 2/4 -> demographic parity difference 0
    assert rows["nurse"]["demographic_parity_difference"] == pytest.approx(0.0)
    # nurse one-vs-rest: women TPR 2/2, FPR 0/2; men TPR 1/2, FPR 1/2 -> equalized odds difference 0.5
    assert rows["nurse"]["equalized_odds_difference"] == pytest.approx(0.5)


def test_recall_ties_are_broken_at_random_and_none_is_no_group() -> None:
    # All scores equal over 4 images: the true image is equally likely at ranks 0..3 -> recall@k = k / 4
    result = recall_at_k(np.zeros((2, 4)), ks=(1, 2))
    assert (result["recall@1"], result["recall@2"], result["correct"]) == (0.25, 0.5, "own image")
    # text 0: its image ties with image 1 (rank 0 or 1) -> recall@1 = 1/2 ; texts 1, 2: rank 0
    similarity = np.array([[1.0, 1.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    result = recall_at_k(similarity, ks=(1,), groups=["female", "male", "none"])
    assert result["recall@1"] == pytest.approx((0.5 + 1 + 1) / 3)
    assert set(result["by_group"]) == {"female", "male"}
    assert result["recall@1_gap"] == pytest.approx(0.5)  # male 1.0 - female 0.5
    assert result["recall@1_gap_signed"] == pytest.approx(0.5)


def test_ndkl_three_items() -> None:
    # f, f, m: prefix KLs vs (1/2, 1/2): i=1 (1, 0): ln 2 ; i=2 (1, 0): ln 2 ;
    # i=3 (2/3, 1/3): 2/3 ln(4/3) + 1/3 ln(2/3) ; weights 1/log2(2), 1/log2(3), 1/log2(4) = 1, 0.631, 0.5
    kl3 = 2 / 3 * math.log(4 / 3) + 1 / 3 * math.log(2 / 3)
    weights = [1.0, 1 / math.log2(3), 0.5]
    expected = (weights[0] * math.log(2) + weights[1] * math.log(2) + weights[2] * kl3) / sum(weights)
    assert ndkl(["female", "female", "male"]) == pytest.approx(expected)
    # desired (1/4, 3/4), one man: KL((0, 1) || D) = ln(1 / 0.75)
    assert ndkl(["male"], desired=[0.25, 0.75]) == pytest.approx(math.log(4 / 3))


def test_groups_outside_the_group_set_are_refused() -> None:
    with pytest.raises(ValueError, match="outside the group set"):
        max_skew_at_k(["female", "none"], k=2)
    with pytest.raises(ValueError, match="summing to 1"):
        ndkl(["female"], desired=[0.3, 0.3])


def test_group_fairness_with_an_empty_combination() -> None:
    # No male chef: that (occupation, gender) cell is left out rather than reported with n = 0
    true = ["nurse", "nurse", "chef", "chef"]
    pred = ["nurse", "chef", "chef", "chef"]
    gender = ["female", "male", "female", "female"]
    result = group_fairness(true, pred, gender)
    cells = {(g["occupation"], g["gender"]): (g["accuracy"], g["n"]) for g in result["accuracy_by_group"]}
    assert cells == {("chef", "female"): (1.0, 2), ("nurse", "female"): (1.0, 1), ("nurse", "male"): (0.0, 1)}
    assert result["worst_group_accuracy"] == 0.0
    # With at least 2 images a group, only female chefs count; the one-image groups are listed, not scored
    sized = group_fairness(true, pred, gender, min_group_size=2)
    assert sized["worst_group_accuracy"] == 1.0 and sized["worst_group"] == {
        "occupation": "chef",
        "gender": "female",
        "n": 2,
    }
    assert {(g["occupation"], g["gender"]) for g in sized["groups_too_small"]} == {
        ("nurse", "female"),
        ("nurse", "male"),
    }
    assert group_fairness(true, pred, gender, min_group_size=3)["worst_group_accuracy"] is None
    # "nurse" predicted for 1 of 3 women, 0 of 1 man -> demographic parity difference 1/3
    rows = {r["occupation"]: r for r in result["per_occupation"]}
    assert rows["nurse"]["demographic_parity_difference"] == pytest.approx(1 / 3)
    # The only man is a nurse, so his one-vs-rest FPR for "nurse" (and TPR for "chef") is undefined:
    # Fairlearn would score it 0; the equalized-odds difference is reported as None instead.
    assert rows["nurse"]["equalized_odds_difference"] is None
    assert rows["chef"]["equalized_odds_difference"] is None
    assert result["equalized_odds_difference_max"] is None


def test_recall_counts_an_image_with_the_identical_caption_as_correct() -> None:
    captions = ["a nurse", "a nurse", "a chef", "x"]
    similarity = np.array(
        [
            [0.1, 0.9, 0.5, 0.2],  # text 0: image 1 has the same caption and ranks first -> hit@1
            [0.9, 0.2, 0.5, 0.1],  # text 1: image 0 has the same caption and ranks first -> hit@1
            [0.5, 0.5, 0.5, 0.5],  # text 2: one correct image tied with 3 others -> 1/4, 2/4
        ]
    )
    own = recall_at_k(similarity, ks=(1, 2))
    assert own["recall@1"] == pytest.approx((0 + 0 + 0.25) / 3)
    same = recall_at_k(similarity, ks=(1, 2), captions=captions)
    assert same["correct"] == "identical caption"
    assert same["recall@1"] == pytest.approx((1 + 1 + 0.25) / 3)
    assert same["recall@2"] == pytest.approx((1 + 1 + 0.5) / 3)
    # Two correct images among 4 tied: P(a correct one first) = 2/4; in the top 2: 1 - (2/4)(1/3) = 5/6
    tied = recall_at_k(np.zeros((1, 4)), ks=(1, 2, 3), captions=["a", "a", "b", "c"])
    assert (tied["recall@1"], tied["recall@2"], tied["recall@3"]) == pytest.approx((0.5, 5 / 6, 1.0))
    # One better wrong image, then 2 correct tied with 1 wrong: hit@1 impossible, hit@2 = 2/3
    tied = recall_at_k(np.array([[0.5, 0.5, 0.9, 0.5]]), ks=(1, 2), captions=["a", "a", "b", "c"])
    assert (tied["recall@1"], tied["recall@2"]) == pytest.approx((0.0, 2 / 3))
    with pytest.raises(ValueError, match="captions"):
        recall_at_k(similarity, captions=captions[:3])
