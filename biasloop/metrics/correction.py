"""Correcting shares for the instrument's misclassification: its held-out confusion counts, the rates
drawn per bootstrap replicate, the corrected shares ``(F_obs - fpr) / (tpr - fpr)`` and the corrected
gap's interval (derivation in ``docs/estimands.md``). Fractions throughout.

References: Brown, Cai & DasGupta (2001), Interval estimation for a binomial proportion, Stat Sci
16:101-133 (the Jeffreys beta); Newcombe (1998), Stat Med 17:873-890; Sidak (1967), JASA 62:626-633.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from biasloop.metrics.estimands import (
    correct_shares,
    gap_interval,
    newcombe_difference_interval,
    sidak_alpha,
    wilson_interval,
)


def confusion_counts(confusion: dict[str, Any] | None) -> dict[str, int] | None:
    """The held-out counts ``{"female_as_female", "female_as_male", "male_as_female", "male_as_male"}``
    of a confusion dict (``confusion["counts"]``), or None when absent (rates then count as exact)."""
    counts = (confusion or {}).get("counts")
    needed = ("female_as_female", "female_as_male", "male_as_female", "male_as_male")
    if not counts or any(counts.get(key) is None for key in needed):
        return None
    return {key: int(counts[key]) for key in needed}


def confusion_rate_draws(
    counts: dict[str, int], n_boot: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """tpr and fpr for each bootstrap replicate, drawn from the held-out confusion counts.

    Over confident labels, ``tpr = female_as_female / (female_as_female + female_as_male)`` and
    ``fpr = male_as_female / (male_as_female + male_as_male)``; each replicate draws them from their
    Jeffreys posteriors ``Beta(x + 1/2, n - x + 1/2)`` (Brown, Cai & DasGupta 2001), which, unlike a
    binomial redraw, still varies when no error was seen (tpr = 1 on 271 of 271 women).

    Returns:
        ``(tpr, fpr)``, each of shape ``(n_boot,)``.
    """
    women_right, women_wrong = counts["female_as_female"], counts["female_as_male"]
    men_wrong, men_right = counts["male_as_female"], counts["male_as_male"]
    tpr = rng.beta(women_right + 0.5, women_wrong + 0.5, size=n_boot)
    fpr = rng.beta(men_wrong + 0.5, men_right + 0.5, size=n_boot)
    return tpr, fpr


def corrected_gap_interval(
    train: np.ndarray,
    gen: np.ndarray,
    confusion: dict[str, Any],
    correct_train: bool,
    alpha: float = 0.05,
    phi: Any = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The gap's interval on corrected shares, projected from simultaneous per-occupation intervals.

    The true corrected difference is ``d_obs / (tpr - fpr)`` when both sides are corrected (fpr cancels)
    and ``(F_gen - fpr) / (tpr - fpr) - p_train`` when the training side is ground truth. Each is
    monotone in every argument with the others fixed, so its range over a box of intervals is reached at
    the box's corners. The box: per occupation the Newcombe interval of ``d_obs`` (both corrected) or
    Wilson intervals of ``F_gen`` and ``p_train`` (training from ground truth), and Wilson intervals of tpr
    and fpr from the held-out counts when present (else the rates count as exact), all at the Sidak level
    that makes them hold jointly with ``1 - alpha``.

    Args:
        train, gen: ``(occupations, 3)`` counts (occupations with a confident image on both sides).
        confusion: ``{"tpr", "fpr"}`` and optionally ``"counts"`` (:func:`confusion_counts`).
        correct_train: whether the training shares are corrected too.
        alpha: 1 - joint level.
        phi: within-pair correlations (paired data), or None.

    Returns:
        ``(lo, hi)`` of the gap, fractions.
    """
    train, gen = np.asarray(train, float), np.asarray(gen, float)
    m_train, m_gen = train[..., 0] + train[..., 1], gen[..., 0] + gen[..., 1]
    n_occupations = train.shape[-2]
    counts = confusion_counts(confusion)
    k = (n_occupations if correct_train else 2 * n_occupations) + (2 if counts else 0)
    level = sidak_alpha(alpha, k)
    if counts:
        women = counts["female_as_female"] + counts["female_as_male"]
        men = counts["male_as_female"] + counts["male_as_male"]
        tpr_box = wilson_interval(counts["female_as_female"], women, level)
        fpr_box = wilson_interval(counts["male_as_female"], men, level)
    else:
        tpr_box = (float(confusion["tpr"]),) * 2
        fpr_box = (float(confusion["fpr"]),) * 2
    corners = []
    if correct_train:
        d_box = newcombe_difference_interval(
            gen[..., 0], m_gen, train[..., 0], m_train, level, 0.0 if phi is None else phi
        )
        for d in d_box:
            for tpr in tpr_box:
                for fpr in fpr_box:
                    corners.append(d / (tpr - fpr) if tpr > fpr else np.sign(d) * np.inf)
        informative = tpr_box[0] > fpr_box[1]
    else:
        gen_box, train_box = wilson_interval(gen[..., 0], m_gen, level), wilson_interval(train[..., 0], m_train, level)
        for share_gen in gen_box:
            for tpr in tpr_box:
                for fpr in fpr_box:
                    corrected_gen = correct_shares(share_gen, tpr, fpr)
                    corners.extend(corrected_gen - share_train for share_train in train_box)
        informative = tpr_box[0] > fpr_box[1]
    corners_array = np.stack(corners)
    lo_d = np.clip(np.nanmin(corners_array, axis=0), -1.0, 1.0)
    hi_d = np.clip(np.nanmax(corners_array, axis=0), -1.0, 1.0)
    if not informative:  # the rates' box reaches tpr <= fpr: the corrected difference is unbounded
        lo_d, hi_d = np.full_like(lo_d, -1.0), np.full_like(hi_d, 1.0)
    return gap_interval(lo_d, hi_d)
