"""The run's summary: headline metrics for `dvc exp show`, rows for `dvc plots`, and an offline report.

``summary_rows`` flattens each ``metrics/generations/gen{N}.json`` into one row of headline numbers;
``build_summary`` nests them as ``{"gen0": {...}, "gen1": {...}, "paradox": {...}}`` so `dvc exp show`
and `dvc metrics diff` read well. ``render_report`` writes one HTML file with every figure embedded as
base64 PNG and no external script or stylesheet, so it opens in a browser without network (unlike
`dvc plots diff`, whose HTML loads vega from a CDN).
"""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path
from typing import Any

import yaml

from biasloop.metrics.rows import decomposition_values, estimand_values


def _get(data: dict | None, *keys: str) -> Any:
    for key in keys:
        if not isinstance(data, dict):
            return None
        data = data.get(key)
    return data


def _flat_interval(row: dict[str, Any], key: str, interval: Any) -> None:
    """``row[key_lo]``, ``row[key_hi]`` from a ``[lo, hi]`` pair (flat keys read well in `dvc metrics`)."""
    lo, hi = interval if isinstance(interval, (list, tuple)) and len(interval) == 2 else (None, None)
    row[f"{key}_lo"], row[f"{key}_hi"] = lo, hi


def summary_row(metrics: dict[str, Any]) -> dict[str, Any]:
    """Headline numbers of one generation's metrics (fractions; None when not computed).

    First the estimands of the headline pairing (neutral prompt vs. keyword captions): ``shift`` to the
    training majority and ``gap`` (noise-free mean |F_gen - F_train|) with 95% intervals and p-values,
    the paper's raw ``a_abs_raw``, and the shift's decomposition into ``data`` (the ideal learner),
    ``generator`` and ``instrument`` with intervals (docs/estimands.md). Then the noise-floor diagnostics
    of the absolute statistics (noise floor, excess, p) and the downstream numbers; ``bias_amp`` is not
    repeated (it equals ``shift_to_majority`` for two groups).
    """
    amplification = metrics.get("amplification") or {}
    row: dict[str, Any] = {"generation": metrics["generation"]}
    row.update(estimand_values(amplification))
    row.update(decomposition_values(_get(metrics, "decomposition", "prompt_vs_keyword")))
    row["shift_corrected"] = _get(metrics, "amplification_corrected", "estimands", "shift", "estimate")
    row["shift_true"] = _get(metrics, "amplification_true", "estimands", "shift", "estimate")
    vs_dataset = _get(metrics, "amplification_vs_training_dataset", "measured")
    row["shift_vs_training_dataset"] = _get(vs_dataset, "estimands", "shift", "estimate")
    _flat_interval(row, "shift_vs_training_dataset", _get(vs_dataset, "estimands", "shift", "ci"))
    row["gap_vs_training_dataset"] = _get(vs_dataset, "estimands", "gap", "estimate")
    row["instrument_accuracy_on_generated"] = _get(
        metrics, "instrument_on_generated", "by_prompt_kind", "neutral", "overall", "accuracy"
    )
    row["amplification_abs"] = amplification.get("amplification_abs")
    for suffix in ("abs", "dir"):
        row[f"noise_floor_{suffix}"] = amplification.get(f"noise_floor_{suffix}")
        row[f"excess_{suffix}"] = amplification.get(f"excess_{suffix}")
        _flat_interval(row, f"excess_{suffix}", amplification.get(f"excess_{suffix}_ci"))
        row[f"p_value_{suffix}"] = amplification.get(f"p_value_{suffix}")
    row["shift_to_majority"] = amplification.get("shift_to_majority")
    _flat_interval(row, "shift_to_majority", amplification.get("shift_to_majority_ci"))
    row["mad_gen"] = amplification.get("mad_gen")
    row["n_images_gen"] = amplification.get("n_images_gen")
    row["excess_abs_corrected"] = _get(metrics, "amplification_corrected", "excess_abs")
    row["excess_abs_true"] = _get(metrics, "amplification_true", "excess_abs")
    row["generator_occupation_accuracy"] = _get(metrics, "generator", "occupation_accuracy")
    row["generator_abstain_rate"] = _get(metrics, "generator", "abstain_rate")
    recall = _get(metrics, "downstream", "recall") or {}
    row["recall_at_10"] = recall.get("recall@10")
    row["recall_at_10_gap"] = recall.get("recall@10_gap")
    row["max_skew"] = _get(metrics, "downstream", "max_skew_mean")  # MaxSkew@k against parity (nats)
    row["ndkl"] = _get(metrics, "downstream", "ndkl_mean")
    row["max_skew_vs_training"] = _get(metrics, "downstream", "max_skew_vs_training_mean")
    fairness = _get(metrics, "downstream", "fairness") or {}
    row["zero_shot_accuracy"] = fairness.get("overall_accuracy")
    row["worst_group_accuracy"] = fairness.get("worst_group_accuracy")
    row["worst_group_min_size"] = fairness.get("min_group_size")
    row["equalized_odds_difference"] = fairness.get("equalized_odds_difference_mean")
    return row


