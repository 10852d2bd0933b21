"""Correcting a K-class distribution for the instrument's misclassification (the K x K twin of
:mod:`biasloop.metrics.correction`). Fractions throughout.

On held-out labelled images, :func:`confusion_matrix` counts ``counts[t, j]``: images of true class t
labelled j (confident labels only; abstentions per true class apart). Its row-normalised form
``C[t, j] = P(label j | true t, confident)`` maps the true distribution among confidently labelled
images to the observed one, ``q_obs = C^T q_true``, so :func:`correct_distribution` solves that system
and projects the solution onto the probability simplex (:func:`project_to_simplex`). Like the binary
correction (``tpr`` and ``fpr`` over confident images), the result is the distribution among the images
the instrument labels; the abstain rate of each true class is reported beside it.

With K = 2 and classes (female, male), ``C = [[tpr, 1 - tpr], [fpr, 1 - fpr]]`` and the solution is
``((F - fpr) / (tpr - fpr), ...)``; on the line ``q_f + q_m = 1`` the Euclidean projection onto the simplex
is the clip to [0, 1], so the K-class correction equals
:func:`biasloop.metrics.estimands.correct_shares` wherever ``tpr > fpr``.

:func:`corrected_distribution_interval` carries the confusion matrix's own uncertainty: each replicate
draws every row of C from its Jeffreys posterior ``Dirichlet(counts[t] + 1/2)`` (the binary code's
Jeffreys beta, Brown, Cai & DasGupta 2001, for K = 2) and the observed distribution from
``Dirichlet(observed + 1/2)``, corrects, and the interval is the replicates' percentiles.

References: Duchi, Shalev-Shwartz, Singer & Chandra (2008), "Efficient projections onto the l1-ball for
learning in high dimensions", ICML, Fig. 1 (the sort-based projection); Condat (2016), "Fast projection
onto the simplex and the l1 ball", Math Program 158:575-585, Algorithm 1 (the same); Buonaccorsi (2010),
"Measurement Error", ch. 3 (misclassification correction by the inverted confusion matrix).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from biasloop.core.attributes import ABSTAIN

JEFFREYS = 0.5  # Dirichlet(1/2, ..., 1/2): the Jeffreys prior of a multinomial's probabilities
MAX_CONDITION = 1e12  # a confusion matrix worse conditioned than this counts as singular (no correction)


@dataclasses.dataclass(frozen=True, eq=False)
class Confusion:
    """Held-out confusion counts of a K-class instrument.

    Attributes:
        classes: the K class names (row and column order).
        counts: ``(K, K)`` int, ``counts[t, j]``: images of true class t confidently labelled j.
        abstained: ``(K,)`` int, images of true class t that the instrument abstained on.
    """

    classes: tuple[str, ...]
    counts: np.ndarray
    abstained: np.ndarray

    def rates(self) -> np.ndarray:
        """``(K, K)`` row-normalised confusion ``C[t, j] = counts[t, j] / sum_j counts[t, j]``.

        Raises:
            ValueError: a true class with no confident labelled image (its row is unknown).
        """
        totals = self.counts.sum(axis=1)
        if np.any(totals == 0):
            missing = [c for c, n in zip(self.classes, totals) if n == 0]
            raise ValueError(
                f"no confidently labelled held-out image of true class {missing}: its confusion row is unknown"
            )
        return self.counts / totals[:, None]

    @classmethod
    def from_label_counts(cls, counts: Mapping[str, int], classes: Sequence[str]) -> Confusion:
        """From ``{"<true>_as_<label>": count}`` (the binary instrument's ``confusion`` dict, from
        :func:`biasloop.models.instrument.rule.confusion_rates`, is this form for female/male); a missing
        key counts 0."""
        names = [*classes, ABSTAIN]
        table = np.array([[int(counts.get(f"{t}_as_{j}", 0)) for j in names] for t in classes], dtype=np.int64)
        return cls(tuple(classes), table[:, :-1], table[:, -1])

    def label_counts(self) -> dict[str, int]:
        """``{"<true>_as_<label>": count}`` for every class and label, ``abstain`` included (the binary form)."""
        table = np.column_stack([self.counts, self.abstained])
        names = [*self.classes, ABSTAIN]
        return {f"{t}_as_{j}": int(table[i, k]) for i, t in enumerate(self.classes) for k, j in enumerate(names)}

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: ``classes``, ``counts`` (rows true, columns label), ``abstained``, ``rates`` (None
        where a row is unknown), ``accuracy`` over confident labels, ``abstain_rate`` per true class, ``n``,
        ``n_confident`` and ``confusion`` (:meth:`label_counts`)."""
        totals = self.counts.sum(axis=1)
        labelled = totals + self.abstained
        confident = int(totals.sum())
        return {
            "classes": list(self.classes),
            "counts": self.counts.tolist(),
            "abstained": self.abstained.tolist(),
            "rates": self.rates().tolist() if np.all(totals > 0) else None,
            "accuracy": float(np.trace(self.counts) / confident) if confident else None,
            "abstain_rate": {
                c: (float(a / n) if n else None) for c, a, n in zip(self.classes, self.abstained, labelled)
            },
            "n": int(labelled.sum()),
            "n_confident": confident,
            "confusion": self.label_counts(),
        }


