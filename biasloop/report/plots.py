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
    captions = samples["caption"]

    def tile(i: int) -> tuple[np.ndarray, str]:
        mark = INDICATOR_MARKS.get(indicator[i], "") if indicator is not None and indicator[i] else ""
        return images[i], f"{mark} {_short(captions[i])}".strip()

    _tile_rows(
        [(label, [tile(int(i)) for i in idx]) for label, idx in rows],
        per_row,
        out_path,
        "Corpus contact sheet (♀/♂: the caption carries a gender indicator)",
    )


def _short(text: str, width: int = 22) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def _tile_rows(
    rows: list[tuple[str, list[tuple[np.ndarray, str] | None]]],
    columns: int,
    out_path: str | Path,
    title: str,
    gap_after: int | None = None,
) -> None:
    """Draw rows of captioned image tiles (``[(row label, [(image, caption), ...]), ...]``) to a PNG.

    ``gap_after``: leave an empty column after this many tiles (to set two groups apart in a row).
    The tiles are pasted into one white canvas drawn by a single ``imshow`` (one axes per tile made
    a 10 x 12 sheet take about 5 s, mostly creating and drawing 130 axes), captions and row labels
    are text on that axes.
    """
    plt = _pyplot()
    from biasloop.core.io import atomic_path

    first = next((t[0] for _, tiles in rows for t in tiles if t is not None), None)
    if first is None:
        raise ValueError("contact sheet: no image to draw")
    side_h, side_w = first.shape[:2]
    gap_x, gap_y = max(1, side_w // 4), max(1, side_h // 2)  # between tiles; the caption sits in gap_y
    slots = columns + (1 if gap_after is not None else 0)
    cell_w, cell_h = side_w + gap_x, side_h + gap_y
    canvas = np.full((len(rows) * cell_h, slots * cell_w, 3), 255, dtype=np.uint8)
    fig, ax = plt.subplots(figsize=(slots * 1.55, len(rows) * 1.75 + 0.4))
    for r, (label, tiles) in enumerate(rows):
        y = r * cell_h
        ax.text(-gap_x, y + side_h / 2, label, fontsize=9, ha="right", va="center")
        for c in range(slots):
            k = c if gap_after is None or c < gap_after else c - 1
            if (gap_after is not None and c == gap_after) or k >= len(tiles) or tiles[k] is None:
                continue
            image, caption = tiles[k]
            if image.shape[:2] != (side_h, side_w):
                raise ValueError(f"contact sheet: tile of shape {image.shape[:2]} among {side_h}x{side_w} tiles")
            x = c * cell_w
            canvas[y : y + side_h, x : x + side_w] = image[..., :3]
            ax.text(x + side_w / 2, y + side_h + gap_y * 0.1, caption, fontsize=6, ha="center", va="top")
    ax.imshow(canvas, interpolation="nearest", extent=(-0.5, canvas.shape[1] - 0.5, canvas.shape[0] - 0.5, -0.5))
    ax.set_axis_off()
    ax.set_title(title, fontsize=11)
    with atomic_path(out_path) as tmp:
        fig.savefig(tmp, dpi=110, format="png", bbox_inches="tight")
    plt.close(fig)


def pick_per_group(frame: pl.DataFrame, column: str, k: int, seed: int) -> pl.DataFrame:
    """At most ``k`` rows per value of ``column``, a seeded random choice, in row order."""
    rng = np.random.default_rng(seed)
    keep = np.zeros(len(frame), dtype=bool)
    values = frame[column].to_numpy()
    for value in sorted({v for v in values if v is not None}):
        idx = np.flatnonzero(values == value)
        keep[rng.choice(idx, size=min(k, len(idx)), replace=False)] = True
    return frame.filter(pl.Series(keep))


def generated_contact_sheet(
    real: pl.DataFrame,
    real_images: np.ndarray,
    generated: pl.DataFrame,
    generated_images: np.ndarray,
    out_path: str | Path,
    title: str,
    per_side: int = 6,
    seed: int = 0,
) -> None:
    """Per occupation, real training images (left) beside generated ones (right), to see what drifts.

    Args:
        real: ``occupation`` and ``caption`` of real images, aligned with ``real_images``.
        real_images: ``uint8`` ``(n, h, w, 3)``.
        generated: ``occupation`` and ``prompt`` of generated images, aligned with ``generated_images``.
        generated_images: ``uint8`` ``(m, h, w, 3)``.
        out_path: PNG path (written atomically).
        title: figure title.
        per_side: tiles per occupation on each side (a seeded random choice).
        seed: which images to show.
    """
    occupations = sorted(
        set(real["occupation"].drop_nulls().to_list()) | set(generated["occupation"].drop_nulls().to_list())
    )
    if not occupations:
        raise ValueError("generated_contact_sheet: no occupation to show")

    def side(frame: pl.DataFrame, images: np.ndarray, text: str, occupation: str) -> list:
        picked = pick_per_group(
            frame.with_row_index("_tile").filter(pl.col("occupation") == occupation), "occupation", per_side, seed
        )
        tiles = [(images[i], _short(t)) for i, t in zip(picked["_tile"].to_list(), picked[text].to_list())]
        return tiles + [None] * (per_side - len(tiles))

    rows = [
        (o, side(real, real_images, "caption", o) + side(generated, generated_images, "prompt", o)) for o in occupations
    ]
    _tile_rows(rows, 2 * per_side, out_path, title, gap_after=per_side)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, out_path: str | Path) -> None:
    from biasloop.core.io import atomic_path

    with atomic_path(out_path) as tmp:
        fig.savefig(tmp, dpi=120, format="png", bbox_inches="tight")


