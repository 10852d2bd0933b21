"""Amplification of one K-class attribute (skin tone, ...) for the paradox pairings: measured, corrected by
the instrument's KxK confusion, against ground truth, decomposed, and in intersectional cells with gender.

Columns (``docs/attributes.md``; the labelling stages write them for every attribute the instrument
measures, prefix = the attribute's name, e.g. ``tone``): ``<name>_label`` (a class or ``abstain``) on the
training and generated predictions, ``true_<name>`` (training images' true class, glyph world) and
``oracle_<name>`` (the world's oracle on generated images, glyph world). A caption is *marked* for the
attribute when it contains one of the attribute's indicator words (``attributes.<name>.indicators``,
matched as :func:`biasloop.data.indicators.tone_term_regex` matches tone's words); the ideal learner
takes the true classes of the selection's unmarked captions.

For each pairing of :data:`biasloop.metrics.paradox.PAIRINGS` (captions as prompts paired by caption id,
:func:`~biasloop.metrics.paradox.paired_by_source`; its tables use the unpaired intervals, which ignore
the positive within-pair correlation and so are wider than paired ones would be):

- ``measured``: :func:`biasloop.metrics.kclass.table.class_amplification_table` of the confident labels
  (per-occupation counts and distributions, the debiased gap with its interval and ``tv_raw``, the shift
  to each occupation's training majority class, directional bias amplification A->T and T->A, null p);
- ``corrected``: :func:`biasloop.metrics.kclass.attribute_terms.corrected_class_table` (None without a
  confusion);
- ``truth`` (glyph world): the class table of the true training classes against the oracle's classes of
  the generated images (the noise-free-labels gap and shift: what ``measured`` estimates after correction);
- ``decomposition``: :func:`biasloop.metrics.kclass.attribute_terms.decompose_classes`;
- ``cells``: gender x attribute counts and shares (:func:`cells_entry`).

A part that needs ground truth is None (``truth``) or says ``ground_truth: false`` where the corpus has
none; nothing is filled with zeros. Seeds: named streams ``<name>-amplification-bootstrap``,
``<name>-correction`` and ``<name>-decomposition-bootstrap`` (pairing index), so gender's streams are
untouched.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import polars as pl

from biasloop.core.io import json_float
from biasloop.core.seeds import stream_seed
from biasloop.data.indicators import tone_term_regex
from biasloop.metrics.kclass.attribute_terms import corrected_class_table, decompose_classes
from biasloop.metrics.kclass.cells import intersectional_counts
from biasloop.metrics.kclass.correction import Confusion
from biasloop.metrics.kclass.table import class_amplification_table
from biasloop.metrics.paradox import PAIRED_BY_SOURCE, PAIRINGS, paired_by_source

GENDER_LABEL = "label"  # the binary path's perceived-gender label column (female / male / abstain)
# Aggregate keys of a class table kept by :func:`headline` (no per-occupation rows).
HEADLINE_KEYS = ("estimands", "bias_amp", "n_occupations", "n_classes", "dropped", "available", "occupations_left_out")


def columns(name: str) -> dict[str, str]:
    """The per-image column names of attribute ``name``: ``label``, ``true``, ``oracle``, ``unmarked``."""
    return {
        "label": f"{name}_label",
        "true": f"true_{name}",
        "oracle": f"oracle_{name}",
        "unmarked": f"{name}_unmarked",
    }


def confusion_from_instrument(entry: Mapping[str, Any]) -> Confusion:
    """The held-out :class:`Confusion` of instrument.json's ``attributes.<name>``: ``classes`` and
    ``confusion``, either K x K counts (rows true, columns label) with ``abstained`` (K counts), or the
    label-count form ``{"<true>_as_<label>": count}`` of :meth:`Confusion.label_counts` (abstentions in it)."""
    classes = tuple(entry["classes"])
    if isinstance(entry["confusion"], Mapping):
        return Confusion.from_label_counts(entry["confusion"], classes)
    counts = np.asarray(entry["confusion"], dtype=np.int64)
    abstained = np.asarray(entry.get("abstained") or [0] * len(classes), dtype=np.int64)
    if counts.shape != (len(classes), len(classes)) or abstained.shape != (len(classes),):
        raise ValueError(
            f"instrument attribute with classes {list(classes)}: confusion {counts.shape}, abstained {abstained.shape}"
        )
    return Confusion(classes, counts, abstained)


def attributes_with_labels(
    instrument: Mapping[str, Any], frame: pl.DataFrame, skip: Sequence[str] = ("gender",)
) -> list[str]:
    """The K-class attributes instrument.json's ``attributes`` lists (but ``skip``) whose label column
    ``frame`` has, in instrument.json's order."""
    return [n for n in (instrument.get("attributes") or {}) if n not in skip and columns(n)["label"] in frame.columns]


