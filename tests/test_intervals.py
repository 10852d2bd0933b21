"""Wilson and bootstrap intervals against hand-computed and published values."""

from __future__ import annotations

import numpy as np
import pytest

from biasloop.metrics.intervals import bootstrap_interval, wilson_interval


def test_wilson_interval_by_hand_and_published_values() -> None:
    # 6 of 12: p = 1/2, centre 1/2, half-width z sqrt(1/48 + z^2/576) / (1 + z^2/12) = 0.24622
    assert wilson_interval(6, 12) == pytest.approx([0.25378, 0.74622], abs=1e-5)
    # statsmodels.stats.proportion.proportion_confint(k, n, method="wilson"): 0/10 and 1/12
    assert wilson_interval(0, 10) == pytest.approx([0.0, 0.27753], abs=1e-5)
    assert wilson_interval(1, 12) == pytest.approx([0.01487, 0.35388], abs=1e-5)
    assert wilson_interval(10, 10)[1] == pytest.approx(1.0) and wilson_interval(0, 0) is None
    with pytest.raises(ValueError):
        wilson_interval(3, 2)


def test_wilson_interval_agrees_with_statsmodels_when_installed() -> None:
    proportion = pytest.importorskip("statsmodels.stats.proportion")
    for k, n in ((0, 5), (3, 7), (12, 20), (99, 100)):
        assert wilson_interval(k, n) == pytest.approx(list(proportion.proportion_confint(k, n, method="wilson")))


def test_bootstrap_interval_of_a_mean() -> None:
    values = np.r_[np.zeros(50), np.ones(50)]
    lo, hi = bootstrap_interval(lambda i: values[i].mean(), len(values), 2000, np.random.default_rng(0))
    assert lo == pytest.approx(0.5 - 1.96 * 0.05, abs=0.02) and hi == pytest.approx(0.5 + 1.96 * 0.05, abs=0.02)
    assert bootstrap_interval(lambda i: values[i].mean(), len(values), 0, np.random.default_rng(0)) is None
    assert bootstrap_interval(lambda i: None, len(values), 10, np.random.default_rng(0)) is None
