"""Evaluating one generation: amplification of its images and the bias of its downstream CLIP.

``evaluate_generation`` gathers everything ``metrics/generations/gen{N}.json`` holds:

- the paradox pairings for generation N's images against the real training selections
  (:mod:`biasloop.metrics.paradox`), with the headline pairing ``prompt_vs_keyword`` (``amplification``:
  against the real corpus);
- ``amplification_vs_training_dataset``: the same headline pairing against the dataset generation N
  trained on (dataset N: under ``loop.mode`` replace or accumulate it holds generated images), and how
  far that dataset's own shares have moved from the real corpus's (``dataset_vs_real_corpus``);
- each pairing's measured shift split into data (the ideal learner), generator and instrument
  (``ideal`` and ``decomposition``, :mod:`biasloop.metrics.decomposition`), and the instrument checked
  against the hue oracle on generation N's images (``instrument_on_generated``; glyph world only);
- the generator's quality: the instrument's zero-shot occupation accuracy on the images it made for
  neutral prompts (does the image show what was asked), and its abstain rate;
- the downstream CLIP trained on dataset N, on the real corpus's held-out split: text-to-image
  recall@k overall and per perceived-gender group (the gap; an image whose caption is identical to the
  query counts as correct, since templated captions repeat), MaxSkew@k and NDKL of the images
  retrieved for each neutral occupation query (against parity, and ``_vs_training`` against the share
  of women among the occupation's images in the dataset the CLIP trained on: :func:`training_shares`;
  ``k`` is ``evaluate.skew_k``, and when the held-out set has fewer people than that every one of them
  is ranked, so ``skew_k_effective`` is the k actually used), and zero-shot occupation accuracy per
  (occupation, gender) group with Fairlearn's group metrics (worst-group accuracy over groups with at
  least ``evaluate.min_group_size`` images; smaller groups are listed as too small).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from biasloop.core.seeds import stream_seed
from biasloop.data.text import fill_template
from biasloop.metrics.amplification import amplification_table, count_table
from biasloop.metrics.decomposition import instrument_agreement
from biasloop.metrics.downstream import group_fairness, max_skew_at_k, ndkl, recall_at_k
from biasloop.metrics.paradox import headline, paradox_table


@dataclasses.dataclass(frozen=True)
class EvaluateConfig:
    """``evaluate``: how generations are scored."""

    n_boot: int = 1000  # bootstrap replicates for every 95% interval
    recall_ks: tuple[int, ...] = (1, 5, 10)  # k of text-to-image recall@k
    skew_k: int = 50  # k of MaxSkew@k and NDKL (images retrieved per occupation query; all of them when fewer)
    query_templates: tuple[str, ...] = ("a photo of {article} {occupation}",)  # neutral downstream queries
    min_group_size: int = 20  # fewest labelled images an (occupation, gender) group needs for worst-group accuracy


def generator_quality(generated: pl.DataFrame) -> dict[str, Any]:
    """Occupation accuracy and abstain rate of the generated images made for neutral prompts."""
    neutral = generated.filter(pl.col("prompt_kind") == "neutral")
    out: dict[str, Any] = {"n_images": len(generated), "abstain_rate": float((generated["label"] == "abstain").mean())}
    if "predicted_occupation" in neutral.columns and len(neutral):
        out["occupation_accuracy"] = float((neutral["predicted_occupation"] == neutral["occupation"]).mean())
        out["chance"] = 1.0 / max(neutral["occupation"].n_unique(), 1)
    return out


@dataclasses.dataclass(frozen=True)
class HeldOutVectors:
    """A downstream CLIP's unit embeddings of the held-out rows, computed once for every measure of them."""

    images: np.ndarray  # (n, d): the held-out images
    captions: np.ndarray  # (n, d): their captions
    queries: np.ndarray  # (occupations, d): per occupation, the mean of its query templates' embeddings


