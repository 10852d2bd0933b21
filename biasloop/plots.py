"""Figures a person looks at: the corpus contact sheet, share-of-women plots, generation curves.

matplotlib with the Agg backend, imported inside each function so stages that draw nothing stay fast.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl

INDICATOR_MARKS = {"female": "♀", "male": "♂", "both": "⚥", "none": ""}


def contact_sheet(
    samples: pl.DataFrame,
    images: np.ndarray,
    out_path: str | Path,
    per_row: int = 8,
    max_rows: int = 12,
    seed: int = 0,
) -> None:
    """A grid of samples: one row per occupation (or one block of random samples when none is known).

    Each tile shows the image and, under it, the caption's gender indicator mark (♀/♂) and the first
    words of the caption, so a person can see what the corpus is made of.

    Args:
        samples: the caption table (``caption``, ``true_occupation``, ``true_indicator`` optional),
            in the same order as ``images``.
        images: ``uint8`` ``(n, h, w, 3)``.
        out_path: PNG path (written atomically).
        per_row: tiles per row.
        max_rows: at most this many occupations.
        seed: which samples to show.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from biasloop.io import atomic_path

    rng = np.random.default_rng(seed)
    rows: list[tuple[str, np.ndarray]] = []
    if "true_occupation" in samples.columns and samples["true_occupation"].null_count() < len(samples):
        occupations = sorted(o for o in samples["true_occupation"].unique().to_list() if o is not None)
        for occupation in occupations[:max_rows]:
            idx = np.flatnonzero((samples["true_occupation"] == occupation).fill_null(False).to_numpy())
            rows.append((occupation, rng.choice(idx, size=min(per_row, len(idx)), replace=False)))
        other = np.flatnonzero(samples["true_occupation"].is_null().to_numpy())
        if len(other):
            rows.append(("no occupation", rng.choice(other, size=min(per_row, len(other)), replace=False)))
    else:
        picked = rng.choice(len(samples), size=min(len(samples), per_row * max_rows), replace=False)
        rows = [(f"samples {i + 1}", picked[i * per_row : (i + 1) * per_row]) for i in range(max_rows)]
        rows = [r for r in rows if len(r[1])]

    indicator = samples["true_indicator"] if "true_indicator" in samples.columns else None
    fig, axes = plt.subplots(len(rows), per_row, figsize=(per_row * 1.55, len(rows) * 1.75), squeeze=False)
    for r, (label, idx) in enumerate(rows):
        for c in range(per_row):
            ax = axes[r, c]
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_visible(False)
            if c >= len(idx):
                ax.axis("off")
                continue
            i = int(idx[c])
            ax.imshow(images[i], interpolation="nearest")
            mark = INDICATOR_MARKS.get(indicator[i], "") if indicator is not None and indicator[i] else ""
            caption = samples["caption"][i]
            short = caption if len(caption) <= 22 else caption[:21] + "…"
            ax.set_xlabel(f"{mark} {short}".strip(), fontsize=6)
            if c == 0:
                ax.set_ylabel(label, fontsize=9, rotation=0, ha="right", va="center")
    fig.suptitle("Corpus contact sheet (♀/♂: the caption carries a gender indicator)", fontsize=11)
    fig.tight_layout()
    with atomic_path(out_path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
