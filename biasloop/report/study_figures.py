"""A study's intervals as a forest plot: primary endpoints (plain) beside Holm-adjusted cell levels."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

from biasloop.report.plots import _pyplot, _save

MAX_ROWS = 24  # secondary rows drawn at most (the JSON and CSV keep every interval)


def _forest(ax, rows: list[dict[str, Any]], title: str) -> None:
    """One horizontal interval per row (top to bottom), the margin as a grey band, the verdict beside it."""
    colours = {"effect": "#d62728", "not resolved": "#7f7f7f", "zero in every seed": "#bbbbbb"}
    for i, row in enumerate(rows):
        y = len(rows) - 1 - i
        margin = 100 * row["margin"] if row.get("margin") else None
        if margin:
            ax.fill_betweenx([y - 0.4, y + 0.4], -margin, margin, color="#dddddd", lw=0, zorder=0)
        colour = colours.get(row["verdict"], "#2ca02c")
        if row.get("ci"):
            ax.plot([100 * v for v in row["ci"]], [y, y], color=colour, lw=2, zorder=2)
        if row.get("estimate") is not None:
            ax.plot([100 * row["estimate"]], [y], "o", color=colour, zorder=3)
        level = f"{100 * row['ci_level']:.2f}%" if row.get("ci") else "no interval"
        ax.annotate(
            f"{row['verdict']} ({level}, n={row['n']})",
            (1.01, y),
            xycoords=("axes fraction", "data"),
            fontsize=8,
            va="center",
        )
    ax.axvline(0, color="#444444", lw=0.8)
    ax.set_yticks(range(len(rows)))
    ax.set_yticklabels([textwrap.fill(r["label"], 48) for r in reversed(rows)], fontsize=8)
    ax.set_xlabel("x 100: pp (accuracy: points); a slope per unit of its axis", fontsize=8)
    ax.set_ylim(-0.8, max(len(rows), 1) - 0.2)
    ax.set_title(title, fontsize=8)
    ax.grid(axis="x", alpha=0.3)


def study_intervals_figure(study: dict[str, Any], out_path: str | Path, title: str) -> None:
    """Primary endpoints (plain ``1 - alpha`` intervals) and the secondary intervals of the study's first
    metric at the last generation and across generations (Holm-adjusted); grey band: the declared
    equivalence margin. Values are drawn x 100 (pp for shares and terms).

    Args:
        study: ``metrics/studies/<name>.json`` as :func:`biasloop.study.collect.collect_study` builds it.
        out_path: PNG path (written atomically).
        title: figure title.
    """
    plt = _pyplot()
    primary = list(study["endpoints"].values())
    metrics = study["study"]["metrics"]
    last = study["study"]["generations"] - 1
    first = next((m for m in metrics if study["metric_paths"].get(m)), None)
    levels = [r for r in study["intervals"] if r["metric"] == first and r["generation"] in (last, None)][:MAX_ROWS]
    height = 1.8 + 0.6 * (len(primary) + len(levels))  # wrapped labels take up to three lines
    fig, axes = plt.subplots(
        2,
        1,
        figsize=(10, max(height, 3.5)),
        squeeze=False,
        gridspec_kw={"height_ratios": [max(len(primary), 1), max(len(levels), 1)]},
    )
    _forest(axes[0][0], primary, f"primary endpoints: plain {100 * (1 - study['alpha']):g}% t intervals over seeds")
    family = study["family_size"]
    _forest(axes[1][0], levels, f"{first}, secondary intervals: Holm-adjusted over the study's {family} intervals")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    _save(fig, out_path)
    plt.close(fig)
