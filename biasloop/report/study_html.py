"""The report's sections for studies: other runs than the one the report is about.

A study aggregates DVC experiments made from some baseline commit, often an older one; each section
opens with :func:`other_runs_note` (which experiments, from which baseline commit, when), and the report
puts every study after this run's own sections. ``study_section`` reads ``metrics/study.json`` (the
replacement study of ``biasloop study collect``); ``named_study_section`` reads a named study's
``metrics/studies/<name>.json``.
"""

from __future__ import annotations

import html
from typing import Any

from biasloop.report.page import fmt, image_tag, table

# How the report shows each study metric (see biasloop.report.page.UNITS): fractions in percent or pp.
STUDY_UNITS = {
    "excess_abs": "pp+",
    "amplification_abs": "pp",
    "shift_to_majority": "pp+",
    "generator_occupation_accuracy": "%",
    "recall_at_10": "%",
    "recall_at_10_gap": "pp+",
    "max_skew_vs_training": "num",
    "worst_group_accuracy": "%",
    "equalized_odds_difference": "num",
}


def other_runs_note(study: dict[str, Any], source: str) -> str:
    """Where a study's numbers come from: its experiments' baseline commit(s) and dates, not this run.

    Args:
        study: a collected study with ``cells`` (each with ``baseline_rev``, ``baseline_name`` and
            ``timestamp``, as :func:`biasloop.study.collect.collect_study` writes them).
        source: the JSON file the section reads (named in the note).
    """
    cells = study.get("cells") or []
    revisions = sorted({f"{c['baseline_rev'][:7]} ({c.get('baseline_name') or 'detached'})" for c in cells})
    days = sorted({str(c["timestamp"])[:10] for c in cells if c.get("timestamp")})
    when = f", run {days[0]}" + (f" to {days[-1]}" if days[-1] != days[0] else "") if days else ""
    return (
        f"<p class='source'><b>Other runs, not this one:</b> {len(cells)} DVC experiments from baseline "
        f"commit {html.escape(', '.join(revisions) or 'unknown')}{html.escape(when)}; each experiment's "
        f"revision and params: <code>{html.escape(source)}</code> (cells).</p>"
    )


def _problems(study: dict[str, Any]) -> list[str]:
    """Failed, missing and inconsistent experiments of a study (and its notes, when it has any)."""
    return (
        [
            f"failed: {html.escape(f['name'])} (see <code>{html.escape(f['logs_command'])}</code>)"
            for f in study["failed"]
        ]
        + [f"missing: {html.escape(m['name'])} ({html.escape(str(m['state']))})" for m in study["missing"]]
        + [f"inconsistent: {html.escape(line)}" for line in study["inconsistent"]]
        + [f"note: {html.escape(line)}" for line in study.get("notes") or []]
    )


def _slopes_table(study: dict[str, Any]) -> str:
    """Per metric: its slope against ratio at the last generation and against generation at the highest
    ratio, each with its seed-clustered 95% interval and seed count."""
    config = study["study"]
    last = config["generations"] - 1
    top_ratio = f"{max(config['ratios']):g}"
    rows = []
    for key, label in study["metrics"].items():
        vs_ratio = study["trends"][key]["vs_ratio"].get(f"gen{last}") or {}
        vs_generation = study["trends"][key]["vs_generation"].get(top_ratio) or {}
        # slopes of fractions in percentage points, of nats and differences as numbers
        unit = "num" if STUDY_UNITS.get(key, "num") == "num" else "pp+"
        rows.append(
            [label]
            + [fmt(vs_ratio.get("slope"), unit), fmt(vs_ratio.get("ci"), unit), vs_ratio.get("n")]
            + [fmt(vs_generation.get("slope"), unit), fmt(vs_generation.get("ci"), unit), vs_generation.get("n")]
        )
    columns = [
        ("metric", "text"),
        (f"slope vs ratio, generation {last}", "text"),
        ("95% CI", "text"),
        ("seeds", "int"),
        (f"slope vs generation, ratio {top_ratio}", "text"),
        ("95% CI", "text"),
        ("seeds", "int"),
    ]
    return table(columns, rows)


def _cells_table(study: dict[str, Any]) -> str:
    """The amplification metric per (ratio, generation) cell: mean, between-seed SD, 95% interval, seeds."""
    amplification = study["amplification_metric"]
    unit = STUDY_UNITS.get(amplification, "pp")
    rows = [
        [f"{entry['ratio']:g}", entry["generation"], s["mean"], s["sd"], s["ci"], s["n"]]
        for entry in study["summary"]
        for s in [entry["metrics"][amplification]]
    ]
    columns = [
        ("synthetic_ratio", "text"),
        ("generation", "int"),
        ("mean", unit),
        ("between-seed SD", "num" if unit == "num" else "pp"),
        ("95% CI", unit),
        ("seeds", "int"),
    ]
    label = html.escape(study["metrics"][amplification])
    return f"<p class='note'>{label} per cell (percentage points):</p>\n" + table(columns, rows)


