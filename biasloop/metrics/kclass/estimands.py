"""The shift and the gap for an attribute with K classes (skin tone, age, gender with an "unclear" class),
extending the binary estimands of :mod:`biasloop.metrics.estimands` class by class so that at K = 2 they
are the binary ones (``docs/attributes.md``, "Estimands for K classes").

With ``p_train(o, k)``, ``p_gen(o, k)`` the true shares of class ``k`` among the confidently labelled
images of occupation ``o`` (each row a distribution over the K classes), ``d(o, k) = p_gen(o, k) -
p_train(o, k)`` and means over occupations:

- ``gap = mean_o TV(o)`` with ``TV(o) = 1/2 sum_k |d(o, k)|``, the total-variation distance between the
  generated and the training distribution (for K = 2, ``TV(o) = |d(o, female)|``, the binary gap). The
  plug-in (``tv_raw``) is biased upwards near 0; the estimate is ``mean_o 1/2 sum_k debiased_abs(d_hat,
  v)``, class by class (:func:`biasloop.metrics.estimands.debiased_abs`); the interval projects
  per-class Newcombe intervals (:func:`gap_from_class_counts`).
- ``shift = mean_o d(o, m_o)``, ``m_o`` the occupation's training majority class (the mean of ``d`` over
  the classes tied for the majority, so that an occupation at parity counts 0 as in the binary
  ``sign(p_train - 1/2) d``), with the binary adjusted Wald interval extended to K classes
  (:func:`shift_from_class_counts`).

All values are fractions. Functions take count arrays ``(..., occupations, K)`` of confident images (a
class per last-axis position, the same order on both sides; abstentions left out), with leading batch
axes for independent tables; every occupation needs a confident image on both sides.

References: Newcombe (1998a), Stat Med 17:873-890 (method 10); Wilson (1927), JASA 22:209-212; Sidak
(1967), JASA 62:626-633; Agresti & Caffo (2000), The American Statistician 54:280-288; Levin, Peres &
Wilmer (2017), *Markov Chains and Mixing Times*, 2nd ed., sect. 4.1 (total variation distance).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy.stats import norm

from biasloop.metrics import estimands

GAP_KIND = "newcombe_per_class_sidak_projection"
SHIFT_KIND = "agresti_caffo_wald_majority_class"


def class_distributions(counts: Any) -> np.ndarray:
    """Per-occupation class distributions ``p(o, k) = n(o, k) / sum_k n(o, k)`` from counts.

    Args:
        counts: ``(..., occupations, K)`` non-negative counts of confidently labelled images.

    Returns:
        Fractions of the same shape, each row summing to 1; nan rows where an occupation has no image.
    """
    counts = np.asarray(counts, float)
    if (counts < 0).any():
        raise ValueError("class counts must be non-negative")
    total = counts.sum(axis=-1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, counts / np.where(total > 0, total, 1.0), np.nan)


def total_variation(p: Any, q: Any) -> np.ndarray:
    """``TV(p, q) = 1/2 sum_k |p_k - q_k|`` over the last axis (a fraction in [0, 1])."""
    return 0.5 * np.sum(np.abs(np.asarray(p, float) - np.asarray(q, float)), axis=-1)


def _checked(train: Any, gen: Any) -> tuple[np.ndarray, np.ndarray]:
    train, gen = np.asarray(train, float), np.asarray(gen, float)
    if train.shape != gen.shape or train.ndim < 2 or train.shape[-1] < 2:
        raise ValueError(
            f"train and gen must be (..., occupations, K >= 2) counts of one shape: {train.shape}, {gen.shape}"
        )
    if (train < 0).any() or (gen < 0).any():
        raise ValueError("class counts must be non-negative")
    if (train.sum(axis=-1) == 0).any() or (gen.sum(axis=-1) == 0).any():
        raise ValueError("every occupation needs a confident image on both sides (drop the others first)")
    return train, gen


def distinct_class_intervals(n_classes: int) -> int:
    """How many per-class intervals of one occupation are distinct events: 1 for K = 2 (the second class's
    difference is minus the first's and its Newcombe interval the mirror image, so both hold or neither),
    else K. The Sidak level of the gap's lower limit is taken over ``occupations * this``."""
    return 1 if n_classes == 2 else int(n_classes)


def gap_from_class_counts(train: Any, gen: Any, alpha: float = 0.05) -> dict[str, np.ndarray]:
    """The gap ``mean_o TV(o)``: raw plug-in, debiased estimate and a conservative 95% interval.

    Per class ``k`` the binary machinery on the collapsed counts "class k against the rest": Newcombe's
    interval of ``d(o, k)`` (:func:`biasloop.metrics.estimands.newcombe_difference_interval`) and the
    folded-normal estimate of ``|d(o, k)|`` with ``v`` the two sides' unbiased binomial variances.

    - lower limit: ``mean_o 1/2 sum_k min_{d in [L_ok, U_ok]} |d|`` over intervals at the Sidak level for
      ``occupations * distinct_class_intervals(K)`` intervals (valid for any correlation of normal
      estimates, Sidak 1967): when all hold, every ``|d(o, k)|`` is at least its interval's nearest point
      to 0, so the gap is at least the limit (the constraint ``sum_k d = 0`` is ignored: conservative);
    - upper limit: the farthest points of the plain ``1 - alpha`` intervals. With ``u_ok`` that point and
      ``h_ok`` about ``z sigma_ok``, ``u_ok - |d_ok| >= sign(d_ok)(d_hat_ok - d_ok) + h_ok``; the sum
      over occupations and classes of the centred terms has sd at most ``sum sigma``, so the limit fails
      with probability at most ``alpha / 2`` (normal approximation), as for the binary gap.

    At K = 2 each class gives the same ``|d|`` and mirrored intervals, so this equals
    :func:`biasloop.metrics.estimands.gap_from_counts` (to rounding; a test checks 1e-12).

    Args:
        train, gen: ``(..., occupations, K)`` confident counts.
        alpha: 1 - confidence level.

    Returns:
        Arrays of shape ``(...)``: ``raw`` (``tv_raw``, the plug-in ``mean_o TV``), ``estimate``, ``lo``,
        ``hi``; and ``tv_raw_per_occupation`` ``(..., occupations)``.
    """
    train, gen = _checked(train, gen)
    m_train, m_gen = train.sum(axis=-1, keepdims=True), gen.sum(axis=-1, keepdims=True)
    difference = gen / m_gen - train / m_train
    variance = estimands.share_variance(train, m_train) + estimands.share_variance(gen, m_gen)
    n_occupations, n_classes = train.shape[-2], train.shape[-1]
    joint_alpha = estimands.sidak_alpha(alpha, n_occupations * distinct_class_intervals(n_classes))
    joint = estimands.newcombe_difference_interval(gen, m_gen, train, m_train, joint_alpha)
    single = estimands.newcombe_difference_interval(gen, m_gen, train, m_train, alpha)
    # gap_interval means over its last axis (the classes): K/2 times that mean is 1/2 sum_k.
    nearest, farthest = estimands.gap_interval(*joint)[0], estimands.gap_interval(*single)[1]
    tv_raw = total_variation(gen / m_gen, train / m_train)
    return {
        "raw": np.mean(tv_raw, axis=-1),
        "estimate": np.mean(0.5 * np.sum(estimands.debiased_abs(difference, variance), axis=-1), axis=-1),
        "lo": np.mean(nearest * n_classes / 2, axis=-1),
        "hi": np.mean(farthest * n_classes / 2, axis=-1),
        "tv_raw_per_occupation": tv_raw,
    }


def majority_weights(shares: Any) -> np.ndarray:
    """Weights ``w(o, k)`` that pick each occupation's majority class: 1 on the class with the largest
    share, ``1/j`` on each of ``j`` classes tied for it (so ``sum_k w (p_gen - p_train)`` is 0 for an
    occupation at parity between two classes, as the binary ``sign(p_train - 1/2)`` is).

    Args:
        shares: ``(..., occupations, K)`` training distributions (or counts: only their order matters).

    Returns:
        Non-negative weights of the same shape, each row summing to 1 (nan rows stay nan).
    """
    shares = np.asarray(shares, float)
    top = shares == np.max(shares, axis=-1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return top / top.sum(axis=-1, keepdims=True)


def _candidates(train: np.ndarray, sign_alpha: float) -> np.ndarray:
    """``(..., occupations, K)``: the classes that may be the true training majority, the observed top
    class and each class ``c`` whose Wilson interval of ``n_top / (n_top + n_c)`` at ``1 - sign_alpha``
    holds 1/2 (for K = 2 the binary rule: the training share's Wilson interval holds 1/2)."""
    top = np.max(train, axis=-1, keepdims=True)
    lo, hi = estimands.wilson_interval(top, top + train, sign_alpha)
    return (train == top) | ((lo <= 0.5) & (hi >= 0.5))


def shift_from_class_counts(
    train: Any, gen: Any, alpha: float = 0.05, sign_alpha: float = 0.05
) -> dict[str, np.ndarray]:
    """The shift ``mean_o d(o, m_o)`` towards each training majority class, with an adjusted Wald interval.

    The binary :func:`biasloop.metrics.estimands.shift_interval` on the collapsed counts "majority class
    against the rest":

    - estimate: ``mean_o sum_k w(o, k) d_hat(o, k)`` with :func:`majority_weights` of the training counts;
    - noise: ``z sqrt(sum_o (v_gen + v_train)) / O``, each side's ``v = p~ (1 - p~) / (m + 2)`` with
      ``p~ = (x + 1) / (m + 2)`` for the majority class's count ``x`` (Agresti & Caffo 2000);
    - unclear majorities: when another class may be the true majority (:func:`_candidates`: the Wilson
      interval of ``n_top / (n_top + n_c)`` holds 1/2), the occupation spans ``[min_c d_hat(o, c),
      max_c d_hat(o, c)]`` over the candidate classes instead of adding ``d_hat(o, m_o)``, and adds the
      largest candidate variance. At K = 2 the candidates are both classes, the span ``[-|d_hat|,
      +|d_hat|]``, and the interval the binary one (to rounding; a test checks 1e-12).

    The interval misses with probability at most ``alpha`` plus, for each occupation declared clear,
    the chance that its true majority is a class the pairwise intervals excluded (at most
    ``sign_alpha / 2`` per class, negligible unless two classes' true shares are within about two
    standard errors).

    Args:
        train, gen: ``(..., occupations, K)`` confident counts.
        alpha: 1 - confidence level.
        sign_alpha: 1 - level of the pairwise intervals that decide whether a majority is clear.

    Returns:
        ``estimate``, ``lo``, ``hi``, ``n_unclear_majority``, arrays of shape ``(...)``.
    """
    train, gen = _checked(train, gen)
    m_train, m_gen = train.sum(axis=-1, keepdims=True), gen.sum(axis=-1, keepdims=True)
    difference = gen / m_gen - train / m_train
    n_occupations = train.shape[-2]
    estimate = np.mean(np.sum(majority_weights(train) * difference, axis=-1), axis=-1)
    adjusted_train, adjusted_gen = (train + 1) / (m_train + 2), (gen + 1) / (m_gen + 2)
    variance = adjusted_train * (1 - adjusted_train) / (m_train + 2) + adjusted_gen * (1 - adjusted_gen) / (m_gen + 2)
    candidates = _candidates(train, sign_alpha)
    unclear = candidates.sum(axis=-1) > 1
    lowest = np.min(np.where(candidates, difference, np.inf), axis=-1)
    highest = np.max(np.where(candidates, difference, -np.inf), axis=-1)
    occupation_variance = np.max(np.where(candidates, variance, 0.0), axis=-1)
    half = norm.ppf(1 - alpha / 2) * np.sqrt(np.sum(occupation_variance, axis=-1))
    return {
        "estimate": estimate,
        "lo": (np.sum(lowest, axis=-1) - half) / n_occupations,
        "hi": (np.sum(highest, axis=-1) + half) / n_occupations,
        "n_unclear_majority": unclear.sum(axis=-1),
    }