def confusion_matrix(true_class: Sequence[Any], predicted_label: Sequence[str], classes: Sequence[str]) -> Confusion:
    """Count true class against label on held-out labelled images.

    Args:
        true_class: per image its true class; values not among ``classes`` (None, ``unknown``) are skipped.
        predicted_label: per image a class or ``abstain``.
        classes: the K class names.

    Raises:
        ValueError: lengths differ, or a label is neither a class nor ``abstain``.
    """
    truth = np.asarray(list(true_class), dtype=object)
    predicted = np.asarray(list(predicted_label), dtype=object)
    if truth.shape != predicted.shape:
        raise ValueError(f"{len(truth)} true classes but {len(predicted)} predicted labels")
    index = {c: i for i, c in enumerate(classes)}
    unknown = sorted({str(p) for p in predicted.tolist()} - set(index) - {ABSTAIN})
    if unknown:
        raise ValueError(f"labels {unknown} are neither classes {list(classes)} nor {ABSTAIN!r}")
    k = len(classes)
    counts = np.zeros((k, k), dtype=np.int64)
    abstained = np.zeros(k, dtype=np.int64)
    for t, p in zip(truth.tolist(), predicted.tolist()):
        if t not in index:
            continue
        if p == ABSTAIN:
            abstained[index[t]] += 1
        else:
            counts[index[t], index[p]] += 1
    return Confusion(tuple(classes), counts, abstained)


def project_to_simplex(values: Any) -> np.ndarray:
    """Euclidean projection of each row (last axis) onto the probability simplex {q >= 0, sum q = 1}.

    The exact sort-based algorithm (Duchi et al. 2008, Fig. 1; Condat 2016, Algorithm 1): with u the
    values sorted in decreasing order, ``rho = max{j : u_j - (sum_{i<=j} u_i - 1) / j > 0}``,
    ``theta = (sum_{i<=rho} u_i - 1) / rho`` and the projection ``max(v - theta, 0)``. Rows with nan
    stay nan.
    """
    v = np.asarray(values, dtype=float)
    if v.shape[-1] == 0:
        raise ValueError("project_to_simplex: nothing to project")
    u = -np.sort(-v, axis=-1)
    cumulative = np.cumsum(u, axis=-1) - 1.0
    j = np.arange(1, v.shape[-1] + 1)
    positive = u - cumulative / j > 0
    rho = v.shape[-1] - np.argmax(positive[..., ::-1], axis=-1)  # the last j where the condition holds
    theta = np.take_along_axis(cumulative, (rho - 1)[..., None], axis=-1) / rho[..., None]
    projected = np.maximum(v - theta, 0.0)
    return np.where(np.isnan(v).any(axis=-1, keepdims=True), np.nan, projected)


