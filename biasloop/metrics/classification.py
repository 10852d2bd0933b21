"""The classification task of a generation (Zhang et al. 2024): train an occupation classifier, score subgroup fairness.

Accuracy overall and per perceived gender, worst-group accuracy, Fairlearn demographic parity and equalized
odds differences (:func:`biasloop.metrics.downstream.classifier_fairness`). Data helpers: :mod:`biasloop.metrics.evaluation`.
"""

from __future__ import annotations

import logging
from typing import Any

import polars as pl

from biasloop.core.io import load_images, timed
from biasloop.core.seeds import stream_seed

log = logging.getLogger(__name__)


def classifier_task(
    dataset: pl.DataFrame,
    test: pl.DataFrame,
    groups: list[str | None],
    config: Any,
    seed: int,
    device: str,
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
        ``(metrics, predictions)``: :func:`biasloop.metrics.downstream.classifier_fairness` plus
        ``training``; predictions a frame ``id, occupation, predicted, gender``.
    """
    from biasloop.metrics.downstream import classifier_fairness
    from biasloop.models.classifier import train_classifier

    column = config.label_column
    for name, frame in (("dataset", dataset), ("held-out split", test)):
        if column not in frame.columns:
            raise ValueError(f"classifier.label_column: the {name} has no column {column!r}")
    train_rows = dataset.filter(pl.col(column).is_not_null())
    keep = test[column].is_not_null().to_numpy()
    test_rows = test.filter(pl.Series(keep))
    test_groups = [g for g, k in zip(groups, keep) if k]
    if train_rows.is_empty() or test_rows.is_empty():
        raise ValueError(
            f"classifier.label_column: no labelled rows in {column!r} ({len(train_rows)} train, {len(test_rows)} test)"
        )
    with timed(f"occupation classifier training on {len(train_rows)} images", log):
        classifier, training = train_classifier(
            load_images(train_rows["image_ref"].to_list()), train_rows[column].to_list(), config, seed, device, progress
        )
    predicted = classifier.predict(load_images(test_rows["image_ref"].to_list()))
    metrics = classifier_fairness(
        test_rows[column].to_list(),
        predicted,
        test_groups,
        config.min_group_size,
        n_boot=config.n_boot,
        seed=stream_seed(seed, "classifier-bootstrap"),
    )
    metrics["training"] = training
    metrics["architecture"] = config.architecture
    predictions = pl.DataFrame(
        {
            "id": test_rows["id"].to_list(),
            "occupation": test_rows[column].to_list(),
            "predicted": [str(p) for p in predicted],
            "gender": test_groups,
        },
        schema={"id": pl.String, "occupation": pl.String, "predicted": pl.String, "gender": pl.String},
    )
    log.info(
        "classifier: accuracy %.3f, worst group %s, DP difference %s, EO difference %s",
        metrics["accuracy"],
        metrics.get("worst_group_accuracy"),
        metrics.get("demographic_parity_difference_mean"),
        metrics.get("equalized_odds_difference_mean"),
    )
    return metrics, predictions
