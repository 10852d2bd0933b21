"""Figures of a K-class attribute (docs/attributes.md): per occupation, the class distribution of the
training images beside the generated images' (and the ground truth where the world has it)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from biasloop.report.plots import _pyplot, _save

# light -> dark for the tone classes; other attributes take matplotlib's tab10 colours in class order
CLASS_COLOURS = {"light": "#f2d4a7", "medium": "#b07a4f", "dark": "#4a2c1a"}


def class_colours(classes: list[str]) -> list[str]:
    """One colour per class: tone's light-to-dark browns, else the tab10 cycle."""
    cycle = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f"]
    return [CLASS_COLOURS.get(c, cycle[i % len(cycle)]) for i, c in enumerate(classes)]


def class_distribution_plot(
    rows: list[dict[str, Any]], classes: list[str], out_path: str | Path, title: str, series: list[tuple[str, str]]
) -> None:
    """Stacked horizontal bars: per occupation one bar per series, each split into its classes' shares.

    Args:
        rows: one per occupation: ``occupation`` and, per series key, a list of K class shares (fractions
            summing to 1) or None (that bar is left out).
        classes: the K class names, in the order of the share lists.
        out_path: PNG path (written atomically).
        title: figure title.
        series: ``[(row key, bar label)]`` top to bottom within an occupation, e.g. training, generated.
    """
    plt = _pyplot()
    colours = class_colours(classes)
    height = 0.8 / max(len(series), 1)
    fig, ax = plt.subplots(figsize=(7.5, 0.25 * len(rows) * len(series) + 1.8))
    ticks, labels = [], []
    for i, row in enumerate(rows):
        for j, (key, label) in enumerate(series):
            shares = row.get(key)
            y = i + j * height
            ticks.append(y)
            if shares is None:
                label = f"{label} (no images)"
            labels.append(f"{row['occupation']}: {label}" if j == 0 else label)
            if shares is None:
                continue
            left = 0.0
            for k, share in enumerate(np.asarray(shares, dtype=float)):
                ax.barh(y, share, height * 0.9, left=left, color=colours[k], edgecolor="white", lw=0.5)
                left += share
    for k, name in enumerate(classes):
        ax.barh(np.nan, 0, color=colours[k], label=name)  # legend entries only
    ax.set_yticks(ticks)
    ax.set_yticklabels(labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel("share of confidently labelled images (0 to 1)")
    ax.set_title(title, fontsize=11, pad=22)
    ax.legend(loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=len(classes), frameon=False, fontsize=9)
    fig.tight_layout()
    _save(fig, out_path)
    plt.close(fig)
