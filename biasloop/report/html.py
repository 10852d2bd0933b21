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

    The absolute amplifications come with their noise floor and the excess over it (with its interval
    and p-value); ``bias_amp`` is not repeated (it equals ``shift_to_majority`` for two groups).
    """
    amplification = metrics.get("amplification") or {}
    row: dict[str, Any] = {"generation": metrics["generation"]}
    for suffix in ("abs", "dir"):
        row[f"amplification_{suffix}"] = amplification.get(f"amplification_{suffix}")
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
    row["amplification_abs_true"] = _get(metrics, "amplification_true", "amplification_abs")
    row["generator_occupation_accuracy"] = _get(metrics, "generator", "occupation_accuracy")
    row["generator_abstain_rate"] = _get(metrics, "generator", "abstain_rate")
    recall = _get(metrics, "downstream", "recall") or {}
    row["recall_at_10"] = recall.get("recall@10")
    row["recall_at_10_gap"] = recall.get("recall@10_gap")
    row["max_skew_at_10"] = _get(metrics, "downstream", "max_skew_mean")
    row["ndkl"] = _get(metrics, "downstream", "ndkl_mean")
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
    ("captioner_bleu4", "BLEU-4 (%)", "%"), ("captioner_rouge_l", "ROUGE-L (%)", "%"),
    ("captioner_cider_d", "CIDEr-D", "num"), ("captioner_error", "Error (%)", "%"),
    ("captioner_ratio", "Ratio W/M", "num"), ("captioner_ratio_true", "true ratio W/M", "num"),
    ("captioner_lic_m", "LIC_M (%)", "%"), ("captioner_lic_d", "LIC_D (%)", "%"),
    ("captioner_leakage", "leakage (pp)", "pp+"), ("captioner_leakage_std", "leakage sd (pp)", "pp"),
    ("classifier_accuracy", "classifier acc. (%)", "%"), ("classifier_accuracy_gap", "acc. gap W/M (pp)", "pp"),
    ("classifier_dp_difference", "DP diff. (pp)", "pp"), ("classifier_eo_difference", "EO diff. (pp)", "pp"),
    ("classifier_worst_group_accuracy", "worst-group acc. (%)", "%"),
)


# Per pairing in summary.json: the headline keys of its measured table, intervals flattened.
PARADOX_SUMMARY_KEYS = ("amplification_abs", "noise_floor_abs", "excess_abs", "p_value_abs", "excess_dir",
                        "n_images_train", "n_images_gen", "n_pairs")


def paradox_summary(entry: dict[str, Any] | None, kind: str = "measured") -> dict[str, Any]:
    """One pairing's numbers for ``metrics/summary.json`` (fractions and counts; {} when missing)."""
    table = _get(entry, kind)
    if not table:
        return {}
    out = {key: table.get(key) for key in PARADOX_SUMMARY_KEYS if key in table}
    _flat_interval(out, "excess_abs", table.get("excess_abs_ci"))
    return out


def build_summary(
    rows: list[dict[str, Any]], paradox: dict[str, Any] | None, instrument: dict[str, Any] | None
) -> dict[str, Any]:
    """``metrics/summary.json``: generation rows keyed ``gen{N}``, the paradox pairings, the instrument.

    Each paradox pairing (``paradox``, and ``paradox_corrected`` on corrected shares) has A_abs, its
    noise floor, the excess with ``excess_abs_lo``/``_hi`` and ``p_value_abs``, the number of images on
    each side and, for captions-as-prompts, the number of pairs.
    """
    summary: dict[str, Any] = {}
    if instrument:
        summary["instrument"] = {k: instrument.get(k) for k in ("accuracy", "abstain_rate", "tpr", "fpr")}
    if paradox:
        table = paradox.get("table") or {}
        summary["paradox"] = {name: paradox_summary(entry) for name, entry in table.items()}
        summary["paradox_corrected"] = {name: paradox_summary(entry, "corrected") for name, entry in table.items()}
    for row in rows:
        summary[f"gen{row['generation']}"] = {k: v for k, v in row.items() if k != "generation"}
    return summary


