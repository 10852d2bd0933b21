"""Amplification of paired images: each generated image beside the training image it came from.

Captions used as prompts pair every generated image with the training image of its caption (same
source id). The two labels of a pair are correlated, so the pairs, not the images, are the sampling
units: the bootstrap resamples whole pairs within each occupation, and the null ("generation does not
change the label's distribution") exchanges each pair's two labels with probability 1/2 (a
randomisation test of exchangeability within pairs; e.g. Good, *Permutation Tests*, 2nd ed., 2000, sect.
3.1). The table has the structure of :func:`biasloop.metrics.amplification.amplification_table`'s,
with the gap's per-occupation intervals from Newcombe's (1998b) paired method
(:func:`biasloop.metrics.estimands.newcombe_difference_interval` with the pairs' correlation ``phi``)
and the shift's interval from the pair bootstrap with the observed majorities held fixed
(:func:`biasloop.metrics.estimands.shift_bootstrap_interval`).

A pair table holds, per occupation, the counts of pairs by (training label, generated label), each
``female``/``male``/``abstain``: ``cells[o, i, j]`` with ``i``, ``j`` indexing
:data:`biasloop.core.labels.LABELS`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import polars as pl

from biasloop.core.labels import LABELS
from biasloop.metrics.amplification import share_female, table_from_draws

PAIR_COLUMNS = ("occupation", "train_label", "gen_label")


def pair_cells(pairs: pl.DataFrame) -> tuple[list[str], np.ndarray]:
    """Per-occupation 3 x 3 counts of pairs by (training label, generated label).

    Args:
        pairs: one row per pair with ``occupation`` (str), ``train_label`` and ``gen_label`` (each
            ``female``/``male``/``abstain``).

    Returns:
        ``(names, cells)``: occupation names (sorted) and ``(occupations, 3, 3)`` int64 counts.

    Raises:
        ValueError: a missing column, a missing value, or a label outside :data:`LABELS` (the message
            names the column and the value).
    """
    for column in PAIR_COLUMNS:
        if column not in pairs.columns:
            raise ValueError(f"pair table has no {column!r} column (needs {', '.join(PAIR_COLUMNS)})")
    pairs = pairs.select(*(pl.col(column).cast(pl.String) for column in PAIR_COLUMNS))
    for column in PAIR_COLUMNS:
        if pairs[column].null_count():
            raise ValueError(f"pair table has a missing {column}")
    for column in ("train_label", "gen_label"):
        bad = sorted(set(pairs[column].unique().to_list()) - set(LABELS))
        if bad:
            raise ValueError(f"pair table: {column} must be one of {', '.join(LABELS)}, found {bad[0]!r}")
    names = sorted(pairs["occupation"].unique().to_list())
    index = {name: i for i, name in enumerate(names)}
    label_index = {label: i for i, label in enumerate(LABELS)}
    cells = np.zeros((len(names), 3, 3), dtype=np.int64)
    occupation = np.array([index[name] for name in pairs["occupation"].to_list()], dtype=np.int64)
    train = np.array([label_index[label] for label in pairs["train_label"].to_list()], dtype=np.int64)
    gen = np.array([label_index[label] for label in pairs["gen_label"].to_list()], dtype=np.int64)
    np.add.at(cells, (occupation, train, gen), 1)
    return names, cells


def side_counts(cells: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(train, gen)`` female/male/abstain counts ``(..., occupations, 3)``: the margins of the pairs."""
    cells = np.asarray(cells)
    return cells.sum(axis=-1), cells.sum(axis=-2)


