"""The paradox table: amplification for each pairing of generated images and training selections.

Seshadri et al. compare the share of women in images generated for a neutral prompt with the share in
training images whose captions mention the occupation, then show how much of the gap is a measurement
artefact: captions used as prompts, nearest-neighbour captions, and nearest neighbours without gender
indicators. Each pairing here is reported three ways:

- ``measured``: shares from the instrument's confident labels;
- ``corrected``: both shares corrected with the instrument's confusion rates (tpr, fpr);
- ``true`` (glyph world only): training share from ground truth against the corrected generated share.
"""

from __future__ import annotations

from typing import Any

import polars as pl

from biasloop.metrics.amplification import AGGREGATES, amplification_table, count_table

# pairing name -> (generated prompt kind, training selection)
PAIRINGS = {
    "prompt_vs_keyword": ("neutral", "keyword"),
    "captions_vs_keyword": ("caption", "keyword"),
    "prompt_vs_nn": ("neutral", "nn"),
    "prompt_vs_nn_no_indicator": ("neutral", "nn_no_indicator"),
}


def true_count_table(frame: pl.DataFrame) -> pl.DataFrame:
    """Counts from the ground-truth ``true_gender`` column (no abstentions)."""
    known = frame.filter(pl.col("true_gender").is_in(["female", "male"]))
    return (
        known.group_by("occupation")
        .agg(
            (pl.col("true_gender") == "female").sum().cast(pl.Int64).alias("n_female"),
            (pl.col("true_gender") == "male").sum().cast(pl.Int64).alias("n_male"),
            pl.lit(0, dtype=pl.Int64).alias("n_abstain"),
        )
        .sort("occupation")
    )


def paradox_table(
    train_predictions: pl.DataFrame,
    generated_predictions: pl.DataFrame,
    confusion: dict[str, float] | None,
    n_boot: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """Amplification for every pairing in :data:`PAIRINGS`.

    Args:
        train_predictions: ``classify_train`` output (``selection, occupation, p_female, label`` and,
            in the glyph world, ``true_gender``).
        generated_predictions: ``classify@N`` output (``prompt_kind, occupation, p_female, label``).
        confusion: the instrument's ``{"tpr", "fpr"}`` on labelled data, or None when unknown.
        n_boot: bootstrap replicates for the 95% intervals.
        seed: bootstrap seed.

    Returns:
        ``{pairing: {"measured": table, "corrected": table | None, "true": table | None}}`` where each
        table is :func:`biasloop.metrics.amplification.amplification_table`'s dict.
    """
    has_truth = (
        "true_gender" in train_predictions.columns and train_predictions["true_gender"].null_count() < len(train_predictions)
    )
    result: dict[str, Any] = {}
    for name, (prompt_kind, selection) in PAIRINGS.items():
        train = train_predictions.filter(pl.col("selection") == selection)
        generated = generated_predictions.filter(pl.col("prompt_kind") == prompt_kind)
        if train.is_empty() or generated.is_empty():
            result[name] = {"measured": None, "corrected": None, "true": None, "missing": True}
            continue
        train_counts, generated_counts = count_table(train), count_table(generated)
        measured = amplification_table(train_counts, generated_counts, n_boot=n_boot, seed=seed, confusion=confusion)
        entry: dict[str, Any] = {"measured": {k: v for k, v in measured.items() if k != "corrected"}}
        entry["corrected"] = measured.get("corrected")
        entry["true"] = None
        if has_truth and confusion is not None:
            truth = amplification_table(
                true_count_table(train), generated_counts, n_boot=n_boot, seed=seed, confusion=confusion,
                correct_train=False,
            )
            entry["true"] = truth.get("corrected")
        result[name] = entry
    return result


def headline(table: dict[str, Any] | None) -> dict[str, Any]:
    """The aggregate numbers of one amplification table (no per-occupation rows)."""
    if not table:
        return {}
    out: dict[str, Any] = {}
    for key in AGGREGATES:
        if key in table:
            out[key] = table[key]
            if f"{key}_ci" in table:
                out[f"{key}_ci"] = table[f"{key}_ci"]
    return out


def table_rows(paradox: dict) -> list[dict]:
    """One CSV row per (pairing, kind) with the absolute and directional amplification and intervals."""
    rows = []
    for name, entry in paradox.items():
        for kind in ("measured", "corrected", "true"):
            table = entry.get(kind)
            if not table:
                continue
            lo, hi = table.get("amplification_abs_ci", [None, None])
            rows.append({
                "pairing": f"{name} ({kind})", "name": name, "kind": kind,
                "amplification_abs": table.get("amplification_abs"), "amplification_abs_lo": lo,
                "amplification_abs_hi": hi, "amplification_dir": table.get("amplification_dir"),
                "shift_to_majority": table.get("shift_to_majority"),
            })
    return rows
