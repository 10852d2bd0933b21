"""One K-class attribute's decomposition with bootstrap intervals and its confusion-corrected table, from
per-image frames (the K-class twins of :func:`biasloop.metrics.decomposition.decompose` and of the binary
``corrected`` table; used by :func:`biasloop.metrics.kclass.attribute.attribute_amplification`).

Decomposition (:func:`decompose_classes`): the terms of
:func:`biasloop.metrics.kclass.decomposition.class_decomposition_terms` with 95% percentile bootstrap
intervals (Efron & Tibshirani 1993, ch. 13), resampled as in the binary decomposition: training images
within occupation with their measured, true and "caption unmarked" columns together, generated images
within occupation with their measured and oracle labels together (a paired pairing resamples whole pairs);
the majority weights stay at their observed values, so every replicate's terms sum exactly too.

Correction (:func:`corrected_class_table`): both sides' per-occupation distributions corrected by the
held-out KxK confusion (:func:`biasloop.metrics.kclass.correction.correct_distribution`). Replicates draw
C once for both sides and each side's counts from their Jeffreys posterior
(:func:`~biasloop.metrics.kclass.correction.corrected_replicates`), so the intervals include the
confusion's uncertainty. The corrected gap is ``mean_o 1/2 sum_k debiased_abs(d, v)`` with ``v`` the
replicates' variance of each corrected difference (the binary corrected gap's estimate), and its
interval the projection of :func:`biasloop.metrics.kclass.estimands.gap_from_class_counts` with normal
intervals ``d +- z sqrt(v)`` in place of Newcombe's; the corrected shift (majority classes of the
corrected training distributions, held fixed) has the replicates' percentile interval.
All values are fractions.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import polars as pl
from scipy.stats import norm

from biasloop.core.io import json_float
from biasloop.metrics import estimands
from biasloop.metrics.decomposition import NO_TRUTH_TERMS, TRUTH_TERMS
from biasloop.metrics.kclass.correction import Confusion, correct_distribution, corrected_replicates
from biasloop.metrics.kclass.decomposition import class_decomposition_terms
from biasloop.metrics.kclass.estimands import distinct_class_intervals, majority_weights, total_variation

SHIFT_KIND_CORRECTED = "jeffreys_confusion_percentile_fixed_majority"
GAP_KIND_CORRECTED = "corrected_normal_per_class_sidak_projection"
_TRAIN_BLOCKS = ("train_measured", "train_true", "ideal_true", "ideal_measured")
_GEN_BLOCKS = ("gen_measured", "gen_oracle")


def one_hot(values: Sequence[Any], classes: Sequence[str]) -> np.ndarray:
    """``(n, K)`` 0/1 rows: 1 in the column of each value's class; a zero row for anything else
    (``abstain``, null, an unknown label)."""
    index = {c: i for i, c in enumerate(classes)}
    out = np.zeros((len(values), len(classes)))
    for row, value in enumerate(values):
        if value in index:
            out[row, index[value]] = 1.0
    return out


def _blocks(
    train: pl.DataFrame, gen: pl.DataFrame, columns: dict[str, str], classes: Sequence[str]
) -> tuple[np.ndarray, np.ndarray]:
    """Per image the one-hot blocks of :data:`_TRAIN_BLOCKS` / :data:`_GEN_BLOCKS`, side by side."""

    def column(frame: pl.DataFrame, name: str) -> list:
        return frame[name].to_list() if name in frame.columns else [None] * len(frame)

    unmarked = np.asarray(column(train, columns["unmarked"]), dtype=object) == True  # noqa: E712 (null: marked)
    measured, true = one_hot(column(train, columns["label"]), classes), one_hot(column(train, columns["true"]), classes)
    train_rows = np.hstack([measured, true, true * unmarked[:, None], measured * unmarked[:, None]])
    gen_rows = np.hstack(
        [one_hot(column(gen, columns["label"]), classes), one_hot(column(gen, columns["oracle"]), classes)]
    )
    return train_rows, gen_rows


def _distributions(sums: np.ndarray, names: Sequence[str], k: int, wanted: Sequence[str]) -> dict[str, np.ndarray]:
    """Distributions of the ``wanted`` blocks from row sums ``(..., len(names) * k)``; nan rows where empty."""
    out = {}
    for name in wanted:
        i = names.index(name)
        block = sums[..., i * k : (i + 1) * k]
        total = block.sum(axis=-1, keepdims=True)
        with np.errstate(invalid="ignore", divide="ignore"):
            out[name] = np.where(total > 0, block / np.where(total > 0, total, 1.0), np.nan)
    return out


def _needed(ground_truth: bool, paired: bool) -> tuple[list[str], list[str]]:
    train = ["train_measured", *(["train_true", "ideal_true"] if ground_truth else ["ideal_measured"])]
    if paired:
        train = [b for b in train if not b.startswith("ideal")]
    return train, ["gen_measured", *(["gen_oracle"] if ground_truth else [])]


def _interval(values: np.ndarray) -> list[float | None]:
    values = values[np.isfinite(values)]
    return [json_float(v) for v in np.percentile(values, [2.5, 97.5])] if len(values) else [None, None]


def decompose_classes(
    train: pl.DataFrame,
    gen: pl.DataFrame,
    classes: Sequence[str],
    columns: dict[str, str],
    paired: bool = False,
    n_boot: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """The data / generator / instrument decomposition of one pairing's measured K-class shift.

    Args:
        train, gen: the pairing's training and generated images (``occupation`` and the label columns;
            for a paired pairing aligned rows, one per pair).
        classes: the K classes.
        columns: ``label``, ``true``, ``oracle`` and ``unmarked`` (bool: the caption has no indicator of
            the attribute) column names; a missing column counts as unknown.
        paired: the ideal learner reproduces each pair's training image (the data term is 0).
        n_boot: bootstrap replicates (0: no intervals). seed: their ``numpy`` seed.

    Returns:
        ``available``, ``ground_truth``, ``reason`` (without ground truth), ``paired``, ``measured`` and each
        term as ``{"estimate", "ci"}``, ``sum_of_terms``, ``ideal_gap`` (plug-in ``mean_o TV(ideal, train)``),
        ``occupations`` / ``occupations_left_out`` (an occupation missing a distribution is left out of
        every term), ``per_occupation`` rows, ``n_boot`` and ``n_boot_dropped``.
    """
    if paired and len(train) != len(gen):
        raise ValueError(f"paired decomposition: {len(train)} training rows for {len(gen)} generated rows")
    ground_truth = all(
        c in f.columns and f[c].is_in(list(classes)).any()
        for f, c in ((train, columns["true"]), (gen, columns["oracle"]))
    )
    has_unmarked = columns["unmarked"] in train.columns and train[columns["unmarked"]].is_not_null().any()
    if not paired and not has_unmarked:
        return {"available": False, "reason": "the training captions' indicators of this attribute are unknown"}
    k, wanted = len(classes), _needed(ground_truth, paired)
    candidates = sorted(set(train["occupation"].unique().to_list()) | set(gen["occupation"].unique().to_list()))
    rows = [
        _blocks(train.filter(pl.col("occupation") == o), gen.filter(pl.col("occupation") == o), columns, classes)
        for o in candidates
    ]
    sums = [np.stack([r[side].sum(axis=0) for r in rows]) for side in (0, 1)]
    shares = {
        **_distributions(sums[0], _TRAIN_BLOCKS, k, wanted[0]),
        **_distributions(sums[1], _GEN_BLOCKS, k, wanted[1]),
    }
    keep = np.flatnonzero(np.all(np.isfinite(np.stack(list(shares.values()))), axis=(0, 2)))
    if not len(keep):
        return {"available": False, "ground_truth": ground_truth, "reason": "no occupation has every distribution"}
    shares = {name: value[keep] for name, value in shares.items()}
    weights = majority_weights(shares["train_measured"])
    point = class_decomposition_terms(shares, ground_truth, paired, weights)
    terms = TRUTH_TERMS if ground_truth else NO_TRUTH_TERMS
    replicates = _bootstrap([rows[i] for i in keep], wanted, k, weights, ground_truth, paired, n_boot, seed)
    finite = np.all(np.isfinite(np.stack([replicates[t] for t in ("measured", *terms)])), axis=0) if n_boot else []

    def summary(name: str) -> dict[str, Any]:
        ci = _interval(np.where(finite, replicates[name], np.nan)) if n_boot else [None, None]
        return {"estimate": json_float(point[name]), "ci": ci}

    occupations = [candidates[i] for i in keep]
    return {
        "available": True,
        "ground_truth": ground_truth,
        "reason": None if ground_truth else "no true classes or no oracle labels: (b) and (c) reported together",
        "paired": paired,
        "measured": summary("measured"),
        **{name: summary(name) for name in terms},
        "sum_of_terms": json_float(sum(point[name] for name in terms)),
        "ideal_gap": json_float(point["ideal_gap"]),
        "occupations": occupations,
        "occupations_left_out": [o for o in candidates if o not in occupations],
        "per_occupation": _per_occupation(occupations, classes, shares, weights, ground_truth, paired),
        "n_boot": int(n_boot),
        "n_boot_dropped": int(np.sum(~np.asarray(finite, bool))) if n_boot else 0,
    }


def _bootstrap(
    rows: list[tuple[np.ndarray, np.ndarray]],
    wanted: tuple[list[str], list[str]],
    k: int,
    weights: np.ndarray,
    ground_truth: bool,
    paired: bool,
    n_boot: int,
    seed: int,
) -> dict[str, np.ndarray]:
    """Replicates of every term, images resampled within each kept occupation (pairs whole when paired)."""
    if n_boot <= 0:
        return {}
    rng = np.random.default_rng(seed)
    width = (len(_TRAIN_BLOCKS) * k, len(_GEN_BLOCKS) * k)
    boot = [np.empty((n_boot, len(rows), w)) for w in width]
    for j, (train_rows, gen_rows) in enumerate(rows):
        units = [np.hstack([train_rows, gen_rows])] if paired else [train_rows, gen_rows]
        drawn = []
        for unit in units:
            n = len(unit)
            drawn.append(rng.multinomial(n, np.full(n, 1.0 / n), size=n_boot).astype(float) @ unit)
        both = np.concatenate(drawn, axis=1) if not paired else drawn[0]
        boot[0][:, j], boot[1][:, j] = both[:, : width[0]], both[:, width[0] :]
    shares = {
        **_distributions(boot[0], _TRAIN_BLOCKS, k, wanted[0]),
        **_distributions(boot[1], _GEN_BLOCKS, k, wanted[1]),
    }
    return class_decomposition_terms(shares, ground_truth, paired, weights)


def _per_occupation(
    occupations: list[str],
    classes: Sequence[str],
    shares: dict[str, np.ndarray],
    weights: np.ndarray,
    ground_truth: bool,
    paired: bool,
) -> list[dict[str, Any]]:
    """One row per kept occupation: its distributions, majority class(es) and each term's contribution."""
    terms = ("measured", *(TRUTH_TERMS if ground_truth else NO_TRUTH_TERMS))
    rows = []
    for j, occupation in enumerate(occupations):
        one = class_decomposition_terms(
            {n: v[j : j + 1] for n, v in shares.items()}, ground_truth, paired, weights[j : j + 1]
        )
        row: dict[str, Any] = {"occupation": occupation, "majority": [c for c, w in zip(classes, weights[j]) if w > 0]}
        row.update({name: {c: json_float(p) for c, p in zip(classes, value[j])} for name, value in shares.items()})
        row.update({term: json_float(one[term]) for term in terms})
        rows.append(row)
    return rows