def encode_held_out(
    model: Any, test: pl.DataFrame, images: np.ndarray, occupations: list[str], config: EvaluateConfig
) -> HeldOutVectors:
    """:class:`HeldOutVectors` of ``test`` (``caption``), its ``images`` and the occupation queries
    (``config.query_templates`` filled per occupation)."""
    queries = [
        model.encode_texts([fill_template(t, occupation=o) for t in config.query_templates]).mean(axis=0)
        for o in occupations
    ]
    return HeldOutVectors(
        images=model.encode_images(images),
        captions=model.encode_texts(test["caption"].to_list()),
        queries=np.stack(queries) if queries else np.zeros((0, 0)),
    )


def downstream_bias(
    model: Any,
    test: pl.DataFrame,
    images: np.ndarray,
    groups: list[str | None],
    occupations: list[str],
    config: EvaluateConfig,
    training_share_female: dict[str, float] | None = None,
    seed: int = 0,
    vectors: HeldOutVectors | None = None,
) -> dict[str, Any]:
    """Quality and bias of a downstream CLIP on held-out real pairs.

    Args:
        model: a trained downstream CLIP with ``encode_images`` and ``encode_texts`` (unit vectors).
        test: held-out rows (``caption``, ``true_occupation``), aligned with ``images`` and ``groups``.
        images: ``uint8`` images of ``test``.
        groups: perceived gender per row (``female``/``male``/None for no person).
        occupations: the occupations to query.
        config: the ``evaluate`` params.
        training_share_female: per occupation, the share of women the CLIP saw in training
            (:func:`training_shares`); adds the ``_vs_training`` MaxSkew and NDKL. None: parity only.
        seed: seed of the group metrics' bootstrap intervals (``config.n_boot`` resamples).
        vectors: :func:`encode_held_out` of these inputs, when the caller has them (None: encoded here).

    Returns:
        recall@k (overall, per group, gap; identical captions count as correct) with its chance level,
        mean/max MaxSkew@k and NDKL over occupation queries (against parity; with
        ``training_share_female`` also ``max_skew_vs_training_mean``/``_max`` and ``ndkl_vs_training_mean``),
        ``skew_k`` and ``skew_k_effective`` (the k used: fewer when the held-out set has fewer people),
        and Fairlearn group metrics of zero-shot occupation classification (worst-group accuracy over
        groups of ``config.min_group_size``, with intervals).
    """
    vectors = vectors or encode_held_out(model, test, images, occupations, config)
    image_vectors, caption_vectors = vectors.images, vectors.captions
    group_array = np.array([g if g is not None else "none" for g in groups], dtype=object)
    captions = test["caption"].to_list()
    recall = recall_at_k(caption_vectors @ image_vectors.T, ks=config.recall_ks, groups=group_array, captions=captions)
    # Chance: a random ranking puts one of the query's c identical-caption images in the top k with
    # probability about 1 - (1 - k/n)^c; the mean over queries.
    k_max, n = max(config.recall_ks), len(test)
    _, caption_ids, caption_counts = np.unique(np.asarray(captions, dtype=str), return_inverse=True, return_counts=True)
    recall[f"chance@{k_max}"] = float(np.mean(1.0 - (1.0 - min(k_max, n) / n) ** caption_counts[caption_ids]))

    people = np.flatnonzero(np.isin(group_array, ["female", "male"]))
    k_effective = min(config.skew_k, len(people))
    per_query = _skew_per_query(
        vectors.queries, image_vectors[people], group_array[people], occupations, config, training_share_female
    )
    skews, ndkls = [r["max_skew"] for r in per_query], [r["ndkl"] for r in per_query]
    skews_training = [r["max_skew_vs_training"] for r in per_query if "max_skew_vs_training" in r]
    ndkls_training = [r["ndkl_vs_training"] for r in per_query if "ndkl_vs_training" in r]
    fairness = _zero_shot_fairness(test, image_vectors, vectors.queries, group_array, occupations, config, seed)
    return {
        "recall": recall,
        "max_skew_mean": float(np.mean(skews)) if skews else None,
        "max_skew_max": float(np.max(skews)) if skews else None,
        "ndkl_mean": float(np.mean(ndkls)) if ndkls else None,
        "max_skew_vs_training_mean": float(np.mean(skews_training)) if skews_training else None,
        "max_skew_vs_training_max": float(np.max(skews_training)) if skews_training else None,
        "ndkl_vs_training_mean": float(np.mean(ndkls_training)) if ndkls_training else None,
        "skew_k": config.skew_k,
        "skew_k_effective": k_effective,
        "per_query": per_query,
        "fairness": fairness,
        "n_test": len(test),
    }