def correct_distribution(observed: Any, rates: Any) -> np.ndarray:
    """The true class distribution behind an observed one: solve ``q_obs = C^T q``, project onto the simplex.

    Args:
        observed: ``(..., K)`` counts (or fractions) of confident labels per class; each row is normalised.
        rates: ``(..., K, K)`` row-normalised confusion C (broadcast against ``observed``).

    Returns:
        ``(..., K)`` corrected distributions (fractions, rows summing to 1); nan rows where C is singular
        (condition number above 1e12) or a row of ``observed`` is empty.
    """
    obs = np.asarray(observed, dtype=float)
    rates = np.asarray(rates, dtype=float)
    totals = obs.sum(axis=-1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        q_obs = obs / totals
    transposed = np.swapaxes(rates, -1, -2)
    condition = np.linalg.cond(transposed)
    singular = ~(condition < MAX_CONDITION)  # nan conditions count as singular
    safe = np.where(singular[..., None, None], np.eye(rates.shape[-1]), transposed)
    solved = np.linalg.solve(safe, np.nan_to_num(q_obs)[..., None])[..., 0]
    bad = singular[..., None] | ~np.isfinite(q_obs).all(axis=-1, keepdims=True)
    return np.where(bad, np.nan, project_to_simplex(np.where(bad, 0.0, solved)))


def confusion_draws(counts: np.ndarray, n_draws: int, rng: np.random.Generator) -> np.ndarray:
    """``(n_draws, K, K)`` confusion matrices, row t drawn from its Jeffreys posterior ``Dirichlet(counts[t] + 1/2)``.

    For K = 2 a row's first entry is ``Beta(x + 1/2, n - x + 1/2)``, the binary code's
    :func:`biasloop.metrics.correction.confusion_rate_draws`.
    """
    counts = np.asarray(counts, dtype=float)
    return np.stack([rng.dirichlet(row + JEFFREYS, size=n_draws) for row in counts], axis=1)


def corrected_replicates(rows: Any, confusion: Confusion, n_draws: int, rng: np.random.Generator) -> np.ndarray:
    """``(n_draws, m, K)`` corrected distributions of ``(m, K)`` observed counts, each replicate with one
    draw of C (:func:`confusion_draws`, shared by all m rows) and of every row from ``Dirichlet(row + 1/2)``;
    nan where C is singular (:func:`correct_distribution`). Rows corrected together (e.g. the training and
    generated sides of one table) see the same C in a replicate, as they are read by one instrument."""
    rows = np.asarray(rows, dtype=float)
    rates = confusion_draws(confusion.counts, n_draws, rng)  # (n_draws, K, K)
    drawn = np.stack([rng.dirichlet(row + JEFFREYS, size=n_draws) for row in rows], axis=1)  # (n_draws, m, K)
    return correct_distribution(drawn, rates[:, None])


def corrected_distribution_interval(
    observed: Any,
    confusion: Confusion,
    n_draws: int,
    rng: np.random.Generator,
    level: float = 0.95,
) -> dict[str, Any]:
    """The corrected distribution with percentile intervals that include the confusion matrix's uncertainty.

    Each of ``n_draws`` replicates draws C (:func:`confusion_draws`) and each observed distribution from
    ``Dirichlet(observed + 1/2)``, and corrects (:func:`correct_distribution`); replicates where C is
    singular are left out (their share is returned).

    Args:
        observed: ``(K,)`` or ``(m, K)`` counts of confident labels per class (e.g. one row per occupation).
        confusion: the held-out counts (:func:`confusion_matrix`).
        n_draws: replicates.
        rng: the random generator (seed it with a named stream).
        level: two-sided coverage of each component's interval.

    Returns:
        ``point`` (the correction with the held-out rates), ``lower`` and ``upper`` (each the shape of
        ``observed``, fractions; nan for a row without counts) and ``undefined_share`` (share of
        replicates with a singular C).

    Raises:
        ValueError: shapes disagree, a count is negative, or a true class has no confident labelled image
            (:meth:`Confusion.rates`).
    """
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")
    obs = np.asarray(observed, dtype=float)
    if obs.shape[-1] != len(confusion.classes):
        raise ValueError(f"observed has {obs.shape[-1]} classes, the confusion {len(confusion.classes)}")
    if np.any(obs < 0):
        raise ValueError("observed counts must be non-negative")
    rows = obs.reshape(-1, obs.shape[-1])
    replicates = corrected_replicates(rows, confusion, n_draws, rng)
    empty = rows.sum(axis=1) == 0  # no confident label: nothing to correct (nan, as the point)
    replicates[:, empty] = 0.0
    defined = np.isfinite(replicates).all(axis=(1, 2))
    tail = 100 * (1 - level) / 2
    lower, upper = (
        np.where(empty[:, None], np.nan, np.percentile(replicates[defined], q, axis=0))
        if defined.any()
        else np.full(rows.shape, np.nan)
        for q in (tail, 100 - tail)
    )
    return {
        "point": correct_distribution(obs, confusion.rates()),
        "lower": lower.reshape(obs.shape),
        "upper": upper.reshape(obs.shape),
        "undefined_share": float(1.0 - defined.mean()),
    }
