"""Confidence intervals for the downstream figures: Wilson score intervals for proportions, percentile
bootstrap intervals for everything else.

- :func:`wilson_interval`: the Wilson score interval (Wilson 1927) of one proportion as a JSON-ready
  pair, computed by the project's one Wilson formula (:func:`biasloop.metrics.estimands.wilson_interval`);
  it stays inside [0, 1] and is not degenerate at ``k = 0`` or ``k = n``, unlike the Wald interval
  (Brown, Cai and DasGupta 2001).
- :func:`bootstrap_interval`: the 2.5% and 97.5% percentiles of a statistic recomputed on ``n_boot``
  resamples (with replacement) of the scored items, for differences, ratios and corpus scores.

Intervals are ``[lo, hi]`` lists (JSON-ready) or None where the figure itself is undefined.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from biasloop.metrics import estimands


def wilson_interval(successes: int, n: int, alpha: float = 0.05) -> list[float] | None:
    """Wilson score interval of a proportion ``successes / n`` (95% by default); None when ``n`` is 0."""
    if n <= 0:
        return None
    if not 0 <= successes <= n:
        raise ValueError(f"successes must be in [0, {n}], got {successes}")
    lo, hi = estimands.wilson_interval(successes, n, alpha)
    return [float(lo), float(hi)]


def bootstrap_interval(
    statistic: Callable[[np.ndarray], float | None],
    n_items: int,
    n_boot: int,
    rng: np.random.Generator,
    level: float = 0.95,
) -> list[float] | None:
    """Percentile bootstrap interval of ``statistic(indices)`` over resamples of ``range(n_items)``.

    Args:
        statistic: the figure computed on the items at the given indices (None or nan where undefined
            on a resample; those resamples are left out).
        n_items: items to resample (images, captions).
        n_boot: resamples; 0 gives None.
        rng: the random generator (callers seed it from a named stream).
        level: the coverage.

    Returns:
        ``[lo, hi]``, or None with no resample on which the statistic is defined.
    """
    if n_boot <= 0 or n_items <= 0:
        return None
    values = []
    for _ in range(n_boot):
        value = statistic(rng.integers(0, n_items, size=n_items))
        if value is not None and np.isfinite(value):
            values.append(float(value))
    if not values:
        return None
    tail = (1.0 - level) / 2.0
    lo, hi = np.quantile(values, [tail, 1.0 - tail])
    return [float(lo), float(hi)]