def _skew_per_query(
    queries: np.ndarray,
    people_vectors: np.ndarray,
    people_groups: np.ndarray,
    occupations: list[str],
    config: EvaluateConfig,
    training_share_female: dict[str, float] | None,
) -> list[dict[str, Any]]:
    """Per occupation query (``queries``: their embeddings, in ``occupations`` order), the top
    ``config.skew_k`` images of people: MaxSkew@k and NDKL against parity and, where the training share is
    known, against it; the share of women retrieved."""
    per_query = []
    for occupation, query in zip(occupations, queries):
        scores = people_vectors @ query
        retrieved = people_groups[np.argsort(-scores, kind="stable")[: config.skew_k]].tolist()
        skew = max_skew_at_k(retrieved, config.skew_k, group_set=("female", "male"))
        divergence = ndkl(retrieved, group_set=("female", "male"))
        row = {
            "occupation": occupation,
            "max_skew": skew,
            "ndkl": divergence,
            "share_female_retrieved": float(np.mean([g == "female" for g in retrieved])),
            "k_effective": len(retrieved),
        }
        share = (training_share_female or {}).get(occupation)
        if share is not None:
            desired = (share, 1.0 - share)
            row.update(
                share_female_training=share,
                max_skew_vs_training=max_skew_at_k(retrieved, config.skew_k, desired, ("female", "male")),
                ndkl_vs_training=ndkl(retrieved, desired, ("female", "male")),
            )
        per_query.append(row)
    return per_query


def _zero_shot_fairness(
    test: pl.DataFrame,
    image_vectors: np.ndarray,
    class_vectors: np.ndarray,
    group_array: np.ndarray,
    occupations: list[str],
    config: EvaluateConfig,
    seed: int,
) -> dict[str, Any]:
    """:func:`group_fairness` of zero-shot occupation classification (``class_vectors``: the occupation
    queries' embeddings) on held-out images of people with a true occupation; empty when there is none."""
    labelled = np.flatnonzero(
        test["true_occupation"].is_not_null().to_numpy() & np.isin(group_array, ["female", "male"])
    )
    fairness: dict[str, Any] = {}
    if len(labelled):
        predicted = np.array(occupations, dtype=object)[np.argmax(image_vectors[labelled] @ class_vectors.T, axis=1)]
        fairness = group_fairness(
            np.array(test["true_occupation"].to_list(), dtype=object)[labelled],
            predicted,
            group_array[labelled],
            min_group_size=config.min_group_size,
            n_boot=config.n_boot,
            seed=stream_seed(seed, "downstream-fairness-bootstrap"),
        )
    return fairness


