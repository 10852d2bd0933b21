"""The audit's HTML page: one self-contained file (figures as base64 PNG, no script, no link to fetch).

What it shows, from :func:`biasloop.report.audit.audit_result`'s dict: the shift and gap of every
pairing (measured and, with the instrument's confusion rates, corrected), the per-occupation shares
figure and table, the decomposition where the reference allows it (else why not), which images were
served or skipped, and the instrument's stated error. Shares in percent, differences in percentage points.
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

from biasloop.core.io import atomic_path
from biasloop.report.page import CSS, fmt, image_tag, table
from biasloop.report.plots import decomposition_figure, share_plot

ESTIMAND_COLUMNS = [
    ("pairing", "text"),
    ("shares", "text"),
    ("shift (pp)", "pp+"),
    ("shift 95% CI", "pp+"),
    ("p", "p"),
    ("gap (pp)", "pp"),
    ("gap 95% CI", "pp"),
    ("raw A_abs (pp)", "pp"),
    ("occupations", "int"),
    ("reference images", "int"),
    ("generated images", "int"),
]
OCCUPATION_COLUMNS = [
    ("occupation", "text"),
    ("reference share of women (%)", "%"),
    ("95% CI", "%"),
    ("generated share (%)", "%"),
    ("95% CI", "%"),
    ("difference (pp)", "pp+"),
    ("generated images", "int"),
    ("abstained (%)", "%"),
]


def _estimand_rows(pairings: dict[str, Any]) -> list[list[Any]]:
    rows = []
    for name, entry in pairings.items():
        for kind, overall in (("measured", entry["overall"]), ("corrected", entry.get("corrected"))):
            if not overall:
                continue
            shift, gap = overall["estimands"]["shift"], overall["estimands"]["gap"]
            rows.append(
                [name, kind, shift["estimate"], shift["ci"], shift["p_value"], gap["estimate"], gap["ci"]]
                + [overall["estimands"]["a_abs_raw"], overall.get("n_occupations")]
                + [overall.get("n_images_train"), overall.get("n_images_gen")]
            )
    return rows


def _occupation_rows(table: dict[str, Any]) -> list[list[Any]]:
    return [
        [r["occupation"], r["share_train"], r["share_train_ci"], r["share_gen"], r["share_gen_ci"], r["difference"]]
        + [r["n_female_gen"] + r["n_male_gen"] + r["n_abstain_gen"], r["abstain_rate_gen"]]
        for r in table["per_occupation"]
    ]


def _decomposition_section(pairings: dict[str, Any], figure: Path) -> str:
    available = {
        n: e["decomposition"] for n, e in pairings.items() if (e["decomposition"] or {}).get("available", True)
    }
    if not available:
        reasons = {(e["decomposition"] or {}).get("reason") for e in pairings.values()}
        return "<p class='note'>No decomposition: " + html.escape("; ".join(sorted(r for r in reasons if r))) + "</p>"
    decomposition_figure(available, figure, "The shift split into data, generator and instrument")
    terms = ("data", "generator", "instrument", "generator_and_instrument")
    rows = [
        [name, d["measured"]["estimate"] if isinstance(d.get("measured"), dict) else d.get("measured")]
        + [(d.get(t) or {}).get("estimate") for t in terms]
        for name, d in available.items()
    ]
    columns = [("pairing", "text"), ("measured shift (pp)", "pp+")] + [(f"{t} (pp)", "pp+") for t in terms]
    return table(columns, rows) + image_tag(figure, "decomposition")


def _images_section(images: dict[str, Any]) -> str:
    counts = ", ".join(f"{k[2:].replace('_', ' ')} {images[k]}" for k in images if k.startswith("n_"))
    problems = "".join(
        f"<li>{html.escape(kind.replace('_', ' '))}: {html.escape(', '.join(images[kind][:20]))}"
        + (f" and {len(images[kind]) - 20} more" if len(images[kind]) > 20 else "")
        + "</li>"
        for kind in ("missing", "unreadable", "wrong_size", "extra")
        if images.get(kind)
    )
    policy = html.escape(str(images.get("policy")))
    return f"<p>{html.escape(counts)} (on a bad image: {policy})</p>" + (f"<ul>{problems}</ul>" if problems else "")


def render_audit_page(result: dict[str, Any], figures: Path) -> str:
    """The page's HTML; figures are drawn into ``figures`` (a folder) and embedded."""
    figures.mkdir(parents=True, exist_ok=True)
    pairings = result["pairings"]
    reference = result["reference"]
    share_plot(
        {name: entry["table"]["per_occupation"] for name, entry in pairings.items()},
        figures / "shares.png",
        f"Share of women per occupation: generated images vs. the reference ({reference['kind']})",
        reference_label=f"reference: {reference['kind']}",
    )
    first = next(iter(pairings.values()))
    instrument = result.get("instrument") or {}
    stated = ", ".join(f"{key} {fmt(instrument.get(key), '%')}%" for key in ("accuracy", "tpr", "fpr", "abstain_rate"))
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>biasloop audit</title>",
        f"<style>{CSS}</style></head><body><h1>biasloop audit</h1>",
        f"<p class='headline'>{result['n_labelled']} images labelled against the reference "
        f"<b>{html.escape(reference['kind'])}</b> ({html.escape(reference['source'])}). Shift: the mean move of "
        "the share of women towards each occupation's reference majority; gap: the mean distance without "
        "sampling noise (docs/estimands.md).</p>",
        "<h2>Estimands</h2>",
        table(ESTIMAND_COLUMNS, _estimand_rows(pairings)),
        "<h2>Share of women per occupation</h2>",
        image_tag(figures / "shares.png", "shares per occupation"),
        f"<p class='note'>Rows: {html.escape(next(iter(pairings)))}, measured.</p>",
        table(OCCUPATION_COLUMNS, _occupation_rows(first["table"])),
        "<h2>Decomposition</h2>",
        _decomposition_section(pairings, figures / "decomposition.png"),
        "<h2>Images</h2>",
        _images_section(result["images"]),
        "<h2>Instrument</h2>",
        f"<p>Stated on held-out labelled images: {stated}; labels here: "
        f"{html.escape(str(result['label_counts']))}.</p>",
        "</body></html>",
    ]
    return "\n".join(parts) + "\n"


def write_audit_page(result: dict[str, Any], path: str | Path) -> str:
    """Write :func:`render_audit_page` to ``path`` atomically (figures beside it in ``figures/``)."""
    path = Path(path)
    text = render_audit_page(result, path.parent / "figures")
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return text
