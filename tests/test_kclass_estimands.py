"""The K-class estimands and metrics (:mod:`biasloop.metrics.kclass`) on hand-computed tables, and their
equality with the binary code at K = 2."""

from __future__ import annotations

import math

import numpy as np
import polars as pl
import pytest
from scipy.stats import norm

from biasloop.metrics import estimands
from biasloop.metrics.decomposition import decomposition_terms
from biasloop.metrics.kclass import (
    class_amplification_table,
    class_decomposition_terms,
    class_distributions,
    directional_bias_amplification,
    gap_from_class_counts,
    intersectional_counts,
    majority_weights,
    shift_from_class_counts,
    skew_against_training,
    total_variation,
)
from biasloop.metrics.kclass.estimands import distinct_class_intervals

# Three occupations, classes (light, medium, dark):
#   A: train (6, 3, 1) -> (.6, .3, .1), gen (5, 4, 1) -> (.5, .4, .1): d = (-.1, +.1, 0), TV .1, majority light: -.1
#   B: train (1, 2, 7) -> (.1, .2, .7), gen (0, 2, 8) -> (0, .2, .8): d = (-.1, 0, +.1), TV .1, majority dark: +.1
#   C: train (4, 4, 2) (light and medium tied), gen (5, 3, 2): d = (.1, -.1, 0), TV .1, tie: (.1 - .1)/2 = 0
TRAIN = np.array([[6, 3, 1], [1, 2, 7], [4, 4, 2]])
GEN = np.array([[5, 4, 1], [0, 2, 8], [5, 3, 2]])


def test_distributions_total_variation_and_shift_by_hand() -> None:
    p_train, p_gen = class_distributions(TRAIN), class_distributions(GEN)
    np.testing.assert_allclose(p_train[1], [0.1, 0.2, 0.7])
    np.testing.assert_allclose(total_variation(p_gen, p_train), [0.1, 0.1, 0.1], atol=1e-15)
    np.testing.assert_allclose(majority_weights(TRAIN), [[1, 0, 0], [0, 0, 1], [0.5, 0.5, 0]])
    gap = gap_from_class_counts(TRAIN, GEN)
    assert gap["raw"] == pytest.approx(0.1, abs=1e-15)
    shift = shift_from_class_counts(TRAIN, GEN)
    assert shift["estimate"] == pytest.approx((-0.1 + 0.1 + 0.0) / 3, abs=1e-15)
    # With 10 images a side no majority is clear: every occupation spans its candidates both ways.
    assert shift["n_unclear_majority"] == 3
    assert np.isnan(class_distributions([[0, 0, 0]])).all()
    with pytest.raises(ValueError, match="non-negative"):
        class_distributions([[1, -1, 0]])
    with pytest.raises(ValueError, match="confident image on both sides"):
        gap_from_class_counts([[1, 1, 0], [0, 0, 0]], [[1, 1, 0], [1, 1, 1]])


def test_shift_interval_by_hand_with_a_clear_majority() -> None:
    # One occupation, train (60, 30, 10), gen (50, 40, 10): majority light is clear (Wilson intervals of
    # 60/90 = [0.564, 0.756] and 60/70 exclude 1/2). d = -0.1; Agresti-Caffo: p~ = 61/102 and 51/102.
    shift = shift_from_class_counts([[60, 30, 10]], [[50, 40, 10]])
    variance = (61 / 102) * (41 / 102) / 102 + (51 / 102) * (51 / 102) / 102
    half = 1.959963984540054 * math.sqrt(variance)
    assert shift["n_unclear_majority"] == 0
    assert shift["estimate"] == pytest.approx(-0.1, abs=1e-15)
    assert (shift["lo"], shift["hi"]) == pytest.approx((-0.1 - half, -0.1 + half), abs=1e-14)