def evaluate_generation(
    generation: int,
    train_predictions: pl.DataFrame,
    generated_predictions: pl.DataFrame,
    confusion: dict[str, float] | None,
    config: EvaluateConfig,
    seed: int,
    downstream: dict[str, Any] | None,
    matches: pl.DataFrame | None = None,
    dataset_predictions: pl.DataFrame | None = None,
) -> dict[str, Any]:
    """Assemble generation N's metrics (see the module docstring).

    Args:
        generation: N.
        train_predictions, generated_predictions, confusion: as :func:`biasloop.metrics.paradox.paradox_table`.
        config: the ``evaluate`` params.
        seed: ``base.seed`` (the bootstrap streams are named in :func:`~biasloop.metrics.paradox.paradox_table`).
        downstream: :func:`downstream_bias`'s result, or None.
        matches: the retrieve stage's matches (caption indicators, for the ideal learner), or None.
        dataset_predictions: label_dataset@N's labels of dataset N, or None (no ``amplification_vs_training_dataset``).
    """
    paradox = paradox_table(
        train_predictions, generated_predictions, confusion, n_boot=config.n_boot, seed=seed, matches=matches
    )
    main = paradox["prompt_vs_keyword"]
    metrics = {
        "generation": generation,
        "amplification": headline(main.get("measured")),
        "amplification_corrected": headline(main.get("corrected")),
        "amplification_true": headline(main.get("true")),
        "per_occupation": (main.get("measured") or {}).get("per_occupation", []),
        "paradox": {
            name: {kind: headline(entry.get(kind)) for kind in ("measured", "corrected", "true")}
            for name, entry in paradox.items()
        },
        "generator": generator_quality(generated_predictions),
        "downstream": downstream,
        "ideal": {name: entry.get("ideal") for name, entry in paradox.items()},
        "decomposition": {name: entry.get("decomposition") for name, entry in paradox.items()},
        "instrument_on_generated": instrument_on_generated(generated_predictions),
    }
    if dataset_predictions is not None:
        metrics["amplification_vs_training_dataset"] = amplification_vs_training_dataset(
            train_predictions, dataset_predictions, generated_predictions, confusion, config.n_boot, seed
        )
    return metrics


def training_shares(train_predictions: pl.DataFrame, dataset_predictions: pl.DataFrame) -> dict[str, float]:
    """Per occupation, the share of women among the training images a generation's models saw.

    The images of dataset N behind the ``keyword`` captions (:func:`training_dataset_rows`), labelled by
    the instrument (label_dataset@N; abstentions left out), add-one smoothed,
    ``(n_female + 1) / (n_female + n_male + 2)``, so an occupation with no woman (or no man) in training
    still has a finite MaxSkew against it (``ln(1 / share)`` would be infinite).
    """
    counts = count_table(training_dataset_rows(train_predictions, dataset_predictions))
    return {
        row["occupation"]: (row["n_female"] + 1) / (row["n_female"] + row["n_male"] + 2)
        for row in counts.iter_rows(named=True)
    }


def training_dataset_rows(
    train_predictions: pl.DataFrame, dataset_predictions: pl.DataFrame, selection: str = "keyword"
) -> pl.DataFrame:
    """The rows of a generation's training dataset behind one real selection.

    A dataset row belongs to occupation ``o`` when its ``source_id`` (the real caption it was made from)
    is in ``selection`` for ``o``: in replace mode one row per selected caption (real or regenerated
    image), in accumulate mode the real one plus every generated copy.

    Args:
        train_predictions: label_train's ``selection, occupation, id`` rows.
        dataset_predictions: label_dataset's ``id, source_id, synthetic, label`` rows.

    Returns:
        ``occupation, id, source_id, synthetic, label`` (and the other label columns).
    """
    selected = train_predictions.filter(pl.col("selection") == selection).select(
        "occupation", pl.col("id").alias("source_id")
    )
    return selected.unique(maintain_order=True).join(dataset_predictions, on="source_id", how="inner")


def amplification_vs_training_dataset(
    train_predictions: pl.DataFrame,
    dataset_predictions: pl.DataFrame,
    generated_predictions: pl.DataFrame,
    confusion: dict[str, float] | None,
    n_boot: int,
    seed: int,
) -> dict[str, Any]:
    """Generation N's neutral-prompt images against the dataset generation N trained on (``keyword`` captions).

    Same table as the headline ``amplification`` (:func:`biasloop.metrics.amplification.amplification_table`,
    stream ``amplification-bootstrap``), with dataset N's images in place of the real corpus's; beside it
    ``dataset_vs_real_corpus``: dataset N's shares against the real corpus's (the drift of the data itself;
    zero in generation 0, whose dataset is the corpus).

    Returns:
        ``{"available": bool, "measured": headline, "corrected": headline | None, "per_occupation": rows,
        "dataset_vs_real_corpus": headline, "n_images_dataset": int, "n_synthetic_dataset": int,
        "share_synthetic_dataset": float}``; ``available`` false (with a ``reason``) when a side is empty.
    """
    rows = training_dataset_rows(train_predictions, dataset_predictions)
    real = train_predictions.filter(pl.col("selection") == "keyword")
    generated = generated_predictions.filter(pl.col("prompt_kind") == "neutral")
    if rows.is_empty() or generated.is_empty() or real.is_empty():
        return {
            "available": False,
            "reason": "no keyword-selected rows in the training dataset or no neutral-prompt images",
        }
    bootstrap = stream_seed(seed, "amplification-bootstrap")
    table = amplification_table(
        count_table(rows), count_table(generated), n_boot=n_boot, seed=bootstrap, confusion=confusion
    )
    drift = amplification_table(count_table(real), count_table(rows), n_boot=n_boot, seed=bootstrap)
    return {
        "available": True,
        "measured": headline(table),
        "corrected": headline(table.get("corrected")) or None,
        "per_occupation": table.get("per_occupation", []),
        "dataset_vs_real_corpus": headline(drift),
        "n_images_dataset": len(rows),
        "n_synthetic_dataset": int(rows["synthetic"].sum()),
        "share_synthetic_dataset": float(rows["synthetic"].mean()),
    }


