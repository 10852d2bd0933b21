"""Seed-level inference of studies, by hand: t intervals, Holm's steps and levels, TOST verdicts.

With 3 seeds (2 degrees of freedom) Student's t has closed forms, so the expected numbers here do not
come from scipy or statsmodels: two-sided p = 1 - |t| / sqrt(t^2 + 2), one-sided p = (1 - t / sqrt(t^2 +
2)) / 2, and the two-sided level-a quantile t = (1 - a) * sqrt(2 / (1 - (1 - a)^2)).
"""

from __future__ import annotations

import math

import pytest

from biasloop.study.inference import adjust_family, holm_levels, primary_record, t_interval, tost_p


def p_two_sided_2df(t: float) -> float:
    return 1 - abs(t) / math.sqrt(t * t + 2)


def p_upper_2df(t: float) -> float:
    """P(T > t), 2 df."""
    return (1 - t / math.sqrt(t * t + 2)) / 2


def quantile_2df(a: float) -> float:
    """t with P(|T| > t) = a, 2 df."""
    return (1 - a) * math.sqrt(2 / (1 - (1 - a) ** 2))


SE = 0.01 / math.sqrt(3)  # values spaced 0.01 apart: sd 0.01


def test_t_interval_by_hand() -> None:
    record = t_interval([0.01, 0.02, 0.03], alpha=0.05)
    assert record["estimate"] == pytest.approx(0.02) and record["sd"] == pytest.approx(0.01) and record["n"] == 3
    half = quantile_2df(0.05) * SE
    assert quantile_2df(0.05) == pytest.approx(4.302652729911275)
    assert record["ci"] == pytest.approx([0.02 - half, 0.02 + half])
    assert record["p"] == pytest.approx(p_two_sided_2df(0.02 / SE)) == pytest.approx(0.0741799, abs=1e-7)
    assert t_interval([0.5], 0.05)["ci"] is None and t_interval([0.5], 0.05)["p"] is None
    assert t_interval([], 0.05)["estimate"] is None


def test_holm_steps_and_levels_by_hand() -> None:
    # sorted: 0.005 (step 1 at 0.05/4 = 0.0125: reject), 0.01 (step 2 at 0.05/3: reject),
    # 0.03 (step 3 at 0.05/2 = 0.025: stop), 0.04 (not rejected; decided at the stopping level 0.025)
    holm = holm_levels([0.01, 0.04, 0.03, 0.005], alpha=0.05)
    assert holm["reject"] == [True, False, False, True]
    # adjusted: 4 * 0.005 = 0.02; max(0.02, 3 * 0.01) = 0.03; max(0.03, 2 * 0.03) = 0.06; max(0.06, 0.04) = 0.06
    assert holm["p_adjusted"] == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm["alpha_per_test"] == pytest.approx([0.05 / 3, 0.025, 0.025, 0.0125])
    everything = holm_levels([0.001, 0.002], alpha=0.05)
    assert everything["reject"] == [True, True] and everything["alpha_per_test"] == pytest.approx([0.025, 0.05])
    assert holm_levels([], 0.05) == {"reject": [], "p_adjusted": [], "alpha_per_test": []}


def test_tost_and_primary_verdicts_by_hand() -> None:
    values = [0.01, 0.02, 0.03]  # mean 0.02, not distinguishable from 0 (p 0.074)
    # margin 0.05: lower test t = 0.07 / SE, upper test t = -0.03 / SE; TOST p = the larger one-sided p
    expected = max(p_upper_2df(0.07 / SE), p_upper_2df(0.03 / SE))
    assert tost_p(values, 0.05) == pytest.approx(expected) == pytest.approx(0.017549, abs=1e-6)
    assert primary_record(values, 0.05, 0.05)["verdict"] == "equivalent within ±0.05"
    # margin 0.03: the upper test has t = -0.01 / SE, p 0.1127: neither an effect nor equivalent
    narrow = primary_record(values, 0.05, 0.03)
    assert narrow["tost_p"] == pytest.approx(p_upper_2df(0.01 / SE)) and narrow["verdict"] == "not resolved"
    # no margin declared: a non-significant result is never "no effect"
    plain = primary_record(values, 0.05, None)
    assert plain["verdict"] == "not resolved" and plain["tost_p"] is None and plain["adjusted"] is False
    effect = primary_record([0.05, 0.06, 0.07], 0.05, 0.01)
    assert effect["p"] == pytest.approx(p_two_sided_2df(0.06 / SE)) and effect["verdict"] == "effect"
    assert tost_p([0.0, 0.0, 0.0], 0.01) == 0.0  # zero spread: exactly inside the margin


def test_adjusted_intervals_at_the_holm_level_by_hand() -> None:
    # Three secondary intervals of 3 seeds each: p 0.0091 (t = 0.06 / SE), 0.0742 (0.02 / SE), 1 (0).
    family = [
        {**t_interval(v, 0.05), "values": v, "margin": m}
        for v, m in (([0.05, 0.06, 0.07], None), ([0.01, 0.02, 0.03], 0.5), ([-0.01, 0.0, 0.01], None))
    ]
    p = [p_two_sided_2df(0.06 / SE), p_two_sided_2df(0.02 / SE), 1.0]
    assert [r["p"] for r in family] == pytest.approx(p)
    adjust_family(family, alpha=0.05)
    # step 1: 0.0091 <= 0.05 / 3 rejects; step 2: 0.0742 > 0.05 / 2 stops; the rest at 0.025
    assert [r["alpha_per_test"] for r in family] == pytest.approx([0.05 / 3, 0.025, 0.025])
    assert [r["p_adjusted"] for r in family] == pytest.approx([3 * p[0], 2 * p[1], 1.0])
    for record, mean in zip(family, (0.06, 0.02, 0.0)):
        half = quantile_2df(record["alpha_per_test"]) * SE
        assert record["ci"] == pytest.approx([mean - half, mean + half])
        assert record["ci_level"] == pytest.approx(1 - record["alpha_per_test"]) and record["adjusted"] is True
        assert record["family_size"] == 3
    # effect; inside +-0.5 at the adjusted level (half width 6.2 SE); no margin: not resolved
    assert [r["verdict"] for r in family] == ["effect", "equivalent within ±0.5", "not resolved"]
    single = [{**t_interval([0.4], 0.05), "values": [0.4], "margin": None}]
    adjust_family(single, 0.05)
    assert single[0]["verdict"] == "not resolved" and single[0]["family_size"] == 0 and single[0]["ci"] is None
