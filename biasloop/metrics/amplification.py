"""Shares of women and amplification metrics (DESIGN.md, "Metrics").

Every share and amplification is a fraction (shares in [0, 1], signed amplifications in [-1, 1]), never
a percentage. With ``F(o) = n_female / (n_female + n_male)`` over the confident (non-abstained) images
of occupation ``o`` and the mean taken over occupations:

- ``amplification_abs = mean_o |F_gen(o) - F_train(o)|``
- ``amplification_dir = mean_o (|F_gen(o) - 1/2| - |F_train(o) - 1/2|)``: positive when generated images
  are further from parity than training images
- ``shift_to_majority = mean_o sign(F_train(o) - 1/2) * (F_gen(o) - F_train(o))``
- ``bias_amp``: BiasAmp of Zhao et al. (2017)
- ``gender_mad = mean_o |F(o) - 1/2|`` (DALL-Eval)
- corrected shares ``F_true = clip((F_obs - fpr) / (tpr - fpr), 0, 1)``

Two aliases are shown once: for two groups ``bias_amp`` equals ``shift_to_majority`` (so the tables
carry only ``shift_to_majority``), and ``amplification_dir`` equals ``mad_gen - mad_train`` exactly.

**Estimands.** Each table leads with ``estimands`` (:mod:`biasloop.metrics.estimands`,
``docs/estimands.md``): the ``shift`` (``shift_to_majority`` with an adjusted Wald interval, or for
pairs and corrected shares a bootstrap one, occupations with an unclear training majority counted both
ways, and a two-sided null p-value), the ``gap`` (the noise-free ``mean_o |p_gen - p_train|``,
debiased, with an interval from simultaneous per-occupation intervals), and ``a_abs_raw``, the paper's
plug-in A_abs. ``tests/test_calibration.py`` measures that both intervals cover the noise-free values.
``shift_to_majority_ci`` stays the plain percentile bootstrap (which re-estimates every majority in
each replicate and fails near parity).

**Noise floor and excess: a diagnostic, not an estimate of the amplification.**
``amplification_abs`` and ``amplification_dir`` are built from absolute values, so sampling noise alone
makes them positive: with 80 generated and 335 training images per occupation, two samples of one
population give ``amplification_abs`` of about 4 to 5 pp. Each table therefore also reports, for ``abs``
and ``dir`` (see :func:`excess_over_noise`):

- ``noise_floor_<s>``: the statistic's mean under the null "generated share = training share", simulated
  with the observed confident counts per occupation from the pooled share (parametric bootstrap, the
  same number of replicates as the intervals);
- ``excess_<s> = <statistic> - noise_floor_<s>`` with ``excess_<s>_ci``: it estimates
  ``E[T] - E_null[T]``, which lies below the noise-free gap once differences are real (it covered a
  true gap of 17 pp in 12% of headline-like simulated tables), so read the ``gap`` estimand instead;
- ``p_value_<s>``: the one-sided Monte Carlo p-value of the statistic under that null (the gap's p-value),
  with ``p_value_<s>_is_bound`` true when it is the floor ``1 / (1 + n_boot)``.

Signed statistics (``shift_to_majority``, ``pearson``) and the one-sided MADs keep 95% percentile bootstrap
intervals (images resampled within occupations).

The canonical per-image classification table is a polars DataFrame with ``occupation`` (str),
``p_female`` (float) and ``label`` (``female``/``male``/``abstain``); a count table has
``occupation, n_female, n_male[, n_abstain]``.
"""

from __future__ import annotations

import json
import logging
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from biasloop.core.io import json_float
from biasloop.core.labels import LABELS
from biasloop.metrics import estimands

log = logging.getLogger(__name__)

AGGREGATES = ("amplification_abs", "amplification_dir", "shift_to_majority", "mad_train", "mad_gen", "pearson")
# Statistics built from absolute values: a noise floor and an excess over it instead of a plain interval.
NOISE_FLOORED = {"amplification_abs": "abs", "amplification_dir": "dir"}
# Aggregates with a plain percentile interval.
PLAIN_INTERVAL = ("shift_to_majority", "mad_train", "mad_gen", "pearson")
ALIASES = {
    "bias_amp": "shift_to_majority (BiasAmp, Zhao et al. 2017, with two groups)",
    "mad_gen - mad_train": "amplification_dir",
}


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


