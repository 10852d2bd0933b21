"""Scoring the classification task of a generation (Zhang et al. 2024): an occupation classifier's accuracy
overall and per perceived gender, worst-group accuracy, Fairlearn demographic parity and equalized odds
differences (:func:`biasloop.metrics.downstream.classifier_fairness`).

``classifier@N`` trains the classifier (:func:`biasloop.models.classifier.train_classifier`) on the rows
:func:`labelled_split` keeps and scores it with :func:`classifier_scores`. Data helpers:
:mod:`biasloop.metrics.evaluation`.
"""

from __future__ import annotations

import logging
from typing import Any

import polars as pl

from biasloop.core.io import load_images
from biasloop.core.seeds import stream_seed

log = logging.getLogger(__name__)


def labelled_split(
    dataset: pl.DataFrame, test: pl.DataFrame, groups: list[str | None], column: str
) -> tuple[pl.DataFrame, pl.DataFrame, list[str | None]]:
    """The training and held-out rows with a label in ``column`` (``classifier.label_column``), and the
    held-out rows' genders (``female`` / ``male`` / None, aligned with ``test``).

    Raises:
        ValueError: a frame without ``column``, or no labelled row on a side.
    """
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
    return train_rows, test_rows, test_groups


def classifier_scores(
    classifier: Any, test_rows: pl.DataFrame, test_groups: list[str | None], config: Any, seed: int
) -> tuple[dict[str, Any], pl.DataFrame]:
    """Score a trained occupation classifier on the labelled held-out rows.

    Args:
        classifier: anything with ``predict(images)`` (:class:`biasloop.models.classifier.OccupationClassifier`).
        test_rows: held-out rows with ``id``, ``image_ref`` and ``config.label_column``.
        test_groups: their genders.
        config: the ``classifier`` params (``label_column``, ``min_group_size``, ``n_boot``).
        seed: the training seed; the intervals draw from its stream ``classifier-bootstrap``.

    Returns:
        ``(metrics, predictions)``: :func:`biasloop.metrics.downstream.classifier_fairness`'s dict, and a
        frame ``id, occupation, predicted, gender``.
    """
    from biasloop.metrics.downstream import classifier_fairness

    column = config.label_column
    predicted = classifier.predict(load_images(test_rows["image_ref"].to_list()))
    metrics = classifier_fairness(
        test_rows[column].to_list(),
        predicted,
        test_groups,
        config.min_group_size,
        n_boot=config.n_boot,
        seed=stream_seed(seed, "classifier-bootstrap"),
    )
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