def corrected_class_table(
    names: Sequence[str],
    train: Any,
    gen: Any,
    confusion: Confusion,
    n_boot: int,
    seed: int,
    alpha: float = 0.05,
) -> dict[str, Any]:
    """Both sides' class distributions corrected by the KxK confusion, and the corrected gap and shift.

    Args:
        names: occupations, one per row of the ``(occupations, K)`` confident counts ``train`` and ``gen``.
        confusion: the held-out confusion counts (classes in the counts' column order).
        n_boot: replicates (at least 2). seed: their ``numpy`` seed.
        alpha: 1 - confidence level.

    Returns:
        ``{"available": False, "reason"}`` when C is unknown or singular; else ``estimands`` (``gap``:
        estimate, ci, kind, ``tv_raw``; ``shift``: estimate, ci, kind), ``per_occupation`` (corrected
        ``p_train`` / ``p_gen`` with ``_ci`` per class), ``occupations_left_out``, ``n_boot``,
        ``undefined_share`` (replicates with a singular C).
    """
    train, gen = np.asarray(train, float), np.asarray(gen, float)
    try:
        rates = confusion.rates()
    except ValueError as error:
        return {"available": False, "reason": str(error)}
    keep = (train.sum(axis=1) > 0) & (gen.sum(axis=1) > 0)
    point_train, point_gen = correct_distribution(train[keep], rates), correct_distribution(gen[keep], rates)
    if not keep.any() or not np.isfinite(point_train).all() or n_boot < 2:
        return {"available": False, "reason": "singular confusion, no occupation on both sides, or n_boot < 2"}
    draws = corrected_replicates(np.vstack([train[keep], gen[keep]]), confusion, n_boot, np.random.default_rng(seed))
    draws = draws[np.isfinite(draws).all(axis=(1, 2))]
    o, k = int(keep.sum()), train.shape[1]
    boot_train, boot_gen = draws[:, :o], draws[:, o:]
    difference, boot_difference = point_gen - point_train, boot_gen - boot_train
    sd = np.std(boot_difference, axis=0, ddof=1)
    joint = norm.ppf(1 - estimands.sidak_alpha(alpha, o * distinct_class_intervals(k)) / 2)
    nearest = estimands.gap_interval(difference - joint * sd, difference + joint * sd)[0]
    farthest = estimands.gap_interval(
        difference - norm.ppf(1 - alpha / 2) * sd, difference + norm.ppf(1 - alpha / 2) * sd
    )[1]
    weights = majority_weights(point_train)
    boot_shift = np.mean(np.sum(weights * boot_difference, axis=-1), axis=-1)
    lower = np.percentile(draws, 100 * alpha / 2, axis=0)
    upper = np.percentile(draws, 100 * (1 - alpha / 2), axis=0)
    kept = [n for n, kept in zip(names, keep) if kept]
    return {
        "available": True,
        "estimands": {
            "gap": {
                "estimate": json_float(np.mean(0.5 * np.sum(estimands.debiased_abs(difference, sd**2), axis=-1))),
                "ci": [json_float(np.mean(nearest * k / 2)), json_float(np.mean(farthest * k / 2))],
                "kind": GAP_KIND_CORRECTED,
            },
            "tv_raw": json_float(np.mean(total_variation(point_gen, point_train))),
            "shift": {
                "estimate": json_float(np.mean(np.sum(weights * difference, axis=-1))),
                "ci": [json_float(v) for v in np.percentile(boot_shift, [100 * alpha / 2, 100 * (1 - alpha / 2)])],
                "kind": SHIFT_KIND_CORRECTED,
            },
        },
        "per_occupation": _corrected_rows(kept, confusion.classes, (point_train, point_gen), (lower, upper)),
        "occupations_left_out": [n for n, kept in zip(names, keep) if not kept],
        "n_boot": int(n_boot),
        "undefined_share": json_float(1.0 - len(draws) / n_boot),
    }


def _corrected_rows(
    names: list[str],
    classes: Sequence[str],
    points: tuple[np.ndarray, np.ndarray],
    bounds: tuple[np.ndarray, np.ndarray],
) -> list[dict[str, Any]]:
    """Per occupation the corrected ``p_train`` / ``p_gen`` and their ``_ci`` per class; ``bounds`` are the
    ``(2 * occupations, K)`` lower and upper percentiles, training rows first."""
    o = len(names)
    rows = []
    for j, name in enumerate(names):
        row: dict[str, Any] = {"occupation": name}
        for side, values, offset in (("train", points[0], 0), ("gen", points[1], o)):
            row[f"p_{side}"] = {c: json_float(v) for c, v in zip(classes, values[j])}
            row[f"p_{side}_ci"] = {
                c: [json_float(bounds[0][offset + j, m]), json_float(bounds[1][offset + j, m])]
                for m, c in enumerate(classes)
            }
        rows.append(row)
    return rows
