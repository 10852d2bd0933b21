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


def test_a_record_zero_in_every_seed_is_not_tested_and_leaves_the_family() -> None:
    # Two loop variants at generation 0 share their runs: their contrast is 0.0 in every seed. Holm over
    # the two real records only: p 0.0091 tested at 0.05 / 2 (not 0.05 / 3), then 0.0742 > 0.05 stops.
    family = [
        {**t_interval(v, 0.05), "values": v, "margin": m}
        for v, m in (([0.05, 0.06, 0.07], None), ([0.01, 0.02, 0.03], None), ([0.0, 0.0, 0.0], 0.02))
    ]
    adjust_family(family, alpha=0.05)
    assert [r["family_size"] for r in family] == [2, 2, 2]
    assert [r["alpha_per_test"] for r in family[:2]] == pytest.approx([0.025, 0.05])
    assert [r["verdict"] for r in family] == ["effect", "not resolved", "zero in every seed"]
    zero = family[2]
    assert zero["p"] is None and zero["p_adjusted"] is None and zero["tost_p"] is None and zero["ci"] == [0.0, 0.0]
    primary = primary_record([0.0, 0.0, 0.0], 0.05, margin=0.02)
    assert primary["verdict"] == "zero in every seed" and primary["p"] is None and primary["tost_p"] is None
    # one zero among real values, or a single zero seed, is an ordinary record
    assert primary_record([0.0, 0.01, -0.01], 0.05, None)["verdict"] == "not resolved"
    assert primary_record([0.0], 0.05, None)["verdict"] == "not resolved"


def test_seed_level_intervals_cover_the_noise_free_values_in_simulation(monkeypatch: pytest.MonkeyPatch) -> None:
    """Coverage of the quantity each interval estimates, not only of 0 under the null.

    A study-like line: 5 seeds, x = 0, 0.4, 0.8, per seed y = 0.1 + 0.07 x + seed effect (sd 0.02) + noise
    (sd 0.015). Over 1,000 simulated studies the slope interval must cover 0.07 and the level interval at
    x = 0.8 cover 0.156; over 300, each Holm-adjusted interval of a 3-member family (true means 0.03, 0.0,
    0.01, seed sd 0.01) its own mean: each at least 95% less 3 standard errors of the coverage estimate."""
    import numpy as np

    from biasloop.study.estimates import ols_slope

    def floor(sims: int) -> float:
        return 0.95 - 3 * math.sqrt(0.95 * 0.05 / sims)

    rng = np.random.default_rng(20261207)
    xs, slope, intercept = [0.0, 0.4, 0.8], 0.07, 0.1
    hits = np.zeros(2)
    for _ in range(1000):
        y = intercept + slope * np.asarray(xs) + rng.normal(0, 0.02, size=(5, 1)) + rng.normal(0, 0.015, (5, 3))
        s = t_interval([ols_slope(xs, row) for row in y], 0.05)["ci"]
        lv = t_interval(y[:, 2], 0.05)["ci"]
        hits += [s[0] <= slope <= s[1], lv[0] <= intercept + slope * 0.8 <= lv[1]]
    assert (hits / 1000 >= floor(1000)).all() and hits[0] / 1000 <= 0.975, hits  # covers, and is not vacuous
    import gc

    monkeypatch.setattr(gc, "collect", lambda *args: 0)  # statsmodels' multipletests collects on every call
    means, covered = np.array([0.03, 0.0, 0.01]), np.zeros(3)
    for _ in range(300):
        family = [
            {**t_interval(v, 0.05), "values": list(v), "margin": None}
            for v in means[:, None] + rng.normal(0, 0.01, (3, 5))
        ]
        adjust_family(family, alpha=0.05)
        covered += [r["ci"][0] <= m <= r["ci"][1] for r, m in zip(family, means)]
    assert (covered / 300 >= floor(300)).all(), covered / 300