def share_plot(
    per_occupation_by_series: dict[str, list[dict]],
    out_path: str | Path,
    title: str,
    reference_label: str = "training images (keyword captions)",
) -> None:
    """Share of women per occupation for training vs. generated images, with 95% intervals.

    Args:
        per_occupation_by_series: ``{series label: per_occupation rows}``; each row has ``occupation``,
            ``share_train``, ``share_train_ci``, ``share_gen``, ``share_gen_ci``. The first series'
            training shares are drawn once, as ``reference_label``; each series adds its generated shares.
        out_path: PNG path (written atomically).
        title: figure title.
        reference_label: the legend's name for the ``share_train`` side (an audit's BLS table or counts).
    """
    plt = _pyplot()
    first = next(iter(per_occupation_by_series.values()))
    order = sorted(first, key=lambda r: (r["share_train"] is None, r["share_train"] or 0.0, r["occupation"]))
    occupations = [r["occupation"] for r in order]
    y = np.arange(len(occupations))
    fig, ax = plt.subplots(figsize=(7.5, 0.45 * len(occupations) + 1.6))
    ax.axvline(0.5, color="#bbbbbb", lw=1, ls="--", zorder=0)

    def draw(rows: list[dict], key: str, offset: float, label: str, colour: str, marker: str) -> None:
        by_name = {r["occupation"]: r for r in rows}
        xs, lo, hi, ys = [], [], [], []
        for i, occupation in enumerate(occupations):
            row = by_name.get(occupation)
            if row is None or row.get(key) is None:
                continue
            ci = row.get(f"{key}_ci") or [None, None]
            ci = [row[key] if c is None else c for c in ci]
            xs.append(row[key])
            lo.append(row[key] - ci[0])
            hi.append(ci[1] - row[key])
            ys.append(i + offset)
        ax.errorbar(xs, ys, xerr=[lo, hi], fmt=marker, color=colour, label=label, capsize=2, ms=6)

    series = list(per_occupation_by_series.items())
    step = 0.6 / max(len(series), 1)
    draw(series[0][1], "share_train", -0.3, reference_label, "#333333", "s")
    palette = ["#d62728", "#ff7f0e", "#9467bd", "#1f77b4", "#2ca02c"]
    for k, (label, rows) in enumerate(series):
        draw(rows, "share_gen", -0.3 + step * (k + 1), label, palette[k % len(palette)], "o")
    ax.set_yticks(y)
    ax.set_yticklabels(occupations)
    ax.set_xlim(-0.02, 1.02)
    ax.set_xlabel("share of women among confident images (95% bootstrap interval)")
    ax.set_title(title, fontsize=11)
    ax.legend(loc="lower right", fontsize=8, frameon=True)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    _save(fig, out_path)
    plt.close(fig)


