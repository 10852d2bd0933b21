"""The K-class amplification table: per-occupation class distributions of training and generated images,
their total-variation distance, and the estimands with intervals and null p-values (what ``biasloop
amplify`` prints for K-class count files; the binary table is
:func:`biasloop.metrics.amplification.amplification_table`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from biasloop.core.io import json_float
from biasloop.metrics import estimands
from biasloop.metrics.kclass.bias_amplification import directional_bias_amplification
from biasloop.metrics.kclass.estimands import (
    GAP_KIND,
    SHIFT_KIND,
    class_distributions,
    gap_from_class_counts,
    majority_weights,
    shift_from_class_counts,
    total_variation,
)


def null_class_counts(
    train: np.ndarray, gen: np.ndarray, n_draws: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Count tables drawn under the null "equal class distributions in every occupation": each side keeps
    its confident images per occupation and draws their classes from the pooled distribution
    ``(n_train + n_gen) / (m_train + m_gen)`` (parametric bootstrap, as the binary ``null_shares``).

    Returns:
        ``(n_draws, occupations, K)`` counts for each side.
    """
    pooled = class_distributions(train + gen)
    draw = lambda counts: rng.multinomial(counts.sum(axis=-1), pooled, size=(n_draws, len(counts)))  # noqa: E731
    return draw(train), draw(gen)


def _plug_in_statistics(train: np.ndarray, gen: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(tv_raw, shift)`` plug-ins of count tables ``(..., occupations, K)``, majorities re-estimated."""
    p_train, p_gen = class_distributions(train), class_distributions(gen)
    shift = np.mean(np.sum(majority_weights(train) * (p_gen - p_train), axis=-1), axis=-1)
    return np.mean(total_variation(p_gen, p_train), axis=-1), shift


def _per_occupation_rows(
    names: Sequence[str],
    classes: Sequence[str],
    train: np.ndarray,
    gen: np.ndarray,
    abstain: tuple[np.ndarray, np.ndarray],
) -> list[dict[str, Any]]:
    """One row per occupation: counts and distributions by class, training majority, TV, abstain rates."""
    p_train, p_gen = class_distributions(train), class_distributions(gen)
    tv = total_variation(p_gen, p_train)
    rows = []
    for i, name in enumerate(names):
        totals = [train[i].sum() + abstain[0][i], gen[i].sum() + abstain[1][i]]
        majority = [c for c, w in zip(classes, majority_weights(train[i])) if w > 0] if train[i].sum() else []
        rows.append(
            {
                "occupation": name,
                "counts_train": {c: int(n) for c, n in zip(classes, train[i])},
                "counts_gen": {c: int(n) for c, n in zip(classes, gen[i])},
                "n_abstain_train": int(abstain[0][i]),
                "n_abstain_gen": int(abstain[1][i]),
                "p_train": {c: json_float(p) for c, p in zip(classes, p_train[i])},
                "p_gen": {c: json_float(p) for c, p in zip(classes, p_gen[i])},
                "majority_train": majority,
                "tv": json_float(tv[i]),
                "abstain_rate_train": json_float(abstain[0][i] / totals[0]) if totals[0] else None,
                "abstain_rate_gen": json_float(abstain[1][i] / totals[1]) if totals[1] else None,
            }
        )
    return rows


def _bias_amp(train: np.ndarray, gen: np.ndarray, direction: str) -> float | None:
    try:
        return directional_bias_amplification(train, gen, direction)
    except ValueError:  # a class with no image on a side: the conditional probability is undefined
        return None


def class_amplification_table(
    names: Sequence[str],
    classes: Sequence[str],
    train: Any,
    gen: Any,
    abstain_train: Any = None,
    abstain_gen: Any = None,
    *,
    n_boot: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """The K-class amplification table of two ``(occupations, K)`` count tables (JSON-ready, fractions).

    Args:
        names: occupation names, one per row.
        classes: the attribute's classes, one per column (the same on both sides).
        train, gen: ``(occupations, K)`` confident counts of training and generated images.
        abstain_train, abstain_gen: ``(occupations,)`` abstentions (default 0).
        n_boot: null draws for the p-values (0: none).
        seed: seed of ``numpy.random.default_rng`` for the null draws.

    Returns:
        ``classes``, ``n_classes``, ``n_occupations`` (occupations in the aggregates), ``estimands`` =
        {"shift": {"estimate", "ci", "p_value", "p_value_is_bound", "kind", "n_unclear_majority"},
        "gap": {"estimate", "ci", "p_value", "p_value_is_bound", "kind"}, "tv_raw"}
        (:mod:`biasloop.metrics.kclass.estimands`; p-values against ``n_boot`` draws of
        :func:`null_class_counts`, two-sided for the shift, one-sided of ``tv_raw`` for the gap),
        ``bias_amp`` = {"A->T", "T->A"} (Wang & Russakovsky 2021; None where undefined), ``n_boot``,
        ``per_occupation`` rows for every occupation, and ``dropped`` (occupations without a
        confident image on a side, left out of the aggregates).
    """
    train, gen = np.asarray(train, np.int64), np.asarray(gen, np.int64)
    if train.shape != gen.shape or train.shape != (len(names), len(classes)):
        raise ValueError(f"counts must be ({len(names)}, {len(classes)}) on both sides: {train.shape}, {gen.shape}")
    zeros = np.zeros(len(names), np.int64)
    abstain = tuple(zeros if a is None else np.asarray(a, np.int64) for a in (abstain_train, abstain_gen))
    keep = (train.sum(axis=1) > 0) & (gen.sum(axis=1) > 0)
    out: dict[str, Any] = {"classes": list(classes), "n_classes": len(classes), "n_occupations": int(keep.sum())}
    out["n_boot"] = int(n_boot)
    out["estimands"] = _estimands_entry(train[keep], gen[keep], n_boot, seed) if keep.any() else None
    out["bias_amp"] = {d: _bias_amp(train[keep], gen[keep], d) for d in ("A->T", "T->A")} if keep.any() else None
    out["per_occupation"] = _per_occupation_rows(names, classes, train, gen, abstain)
    out["dropped"] = [name for name, kept in zip(names, keep) if not kept]
    return out


def _estimands_entry(train: np.ndarray, gen: np.ndarray, n_boot: int, seed: int) -> dict[str, Any]:
    """The shift and the gap with intervals and null p-values, and ``tv_raw``, over kept occupations."""
    gap, shift = gap_from_class_counts(train, gen), shift_from_class_counts(train, gen)
    p_values = {"gap": (np.nan, False), "shift": (np.nan, False)}
    if n_boot:
        null_tv, null_shift = _plug_in_statistics(*null_class_counts(train, gen, n_boot, np.random.default_rng(seed)))
        p_values["gap"] = estimands.monte_carlo_p_value(gap["raw"], null_tv, two_sided=False)
        p_values["shift"] = estimands.monte_carlo_p_value(shift["estimate"], null_shift, two_sided=True)

    def entry(name: str, values: dict[str, np.ndarray], kind: str) -> dict[str, Any]:
        return {
            "estimate": json_float(values["estimate"]),
            "ci": [json_float(values["lo"]), json_float(values["hi"])],
            "p_value": json_float(p_values[name][0]),
            "p_value_is_bound": bool(p_values[name][1]),
            "kind": kind,
        }

    return {
        "shift": {**entry("shift", shift, SHIFT_KIND), "n_unclear_majority": int(shift["n_unclear_majority"])},
        "gap": entry("gap", gap, GAP_KIND),
        "tv_raw": json_float(gap["raw"]),
    }
