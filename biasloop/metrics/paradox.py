"""The paradox table: amplification for each pairing of generated images and training selections.

Seshadri et al. compare the share of women in images generated for a neutral prompt with the share in
training images whose captions mention the occupation, then show how much of the gap is a measurement
artefact: captions used as prompts, nearest-neighbour captions, and nearest neighbours without gender
indicators.

Captions-as-prompts is paired, as in the paper: each image generated from a caption keeps the caption's
``source_id``, and the training side is exactly the training images of those captions (per occupation),
not the whole selection they were sampled from; ``n_pairs`` says how many (generated image, training
image) pairs there are. The other pairings compare a neutral prompt's images with a whole selection.

Every table carries the number of images on each side, and for ``amplification_abs``/``_dir`` the noise
floor, the excess over it with its interval, and the null p-value
(:func:`biasloop.metrics.amplification.excess_over_noise`): compare pairings by their excess, since their
noise floors differ with their sample sizes.

Each pairing here is reported three ways:

- ``measured``: shares from the instrument's confident labels;
- ``corrected``: both shares corrected with the instrument's confusion rates (tpr, fpr);
- ``true`` (glyph world only): training share from ground truth against the corrected generated share.

and, beside the tables, its measured shift split into data (the ideal learner), generator and instrument
(``ideal`` and ``decomposition``, :mod:`biasloop.metrics.decomposition`). The ideal learner needs each
training caption's gender indicator (the retrieve stage's ``matches``); the generator and instrument
terms need the oracle labels of the generated images (glyph world).
"""

from __future__ import annotations

from typing import Any

import polars as pl

from biasloop.core.seeds import stream_seed
from biasloop.metrics.amplification import amplification_table, count_table
from biasloop.metrics.decomposition import decompose
from biasloop.metrics.paired import paired_amplification_table
from biasloop.metrics.rows import decomposition_values, estimand_values

# pairing name -> (generated prompt kind, training selection)
PAIRINGS = {
    "prompt_vs_keyword": ("neutral", "keyword"),
    "captions_vs_keyword": ("caption", "keyword"),
    "prompt_vs_nn": ("neutral", "nn"),
    "prompt_vs_nn_no_indicator": ("neutral", "nn_no_indicator"),
}
# Pairings whose training side is the training images of the captions the generated images came from.
PAIRED_BY_SOURCE = frozenset({"captions_vs_keyword"})
# The aggregate keys of a table that :func:`headline` keeps (no per-occupation rows).
HEADLINE_KEYS = (
    "amplification_abs",
    "noise_floor_abs",
    "excess_abs",
    "excess_abs_ci",
    "p_value_abs",
    "amplification_dir",
    "noise_floor_dir",
    "excess_dir",
    "excess_dir_ci",
    "p_value_dir",
    "shift_to_majority",
    "shift_to_majority_ci",
    "mad_train",
    "mad_gen",
    "pearson",
    "n_occupations",
    "n_images_train",
    "n_confident_train",
    "n_images_gen",
    "n_confident_gen",
    "n_pairs",
    "estimands",
)


def paired_by_source(train: pl.DataFrame, generated: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame]:
    """The training and generated images of a captions-as-prompts pairing, matched by caption id.

    Args:
        train: one selection's training predictions (``occupation, id, label``, ...).
        generated: the images generated from captions (``occupation, source_id, label``, ...).

    Returns:
        ``(train_paired, generated_paired)``: per occupation, the training images whose ``id`` is the
        ``source_id`` of a generated image, and the generated images whose source is among them
        (a generated image whose caption is missing from the selection is left out, and so is a
        training caption no image was generated from). Both have one row per pair, in the same order.

    Raises:
        ValueError: ``generated`` has no ``source_id`` column (a manifest from before pairing).
    """
    if "source_id" not in generated.columns:
        raise ValueError("captions-as-prompts images have no 'source_id' column: regenerate them (generate@N)")
    sources = train.select("occupation", "id").unique(maintain_order=True)
    pairs = generated.join(sources, left_on=["occupation", "source_id"], right_on=["occupation", "id"], how="inner")
    train_paired = pairs.select("occupation", pl.col("source_id").alias("id")).join(
        train, on=["occupation", "id"], how="left", maintain_order="left"
    )
    return train_paired, pairs


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