# The across-generations figure: (panel title, y-axis label with its unit, scale applied to the stored
# fraction, [(row key, legend label, colour)]). One unit per panel.
GENERATION_PANELS = (
    (
        "Shift and gap (neutral prompt vs. keyword)",
        "percentage points (pp)",
        100.0,
        [
            ("shift", "shift to the training majority", "#333333"),
            ("gap", "gap, noise-free |p_gen - p_train|", "#ff7f0e"),
        ],
    ),
    (
        "Where the shift comes from",
        "percentage points (pp)",
        100.0,
        [
            ("data", "(a) data: ideal learner", "#8c8c8c"),
            ("generator", "(b) generator", "#d62728"),
            ("instrument", "(c) instrument", "#1f77b4"),
        ],
    ),
    (
        "Downstream accuracy",
        "accuracy or recall (%)",
        100.0,
        [
            ("recall_at_10", "CLIP recall@10", "#333333"),
            ("worst_group_accuracy", "CLIP zero-shot worst group", "#ff7f0e"),
            ("classifier_accuracy", "classifier", "#1f77b4"),
            ("classifier_worst_group_accuracy", "classifier worst group", "#2ca02c"),
        ],
    ),
    (
        "Downstream gaps between groups",
        "percentage points (pp)",
        100.0,
        [
            ("recall_at_10_gap", "CLIP recall@10 gap", "#333333"),
            ("classifier_dp_difference", "classifier DP difference", "#1f77b4"),
            ("classifier_eo_difference", "classifier EO difference", "#2ca02c"),
            ("captioner_leakage", "captioner leakage LIC_M - LIC_D", "#9467bd"),
        ],
    ),
    (
        "Retrieved images vs. training share",
        "MaxSkew@k (nats)",
        1.0,
        [("max_skew_vs_training", "MaxSkew@k vs. training share", "#9467bd")],
    ),
    (
        "Captioner",
        "BLEU-4 and Error (x 100)",
        100.0,
        [("captioner_bleu4", "BLEU-4", "#333333"), ("captioner_error", "gender Error (% of captions)", "#d62728")],
    ),
)


def generation_curves(rows: list[dict], out_path: str | Path, title: str) -> None:
    """Amplification, its decomposition and the downstream models across generations, 95% intervals as bands.

    One unit per panel (:data:`GENERATION_PANELS`: pp for differences of shares, % for accuracies, nats
    for MaxSkew), integer generation ticks, each panel's legend under it. ``rows`` are
    :func:`biasloop.report.html.summary_row` dicts (merged with ``task_row``); a panel none of whose
    series has a number is left out; a series gets a band when the rows carry ``key_lo`` and ``key_hi``.
    """
    plt = _pyplot()
    generations = [r["generation"] for r in rows]
    panels = [p for p in GENERATION_PANELS if any(r.get(key) is not None for r in rows for key, _, _ in p[3])]
    columns = min(2, max(len(panels), 1))  # two panels a row: legends stay legible in the report
    n_rows = -(-len(panels) // columns)
    fig, axes = plt.subplots(n_rows, columns, figsize=(5.2 * columns, 4.3 * n_rows), squeeze=False)
    for ax, (panel_title, ylabel, scale, series) in zip(axes.flat, panels):
        for key, label, colour in series:
            values = [r.get(key) for r in rows]
            if all(v is None for v in values):
                continue
            xs = [g for g, v in zip(generations, values) if v is not None]
            ys = [scale * v for v in values if v is not None]
            ax.plot(xs, ys, marker="o", color=colour, label=label)
            lows = [r.get(f"{key}_lo") for r in rows]
            highs = [r.get(f"{key}_hi") for r in rows]
            if all(v is not None for v in lows + highs):
                ax.fill_between(
                    generations, [scale * v for v in lows], [scale * v for v in highs], color=colour, alpha=0.15
                )
        ax.axhline(0, color="#bbbbbb", lw=1)
        ax.set_xticks(generations)
        ax.set_xlabel("generation")
        ax.set_ylabel(ylabel)
        ax.set_title(panel_title, fontsize=11)
        ax.legend(fontsize=9, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=1, frameon=False)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(panels) :]:
        ax.set_visible(False)
    fig.suptitle(title, fontsize=12)
    fig.tight_layout()
    _save(fig, out_path)
    plt.close(fig)


DECOMPOSITION_TERMS = (  # (key, legend label, colour) of the terms of a pairing's measured shift
    ("data", "(a) data: the ideal learner vs. the selection", "#8c8c8c"),
    ("generator", "(b) generator vs. the ideal learner", "#d62728"),
    ("instrument", "(c) instrument error", "#1f77b4"),
    ("generator_and_instrument", "(b)+(c) generator and instrument (no ground truth)", "#9467bd"),
)


