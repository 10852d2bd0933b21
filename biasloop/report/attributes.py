"""What the run says about each K-class attribute (tone today; docs/attributes.md): flat rows per
generation, the ``attributes`` part of ``metrics/summary.json`` and ``metrics/headline.json``, the report's
section and the results page's lines. Fractions in, pp or % out, as everywhere in the report.

Per generation (``metrics/generations/gen{N}.json`` ``attributes.<name>``, neutral prompt vs. keyword
captions): the measured shift and gap with 95% intervals and ``tv_raw``; the same corrected by the
instrument's KxK confusion (``corrected_``) and from ground truth (``true_``: true training classes vs.
the oracle's classes of the generated images, glyph world); the shift's decomposition into data,
generator and instrument; the downstream CLIP's recall@10 gap and MaxSkew@k against the training
distribution over the attribute's classes.
"""

from __future__ import annotations

import html
from typing import Any

from biasloop.metrics.rows import decomposition_values, estimand_values
from biasloop.report.page import fmt, image_tag, table, with_interval

HEADLINE_PAIRING = "prompt_vs_keyword"
# per attribute in metrics/headline.json (pp, last generation), after gender's keys: `<name>_shift`, ...
HEADLINE_KEYS = ("shift", "gap")
# plots/attributes.csv columns after generation and attribute (fractions)
PLOT_COLUMNS = ("shift", "gap", "corrected_shift", "true_shift", "true_gap", "data", "generator", "instrument")


def _flat(table_entry: dict[str, Any] | None, prefix: str = "") -> dict[str, Any]:
    values = estimand_values(table_entry)
    values.pop("a_abs_raw", None)
    estimands = (table_entry or {}).get("estimands") or {}
    values["tv_raw"] = (estimands.get("gap") or {}).get("tv_raw", estimands.get("tv_raw"))
    return {f"{prefix}{key}": value for key, value in values.items()}


