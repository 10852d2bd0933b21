"""Calibration of the amplification intervals on simulated count tables (tests that can fail).

Hundreds of pairs of count tables are drawn at once from known shares and pushed through the same
functions :func:`biasloop.metrics.amplification.amplification_table` uses (vectorised over the tables),
so the measured coverage is the coverage of the reported intervals. Each test prints the rate it measured
(``pytest -s`` shows it).

The headline checks are those of the estimands (:mod:`biasloop.metrics.estimands`): the intervals of the
``gap`` and the ``shift`` cover their noise-free values over per-occupation differences of 0 to 4 sigma,
shares of 0.005 and 0.995, 80 and 400 generated images, and for paired data. The simulation is
``benchmarks/estimands_calibration.py``'s (its full grid, with more tables, is in ``docs/estimands.md``).
The excess over the noise floor is a diagnostic; its tests below check that it does what it claims
(cover ``E[T] - E_null[T]``), not that it estimates the amplification (it does not).
"""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from benchmarks.estimands_calibration import (
    DEFAULT_SHARES,
    N_TRAIN as CALIBRATION_N_TRAIN,
    PARITY_SHARES,
    RATIOS,
    SHARE_SETS,
    generated_shares,
    paired_setting,
    unpaired_setting,
)
from biasloop.metrics.amplification import (
    amplification_abs,
    amplification_table,
    bootstrap_shares,
    null_shares,
    summarize_aggregates,
)

# Shares of women per occupation spanning 0.06 to 0.89 (the default world's), and the default run's
# sample sizes: about 335 keyword training images and 80 generated images per occupation, 2% abstain.
SHARES = np.array([0.06, 0.16, 0.25, 0.36, 0.42, 0.44, 0.64, 0.72, 0.79, 0.89])
N_TRAIN, N_GEN, ABSTAIN = 335, 80, 0.02
N_TABLES, N_BOOT = 300, 300


def _draw_counts(rng: np.random.Generator, shares: np.ndarray, n: int) -> np.ndarray:
    """``(N_TABLES, occupations, 3)`` female/male/abstain counts."""
    probabilities = np.stack([shares * (1 - ABSTAIN), (1 - shares) * (1 - ABSTAIN), np.full_like(shares, ABSTAIN)], -1)
    return rng.multinomial(n, probabilities, size=(N_TABLES, len(shares)))


def _summaries(seed: int, share_gen: np.ndarray) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    train, gen = _draw_counts(rng, SHARES, N_TRAIN), _draw_counts(rng, share_gen, N_GEN)
    observed = [np.asarray(c[..., 0] / (c[..., 0] + c[..., 1]), float) for c in (train, gen)]
    boot = bootstrap_shares(train, N_BOOT, rng), bootstrap_shares(gen, N_BOOT, rng)
    null = null_shares(train, gen, N_BOOT, rng)
    return summarize_aggregates(observed[0], observed[1], boot[0], boot[1], null[0], null[1])


def _coverage(stats: dict[str, np.ndarray], lo: str, hi: str, truth: float) -> float:
    return float(np.mean((stats[lo] <= truth) & (truth <= stats[hi])))


def test_excess_diagnostic_covers_zero_when_nothing_is_amplified() -> None:
    stats = _summaries(0, SHARES)
    coverage_abs = _coverage(stats, "excess_abs_lo", "excess_abs_hi", 0.0)
    coverage_dir = _coverage(stats, "excess_dir_lo", "excess_dir_hi", 0.0)
    rejections = float(np.mean(stats["p_value_abs"] < 0.05))
    print(
        f"\nnull ({N_TABLES} table pairs, {N_BOOT} replicates): excess_abs interval covers 0 in "
        f"{coverage_abs:.3f}, excess_dir in {coverage_dir:.3f}; p_value_abs < 0.05 in {rejections:.3f}; "
        f"mean A_abs {stats['amplification_abs'].mean():.4f}, mean noise floor {stats['noise_floor_abs'].mean():.4f}"
    )
    assert coverage_abs >= 0.90 and coverage_dir >= 0.90
    # The p-value is a calibrated test: about 5% below 0.05 under the null.
    assert 0.02 <= rejections <= 0.08
    # The raw statistic is far from 0 under the null; the excess is centred on 0.
    assert stats["amplification_abs"].mean() > 0.03
    assert abs(stats["excess_abs"].mean()) < 0.003