def test_shift_unclear_majority_spans_its_candidates() -> None:
    # train (30, 28, 2): light and medium are candidates (30/58 holds 1/2), dark is not (30/32 excludes it).
    # gen (20, 35, 5): d = (20/60 - 30/60, 35/60 - 28/60, ...) = (-1/6, 7/60); span [-1/6, 7/60] plus
    # the larger Agresti-Caffo variance of the two candidates.
    shift = shift_from_class_counts([[30, 28, 2]], [[20, 35, 5]])
    v_light = (31 / 62) * (31 / 62) / 62 + (21 / 62) * (41 / 62) / 62
    v_medium = (29 / 62) * (33 / 62) / 62 + (36 / 62) * (26 / 62) / 62
    half = norm.ppf(0.975) * math.sqrt(max(v_light, v_medium))
    assert shift["n_unclear_majority"] == 1
    assert shift["estimate"] == pytest.approx(-1 / 6, abs=1e-15)
    assert (shift["lo"], shift["hi"]) == pytest.approx((-1 / 6 - half, 7 / 60 + half), abs=1e-14)


def test_gap_interval_is_newcombe_for_one_binary_occupation() -> None:
    # Newcombe (1998a)'s published example, 56/70 - 48/80: [0.0524, 0.3339]; one occupation (Sidak level
    # = 95%), two classes: the gap's interval is that interval's range of |d|.
    gap = gap_from_class_counts([[48, 32]], [[56, 14]])
    assert gap["raw"] == pytest.approx(0.2, abs=1e-15)
    assert (gap["lo"], gap["hi"]) == pytest.approx((0.0524, 0.3339), abs=5e-5)


def test_gap_interval_for_three_classes_projects_per_class_intervals() -> None:
    gap = gap_from_class_counts(TRAIN, GEN)
    joint_alpha = 1 - 0.95 ** (1 / (3 * 3))  # three occupations, three classes each
    assert distinct_class_intervals(3) == 3 and distinct_class_intervals(2) == 1
    m_train, m_gen = TRAIN.sum(axis=1, keepdims=True), GEN.sum(axis=1, keepdims=True)
    lo_joint, hi_joint = estimands.newcombe_difference_interval(GEN, m_gen, TRAIN, m_train, joint_alpha)
    lo_single, hi_single = estimands.newcombe_difference_interval(GEN, m_gen, TRAIN, m_train, 0.05)
    nearest = np.where((lo_joint <= 0) & (hi_joint >= 0), 0.0, np.minimum(abs(lo_joint), abs(hi_joint)))
    farthest = np.maximum(abs(lo_single), abs(hi_single))
    assert gap["lo"] == pytest.approx(np.mean(0.5 * nearest.sum(axis=1)), abs=1e-15)
    assert gap["hi"] == pytest.approx(np.mean(0.5 * farthest.sum(axis=1)), abs=1e-15)
    assert gap["lo"] == 0.0  # ten images a side: every interval holds 0
    # The plug-in is positive on identical tables, the estimate is not.
    same = gap_from_class_counts(TRAIN, TRAIN)
    assert same["raw"] == 0.0 and same["estimate"] == 0.0 and same["lo"] == 0.0


