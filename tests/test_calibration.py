"""Calibration of the amplification intervals on simulated count tables (tests that can fail).

Hundreds of pairs of count tables are drawn at once from known shares and pushed through the same
functions :func:`biasloop.metrics.amplification.amplification_table` uses (vectorised over the tables),
so the measured coverage is the coverage of the reported intervals. Each test prints the rate it measured
(``pytest -s`` shows it).
"""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

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


def test_excess_intervals_cover_zero_when_nothing_is_amplified() -> None:
    stats = _summaries(0, SHARES)
    coverage_abs = _coverage(stats, "excess_abs_lo", "excess_abs_hi", 0.0)
    coverage_dir = _coverage(stats, "excess_dir_lo", "excess_dir_hi", 0.0)
    rejections = float(np.mean(stats["p_value_abs"] < 0.05))
    print(f"\nnull ({N_TABLES} table pairs, {N_BOOT} replicates): excess_abs interval covers 0 in "
          f"{coverage_abs:.3f}, excess_dir in {coverage_dir:.3f}; p_value_abs < 0.05 in {rejections:.3f}; "
          f"mean A_abs {stats['amplification_abs'].mean():.4f}, mean noise floor {stats['noise_floor_abs'].mean():.4f}")
    assert coverage_abs >= 0.90 and coverage_dir >= 0.90
    # The p-value is a calibrated test: about 5% below 0.05 under the null.
    assert 0.02 <= rejections <= 0.08
    # The raw statistic is far from 0 under the null; the excess is centred on 0.
    assert stats["amplification_abs"].mean() > 0.03
    assert abs(stats["excess_abs"].mean()) < 0.003


def test_known_shift_to_majority_is_recovered_at_the_nominal_rate() -> None:
    shift = 0.05
    share_gen = SHARES + np.sign(SHARES - 0.5) * shift  # every occupation leans 5 pp further to its majority
    stats = _summaries(1, share_gen)
    coverage = _coverage(stats, "shift_to_majority_lo", "shift_to_majority_hi", shift)
    # theta = E[A_abs] - E_null[A_abs] at the true shares, by simulation (the excess's estimand).
    rng = np.random.default_rng(2)
    pooled = (N_TRAIN * SHARES + N_GEN * share_gen) / (N_TRAIN + N_GEN)
    draws = 20_000

    def mean_abs(p_train: np.ndarray, p_gen: np.ndarray) -> float:
        return float(np.mean(amplification_abs(rng.binomial(N_TRAIN, p_train, (draws, 10)) / N_TRAIN,
                                               rng.binomial(N_GEN, p_gen, (draws, 10)) / N_GEN)))

    theta = mean_abs(SHARES, share_gen) - mean_abs(pooled, pooled)
    coverage_excess = _coverage(stats, "excess_abs_lo", "excess_abs_hi", theta)
    power = float(np.mean(stats["p_value_abs"] < 0.05))
    print(f"\nshift of {shift} to the majority: its interval covers it in {coverage:.3f} (mean estimate "
          f"{stats['shift_to_majority'].mean():.4f}); excess_abs covers theta = {theta:.4f} in {coverage_excess:.3f}; "
          f"p_value_abs < 0.05 in {power:.3f}")
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
