"""The offline report: one HTML file with every figure embedded, written by the ``summarize`` stage.

``render_report`` puts this run first and other runs last. Its first screen (1,280 x 800) holds the run's
identity (commit, synthetic_ratio, seeds, threads), a one-line verdict and the headline figure (the
decomposition with its intervals); then the headline sentence, the tables across generations, the
paradox table, the instrument, the remaining figures and this run's params; then the studies, each
saying which experiments and baseline commit it comes from. Figures are base64 PNG and the stylesheet is
inline, so the page opens without network. The section builders live in :mod:`biasloop.report.sections`,
:mod:`biasloop.report.headline_html` and :mod:`biasloop.report.study_html`.
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

import yaml

from biasloop.core.tracking import git_revision as code_commit  # the commit MLflow's runs carry too
from biasloop.report.headline_html import first_screen
from biasloop.report.page import CSS, image_tag
from biasloop.report.sections import (
    DEFINITIONS,
    acquisition_section,
    generations_section,
    instrument_section,
    paradox_section,
    tasks_section,
)
from biasloop.report.study_html import study_section


def _navigation(
    has_paradox: bool, has_instrument: bool, has_figures: bool, has_studies: bool, attributes: tuple[str, ...] = ()
) -> str:
    """Links to the report's sections, this run's first, the other runs' last."""
    anchors = {"generations": "Across generations"}
    if has_paradox:
        anchors["paradox"] = "Paradox table"
    if has_instrument:
        anchors["instrument"] = "Instrument"
    for name in attributes:
        anchors[f"attribute-{name}"] = name.capitalize()
    if has_figures:
        anchors["figures"] = "Figures"
    anchors["params"] = "Params"
    if has_studies:
        anchors["studies"] = "Studies (other runs)"
    links = "".join(f"<a href='#{anchor}'>{html.escape(label)}</a>" for anchor, label in anchors.items())
    return f"<nav>{links}</nav>"


def render_report(
    out_path: str | Path,
    rows: list[dict[str, Any]],
    paradox: dict[str, Any] | None,
    instrument: dict[str, Any] | None,
    params: dict[str, Any],
    figures: dict[str, str | Path],
    study: dict[str, Any] | None = None,
    acquisition: dict[str, Any] | None = None,
    study_sections: list[str] | None = None,
    commit: str | None = None,
    attribute_sections: dict[str, str] | None = None,
) -> str:
    """Write the self-contained HTML report and return its text.

    Args:
        out_path: HTML path (written atomically).
        rows: :func:`biasloop.report.summary.summary_row` per generation.
        paradox: ``metrics/paradox.json``.
        instrument: ``metrics/instrument.json``.
        params: the run's params (its identity on the first screen; all of them at the end).
        figures: ``{caption: png path}``; the first is the headline figure on the first screen, the others
            follow this run's tables in order.
        study: ``metrics/study.json`` (a section among the other runs), or None.
        acquisition: ``metrics/acquisition.json`` (a "From LAION metadata" section after the instrument;
            one line when the LAION path is off), or None for no section.
        study_sections: HTML of the named studies' sections
            (:func:`biasloop.report.study_html.named_study_section`), after the ``study`` section.
        commit: the commit of the code that made the run; None: the checked-out one (``git rev-parse HEAD``).
        attribute_sections: ``{name: HTML}`` of each K-class attribute's section
            (:func:`biasloop.report.attributes.attribute_section`), after the instrument.
    """
    from biasloop.core.io import atomic_path

    figures = dict(figures)
    headline_figure = ""
    if figures:
        caption, path = next(iter(figures.items()))
        headline_figure = image_tag(path, caption)
        del figures[caption]
    others = [section for section in [study_section(study), *(study_sections or [])] if section]
    has = (bool(paradox and paradox.get("table")), bool(instrument), bool(figures), bool(others))
    navigation = _navigation(*has, tuple(attribute_sections or {}))
    parts = [
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>",
        "<meta name='viewport' content='width=device-width, initial-scale=1'><title>biasloop report</title>",
        f"<style>{CSS}</style></head><body>",
        first_screen(paradox, params, commit or code_commit(), headline_figure, navigation),
        DEFINITIONS,
        generations_section(rows),
        tasks_section(rows),
        paradox_section(paradox),
        instrument_section(instrument),
        *(attribute_sections or {}).values(),
        acquisition_section(acquisition),
        "<h2 id='figures'>Figures</h2>" if figures else "",
    ]
    for caption, path in figures.items():
        parts.append(f"<h3>{html.escape(caption)}</h3>{image_tag(path, caption)}")
    dump = yaml.safe_dump(params, sort_keys=False)
    parts.append(
        f"<h2 id='params'>Params of this run</h2><details><summary>{len(dump.splitlines())} lines, as summarize "
        f"read them</summary><pre>{html.escape(dump)}</pre></details>"
    )
    parts.append(
        "<p class='note'>Raw numbers: metrics/summary.json, metrics/generations/*.json, metrics/paradox.json.</p>"
    )
    if others:
        parts.append(
            "<h2 class='other' id='studies'>Studies: other runs</h2><p class='note'>Each study below aggregates "
            "DVC experiments of its own, made from the baseline commit it names; its numbers are not this "
            "run's.</p>"
        )
        parts += others
    parts.append("</body></html>")
    text = "\n".join(part for part in parts if part)
    with atomic_path(out_path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return text