def _random_binary_tables(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``(tables, occupations, 3)`` female/male/abstain counts of both sides, with exact parities."""
    rng = np.random.default_rng(seed)
    shares = rng.uniform(0.01, 0.99, (40, 8))
    m_train, m_gen = rng.integers(2, 400, (40, 8)), rng.integers(1, 100, (40, 8))
    x_train, x_gen = rng.binomial(m_train, shares), rng.binomial(m_gen, np.clip(shares + 0.1, 0, 1))
    m_train[:, 0] = 2 * (m_train[:, 0] // 2)  # occupation 0 at exact parity in training
    x_train[:, 0] = m_train[:, 0] // 2
    abstain = rng.integers(0, 5, (40, 8))
    return np.stack([x_train, m_train - x_train, abstain], -1), np.stack([x_gen, m_gen - x_gen, abstain], -1)


def test_k2_equals_the_binary_gap_and_shift() -> None:
    train, gen = _random_binary_tables(0)
    binary_gap, class_gap = estimands.gap_from_counts(train, gen), gap_from_class_counts(train[..., :2], gen[..., :2])
    for key in ("raw", "estimate", "lo", "hi"):
        np.testing.assert_allclose(class_gap[key], binary_gap[key], rtol=0, atol=1e-12, err_msg=key)
    binary_shift = estimands.shift_interval(train, gen)
    class_shift = shift_from_class_counts(train[..., :2], gen[..., :2])
    for key in ("estimate", "lo", "hi"):
        np.testing.assert_allclose(class_shift[key], binary_shift[key], rtol=0, atol=1e-12, err_msg=key)
    np.testing.assert_array_equal(class_shift["n_unclear_majority"], binary_shift["n_unclear_majority"])


def test_k2_table_matches_the_binary_table() -> None:
    from biasloop.metrics.amplification import amplification_table

    train, gen = _random_binary_tables(1)
    names = [f"occupation {i}" for i in range(8)]
    frame = lambda counts: pl.DataFrame(  # noqa: E731
        {"occupation": names, "n_female": counts[:, 0], "n_male": counts[:, 1], "n_abstain": counts[:, 2]}
    )
    binary = amplification_table(frame(train[0]), frame(gen[0]), n_boot=0)["estimands"]
    table = class_amplification_table(names, ["female", "male"], train[0, :, :2], gen[0, :, :2], n_boot=0)
    for name in ("shift", "gap"):
        assert table["estimands"][name]["estimate"] == pytest.approx(binary[name]["estimate"], abs=1e-12)
        assert table["estimands"][name]["ci"] == pytest.approx(binary[name]["ci"], abs=1e-12)
    assert table["estimands"]["tv_raw"] == pytest.approx(binary["a_abs_raw"], abs=1e-12)


def test_class_table_rows_and_p_values() -> None:
    table = class_amplification_table(
        ["A", "B", "C", "D"],
        ["light", "medium", "dark"],
        np.vstack([TRAIN, [[0, 0, 0]]]),
        np.vstack([GEN, [[1, 0, 0]]]),
        abstain_train=[2, 0, 0, 3],
        n_boot=200,
        seed=0,
    )
    assert table["n_occupations"] == 3 and table["dropped"] == ["D"]
    row = table["per_occupation"][0]
    assert row["p_gen"] == pytest.approx({"light": 0.5, "medium": 0.4, "dark": 0.1})
    assert row["tv"] == pytest.approx(0.1) and row["majority_train"] == ["light"]
    assert row["abstain_rate_train"] == pytest.approx(2 / 12)
    assert table["per_occupation"][2]["majority_train"] == ["light", "medium"]
    gap = table["estimands"]["gap"]
    assert table["estimands"]["tv_raw"] == pytest.approx(0.1)
    assert gap["ci"][0] <= gap["estimate"] <= gap["ci"][1]
    assert 0 < gap["p_value"] <= 1 and gap["kind"] == "newcombe_per_class_sidak_projection"
    # Ten images a side and TV 0.1 everywhere: well within the null's spread.
    assert gap["p_value"] > 0.2


def test_directional_bias_amplification_by_hand() -> None:
    # Rows occupations (nurse, engineer), columns classes (a0, a1, a2). Training joint (/20):
    # nurse (.3, .1, .1), engineer (.1, .3, .1); P(T) = (.5, .5), P(A) = (.4, .4, .2), so y = 1 for
    # (nurse, a0) and (engineer, a1) only (a2: .1 = .5 * .2, not greater).
    train = np.array([[6, 2, 2], [2, 6, 2]])
    gen = np.array([[8, 1, 1], [1, 8, 1]])
    # T->A: P^(A|T) - P(A|T): nurse (.8-.6, .1-.2, .1-.2) = (.2, -.1, -.1), engineer (-.1, .2, -.1);
    # y Delta - (1 - y) Delta: .2 + .1 + .1 + .1 + .2 + .1 = .8, over 6 cells: 2/15.
    assert directional_bias_amplification(train, gen, "T->A") == pytest.approx(0.8 / 6, abs=1e-15)
    # A->T: P(T|A) train: a0 (3/4, 1/4), a1 (1/4, 3/4), a2 (1/2, 1/2); generated a0 (8/9, 1/9),
    # a1 (1/9, 8/9), a2 (1/2, 1/2). |Delta| = 8/9 - 3/4 = 5/36 in four cells, each counted +5/36: 20/36 / 6.
    assert directional_bias_amplification(train, gen, "A->T") == pytest.approx(20 / 36 / 6, abs=1e-15)
    assert directional_bias_amplification(train, train) == 0.0
    # The reverse move (generated further from the associations) is negative.
    assert directional_bias_amplification(gen, train, "T->A") < 0
    with pytest.raises(ValueError, match="direction"):
        directional_bias_amplification(train, gen, "A<-T")
    with pytest.raises(ValueError, match="no generated image"):
        directional_bias_amplification(train, [[1, 0, 0], [1, 0, 0]], "A->T")


def test_max_skew_and_ndkl_against_training_by_hand() -> None:
    classes = ("light", "medium", "dark")
    ranked = ["dark", "dark", "light", "abstain", "medium"]  # kept: dark, dark, light, medium
    # desired (.5, .3, .2). Top 2: all dark, skew ln(1 / .2) = ln 5. Top 4: (1/4, 1/4, 1/2): ln(.5 / .2).
    assert skew_against_training(ranked, [5, 3, 2], classes, k=2)["max_skew"] == pytest.approx(math.log(5))
    result = skew_against_training(ranked, [5, 3, 2], classes, k=4)
    assert result["max_skew"] == pytest.approx(math.log(2.5))
    assert result["k_effective"] == 4 and result["n_ignored"] == 1
    kls = [
        math.log(5),
        math.log(5),
        (1 / 3) * math.log((1 / 3) / 0.5) + (2 / 3) * math.log((2 / 3) / 0.2),
        0.25 * math.log(0.25 / 0.5) + 0.25 * math.log(0.25 / 0.3) + 0.5 * math.log(0.5 / 0.2),
    ]
    weights = [1 / math.log2(i + 1) for i in range(1, 5)]
    expected = sum(w * kl for w, kl in zip(weights, kls)) / sum(weights)
    assert result["ndkl"] == pytest.approx(expected, abs=1e-12)
    # (1.6094 + 1.6094 * 0.6309 + 0.6675 * 0.5 + 0.2393 * 0.4307) / 2.5616
    assert expected == pytest.approx(1.1952, abs=1e-4)
    with pytest.raises(ValueError, match=r"\['dark'\] have no training image"):
        skew_against_training(ranked, [5, 3, 0], classes, k=2)


def test_decomposition_terms_by_hand() -> None:
    shares = {
        "train_measured": [[0.6, 0.3, 0.1], [0.2, 0.2, 0.6]],
        "gen_measured": [[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]],
        "train_true": [[0.5, 0.4, 0.1], [0.2, 0.3, 0.5]],
        "ideal_true": [[0.65, 0.3, 0.05], [0.1, 0.2, 0.7]],
        "gen_oracle": [[0.75, 0.2, 0.05], [0.1, 0.1, 0.8]],
    }
    # Majorities: light (occupation 1), dark (occupation 2).
    # measured   = mean(.7 - .6, .8 - .6)                         = .15
    # data       = mean(.65 - .5, .7 - .5)                        = .175
    # generator  = mean(.75 - .65, .8 - .7)                       = .10
    # instrument = mean((.7 - .75) - (.6 - .5), (.8 - .8) - (.6 - .5)) = -.125
    # ideal gap  = mean(TV = (.15 + .1 + .05) / 2, (.1 + .1 + .2) / 2) = .175
    terms = class_decomposition_terms(shares, ground_truth=True, paired=False)
    expected = {"measured": 0.15, "data": 0.175, "generator": 0.10, "instrument": -0.125, "ideal_gap": 0.175}
    for name, value in expected.items():
        assert terms[name] == pytest.approx(value, abs=1e-15), name
    paired = class_decomposition_terms(shares, ground_truth=True, paired=True)
    assert paired["data"] == 0.0
    no_truth = class_decomposition_terms({**shares, "ideal_measured": shares["ideal_true"]}, False, False)
    assert no_truth["data"] + no_truth["generator_and_instrument"] == pytest.approx(0.15, abs=1e-15)


def _random_distributions(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    return rng.dirichlet(np.ones(shape[-1]), size=shape[:-1])


def test_decomposition_sums_exactly_and_equals_the_binary_terms_at_k2() -> None:
    rng = np.random.default_rng(3)
    names = ("train_measured", "gen_measured", "train_true", "ideal_true", "gen_oracle")
    shares = {name: _random_distributions(rng, (50, 9, 5)) for name in names}
    terms = class_decomposition_terms(shares, ground_truth=True, paired=False)
    np.testing.assert_allclose(terms["data"] + terms["generator"] + terms["instrument"], terms["measured"], atol=1e-15)
    binary_shares = {name: rng.uniform(0, 1, (50, 9)) for name in names}
    binary_shares["train_measured"][:, 0] = 0.5  # a parity: sign 0, tied weights
    sign = np.sign(binary_shares["train_measured"] - 0.5)
    for ground_truth, paired in ((True, False), (True, True), (False, False)):
        binary_input = {**binary_shares, "ideal_measured": binary_shares["ideal_true"]}
        binary = decomposition_terms(binary_input, sign, ground_truth, paired)
        two_class = {name: np.stack([value, 1 - value], -1) for name, value in binary_input.items()}
        kclass = class_decomposition_terms(two_class, ground_truth, paired)
        assert set(kclass) == set(binary)
        for name in binary:
            np.testing.assert_allclose(kclass[name], binary[name], rtol=0, atol=1e-12, err_msg=name)


def test_intersectional_cells_with_a_minimum_size() -> None:
    frame = pl.DataFrame(
        {
            "occupation": ["nurse"] * 6 + ["chef"] * 4,
            "gender": ["female", "female", "female", "male", "female", "abstain", "male", "male", "female", "male"],
            "tone": ["light", "dark", "light", "dark", "abstain", "light", "light", "light", "dark", None],
        }
    )
    # Confident cells: female x light 2, female x dark 2 (nurse, chef), male x dark 1, male x light 2.
    # Abstained on either: nurse 2 (female/abstain, abstain/light), chef 1 (male/None).
    cells = intersectional_counts(frame, "gender", "tone", min_cell_size=2)
    assert cells["classes"] == ["female x dark", "female x light", "male x light"]
    assert cells["occupations"] == ["chef", "nurse"]
    np.testing.assert_array_equal(cells["counts"], [[1, 0, 2], [1, 2, 0]])
    np.testing.assert_array_equal(cells["n_abstain"], [1, 2])
    assert cells["excluded"] == [{"cell": "male x dark", "size": 1}] and cells["n_excluded_images"] == 1
    # The generated side takes the training side's cells; its own small cells are listed.
    other = intersectional_counts(frame.head(4), "gender", "tone", 2, classes=cells["classes"])
    assert other["classes"] == cells["classes"] and other["excluded"] == [{"cell": "male x dark", "size": 1}]
    with pytest.raises(ValueError, match="missing column"):
        intersectional_counts(frame, "gender", "age", 2)
