"""``docs/results.md``: the committed run's results as a page the README links to, written by ``summarize``.

Every number on the page comes from the metrics files of the run that wrote it (no number is typed by
hand); fractions are shown in percentage points (differences of shares) or percent (accuracies).
"""

from __future__ import annotations

from typing import Any

from biasloop.metrics.rows import decomposition_values, estimand_values
from biasloop.report.summary import PAIRING_LABELS, PAPER_A_ABS


def _pp(value: Any, signed: bool = True) -> str:
    if value is None:
        return "–"
    return f"{100 * value:+.1f}" if signed else f"{100 * value:.1f}"


def _ci(row: dict[str, Any], key: str, signed: bool = True) -> str:
    lo, hi = row.get(f"{key}_lo"), row.get(f"{key}_hi")
    return "–" if lo is None or hi is None else f"[{_pp(lo, signed)}, {_pp(hi, signed)}]"


def _p(row: dict[str, Any], key: str) -> str:
    p = row.get(f"{key}_p")
    if p is None:
        return "–"
    return f"< {p:.3f}" if row.get(f"{key}_p_is_bound") else f"{p:.3f}"


def _term(row: dict[str, Any], key: str, signed: bool = True) -> str:
    return "–" if row.get(key) is None else f"{_pp(row[key], signed)} {_ci(row, key, signed)}"


def _headline_lines(entry: dict[str, Any] | None) -> list[str]:
    """The headline sentence (generation 0, neutral prompt vs. keyword captions) and the decomposition
    figure; [] without a measured table."""
    if not entry or not entry.get("measured"):
        return []
    h = {**estimand_values(entry["measured"]), **decomposition_values(entry.get("decomposition"))}
    sentence = (
        f"**Headline (generation 0, neutral prompt vs. keyword captions):** generated images lean "
        f"**{_pp(h['shift'])} pp** {_ci(h, 'shift')} (p {_p(h, 'shift')}) further towards each "
        "occupation's training majority than the training images."
    )
    if h.get("generator") is not None:
        sentence += (
            f" Of that, **data** (an ideal learner of the captions) {_term(h, 'data')}, **generator** "
            f"{_term(h, 'generator')}, **instrument** {_term(h, 'instrument')} pp."
        )
    sentence += (
        f" Gap {_pp(h['gap'], False)} pp {_ci(h, 'gap', False)}; the paper's raw A_abs "
        f"{_pp(h['a_abs_raw'], False)} pp (Seshadri et al.: 12.57)."
    )
    return [sentence, "", "![decomposition](../plots/decomposition.png)", ""]