def with_indicators(train_predictions: pl.DataFrame, matches: pl.DataFrame | None) -> pl.DataFrame:
    """``train_predictions`` with each caption's gender ``indicator`` (``none`` when unmarked) from the retrieve
    stage's ``matches`` (``occupation, id, indicator``); every selection is drawn from the matches, so a
    selected caption without one is an error. Unchanged when ``matches`` is None or the column is there."""
    if matches is None or "indicator" in train_predictions.columns:
        return train_predictions
    indicators = matches.select("occupation", "id", "indicator").unique(["occupation", "id"], keep="first")
    joined = train_predictions.join(indicators, on=["occupation", "id"], how="left", maintain_order="left")
    missing = joined.filter(pl.col("indicator").is_null())
    if len(missing):
        raise ValueError(
            f"{len(missing)} selected captions are not in the matches (first: {missing['id'][0]!r}): "
            "selections and matches come from different retrieve runs"
        )
    return joined


def paradox_table(
    train_predictions: pl.DataFrame,
    generated_predictions: pl.DataFrame,
    confusion: dict[str, float] | None,
    n_boot: int = 1000,
    seed: int = 0,
    matches: pl.DataFrame | None = None,
) -> dict[str, Any]:
    """Amplification for every pairing in :data:`PAIRINGS`, and its decomposition.

    Args:
        train_predictions: ``label_train`` output (``selection, occupation, id, p_female, label`` and,
            in the glyph world, ``true_gender``).
        generated_predictions: ``label@N`` output (``prompt_kind, occupation, p_female, label`` and,
            in the glyph world, ``oracle_label``).
        confusion: the instrument's ``{"tpr", "fpr"}`` on labelled data, or None when unknown.
        n_boot: bootstrap replicates for the 95% intervals.
        seed: ``base.seed``; the amplification tables draw from stream ``amplification-bootstrap``, the
            decomposition of pairing i from ``decomposition-bootstrap``, i (the same in every generation).
        matches: the retrieve stage's matches (``occupation, id, indicator``), for the ideal learner;
            None: no decomposition for unpaired pairings (``available: false``).

    Returns:
        ``{pairing: {"paired_by_source": bool, "n_pairs": int | None, "measured": table, "corrected":
        table | None, "true": table | None, "ideal": dict | None, "decomposition": dict}}`` where each
        table is :func:`biasloop.metrics.amplification.amplification_table`'s dict (with ``n_pairs`` for a
        paired pairing) and ``ideal`` / ``decomposition`` are
        :func:`biasloop.metrics.decomposition.decompose`'s; a pairing with no images on a side is
        ``{"missing": True, ...}`` with None tables.
    """
    train_predictions = with_indicators(train_predictions, matches)
    amplification_seed = stream_seed(seed, "amplification-bootstrap")
    has_truth = "true_gender" in train_predictions.columns and train_predictions["true_gender"].null_count() < len(
        train_predictions
    )
    result: dict[str, Any] = {}
    for index, (name, (prompt_kind, selection)) in enumerate(PAIRINGS.items()):
        train = train_predictions.filter(pl.col("selection") == selection)
        generated = generated_predictions.filter(pl.col("prompt_kind") == prompt_kind)
        if train.is_empty() or generated.is_empty():
            result[name] = _missing_entry()
            continue
        n_pairs = None
        if name in PAIRED_BY_SOURCE:
            train, generated = paired_by_source(train, generated)
            n_pairs = len(generated)
            if n_pairs == 0:
                result[name] = _missing_entry(n_pairs=0)
                continue
        measured, truth = _pairing_tables(
            train, generated, n_pairs is not None, has_truth, confusion, n_boot, amplification_seed
        )
        entry: dict[str, Any] = {"paired_by_source": name in PAIRED_BY_SOURCE, "n_pairs": n_pairs}
        entry["measured"] = {k: v for k, v in measured.items() if k != "corrected"}
        entry["corrected"] = measured.get("corrected")
        entry["true"] = truth.get("corrected") if truth else None
        for kind in ("measured", "corrected", "true"):
            if entry[kind] is not None and n_pairs is not None:
                entry[kind]["n_pairs"] = n_pairs
        entry.update(
            decompose(
                train,
                generated,
                paired=name in PAIRED_BY_SOURCE,
                n_boot=n_boot,
                seed=stream_seed(seed, "decomposition-bootstrap", index),
            )
        )
        result[name] = entry
    return result


