"""Intersectional cells: the product of two attributes (e.g. perceived gender x skin tone) as one K-class
attribute, with cells too small to estimate left out and listed.

An image's cell is ``"<first> x <second>"`` (e.g. ``"female x dark"``) when both labels are confident; an
abstention on either attribute makes the image abstained. A cell with fewer than ``min_cell_size``
confident images over the whole table is excluded: its images leave the counts (like abstentions) and
the cell is listed with its size, so a reader sees what the estimands do not cover. Pass the kept
``classes`` of one side (training) to the other (generated) so both share one class set.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import polars as pl

SEPARATOR = " x "


def _cell_classes(frame: pl.DataFrame, column: str, abstain: str) -> list[str]:
    return sorted(value for value in frame[column].unique().to_list() if value is not None and value != abstain)


def intersectional_counts(
    frame: pl.DataFrame,
    first: str,
    second: str,
    min_cell_size: int,
    *,
    occupation: str = "occupation",
    abstain: str = "abstain",
    classes: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Counts per (occupation, cell) of the product attribute ``first x second``.

    Args:
        frame: one row per image with the columns ``occupation``, ``first`` and ``second`` (labels; the
            ``abstain`` label or null where the labeller abstained).
        first, second: the two label columns.
        min_cell_size: cells with fewer confident images than this (over all occupations) are excluded.
        occupation: the occupation column.
        abstain: the abstain label.
        classes: the cells to keep (e.g. the training side's kept cells); then ``min_cell_size`` only
            lists the others as excluded. Default: every cell present with at least ``min_cell_size``
            images, ordered by ``first``'s then ``second``'s sorted labels.

    Returns:
        ``classes`` (kept cells), ``occupations`` (sorted), ``counts`` (``(occupations, len(classes))``
        int64), ``n_abstain`` (``(occupations,)``: abstained on either attribute), ``excluded`` (a list
        of ``{"cell", "size"}``, sizes over all occupations, largest first) and ``n_excluded_images``.
    """
    if min_cell_size < 0:
        raise ValueError(f"min_cell_size must be >= 0, got {min_cell_size}")
    missing = [name for name in (occupation, first, second) if name not in frame.columns]
    if missing:
        raise ValueError(f"missing column(s) {missing} (columns: {frame.columns})")
    confident = pl.col(first).is_not_null() & pl.col(second).is_not_null()
    confident = confident & (pl.col(first) != abstain) & (pl.col(second) != abstain)
    labelled = frame.with_columns(
        cell=pl.when(confident).then(pl.concat_str([pl.col(first), pl.lit(SEPARATOR), pl.col(second)])).otherwise(None)
    )
    sizes = dict(labelled.filter(pl.col("cell").is_not_null()).group_by("cell").len().iter_rows())
    if classes is None:
        ordered = [
            f"{a}{SEPARATOR}{b}"
            for a in _cell_classes(frame, first, abstain)
            for b in _cell_classes(frame, second, abstain)
        ]
        classes = [cell for cell in ordered if sizes.get(cell, 0) >= max(min_cell_size, 1)]
    classes = list(classes)
    excluded = sorted(
        ({"cell": cell, "size": int(size)} for cell, size in sizes.items() if cell not in classes),
        key=lambda entry: (-entry["size"], entry["cell"]),
    )
    occupations = sorted(frame[occupation].unique().to_list())
    counts = np.zeros((len(occupations), len(classes)), dtype=np.int64)
    n_abstain = np.zeros(len(occupations), dtype=np.int64)
    row_of, column_of = {name: i for i, name in enumerate(occupations)}, {c: j for j, c in enumerate(classes)}
    for name, cell, count in labelled.group_by([occupation, "cell"]).len().iter_rows():
        if cell is None:
            n_abstain[row_of[name]] += count
        elif cell in column_of:
            counts[row_of[name], column_of[cell]] += count
    return {
        "classes": classes,
        "occupations": occupations,
        "counts": counts,
        "n_abstain": n_abstain,
        "excluded": excluded,
        "n_excluded_images": int(sum(entry["size"] for entry in excluded)),
        "min_cell_size": int(min_cell_size),
    }