def task_row(captioner: dict[str, Any] | None, classifier: dict[str, Any] | None) -> dict[str, Any]:
    """Headline numbers of one generation's captioner and classifier metrics (None when absent).

    Args:
        captioner: ``metrics/generations/captioner_gen{N}.json``: BLEU-4, ROUGE-L (fractions), CIDEr-D (0..10),
            misprediction Error and Ratio, LIC_M, LIC_D and leakage (fractions) with their spreads over runs.
        classifier: ``metrics/generations/classifier_gen{N}.json``: accuracy, one-vs-rest demographic
            parity and equalized odds differences (means over occupations), worst-group accuracy.
    """
    return {
        "captioner_bleu4": _get(captioner, "quality", "bleu4"),
        "captioner_rouge_l": _get(captioner, "quality", "rouge_l"),
        "captioner_cider_d": _get(captioner, "quality", "cider_d"),
        "captioner_error": _get(captioner, "misprediction", "error"),
        "captioner_ratio": _get(captioner, "misprediction", "ratio_predicted"),
        "captioner_ratio_true": _get(captioner, "misprediction", "ratio_true"),
        "captioner_lic_m": _get(captioner, "leakage", "lic_m"),
        "captioner_lic_d": _get(captioner, "leakage", "lic_d"),
        "captioner_leakage": _get(captioner, "leakage", "leakage"),
        "captioner_leakage_std": _get(captioner, "leakage", "leakage_std"),
        "classifier_accuracy": _get(classifier, "accuracy"),
        "classifier_accuracy_gap": _get(classifier, "accuracy_gap"),
        "classifier_dp_difference": _get(classifier, "demographic_parity_difference_mean"),
        "classifier_eo_difference": _get(classifier, "equalized_odds_difference_mean"),
        "classifier_worst_group_accuracy": _get(classifier, "worst_group_accuracy"),
    }


TASK_COLUMNS = (  # (summary key, header, unit) of the downstream-task table in the report
    ("captioner_bleu4", "BLEU-4 (%)", "%"),
    ("captioner_rouge_l", "ROUGE-L (%)", "%"),
    ("captioner_cider_d", "CIDEr-D", "num"),
    ("captioner_error", "Error (%)", "%"),
    ("captioner_ratio", "Ratio W/M", "num"),
    ("captioner_ratio_true", "true ratio W/M", "num"),
    ("captioner_lic_m", "LIC_M (%)", "%"),
    ("captioner_lic_d", "LIC_D (%)", "%"),
    ("captioner_leakage", "leakage (pp)", "pp+"),
    ("captioner_leakage_std", "leakage sd (pp)", "pp"),
    ("classifier_accuracy", "classifier acc. (%)", "%"),
    ("classifier_accuracy_gap", "acc. gap W/M (pp)", "pp"),
    ("classifier_dp_difference", "DP diff. (pp)", "pp"),
    ("classifier_eo_difference", "EO diff. (pp)", "pp"),
    ("classifier_worst_group_accuracy", "worst-group acc. (%)", "%"),
)


def paradox_summary(entry: dict[str, Any] | None, kind: str = "measured") -> dict[str, Any]:
    """One pairing's numbers for ``metrics/summary.json`` (fractions and counts; {} when missing): the
    estimands (:func:`~biasloop.metrics.paradox.estimand_values`), for measured tables the decomposition
    terms, the noise-floor diagnostic ``excess_abs`` and the numbers of images (and pairs)."""
    table = _get(entry, kind)
    if not table:
        return {}
    out = estimand_values(table)
    if kind == "measured":
        out.update(decomposition_values(_get(entry, "decomposition")))
    out.update(
        {key: table.get(key) for key in ("excess_abs", "n_images_train", "n_images_gen", "n_pairs") if key in table}
    )
    return out