def _stacked_terms(ax, shown: dict[str, dict], terms: list[tuple[str, str, str]], y: np.ndarray) -> None:
    """Left panel of :func:`decomposition_figure`: per pairing, its terms stacked (positive ones right of 0,
    negative ones left of it) and the measured shift as a black diamond with its 95% interval (pp)."""
    for row, entry in zip(y, shown.values()):
        positive = negative = 0.0
        for key, label, colour in terms:
            value = 100.0 * ((entry.get(key) or {}).get("estimate") or 0.0)
            start = positive if value >= 0 else negative
            ax.barh(
                row,
                value,
                left=start,
                color=colour,
                height=0.55,
                edgecolor="white",
                label=label if row == y[0] else None,
            )
            if value >= 0:
                positive += value
            else:
                negative += value
        measured = entry["measured"]
        lo, hi = [100.0 * (c if c is not None else measured["estimate"]) for c in measured.get("ci") or [None, None]]
        value = 100.0 * measured["estimate"]
        ax.errorbar(
            [value],
            [row],
            xerr=[[value - lo], [hi - value]],
            fmt="D",
            color="black",
            ms=6,
            capsize=3,
            label="measured shift (95% CI)" if row == y[0] else None,
        )


def _term_intervals(ax, shown: dict[str, dict], terms: list[tuple[str, str, str]], y: np.ndarray) -> None:
    """Right panel of :func:`decomposition_figure`: each term of each pairing with its 95% interval (pp)."""
    step = 0.7 / max(len(terms), 1)
    for k, (key, _label, colour) in enumerate(terms):
        for row, entry in zip(y, shown.values()):
            term = entry.get(key)
            if not term or term.get("estimate") is None:
                continue
            value = 100.0 * term["estimate"]
            ci = [100.0 * (c if c is not None else term["estimate"]) for c in term.get("ci") or [None, None]]
            offset = 0.35 - step * (k + 0.5)
            ax.errorbar(
                [value], [row + offset], xerr=[[value - ci[0]], [ci[1] - value]], fmt="o", color=colour, ms=5, capsize=2
            )


def decomposition_figure(pairings: dict[str, dict], out_path: str | Path, title: str) -> None:
    """Each pairing's measured shift to the majority split into data, generator and instrument.

    Left panel: one stacked bar per pairing (positive terms stacked right of 0, negative ones left of
    it), the measured shift as a black diamond with its 95% interval. Right panel: each term with its
    own 95% bootstrap interval. Values in percentage points of the share of women.

    Args:
        pairings: ``{pairing name: decomposition}`` as :func:`biasloop.metrics.decomposition.decompose`
            returns it under ``"decomposition"`` (``measured`` and each term ``{"estimate", "ci"}``,
            fractions); pairings without one (``available`` false) are left out.
        out_path: PNG path (written atomically).
        title: figure title.
    """
    plt = _pyplot()
    shown = {name: d for name, d in pairings.items() if d and d.get("available", True) and d.get("measured")}
    names = list(shown)
    terms = [t for t in DECOMPOSITION_TERMS if any(t[0] in d for d in shown.values())]
    fig, (left, right) = plt.subplots(
        1, 2, figsize=(12.5, 0.75 * max(len(names), 1) + 2.4), gridspec_kw={"width_ratios": [1.25, 1]}, sharey=True
    )
    y = np.arange(len(names))[::-1]
    _stacked_terms(left, shown, terms, y)
    _term_intervals(right, shown, terms, y)
    for ax in (left, right):
        ax.axvline(0, color="#555555", lw=1)
        ax.grid(axis="x", alpha=0.3)
    left.set_yticks(y)
    left.set_yticklabels([n.replace("_", " ") for n in names])
    left.set_xlabel("shift to the training majority (pp)")
    right.set_xlabel("each term with its 95% bootstrap interval (pp)")
    left.set_title("measured shift = (a) + (b) + (c)", fontsize=10)
    right.set_title("how sure each term is", fontsize=10)
    handles, labels = left.get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=2, fontsize=9, frameon=False, bbox_to_anchor=(0.5, -0.02))
    fig.suptitle(title, fontsize=11)
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    _save(fig, out_path)
    plt.close(fig)