def attribute_rows(generation_metrics: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """``{name: [row per generation]}`` from each ``gen{N}.json``'s ``attributes`` (module docstring)."""
    out: dict[str, list[dict[str, Any]]] = {}
    for metrics in generation_metrics:
        for name, entry in (metrics.get("attributes") or {}).items():
            downstream = entry.get("downstream") or {}
            recall = downstream.get("recall") or {}
            row = {
                "generation": metrics["generation"],
                **_flat(entry.get("amplification")),
                **_flat(entry.get("amplification_corrected"), "corrected_"),
                **_flat(entry.get("amplification_true"), "true_"),
                **decomposition_values((entry.get("decomposition") or {}).get(HEADLINE_PAIRING)),
                "recall_at_10_gap": recall.get("recall@10_gap"),
                "max_skew_vs_training": downstream.get("max_skew_vs_training_mean"),
            }
            out.setdefault(name, []).append(row)
    return out


def attribute_summary(
    rows: dict[str, list[dict[str, Any]]], paradox: dict[str, Any] | None, instrument: dict[str, Any] | None
) -> dict[str, Any]:
    """``metrics/summary.json``'s ``attributes``: per attribute its classes, the instrument's accuracy and
    abstain rate, each paradox pairing's measured / corrected / true estimands, and a row per generation."""
    out = {}
    for name, name_rows in rows.items():
        entry = ((paradox or {}).get("attributes") or {}).get(name) or {}
        measured = (instrument or {}).get("attributes", {}).get(name) or {}
        out[name] = {
            "classes": entry.get("classes") or measured.get("classes"),
            "instrument": {k: measured.get(k) for k in ("accuracy", "abstain_rate", "threshold") if k in measured},
            "paradox": {
                pairing: {
                    **_flat(tables.get("measured")),
                    **_flat(tables.get("corrected"), "corrected_"),
                    **_flat(tables.get("truth"), "true_"),
                    **decomposition_values(tables.get("decomposition")),
                }
                for pairing, tables in (entry.get("pairings") or {}).items()
            },
            **{f"gen{r['generation']}": {k: v for k, v in r.items() if k != "generation"} for r in name_rows},
        }
    return out


def attribute_headline(rows: dict[str, list[dict[str, Any]]]) -> dict[str, float | None]:
    """``<name>_shift`` and ``<name>_gap`` of the last generation in pp (0.1 pp), for ``dvc exp show``."""
    out = {}
    for name, name_rows in rows.items():
        last = max(name_rows, key=lambda r: r["generation"])
        for key in HEADLINE_KEYS:
            value = last.get(key)
            out[f"{name}_{key}"] = None if value is None else round(100 * value, 1)
    return out


def plot_rows(rows: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """``plots/attributes.csv``: one row per (attribute, generation)."""
    return [
        {"generation": r["generation"], "attribute": name, **{k: r.get(k) for k in PLOT_COLUMNS}}
        for name, name_rows in rows.items()
        for r in name_rows
    ]


def distribution_rows(paradox: dict[str, Any] | None, name: str) -> tuple[list[str], list[dict[str, Any]]]:
    """The headline pairing's class distributions per occupation for the figure: measured training and
    generated, and (glyph world) true training and oracle-labelled generated; ``(classes, rows)``."""
    entry = ((paradox or {}).get("attributes") or {}).get(name) or {}
    pairing = (entry.get("pairings") or {}).get(HEADLINE_PAIRING) or {}
    classes = list(entry.get("classes") or [])
    truth = {r["occupation"]: r for r in ((pairing.get("truth") or {}).get("per_occupation") or [])}
    rows = []
    for row in (pairing.get("measured") or {}).get("per_occupation") or []:
        true_row = truth.get(row["occupation"], {})

        def shares(side: dict[str, Any] | None) -> list[float] | None:
            values = [None if not side else side.get(c) for c in classes]
            return None if any(v is None for v in values) else values

        rows.append(
            {
                "occupation": row["occupation"],
                "train": shares(row.get("p_train")),
                "gen": shares(row.get("p_gen")),
                "true_train": shares(true_row.get("p_train")),
                "oracle_gen": shares(true_row.get("p_gen")),
            }
        )
    return classes, rows


ROW_COLUMNS = [
    ("generation", "int"),
    ("shift (pp)", "pp+"),
    ("gap (pp)", "pp"),
    ("raw TV (pp)", "pp"),
    ("shift, corrected (pp)", "pp+"),
    ("shift, truth (pp)", "pp+"),
    ("gap, truth (pp)", "pp"),
    ("data (pp)", "pp+"),
    ("generator (pp)", "pp+"),
    ("instrument (pp)", "pp+"),
    ("recall@10 gap (pp)", "pp"),
    ("MaxSkew vs training (nats)", "num"),
]


def _row_cells(row: dict[str, Any]) -> list[Any]:
    return [
        row["generation"],
        with_interval(row, "shift"),
        with_interval(row, "gap"),
        row.get("tv_raw"),
        with_interval(row, "corrected_shift"),
        with_interval(row, "true_shift"),
        with_interval(row, "true_gap"),
        with_interval(row, "data"),
        with_interval(row, "generator"),
        with_interval(row, "instrument"),
        row.get("recall_at_10_gap"),
        row.get("max_skew_vs_training"),
    ]


def attribute_section(
    name: str, rows: list[dict[str, Any]], instrument: dict[str, Any] | None, figure: str | None
) -> str:
    """The report's section of one K-class attribute: a sentence on generation 0, the table per generation,
    the instrument's accuracy and KxK confusion, and the class-distribution figure."""
    measured = ((instrument or {}).get("attributes") or {}).get(name) or {}
    classes = list(measured.get("classes") or [])
    first = min(rows, key=lambda r: r["generation"]) if rows else {}
    sentence = (
        f"Generation 0, neutral prompt vs. keyword captions: shift {fmt(with_interval(first, 'shift'), 'pp+')} pp, "
        f"gap {fmt(with_interval(first, 'gap'), 'pp')} pp; corrected by the instrument's confusion, shift "
        f"{fmt(with_interval(first, 'corrected_shift'), 'pp+')} pp; from ground truth (true training classes, "
        f"oracle on generated images) {fmt(with_interval(first, 'true_shift'), 'pp+')} pp. Of the measured "
        f"shift, data {fmt(first.get('data'), 'pp+')}, generator {fmt(first.get('generator'), 'pp+')}, "
        f"instrument {fmt(first.get('instrument'), 'pp+')} pp."
    )
    parts = [
        f"<h2 id='attribute-{html.escape(name)}'>{html.escape(name.capitalize())} ({len(classes)} classes: "
        f"{html.escape(', '.join(classes))})</h2>",
        f"<p>{sentence}</p>",
        "<p class='note'>Shift: mean over occupations of the generated minus training share of each "
        "occupation's training-majority class; gap: the noise-free mean total-variation distance between the "
        "two class distributions (raw TV: its plug-in, biased upwards). Definitions and coverage: "
        "docs/attributes.md.</p>",
        table(ROW_COLUMNS, [_row_cells(r) for r in sorted(rows, key=lambda r: r["generation"])]),
    ]
    if measured.get("confusion"):
        parts.append(
            f"<p class='note'>The instrument on held-out images: accuracy {fmt(measured.get('accuracy'), '%')}% of "
            f"confident labels, abstain rate {fmt(measured.get('abstain_rate'), '%')}% (top class at most "
            f"{fmt(measured.get('threshold'))}). Confusion counts, rows true class, columns label:</p>"
        )
        parts.append(
            table(
                [("true \\ label", "text"), *((c, "int") for c in classes), ("abstained", "int")],
                [
                    [c, *counts, abstained]
                    for c, counts, abstained in zip(
                        classes, measured["confusion"], measured.get("abstained") or [None] * len(classes)
                    )
                ],
            )
        )
    if figure:
        parts.append(image_tag(figure, f"{name} per occupation"))
    return "\n".join(parts)