def _paradox_lines(table: dict[str, Any]) -> list[str]:
    """The paradox table (generation 0): one row per pairing with a measured table; [] without pairings."""
    if not table:
        return []
    lines = [
        "## The paradox table (generation 0)",
        "",
        "| pairing | images (train / gen) | shift (pp) | p | gap (pp) | raw A_abs (pp) | paper's A_abs (pp) "
        "| data (pp) | generator (pp) | instrument (pp) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, entry in table.items():
        measured = entry.get("measured")
        if not measured:
            continue
        r = {**estimand_values(measured), **decomposition_values(entry.get("decomposition"))}
        lines.append(
            f"| {PAIRING_LABELS.get(name, name)} | {measured.get('n_images_train')} / {measured.get('n_images_gen')} "
            f"| {_pp(r['shift'])} {_ci(r, 'shift')} | {_p(r, 'shift')} | {_pp(r['gap'], False)} "
            f"{_ci(r, 'gap', False)} | {_pp(r['a_abs_raw'], False)} | {PAPER_A_ABS.get(name, '–')} "
            f"| {_term(r, 'data')} | {_term(r, 'generator')} | {_term(r, 'instrument')} |"
        )
    return lines + [""]


def _generation_lines(rows: list[dict[str, Any]]) -> list[str]:
    """The table across generations and the generations figure; [] without rows."""
    if not rows:
        return []
    lines = [
        "## Across generations (neutral prompt vs. keyword captions)",
        "",
        "Shift, gap and terms against the real corpus's keyword captions; *shift vs. dataset N*: the "
        "same shift against the images generation N was trained on (dataset N, labelled by the same "
        "instrument), so what generation N adds beyond its own training data.",
        "",
        "| generation | shift (pp) | gap (pp) | data (pp) | generator (pp) | instrument (pp) "
        "| shift vs. dataset N (pp) | generator occupation accuracy (%) "
        "| instrument accuracy on generated images (%) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        accuracy = r.get("generator_occupation_accuracy")
        agreement = r.get("instrument_accuracy_on_generated")
        lines.append(
            f"| {r['generation']} | {_pp(r.get('shift'))} {_ci(r, 'shift')} | {_pp(r.get('gap'), False)} "
            f"{_ci(r, 'gap', False)} | {_term(r, 'data')} | {_term(r, 'generator')} | {_term(r, 'instrument')} "
            f"| {_term(r, 'shift_vs_training_dataset')} "
            f"| {'–' if accuracy is None else f'{100 * accuracy:.1f}'} "
            f"| {'–' if agreement is None else f'{100 * agreement:.1f}'} |"
        )
    return lines + ["", "![generations](../plots/generations.png)", ""]


# The studies: other runs than this one (their own baseline commits and seeds), from
# metrics/studies/<name>.json (biasloop.study.collect.collect_study); values x 100 (pp for shares and terms,
# points for accuracies; a slope per unit of its axis); definitions in docs/studies.md.


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
        f"| {record['label']} | {_pp(record.get('estimate'))} [{_pp(lo)}, {_pp(hi)}] | {level_text} "
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
        "Verdicts: *effect*, *equivalent within +-m* (TOST against the declared margin), *not resolved*, or "
        "*zero in every seed* (no variation to test; outside the Holm family) ([studies.md](studies.md)).",
        "",
    ]
    for study in studies:
        lines += study_lines(study)
    return lines


def _attribute_lines(name: str, rows: list[dict[str, Any]]) -> list[str]:
    """The table of one K-class attribute (:func:`biasloop.report.attributes.attribute_rows`), per generation."""
    columns = [("shift", True), ("gap", False), ("corrected_shift", True), ("true_shift", True)]
    columns += [("true_gap", False), ("data", True), ("generator", True), ("instrument", True)]
    lines = [
        f"### {name.capitalize()}",
        "",
        "Neutral prompt vs. keyword captions, per generation, in pp ([attributes.md](attributes.md)).",
        "",
        "| generation | shift | gap | shift, corrected | shift, truth | gap, truth | data | generator | instrument |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in sorted(rows, key=lambda r: r["generation"]):
        lines.append(f"| {row['generation']} | " + " | ".join(_term(row, k, s) for k, s in columns) + " |")
    return [*lines, ""]


def results_markdown(
    paradox: dict[str, Any] | None,
    rows: list[dict[str, Any]],
    params: dict[str, Any],
    studies: list[dict[str, Any]] | None = None,
    attributes: dict[str, list[dict[str, Any]]] | None = None,
) -> str:
    """The results page (Markdown) of one run.

    Args:
        paradox: ``metrics/paradox.json``.
        rows: :func:`biasloop.report.summary.summary_row` per generation.
        params: the run's params (its identity line).
        studies: the collected ``metrics/studies/<name>.json`` (a section after this run's tables).
        attributes: :func:`biasloop.report.attributes.attribute_rows` (a section per K-class attribute).

    Returns:
        The page's text: the headline sentence and the decomposition figure, the paradox table (generation 0),
        the table across generations, the studies, and the commands that reproduce them.
    """
    table = (paradox or {}).get("table") or {}
    base = params.get("base") or {}
    lines = [
        "# Results of the committed run",
        "",
        "Written by `dvc repro` (stage `summarize`) from `metrics/`; do not edit by hand. Differences of shares of "
        "women in percentage points (pp), 95% intervals in brackets; definitions and coverage in "
        "[estimands.md](estimands.md).",
        "",
        f"Run: `synthetic_ratio` {params.get('synthetic_ratio')}, `base.seed` {base.get('seed')}, `world.seed` "
        f"{(params.get('world') or {}).get('seed')}, `base.cpu_threads` {base.get('cpu_threads')}, "
        f"{len(params.get('generations') or [])} generations.",
        "",
    ]
    lines += _headline_lines(table.get("prompt_vs_keyword"))
    lines += _paradox_lines(table)
    lines += _generation_lines(rows)
    if attributes:
        lines += ["## Attributes beyond binary gender", ""]
        for name, name_rows in attributes.items():
            lines += _attribute_lines(name, name_rows)
    lines += studies_lines(studies or [])
    lines += [
        "## Reproduce",
        "",
        "```bash",
        "make repro                       # this page, metrics/ and plots/",
        "biasloop amplify --json TRAIN.csv GEN.csv   # the same estimands for your own count tables",
        "```",
        "",
    ]
    return "\n".join(lines)
