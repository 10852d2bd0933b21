"""The K x K confusion correction: counts, the simplex projection, the inversion (hand-computed), K = 2
against the binary correction, and the interval's coverage of the true distribution."""

from __future__ import annotations

import numpy as np
import pytest

from biasloop.metrics.estimands import correct_shares
from biasloop.metrics.kclass.correction import (
    Confusion,
    confusion_draws,
    confusion_matrix,
    correct_distribution,
    corrected_distribution_interval,
    project_to_simplex,
)
from biasloop.models.instrument.rule import confusion_rates

SYMMETRIC = np.array([[0.8, 0.1, 0.1], [0.1, 0.8, 0.1], [0.1, 0.1, 0.8]])  # 0.7 I + 0.1 J
SKEWED = np.array([[0.9, 0.1, 0.0], [0.0, 0.8, 0.2], [0.1, 0.0, 0.9]])


def test_confusion_counts_by_hand() -> None:
    truth = ["a", "a", "a", "a", "b", "b", "b", "c", "c", None]
    labels = ["a", "a", "b", "abstain", "b", "b", "c", "c", "abstain", "a"]
    confusion = confusion_matrix(truth, labels, ("a", "b", "c"))
    assert confusion.counts.tolist() == [[2, 1, 0], [0, 2, 1], [0, 0, 1]]
    assert confusion.abstained.tolist() == [1, 0, 1]
    np.testing.assert_allclose(confusion.rates(), [[2 / 3, 1 / 3, 0], [0, 2 / 3, 1 / 3], [0, 0, 1]])
    summary = confusion.to_dict()
    assert summary["accuracy"] == pytest.approx(5 / 7) and summary["n"] == 9 and summary["n_confident"] == 7
    assert summary["abstain_rate"] == {"a": 0.25, "b": 0.0, "c": 0.5}
    assert summary["confusion"]["a_as_b"] == 1 and summary["confusion"]["c_as_abstain"] == 1
    with pytest.raises(ValueError, match=r"neither classes"):
        confusion_matrix(["a"], ["purple"], ("a", "b"))
    with pytest.raises(ValueError, match="1 true classes but 2"):
        confusion_matrix(["a"], ["a", "b"], ("a", "b"))
    unseen = confusion_matrix(["a", "b"], ["a", "abstain"], ("a", "b"))
    assert unseen.to_dict()["rates"] is None
    with pytest.raises(ValueError, match=r"true class \['b'\]"):
        unseen.rates()


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ([0.5, 0.8, -0.1], [0.35, 0.65, 0.0]),  # rho = 2, theta = (1.3 - 1) / 2 = 0.15
        ([2.0, 0.0, 0.0], [1.0, 0.0, 0.0]),  # theta = 1
        ([1.0, 1.0, 1.0], [1 / 3, 1 / 3, 1 / 3]),  # theta = 2/3
        ([0.2, 0.3, 0.5], [0.2, 0.3, 0.5]),  # already on the simplex
        ([11 / 14, 2 / 7, -1 / 14], [0.75, 0.25, 0.0]),  # theta = 1/28
        ([-1.0, -2.0], [1.0, 0.0]),  # theta = -2
    ],
)
def test_simplex_projection_by_hand(values: list[float], expected: list[float]) -> None:
    np.testing.assert_allclose(project_to_simplex(values), expected, atol=1e-12)


def test_simplex_projection_meets_its_optimality_conditions() -> None:
    """w = max(v - theta, 0) with sum w = 1 characterises the projection (KKT): v - w equals theta on the
    support and v <= theta off it."""
    v = np.random.default_rng(0).normal(scale=2.0, size=(500, 5))
    w = project_to_simplex(v)
    assert np.all(w >= 0) and np.allclose(w.sum(axis=1), 1.0, atol=1e-12)
    for row, projected in zip(v, w):
        support = projected > 0
        theta = (row - projected)[support]
        assert np.ptp(theta) < 1e-12 and np.all(row[~support] <= theta[0] + 1e-12)
    assert np.isnan(project_to_simplex([np.nan, 0.5])).all()


def test_inversion_by_hand() -> None:
    # SYMMETRIC^-1 = (I - 0.1 J) / 0.7, and J q = 1: q_true = (q_obs - 0.1) / 0.7
    np.testing.assert_allclose(correct_distribution([0.5, 0.3, 0.2], SYMMETRIC), [4 / 7, 2 / 7, 1 / 7], atol=1e-12)
    # SKEWED^T (0.5, 0.3, 0.2) = (0.45 + 0.02, 0.05 + 0.24, 0.06 + 0.18) = (0.47, 0.29, 0.24); counts work too
    np.testing.assert_allclose(correct_distribution([47, 29, 24], SKEWED), [0.5, 0.3, 0.2], atol=1e-12)
    # (0.65, 0.3, 0.05) -> (11/14, 2/7, -1/14), off the simplex -> projected to (3/4, 1/4, 0)
    np.testing.assert_allclose(correct_distribution([0.65, 0.3, 0.05], SYMMETRIC), [0.75, 0.25, 0.0], atol=1e-12)
    rows = correct_distribution([[0.5, 0.3, 0.2], [47, 29, 24], [0, 0, 0]], np.stack([SYMMETRIC, SKEWED, SKEWED]))
    np.testing.assert_allclose(rows[:2], [[4 / 7, 2 / 7, 1 / 7], [0.5, 0.3, 0.2]], atol=1e-12)
    assert np.isnan(rows[2]).all()  # nothing observed
    assert np.isnan(correct_distribution([0.6, 0.4], [[0.5, 0.5], [0.5, 0.5]])).all()  # singular: no correction