def test_known_shift_to_majority_is_recovered_and_the_excess_covers_its_own_estimand() -> None:
    shift = 0.05
    share_gen = SHARES + np.sign(SHARES - 0.5) * shift  # every occupation leans 5 pp further to its majority
    stats = _summaries(1, share_gen)
    coverage = _coverage(stats, "shift_to_majority_lo", "shift_to_majority_hi", shift)
    # theta = E[A_abs] - E_null[A_abs] at the true shares, by simulation (the excess's estimand).
    rng = np.random.default_rng(2)
    pooled = (N_TRAIN * SHARES + N_GEN * share_gen) / (N_TRAIN + N_GEN)
    draws = 20_000

    def mean_abs(p_train: np.ndarray, p_gen: np.ndarray) -> float:
        return float(
            np.mean(
                amplification_abs(
                    rng.binomial(N_TRAIN, p_train, (draws, 10)) / N_TRAIN,
                    rng.binomial(N_GEN, p_gen, (draws, 10)) / N_GEN,
                )
            )
        )

    theta = mean_abs(SHARES, share_gen) - mean_abs(pooled, pooled)
    coverage_excess = _coverage(stats, "excess_abs_lo", "excess_abs_hi", theta)
    power = float(np.mean(stats["p_value_abs"] < 0.05))
    print(
        f"\nshift of {shift} to the majority: its interval covers it in {coverage:.3f} (mean estimate "
        f"{stats['shift_to_majority'].mean():.4f}); excess_abs covers theta = {theta:.4f} in {coverage_excess:.3f}; "
        f"p_value_abs < 0.05 in {power:.3f}"
    )
    assert coverage >= 0.90
    assert stats["shift_to_majority"].mean() == pytest.approx(shift, abs=0.004)
    assert coverage_excess >= 0.90
    assert 0 < theta < shift  # the excess is a conservative measure of the true |difference|
    assert power > 0.3


def test_noise_floor_by_hand() -> None:
    # One occupation, one confident image a side: pooled share 1/2, so under the null each side is a
    # fair coin and |F_gen - F_train| is 1 with probability 1/2: floor 0.5, and P(T_null >= 1) = 0.5.
    train = pl.DataFrame({"occupation": ["chef"], "n_female": [1], "n_male": [0], "n_abstain": [3]})
    gen = pl.DataFrame({"occupation": ["chef"], "n_female": [0], "n_male": [1]})
    result = amplification_table(train, gen, n_boot=4000, seed=0)
    assert result["amplification_abs"] == 1.0
    assert result["noise_floor_abs"] == pytest.approx(0.5, abs=0.03)
    assert result["excess_abs"] == pytest.approx(0.5, abs=0.03)
    assert result["p_value_abs"] == pytest.approx(0.5, abs=0.03)
    assert (result["n_images_train"], result["n_confident_train"], result["n_images_gen"]) == (4, 1, 1)
    # Identical tables (the same images on both sides, say): A_abs = 0 is further below the noise floor
    # than independent samples usually fall, so the excess and its whole interval are negative; p = 1.
    same = pl.DataFrame({"occupation": ["a", "b"], "n_female": [300, 50], "n_male": [100, 350]})
    result = amplification_table(same, same, n_boot=1000, seed=0)
    lo, hi = result["excess_abs_ci"]
    assert result["amplification_abs"] == 0.0 and result["excess_abs"] == -result["noise_floor_abs"]
    assert lo < hi < 0 and result["p_value_abs"] == 1.0


