"""Shares of women per occupation and the amplification statistics between two sets of shares, as
fractions (formulas in :mod:`biasloop.metrics.amplification`); count tables and their checks."""

from __future__ import annotations

from typing import Any

import numpy as np
import polars as pl

from biasloop.core.labels import LABELS


def count_table(predictions: pl.DataFrame) -> pl.DataFrame:
    """Per-occupation label counts of a classification table (needs ``occupation`` and ``label``).

    Returns:
        ``occupation, n_female, n_male, n_abstain`` (counts Int64), one row per occupation, sorted by
        occupation. Labels outside ``female``/``male``/``abstain`` are not counted.
    """
    for column in ("occupation", "label"):
        if column not in predictions.columns:
            raise ValueError(f"classification table has no {column!r} column")
    return (
        predictions.group_by("occupation")
        .agg(*[(pl.col("label") == label).sum().cast(pl.Int64).alias(f"n_{label}") for label in LABELS])
        .sort("occupation")
    )


def _scalar_or_array(values: np.ndarray) -> Any:
    return values.item() if values.ndim == 0 else values


def share_female(n_female: Any, n_male: Any) -> Any:
    """Share of women among confident images, ``n_female / (n_female + n_male)``.

    Args:
        n_female, n_male: counts (scalars or broadcastable arrays).

    Returns:
        A fraction in [0, 1] (a float for scalar input, else an array); nan where both counts are 0.
    """
    n_female = np.asarray(n_female, dtype=float)
    total = n_female + np.asarray(n_male, dtype=float)
    with np.errstate(invalid="ignore", divide="ignore"):
        return _scalar_or_array(np.where(total > 0, n_female / np.where(total > 0, total, 1.0), np.nan))


def abstain_rate(n_female: Any, n_male: Any, n_abstain: Any) -> Any:
    """Share of images the classifier abstained on, ``n_abstain / (n_female + n_male + n_abstain)``.

    Returns:
        A fraction in [0, 1] (float or array); nan where there are no images.
    """
    n_abstain = np.asarray(n_abstain, dtype=float)
    total = np.asarray(n_female, dtype=float) + np.asarray(n_male, dtype=float) + n_abstain
    with np.errstate(invalid="ignore", divide="ignore"):
        return _scalar_or_array(np.where(total > 0, n_abstain / np.where(total > 0, total, 1.0), np.nan))


def amplification_abs(share_train: Any, share_gen: Any) -> Any:
    """``mean_o |F_gen(o) - F_train(o)|`` over the last axis (occupations); a fraction in [0, 1]."""
    return np.mean(np.abs(np.asarray(share_gen, float) - np.asarray(share_train, float)), axis=-1)


def amplification_dir(share_train: Any, share_gen: Any) -> Any:
    """``mean_o (|F_gen - 1/2| - |F_train - 1/2|)`` over the last axis; in [-1/2, 1/2].

    Positive: generated images are further from parity than the training images.
    """
    deviation_gen = np.abs(np.asarray(share_gen, float) - 0.5)
    deviation_train = np.abs(np.asarray(share_train, float) - 0.5)
    return np.mean(deviation_gen - deviation_train, axis=-1)


def shift_to_majority(share_train: Any, share_gen: Any) -> Any:
    """``mean_o sign(F_train - 1/2) * (F_gen - F_train)`` over the last axis; in [-1, 1].

    Positive: generated images lean further towards each occupation's training majority. Occupations
    at exact parity in training count 0.
    """
    share_train, share_gen = np.asarray(share_train, float), np.asarray(share_gen, float)
    return np.mean(np.sign(share_train - 0.5) * (share_gen - share_train), axis=-1)


