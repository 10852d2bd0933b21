"""The downstream tasks retrained on each generation's dataset: a captioner and an occupation classifier.

Generation N's dataset is the real corpus's training split for N = 0 and ``artifacts/gen{N}/mix/
dataset.parquet`` (the corpus with a share of its images generated) for N >= 1. Each task is trained
from scratch on it and scored on the real corpus's held-out split (``split == "test"``):

- :func:`captioner_task`: BLEU-4, ROUGE-L and CIDEr-D against the held-out human captions
  (:mod:`biasloop.metrics.captions`), gender misprediction Error and Ratio
  (:mod:`biasloop.metrics.caption_bias`), LIC_M, LIC_D and leakage (:mod:`biasloop.models.leakage`);
- :func:`classifier_task`: occupation accuracy overall and per perceived gender, worst-group accuracy,
  Fairlearn demographic parity and equalized odds differences (:mod:`biasloop.models.classifier`).

Genders of held-out images come from ground truth where the corpus has it, otherwise from the
instrument (:func:`biasloop.metrics.evaluation.perceived_groups`).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from biasloop.core.io import load_images, timed

log = logging.getLogger(__name__)


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


def captioner_task(
    dataset: pl.DataFrame, test: pl.DataFrame, groups: list[str | None], config: Any, seed: int, device: str,
    progress: bool = True,
) -> tuple[dict[str, Any], pl.DataFrame]:
    """Train the captioner on ``dataset`` and score it on ``test``.

    Args:
        dataset: training rows (``caption``, ``image_ref``).
        test: held-out rows (``id``, ``caption``, ``image_ref``), one human caption per image.
        groups: gender per held-out row (``female`` / ``male`` / None).
        config: the ``captioner`` params (:class:`biasloop.models.captioner.CaptionerConfig`).
        seed: training seed (the leakage classifier's runs derive theirs from it).
        device: torch device.
        progress: tqdm bars.

    Returns:
        ``(metrics, captions)``: metrics with ``quality`` (bleu1..4, rouge_l, cider_d), ``misprediction``,
        ``leakage`` and ``training``; captions a frame ``id, reference, caption, gender, caption_gender``.
    """
    from biasloop.metrics.caption_bias import caption_gender, misprediction
    from biasloop.metrics.captions import score_captions
    from biasloop.models.captioner import make_captioner
    from biasloop.models.leakage import caption_leakage

    captioner = make_captioner(config, device)
    with timed(f"captioner training on {len(dataset)} pairs", log):
        training = captioner.train(load_images(dataset["image_ref"].to_list()), dataset["caption"].to_list(), seed,
                                   progress=progress)
    with timed(f"captioning {len(test)} held-out images", log):
        hypotheses = captioner.caption(load_images(test["image_ref"].to_list()))
    references = test["caption"].to_list()
    ids = test["id"].to_list()
    quality = score_captions({i: [r] for i, r in zip(ids, references)}, dict(zip(ids, hypotheses)))
    bias = misprediction(hypotheses, groups)
    with timed(f"leakage classifier ({config.leakage.seeds} runs x 2)", log):
        leakage = caption_leakage(hypotheses, references, groups, config.leakage, seed, captioner.vocabulary)
    captions = pl.DataFrame({
        "id": ids, "reference": references, "caption": hypotheses,
        "gender": [g for g in groups], "caption_gender": [caption_gender(h) for h in hypotheses],
    }, schema={"id": pl.String, "reference": pl.String, "caption": pl.String, "gender": pl.String,
               "caption_gender": pl.String})
    metrics = {"quality": quality, "misprediction": bias, "leakage": leakage, "training": training,
               "backend": config.backend}
    log.info("captioner: BLEU-4 %.3f, CIDEr-D %.3f, Error %.3f, LIC_M %.3f, LIC_D %.3f, leakage %.3f",
             quality["bleu4"], quality["cider_d"], bias["error"] if bias["error"] is not None else float("nan"),
             leakage["lic_m"], leakage["lic_d"], leakage["leakage"])
    return metrics, captions


def classifier_task(
    dataset: pl.DataFrame, test: pl.DataFrame, groups: list[str | None], config: Any, seed: int, device: str,
    progress: bool = True,
) -> tuple[dict[str, Any], pl.DataFrame]:
    """Train the occupation classifier on ``dataset``'s labelled rows and score it on ``test``'s.

    Args:
        dataset: training rows with ``image_ref`` and ``config.label_column``; unlabelled rows skipped.
        test: held-out rows, likewise.
        groups: gender per held-out row (``female`` / ``male`` / None).
        config: the ``classifier`` params (:class:`biasloop.models.classifier.ClassifierConfig`).
        seed: training seed.
        device: torch device.
        progress: tqdm bar.

    Returns:
        ``(metrics, predictions)``: :func:`biasloop.models.classifier.classifier_fairness` plus
        ``training``; predictions a frame ``id, occupation, predicted, gender``.
    """
    from biasloop.models.classifier import classifier_fairness, train_classifier

    column = config.label_column
    for name, frame in (("dataset", dataset), ("held-out split", test)):
        if column not in frame.columns:
            raise ValueError(f"classifier.label_column: the {name} has no column {column!r}")
    train_rows = dataset.filter(pl.col(column).is_not_null())
    keep = test[column].is_not_null().to_numpy()
    test_rows = test.filter(pl.Series(keep))
    test_groups = [g for g, k in zip(groups, keep) if k]
    if train_rows.is_empty() or test_rows.is_empty():
        raise ValueError(f"classifier.label_column: no labelled rows in {column!r} ({len(train_rows)} train, {len(test_rows)} test)")
    with timed(f"occupation classifier training on {len(train_rows)} images", log):
        classifier, training = train_classifier(load_images(train_rows["image_ref"].to_list()),
                                                train_rows[column].to_list(), config, seed, device, progress)
    predicted = classifier.predict(load_images(test_rows["image_ref"].to_list()))
    metrics = classifier_fairness(test_rows[column].to_list(), predicted, test_groups, config.min_group_size)
    metrics["training"] = training
    metrics["architecture"] = config.architecture
    predictions = pl.DataFrame({
        "id": test_rows["id"].to_list(), "occupation": test_rows[column].to_list(),
        "predicted": [str(p) for p in predicted], "gender": test_groups,
    }, schema={"id": pl.String, "occupation": pl.String, "predicted": pl.String, "gender": pl.String})
    log.info("classifier: accuracy %.3f, worst group %s, DP difference %s, EO difference %s", metrics["accuracy"],
             metrics.get("worst_group_accuracy"), metrics.get("demographic_parity_difference_mean"),
             metrics.get("equalized_odds_difference_mean"))
    return metrics, predictions


def held_out_genders(test: pl.DataFrame, instrument_dir: str | None, device: str, threshold: float) -> list[str | None]:
    """Gender per held-out row: ground truth where known, else the instrument's confident label."""
    from biasloop.metrics.evaluation import perceived_groups

    groups = perceived_groups(test, instrument_dir, device, threshold)
    return [g if g in ("female", "male") else None for g in groups]