def instrument_on_generated(generated: pl.DataFrame) -> dict[str, Any]:
    """The instrument against the hue oracle on one generation's images: all of them, and per prompt kind.

    Returns:
        ``{"available": False, "reason": ...}`` without oracle labels (a corpus other than the glyph
        world), else ``{"available": True, "all": agreement, "by_prompt_kind": {kind: agreement}}`` with
        :func:`biasloop.metrics.decomposition.instrument_agreement`'s rows (overall and per occupation).
    """
    overall = instrument_agreement(generated)
    if overall is None:
        return {
            "available": False,
            "reason": "the generated images have no oracle_label (the corpus is not the glyph world)",
        }
    kinds = sorted(generated["prompt_kind"].unique().to_list()) if "prompt_kind" in generated.columns else []
    return {
        "available": True,
        "all": overall,
        "by_prompt_kind": {
            kind: instrument_agreement(generated.filter(pl.col("prompt_kind") == kind)) for kind in kinds
        },
    }


def perceived_groups(test: pl.DataFrame, instrument_dir: str | None, device: str, threshold: float) -> list:
    """Gender group per held-out row: ground truth when the corpus has it, else the instrument's label."""
    if test["true_gender"].null_count() < len(test) or instrument_dir is None:
        return test["true_gender"].to_list()
    from biasloop.models.instrument import label_images, load_cross_fitted

    labels = label_images(load_cross_fitted(instrument_dir, device), test["image_ref"].to_list(), threshold)["label"]
    return [label if label != "abstain" else None for label in labels.to_list()]


def training_pairs(dataset_path: str | Path) -> pl.DataFrame:
    """The training rows of a generation's dataset (a corpus ``captions.parquet`` or a mix ``dataset.parquet``).

    Rows of another split are dropped (a corpus table holds its test split too).
    """
    path = Path(dataset_path)
    if not path.exists():
        raise FileNotFoundError(f"dataset {path} not found")
    frame = pl.read_parquet(path)
    missing = [c for c in ("caption", "image_ref") if c not in frame.columns]
    if missing:
        raise ValueError(f"{path}: missing column(s) {missing}")
    if "split" in frame.columns:
        frame = frame.filter(pl.col("split") == "train")
    if frame.is_empty():
        raise ValueError(f"{path}: no training rows")
    return frame


def held_out(corpus_path: str | Path) -> pl.DataFrame:
    """The corpus's held-out rows (``split == "test"``)."""
    frame = pl.read_parquet(corpus_path).filter(pl.col("split") == "test")
    if frame.is_empty():
        raise ValueError(f"{corpus_path}: no held-out rows (split == 'test')")
    return frame


def held_out_genders(test: pl.DataFrame, instrument_dir: str | None, device: str, threshold: float) -> list[str | None]:
    """Gender per held-out row: ground truth where known, else the instrument's confident label."""
    groups = perceived_groups(test, instrument_dir, device, threshold)
    return [g if g in ("female", "male") else None for g in groups]