def _shares(cells: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    train, gen = side_counts(cells)
    return (
        np.asarray(share_female(train[..., 0], train[..., 1]), float),
        np.asarray(share_female(gen[..., 0], gen[..., 1]), float),
    )


def pair_correlation(cells: np.ndarray) -> np.ndarray:
    """phi, the correlation of "training label female" and "generated label female" over the pairs
    labelled confidently on both sides, per occupation (0 where undefined: a constant side).

    Args:
        cells: ``(..., occupations, 3, 3)`` pair counts.

    Returns:
        ``(..., occupations)`` values in [-1, 1].
    """
    cells = np.asarray(cells, float)
    a, b, c, d = cells[..., 0, 0], cells[..., 0, 1], cells[..., 1, 0], cells[..., 1, 1]
    denominator = np.sqrt((a + b) * (c + d) * (a + c) * (b + d))
    with np.errstate(invalid="ignore", divide="ignore"):
        phi = (a * d - b * c) / np.where(denominator > 0, denominator, 1.0)
    return np.where(denominator > 0, np.clip(phi, -1.0, 1.0), 0.0)


def bootstrap_pairs(cells: np.ndarray, n_boot: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Shares of women on each side after resampling whole pairs within each occupation.

    Args:
        cells: ``(..., occupations, 3, 3)`` pair counts; leading axes are independent tables.
        n_boot: replicates.
        rng: the random generator.

    Returns:
        ``(boot_train, boot_gen)``, each ``(..., n_boot, occupations)`` (nan where a replicate has no
        confident image on that side): each replicate draws the occupation's n pairs with replacement,
        a multinomial over the 9 (training label, generated label) cells.
    """
    cells = np.asarray(cells, dtype=np.int64)
    batch, n_occupations = cells.shape[:-3], cells.shape[-3]
    flat = cells.reshape(*batch, n_occupations, 9)
    remaining = np.broadcast_to(flat.sum(axis=-1)[..., None, :], (*batch, n_boot, n_occupations)).copy()
    left = flat.sum(axis=-1).astype(float)
    drawn = np.zeros((*batch, n_boot, n_occupations, 9), dtype=np.int64)
    # The multinomial as a chain of binomials (each cell among the pairs not yet drawn).
    for k in range(8):
        probability = np.where(left > 0, flat[..., k] / np.maximum(left, 1), 0.0)
        drawn[..., k] = rng.binomial(remaining, np.clip(probability, 0, 1)[..., None, :])
        remaining -= drawn[..., k]
        left = left - flat[..., k]
    drawn[..., 8] = remaining
    return _shares(drawn.reshape(*batch, n_boot, n_occupations, 3, 3))


def swap_null_pairs(cells: np.ndarray, n_boot: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Shares of women on each side under the null: each pair's two labels exchanged with probability 1/2.

    Pairs with equal labels are unchanged; of the ``c_ij + c_ji`` pairs with labels (i, j) in either order,
    ``Binomial(c_ij + c_ji, 1/2)`` end up as (i, j), the rest as (j, i).

    Args:
        cells: ``(..., occupations, 3, 3)`` pair counts.
        n_boot: replicates.
        rng: the random generator.

    Returns:
        ``(null_train, null_gen)``, each ``(..., n_boot, occupations)``.
    """
    cells = np.asarray(cells, dtype=np.int64)
    batch, n_occupations = cells.shape[:-3], cells.shape[-3]
    drawn = np.broadcast_to(cells[..., None, :, :, :], (*batch, n_boot, n_occupations, 3, 3)).copy()
    for i, j in ((0, 1), (0, 2), (1, 2)):
        discordant = drawn[..., i, j] + drawn[..., j, i]
        drawn[..., i, j] = rng.binomial(discordant, 0.5)
        drawn[..., j, i] = discordant - drawn[..., i, j]
    return _shares(drawn)


def paired_amplification_table(
    pairs: pl.DataFrame,
    *,
    n_boot: int = 1000,
    seed: int = 0,
    confusion: dict[str, Any] | None = None,
    correct_train: bool = True,
) -> dict[str, Any]:
    """The amplification table of paired images (captions as prompts: each generated image with the
    training image of its caption).

    Args:
        pairs: one row per pair, ``occupation, train_label, gen_label`` (labels ``female``/``male``/
            ``abstain``; other columns are ignored).
        n_boot: replicates of the pair bootstrap and of the swap null (0: no intervals, no p-values).
        seed: seed of ``numpy.random.default_rng``; equal seeds give equal results.
        confusion: the instrument's ``{"tpr", "fpr"[, "counts"]}``
            (:func:`biasloop.metrics.amplification.read_confusion`); adds a ``corrected`` table.
        correct_train: correct the training shares as well (False when they come from ground truth).

    Returns:
        :func:`biasloop.metrics.amplification.amplification_table`'s dict (shares per side from the pairs'
        margins, every aggregate, ``estimands`` with the gap's ``kind`` ``newcombe_paired_sidak_projection``),
        computed with pairs as the sampling units, plus ``paired: True``, ``n_pairs`` and, per occupation
        row, ``n_pairs`` and ``pair_correlation`` (phi over pairs confident on both sides).

    Raises:
        ValueError: a bad pair table (:func:`pair_cells`), no pairs, or a negative ``n_boot``.
    """
    if n_boot < 0:
        raise ValueError(f"n_boot must be >= 0, got {n_boot}")
    names, cells = pair_cells(pairs)
    if not names:
        raise ValueError("pair table has no pairs")
    rng = np.random.default_rng(seed)
    boot = bootstrap_pairs(cells, n_boot, rng)
    null = swap_null_pairs(cells, n_boot, rng)
    phi = pair_correlation(cells)
    train, gen = side_counts(cells)
    result = table_from_draws(
        names, train, gen, boot, null, rng=rng, confusion=confusion, correct_train=correct_train, phi=phi
    )
    n_pairs = cells.sum(axis=(-1, -2))
    for table in (result, result.get("corrected")):
        if table is None:
            continue
        table["paired"], table["n_pairs"] = True, int(n_pairs.sum())
        for row, count, correlation in zip(table["per_occupation"], n_pairs, phi):
            row["n_pairs"], row["pair_correlation"] = int(count), float(correlation)
    return result
