"""MaxSkew@k and NDKL (Geyik, Ambler & Kenthapadi 2019) of a ranked list of K-class labels against the
training class distribution of an occupation.

The formulas live in :mod:`biasloop.metrics.downstream` (:func:`~biasloop.metrics.downstream.max_skew_at_k`,
:func:`~biasloop.metrics.downstream.ndkl`), which already take any group set; this module supplies the
desired distribution from training counts and leaves out labels that are not classes (abstentions):

- ``MaxSkew@k = max_k ln(p_k(top-k) / p_train(k))``, in nats (0 when the top k match the training
  distribution; a class absent from the top k has skew -inf and is never the maximum);
- ``NDKL = (1/Z) sum_{i=1..n} KL(D_top-i || p_train) / log2(i + 1)``, ``Z = sum_i 1 / log2(i + 1)``, in nats.

Reference: Geyik, S. C., Ambler, S. & Kenthapadi, K. (2019), Fairness-Aware Ranking in Search &
Recommendation Systems with Application to LinkedIn Talent Search, KDD '19, 2221-2231.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from biasloop.metrics.downstream import max_skew_at_k, ndkl


def training_distribution(train_counts: Any, classes: Sequence[str]) -> np.ndarray:
    """The desired distribution ``n_k / sum n`` from one occupation's training counts (class order).

    Raises:
        ValueError: a class with no training image (its skew would divide by 0), naming it, or a shape
            that does not match ``classes``.
    """
    counts = np.asarray(train_counts, float)
    if counts.shape != (len(classes),) or (counts < 0).any():
        raise ValueError(f"expected {len(classes)} non-negative counts for classes {list(classes)}, got {counts}")
    absent = [name for name, count in zip(classes, counts) if count == 0]
    if absent:
        raise ValueError(f"class(es) {absent} have no training image: skew against a share of 0 is undefined")
    return counts / counts.sum()


def skew_against_training(
    ranked_labels: Sequence[str],
    train_counts: Any,
    classes: Sequence[str],
    k: int,
    ignore: Sequence[str] = ("abstain",),
) -> dict[str, Any]:
    """MaxSkew@k and NDKL of a ranking of class labels against one occupation's training distribution.

    Args:
        ranked_labels: the class of each ranked item, best first (e.g. the images retrieved for the
            occupation's neutral query, labelled by the instrument).
        train_counts: ``(K,)`` training counts of the occupation, in ``classes`` order.
        classes: the attribute's classes.
        k: MaxSkew's cut-off (all items when fewer are left).
        ignore: labels left out before ranking (abstentions); any other label outside ``classes`` raises.

    Returns:
        ``{"max_skew": .., "ndkl": .., "k_effective": .., "n_ignored": ..}`` (nats; counts).
    """
    kept = [label for label in ranked_labels if label not in set(ignore)]
    desired = training_distribution(train_counts, classes)
    return {
        "max_skew": max_skew_at_k(kept, k, desired=desired, group_set=tuple(classes)),
        "ndkl": ndkl(kept, desired=desired, group_set=tuple(classes)),
        "k_effective": min(k, len(kept)),
        "n_ignored": len(ranked_labels) - len(kept),
    }