def study_section(study: dict[str, Any] | None) -> str:
    """The report's section for ``metrics/study.json`` ("" when there is none).

    Where its experiments come from (:func:`other_runs_note`), the headline trends (slope of each
    metric against ``synthetic_ratio`` at the last generation and against generation at the highest
    ratio, with seed-clustered 95% intervals), the per-cell means of the amplification metric with
    between-seed SD, interval and seed count, the failed or missing cells, and the study figures
    (``study["figures"]``, PNGs written by ``biasloop study collect``).
    """
    if not study:
        return ""
    if "summary" not in study:  # the placeholder committed before any study was collected
        return (
            "<h2>Study</h2><p class='note'>No study collected yet: <code>biasloop study run</code>, "
            "<code>biasloop study collect</code>, then <code>dvc repro</code> (README, Studies).</p>"
        )
    config = study["study"]
    parts = [
        f"<h2>Study '{html.escape(str(config['name']))}': {len(config['ratios'])} ratios &times; "
        f"{len(config['seeds'])} seeds &times; {config['generations']} generations</h2>",
        other_runs_note(study, "metrics/study.json"),
        f"<p class='note'>{study['n_cells_used']} of {study['n_cells_expected']} experiments aggregated. Per cell: "
        "mean over seeds, between-seed SD, 95% t interval over seeds, n seeds (values in percent). Slopes: "
        "mean of per-seed least-squares slopes with a 95% t interval over seeds (seeds are the independent "
        "units: cells of one seed share random streams); per unit of synthetic_ratio (0 &rarr; 1) or per "
        "generation.</p>",
    ]
    if study.get("amplification_note"):
        parts.append(f"<p class='missing'>{html.escape(study['amplification_note'])}</p>")
    problems = _problems(study)
    if problems:
        parts.append("<p class='missing'>Not averaged over: " + "; ".join(problems) + "</p>")
    parts += [_slopes_table(study), _cells_table(study)]
    parts += [image_tag(path, f"study {caption}") for caption, path in (study.get("figures") or {}).items()]
    return "\n".join(parts)


def _endpoint_row(name: str, r: dict[str, Any]) -> list[Any]:
    """One interval of a named study as a table row (see :data:`ENDPOINT_COLUMNS`)."""
    level = f"{100 * r['ci_level']:.2f}%" if r.get("ci") else "–"
    p = r["p_adjusted"] if r["adjusted"] else r["p"]
    return [name, r["estimate"], r["ci"], level, "Holm" if r["adjusted"] else "no", p, r["n"], r["verdict"]]


ENDPOINT_COLUMNS = [
    ("endpoint", "text"),
    ("estimate", "num"),
    ("interval", "num"),
    ("level", "text"),
    ("adjusted", "text"),
    ("p", "p"),
    ("seeds", "int"),
    ("verdict", "text"),
]


def named_study_section(study: dict[str, Any]) -> str:
    """One named study: where its experiments come from, its grid, primary endpoints (plain intervals) and
    the adjusted intervals that found an effect or equivalence, problems, and its figure. Estimates are
    shown as collected (fractions; slopes per unit of their axis), each with its interval level and
    whether it is Holm-adjusted."""
    config = study["study"]
    axes = [f"{html.escape(path)} {{{', '.join(str(v) for v in values)}}}" for path, values in config["axes"].items()]
    if config.get("variants"):
        axes.insert(0, "variant {" + html.escape(", ".join(config["variants"])) + "}")
    parts = [
        f"<h2>Study '{html.escape(config['name'])}': {' &times; '.join(axes)}; {config['generations']} "
        f"generation(s)</h2>",
        other_runs_note(study, f"metrics/studies/{config['name']}.json"),
        f"<p class='note'>{study['n_cells_used']} of {study['n_cells_expected']} experiments aggregated "
        f"(seeds {html.escape(str(config['seeds']))}, primary cells also {html.escape(str(config['primary_seeds']))}). "
        "Primary endpoints: plain t intervals over seeds. Every other interval: Holm-adjusted over the "
        f'study\'s {study["family_size"]} secondary intervals, at the level shown. "No effect" only as '
        'equivalence within a declared margin (TOST); otherwise "not resolved" (docs/studies.md).</p>',
    ]
    problems = _problems(study)
    if problems:
        parts.append("<p class='missing'>" + "; ".join(problems) + "</p>")
    endpoints = [_endpoint_row(f"{name}: {r['label']}", r) for name, r in study["endpoints"].items()]
    parts.append(table(ENDPOINT_COLUMNS, endpoints))
    resolved = [r for r in study["intervals"] if r["verdict"] not in ("not resolved", "zero in every seed")]
    if resolved:
        parts.append(
            f"<p class='note'>Secondary intervals with a verdict ({len(resolved)} of "
            f"{len(study['intervals'])}; p is Holm-adjusted):</p>"
        )
        parts.append(table(ENDPOINT_COLUMNS, [_endpoint_row(r["label"], r) for r in resolved]))
    for caption, path in (study.get("figures") or {}).items():
        parts.append(image_tag(path, f"study {config['name']} {caption}"))
    return "\n".join(parts)
