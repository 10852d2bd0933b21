"""The run's numbers as `dvc exp show` and `dvc plots` read them: one flat row per generation, the nested summary.

``summary_row`` flattens each ``metrics/generations/gen{N}.json`` into one row of headline numbers;
``build_summary`` nests them as ``{"headline": {...}, "paradox": {...}, "gen0": {...}, ...}`` so `dvc exp
show` and `dvc metrics diff` read well; ``share_rows`` are the per-occupation rows of `dvc plots`. All
numbers stay fractions here; the report (:mod:`biasloop.report.html`) chooses the units it shows.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from biasloop.metrics.rows import decomposition_values, estimand_values


def get_path(data: dict | None, *keys: str) -> Any:
    """``data[k1][k2]...``, or None as soon as a level is missing or not a dict."""
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
    row.update(decomposition_values(get_path(metrics, "decomposition", "prompt_vs_keyword")))
    row["shift_corrected"] = get_path(metrics, "amplification_corrected", "estimands", "shift", "estimate")
    row["shift_true"] = get_path(metrics, "amplification_true", "estimands", "shift", "estimate")
    vs_dataset = get_path(metrics, "amplification_vs_training_dataset", "measured")
    row["shift_vs_training_dataset"] = get_path(vs_dataset, "estimands", "shift", "estimate")
    _flat_interval(row, "shift_vs_training_dataset", get_path(vs_dataset, "estimands", "shift", "ci"))
    row["gap_vs_training_dataset"] = get_path(vs_dataset, "estimands", "gap", "estimate")
    row["instrument_accuracy_on_generated"] = get_path(
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
    row["excess_abs_corrected"] = get_path(metrics, "amplification_corrected", "excess_abs")
    row["excess_abs_true"] = get_path(metrics, "amplification_true", "excess_abs")
    row["generator_occupation_accuracy"] = get_path(metrics, "generator", "occupation_accuracy")
    row["generator_abstain_rate"] = get_path(metrics, "generator", "abstain_rate")
    recall = get_path(metrics, "downstream", "recall") or {}
    row["recall_at_10"] = recall.get("recall@10")
    row["recall_at_10_gap"] = recall.get("recall@10_gap")
    row["max_skew"] = get_path(metrics, "downstream", "max_skew_mean")  # MaxSkew@k against parity (nats)
    row["ndkl"] = get_path(metrics, "downstream", "ndkl_mean")
    row["max_skew_vs_training"] = get_path(metrics, "downstream", "max_skew_vs_training_mean")
    fairness = get_path(metrics, "downstream", "fairness") or {}
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
        "captioner_bleu4": get_path(captioner, "quality", "bleu4"),
        "captioner_rouge_l": get_path(captioner, "quality", "rouge_l"),
        "captioner_cider_d": get_path(captioner, "quality", "cider_d"),
        "captioner_error": get_path(captioner, "misprediction", "error"),
        "captioner_ratio": get_path(captioner, "misprediction", "ratio_predicted"),
        "captioner_ratio_true": get_path(captioner, "misprediction", "ratio_true"),
        "captioner_lic_m": get_path(captioner, "leakage", "lic_m"),
        "captioner_lic_d": get_path(captioner, "leakage", "lic_d"),
        "captioner_leakage": get_path(captioner, "leakage", "leakage"),
        "captioner_leakage_std": get_path(captioner, "leakage", "leakage_std"),
        "classifier_accuracy": get_path(classifier, "accuracy"),
        "classifier_accuracy_gap": get_path(classifier, "accuracy_gap"),
        "classifier_dp_difference": get_path(classifier, "demographic_parity_difference_mean"),
        "classifier_eo_difference": get_path(classifier, "equalized_odds_difference_mean"),
        "classifier_worst_group_accuracy": get_path(classifier, "worst_group_accuracy"),
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
    table = get_path(entry, kind)
    if not table:
        return {}
    out = estimand_values(table)
    if kind == "measured":
        out.update(decomposition_values(get_path(entry, "decomposition")))
    out.update(
        {key: table.get(key) for key in ("excess_abs", "n_images_train", "n_images_gen", "n_pairs") if key in table}
    )
    return out


HEADLINE_PAIRING = "prompt_vs_keyword"  # neutral prompt vs. keyword-retrieved captions, as in Seshadri et al.
# What the report and the results page call each pairing.
PAIRING_LABELS = {
    "prompt_vs_keyword": "neutral prompt vs. keyword-retrieved captions",
    "captions_vs_keyword": "captions as prompts vs. their own training images (paired)",
    "prompt_vs_nn": "neutral prompt vs. nearest-neighbour captions",
    "prompt_vs_nn_no_indicator": "neutral prompt vs. nearest neighbours without gender indicators",
}
# Seshadri et al. (2023), raw A_abs in pp, for the same pairings.
PAPER_A_ABS = {
    "prompt_vs_keyword": 12.57,
    "captions_vs_keyword": 7.92,
    "prompt_vs_nn": 7.55,
    "prompt_vs_nn_no_indicator": 4.35,
}


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


def load_json(path: str | Path) -> dict[str, Any] | None:
    """The JSON file at ``path``, or None when it does not exist."""
    path = Path(path)
    return json.loads(path.read_text()) if path.exists() else None