def with_unmarked(
    train: pl.DataFrame, matches: pl.DataFrame | None, name: str, words: Mapping[str, Sequence[str]]
) -> pl.DataFrame:
    """``train`` with ``<name>_unmarked``: the caption (from retrieve's ``matches``: ``occupation, id,
    caption``) contains none of the attribute's indicator ``words`` (class -> words); null when the
    caption is unknown (no ``matches``, or no ``caption`` column). Unchanged when the column is there."""
    column = columns(name)["unmarked"]
    if column in train.columns:
        return train
    if matches is None or "caption" not in matches.columns:
        return train.with_columns(pl.lit(None, dtype=pl.Boolean).alias(column))
    every = [w for class_words in words.values() for w in class_words]
    captions = matches.select("occupation", "id", "caption").unique(["occupation", "id"], keep="first")
    marked = pl.col("caption").str.contains(tone_term_regex(every)) if every else pl.lit(False)
    captions = captions.select("occupation", "id", (~marked.fill_null(False)).alias(column))
    return train.join(captions, on=["occupation", "id"], how="left", maintain_order="left")


def class_counts(
    frame: pl.DataFrame, column: str, classes: Sequence[str], occupations: Sequence[str]
) -> tuple[np.ndarray, np.ndarray]:
    """``(occupations, K)`` counts of each class in ``column`` and ``(occupations,)`` other rows
    (abstentions, nulls); a missing column counts every row as other."""
    counts, other = np.zeros((len(occupations), len(classes)), np.int64), np.zeros(len(occupations), np.int64)
    row, index = {o: i for i, o in enumerate(occupations)}, {c: j for j, c in enumerate(classes)}
    values = frame[column] if column in frame.columns else pl.Series([None] * len(frame), dtype=pl.String)
    grouped = pl.DataFrame({"occupation": frame["occupation"], "value": values}).group_by("occupation", "value").len()
    for occupation, value, n in grouped.iter_rows():
        if occupation not in row:
            continue
        if value in index:
            counts[row[occupation], index[value]] += n
        else:
            other[row[occupation]] += n
    return counts, other


def _has(frame: pl.DataFrame, column: str, classes: Sequence[str]) -> bool:
    return column in frame.columns and bool(frame[column].is_in(list(classes)).any())


def pairing_entry(
    train: pl.DataFrame,
    gen: pl.DataFrame,
    name: str,
    classes: Sequence[str],
    confusion: Confusion | None,
    *,
    paired: bool,
    n_boot: int,
    seeds: tuple[int, int, int],
    min_cell_size: int,
) -> dict[str, Any]:
    """One pairing's ``measured``, ``corrected``, ``truth``, ``decomposition`` and ``cells`` (see the module
    docstring). ``seeds``: the class tables', the correction's and the decomposition's."""
    col = columns(name)
    occupations = sorted(set(train["occupation"].to_list()) | set(gen["occupation"].to_list()))
    (train_counts, train_other), (gen_counts, gen_other) = (
        class_counts(f, col["label"], classes, occupations) for f in (train, gen)
    )
    table = lambda a, b, abstain=(None, None): class_amplification_table(  # noqa: E731
        occupations, classes, a, b, *abstain, n_boot=n_boot, seed=seeds[0]
    )
    truth = None
    if _has(train, col["true"], classes) and _has(gen, col["oracle"], classes):
        truth = table(
            class_counts(train, col["true"], classes, occupations)[0],
            class_counts(gen, col["oracle"], classes, occupations)[0],
        )
        truth["basis"] = {"train": col["true"], "gen": col["oracle"]}
    return {
        "paired_by_source": paired,
        "n_pairs": len(gen) if paired else None,
        "measured": table(train_counts, gen_counts, (train_other, gen_other)),
        "corrected": None
        if confusion is None
        else corrected_class_table(occupations, train_counts, gen_counts, confusion, n_boot, seeds[1]),
        "truth": truth,
        "decomposition": decompose_classes(train, gen, classes, col, paired=paired, n_boot=n_boot, seed=seeds[2]),
        "cells": cells_entry(train, gen, name, min_cell_size),
    }


