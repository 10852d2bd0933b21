"""Seed-level inference for studies: t intervals, Holm-adjusted intervals, and TOST equivalence verdicts.

Every interval of a study is an interval for the mean of seed-level values ``x_1 .. x_n`` (one value per
replicate seed: a cell's metric, a per-seed slope, or a per-seed difference between two cells), so one
construction serves levels, slopes and contrasts (docs/studies.md):

- ``t`` interval at level ``1 - a``: ``mean +- t_{1 - a/2, n-1} * sd / sqrt(n)``; the two-sided one-sample t
  test of ``mean = 0`` has p below ``a`` exactly when that interval excludes 0.
- **Primary endpoints** (pre-declared in ``params.yaml``): ``a = alpha``, unadjusted.
- **Every other interval**: Holm (1979) over the study's family of secondary intervals. The p-values go
  through ``statsmodels.stats.multitest.multipletests(method="holm")``; with the p-values sorted
  ascending, step ``i`` (1-based) tests at ``alpha / (m - i + 1)`` and the procedure stops at the first
  step ``k`` that does not reject. A hypothesis rejected at step ``i`` gets its interval at level
  ``1 - alpha / (m - i + 1)``; every hypothesis not rejected gets the level of the stopping step,
  ``1 - alpha / (m - k + 1)``. So an adjusted interval excludes 0 exactly when Holm rejects. These are
  decision-compatible intervals, not simultaneous ones: the Bonferroni intervals (level ``1 - alpha/m``)
  contain them; compatible simultaneous bounds for Holm are Strassburger & Bretz (2008).
- **Equivalence** (Schuirmann 1987, two one-sided tests): with a margin ``m`` declared in params, the TOST
  p-value is ``statsmodels.stats.weightstats.ttost_paired(x, 0, -m, m)`` (the one-sample TOST of the
  seed-level values; for a contrast they already are the paired differences). A primary endpoint is
  ``equivalent within +-m`` when that p is below ``alpha`` (the ``1 - 2 alpha`` interval inside
  ``(-m, m)``); an adjusted interval is when the adjusted interval itself lies inside ``(-m, m)`` (TOST
  at half its per-test level: conservative). Without a margin a non-significant result is ``not resolved``,
  never "no effect".
- **Zero in every seed** (:data:`ZERO_EVERY_SEED`): every seed's value exactly 0.0, e.g. a contrast between
  two loop variants at generation 0, which share their runs through DVC's run cache. There is no sampling
  variation, so no test: the record keeps its ``[0, 0]`` interval, gets no p-value and stays out of the
  Holm family (counting it would make every other adjusted interval wider for nothing).

References: S. Holm, "A simple sequentially rejective multiple test procedure", Scand. J. Statist. 6
(1979) 65-70; K. Strassburger, F. Bretz, "Compatible simultaneous lower confidence bounds for the Holm
procedure and other Bonferroni-based closed tests", Stat. Med. 27 (2008) 4914-4927; D. J. Schuirmann, "A
comparison of the two one-sided tests procedure and the power approach for assessing the equivalence of
average bioavailability", J. Pharmacokinet. Biopharm. 15 (1987) 657-680.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import numpy as np

EFFECT = "effect"
NOT_RESOLVED = "not resolved"
ZERO_EVERY_SEED = "zero in every seed"


def zero_in_every_seed(values: Iterable[float]) -> bool:
    """True for two or more seed-level values that are all exactly 0.0 (nothing to test; module docstring)."""
    x = [float(v) for v in values]
    return len(x) >= 2 and all(v == 0.0 for v in x)


def equivalent_label(margin: float) -> str:
    """``"equivalent within ±0.02"``: the verdict string for a margin (a fraction, like the estimate)."""
    return f"equivalent within ±{margin:g}"


def t_interval(values: Iterable[float], alpha: float = 0.05) -> dict[str, Any]:
    """Mean of seed-level values with a two-sided ``1 - alpha`` t interval and the t test of mean 0.

    Args:
        values: one value per seed (fractions, slopes or differences; any unit).
        alpha: two-sided level; the interval covers ``1 - alpha``.

    Returns:
        ``{"estimate", "sd", "n", "se", "ci", "ci_level", "p"}``; ``sd``, ``se``, ``ci`` and ``p`` are None
        for fewer than 2 values. A zero SD gives ``p`` 0 (or 1 for a zero mean) and a zero-width interval.
    """
    from scipy import stats

    x = np.asarray([float(v) for v in values], dtype=float)
    n = len(x)
    if n == 0:
        return {"estimate": None, "sd": None, "n": 0, "se": None, "ci": None, "ci_level": 1 - alpha, "p": None}
    mean = float(x.mean())
    if n < 2:
        return {"estimate": mean, "sd": None, "n": 1, "se": None, "ci": None, "ci_level": 1 - alpha, "p": None}
    sd = float(x.std(ddof=1))
    se = sd / math.sqrt(n)
    half = float(stats.t.ppf(1 - alpha / 2, n - 1)) * se
    if se > 0:
        p = float(2 * stats.t.sf(abs(mean) / se, n - 1))
    else:
        p = 1.0 if mean == 0 else 0.0
    return {
        "estimate": mean,
        "sd": sd,
        "n": n,
        "se": se,
        "ci": [mean - half, mean + half],
        "ci_level": 1 - alpha,
        "p": p,
    }


def tost_p(values: Iterable[float], margin: float) -> float | None:
    """TOST p-value of ``-margin < mean < margin`` for seed-level values (None for fewer than 2 values).

    ``statsmodels.stats.weightstats.ttost_paired(x, zeros, -margin, margin)``: the larger of the two
    one-sided t tests' p-values, df ``n - 1``.
    """
    from statsmodels.stats.weightstats import ttost_paired

    x = np.asarray([float(v) for v in values], dtype=float)
    if len(x) < 2:
        return None
    if float(x.std(ddof=1)) == 0.0:  # statsmodels divides by the SD; the limit is exact
        return 0.0 if -margin < float(x.mean()) < margin else 1.0
    return float(ttost_paired(x, np.zeros_like(x), -margin, margin)[0])


def holm_levels(p_values: list[float], alpha: float = 0.05) -> dict[str, list]:
    """Holm's step-down procedure over ``p_values``, with the per-test level of each hypothesis.

    Args:
        p_values: the family's p-values (no None).
        alpha: familywise error rate.

    Returns:
        ``{"reject": [bool], "p_adjusted": [float], "alpha_per_test": [float]}`` in the input order:
        ``reject`` and ``p_adjusted`` from ``multipletests(method="holm")``; ``alpha_per_test`` the level
        at which each hypothesis was decided (see the module docstring): ``alpha / (m - i + 1)`` at the
        step ``i`` that rejected it, or ``alpha / (m - k + 1)`` at the stopping step ``k``.
    """
    from statsmodels.stats.multitest import multipletests

    m = len(p_values)
    if m == 0:
        return {"reject": [], "p_adjusted": [], "alpha_per_test": []}
    p = np.asarray(p_values, dtype=float)
    reject, p_adjusted, _, _ = multipletests(p, alpha=alpha, method="holm")
    order = np.argsort(p, kind="stable")
    step_alpha = alpha / (m - np.arange(m))  # step i (0-based here) tests at alpha / (m - i)
    rejected_sorted = reject[order]
    stop = int(np.argmin(rejected_sorted)) if not rejected_sorted.all() else m
    per_test = np.empty(m)
    for rank, index in enumerate(order):
        per_test[index] = step_alpha[rank] if rank < stop else step_alpha[stop]
    return {
        "reject": [bool(r) for r in reject],
        "p_adjusted": [float(q) for q in p_adjusted],
        "alpha_per_test": [float(a) for a in per_test],
    }


def primary_record(values: list[float], alpha: float, margin: float | None) -> dict[str, Any]:
    """A primary endpoint: plain ``1 - alpha`` t interval, p, TOST p and verdict.

    The verdict is ``effect`` when ``p < alpha``; else ``equivalent within ±m`` when a margin is declared
    and the TOST p is below ``alpha``; else ``not resolved``; ``zero in every seed`` (p None) when every
    value is exactly 0.
    """
    record = t_interval(values, alpha)
    equivalence = None if margin is None else tost_p(values, margin)
    if zero_in_every_seed(values):
        record["p"], equivalence = None, None
        verdict = ZERO_EVERY_SEED
    elif record["p"] is not None and record["p"] < alpha:
        verdict = EFFECT
    elif equivalence is not None and equivalence < alpha:
        verdict = equivalent_label(margin)
    else:
        verdict = NOT_RESOLVED
    return {
        **record,
        "adjusted": False,
        "p_adjusted": None,
        "margin": margin,
        "tost_p": equivalence,
        "verdict": verdict,
        "values": [float(v) for v in values],
    }


def adjust_family(records: list[dict[str, Any]], alpha: float) -> None:
    """Holm-adjust a family of secondary records in place (each from :func:`t_interval` with ``values``).

    Sets ``adjusted`` True, ``p_adjusted``, ``alpha_per_test``, ``ci`` and ``ci_level`` at the per-test
    level, ``family_size``, ``tost_p`` (when ``margin`` is set) and ``verdict``: ``effect`` when Holm
    rejects, ``equivalent within ±m`` when the adjusted interval lies inside ``(-m, m)``, else
    ``not resolved``. Records without a p-value (fewer than 2 seeds) are left out of the family and
    get ``not resolved``; records that are zero in every seed are left out too, with that verdict, their
    ``[0, 0]`` interval and no p-value.
    """
    from scipy import stats

    for record in records:
        if zero_in_every_seed(record.get("values", [])):
            record["p"] = None
            record["zero_in_every_seed"] = True
    tested = [r for r in records if r.get("p") is not None]
    holm = holm_levels([r["p"] for r in tested], alpha)
    for record in records:
        record.update(
            {
                "adjusted": True,
                "p_adjusted": None,
                "alpha_per_test": None,
                "family_size": len(tested),
                "ci": None,
                "verdict": NOT_RESOLVED,
            }
        )
        margin = record.get("margin")
        record["tost_p"] = None if margin is None else tost_p(record["values"], margin)
        if record.pop("zero_in_every_seed", False):
            record.update({"ci": [0.0, 0.0], "tost_p": None, "verdict": ZERO_EVERY_SEED})
    for record, reject, p_adj, level in zip(tested, holm["reject"], holm["p_adjusted"], holm["alpha_per_test"]):
        half = float(stats.t.ppf(1 - level / 2, record["n"] - 1)) * record["se"]
        ci = [record["estimate"] - half, record["estimate"] + half]
        margin = record.get("margin")
        if reject:
            verdict = EFFECT
        elif margin is not None and -margin < ci[0] and ci[1] < margin:
            verdict = equivalent_label(margin)
        else:
            verdict = NOT_RESOLVED
        record.update(
            {"p_adjusted": p_adj, "alpha_per_test": level, "ci": ci, "ci_level": 1 - level, "verdict": verdict}
        )
