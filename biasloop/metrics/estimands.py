"""The two estimands of an amplification table, with intervals that cover their noise-free values
(DESIGN.md, "What a number means"; derivations and measured coverage in ``docs/estimands.md``).

With ``p_train(o)``, ``p_gen(o)`` the true shares of women among confidently labelled images of occupation
``o``, ``d(o) = p_gen(o) - p_train(o)`` and means over occupations:

- ``shift = mean_o sign(p_train(o) - 1/2) * d(o)``: the signed move towards each occupation's training
  majority. Linear in the shares, so the plug-in is unbiased; its 95% interval is an adjusted Wald
  interval (:func:`shift_interval`); for paired data and on corrected shares (where it carries the
  confusion rates' uncertainty) the percentile bootstrap; its p-value two-sided against the null draws
  (:func:`monte_carlo_p_value`). The headline.
- ``gap = mean_o |d(o)|`` (the paper's A_abs, noise-free). The plug-in ``mean_o |d_hat(o)|`` (kept as
  ``a_abs_raw``) is biased upwards, by about 0.8 sigma per occupation when ``d = 0``. Estimate
  (:func:`debiased_abs`): per occupation the method-of-moments inversion of the folded normal's mean,
  biased by at most 0.12 sigma for ``d >= 0.5 sigma`` (+0.5 sigma at ``d = 0``). Interval
  (:func:`gap_from_counts`): projected from per-occupation intervals for ``d(o)`` (Newcombe's hybrid
  score interval, :func:`newcombe_difference_interval`; :func:`gap_interval`), simultaneous at the Sidak
  level (:func:`sidak_alpha`) for the lower limit, valid by construction; conservative. Its p-value is that of raw A_abs
  against the null draws (the gap is 0 exactly under the null of equal shares).

All values are fractions (shares in [0, 1]); :func:`format_p_value` writes p-values for people.
Functions take arrays with leading batch axes (independent tables) before the occupation axis.
Corrected shares and their gap interval: :mod:`biasloop.metrics.correction`.

References: Newcombe, R. G. (1998a), Interval estimation for the difference between independent
proportions: comparison of eleven methods, Stat Med 17:873-890 (method 10); Newcombe (1998b), Improved
confidence intervals for the difference between binomial proportions based on paired data, Stat Med
17:2635-2650 (method 10); Wilson, E. B. (1927), JASA 22:209-212; Sidak, Z. (1967), JASA 62:626-633;
Leone, Nelson & Nottingham (1961), The folded normal distribution, Technometrics 3:543-550 (its mean);
Tsagris, Beneki & Hassani (2014), On the folded normal distribution, Mathematics 2:12-28; Davison & Hinkley
(1997), *Bootstrap Methods and their Application*, sect. 4.2 (Monte Carlo p-values); Agresti & Caffo
(2000), Simple and effective confidence intervals for proportions and differences of proportions result
from adding two successes and two failures, The American Statistician 54:280-288.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy.stats import norm

# Interval kinds (the ``kind`` of a table's ``estimands.shift`` and ``estimands.gap``).
SHIFT_KIND_WALD = "agresti_caffo_wald"
SHIFT_KIND_PAIRED = "pair_bootstrap_percentile"
SHIFT_KIND_BOOTSTRAP = "percentile_bootstrap"
GAP_KIND_INDEPENDENT = "newcombe_sidak_projection"
GAP_KIND_PAIRED = "newcombe_paired_sidak_projection"
GAP_KIND_CORRECTED = "corrected_sidak_projection"


def wilson_interval(successes: Any, n: Any, alpha: Any = 0.05) -> tuple[np.ndarray, np.ndarray]:
    """Wilson's score interval for a binomial proportion (Wilson 1927), vectorised.

    Args:
        successes, n: counts (broadcastable arrays).
        alpha: 1 - confidence level (scalar or broadcastable).

    Returns:
        ``(lo, hi)``, fractions in [0, 1]; nan where ``n = 0``.
    """
    successes, n = np.asarray(successes, float), np.asarray(n, float)
    z = norm.ppf(1 - np.asarray(alpha, float) / 2)
    safe_n = np.where(n > 0, n, 1.0)
    p = successes / safe_n
    denominator = 1 + z**2 / safe_n
    centre = (p + z**2 / (2 * safe_n)) / denominator
    half = z * np.sqrt(p * (1 - p) / safe_n + z**2 / (4 * safe_n**2)) / denominator
    lo, hi = np.clip(centre - half, 0.0, 1.0), np.clip(centre + half, 0.0, 1.0)
    return np.where(n > 0, lo, np.nan), np.where(n > 0, hi, np.nan)


def newcombe_difference_interval(
    x_gen: Any, n_gen: Any, x_train: Any, n_train: Any, alpha: Any = 0.05, phi: Any = 0.0
) -> tuple[np.ndarray, np.ndarray]:
    """Newcombe's hybrid score interval for ``d = x_gen/n_gen - x_train/n_train``, vectorised.

    With Wilson limits ``(l1, u1)`` of the generated share ``p1`` and ``(l2, u2)`` of the training share
    ``p2`` (each at level ``1 - alpha``), the interval is ``[d - delta, d + epsilon]`` with
    ``delta = sqrt((p1 - l1)^2 - 2 phi (p1 - l1)(u2 - p2) + (u2 - p2)^2)`` and
    ``epsilon = sqrt((u1 - p1)^2 - 2 phi (u1 - p1)(p2 - l2) + (p2 - l2)^2)``: Newcombe (1998a) method 10
    for independent samples (``phi = 0``), Newcombe (1998b) method 10 for paired ones, ``phi`` the
    correlation of the pairs' two binary labels.

    Args:
        x_gen, n_gen: women and confident images of the generated side (broadcastable arrays).
        x_train, n_train: the same for the training side.
        alpha: 1 - confidence level of this one interval (use :func:`sidak_alpha` for several).
        phi: within-pair correlation in [-1, 1] (0: independent samples).

    Returns:
        ``(lo, hi)`` in [-1, 1]; nan where a side has no confident image.
    """
    n_gen, n_train = np.asarray(n_gen, float), np.asarray(n_train, float)
    p1 = np.asarray(x_gen, float) / np.where(n_gen > 0, n_gen, 1.0)
    p2 = np.asarray(x_train, float) / np.where(n_train > 0, n_train, 1.0)
    l1, u1 = wilson_interval(x_gen, n_gen, alpha)
    l2, u2 = wilson_interval(x_train, n_train, alpha)
    phi = np.asarray(phi, float)
    delta = np.sqrt(np.maximum((p1 - l1) ** 2 - 2 * phi * (p1 - l1) * (u2 - p2) + (u2 - p2) ** 2, 0.0))
    epsilon = np.sqrt(np.maximum((u1 - p1) ** 2 - 2 * phi * (u1 - p1) * (p2 - l2) + (p2 - l2) ** 2, 0.0))
    d = p1 - p2
    return np.clip(d - delta, -1.0, 1.0), np.clip(d + epsilon, -1.0, 1.0)


def sidak_alpha(alpha: float, k: int) -> float:
    """The per-interval alpha that makes ``k`` independent intervals hold jointly with ``1 - alpha``:
    ``1 - (1 - alpha)^(1/k)`` (Sidak 1967; also valid, slightly conservatively, for positively dependent
    intervals)."""
    return 1.0 - (1.0 - alpha) ** (1.0 / max(int(k), 1))


def gap_interval(difference_lo: Any, difference_hi: Any) -> tuple[np.ndarray, np.ndarray]:
    """The gap's interval projected from per-occupation intervals ``[lo(o), hi(o)]`` of ``d(o)``.

    Returns:
        ``(mean_o min_{d in [lo, hi]} |d|, mean_o max_{d in [lo, hi]} |d|)`` over the last axis: when
        every per-occupation interval holds, the true ``mean_o |d(o)|`` lies between the two, so
        simultaneous per-occupation intervals at level 1 - alpha give a gap interval of at least that level.
    """
    lo, hi = np.asarray(difference_lo, float), np.asarray(difference_hi, float)
    nearest = np.where((lo <= 0) & (hi >= 0), 0.0, np.minimum(np.abs(lo), np.abs(hi)))
    farthest = np.maximum(np.abs(lo), np.abs(hi))
    return np.mean(nearest, axis=-1), np.mean(farthest, axis=-1)


def folded_normal_mean(delta: Any) -> np.ndarray:
    """``E|X|`` for ``X ~ N(delta, 1)``: ``sqrt(2/pi) exp(-delta^2/2) + delta (1 - 2 Phi(-delta))``
    (the folded normal's mean; Leone, Nelson & Nottingham 1961)."""
    delta = np.asarray(delta, float)
    return np.sqrt(2 / np.pi) * np.exp(-(delta**2) / 2) + delta * (1 - 2 * norm.cdf(-delta))


# folded_normal_mean on a grid, inverted by interpolation (it increases from sqrt(2/pi) at 0 and equals
# its argument to 1e-15 beyond 8).
_FOLDED_GRID = np.linspace(0.0, 8.0, 4001)
_FOLDED_MEAN = folded_normal_mean(_FOLDED_GRID)


def debiased_abs(difference: Any, variance: Any) -> np.ndarray:
    """Per-occupation estimate of ``|d|`` from ``d_hat`` with less upward bias than ``|d_hat|``.

    The method-of-moments estimate under ``d_hat ~ N(d, v)``: the ``delta >= 0`` whose folded-normal mean
    ``sqrt(v) * folded_normal_mean(delta / sqrt(v))`` equals ``|d_hat|`` (0 when ``|d_hat|`` is below
    ``sqrt(2 v / pi)``, the mean at ``d = 0``). No estimator of ``|d|`` is unbiased everywhere; per
    occupation, in units of ``sigma = sqrt(v)``, this one's bias is +0.50 at ``d = 0``, +0.12 at 0.5, -0.06
    at 1, -0.08 at 2 and 0.00 at 4, against +0.80, +0.40, +0.17, +0.02, 0.00 for ``|d_hat|`` and +0.34,
    -0.06, -0.27, -0.31, -0.14 for the positive-part ``sqrt(max(d_hat^2 - v, 0))`` (normal simulation;
    the measured bias of the gap is in ``docs/estimands.md``).

    Args:
        difference: ``d_hat`` per occupation.
        variance: ``v``, its estimated variance (same shape; 0 gives ``|d_hat|``).

    Returns:
        Non-negative values of the same shape (nan stays nan).
    """
    difference, variance = np.asarray(difference, float), np.asarray(variance, float)
    sigma = np.sqrt(np.maximum(variance, 0.0))
    positive = sigma > 0
    ratio = np.abs(difference) / np.where(positive, sigma, 1.0)
    delta = np.where(ratio >= _FOLDED_MEAN[-1], ratio, np.interp(ratio, _FOLDED_MEAN, _FOLDED_GRID, left=0.0))
    return np.where(positive, sigma * delta, np.abs(difference))


def share_variance(women: Any, confident: Any) -> np.ndarray:
    """Unbiased estimate of ``Var(x / m)`` for ``x ~ Binomial(m, p)``: ``p_hat (1 - p_hat) / (m - 1)``
    (0 when ``m <= 1``, where ``p_hat`` is 0 or 1)."""
    women, confident = np.asarray(women, float), np.asarray(confident, float)
    p = women / np.where(confident > 0, confident, 1.0)
    return p * (1 - p) / np.maximum(confident - 1, 1.0)


def gap_from_counts(train: np.ndarray, gen: np.ndarray, alpha: float = 0.05, phi: Any = None) -> dict[str, np.ndarray]:
    """The gap ``mean_o |p_gen(o) - p_train(o)|``: raw plug-in, debiased estimate and interval.

    The interval's lower limit is the :func:`gap_interval` projection of Newcombe intervals at the Sidak
    level (``sidak_alpha(alpha, occupations)``): at ``d = 0`` everywhere it is 0 only when every
    per-occupation interval holds 0, so they must hold jointly. Its upper limit projects the plain
    ``1 - alpha`` Newcombe intervals: with ``u(o)`` their largest ``|d|``,
    ``u(o) - |d(o)| >= sign(d(o)) (d_hat(o) - d(o)) + h(o)`` with ``h(o)`` about ``z sigma(o)``, so
    ``sum_o (u(o) - |d(o)|)`` falls below 0 only if a sum of independent centred terms with sd
    ``sqrt(sum sigma^2) <= sum sigma`` falls below ``-z sum sigma``: probability at most ``alpha / 2``
    (normal approximation), with fewer than the Sidak level's nine extra points of width at 80 images.

    Args:
        train, gen: ``(..., occupations, 3)`` female/male/abstain counts; every occupation needs a
            confident image on both sides (drop the others first).
        alpha: 1 - confidence level.
        phi: ``(..., occupations)`` within-pair correlations for paired data (None: independent sides).

    Returns:
        Arrays of shape ``(...)``: ``raw`` (plug-in A_abs), ``estimate`` (mean of :func:`debiased_abs`
        with ``v`` the sum of the sides' unbiased binomial variances, minus ``2 phi sqrt(v_gen v_train)``
        when paired), ``lo``/``hi`` (the interval above).
    """
    train, gen = np.asarray(train, float), np.asarray(gen, float)
    m_train, m_gen = train[..., 0] + train[..., 1], gen[..., 0] + gen[..., 1]
    difference = gen[..., 0] / m_gen - train[..., 0] / m_train
    v_train, v_gen = share_variance(train[..., 0], m_train), share_variance(gen[..., 0], m_gen)
    phi_values = np.zeros_like(difference) if phi is None else np.asarray(phi, float)
    variance = v_train + v_gen - 2 * phi_values * np.sqrt(v_train * v_gen)
    joint = newcombe_difference_interval(
        gen[..., 0], m_gen, train[..., 0], m_train, sidak_alpha(alpha, difference.shape[-1]), phi_values
    )
    single = newcombe_difference_interval(gen[..., 0], m_gen, train[..., 0], m_train, alpha, phi_values)
    lo, hi = gap_interval(*joint)[0], gap_interval(*single)[1]
    return {
        "raw": np.mean(np.abs(difference), axis=-1),
        "estimate": np.mean(debiased_abs(difference, variance), axis=-1),
        "lo": lo,
        "hi": hi,
    }


def shift_interval(
    train: np.ndarray, gen: np.ndarray, alpha: float = 0.05, sign_alpha: float = 0.05
) -> dict[str, np.ndarray]:
    """The shift ``mean_o sign(p_train - 1/2) (p_gen - p_train)`` with an adjusted Wald interval.

    The plug-in is unbiased when every training majority is clear (linear in the shares). The interval:

    - noise: ``z sqrt(sum_o (v_gen + v_train)) / O``, where each side's variance ``v = p~ (1 - p~) / (m + 2)``
      uses the share with one woman and one man added, ``p~ = (x + 1) / (m + 2)`` (Agresti & Caffo 2000,
      The American Statistician 54:280-288). Unlike a bootstrap of the observed counts it does not
      collapse when an occupation shows no woman (or no man) on a side, which made the percentile
      bootstrap cover 0.915 to 0.93 with shares of 0.005 and 80 generated images (``docs/estimands.md``);
    - the training majority: an occupation whose training share's Wilson interval at ``1 - sign_alpha``
      contains 1/2 may lean either way, so it spans ``[-|d_hat|, +|d_hat|]`` instead of adding
      ``sign * d_hat`` (a baker at 42 women of 98 with a generated share of 0.85 would otherwise swing
      the shift by 8 pp on a sign nobody knows). Since ``|d_hat| - |d| >= sign(d) (d_hat - d)``, the
      interval misses with probability at most ``alpha`` plus, for each occupation declared clear, the
      probability that its interval excludes 1/2 on the wrong side (at most ``sign_alpha / 2``, and
      negligible unless its true share is within about two standard errors of 1/2).

    For independent sides only: with paired data a plug-in correlation collapses the variance when a
    side has one or two women, and the pair bootstrap's percentile interval covered better (0.935
    against 0.88 at a 5 pp shift, phi = 0.8), so paired tables report that one.

    Args:
        train, gen: ``(..., occupations, 3)`` female/male/abstain counts (a confident image on both sides
            in every occupation).
        alpha: 1 - confidence level.
        sign_alpha: 1 - level of the per-occupation intervals that decide whether a training majority
            is clear.

    Returns:
        ``estimate``, ``lo``, ``hi`` and ``n_unclear_majority`` (occupations spanned both ways), arrays of
        shape ``(...)``.
    """
    train, gen = np.asarray(train, float), np.asarray(gen, float)
    m_train, m_gen = train[..., 0] + train[..., 1], gen[..., 0] + gen[..., 1]
    p_train, p_gen = train[..., 0] / m_train, gen[..., 0] / m_gen
    n_occupations = p_train.shape[-1]
    sign = np.sign(p_train - 0.5)
    estimate = np.mean(sign * (p_gen - p_train), axis=-1)
    adjusted_train, adjusted_gen = (train[..., 0] + 1) / (m_train + 2), (gen[..., 0] + 1) / (m_gen + 2)
    v_train = adjusted_train * (1 - adjusted_train) / (m_train + 2)
    v_gen = adjusted_gen * (1 - adjusted_gen) / (m_gen + 2)
    unclear = unclear_majority(train, sign_alpha)
    clear_part = np.sum(np.where(unclear, 0.0, sign * (p_gen - p_train)), axis=-1)
    unclear_part = np.sum(np.where(unclear, np.abs(p_gen - p_train), 0.0), axis=-1)
    # Occupations at exact parity in training count 0 in the estimate; unclear ones add their variance.
    counted = np.where(unclear, 1.0, sign**2)
    half = norm.ppf(1 - alpha / 2) * np.sqrt(np.sum(counted * (v_train + v_gen), axis=-1))
    return {
        "estimate": estimate,
        "lo": (clear_part - unclear_part - half) / n_occupations,
        "hi": (clear_part + unclear_part + half) / n_occupations,
        "n_unclear_majority": unclear.sum(axis=-1),
    }


def unclear_majority(
    train: np.ndarray, sign_alpha: float = 0.05, rates: tuple[float, float] | None = None
) -> np.ndarray:
    """Occupations whose training majority is unclear: the training share's Wilson interval at level
    ``1 - sign_alpha`` holds 1/2 (after the correction ``(F - fpr) / (tpr - fpr)`` when ``rates`` =
    ``(tpr, fpr)`` are given).

    Args:
        train: ``(..., occupations, 3)`` female/male/abstain counts of the training side.
        sign_alpha: 1 - level of the intervals.
        rates: the confusion rates when the training shares are corrected, else None.

    Returns:
        ``(..., occupations)`` booleans.
    """
    train = np.asarray(train, float)
    lo, hi = wilson_interval(train[..., 0], train[..., 0] + train[..., 1], sign_alpha)
    if rates is not None:
        lo, hi = correct_shares(lo, *rates), correct_shares(hi, *rates)
    return (lo <= 0.5) & (hi >= 0.5)


def shift_bootstrap_interval(
    share_train: np.ndarray,
    share_gen: np.ndarray,
    boot_train: np.ndarray,
    boot_gen: np.ndarray,
    unclear: np.ndarray,
    alpha: float = 0.05,
) -> tuple[np.ndarray, np.ndarray]:
    """The shift's percentile bootstrap interval with the observed majorities held fixed, and occupations
    whose majority is unclear (:func:`unclear_majority`) counted both ways.

    The plain percentile interval re-estimates every sign in each replicate, which near parity turns
    the shift's distribution bimodal and left it covering 0.45 of tables in the ``parity`` calibration
    setting. Here clear occupations keep ``sign(share_train - 1/2)``, and the lower (upper) limit is a
    percentile of ``(sum_clear s (g* - t*) - (+) sum_unclear |g* - t*|) / O`` (as in :func:`shift_interval`).

    Args:
        share_train, share_gen: ``(..., occupations)`` observed (possibly corrected) shares.
        boot_train, boot_gen: ``(..., n_boot, occupations)`` their bootstrap replicates (pairs, or images,
            corrected with each replicate's confusion rates, as the table draws them).
        unclear: ``(..., occupations)`` booleans.
        alpha: 1 - level.

    Returns:
        ``(lo, hi)`` of shape ``(...)``; nan without replicates.
    """
    sign = np.where(unclear, 0.0, np.sign(np.asarray(share_train, float) - 0.5))[..., None, :]
    difference = np.asarray(boot_gen, float) - np.asarray(boot_train, float)
    clear_part = np.sum(sign * difference, axis=-1)
    unclear_part = np.sum(np.where(unclear[..., None, :], np.abs(difference), 0.0), axis=-1)
    n_occupations = difference.shape[-1]
    if difference.shape[-2] == 0:
        return np.full(clear_part.shape[:-1], np.nan), np.full(clear_part.shape[:-1], np.nan)
    with np.errstate(invalid="ignore"):
        lo = np.nanpercentile((clear_part - unclear_part) / n_occupations, 100 * alpha / 2, axis=-1)
        hi = np.nanpercentile((clear_part + unclear_part) / n_occupations, 100 * (1 - alpha / 2), axis=-1)
    return lo, hi


def monte_carlo_p_value(point: Any, null_replicates: np.ndarray, two_sided: bool) -> tuple[np.ndarray, np.ndarray]:
    """Monte Carlo p-value of a statistic against its null draws (Davison & Hinkley 1997, sect. 4.2).

    Args:
        point: the observed statistic ``T``, shape ``(...)``.
        null_replicates: ``(..., n)`` draws of ``T`` under the null; nan draws are left out.
        two_sided: compare ``|T_null|`` with ``|T|`` (a signed statistic centred near 0 under the null)
            instead of ``T_null`` with ``T`` (one-sided, large values extreme).

    Returns:
        ``(p_value, is_bound)``: ``(1 + #{as extreme}) / (1 + n_valid)`` with ties counted as extreme,
        and whether no draw was as extreme, so that the p-value is the Monte Carlo floor ``1 / (1 + n)``
        and only says ``p <= 1 / (1 + n)``. nan and False where there is no valid draw.
    """
    point = np.asarray(point, dtype=float)
    null_replicates = np.asarray(null_replicates, dtype=float)
    valid = ~np.isnan(null_replicates)
    if two_sided:
        as_extreme = valid & (np.abs(null_replicates) >= np.abs(point)[..., None] - 1e-12)
    else:
        as_extreme = valid & (null_replicates >= point[..., None] - 1e-12)
    count, n_valid = as_extreme.sum(axis=-1), valid.sum(axis=-1)
    has_draws = (n_valid > 0) & ~np.isnan(point)
    p_value = np.where(has_draws, (1 + count) / (1 + n_valid), np.nan)
    return p_value, has_draws & (count == 0)


def format_p_value(p_value: float | None, is_bound: bool = False, with_p: bool = True) -> str:
    """A p-value for people: ``"p = 0.034"``, or ``"p < 0.001"`` when it is a Monte Carlo bound.

    Args:
        p_value: the p-value (None: undefined).
        is_bound: the p-value is the floor ``1 / (1 + n)`` of ``n`` Monte Carlo draws; it is shown as
            ``< b`` with ``b`` the floor rounded up to one significant digit (1/1001 -> 0.001).
        with_p: lead with ``"p "`` (False for a column headed p: ``"< 0.001"``, ``"0.034"``).

    Returns:
        The text (``"n/a"`` for None or nan).
    """
    if p_value is None or (isinstance(p_value, float) and math.isnan(p_value)):
        return "n/a"
    prefix = "p " if with_p else ""
    if is_bound:
        exponent = math.floor(math.log10(p_value))
        bound = math.ceil(round(p_value / 10.0**exponent, 9)) * 10.0**exponent
        return f"{prefix}< {bound:g}"
    text = f"{p_value:.3f}" if p_value >= 0.001 else f"{p_value:.1e}"
    return f"{prefix}= {text}" if with_p else text


def correct_shares(shares: Any, tpr: Any, fpr: Any) -> np.ndarray:
    """``clip((F_obs - fpr) / (tpr - fpr), 0, 1)`` with broadcastable rates; nan where ``tpr <= fpr``."""
    shares, tpr, fpr = np.asarray(shares, float), np.asarray(tpr, float), np.asarray(fpr, float)
    informative = tpr > fpr
    with np.errstate(invalid="ignore", divide="ignore"):
        corrected = np.clip((shares - fpr) / np.where(informative, tpr - fpr, 1.0), 0.0, 1.0)
    return np.where(informative, corrected, np.nan)