def _aggregates(share_train: np.ndarray, share_gen: np.ndarray) -> dict[str, np.ndarray]:
    """Every aggregate over the last axis; shares ``(..., occupations)``."""
    return {
        "amplification_abs": amplification_abs(share_train, share_gen),
        "amplification_dir": amplification_dir(share_train, share_gen),
        "shift_to_majority": shift_to_majority(share_train, share_gen),
        "mad_train": gender_mad(share_train),
        "mad_gen": gender_mad(share_gen),
        "pearson": pearson(share_train, share_gen),
    }


def bootstrap_shares(counts: np.ndarray, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """Shares of women from a multinomial redraw of each occupation's images (the intervals' bootstrap).

    Args:
        counts: ``(..., occupations, 3)`` female/male/abstain counts; leading axes are independent tables
            (the calibration tests pass hundreds at once).
        n_boot: replicates.
        rng: the random generator.

    Returns:
        ``(..., n_boot, occupations)`` shares. Each replicate draws n(o) images with replacement from
        occupation o's observed (female, male, abstain) proportions, so abstentions vary between
        replicates as they would between samples; a replicate with no confident image gives nan.
    """
    counts = np.asarray(counts, dtype=np.int64)
    batch, n_occupations = counts.shape[:-2], counts.shape[-2]
    totals = counts.sum(axis=-1)
    shape = (*batch, n_boot, n_occupations)
    # The multinomial (female, male, abstain) draw as two binomials (women among all, then men among the
    # rest): the same distribution, several times faster than Generator.multinomial on many small draws.
    p_female = counts[..., 0] / np.maximum(totals, 1)
    rest = np.maximum(totals - counts[..., 0], 1)
    p_male_of_rest = counts[..., 1] / rest
    women = rng.binomial(totals[..., None, :], p_female[..., None, :], size=shape)
    men = rng.binomial(totals[..., None, :] - women, p_male_of_rest[..., None, :], size=shape)
    return np.asarray(share_female(women, men), dtype=float).reshape(shape)


def null_shares(
    train: np.ndarray, gen: np.ndarray, n_boot: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Shares of women under the null "generated share = training share" (parametric bootstrap).

    Each side keeps its observed number of confident images m(o) per occupation and draws its women
    from ``Binomial(m(o), p(o))`` with ``p(o)`` the pooled share ``(f_train + f_gen) / (m_train + m_gen)``.
    Abstentions play no part: the null is about the share among confident images.

    Args:
        train, gen: ``(..., occupations, 3)`` female/male/abstain counts.
        n_boot: replicates.
        rng: the random generator.

    Returns:
        ``(null_train, null_gen)``, each ``(..., n_boot, occupations)`` (nan where a side has no
        confident image).
    """
    train, gen = np.asarray(train, dtype=np.int64), np.asarray(gen, dtype=np.int64)
    batch, n_occupations = train.shape[:-2], train.shape[-2]
    confident_train, confident_gen = train[..., 0] + train[..., 1], gen[..., 0] + gen[..., 1]
    pooled = np.nan_to_num(np.asarray(share_female(train[..., 0] + gen[..., 0], train[..., 1] + gen[..., 1]), float))
    shape = (*batch, n_boot, n_occupations)
    sides = []
    for confident in (confident_train, confident_gen):
        women = rng.binomial(confident[..., None, :], pooled[..., None, :], size=shape)
        sides.append(np.asarray(share_female(women, confident[..., None, :] - women), float).reshape(shape))
    return sides[0], sides[1]


def _nan_quantiles(samples: np.ndarray, q: Sequence[float]) -> np.ndarray:
    """``(len(q), ...)`` percentiles over the last axis ignoring nan replicates (nan if none)."""
    if samples.shape[-1] == 0:
        return np.full((len(q), *samples.shape[:-1]), np.nan)
    with warnings.catch_warnings():
        # A column with no usable replicate legitimately gives a nan interval.
        warnings.filterwarnings("ignore", message="All-NaN slice")
        warnings.filterwarnings("ignore", message="Mean of empty slice")
        return np.nanpercentile(samples, list(q), axis=-1)


def _nan_mean(samples: np.ndarray, keepdims: bool = False) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Mean of empty slice")
        return (
            np.nanmean(samples, axis=-1, keepdims=keepdims)
            if samples.shape[-1]
            else np.full(samples.shape[:-1] + ((1,) if keepdims else ()), np.nan)
        )


def excess_over_noise(point: Any, replicates: np.ndarray, null_replicates: np.ndarray) -> dict[str, np.ndarray]:
    """Noise floor, excess over it with a 95% interval, and the null p-value of a statistic.

    Args:
        point: the statistic ``T`` on the observed counts, shape ``(...)``.
        replicates: ``(..., n_boot)``: ``T`` on the intervals' bootstrap replicates
            (:func:`bootstrap_shares`).
        null_replicates: ``(..., n_boot)``: ``T`` on replicates drawn under the null (:func:`null_shares`).

    Returns:
        ``noise_floor = mean(T_null)``; ``excess = T - noise_floor``; ``excess_lo``/``excess_hi``, the
        95% interval ``[excess - (q97.5 - m), excess - (q2.5 - m)]`` with ``q`` the percentiles and
        ``m`` the mean of the bootstrap replicates ``T*``; ``p_value = (1 + #{T_null >= T}) /
        (1 + #T_null)``, one-sided, with ``p_value_is_bound`` (no null draw as extreme, so the p-value is
        the Monte Carlo floor). nan replicates are left out; all nan when there are none.

    A diagnostic: the excess is not an estimate of the noise-free amplification (module docstring).

    What the excess estimates: ``theta = E[T] - E_null[T]``, how far the statistic's expectation at these
    sample sizes sits above pure noise's. For ``amplification_abs`` and one occupation with true
    difference ``d`` and symmetric noise ``X``, ``E|d + X| - E|X|`` lies between 0 and ``|d|``
    (triangle inequality; Anderson's theorem for the lower end), is 0 exactly when ``d = 0`` and tends
    to ``|d|`` as samples grow: it sits below the noise-free gap at the sample sizes used (by 3 pp of 17
    in headline-like tables, whose true gap its interval then covers in 15% of them), so the ``gap``
    estimand (:func:`biasloop.metrics.estimands.gap_from_counts`) reports the amplification and the
    excess only says how far the statistic clears its noise floor.

    Why this interval: the percentile interval of ``T*`` inherits the bias of an absolute value twice
    (sampling adds noise and the bootstrap adds it again) and excludes 0 under the null, and the basic
    (reverse-percentile) interval only removes the bootstrap's own, smaller, estimate of that bias; both
    fail at the boundary ``d = 0`` where the bootstrap is inconsistent (Andrews, 2000, Econometrica
    68(2)). Here the bias is removed with the null's floor instead, and the bootstrap supplies only the
    spread: a basic interval (Davison & Hinkley, 1997, *Bootstrap Methods and their Application*,
    eq. 5.6) for the pivot ``T - E[T]``, approximated by ``T* - mean(T*)``. Under the null this spread is
    wider than the truth (conservative: 0.98 coverage in the calibration test), away from it about
    right (0.92 to 0.95 for shifts of 2 to 10 pp), which the null-calibrated interval (the null's
    spread) is not: its spread is that of folded noise, too narrow once there is a signal (0.83 at
    10 pp). The p-value is the Monte Carlo test of Davison & Hinkley, sect. 4.2.
    """
    point = np.asarray(point, dtype=float)
    floor = _nan_mean(null_replicates)
    excess = point - floor
    centred = replicates - _nan_mean(replicates, keepdims=True)
    upper_q, lower_q = _nan_quantiles(centred, (97.5, 2.5))
    # Ties count as at least as extreme (a conservative p-value for a discrete statistic).
    p_value, is_bound = estimands.monte_carlo_p_value(point, null_replicates, two_sided=False)
    return {
        "noise_floor": floor,
        "excess": excess,
        "excess_lo": excess - upper_q,
        "excess_hi": excess - lower_q,
        "p_value": p_value,
        "p_value_is_bound": is_bound,
    }


def summarize_aggregates(
    share_train: np.ndarray,
    share_gen: np.ndarray,
    boot_train: np.ndarray,
    boot_gen: np.ndarray,
    null_train: np.ndarray,
    null_gen: np.ndarray,
) -> dict[str, np.ndarray]:
    """Every aggregate with its interval, and for the absolute ones the noise floor and excess.

    Args:
        share_train, share_gen: ``(..., occupations)`` observed shares.
        boot_train, boot_gen: ``(..., n_boot, occupations)`` bootstrap shares (:func:`bootstrap_shares`).
        null_train, null_gen: ``(..., n_boot, occupations)`` null shares (:func:`null_shares`).

    Returns:
        Arrays of shape ``(...)``: each name in :data:`AGGREGATES`; for ``amplification_abs``/``_dir``
        (suffix ``s`` = ``abs``/``dir``) ``noise_floor_s``, ``excess_s``, ``excess_s_lo``, ``excess_s_hi``
        ``p_value_s`` and ``p_value_s_is_bound`` (:func:`excess_over_noise`); for the others
        ``<name>_lo``/``_hi``, the 95% percentile interval; ``p_value_shift`` (two-sided, of
        ``shift_to_majority`` against the null draws) and ``p_value_shift_is_bound``. A replicate in
        which some occupation drew no confident image gives nan and is left out.
    """
    point = _aggregates(share_train, share_gen)
    boot = _aggregates(boot_train, boot_gen)
    null = _aggregates(null_train, null_gen)
    out: dict[str, np.ndarray] = {}
    for name in AGGREGATES:
        out[name] = np.asarray(point[name], dtype=float)
        if name in NOISE_FLOORED:
            suffix = NOISE_FLOORED[name]
            excess = excess_over_noise(point[name], np.asarray(boot[name], float), np.asarray(null[name], float))
            out[f"noise_floor_{suffix}"], out[f"p_value_{suffix}"] = excess["noise_floor"], excess["p_value"]
            out[f"p_value_{suffix}_is_bound"] = excess["p_value_is_bound"]
            out[f"excess_{suffix}"] = excess["excess"]
            out[f"excess_{suffix}_lo"], out[f"excess_{suffix}_hi"] = excess["excess_lo"], excess["excess_hi"]
        else:
            out[f"{name}_lo"], out[f"{name}_hi"] = _nan_quantiles(np.asarray(boot[name], float), (2.5, 97.5))
    out["p_value_shift"], out["p_value_shift_is_bound"] = estimands.monte_carlo_p_value(
        point["shift_to_majority"], np.asarray(null["shift_to_majority"], float), two_sided=True
    )
    return out


def _interval_pair(lo: Any, hi: Any) -> list[float | None]:
    return [json_float(lo), json_float(hi)]


def _table(
    names: list[str],
    train: np.ndarray,
    gen: np.ndarray,
    shares: tuple[np.ndarray, np.ndarray],
    boot: tuple[np.ndarray, np.ndarray],
    null: tuple[np.ndarray, np.ndarray],
    keep: np.ndarray,
    parts: dict[str, Any],
) -> dict[str, Any]:
    """Aggregates over the kept occupations with intervals, the estimands, and per-occupation rows (all
    occupations). ``parts``: the caller's ``gap`` (``estimate``/``lo``/``hi``/``kind``) and ``shift``
    (``lo``/``hi``/``kind``/``n_unclear_majority``); empty when no occupation is kept."""
    share_train, share_gen = shares
    out: dict[str, Any] = {}
    stats = (
        summarize_aggregates(
            share_train[keep], share_gen[keep], boot[0][:, keep], boot[1][:, keep], null[0][:, keep], null[1][:, keep]
        )
        if keep.any()
        else {}
    )
    value = lambda key: json_float(stats[key]) if key in stats else None  # noqa: E731
    for name in AGGREGATES:
        out[name] = value(name)
        if name in NOISE_FLOORED:
            suffix = NOISE_FLOORED[name]
            out[f"noise_floor_{suffix}"] = value(f"noise_floor_{suffix}")
            out[f"excess_{suffix}"] = value(f"excess_{suffix}")
            out[f"excess_{suffix}_ci"] = [value(f"excess_{suffix}_lo"), value(f"excess_{suffix}_hi")]
            out[f"p_value_{suffix}"] = value(f"p_value_{suffix}")
            out[f"p_value_{suffix}_is_bound"] = bool(stats.get(f"p_value_{suffix}_is_bound", False))
        else:
            out[f"{name}_ci"] = [value(f"{name}_lo"), value(f"{name}_hi")]
    out["n_occupations"] = int(keep.sum())
    out["n_boot"] = int(boot[0].shape[0])
    gap, shift = parts.get("gap", {}), parts.get("shift")
    out["estimands"] = {
        "shift": {
            "estimate": out["shift_to_majority"],
            "ci": [json_float(shift["lo"]), json_float(shift["hi"])] if shift else [None, None],
            "p_value": value("p_value_shift"),
            "p_value_is_bound": bool(stats.get("p_value_shift_is_bound", False)),
            "n_boot": out["n_boot"],
            "kind": shift["kind"] if shift else None,
            # occupations whose training majority is unclear, counted both ways in the interval
            "n_unclear_majority": int(shift["n_unclear_majority"]) if shift else None,
        },
        # The gap is 0 exactly under the null "equal shares in every occupation" that p_value_abs tests.
        "gap": {
            "estimate": json_float(gap.get("estimate", np.nan)),
            "ci": [json_float(gap.get("lo", np.nan)), json_float(gap.get("hi", np.nan))],
            "p_value": out["p_value_abs"],
            "p_value_is_bound": out["p_value_abs_is_bound"],
            "kind": gap.get("kind"),
        },
        "a_abs_raw": out["amplification_abs"],
    }
    for side, counts in (("train", train), ("gen", gen)):
        out[f"n_images_{side}"] = int(counts[keep].sum())
        out[f"n_confident_{side}"] = int(counts[keep, :2].sum())
    lo_train, hi_train = _nan_quantiles(np.moveaxis(boot[0], 0, -1), (2.5, 97.5))
    lo_gen, hi_gen = _nan_quantiles(np.moveaxis(boot[1], 0, -1), (2.5, 97.5))
    abstain_train, abstain_gen = abstain_rate(*train.T), abstain_rate(*gen.T)
    out["per_occupation"] = [
        {
            "occupation": occupation,
            "n_female_train": int(train[i, 0]),
            "n_male_train": int(train[i, 1]),
            "n_abstain_train": int(train[i, 2]),
            "n_female_gen": int(gen[i, 0]),
            "n_male_gen": int(gen[i, 1]),
            "n_abstain_gen": int(gen[i, 2]),
            "share_train": json_float(share_train[i]),
            "share_train_ci": _interval_pair(lo_train[i], hi_train[i]),
            "share_gen": json_float(share_gen[i]),
            "share_gen_ci": _interval_pair(lo_gen[i], hi_gen[i]),
            "abstain_rate_train": json_float(np.atleast_1d(abstain_train)[i]),
            "abstain_rate_gen": json_float(np.atleast_1d(abstain_gen)[i]),
            "difference": json_float(share_gen[i] - share_train[i]),
        }
        for i, occupation in enumerate(names)
    ]
    return out


def amplification_table(
    train_counts: pl.DataFrame,
    gen_counts: pl.DataFrame,
    *,
    n_boot: int = 1000,
    seed: int = 0,
    confusion: dict[str, float] | None = None,
    correct_train: bool = True,
) -> dict[str, Any]:
    """Amplification of generated images against training images, with bootstrap intervals.

    Args:
        train_counts: ``occupation, n_female, n_male[, n_abstain]`` of the training images (one row
            per occupation, non-negative counts; n_abstain 0 when absent).
        gen_counts: the same for generated images. Occupations are inner-joined by name.
        n_boot: bootstrap replicates (0: no intervals and no noise floor). Images are redrawn within
            each occupation (multinomial over female/male/abstain with the observed n), train and gen
            independently; the null draws as many replicates (:func:`null_shares`).
        seed: seed of ``numpy.random.default_rng`` for the bootstrap; equal seeds give equal results.
        confusion: the instrument's ``{"tpr": .., "fpr": ..}``, taken as exact, or with ``"counts"``
            (:func:`read_confusion`), redrawn in each replicate; adds a ``corrected`` table.
        correct_train: correct the training shares as well as the generated ones (False when the
            training counts come from ground truth rather than from the instrument).

    Returns:
        A JSON-ready dict (python floats; None where undefined), all values fractions:
        ``estimands`` = {"shift": {"estimate", "ci", "p_value", "p_value_is_bound", "n_boot", "kind",
        "n_unclear_majority"}, "gap": {"estimate", "ci", "p_value", "p_value_is_bound", "kind"},
        "a_abs_raw"} (:mod:`biasloop.metrics.estimands`, ``docs/estimands.md``: the headline numbers;
        the shift's p-value is two-sided against the null draws, the gap's is ``p_value_abs``);
        ``aliases`` (:data:`ALIASES`: names not repeated as keys); ``amplification_abs`` and
        ``amplification_dir`` each with ``noise_floor_<s>``, ``excess_<s>``, ``excess_<s>_ci`` (95%)
        and ``p_value_<s>`` with ``p_value_<s>_is_bound`` (``s`` = ``abs``/``dir``;
        :func:`excess_over_noise`, diagnostics); ``shift_to_majority``, ``mad_train``, ``mad_gen``,
        ``pearson``, each with ``<name>_ci`` = [lo, hi] (95% percentile interval); ``n_occupations`` (occupations in the aggregates), ``n_boot``, ``n_images_<side>``
        and ``n_confident_<side>`` (images and confidently labelled images over those occupations,
        side = train/gen); ``per_occupation`` rows (counts,
        shares with intervals, abstain rates, ``difference`` = share_gen - share_train) for every
        matched occupation; ``unmatched`` = {"train_only": [..], "gen_only": [..]}; ``dropped``:
        matched occupations left out of the aggregates because a side has no confident image;
        ``occupations_left_out``: the unmatched and dropped names together (occupations of either
        file that the aggregates do not cover, e.g. one no training caption mentions); and,
        with ``confusion``, ``corrected``: the same aggregates and rows on corrected shares, plus
        ``confusion`` = {"tpr", "fpr", "train_corrected", "uncertainty": "fixed" | "bootstrapped"[,
        "counts"]}; its gap interval also covers the rates' uncertainty when counts are given.

    Raises:
        ValueError: a missing column, a negative or missing count, a repeated occupation, a negative
            ``n_boot``, or ``tpr <= fpr``.
    """
    if n_boot < 0:
        raise ValueError(f"n_boot must be >= 0, got {n_boot}")
    train_counts = _validated_counts(train_counts, "training")
    gen_counts = _validated_counts(gen_counts, "generated")
    train_names, gen_names = set(train_counts["occupation"]), set(gen_counts["occupation"])
    joined = train_counts.join(gen_counts, on="occupation", suffix="_gen").sort("occupation")
    names = joined["occupation"].to_list()
    train = np.stack([joined[f"n_{label}"].to_numpy() for label in LABELS], axis=1).astype(np.int64).reshape(-1, 3)
    gen = np.stack([joined[f"n_{label}_gen"].to_numpy() for label in LABELS], axis=1).astype(np.int64).reshape(-1, 3)
    rng = np.random.default_rng(seed)
    boot = (bootstrap_shares(train, n_boot, rng), bootstrap_shares(gen, n_boot, rng))
    null = null_shares(train, gen, n_boot, rng)
    unmatched = {"train_only": sorted(train_names - gen_names), "gen_only": sorted(gen_names - train_names)}
    return table_from_draws(
        names, train, gen, boot, null, rng=rng, confusion=confusion, correct_train=correct_train, unmatched=unmatched
    )


def _estimand_parts(
    train: np.ndarray,
    gen: np.ndarray,
    keep: np.ndarray,
    phi: np.ndarray | None,
    shares: tuple[np.ndarray, np.ndarray],
    boot: tuple[np.ndarray, np.ndarray],
) -> dict[str, Any]:
    """The gap and the shift's interval over the kept occupations (:mod:`.estimands`): adjusted Wald
    for independent sides, the pair bootstrap with fixed majorities for pairs."""
    if not keep.any():
        return {}
    kept_phi = None if phi is None else phi[keep]
    gap = estimands.gap_from_counts(train[keep], gen[keep], phi=kept_phi)
    if phi is None:
        shift = estimands.shift_interval(train[keep], gen[keep])
        return {
            "gap": {**gap, "kind": estimands.GAP_KIND_INDEPENDENT},
            "shift": {**shift, "kind": estimands.SHIFT_KIND_WALD},
        }
    unclear = estimands.unclear_majority(train[keep])
    lo, hi = estimands.shift_bootstrap_interval(
        shares[0][keep], shares[1][keep], boot[0][:, keep], boot[1][:, keep], unclear
    )
    return {
        "gap": {**gap, "kind": estimands.GAP_KIND_PAIRED},
        "shift": {"lo": lo, "hi": hi, "kind": estimands.SHIFT_KIND_PAIRED, "n_unclear_majority": unclear.sum()},
    }


def table_from_draws(
    names: list[str],
    train: np.ndarray,
    gen: np.ndarray,
    boot: tuple[np.ndarray, np.ndarray],
    null: tuple[np.ndarray, np.ndarray],
    *,
    rng: np.random.Generator,
    confusion: dict[str, Any] | None = None,
    correct_train: bool = True,
    phi: np.ndarray | None = None,
    unmatched: dict[str, list[str]] | None = None,
) -> dict[str, Any]:
    """:func:`amplification_table`'s dict from counts and replicate shares drawn by the caller.

    Args:
        names: occupation names, one per row of the counts.
        train, gen: ``(occupations, 3)`` female/male/abstain counts.
        boot: ``(n_boot, occupations)`` bootstrap shares of each side.
        null: ``(n_boot, occupations)`` shares of each side drawn under the null.
        rng: the generator that drew them; it goes on to draw the confusion rates.
        confusion: ``{"tpr", "fpr"}`` (rates taken as exact) or with ``"counts"`` (held-out counts,
            :func:`read_confusion`: rates redrawn in each replicate); adds ``corrected``.
        correct_train: correct the training side too.
        phi: ``(occupations,)`` within-pair correlations when the two sides are paired, else None.
        unmatched: occupations of one side only (reported, not analysed).
    """
    share_train = np.asarray(share_female(train[:, 0], train[:, 1]), float).reshape(-1)
    share_gen = np.asarray(share_female(gen[:, 0], gen[:, 1]), float).reshape(-1)
    keep = ~(np.isnan(share_train) | np.isnan(share_gen))
    result: dict[str, Any] = {"aliases": dict(ALIASES)}
    result.update(
        _table(
            names,
            train,
            gen,
            (share_train, share_gen),
            boot,
            null,
            keep,
            _estimand_parts(train, gen, keep, phi, (share_train, share_gen), boot),
        )
    )
    result["unmatched"] = unmatched or {"train_only": [], "gen_only": []}
    result["dropped"] = [name for name, kept in zip(names, keep) if not kept]
    result["occupations_left_out"] = sorted(
        {*result["unmatched"]["train_only"], *result["unmatched"]["gen_only"], *result["dropped"]}
    )
    if confusion is not None:
        tpr, fpr = float(confusion["tpr"]), float(confusion["fpr"])
        corrected_share(0.5, tpr, fpr)  # raises unless tpr > fpr
        counts, n_boot = estimands.confusion_counts(confusion), boot[0].shape[0]
        # Each replicate (bootstrap and null alike) is corrected with its own draw of the rates, so the
        # intervals carry the uncertainty of rates measured on a few hundred held-out images.
        tpr_draws, fpr_draws = estimands.confusion_rate_draws(counts, n_boot, rng) if counts and n_boot else (tpr, fpr)
        rates = (np.reshape(tpr_draws, (-1, 1)), np.reshape(fpr_draws, (-1, 1)))

        def correct(shares: np.ndarray, side_corrected: bool = True, replicate_rates: bool = True) -> np.ndarray:
            if not side_corrected:
                return shares
            return estimands.correct_shares(shares, *(rates if replicate_rates else (tpr, fpr)))

        corrected_shares = (correct(share_train, correct_train, False), correct(share_gen, True, False))
        corrected_boot = (correct(boot[0], correct_train), correct(boot[1]))
        parts: dict[str, Any] = {}
        if keep.any():
            difference = corrected_shares[1][keep] - corrected_shares[0][keep]
            variance = (
                np.nanvar(corrected_boot[1][:, keep] - corrected_boot[0][:, keep], axis=0, ddof=1)
                if n_boot > 1
                else np.zeros_like(difference)
            )
            lo, hi = estimands.corrected_gap_interval(
                train[keep], gen[keep], confusion, correct_train, phi=None if phi is None else phi[keep]
            )
            gap = {
                "estimate": np.mean(estimands.debiased_abs(difference, variance)),
                "lo": lo,
                "hi": hi,
                "kind": estimands.GAP_KIND_CORRECTED,
            }
            unclear = estimands.unclear_majority(train[keep], rates=(tpr, fpr) if correct_train else None)
            shift_lo, shift_hi = estimands.shift_bootstrap_interval(
                corrected_shares[0][keep],
                corrected_shares[1][keep],
                corrected_boot[0][:, keep],
                corrected_boot[1][:, keep],
                unclear,
            )
            parts = {
                "gap": gap,
                "shift": {
                    "lo": shift_lo,
                    "hi": shift_hi,
                    "n_unclear_majority": unclear.sum(),
                    "kind": estimands.SHIFT_KIND_PAIRED if phi is not None else estimands.SHIFT_KIND_BOOTSTRAP,
                },
            }
        corrected = _table(
            names,
            train,
            gen,
            corrected_shares,
            corrected_boot,
            (correct(null[0], correct_train), correct(null[1])),
            keep,
            parts,
        )
        corrected["occupations_left_out"] = result["occupations_left_out"]
        corrected["confusion"] = {
            "tpr": tpr,
            "fpr": fpr,
            "train_corrected": bool(correct_train),
            "uncertainty": "bootstrapped" if counts and n_boot else "fixed",
        }
        if counts:
            corrected["confusion"]["counts"] = counts
        result["corrected"] = corrected
    return result


def read_confusion(path: str | Path) -> dict[str, Any] | None:
    """The instrument's ``{"tpr", "fpr"}`` from its metrics file, with ``"counts"`` (its held-out
    ``confusion`` counts, :func:`biasloop.metrics.estimands.confusion_counts`) when the file has them, so
    that :func:`amplification_table` redraws the rates in each replicate; None when unknown or unusable."""
    metrics = json.loads(Path(path).read_text())
    tpr, fpr = metrics.get("tpr"), metrics.get("fpr")
    if tpr is None or fpr is None or tpr <= fpr:
        log.warning("instrument confusion rates unknown or unusable (tpr=%s, fpr=%s): no correction", tpr, fpr)
        return None
    confusion: dict[str, Any] = {"tpr": float(tpr), "fpr": float(fpr)}
    counts = estimands.confusion_counts({"counts": metrics.get("confusion")})
    if counts is not None:
        confusion["counts"] = counts
    return confusion