HEADLINE_PAIRING = "prompt_vs_keyword"  # neutral prompt vs. keyword-retrieved captions, as in Seshadri et al.


def build_summary(
    rows: list[dict[str, Any]], paradox: dict[str, Any] | None, instrument: dict[str, Any] | None
) -> dict[str, Any]:
    """``metrics/summary.json``: the headline first, then the paradox pairings, generation rows keyed
    ``gen{N}`` and the instrument.

    ``headline`` is generation 0's neutral prompt vs. keyword captions: the shift to the training majority
    with its interval and p, the gap, the raw A_abs, and the shift's decomposition into data, generator
    and instrument (each with an interval). Each paradox pairing (``paradox``, and ``paradox_corrected``
    on corrected shares) has the same estimands, the number of images on each side and, for captions
    as prompts, the number of pairs.
    """
    summary: dict[str, Any] = {}
    if paradox:
        table = paradox.get("table") or {}
        if HEADLINE_PAIRING in table:
            summary["headline"] = paradox_summary(table[HEADLINE_PAIRING])
        summary["paradox"] = {name: paradox_summary(entry) for name, entry in table.items()}
        summary["paradox_corrected"] = {name: paradox_summary(entry, "corrected") for name, entry in table.items()}
    for row in rows:
        summary[f"gen{row['generation']}"] = {k: v for k, v in row.items() if k != "generation"}
    if instrument:
        summary["instrument"] = {
            k: instrument.get(k) for k in ("accuracy", "abstain_rate", "tpr", "fpr", "cpu_threads") if k in instrument
        }
    return summary


