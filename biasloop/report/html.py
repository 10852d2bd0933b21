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


def summary_row(metrics: dict[str, Any]) -> dict[str, Any]:
    """Headline numbers of one generation's metrics (fractions; None when not computed)."""
    amplification = metrics.get("amplification") or {}
    row: dict[str, Any] = {"generation": metrics["generation"]}
    for key in ("amplification_abs", "amplification_dir", "shift_to_majority", "bias_amp", "mad_gen"):
        row[key] = amplification.get(key)
        ci = amplification.get(f"{key}_ci")
        if ci and key in ("amplification_abs", "amplification_dir"):
            row[f"{key}_lo"], row[f"{key}_hi"] = ci
    row["amplification_abs_corrected"] = _get(metrics, "amplification_corrected", "amplification_abs")
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
    row["equalized_odds_difference"] = fairness.get("equalized_odds_difference_mean")
    return row


def build_summary(
    rows: list[dict[str, Any]], paradox: dict[str, Any] | None, instrument: dict[str, Any] | None
) -> dict[str, Any]:
    """``metrics/summary.json``: generation rows keyed ``gen{N}``, the paradox headline, the instrument."""
    summary: dict[str, Any] = {}
    if instrument:
        summary["instrument"] = {k: instrument.get(k) for k in ("accuracy", "abstain_rate", "tpr", "fpr")}
    if paradox:
        summary["paradox"] = {
            name: _get(entry, "measured", "amplification_abs") for name, entry in (paradox.get("table") or {}).items()
        }
        summary["paradox_corrected"] = {
            name: _get(entry, "corrected", "amplification_abs") for name, entry in (paradox.get("table") or {}).items()
        }
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


def _fmt(value: Any, percent: bool = False) -> str:
    if value is None:
        return "–"
    if isinstance(value, (list, tuple)) and len(value) == 2:
        return f"[{_fmt(value[0], percent)}, {_fmt(value[1], percent)}]"
    if isinstance(value, float):
        return f"{100 * value:.1f}" if percent else f"{value:.3f}"
    return html.escape(str(value))


def _table(headers: list[str], rows: list[list[Any]], percent_from: int = 1) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join(
        "<tr>" + "".join(f"<td>{_fmt(v, percent=i >= percent_from and isinstance(v, (float, list, tuple)))}</td>"
                         for i, v in enumerate(row)) + "</tr>"
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


def render_report(
    out_path: str | Path,
    rows: list[dict[str, Any]],
    paradox: dict[str, Any] | None,
    instrument: dict[str, Any] | None,
    params: dict[str, Any],
    figures: dict[str, str | Path],
) -> str:
    """Write the self-contained HTML report and return its text.

    Args:
        out_path: HTML path (written atomically).
        rows: :func:`summary_row` per generation.
        paradox: ``metrics/paradox.json``.
        instrument: ``metrics/instrument.json``.
        params: the run's params (shown at the end).
        figures: ``{caption: png path}`` embedded in order.
    """
    from biasloop.core.io import atomic_path

    parts = [
        "<!doctype html><html lang='en'><head><meta charset='utf-8'><title>biasloop report</title>",
        f"<style>{CSS}</style></head><body>",
        "<h1>biasloop: does generated data amplify bias?</h1>",
        "<p class='note'>Shares and amplifications are percentage points of the share of women "
        "(F = women / (women + men) among images the instrument labels confidently). "
        "Intervals are 95% bootstrap intervals over images within occupations.</p>",
    ]
    parts.append("<h2>Across generations</h2>")
    parts.append("<p class='note'>A<sub>abs</sub> = mean over occupations of |F<sub>gen</sub> − F<sub>train</sub>|; "
                 "A<sub>dir</sub> &gt; 0: generated images are further from parity than training images. "
                 "Downstream: a CLIP trained from scratch on each generation's dataset, scored on held-out real pairs.</p>")
    parts.append(_table(
        ["generation", "A_abs (pp)", "A_abs 95% CI", "A_dir (pp)", "A_abs corrected", "A_abs true",
         "generator occ. acc.", "recall@10", "recall@10 gap", "MaxSkew@10", "worst-group acc."],
        [[r["generation"], r.get("amplification_abs"), [r.get("amplification_abs_lo"), r.get("amplification_abs_hi")],
          r.get("amplification_dir"), r.get("amplification_abs_corrected"), r.get("amplification_abs_true"),
          r.get("generator_occupation_accuracy"), r.get("recall_at_10"), r.get("recall_at_10_gap"),
          r.get("max_skew_at_10"), r.get("worst_group_accuracy")] for r in rows],
    ))
    if paradox and paradox.get("table"):
        parts.append("<h2>The paradox table (generation 0)</h2>")
        parts.append("<p class='note'>Seshadri et al. (2023): amplification measured against keyword-retrieved "
                     "training captions shrinks when the comparison controls for what the captions say. "
                     "Corrected: both shares corrected with the instrument's confusion rates; true: training "
                     "share from ground truth.</p>")
        table_rows = []
        for name, entry in paradox["table"].items():
            measured = entry.get("measured") or {}
            table_rows.append([
                name.replace("_", " "), measured.get("amplification_abs"), measured.get("amplification_abs_ci"),
                measured.get("amplification_dir"), _get(entry, "corrected", "amplification_abs"),
                _get(entry, "true", "amplification_abs"),
            ])
        parts.append(_table(["pairing", "A_abs (pp)", "95% CI", "A_dir (pp)", "corrected", "true"], table_rows))
    if instrument:
        parts.append("<h2>The instrument (perceived-gender classifier)</h2>")
        parts.append(_table(
            ["accuracy (confident)", "abstain rate", "TPR (female)", "FPR (female)", "occupation accuracy", "n"],
            [[instrument.get("accuracy"), instrument.get("abstain_rate"), instrument.get("tpr"), instrument.get("fpr"),
              instrument.get("occupation_accuracy"), instrument.get("n")]], percent_from=99,
        ))
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