def cells_entry(train: pl.DataFrame, gen: pl.DataFrame, name: str, min_cell_size: int) -> dict[str, Any]:
    """Intersectional cells perceived gender x attribute (:func:`biasloop.metrics.kclass.cells.intersectional_counts`):
    cells with fewer than ``min_cell_size`` confident training images (over all occupations) are excluded
    on both sides and listed; per kept cell the training and generated counts and shares (of the images
    confident on both attributes in kept cells), and per occupation the counts."""
    label = columns(name)["label"]
    if GENDER_LABEL not in train.columns or GENDER_LABEL not in gen.columns:
        return {"available": False, "reason": f"no perceived-gender column {GENDER_LABEL!r}"}
    sides = {"train": intersectional_counts(train, GENDER_LABEL, label, min_cell_size)}
    sides["gen"] = intersectional_counts(gen, GENDER_LABEL, label, min_cell_size, classes=sides["train"]["classes"])
    out: dict[str, Any] = {"available": True, "min_cell_size": int(min_cell_size), "cells": sides["train"]["classes"]}
    for side, result in sides.items():
        totals = result["counts"].sum(axis=0)
        out[side] = {
            "counts": {c: int(n) for c, n in zip(result["classes"], totals)},
            "shares": {
                c: json_float(n / totals.sum()) if totals.sum() else None for c, n in zip(result["classes"], totals)
            },
            "n_abstain": int(result["n_abstain"].sum()),
            "excluded": result["excluded"],
            "per_occupation": {
                o: dict(zip(result["classes"], map(int, row)))
                for o, row in zip(result["occupations"], result["counts"])
            },
        }
    return out


def attribute_amplification(
    name: str,
    classes: Sequence[str],
    train_predictions: pl.DataFrame,
    generated_predictions: pl.DataFrame,
    confusion: Confusion | None,
    *,
    matches: pl.DataFrame | None,
    words: Mapping[str, Sequence[str]],
    n_boot: int = 1000,
    seed: int = 0,
    min_cell_size: int = 20,
) -> dict[str, Any]:
    """Attribute ``name``'s amplification for every pairing of :data:`~biasloop.metrics.paradox.PAIRINGS`.

    Args:
        name: the attribute (column prefix). classes: its K classes (instrument.json's order).
        train_predictions: label_train's rows (``selection, occupation, id, <name>_label``, ``label``
            for the cells and, glyph world, ``true_<name>``).
        generated_predictions: label@N's rows (``prompt_kind, occupation, <name>_label``, ``label``,
            ``source_id`` and, glyph world, ``oracle_<name>``).
        confusion: the held-out KxK confusion (:func:`confusion_from_instrument`), or None.
        matches: retrieve's matches (``occupation, id, caption``) for the caption indicators, or None.
        words: the attribute's indicator words per class (``attributes.<name>.indicators``).
        n_boot: replicates of every interval and null. seed: ``base.seed``.
        min_cell_size: fewest confident training images a gender x attribute cell needs.

    Returns:
        ``{"classes", "confusion": Confusion.to_dict() | None, "pairings": {pairing: entry}}``; a pairing
        with no image on a side (or no pair) is ``{"missing": True}``.
    """
    train_predictions = with_unmarked(train_predictions, matches, name, words)
    out: dict[str, Any] = {"classes": list(classes), "confusion": None if confusion is None else confusion.to_dict()}
    out["pairings"] = {}
    for index, (pairing, (prompt_kind, selection)) in enumerate(PAIRINGS.items()):
        train = train_predictions.filter(pl.col("selection") == selection)
        gen = generated_predictions.filter(pl.col("prompt_kind") == prompt_kind)
        paired = pairing in PAIRED_BY_SOURCE
        if paired and not train.is_empty() and "source_id" in gen.columns:
            train, gen = paired_by_source(train, gen)
        if train.is_empty() or gen.is_empty() or (paired and "source_id" not in gen.columns):
            out["pairings"][pairing] = {"missing": True}
            continue
        seeds = (
            stream_seed(seed, f"{name}-amplification-bootstrap"),
            stream_seed(seed, f"{name}-correction", index),
            stream_seed(seed, f"{name}-decomposition-bootstrap", index),
        )
        out["pairings"][pairing] = pairing_entry(
            train, gen, name, classes, confusion, paired=paired, n_boot=n_boot, seeds=seeds, min_cell_size=min_cell_size
        )
    return out