def share_rows(generation_metrics: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (generation, occupation): training and generated share of women, for `dvc plots`."""
    rows = []
    for metrics in generation_metrics:
        for item in metrics.get("per_occupation") or []:
            rows.append(
                {
                    "generation": metrics["generation"],
                    "occupation": item["occupation"],
                    "share_train": item.get("share_train"),
                    "share_gen": item.get("share_gen"),
                }
            )
    return rows


def _image_tag(path: str | Path, alt: str) -> str:
    path = Path(path)
    if not path.exists():
        return f"<p class='missing'>({html.escape(alt)}: {html.escape(str(path))} not found)</p>"
    data = base64.b64encode(path.read_bytes()).decode()
    return f"<img alt='{html.escape(alt)}' src='data:image/png;base64,{data}'>"


# How each kind of number is shown: the unit it is in.
#   pp: a difference of shares (fraction) in percentage points; pp+: the same, signed;
#   %: a share, rate or accuracy (fraction) in percent; num: a number in its own unit (MaxSkew, NDKL in
#   nats; Pearson's r); p: a p-value; int: a count.
UNITS = ("pp", "pp+", "%", "num", "p", "int", "text")


def _fmt(value: Any, unit: str = "num") -> str:
    """``value`` shown in ``unit`` (see :data:`UNITS`); a ``[lo, hi]`` pair as an interval; – for None."""
    if value is None:
        return "–"
    if isinstance(value, (list, tuple)) and len(value) == 2:
        return f"[{_fmt(value[0], unit)}, {_fmt(value[1], unit)}]"
    if isinstance(value, bool) or not isinstance(value, (int, float)) or unit == "text":
        return html.escape(str(value))
    if unit in ("pp", "%"):
        return f"{100 * value:.1f}"
    if unit == "pp+":
        return f"{100 * value:+.1f}"
    if unit == "p":
        return "&lt; 0.001" if value < 0.001 else f"{value:.3f}"  # 1000 replicates: below 0.001 is a bound
    if unit == "int":
        return f"{int(value):d}"
    return f"{value:.3f}"


def _table(columns: list[tuple[str, str]], rows: list[list[Any]]) -> str:
    """An HTML table; ``columns`` are ``(header, unit)`` pairs, each cell formatted in its column's unit."""
    for _, unit in columns:
        if unit not in UNITS:
            raise ValueError(f"unknown unit {unit!r}")
    head = "".join(f"<th>{html.escape(header)}</th>" for header, _ in columns)
    body = "".join(
        "<tr>" + "".join(f"<td>{_fmt(value, unit)}</td>" for (_, unit), value in zip(columns, row)) + "</tr>"
        for row in rows
    )
    return f"<div class='scroll'><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>"


CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
h1{font-size:1.6em}h2{font-size:1.25em;margin-top:1.8em;border-bottom:1px solid #ddd;padding-bottom:.2em}
table{border-collapse:collapse;margin:.6em 0;font-size:.9em}th,td{border:1px solid #ddd;padding:.3em .6em;text-align:right}
th{background:#f4f4f4}td:first-child,th:first-child{text-align:left}img{max-width:100%;border:1px solid #eee}
.note{color:#555;font-size:.9em}.headline{font-size:1.1em;line-height:1.5}.scroll{overflow-x:auto}.missing{color:#a00}pre{background:#f7f7f7;padding:1em;overflow:auto;font-size:.8em}
"""


# How the report shows each study metric (see UNITS): fractions in percent or percentage points.
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


def study_section(study: dict[str, Any] | None) -> str:
    """The report's "Study" section from ``metrics/study.json`` (empty string when there is none).

    Shows the headline trends (slope of each metric against ``synthetic_ratio`` at the last generation and
    against generation at the highest ratio, with seed-clustered 95% intervals), the per-cell means of
    the amplification metric with between-seed SD, interval and seed count, the failed or missing
    cells, and the study figures (``study["figures"]``, PNGs written by ``biasloop study collect``).
    """
    if not study:
        return ""
    if "summary" not in study:  # the placeholder committed before any study was collected
        return (
            "<h2>Study</h2><p class='note'>No study collected yet: <code>biasloop study run</code>, "
            "<code>biasloop study collect</code>, then <code>dvc repro</code> (README, Studies).</p>"
        )
    config = study["study"]
    amplification = study["amplification_metric"]
    parts = [
        f"<h2>Study '{html.escape(str(config['name']))}': {len(config['ratios'])} ratios &times; "
        f"{len(config['seeds'])} seeds &times; {config['generations']} generations</h2>"
    ]
    parts.append(
        f"<p class='note'>{study['n_cells_used']} of {study['n_cells_expected']} experiments aggregated. Per cell: "
        "mean over seeds, between-seed SD, 95% t interval over seeds, n seeds (values in percent). Slopes: "
        "mean of per-seed least-squares slopes with a 95% t interval over seeds (seeds are the independent "
        "units: cells of one seed share random streams); per unit of synthetic_ratio (0 &rarr; 1) or per "
        "generation.</p>"
    )
    if study.get("amplification_note"):
        parts.append(f"<p class='missing'>{html.escape(study['amplification_note'])}</p>")
    problems = (
        [
            f"failed: {html.escape(f['name'])} (see <code>{html.escape(f['logs_command'])}</code>)"
            for f in study["failed"]
        ]
        + [f"missing: {html.escape(m['name'])} ({html.escape(str(m['state']))})" for m in study["missing"]]
        + [f"inconsistent: {html.escape(line)}" for line in study["inconsistent"]]
    )
    if problems:
        parts.append("<p class='missing'>Not averaged over: " + "; ".join(problems) + "</p>")
    last = config["generations"] - 1
    top_ratio = f"{max(config['ratios']):g}"

    def slope_unit(key: str) -> str:  # slopes of fractions in percentage points, of nats/differences as numbers
        return "num" if STUDY_UNITS.get(key, "num") == "num" else "pp+"

    rows = []
    for key, label in study["metrics"].items():
        vs_ratio = study["trends"][key]["vs_ratio"].get(f"gen{last}") or {}
        vs_generation = study["trends"][key]["vs_generation"].get(top_ratio) or {}
        unit = slope_unit(key)
        rows.append(
            [
                label,
                _fmt(vs_ratio.get("slope"), unit),
                _fmt(vs_ratio.get("ci"), unit),
                vs_ratio.get("n"),
                _fmt(vs_generation.get("slope"), unit),
                _fmt(vs_generation.get("ci"), unit),
                vs_generation.get("n"),
            ]
        )
    parts.append(
        _table(
            [
                ("metric", "text"),
                (f"slope vs ratio, generation {last}", "text"),
                ("95% CI", "text"),
                ("seeds", "int"),
                (f"slope vs generation, ratio {top_ratio}", "text"),
                ("95% CI", "text"),
                ("seeds", "int"),
            ],
            rows,
        )
    )
    unit = STUDY_UNITS.get(amplification, "pp")
    spread = "num" if unit == "num" else "pp"
    rows = [
        [f"{entry['ratio']:g}", entry["generation"], s["mean"], s["sd"], s["ci"], s["n"]]
        for entry in study["summary"]
        for s in [entry["metrics"][amplification]]
    ]
    parts.append(f"<p class='note'>{html.escape(study['metrics'][amplification])} per cell (percentage points):</p>")
    parts.append(
        _table(
            [
                ("synthetic_ratio", "text"),
                ("generation", "int"),
                ("mean", unit),
                ("between-seed SD", spread),
                ("95% CI", unit),
                ("seeds", "int"),
            ],
            rows,
        )
    )
    for caption, path in (study.get("figures") or {}).items():
        parts.append(_image_tag(path, f"study {caption}"))
    revisions = sorted({c["baseline_rev"][:7] for c in study["cells"]})
    parts.append(
        f"<p class='note'>Baseline commit(s) {', '.join(revisions)}; every cell's revision and params: "
        "metrics/study.json (cells, common_params).</p>"
    )
    return "\n".join(parts)


# The acquisition table's fixed columns in order (metrics/acquisition.json, written by laion_filter); the
# failed_<reason> and filtered_<reason> columns between them are whichever reasons occurred.
ACQUISITION_HEAD = ("matched", "duplicate_url", "over_cap", "requested", "downloaded")
ACQUISITION_TAIL = (
    "dropped",
    "kept",
    "share_female_indicator_kept",
    "n_indicator_kept",
    "share_female_indicator_dropped",
    "n_indicator_dropped",
)


def acquisition_section(acquisition: dict[str, Any] | None) -> str:
    """The report's "From LAION metadata" section from ``metrics/acquisition.json`` ("" when None).

    Disabled (``{"enabled": false}``, the default): one line saying the LAION path is off. Enabled: one
    row per occupation with the selection counts (matched, duplicate URLs, over the cap, requested), the
    download outcome (downloaded, ``failed_<reason>``), the filter outcome (``filtered_<reason>``,
    dropped, kept) and the share of women among kept and among dropped images by their captions' gender
    indicators with its denominator (the instrument's share among dropped images is not measured: said
    in the section).
    """
    if acquisition is None:
        return ""
    if not acquisition.get("enabled"):
        return (
            "<h2>From LAION metadata</h2><p class='note'>The LAION acquisition path is off "
            "(<code>laion_select.metadata</code> is empty): the corpus comes from the <code>corpus</code> "
            "stage's own source; see docs/laion.md.</p>"
        )
    table = acquisition["occupations"]
    keys = list(dict.fromkeys(k for row in table.values() for k in row))
    failed = sorted(k for k in keys if k.startswith("failed_"))
    filtered = [k for k in keys if k.startswith("filtered_")]
    columns = [*ACQUISITION_HEAD, *failed, *filtered, *ACQUISITION_TAIL]
    units = {k: "%" if k.startswith("share_") else "int" for k in columns}
    headers = {
        "share_female_indicator_kept": "women among kept, by caption (%)",
        "n_indicator_kept": "kept with a gender word",
        "share_female_indicator_dropped": "women among dropped, by caption (%)",
        "n_indicator_dropped": "dropped with a gender word",
    }
    parts = [
        "<h2>From LAION metadata: acquisition per occupation</h2>",
        (
            "<p class='note'>Counts of images (a URL selected for several occupations counts for each). "
            "matched = requested + duplicate URLs + over the per-occupation cap; requested = downloaded + "
            "failed; downloaded = dropped + kept, dropped being the sum of the filter columns. Women among "
            "kept or dropped images: women / (women + men) among the captions with a female or a male gender "
            "word (counted beside it), a caption proxy: a filter that drops women's images more often shifts "
            "the measured share. <b>The instrument's share of women among the dropped images is not "
            "measured</b> by the pipeline (docs/laion.md says how to classify <code>dropped/</code>).</p>"
        ),
        _table(
            [("occupation", "text")] + [(headers.get(k, k.replace("_", " ")), units[k]) for k in columns],
            [[name] + [row.get(k) for k in columns] for name, row in table.items()],
        ),
    ]
    if acquisition.get("reasons"):
        total = ", ".join(f"{html.escape(str(k))}: {v}" for k, v in sorted(acquisition["reasons"].items()))
        parts.append(
            f"<p class='note'>Filter outcome over all {acquisition.get('n_filtered', '?')} downloaded "
            f"images: {total}.</p>"
        )
    return "\n".join(parts)


def headline_section(paradox: dict[str, Any] | None, params: dict[str, Any]) -> str:
    """The report's first lines: the headline shift, its decomposition in one sentence, and the run's
    identity (ratio, seed, threads); empty when there is no paradox table."""
    entry = _get(paradox, "table", HEADLINE_PAIRING)
    if not entry or not entry.get("measured"):
        return ""
    h = paradox_summary(entry)
    pp = lambda key: _fmt(h.get(key), "pp+")  # noqa: E731
    interval = lambda key: _fmt([h.get(f"{key}_lo"), h.get(f"{key}_hi")], "pp+")  # noqa: E731
    p_text = "p " + _fmt(h.get("shift_p"), "p") if h.get("shift_p") is not None else ""
    sentence = (
        f"In generation 0, images generated for a neutral prompt lean <b>{pp('shift')} pp</b> "
        f"{interval('shift')} further towards each occupation's training majority than the keyword-retrieved "
        f"training images ({p_text})."
    )
    if h.get("generator") is not None:
        sentence += (
            f" Of that, the <b>data</b> (an ideal learner of these captions) accounts for {pp('data')} pp "
            f"{interval('data')}, the <b>generator</b> for {pp('generator')} pp {interval('generator')}, "
            f"and the <b>instrument</b> for {pp('instrument')} pp {interval('instrument')}."
        )
    elif h.get("generator_and_instrument") is not None:
        sentence += (
            f" Of that, the data account for {pp('data')} pp {interval('data')}; the generator and the "
            f"instrument together for {pp('generator_and_instrument')} pp (no ground truth to split them)."
        )
    sentence += (
        f" Gap (noise-free mean |F<sub>gen</sub> − F<sub>train</sub>|): {_fmt(h.get('gap'), 'pp')} pp "
        f"{_fmt([h.get('gap_lo'), h.get('gap_hi')], 'pp')}; the paper's raw A<sub>abs</sub>: "
        f"{_fmt(h.get('a_abs_raw'), 'pp')} pp (Seshadri et al.: 12.57 pp)."
    )
    base = params.get("base") or {}
    identity = (
        f"synthetic_ratio {params.get('synthetic_ratio')}, base.seed {base.get('seed')}, "
        f"world.seed {_get(params, 'world', 'seed')}, base.cpu_threads {base.get('cpu_threads')}, "
        f"generations {len(params.get('generations') or [])}"
    )
    return f"<p class='headline'>{sentence}</p><p class='note'>This run: {html.escape(identity)}.</p>"


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
) -> str:
    """Write the self-contained HTML report and return its text.

    Args:
        out_path: HTML path (written atomically).
        rows: :func:`summary_row` per generation.
        paradox: ``metrics/paradox.json``.
        instrument: ``metrics/instrument.json``.
        params: the run's params (shown at the end).
        figures: ``{caption: png path}`` embedded in order.
        study: ``metrics/study.json`` (a "Study" section after the generations table), or None.
        acquisition: ``metrics/acquisition.json`` (a "From LAION metadata" section after the instrument;
            one line when the LAION path is off), or None for no section.
        study_sections: HTML of the named studies' sections
            (:func:`biasloop.report.study_html.named_study_section`), after the Study section.
    """
    from biasloop.core.io import atomic_path

    parts = [
        "<!doctype html><html lang='en'><head><meta charset='utf-8'><title>biasloop report</title>",
        f"<style>{CSS}</style></head><body>",
        "<h1>biasloop: does generated data amplify bias?</h1>",
        headline_section(paradox, params),
    ]
    first_figure = next(iter(figures.items()), None)
    if first_figure:
        parts.append(_image_tag(first_figure[1], first_figure[0]))
        figures = dict(list(figures.items())[1:])
    parts.append(
        "<p class='note'>F = women / (women + men) among images the instrument labels confidently. Shares, "
        "rates and accuracies are in %, differences of shares in percentage points (pp); MaxSkew@k and NDKL "
        "are in nats. <b>Shift</b>: mean over occupations of sign(F<sub>train</sub> − ½)·(F<sub>gen</sub> − "
        "F<sub>train</sub>), the move towards each occupation's training majority (unbiased; the headline). "
        "<b>Gap</b>: the noise-free mean |F<sub>gen</sub> − F<sub>train</sub>|, estimated without the upward "
        "bias of the raw A<sub>abs</sub>, with an interval projected from simultaneous per-occupation "
        "intervals. <b>Data / generator / instrument</b>: the shift split exactly into what an ideal learner "
        "of the training captions would show (minority genders are marked in captions more often), what the "
        "generator adds to it (hue oracle on generated images), and the instrument's error; they add up to "
        "the measured shift. Intervals are 95%; a p-value at the Monte Carlo limit is shown as a bound "
        "(&lt; 0.001). Definitions and coverage: docs/estimands.md. Shown once: for two groups BiasAmp (Zhao "
        "et al. 2017) equals the shift to the majority.</p>",
    )
    parts.append("<h2>Across generations</h2>")
    parts.append(
        "<p class='note'>Neutral prompt vs. keyword captions, per generation: shift, gap and raw "
        "A<sub>abs</sub> as above; data / generator / instrument: the shift's decomposition. Instrument "
        "accuracy on generated images: agreement with the hue oracle. Downstream: a CLIP trained from "
        "scratch on each generation's dataset, scored on held-out real pairs; recall@10 counts an image "
        "whose caption is identical to the query as correct; worst-group accuracy is over (occupation, "
        "gender) groups with at least the minimum number of images (smaller groups are listed in the "
        "metrics JSON, not scored).</p>"
    )
    parts.append(
        _table(
            [
                ("generation", "int"),
                ("shift (pp)", "pp+"),
                ("shift 95% CI", "pp+"),
                ("p", "p"),
                ("gap (pp)", "pp"),
                ("gap 95% CI", "pp"),
                ("raw A_abs (pp)", "pp"),
                ("data (pp)", "pp+"),
                ("generator (pp)", "pp+"),
                ("instrument (pp)", "pp+"),
                ("generator occ. acc. (%)", "%"),
                ("instrument acc. on generated (%)", "%"),
                ("recall@10 (%)", "%"),
                ("recall@10 gap (pp)", "pp"),
                ("MaxSkew@k vs. training share", "num"),
                ("worst-group acc. (%)", "%"),
            ],
            [
                [
                    r["generation"],
                    r.get("shift"),
                    [r.get("shift_lo"), r.get("shift_hi")],
                    r.get("shift_p"),
                    r.get("gap"),
                    [r.get("gap_lo"), r.get("gap_hi")],
                    r.get("a_abs_raw"),
                    r.get("data"),
                    r.get("generator"),
                    r.get("instrument"),
                    r.get("generator_occupation_accuracy"),
                    r.get("instrument_accuracy_on_generated"),
                    r.get("recall_at_10"),
                    r.get("recall_at_10_gap"),
                    r.get("max_skew_vs_training"),
                    r.get("worst_group_accuracy"),
                ]
                for r in rows
            ],
        )
    )
    if any(r.get(key) is not None for r in rows for key, _, _ in TASK_COLUMNS):
        parts.append("<h2>Downstream tasks across generations: captioner and classifier</h2>")
        parts.append(
            "<p class='note'>Each trained from scratch on the generation's dataset (generation 0: the real "
            "corpus) and scored on the held-out real images. Captioner (Chen et al. 2024): BLEU-4, ROUGE-L "
            "and CIDEr-D (COCO caption code's definitions, 0..10 for CIDEr-D) against the human captions; "
            "Error (Burns et al. 2018): images of women described with male words plus images of men "
            "described with female words, over gender-labelled images; Ratio: captions with female over "
            "male words, beside the true ratio of women to men; LIC (Hirota et al. 2022): mean confidence "
            "in the correct gender of a classifier reading gender-masked captions (0 when wrong), on the "
            "model's captions (LIC_M) and the human ones (LIC_D); leakage = LIC_M − LIC_D, mean and sd "
            "over classifier runs. Classifier (Zhang et al. 2024): occupation accuracy, its gap between "
            "women's and men's images, Fairlearn demographic parity and equalized odds differences "
            "(one-vs-rest, mean over occupations), worst-group accuracy over (occupation, gender) groups "
            "of a minimum size.</p>"
        )
        parts.append(
            _table(
                [("generation", "int")] + [(header, unit) for _, header, unit in TASK_COLUMNS],
                [[r["generation"]] + [r.get(key) for key, _, _ in TASK_COLUMNS] for r in rows],
            )
        )
    parts.append(study_section(study))
    parts.extend(study_sections or [])
    if paradox and paradox.get("table"):
        parts.append("<h2>The paradox table (generation 0)</h2>")
        parts.append(
            "<p class='note'>Seshadri et al. (2023): amplification measured against keyword-retrieved "
            "training captions shrinks when the comparison controls for what the captions say. "
            "Raw A_abs is the paper's number (12.57 pp with keyword captions, 4.35 pp with nearest "
            "neighbours without gender indicators); the shift and gap are the estimates to compare. "
            "<b>Captions as prompts is paired</b>: each image generated from a training caption is "
            "compared with the training image of that same caption (matched by caption id), per "
            "occupation; the pairs column counts them. The other pairings compare the images of a "
            "neutral prompt with a whole selection of training images. Corrected: both shares "
            "corrected with the instrument's confusion rates; true: training share from ground truth.</p>"
        )
        table_rows = []
        for name, entry in paradox["table"].items():
            measured = paradox_summary(entry)
            table_rows.append(
                [
                    name.replace("_", " "),
                    measured.get("n_images_train"),
                    measured.get("n_images_gen"),
                    entry.get("n_pairs"),
                    measured.get("shift"),
                    [measured.get("shift_lo"), measured.get("shift_hi")],
                    measured.get("shift_p"),
                    measured.get("gap"),
                    [measured.get("gap_lo"), measured.get("gap_hi")],
                    measured.get("a_abs_raw"),
                    measured.get("data"),
                    measured.get("generator"),
                    measured.get("instrument"),
                    paradox_summary(entry, "corrected").get("shift"),
                    paradox_summary(entry, "true").get("shift"),
                ]
            )
        parts.append(
            _table(
                [
                    ("pairing", "text"),
                    ("training images", "int"),
                    ("generated images", "int"),
                    ("pairs", "int"),
                    ("shift (pp)", "pp+"),
                    ("shift 95% CI", "pp+"),
                    ("p", "p"),
                    ("gap (pp)", "pp"),
                    ("gap 95% CI", "pp"),
                    ("raw A_abs (pp)", "pp"),
                    ("data (pp)", "pp+"),
                    ("generator (pp)", "pp+"),
                    ("instrument (pp)", "pp+"),
                    ("shift, corrected (pp)", "pp+"),
                    ("shift, true training share (pp)", "pp+"),
                ],
                table_rows,
            )
        )
    if instrument:
        parts.append("<h2>The instrument (perceived-gender classifier)</h2>")
        parts.append(
            _table(
                [
                    ("accuracy, confident (%)", "%"),
                    ("abstain rate (%)", "%"),
                    ("TPR, female (%)", "%"),
                    ("FPR, female (%)", "%"),
                    ("occupation accuracy (%)", "%"),
                    ("n", "int"),
                ],
                [
                    [
                        instrument.get("accuracy"),
                        instrument.get("abstain_rate"),
                        instrument.get("tpr"),
                        instrument.get("fpr"),
                        instrument.get("occupation_accuracy"),
                        instrument.get("n"),
                    ]
                ],
            )
        )
        if instrument.get("labels"):
            parts.append(
                f"<p class='note'>Labels: {html.escape(str(instrument['labels']))}; the rates above are "
                "measured on held-out images no labelling model trained on.</p>"
            )
    parts.append(acquisition_section(acquisition))
    for caption, path in figures.items():
        parts.append(f"<h2>{html.escape(caption)}</h2>{_image_tag(path, caption)}")
    parts.append("<h2>Params of this run</h2><pre>" + html.escape(yaml.safe_dump(params, sort_keys=False)) + "</pre>")
    parts.append(
        "<p class='note'>Raw numbers: metrics/summary.json, metrics/generations/*.json, metrics/paradox.json.</p>"
    )
    parts.append("</body></html>")
    text = "\n".join(parts)
    with atomic_path(out_path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return text


def load_json(path: str | Path) -> dict[str, Any] | None:
    path = Path(path)
    return json.loads(path.read_text()) if path.exists() else None
