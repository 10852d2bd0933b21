"""``docs/results.md``'s study section: each collected study's endpoints, written by ``summarize``.

A study is another set of runs than the committed one (its own baseline commit and seeds); every number
comes from ``metrics/studies/<name>.json`` (:func:`biasloop.study.collect.collect_study`). Values are
fractions shown x 100: percentage points (pp) for shares and terms, points of accuracy for accuracies;
a slope is per unit of its axis. Definitions: docs/studies.md.
"""

from __future__ import annotations

from typing import Any


def _x100(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:+.1f}"


def _p_text(p: float | None) -> str:
    if p is None:
        return "–"
    return "< 0.001" if p < 0.001 else f"{p:.3f}"


def _verdict(record: dict[str, Any]) -> str:
    """The record's verdict with an equivalence margin in the table's units (x 100)."""
    verdict = record.get("verdict") or "–"
    if verdict.startswith("equivalent") and record.get("margin") is not None:
        return f"equivalent within ±{100 * record['margin']:g}"
    return verdict


def _interval_row(record: dict[str, Any]) -> str:
    lo, hi = record.get("ci") or (None, None)
    level = record.get("ci_level")
    level_text = "–" if level is None else f"{100 * level:.1f}%" + (" (Holm)" if record.get("adjusted") else "")
    p = record.get("p_adjusted") if record.get("adjusted") else record.get("p")
    return (
        f"| {record['label']} | {_x100(record.get('estimate'))} [{_x100(lo)}, {_x100(hi)}] | {level_text} "
        f"| {_p_text(p)} | {_verdict(record)} | {record.get('n', '–')} |"
    )


def _baselines(study: dict[str, Any]) -> str:
    revs = sorted({(c.get("baseline_rev") or "")[:7] for c in study.get("cells", []) if c.get("baseline_rev")})
    return ", ".join(f"`{r}`" for r in revs) or "–"


def study_lines(study: dict[str, Any]) -> list[str]:
    """One study's Markdown: what it varied, its baseline, the primary endpoints and the secondary intervals.

    Args:
        study: ``metrics/studies/<name>.json``.

    Returns:
        Lines of Markdown (a level-3 heading, a run line, one table of every interval).
    """
    config = study.get("study") or {}
    name = config.get("name", "?")
    varied = [f"`{axis}` {values}" for axis, values in (config.get("axes") or {}).items()]
    if config.get("variants"):
        varied.insert(0, "variants " + ", ".join(f"`{v}`" for v in config["variants"]))
    header = "| interval | estimate x 100 [interval] | level | p | verdict | seeds |"
    rows = [_interval_row(r) for r in (study.get("endpoints") or {}).values()]
    rows += [_interval_row(r) for r in study.get("intervals") or []]
    missing = len(study.get("missing") or []) + len(study.get("failed") or [])
    return [
        f"### `{name}`",
        "",
        f"Varied: {'; '.join(varied) or '–'}; seeds {config.get('seeds')} (+ {config.get('primary_seeds')} in the "
        f"cells a primary endpoint reads); {study.get('n_cells_used', '–')} of {study.get('n_cells_expected', '–')} "
        f"experiments used ({missing} missing or failed); baseline commit {_baselines(study)}. "
        f"Primary endpoints first (plain intervals); the rest Holm-adjusted over a family of "
        f"{study.get('family_size', '–')}. Figure: `plots/studies/{name}_intervals.png`.",
        "",
        header,
        "|---|---|---|---|---|---|",
        *rows,
        "",
    ]


def studies_lines(studies: list[dict[str, Any]]) -> list[str]:
    """The results page's ``## Studies`` section: one :func:`study_lines` block per collected study; [] without any."""
    if not studies:
        return []
    lines = [
        "## Studies (other runs)",
        "",
        "Each study is a grid of DVC experiments replicated over seeds (`biasloop study run --name NAME`, then "
        "`biasloop study collect --name NAME`); values x 100: pp for shares and terms, points for accuracies. "
        "Verdicts: *effect*, *equivalent within +-m* (TOST against the declared margin) or *not resolved* "
        "([studies.md](studies.md)).",
        "",
    ]
    for study in studies:
        lines += study_lines(study)
    return lines