def headline(table: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The aggregates of a class table (:data:`HEADLINE_KEYS`, no per-occupation rows); None stays None."""
    return None if table is None else {k: table[k] for k in HEADLINE_KEYS if k in table}


def plot_rows(result: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One CSV row per (pairing, kind, occupation, class): the training and generated shares (fractions)."""
    rows = []
    for pairing, entry in result["pairings"].items():
        for kind in ("measured", "corrected", "truth"):
            table = entry.get(kind) or {}
            for row in table.get("per_occupation", []):
                for cls in result["classes"]:
                    rows.append(
                        {"pairing": pairing, "kind": kind, "occupation": row["occupation"], "class": cls,
                         "p_train": row["p_train"].get(cls), "p_gen": row["p_gen"].get(cls)}
                    )  # fmt: skip
    return rows


def dataset_entry(
    name: str,
    classes: Sequence[str],
    dataset_rows: pl.DataFrame,
    real: pl.DataFrame,
    neutral: pl.DataFrame,
    confusion: Confusion | None,
    n_boot: int,
    seed: int,
) -> dict[str, Any]:
    """Generation N's neutral-prompt images against dataset N's rows behind the keyword captions (the
    data generation N trained on), and dataset N against the real corpus's keyword images (its drift),
    as class tables (stream ``<name>-amplification-bootstrap``); mirrors gender's
    ``amplification_vs_training_dataset``."""
    label = columns(name)["label"]
    if dataset_rows.is_empty() or neutral.is_empty() or real.is_empty():
        return {
            "available": False,
            "reason": "no keyword-selected rows in the training dataset or no neutral-prompt images",
        }
    occupations = sorted(
        set(dataset_rows["occupation"].to_list())
        | set(neutral["occupation"].to_list())
        | set(real["occupation"].to_list())
    )
    dataset, gen, corpus = (class_counts(f, label, classes, occupations) for f in (dataset_rows, neutral, real))
    bootstrap = stream_seed(seed, f"{name}-amplification-bootstrap")
    table = class_amplification_table(
        occupations, classes, dataset[0], gen[0], dataset[1], gen[1], n_boot=n_boot, seed=bootstrap
    )
    drift = class_amplification_table(
        occupations, classes, corpus[0], dataset[0], corpus[1], dataset[1], n_boot=n_boot, seed=bootstrap
    )
    corrected = (
        None
        if confusion is None
        else corrected_class_table(
            occupations, dataset[0], gen[0], confusion, n_boot, stream_seed(seed, f"{name}-correction", len(PAIRINGS))
        )
    )
    return {
        "available": True,
        "measured": headline(table),
        "corrected": headline(corrected),
        "per_occupation": table["per_occupation"],
        "dataset_vs_real_corpus": headline(drift),
        "n_images_dataset": len(dataset_rows),
    }


def generation_summary(result: Mapping[str, Any]) -> dict[str, Any]:
    """evaluate@N's view of :func:`attribute_amplification`: the headline pairing (``prompt_vs_keyword``)'s
    tables as headlines with its per-occupation rows and cells, every pairing's headlines and
    decompositions (mirroring gender's ``amplification``, ``paradox`` and ``decomposition`` keys)."""
    pairings = result["pairings"]
    main = pairings.get("prompt_vs_keyword") or {}
    return {
        "classes": result["classes"],
        "amplification": headline(main.get("measured")),
        "amplification_corrected": headline(main.get("corrected")),
        "amplification_true": headline(main.get("truth")),
        "per_occupation": (main.get("measured") or {}).get("per_occupation", []),
        "pairings": {
            name: {kind: headline(entry.get(kind)) for kind in ("measured", "corrected", "truth")}
            for name, entry in pairings.items()
        },
        "decomposition": {name: entry.get("decomposition") for name, entry in pairings.items()},
        "cells": main.get("cells"),
    }


def measure_attributes(
    instrument: Mapping[str, Any],
    specs: Mapping[str, Any],
    train_predictions: pl.DataFrame,
    generated_predictions: pl.DataFrame,
    matches: pl.DataFrame | None,
    *,
    n_boot: int,
    seed: int,
    min_cell_size: int,
) -> dict[str, dict[str, Any]]:
    """:func:`attribute_amplification` of every K-class attribute that is measured: listed in
    instrument.json's ``attributes`` (``classes``, ``confusion``, ``abstained``) and in the params'
    ``attributes`` (``specs``: name -> :class:`biasloop.core.attributes.AttributeSpec`, for the caption
    words), gender aside, with its label column on both sides. Empty when none is (e.g. a run from
    before the K-class instrument): the caller then writes nothing new."""
    out = {}
    for name in attributes_with_labels(instrument, train_predictions):
        if name not in specs or columns(name)["label"] not in generated_predictions.columns:
            continue
        entry = instrument["attributes"][name]
        out[name] = attribute_amplification(
            name,
            entry["classes"],
            train_predictions,
            generated_predictions,
            confusion_from_instrument(entry) if entry.get("confusion") is not None else None,
            matches=matches,
            words=specs[name].indicators,
            n_boot=n_boot,
            seed=seed,
            min_cell_size=min_cell_size,
        )
    return out


def generation_attributes(
    instrument: Mapping[str, Any],
    specs: Mapping[str, Any],
    train_predictions: pl.DataFrame,
    generated_predictions: pl.DataFrame,
    matches: pl.DataFrame | None,
    dataset_predictions: pl.DataFrame | None,
    *,
    n_boot: int,
    seed: int,
    min_cell_size: int,
) -> dict[str, dict[str, Any]]:
    """evaluate@N's ``attributes``: per measured K-class attribute (:func:`measure_attributes`) its
    :func:`generation_summary` against the real corpus and, with label_dataset@N's predictions (with the
    attribute's label column), ``amplification_vs_training_dataset`` (:func:`dataset_entry`)."""
    # imported here: evaluation may come to call this module (no import cycle at load time)
    from biasloop.metrics.evaluation import training_dataset_rows

    results = measure_attributes(
        instrument,
        specs,
        train_predictions,
        generated_predictions,
        matches,
        n_boot=n_boot,
        seed=seed,
        min_cell_size=min_cell_size,
    )
    out = {}
    for name, result in results.items():
        entry = generation_summary(result)
        if dataset_predictions is None or columns(name)["label"] not in dataset_predictions.columns:
            entry["amplification_vs_training_dataset"] = {
                "available": False,
                "reason": f"no label_dataset predictions with a {columns(name)['label']!r} column",
            }
        else:
            confusion = instrument["attributes"][name]
            entry["amplification_vs_training_dataset"] = dataset_entry(
                name,
                result["classes"],
                training_dataset_rows(train_predictions, dataset_predictions),
                train_predictions.filter(pl.col("selection") == "keyword"),
                generated_predictions.filter(pl.col("prompt_kind") == "neutral"),
                confusion_from_instrument(confusion) if confusion.get("confusion") is not None else None,
                n_boot,
                seed,
            )
        out[name] = entry
    return out
