"""The estimands (shift, gap), their intervals and p-values, paired tables and confusion-rate draws,
against hand-computed values."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from scipy.optimize import brentq

from biasloop.metrics.amplification import amplification_table, read_confusion
from biasloop.metrics.correction import confusion_rate_draws, corrected_gap_interval
from biasloop.metrics.estimands import (
    GAP_KIND_CORRECTED,
    GAP_KIND_INDEPENDENT,
    correct_shares,
    debiased_abs,
    folded_normal_mean,
    format_p_value,
    gap_from_counts,
    gap_interval,
    monte_carlo_p_value,
    newcombe_difference_interval,
    shift_bootstrap_interval,
    shift_interval,
    sidak_alpha,
    unclear_majority,
    wilson_interval,
)
from biasloop.metrics.paired import (
    bootstrap_pairs,
    pair_cells,
    pair_correlation,
    paired_amplification_table,
    side_counts,
    swap_null_pairs,
)

Z = 1.959963984540054  # the normal 97.5% quantile


def test_wilson_interval_by_hand() -> None:
    # 0 of 10: centre = half = (z^2/20) / (1 + z^2/10), so [0, z^2 / (10 + z^2)] = [0, 3.8415 / 13.8415]
    lo, hi = wilson_interval(0, 10)
    assert lo == pytest.approx(0.0, abs=1e-12) and hi == pytest.approx(Z**2 / (10 + Z**2))
    # 5 of 10: centre 0.5, half = z sqrt(0.025 + z^2/400) / (1 + z^2/10) = 0.263413
    lo, hi = wilson_interval(5, 10)
    half = Z * math.sqrt(0.025 + Z**2 / 400) / (1 + Z**2 / 10)
    assert (lo, hi) == pytest.approx((0.5 - half, 0.5 + half))
    assert np.isnan(wilson_interval(0, 0)[0])


def test_newcombe_interval_published_example_and_paired_formula() -> None:
    # Newcombe (1998a), Table II: 56/70 - 48/80 = 0.2, method 10 interval 0.0524 to 0.3339.
    lo, hi = newcombe_difference_interval(56, 70, 48, 80)
    assert (round(float(lo), 4), round(float(hi), 4)) == (0.0524, 0.3339)
    # 5/10 vs 5/10: each Wilson half-width h = 0.263413 (above); independent: d +- sqrt(2) h;
    # paired with phi = 0.5: sqrt(h^2 - 2 * 0.5 * h^2 + h^2) = h.
    h = Z * math.sqrt(0.025 + Z**2 / 400) / (1 + Z**2 / 10)
    assert newcombe_difference_interval(5, 10, 5, 10) == pytest.approx((-math.sqrt(2) * h, math.sqrt(2) * h))
    assert newcombe_difference_interval(5, 10, 5, 10, phi=0.5) == pytest.approx((-h, h))
    # vectorised over occupations, and a lower alpha widens it
    lo, hi = newcombe_difference_interval(
        np.array([56, 5]), np.array([70, 10]), np.array([48, 5]), np.array([80, 10]), alpha=sidak_alpha(0.05, 2)
    )
    assert lo.shape == (2,) and lo[0] < 0.0524 and hi[1] > math.sqrt(2) * h


def test_sidak_and_projection_by_hand() -> None:
    assert sidak_alpha(0.05, 10) == pytest.approx(1 - 0.95**0.1)  # 0.005116
    assert sidak_alpha(0.05, 1) == pytest.approx(0.05)
    # d intervals [-0.1, 0.2] and [0.3, 0.5]: the nearest |d| are 0 and 0.3, the farthest 0.2 and 0.5
    lo, hi = gap_interval(np.array([-0.1, 0.3]), np.array([0.2, 0.5]))
    assert (lo, hi) == pytest.approx((0.15, 0.35))
    lo, hi = gap_interval(np.array([-0.4]), np.array([-0.1]))  # all negative: |d| in [0.1, 0.4]
    assert (lo, hi) == pytest.approx((0.1, 0.4))


def test_debiased_abs() -> None:
    assert folded_normal_mean(0.0) == pytest.approx(math.sqrt(2 / math.pi))
    assert folded_normal_mean(6.0) == pytest.approx(6.0)
    # |d_hat| at or below the mean of |N(0, v)| gives 0; no variance gives |d_hat|; far out it is |d_hat|
    assert debiased_abs(0.79 * 0.05, 0.05**2) == 0.0  # below sqrt(2/pi) = 0.798 sigma
    assert debiased_abs(-0.3, 0.0) == pytest.approx(0.3)
    assert debiased_abs(1.0, 0.01**2) == pytest.approx(1.0)
    # in between: the delta whose folded-normal mean is |d_hat| / sigma, times sigma
    sigma, d_hat = 0.05, 0.1
    delta = brentq(lambda x: folded_normal_mean(x) - d_hat / sigma, 0, 10)
    assert debiased_abs(d_hat, sigma**2) == pytest.approx(sigma * delta, rel=1e-5)
    assert 0 < debiased_abs(d_hat, sigma**2) < d_hat


def test_gap_from_counts_two_occupations_by_hand() -> None:
    # nurse: train 80 women / 20 men / 3 abstain (0.8), gen 45 / 5 (0.9): d = +0.1
    # engineer: train 10 / 90 (0.1), gen 0 / 50 (0.0): d = -0.1.  raw A_abs = (0.1 + 0.1) / 2 = 0.1
    train = np.array([[80, 20, 3], [10, 90, 0]])
    gen = np.array([[45, 5, 0], [0, 50, 2]])
    gap = gap_from_counts(train, gen)
    assert gap["raw"] == pytest.approx(0.1)
    # unbiased variances p(1-p)/(m-1): nurse 0.16/99 + 0.09/49, engineer 0.09/99 + 0
    sigmas = np.sqrt([0.16 / 99 + 0.09 / 49, 0.09 / 99])
    deltas = [brentq(lambda x, r=0.1 / s: folded_normal_mean(x) - r, 0, 10) for s in sigmas]
    assert gap["estimate"] == pytest.approx(np.mean(sigmas * np.array(deltas)), rel=1e-5)
    # interval: lower limit projected from Newcombe intervals at the Sidak level for two occupations,
    # upper limit from the plain 95% ones
    counts = (np.array([45, 0]), np.array([50, 50]), np.array([80, 10]), np.array([100, 100]))
    assert gap["lo"] == pytest.approx(gap_interval(*newcombe_difference_interval(*counts, sidak_alpha(0.05, 2)))[0])
    assert gap["hi"] == pytest.approx(gap_interval(*newcombe_difference_interval(*counts, 0.05))[1])
    assert gap["lo"] < gap["estimate"] < gap["hi"]
    # batched: the same table twice gives the same numbers twice
    batched = gap_from_counts(np.stack([train, train]), np.stack([gen, gen]))
    assert batched["estimate"].shape == (2,) and batched["estimate"] == pytest.approx([gap["estimate"]] * 2)


def test_shift_interval_by_hand() -> None:
    # nurse: train 80 / 20 (0.8), gen 45 / 5 (0.9); engineer: train 10 / 90 (0.1), gen 0 / 50 (0.0)
    # shift = (+1 * 0.1 + -1 * -0.1) / 2 = 0.1. Adjusted shares (x + 1) / (m + 2) and v = p~ (1 - p~) / (m + 2):
    # nurse 81/102 -> 0.00160289, 46/52 -> 0.00196290; engineer 11/102 -> 0.00094326, 1/52 -> 0.00036271;
    # half-width = 1.959964 * sqrt(0.00356579 + 0.00130598) / 2 = 0.0684008
    shift = shift_interval(np.array([[80, 20, 3], [10, 90, 0]]), np.array([[45, 5, 0], [0, 50, 2]]))
    assert shift["estimate"] == pytest.approx(0.1)
    assert (shift["lo"], shift["hi"]) == pytest.approx((0.1 - 0.0684008436, 0.1 + 0.0684008436))
    assert shift["n_unclear_majority"] == 0
    # at parity in training (50 / 50) the majority is unclear: the occupation counts 0 in the estimate
    # and spans +-|d_hat| = +-0.2 in the interval, plus its noise: adjusted shares 51/102 and 71/102,
    # v = 0.25 / 102 + (71/102)(31/102) / 102 = 0.00245098 + 0.00207405, z sqrt(v) = 0.131843
    parity = shift_interval(np.array([[50, 50, 0]]), np.array([[70, 30, 0]]))
    assert parity["estimate"] == 0.0 and parity["n_unclear_majority"] == 1
    assert (parity["lo"], parity["hi"]) == pytest.approx((-0.331843, 0.331843), abs=1e-6)
    # a baker at 42 women of 98 (95% Wilson interval 0.34 to 0.53) is unclear too; a nurse at 87 of 98 is not
    mixed = shift_interval(np.array([[42, 56, 2], [87, 11, 2]]), np.array([[97, 17, 0], [119, 1, 0]]))
    assert mixed["n_unclear_majority"] == 1
    assert mixed["hi"] - mixed["lo"] > 2 * abs(97 / 114 - 42 / 98) / 2


def test_shift_bootstrap_interval_by_hand() -> None:
    # occupation 0 (training 0.8, clear, sign +1), occupation 1 (training 0.45, unclear); four replicates
    # with differences g* - t*: occupation 0 (0.1, 0.2, 0.0, 0.1), occupation 1 (-0.25, -0.25, -0.15, -0.2).
    # lower values (d0 - |d1|) / 2: -0.075, -0.025, -0.075, -0.05; upper (d0 + |d1|) / 2: 0.175, 0.225,
    # 0.075, 0.15; with alpha = 0 the limits are their minimum and maximum.
    boot_train = np.array([[0.8, 0.45]] * 4)
    boot_gen = np.array([[0.9, 0.2], [1.0, 0.2], [0.8, 0.3], [0.9, 0.25]])
    lo, hi = shift_bootstrap_interval(
        np.array([0.8, 0.45]), np.array([0.9, 0.2]), boot_train, boot_gen, np.array([False, True]), alpha=0.0
    )
    assert (lo, hi) == pytest.approx((-0.075, 0.225))
    assert unclear_majority(np.array([[80, 20, 0], [45, 55, 0]])).tolist() == [False, True]
    # corrected with tpr 0.9, fpr 0.1: 0.8 -> 0.875 stays clear; Wilson limits of 45/100 map below and above 1/2
    assert unclear_majority(np.array([[80, 20, 0], [45, 55, 0]]), rates=(0.9, 0.1)).tolist() == [False, True]


def test_monte_carlo_p_values_and_bounds() -> None:
    null = np.array([1.0, 2.0, 3.0, -5.0])
    # one-sided: 2 and 3 are >= 2: (1 + 2) / (1 + 4); two-sided: |2|, |3|, |-5| >= 2: (1 + 3) / 5
    assert monte_carlo_p_value(2.0, null, two_sided=False) == (pytest.approx(0.6), False)
    assert monte_carlo_p_value(2.0, null, two_sided=True) == (pytest.approx(0.8), False)
    p_value, is_bound = monte_carlo_p_value(10.0, null, two_sided=True)  # none as extreme: the floor 1/5
    assert p_value == pytest.approx(0.2) and is_bound
    p_value, is_bound = monte_carlo_p_value(np.array([2.0, 10.0]), np.array([[1.0, np.nan], [np.nan, np.nan]]), False)
    # 1 < 2: none of the one valid draw is as extreme (the floor 1/2, a bound); no valid draw: nan
    assert p_value[0] == pytest.approx(0.5) and np.isnan(p_value[1]) and is_bound.tolist() == [True, False]


def test_format_p_value() -> None:
    assert format_p_value(1 / 1001, True) == "p < 0.001"
    assert format_p_value(1 / 301, True) == "p < 0.004"  # 0.00332 rounded up
    assert format_p_value(1 / 1001, True, with_p=False) == "< 0.001"
    assert format_p_value(0.0342) == "p = 0.034"
    assert format_p_value(0.0342, with_p=False) == "0.034"
    assert format_p_value(None) == "n/a" and format_p_value(float("nan")) == "n/a"


def test_confusion_rate_draws_and_vectorised_correction() -> None:
    counts = {"female_as_female": 271, "female_as_male": 0, "male_as_female": 4, "male_as_male": 284}
    tpr, fpr = confusion_rate_draws(counts, 20_000, np.random.default_rng(0))
    # Jeffreys: Beta(271.5, 0.5) has mean 271.5 / 272 and varies although no woman was mislabelled
    assert tpr.mean() == pytest.approx(271.5 / 272, abs=2e-4) and tpr.std() > 0 and tpr.max() < 1
    assert fpr.mean() == pytest.approx(4.5 / 289, abs=3e-4)
    # F_true = (F_obs - fpr) / (tpr - fpr) per replicate; nan where tpr <= fpr
    corrected = correct_shares(np.array([[0.5, 0.05]]), np.array([[0.9], [0.3]]), np.array([[0.1], [0.3]]))
    assert corrected[0] == pytest.approx([0.5, 0.0]) and np.isnan(corrected[1]).all()


def test_corrected_gap_interval() -> None:
    train = np.array([[80, 20, 3], [10, 90, 0]])
    gen = np.array([[45, 5, 0], [0, 50, 2]])
    plain = gap_from_counts(train, gen)
    # exact rates tpr 1, fpr 0: the correction is the identity, so the interval is the Sidak projection
    # (both limits; the plain table takes its upper limit from unadjusted intervals, so it is narrower)
    lo_id, hi_id = corrected_gap_interval(train, gen, {"tpr": 1.0, "fpr": 0.0}, True)
    assert lo_id == pytest.approx(plain["lo"]) and hi_id >= plain["hi"]
    # exact tpr 0.9, fpr 0.1 on both sides: d_true = d_obs / 0.8, the interval scales by 1.25
    lo, hi = corrected_gap_interval(train, gen, {"tpr": 0.9, "fpr": 0.1}, True)
    assert (lo, hi) == pytest.approx((1.25 * lo_id, 1.25 * hi_id))
    # uncertain rates widen it; training side from ground truth takes the box of both sides' intervals
    counts = {"female_as_female": 90, "female_as_male": 10, "male_as_female": 10, "male_as_male": 90}
    lo_u, hi_u = corrected_gap_interval(train, gen, {"tpr": 0.9, "fpr": 0.1, "counts": counts}, True)
    assert lo_u <= lo and hi_u >= hi
    lo_t, hi_t = corrected_gap_interval(train, gen, {"tpr": 1.0, "fpr": 0.0}, False)
    assert lo_t <= lo_id and hi_t >= hi_id


TRAIN = pl.DataFrame(
    {"occupation": ["nurse", "engineer"], "n_female": [80, 10], "n_male": [20, 90], "n_abstain": [3, 0]}
)
GEN = pl.DataFrame({"occupation": ["nurse", "engineer"], "n_female": [45, 0], "n_male": [5, 50], "n_abstain": [0, 2]})


def test_amplification_table_estimands() -> None:
    result = amplification_table(TRAIN, GEN, n_boot=300, seed=0)
    estimands = result["estimands"]
    # shift = (+1 * 0.1 + -1 * -0.1) / 2 = 0.1 = A_abs here; the shift is the table's shift_to_majority
    assert estimands["shift"]["estimate"] == pytest.approx(0.1) == result["shift_to_majority"]
    assert estimands["shift"]["kind"] == "agresti_caffo_wald" and estimands["shift"]["n_boot"] == 300
    assert estimands["shift"]["ci"] == pytest.approx([0.1 - 0.0684008436, 0.1 + 0.0684008436])  # by hand below
    assert estimands["a_abs_raw"] == result["amplification_abs"] == pytest.approx(0.1)
    gap = estimands["gap"]
    assert gap["kind"] == GAP_KIND_INDEPENDENT
    by_hand = gap_from_counts(TRAIN[:, 1:].to_numpy(), GEN[:, 1:].to_numpy())
    assert gap["estimate"] == pytest.approx(float(by_hand["estimate"]))
    assert gap["p_value"] == result["p_value_abs"] and gap["p_value_is_bound"] == result["p_value_abs_is_bound"]
    for entry in (estimands["shift"], gap):
        assert 0 < entry["p_value"] <= 1 and isinstance(entry["p_value_is_bound"], bool)
        assert entry["ci"][0] <= entry["estimate"] <= entry["ci"][1]
    # The same shares from ten times the images: no null draw comes near, the p-value is the floor, flagged.
    larger = amplification_table(
        TRAIN.with_columns(pl.col("^n_.*$") * 10), GEN.with_columns(pl.col("^n_.*$") * 10), n_boot=300, seed=0
    )["estimands"]
    assert larger["shift"]["p_value"] == pytest.approx(1 / 301) and larger["shift"]["p_value_is_bound"]
    json.dumps(result)  # JSON-ready
    empty = amplification_table(TRAIN, GEN, n_boot=0)["estimands"]
    # without replicates: no p-values, but both intervals are analytic
    assert empty["shift"]["p_value"] is None and empty["gap"]["p_value"] is None
    assert empty["shift"]["ci"] == estimands["shift"]["ci"] and empty["gap"]["ci"] == gap["ci"]


def test_corrected_table_redraws_the_confusion_rates() -> None:
    counts = {"female_as_female": 90, "female_as_male": 10, "male_as_female": 10, "male_as_male": 90}
    fixed = amplification_table(TRAIN, GEN, n_boot=400, seed=1, confusion={"tpr": 0.9, "fpr": 0.1})["corrected"]
    drawn = amplification_table(TRAIN, GEN, n_boot=400, seed=1, confusion={"tpr": 0.9, "fpr": 0.1, "counts": counts})[
        "corrected"
    ]
    assert fixed["confusion"]["uncertainty"] == "fixed" and "counts" not in fixed["confusion"]
    assert drawn["confusion"]["uncertainty"] == "bootstrapped" and drawn["confusion"]["counts"] == counts
    # the same point estimates, wider intervals once the rates' uncertainty is carried
    assert drawn["shift_to_majority"] == fixed["shift_to_majority"]
    width = lambda table: table["shift_to_majority_ci"][1] - table["shift_to_majority_ci"][0]  # noqa: E731
    assert width(drawn) > width(fixed)
    gap_width = lambda table: table["estimands"]["gap"]["ci"][1] - table["estimands"]["gap"]["ci"][0]  # noqa: E731
    assert gap_width(drawn) > gap_width(fixed) and drawn["estimands"]["gap"]["kind"] == GAP_KIND_CORRECTED


def test_read_confusion_returns_counts(tmp_path: Path) -> None:
    confusion = {
        "female_as_female": 271,
        "female_as_male": 0,
        "female_as_abstain": 4,
        "male_as_female": 4,
        "male_as_male": 284,
        "male_as_abstain": 10,
    }
    path = tmp_path / "instrument.json"
    path.write_text(json.dumps({"tpr": 1.0, "fpr": 4 / 288, "confusion": confusion}))
    read = read_confusion(path)
    confident = ("female_as_female", "female_as_male", "male_as_female", "male_as_male")
    assert read["tpr"] == 1.0 and read["counts"] == {key: confusion[key] for key in confident}
    path.write_text(json.dumps({"tpr": 0.9, "fpr": 0.1}))
    assert read_confusion(path) == {"tpr": 0.9, "fpr": 0.1}


def _pairs(rows: list[tuple[str, str, str]]) -> pl.DataFrame:
    return pl.DataFrame(rows, schema=["occupation", "train_label", "gen_label"], orient="row")


def test_pair_cells_correlation_and_draws() -> None:
    # chef: 3 (female, female), 1 (female, male), 1 (male, female), 3 (male, male), 1 (abstain, female)
    rows = (
        [("chef", "female", "female")] * 3
        + [("chef", "female", "male"), ("chef", "male", "female")]
        + [("chef", "male", "male")] * 3
        + [("chef", "abstain", "female")]
    )
    names, cells = pair_cells(_pairs(rows))
    assert names == ["chef"] and cells[0].tolist() == [[3, 1, 0], [1, 3, 0], [1, 0, 0]]
    train, gen = side_counts(cells)
    assert train[0].tolist() == [4, 4, 1] and gen[0].tolist() == [5, 4, 0]
    # phi over the 8 confident pairs: (3 * 3 - 1 * 1) / sqrt(4 * 4 * 4 * 4) = 0.5
    assert pair_correlation(cells)[0] == pytest.approx(0.5)
    rng = np.random.default_rng(0)
    null_train, null_gen = swap_null_pairs(cells, 500, rng)
    # a swap keeps the pairs' labels: the 3 + 3 concordant pairs stay, so both shares lie in [3/8.., ..]
    assert null_train.shape == (500, 1) and np.all((null_train >= 3 / 9) & (null_train <= 6 / 8))
    boot_train, boot_gen = bootstrap_pairs(cells, 500, rng)
    assert boot_train.shape == (500, 1) and 0.4 < np.nanmean(boot_train) < 0.6


def test_paired_table_of_identical_labels_has_no_shift() -> None:
    # every pair has the same label on both sides: zero difference, a swap changes nothing, so every
    # null draw is as extreme as the observed 0 (p = 1) and every bootstrap shift is 0
    rows = (
        [("nurse", "female", "female")] * 8
        + [("nurse", "male", "male")] * 2
        + [("engineer", "male", "male")] * 9
        + [("engineer", "female", "female")]
    )
    result = paired_amplification_table(_pairs(rows), n_boot=200, seed=0)
    shift = result["estimands"]["shift"]
    assert shift["estimate"] == 0.0 and shift["ci"] == [0.0, 0.0] and shift["p_value"] == 1.0
    assert shift["kind"] == "pair_bootstrap_percentile"
    assert result["paired"] and result["n_pairs"] == 20 and result["amplification_abs"] == 0.0
    assert result["estimands"]["gap"]["kind"] == "newcombe_paired_sidak_projection"
    assert result["estimands"]["gap"]["ci"][0] == 0.0
    rows_by_name = {row["occupation"]: row for row in result["per_occupation"]}
    assert rows_by_name["nurse"]["n_pairs"] == 10 and rows_by_name["nurse"]["pair_correlation"] == pytest.approx(1.0)


def test_paired_table_by_hand_and_errors() -> None:
    # nurse: 6 (female, female), 2 (male, female), 2 (male, male): train 6/10, gen 8/10, d = +0.2
    # engineer: 8 (male, male), 2 (female, male): train 2/10, gen 0/10, d = -0.2 -> shift = A_abs = 0.2
    rows = (
        [("nurse", "female", "female")] * 6
        + [("nurse", "male", "female")] * 2
        + [("nurse", "male", "male")] * 2
        + [("engineer", "male", "male")] * 8
        + [("engineer", "female", "male")] * 2
    )
    result = paired_amplification_table(_pairs(rows), n_boot=200, seed=0, confusion={"tpr": 1.0, "fpr": 0.0})
    assert result["shift_to_majority"] == pytest.approx(0.2) and result["amplification_abs"] == pytest.approx(0.2)
    assert result["corrected"]["paired"] and result["corrected"]["shift_to_majority"] == pytest.approx(0.2)
    assert paired_amplification_table(_pairs(rows), n_boot=50, seed=3) == paired_amplification_table(
        _pairs(rows), n_boot=50, seed=3
    )
    with pytest.raises(ValueError, match="gen_label must be one of female, male, abstain, found 'woman'"):
        paired_amplification_table(_pairs([("nurse", "female", "woman")]))
    with pytest.raises(ValueError, match="no 'train_label' column"):
        paired_amplification_table(pl.DataFrame({"occupation": ["a"], "gen_label": ["male"]}))