def _missing_entry(**extra: Any) -> dict[str, Any]:
    """A pairing with no images on a side (or no pairs): no tables, no decomposition."""
    return {
        "measured": None,
        "corrected": None,
        "true": None,
        "missing": True,
        **extra,
        "ideal": None,
        "decomposition": None,
    }


def _pairing_tables(
    train: pl.DataFrame,
    generated: pl.DataFrame,
    paired: bool,
    has_truth: bool,
    confusion: dict[str, float] | None,
    n_boot: int,
    seed: int,
) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """One pairing's measured amplification table and, with ground truth and confusion rates, the table
    against true training genders (None otherwise); paired tables for a pairing paired by source."""
    if paired:
        # Paired: whole pairs resampled, the null from within-pair label swaps.
        def table(train_labels: pl.Series, generated: pl.DataFrame, correct_train: bool = True) -> dict[str, Any]:
            pairs = pl.DataFrame(
                {
                    "occupation": generated["occupation"],
                    "train_label": train_labels,
                    "gen_label": generated["label"],
                }
            ).filter(pl.col("train_label").is_not_null())
            return paired_amplification_table(
                pairs, n_boot=n_boot, seed=seed, confusion=confusion, correct_train=correct_train
            )

        measured = table(train["label"], generated)
        truth = (
            table(train["true_gender"], generated, correct_train=False) if has_truth and confusion is not None else None
        )
    else:
        generated_counts = count_table(generated)
        measured = amplification_table(
            count_table(train), generated_counts, n_boot=n_boot, seed=seed, confusion=confusion
        )
        truth = (
            amplification_table(
                true_count_table(train),
                generated_counts,
                n_boot=n_boot,
                seed=seed,
                confusion=confusion,
                correct_train=False,
            )
            if has_truth and confusion is not None
            else None
        )
    return measured, truth


def headline(table: dict[str, Any] | None) -> dict[str, Any]:
    """The aggregate numbers of one amplification table (:data:`HEADLINE_KEYS`, no per-occupation rows).

    ``n_occupations`` (occupations the means are taken over) comes with ``n_occupations_left_out``
    (occupations of either side that they do not cover), so an average never hides a missing occupation.
    """
    if not table:
        return {}
    out = {key: table[key] for key in HEADLINE_KEYS if key in table}
    if "occupations_left_out" in table:
        out["n_occupations_left_out"] = len(table["occupations_left_out"])
    return out


def table_rows(paradox: dict) -> list[dict]:
    """One CSV row per (pairing, kind): the shift and gap estimands with intervals and p, raw A_abs, the
    decomposition terms (measured rows), and the noise-floor diagnostics."""
    rows = []
    for name, entry in paradox.items():
        for kind in ("measured", "corrected", "true"):
            table = entry.get(kind)
            if not table:
                continue
            terms = decomposition_values(entry.get("decomposition")) if kind == "measured" else {}
            rows.append(
                {
                    "pairing": f"{name} ({kind})",
                    "name": name,
                    "kind": kind,
                    **estimand_values(table),
                    **{term: terms.get(term) for term in ("data", "generator", "instrument")},
                    "noise_floor_abs": table.get("noise_floor_abs"),
                    "excess_abs": table.get("excess_abs"),
                    "n_images_train": table.get("n_images_train"),
                    "n_images_gen": table.get("n_images_gen"),
                }
            )
    return rows