def test_two_classes_equal_the_binary_correction() -> None:
    shares = np.linspace(0.0, 1.0, 41)
    for tpr in (0.7, 0.93, 1.0):
        for fpr in (0.0, 0.04, 0.3):
            binary = correct_shares(shares, tpr, fpr)
            rates = np.array([[tpr, 1 - tpr], [fpr, 1 - fpr]])
            kclass = correct_distribution(np.column_stack([shares, 1 - shares]), rates)
            inside = ((shares - fpr) / (tpr - fpr) >= 0) & ((shares - fpr) / (tpr - fpr) <= 1)
            assert inside.sum() > 5
            np.testing.assert_allclose(kclass[inside, 0], binary[inside], rtol=0, atol=1e-12)
            np.testing.assert_allclose(kclass[:, 0], binary, rtol=0, atol=1e-12)  # the clip is the projection
            np.testing.assert_allclose(kclass[:, 1], 1 - binary, rtol=0, atol=1e-12)


def test_confusion_rows_are_drawn_from_their_jeffreys_posteriors() -> None:
    draws = confusion_draws(np.array([[90, 10], [5, 95]]), 40_000, np.random.default_rng(0))
    assert draws.shape == (40_000, 2, 2) and np.allclose(draws.sum(axis=2), 1.0)
    a, b = 90.5, 10.5  # K = 2: the binary code's Beta(x + 1/2, n - x + 1/2)
    assert draws[:, 0, 0].mean() == pytest.approx(a / (a + b), abs=2e-3)
    assert draws[:, 0, 0].std() == pytest.approx(np.sqrt(a * b / ((a + b) ** 2 * (a + b + 1))), rel=0.03)
    assert draws[:, 1, 0].mean() == pytest.approx(5.5 / 101, abs=2e-3)


def test_interval_shapes_point_and_empty_rows() -> None:
    confusion = Confusion(("a", "b", "c"), np.round(SKEWED * 200).astype(int) + 1, np.zeros(3, int))
    result = corrected_distribution_interval([[47, 29, 24], [0, 0, 0]], confusion, 500, np.random.default_rng(1))
    assert result["point"].shape == result["lower"].shape == result["upper"].shape == (2, 3)
    np.testing.assert_allclose(result["point"][0], correct_distribution([47, 29, 24], confusion.rates()))
    assert np.all(result["lower"][0] <= result["point"][0]) and np.all(result["point"][0] <= result["upper"][0])
    assert np.isnan(result["point"][1]).all() and np.isnan(result["lower"][1]).all()
    assert result["undefined_share"] == 0.0
    single = corrected_distribution_interval([47, 29, 24], confusion, 500, np.random.default_rng(1))
    assert single["lower"].shape == (3,)
    with pytest.raises(ValueError, match="observed has 2 classes"):
        corrected_distribution_interval([1, 2], confusion, 10, np.random.default_rng(0))


@pytest.mark.parametrize("truth", [[0.5, 0.3, 0.2], [0.7, 0.28, 0.02]])
def test_interval_covers_the_true_distribution(truth: list[float]) -> None:
    """K = 3, a known confusion: 200 labelled images per class, 300 observed; each component's 95% interval
    covers the true share in at least 90% of 200 simulated studies."""
    q = np.array(truth)
    rates = np.array([[0.85, 0.1, 0.05], [0.1, 0.8, 0.1], [0.05, 0.15, 0.8]])
    rng = np.random.default_rng(7)
    hits = np.zeros(3)
    reps = 200
    for _ in range(reps):
        counts = np.stack([rng.multinomial(200, row) for row in rates])
        true_counts = rng.multinomial(300, q)
        observed = sum(rng.multinomial(n, row) for n, row in zip(true_counts, rates))
        result = corrected_distribution_interval(
            observed, Confusion(("a", "b", "c"), counts, np.zeros(3, int)), 1000, rng
        )
        hits += (result["lower"] <= q) & (q <= result["upper"])
    assert np.all(hits / reps >= 0.90), hits / reps


def test_a_smaller_labelled_set_widens_the_interval() -> None:
    """The confusion matrix's own uncertainty is in the interval: same observed counts, same rates, fewer
    labelled images -> wider."""
    observed = [470, 290, 240]
    widths = []
    for per_class in (20, 20_000):
        confusion = Confusion(("a", "b", "c"), np.round(SKEWED * per_class).astype(int), np.zeros(3, int))
        result = corrected_distribution_interval(observed, confusion, 2000, np.random.default_rng(3))
        np.testing.assert_allclose(result["point"], [0.5, 0.3, 0.2], atol=1e-12)
        widths.append(result["upper"] - result["lower"])
    assert np.all(widths[0] > 1.5 * widths[1]), widths


def test_the_binary_confusion_dict_round_trips() -> None:
    """The binary instrument's ``confusion`` counts are the K = 2 confusion's label counts."""
    truth = ["female"] * 4 + ["male"] * 4 + [None]
    labels = ["female", "female", "male", "abstain", "male", "male", "female", "abstain", "female"]
    binary = confusion_rates(truth, labels)
    confusion = confusion_matrix(truth, labels, ("female", "male"))
    assert confusion.label_counts() == binary["confusion"]
    again = Confusion.from_label_counts(binary["confusion"], ("female", "male"))
    assert again.counts.tolist() == [[2, 1], [1, 2]] and again.abstained.tolist() == [1, 1]
    rates = confusion.rates()
    assert (rates[0, 0], rates[1, 0]) == (binary["tpr"], binary["fpr"])
    assert confusion.to_dict()["accuracy"] == binary["accuracy"] and confusion.to_dict()["n"] == binary["n"]
