"""The report's section for a named study (``metrics/studies/<name>.json`` of ``biasloop study collect``)."""

from __future__ import annotations

import html
from typing import Any

from biasloop.report.html import _image_tag, _table


def named_study_section(study: dict[str, Any]) -> str:
    """One study: its grid, primary endpoints (plain intervals) and the adjusted intervals that found an
    effect or equivalence, problems, and its figure. Estimates are shown as collected (fractions;
    slopes per unit of their axis), each with its interval level and whether it is Holm-adjusted."""
    config = study["study"]
    axes = [f"{html.escape(path)} {{{', '.join(str(v) for v in values)}}}" for path, values in config["axes"].items()]
    if config.get("variants"):
        axes.insert(0, "variant {" + html.escape(", ".join(config["variants"])) + "}")
    parts = [
        f"<h2>Study '{html.escape(config['name'])}': {' &times; '.join(axes)}; {config['generations']} "
        f"generation(s)</h2>",
        f"<p class='note'>{study['n_cells_used']} of {study['n_cells_expected']} experiments aggregated "
        f"(seeds {html.escape(str(config['seeds']))}, primary cells also {html.escape(str(config['primary_seeds']))}). "
        "Primary endpoints: plain t intervals over seeds. Every other interval: Holm-adjusted over the "
        f'study\'s {study["family_size"]} secondary intervals, at the level shown. "No effect" only as '
        'equivalence within a declared margin (TOST); otherwise "not resolved" (docs/studies.md).</p>',
    ]
    problems = (
        [
            f"failed: {html.escape(f['name'])} (see <code>{html.escape(f['logs_command'])}</code>)"
            for f in study["failed"]
        ]
        + [f"missing: {html.escape(m['name'])} ({html.escape(str(m['state']))})" for m in study["missing"]]
        + [f"inconsistent: {html.escape(line)}" for line in study["inconsistent"]]
        + [f"note: {html.escape(line)}" for line in study["notes"]]
    )
    if problems:
        parts.append("<p class='missing'>" + "; ".join(problems) + "</p>")
    columns = [
        ("endpoint", "text"),
        ("estimate", "num"),
        ("interval", "num"),
        ("level", "text"),
        ("adjusted", "text"),
        ("p", "p"),
        ("seeds", "int"),
        ("verdict", "text"),
    ]

    def row(name: str, r: dict[str, Any]) -> list[Any]:
        level = f"{100 * r['ci_level']:.2f}%" if r.get("ci") else "–"
        return [
            name,
            r["estimate"],
            r["ci"],
            level,
            "Holm" if r["adjusted"] else "no",
            r["p_adjusted"] if r["adjusted"] else r["p"],
            r["n"],
            r["verdict"],
        ]

    parts.append(_table(columns, [row(f"{name}: {r['label']}", r) for name, r in study["endpoints"].items()]))
    resolved = [r for r in study["intervals"] if r["verdict"] != "not resolved"]
    if resolved:
        parts.append(
            f"<p class='note'>Secondary intervals with a verdict ({len(resolved)} of "
            f"{len(study['intervals'])}; p is Holm-adjusted):</p>"
        )
        parts.append(_table(columns, [row(r["label"], r) for r in resolved]))
    for caption, path in (study.get("figures") or {}).items():
        parts.append(_image_tag(path, f"study {config['name']} {caption}"))
    return "\n".join(parts)