def share_rows(generation_metrics: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (generation, occupation): training and generated share of women, for `dvc plots`."""
    rows = []
    for metrics in generation_metrics:
        for item in metrics.get("per_occupation") or []:
            rows.append({
                "generation": metrics["generation"], "occupation": item["occupation"],
                "share_train": item.get("share_train"), "share_gen": item.get("share_gen"),
            })
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
        return "< 0.001" if value < 0.001 else f"{value:.3f}"
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
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
h1{font-size:1.6em}h2{font-size:1.25em;margin-top:1.8em;border-bottom:1px solid #ddd;padding-bottom:.2em}
table{border-collapse:collapse;margin:.6em 0;font-size:.9em}th,td{border:1px solid #ddd;padding:.3em .6em;text-align:right}
th{background:#f4f4f4}td:first-child,th:first-child{text-align:left}img{max-width:100%;border:1px solid #eee}
.note{color:#555;font-size:.9em}.missing{color:#a00}pre{background:#f7f7f7;padding:1em;overflow:auto;font-size:.8em}
"""


# How the report shows each study metric (see UNITS): fractions in percent or percentage points.
STUDY_UNITS = {"excess_abs": "pp+", "amplification_abs": "pp", "shift_to_majority": "pp+",
               "generator_occupation_accuracy": "%", "recall_at_10": "%", "recall_at_10_gap": "pp+",
               "max_skew_at_10": "num", "worst_group_accuracy": "%", "equalized_odds_difference": "num"}


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
        return ("<h2>Study</h2><p class='note'>No study collected yet: <code>biasloop study run</code>, "
                "<code>biasloop study collect</code>, then <code>dvc repro</code> (README, Studies).</p>")
    config = study["study"]
    amplification = study["amplification_metric"]
    parts = [f"<h2>Study '{html.escape(str(config['name']))}': {len(config['ratios'])} ratios &times; "
             f"{len(config['seeds'])} seeds &times; {config['generations']} generations</h2>"]
    parts.append(
        f"<p class='note'>{study['n_cells_used']} of {study['n_cells_expected']} experiments aggregated. Per cell: "
        "mean over seeds, between-seed SD, 95% t interval over seeds, n seeds (values in percent). Slopes: "
        "mean of per-seed least-squares slopes with a 95% t interval over seeds (seeds are the independent "
        "units: cells of one seed share random streams); per unit of synthetic_ratio (0 &rarr; 1) or per "
        "generation.</p>")
    if study.get("amplification_note"):
        parts.append(f"<p class='missing'>{html.escape(study['amplification_note'])}</p>")
    problems = ([f"failed: {html.escape(f['name'])} (see <code>{html.escape(f['logs_command'])}</code>)" for f in study["failed"]]
                + [f"missing: {html.escape(m['name'])} ({html.escape(str(m['state']))})" for m in study["missing"]]
                + [f"inconsistent: {html.escape(line)}" for line in study["inconsistent"]])
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
        rows.append([label, _fmt(vs_ratio.get("slope"), unit), _fmt(vs_ratio.get("ci"), unit), vs_ratio.get("n"),
                     _fmt(vs_generation.get("slope"), unit), _fmt(vs_generation.get("ci"), unit), vs_generation.get("n")])
    parts.append(_table([("metric", "text"), (f"slope vs ratio, generation {last}", "text"), ("95% CI", "text"),
                         ("seeds", "int"), (f"slope vs generation, ratio {top_ratio}", "text"), ("95% CI", "text"),
                         ("seeds", "int")], rows))
    unit = STUDY_UNITS.get(amplification, "pp")
    spread = "num" if unit == "num" else "pp"
    rows = [[f"{entry['ratio']:g}", entry["generation"], s["mean"], s["sd"], s["ci"], s["n"]]
            for entry in study["summary"] for s in [entry["metrics"][amplification]]]
    parts.append(f"<p class='note'>{html.escape(study['metrics'][amplification])} per cell (percentage points):</p>")
    parts.append(_table([("synthetic_ratio", "text"), ("generation", "int"), ("mean", unit), ("between-seed SD", spread),
                         ("95% CI", unit), ("seeds", "int")], rows))
    for caption, path in (study.get("figures") or {}).items():
        parts.append(_image_tag(path, f"study {caption}"))
    revisions = sorted({c["baseline_rev"][:7] for c in study["cells"]})
    parts.append(f"<p class='note'>Baseline commit(s) {', '.join(revisions)}; every cell's revision and params: "
                 "metrics/study.json (cells, common_params).</p>")
    return "\n".join(parts)


# The acquisition table's fixed columns in order (metrics/acquisition.json, written by laion_filter); the
# failed_<reason> and filtered_<reason> columns between them are whichever reasons occurred.
ACQUISITION_HEAD = ("matched", "duplicate_url", "over_cap", "requested", "downloaded")
ACQUISITION_TAIL = ("dropped", "kept", "share_female_indicator_kept", "n_indicator_kept",
                    "share_female_indicator_dropped", "n_indicator_dropped")


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
        return ("<h2>From LAION metadata</h2><p class='note'>The LAION acquisition path is off "
                "(<code>laion_select.metadata</code> is empty): the corpus comes from the <code>corpus</code> "
                "stage's own source; see docs/laion.md.</p>")
    table = acquisition["occupations"]
    keys = list(dict.fromkeys(k for row in table.values() for k in row))
    failed = sorted(k for k in keys if k.startswith("failed_"))
    filtered = [k for k in keys if k.startswith("filtered_")]
    columns = [*ACQUISITION_HEAD, *failed, *filtered, *ACQUISITION_TAIL]
    units = {k: "%" if k.startswith("share_") else "int" for k in columns}
    headers = {"share_female_indicator_kept": "women among kept, by caption (%)",
               "n_indicator_kept": "kept with a gender word",
               "share_female_indicator_dropped": "women among dropped, by caption (%)",
               "n_indicator_dropped": "dropped with a gender word"}
    parts = ["<h2>From LAION metadata: acquisition per occupation</h2>",
             ("<p class='note'>Counts of images (a URL selected for several occupations counts for each). "
             "matched = requested + duplicate URLs + over the per-occupation cap; requested = downloaded + "
             "failed; downloaded = dropped + kept, dropped being the sum of the filter columns. Women among "
             "kept or dropped images: women / (women + men) among the captions with a female or a male gender "
             "word (counted beside it), a caption proxy: a filter that drops women's images more often shifts "
             "the measured share. <b>The instrument's share of women among the dropped images is not "
             "measured</b> by the pipeline (docs/laion.md says how to classify <code>dropped/</code>).</p>"),
             _table([("occupation", "text")] + [(headers.get(k, k.replace("_", " ")), units[k]) for k in columns],
                    [[name] + [row.get(k) for k in columns] for name, row in table.items()])]
    if acquisition.get("reasons"):
        total = ", ".join(f"{html.escape(str(k))}: {v}" for k, v in sorted(acquisition["reasons"].items()))
        parts.append(f"<p class='note'>Filter outcome over all {acquisition.get('n_filtered', '?')} downloaded "
                     f"images: {total}.</p>")
    return "\n".join(parts)


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
        "<p class='note'>F = women / (women + men) among images the instrument labels confidently. Shares, "
        "rates and accuracies are in %, differences of shares in percentage points (pp); MaxSkew@10 and NDKL "
        "are in nats, shown as plain numbers. A<sub>abs</sub> and A<sub>dir</sub> are built from absolute "
        "values, so sampling noise alone makes them positive: each comes with its <b>noise floor</b> (its "
        "mean when generated and training images share one share of women per occupation, simulated with "
        "the observed counts), the <b>excess</b> over that floor with a 95% interval, and the p-value of "
        "that null. Read the excess: it is 0 when nothing is amplified and at most the true amplification. "
        "Other intervals are 95% bootstrap intervals over images within occupations.</p>",
        "<p class='note'>Shown once: for two groups BiasAmp (Zhao et al. 2017) equals the shift to the "
        "majority, and A<sub>dir</sub> equals MAD<sub>gen</sub> − MAD<sub>train</sub>.</p>",
    ]
    parts.append("<h2>Across generations</h2>")
    parts.append("<p class='note'>A<sub>abs</sub> = mean over occupations of |F<sub>gen</sub> − F<sub>train</sub>|; "
                 "A<sub>dir</sub> &gt; 0: generated images are further from parity than training images; shift to "
                 "majority &gt; 0: they lean further towards each occupation's training majority. True: the "
                 "training share from ground truth. Downstream: a CLIP trained from scratch on each generation's "
                 "dataset, scored on held-out real pairs; recall@10 counts an image whose caption is identical "
                 "to the query as correct; worst-group accuracy is over (occupation, gender) groups with at "
                 "least the minimum number of images shown (smaller groups are listed in the metrics JSON, "
                 "not scored).</p>")
    parts.append(_table(
        [("generation", "int"), ("A_abs (pp)", "pp"), ("noise floor (pp)", "pp"), ("excess (pp)", "pp+"),
         ("excess 95% CI", "pp+"), ("p", "p"), ("A_dir excess (pp)", "pp+"), ("shift to majority (pp)", "pp+"),
         ("excess, true (pp)", "pp+"), ("generator occ. acc. (%)", "%"), ("recall@10 (%)", "%"),
         ("recall@10 gap (pp)", "pp"), ("MaxSkew@10", "num"), ("NDKL", "num"), ("worst-group acc. (%)", "%"),
         ("min group size", "int")],
        [[r["generation"], r.get("amplification_abs"), r.get("noise_floor_abs"), r.get("excess_abs"),
          [r.get("excess_abs_lo"), r.get("excess_abs_hi")], r.get("p_value_abs"), r.get("excess_dir"),
          r.get("shift_to_majority"), r.get("excess_abs_true"), r.get("generator_occupation_accuracy"),
          r.get("recall_at_10"), r.get("recall_at_10_gap"), r.get("max_skew_at_10"), r.get("ndkl"),
          r.get("worst_group_accuracy"), r.get("worst_group_min_size")] for r in rows],
    ))
    if any(r.get(key) is not None for r in rows for key, _, _ in TASK_COLUMNS):
        parts.append("<h2>Downstream tasks across generations: captioner and classifier</h2>")
        parts.append("<p class='note'>Each trained from scratch on the generation's dataset (generation 0: the real "
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
                     "of a minimum size.</p>")
        parts.append(_table([("generation", "int")] + [(header, unit) for _, header, unit in TASK_COLUMNS],
                            [[r["generation"]] + [r.get(key) for key, _, _ in TASK_COLUMNS] for r in rows]))
    parts.append(study_section(study))
    parts.extend(study_sections or [])
    if paradox and paradox.get("table"):
        parts.append("<h2>The paradox table (generation 0)</h2>")
        parts.append("<p class='note'>Seshadri et al. (2023): amplification measured against keyword-retrieved "
                     "training captions shrinks when the comparison controls for what the captions say. "
                     "Compare pairings by their excess: their noise floors differ with their numbers of images. "
                     "<b>Captions as prompts is paired</b>: each image generated from a training caption is "
                     "compared with the training image of that same caption (matched by caption id), per "
                     "occupation; the pairs column counts them. The other pairings compare the images of a "
                     "neutral prompt with a whole selection of training images. Corrected: both shares "
                     "corrected with the instrument's confusion rates; true: training share from ground truth.</p>")
        table_rows = []
        for name, entry in paradox["table"].items():
            measured = entry.get("measured") or {}
            table_rows.append([
                name.replace("_", " "), measured.get("n_images_train"), measured.get("n_images_gen"),
                entry.get("n_pairs"), measured.get("amplification_abs"), measured.get("noise_floor_abs"),
                measured.get("excess_abs"), measured.get("excess_abs_ci"), measured.get("p_value_abs"),
                _get(entry, "corrected", "excess_abs"), _get(entry, "true", "excess_abs"),
            ])
        parts.append(_table(
            [("pairing", "text"), ("training images", "int"), ("generated images", "int"), ("pairs", "int"),
             ("A_abs (pp)", "pp"), ("noise floor (pp)", "pp"), ("excess (pp)", "pp+"), ("excess 95% CI", "pp+"),
             ("p", "p"), ("excess, corrected (pp)", "pp+"), ("excess, true (pp)", "pp+")],
            table_rows,
        ))
    if instrument:
        parts.append("<h2>The instrument (perceived-gender classifier)</h2>")
        parts.append(_table(
            [("accuracy, confident (%)", "%"), ("abstain rate (%)", "%"), ("TPR, female (%)", "%"),
             ("FPR, female (%)", "%"), ("occupation accuracy (%)", "%"), ("n", "int")],
            [[instrument.get("accuracy"), instrument.get("abstain_rate"), instrument.get("tpr"), instrument.get("fpr"),
              instrument.get("occupation_accuracy"), instrument.get("n")]],
        ))
        if instrument.get("labels"):
            parts.append(f"<p class='note'>Labels: {html.escape(str(instrument['labels']))}; the rates above are "
                         "measured on held-out images no labelling model trained on.</p>")
    parts.append(acquisition_section(acquisition))
    for caption, path in figures.items():
        parts.append(f"<h2>{html.escape(caption)}</h2>{_image_tag(path, caption)}")
    parts.append("<h2>Params of this run</h2><pre>" + html.escape(yaml.safe_dump(params, sort_keys=False)) + "</pre>")
    parts.append("<p class='note'>Raw numbers: metrics/summary.json, metrics/generations/*.json, metrics/paradox.json.</p>")
    parts.append("</body></html>")
    text = "\n".join(parts)
    with atomic_path(out_path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return text


def load_json(path: str | Path) -> dict[str, Any] | None:
    path = Path(path)
    return json.loads(path.read_text()) if path.exists() else None