CALIBRATION_TABLES, CALIBRATION_BOOT = 300, 300


@pytest.mark.parametrize("n_gen", [80, 400])
@pytest.mark.parametrize("share_set", sorted(SHARE_SETS))
def test_gap_and_shift_intervals_cover_the_noise_free_values(share_set: str, n_gen: int) -> None:
    """Coverage >= 0.90 of the noise-free gap and shift for d/sigma in {0, 0.5, 1, 2, 4} (DESIGN.md)."""
    p_train = SHARE_SETS[share_set]
    lines, failures = [], []
    for i, ratio in enumerate(RATIOS):
        p_gen = generated_shares(p_train, ratio, CALIBRATION_N_TRAIN, n_gen)
        row = unpaired_setting(
            1000 + 10 * i + n_gen, p_train, p_gen, CALIBRATION_N_TRAIN, n_gen, CALIBRATION_TABLES, CALIBRATION_BOOT
        )
        lines.append(
            f"d/sigma {ratio:g}: gap covers {row['gap_coverage']:.3f} (bias {row['gap_bias']:+.4f}, raw "
            f"{row['a_abs_raw_bias']:+.4f}), shift covers {row['shift_coverage']:.3f}"
        )
        if row["gap_coverage"] < 0.90 or row["shift_coverage"] < 0.90:
            failures.append(ratio)
        # the debiased gap is closer to the truth than raw A_abs where raw A_abs is biased (small d),
        # and within 0.01 of the truth everywhere on this grid
        assert abs(row["gap_bias"]) <= 0.025 and abs(row["gap_bias"]) <= abs(row["a_abs_raw_bias"]) + 0.004
        assert abs(row["shift_bias"]) < 0.004  # linear: unbiased
        assert row["gap_estimate_inside"] == 1.0
    print(f"\n{share_set} shares, {n_gen} generated images: " + "; ".join(lines))
    assert not failures, f"coverage below 0.90 at d/sigma {failures}"


def test_headline_like_tables_are_covered_where_the_excess_was_not() -> None:
    """The issue's reviewer setting: generated shares 17 pp further towards the majority, 343 / 120 images."""
    p_gen = np.clip(DEFAULT_SHARES + np.sign(DEFAULT_SHARES - 0.5) * 0.17, 0.005, 0.995)
    row = unpaired_setting(7, DEFAULT_SHARES, p_gen, 343, 120, CALIBRATION_TABLES, CALIBRATION_BOOT)
    print(
        f"\nheadline-like (true gap {row['truth_gap']:.3f}): gap covers {row['gap_coverage']:.3f}, shift "
        f"{row['shift_coverage']:.3f}; the excess covers the gap in {row['excess_abs_coverage_of_gap']:.3f}"
    )
    assert row["gap_coverage"] >= 0.90 and row["shift_coverage"] >= 0.90
    assert abs(row["gap_bias"]) < 0.005
    assert row["excess_abs_coverage_of_gap"] < 0.5  # why the excess is no longer the headline


def test_shift_covers_where_training_majorities_are_unclear() -> None:
    """Training shares within 4 pp of 1/2: the plug-in's signs are often wrong; the interval spans them."""
    p_gen = PARITY_SHARES + np.sign(PARITY_SHARES - 0.5) * 0.15
    row = unpaired_setting(8, PARITY_SHARES, p_gen, CALIBRATION_N_TRAIN, 80, CALIBRATION_TABLES, CALIBRATION_BOOT)
    print(
        f"\nnear parity (true shift {row['truth_shift']:.3f}, plug-in bias {row['shift_bias']:+.3f}): the shift's "
        f"interval covers {row['shift_coverage']:.3f}, the percentile bootstrap "
        f"{row['shift_bootstrap_coverage']:.3f}"
    )
    assert row["shift_coverage"] >= 0.90