def bias_amp(group_shares_train: Any, group_shares_gen: Any) -> Any:
    """BiasAmp (Zhao et al., 2017) in its general multi-group form.

    Args:
        group_shares_train: ``(..., occupations, groups)``: b_train(o, g), the share of group g among
            the training images of occupation o (each row sums to 1).
        group_shares_gen: the same for generated images.

    Returns:
        ``mean_o sum_{g: b_train(o,g) > 1/|G|} (b_gen(o,g) - b_train(o,g))``, a fraction. For two groups
        (women, men) this equals :func:`shift_to_majority` except for occupations at exact parity in
        training, which count 0 in both, so the two agree there too; they differ only in how a
        group favoured in training is chosen when there are more than two groups.
    """
    train, gen = np.asarray(group_shares_train, float), np.asarray(group_shares_gen, float)
    favoured = train > 1.0 / train.shape[-1]
    return np.mean(np.sum(np.where(favoured, gen - train, 0.0), axis=-1), axis=-1)


def gender_mad(shares: Any) -> Any:
    """Mean absolute deviation from parity, ``mean_o |F(o) - 1/2|`` (DALL-Eval); in [0, 1/2]."""
    return np.mean(np.abs(np.asarray(shares, float) - 0.5), axis=-1)


def pearson(x: Any, y: Any) -> Any:
    """Pearson correlation of ``x`` and ``y`` over the last axis (occupations).

    Returns:
        A value in [-1, 1]; nan when undefined (fewer than two occupations, or either side constant).
    """
    x, y = np.asarray(x, float), np.asarray(y, float)
    if x.shape[-1] < 2:
        return _scalar_or_array(np.full(x.shape[:-1], np.nan))
    x_centred = x - x.mean(axis=-1, keepdims=True)
    y_centred = y - y.mean(axis=-1, keepdims=True)
    # An exact range test: the mean of equal values can round off and leave ~1e-17 residuals that
    # would otherwise yield a spurious correlation of +-1.
    defined = (np.ptp(x, axis=-1) > 0) & (np.ptp(y, axis=-1) > 0)
    denominator = np.sqrt((x_centred**2).sum(axis=-1) * (y_centred**2).sum(axis=-1))
    with np.errstate(invalid="ignore", divide="ignore"):
        correlation = (x_centred * y_centred).sum(axis=-1) / np.where(defined, denominator, 1.0)
    return _scalar_or_array(np.where(defined, np.clip(correlation, -1.0, 1.0), np.nan))


def corrected_share(f_obs: Any, tpr: float, fpr: float) -> Any:
    """Correct observed shares of women for classifier error: ``clip((F_obs - fpr) / (tpr - fpr), 0, 1)``.

    Args:
        f_obs: observed share(s) of women, fractions.
        tpr: P(labelled female | female) over confident labelled images.
        fpr: P(labelled female | male) over confident labelled images.

    Returns:
        The corrected share(s), fractions in [0, 1] (float or array); nan stays nan.

    Raises:
        ValueError: when ``tpr <= fpr`` (the labels carry no information to invert).
    """
    if not tpr > fpr:
        raise ValueError(f"cannot correct shares: tpr ({tpr}) must exceed fpr ({fpr})")
    return _scalar_or_array(np.clip((np.asarray(f_obs, float) - fpr) / (tpr - fpr), 0.0, 1.0))


def _validated_counts(counts: pl.DataFrame, side: str) -> pl.DataFrame:
    """``occupation, n_female, n_male, n_abstain`` (n_abstain 0 when absent), checked."""
    for column in ("occupation", "n_female", "n_male"):
        if column not in counts.columns:
            raise ValueError(f"{side} count table has no {column!r} column")
    if "n_abstain" not in counts.columns:
        counts = counts.with_columns(pl.lit(0, dtype=pl.Int64).alias("n_abstain"))
    counts = counts.select(
        pl.col("occupation").cast(pl.String), *[pl.col(f"n_{label}").cast(pl.Int64) for label in LABELS]
    )
    if counts.null_count().sum_horizontal().item() > 0:
        raise ValueError(f"{side} count table has missing values")
    if counts.filter(pl.any_horizontal(*[pl.col(f"n_{label}") < 0 for label in LABELS])).height:
        raise ValueError(f"{side} count table has a negative count")
    duplicated = counts.filter(pl.col("occupation").is_duplicated())["occupation"].unique().sort().to_list()
    if duplicated:
        raise ValueError(f"{side} count table repeats occupation(s) {duplicated}")
    return counts