def test_paired_null_and_paired_shift() -> None:
    """Pairs whose labels correlate with phi = 0.8: pair bootstrap and within-pair swap null."""
    null = paired_setting(11, DEFAULT_SHARES, DEFAULT_SHARES, CALIBRATION_TABLES, CALIBRATION_BOOT)
    shifted_shares = DEFAULT_SHARES + np.sign(DEFAULT_SHARES - 0.5) * 0.05
    shifted = paired_setting(12, DEFAULT_SHARES, shifted_shares, CALIBRATION_TABLES, CALIBRATION_BOOT)
    print(
        f"\npaired null: shift covers 0 in {null['shift_coverage']:.3f} (mean {null['shift_bias']:+.4f}, "
        f"p < 0.05 in {null['shift_rejects_at_5pct']:.3f}), gap covers 0 in {null['gap_coverage']:.3f}; "
        f"5 pp shift: covered in {shifted['shift_coverage']:.3f}, gap in {shifted['gap_coverage']:.3f}, "
        f"p < 0.05 in {shifted['shift_rejects_at_5pct']:.3f}"
    )
    assert null["shift_coverage"] >= 0.90 and null["gap_coverage"] >= 0.90
    assert abs(null["shift_bias"]) < 0.01  # the truth is 0
    assert 0.01 <= null["shift_rejects_at_5pct"] <= 0.09  # the swap null is a calibrated test
    assert shifted["shift_coverage"] >= 0.90 and shifted["gap_coverage"] >= 0.90
    assert shifted["shift_rejects_at_5pct"] > 0.8


def test_corrected_intervals_cover_with_estimated_confusion_rates() -> None:
    """Labels flipped with tpr 0.95 / fpr 0.05, the rates themselves measured on 300 held-out images per
    gender: the corrected table (rates redrawn per replicate) covers the true shares' shift and gap."""
    rng = np.random.default_rng(21)
    shares_train = np.array([0.06, 0.16, 0.25, 0.36, 0.64, 0.72, 0.79, 0.89, 0.3, 0.7])
    shares_gen = shares_train + np.sign(shares_train - 0.5) * 0.08
    tpr, fpr, held_out, n_tables = 0.95, 0.05, 300, 300
    names = [f"occupation {i}" for i in range(len(shares_train))]
    truth_gap = float(np.mean(np.abs(shares_gen - shares_train)))
    truth_shift = float(np.mean(np.sign(shares_train - 0.5) * (shares_gen - shares_train)))

    def observed(shares: np.ndarray, n: int) -> pl.DataFrame:
        women = rng.binomial(n, shares * tpr + (1 - shares) * fpr)
        return pl.DataFrame({"occupation": names, "n_female": women, "n_male": n - women})

    covered = {"shift": 0, "gap": 0}
    for table in range(n_tables):
        right, wrong = rng.binomial(held_out, tpr), rng.binomial(held_out, fpr)
        confusion = {
            "tpr": right / held_out,
            "fpr": wrong / held_out,
            "counts": {
                "female_as_female": right,
                "female_as_male": held_out - right,
                "male_as_female": wrong,
                "male_as_male": held_out - wrong,
            },
        }
        result = amplification_table(
            observed(shares_train, 335), observed(shares_gen, 80), n_boot=300, seed=table, confusion=confusion
        )["corrected"]["estimands"]
        for name, truth in (("shift", truth_shift), ("gap", truth_gap)):
            lo, hi = result[name]["ci"]
            covered[name] += lo <= truth <= hi
    coverage = {name: count / n_tables for name, count in covered.items()}
    print(
        f"\ncorrected shares, estimated confusion rates: shift covered in {coverage['shift']:.3f}, "
        f"gap in {coverage['gap']:.3f}"
    )
    assert coverage["shift"] >= 0.90 and coverage["gap"] >= 0.90
