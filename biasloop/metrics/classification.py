"""Scoring the classification task of a generation (Zhang et al. 2024): an occupation classifier's accuracy
overall and per perceived gender, worst-group accuracy, Fairlearn demographic parity and equalized odds
differences (:func:`classifier_fairness`), and the same per K-class attribute and per gender x attribute
(:func:`attribute_fairness`).

``classifier@N`` trains the classifier (:func:`biasloop.models.classifier.train_classifier`) on the rows
:func:`labelled_split` keeps and scores it with :func:`classifier_scores`. Data helpers:
:mod:`biasloop.metrics.evaluation`; the held-out images' attribute classes:
:func:`biasloop.metrics.downstream_attributes.held_out_classes`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import polars as pl

from biasloop.core.attributes import AttributeSpec
from biasloop.core.io import load_images
from biasloop.core.seeds import stream_seed
from biasloop.metrics.downstream import accuracy_groups, group_fairness
from biasloop.metrics.downstream_attributes import GENDERS, Groups, attribute_and_intersection, group_labels
from biasloop.metrics.intervals import bootstrap_interval, wilson_interval
from biasloop.metrics.kclass.cells import SEPARATOR

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
    classifier: Any,
    test_rows: pl.DataFrame,
    test_groups: list[str | None],
    config: Any,
    seed: int,
    attribute_classes: Mapping[str, list[str | None]] | None = None,
    specs: Mapping[str, AttributeSpec] | None = None,
) -> tuple[dict[str, Any], pl.DataFrame]:
    """Score a trained occupation classifier on the labelled held-out rows.

    Args:
        classifier: anything with ``predict(images)`` (:class:`biasloop.models.classifier.OccupationClassifier`).
        test_rows: held-out rows with ``id``, ``image_ref`` and ``config.label_column``.
        test_groups: their genders.
        config: the ``classifier`` params (``label_column``, ``min_group_size``, ``n_boot``).
        seed: the training seed; the intervals draw from its stream ``classifier-bootstrap``.
        attribute_classes: per K-class attribute, each row's class or None
            (:func:`biasloop.metrics.downstream_attributes.held_out_classes` of ``test_rows``); None: gender only.
        specs: those attributes' specs (their classes).

    Returns:
        ``(metrics, predictions)``: :func:`classifier_fairness`'s dict (gender), with ``attributes``
        (:func:`attribute_fairness`) when ``attribute_classes`` is given, and a frame
        ``id, occupation, predicted, gender`` plus one column per attribute (its class, null for none).
    """
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
    if attribute_classes:
        metrics["attributes"] = attribute_fairness(
            test_rows[column].to_list(),
            predicted,
            test_groups,
            attribute_classes,
            specs or {},
            config.min_group_size,
            n_boot=config.n_boot,
            seed=seed,
        )
    predictions = pl.DataFrame(
        {
            "id": test_rows["id"].to_list(),
            "occupation": test_rows[column].to_list(),
            "predicted": [str(p) for p in predicted],
            "gender": test_groups,
            **dict(attribute_classes or {}),
        },
        schema={
            **{name: pl.String for name in ("id", "occupation", "predicted", "gender")},
            **{name: pl.String for name in attribute_classes or {}},
        },
    )
    log.info(
        "classifier: accuracy %.3f, worst group %s, DP difference %s, EO difference %s",
        metrics["accuracy"],
        metrics.get("worst_group_accuracy"),
        metrics.get("demographic_parity_difference_mean"),
        metrics.get("equalized_odds_difference_mean"),
    )
    return metrics, predictions


def attribute_fairness(
    true_occupation: Sequence[str],
    predicted_occupation: Sequence[str],
    gender: Sequence[str | None],
    attribute_classes: Mapping[str, Sequence[str | None]],
    specs: Mapping[str, AttributeSpec],
    min_group_size: int,
    n_boot: int = 0,
    seed: int = 0,
) -> dict[str, dict[str, Any]]:
    """The classifier's subgroup fairness per K-class attribute and per gender x attribute, with Fairlearn.

    Args:
        true_occupation, predicted_occupation: per held-out image.
        gender: perceived gender per image (``female`` / ``male``; anything else: none).
        attribute_classes: per attribute, each image's class (None: abstained or unknown).
        specs: the attributes' specs (their classes order the groups).
        min_group_size: the fewest images a group needs, both for the groups themselves (a class, a cell
            ``"<gender> x <class>"``: smaller ones are left out and listed) and for the (occupation, group)
            groups of the worst-group accuracy.
        n_boot: bootstrap resamples for the intervals (0: none).
        seed: the training seed; each block draws from stream ``classifier-bootstrap-<key>``.

    Returns:
        ``{"<name>": block, "gender_x_<name>": block}``: each block the groups
        (:meth:`~biasloop.metrics.downstream_attributes.Groups.report`), ``accuracy_by_class``
        (``[{<feature>.., accuracy, n, ci}]``: Fairlearn ``MetricFrame`` with one sensitive column per
        feature, Wilson intervals), ``accuracy_gap`` (max minus min over the kept groups) with its
        bootstrap ``accuracy_gap_ci``, and :func:`biasloop.metrics.downstream.group_fairness` over the
        images of kept groups (``accuracy_by_group`` per (occupation, features), ``worst_group_accuracy``,
        ``groups_too_small``, one-vs-rest ``demographic_parity_difference_mean`` / ``_max`` and
        ``equalized_odds_difference_mean`` / ``_max`` over the groups' intersections).
    """
    y_true = np.asarray(true_occupation, dtype=object)
    y_pred = np.asarray(predicted_occupation, dtype=object)
    genders = [g if g in GENDERS else None for g in gender]
    out: dict[str, dict[str, Any]] = {}
    for name, labels in attribute_classes.items():
        for key, features, feature_classes in attribute_and_intersection(name, labels, genders, specs[name].classes):
            grouped = group_labels(features, feature_classes, min_group_size)
            rng_seed = stream_seed(seed, f"classifier-bootstrap-{key}")
            out[key] = _subgroup_scores(y_true, y_pred, features, grouped, min_group_size, n_boot, rng_seed)
    return out


def _subgroup_scores(
    y_true: np.ndarray,
    y_pred: np.ndarray,
    features: Mapping[str, Sequence[str | None]],
    grouped: Groups,
    min_group_size: int,
    n_boot: int,
    seed: int,
) -> dict[str, Any]:
    """One block of :func:`attribute_fairness` (accuracy per group, its gap, Fairlearn's group metrics)."""
    from fairlearn.metrics import MetricFrame, count
    from sklearn.metrics import accuracy_score

    out: dict[str, Any] = {**grouped.report(min_group_size), "accuracy_by_class": [], "accuracy_gap": None}
    kept = grouped.kept
    if not kept.any():
        return {**out, "accuracy_gap_ci": None}
    columns = {name: np.asarray(labels, dtype=object)[kept] for name, labels in features.items()}
    frame = MetricFrame(
        metrics={"accuracy": accuracy_score, "n": count},
        y_true=y_true[kept].astype(str),
        y_pred=y_pred[kept].astype(str),
        sensitive_features={name: column.astype(str) for name, column in columns.items()},
    )
    names = list(grouped.sizes)  # the kept groups, in class order
    rows = accuracy_groups(frame, tuple(features))
    out["accuracy_by_class"] = sorted(rows, key=lambda r: names.index(SEPARATOR.join(r[f] for f in features)))
    correct = (y_true == y_pred)[kept]
    group = np.asarray(grouped.labels, dtype=object)[kept]

    def gap(rows: np.ndarray) -> float | None:
        present = [correct[rows][group[rows] == g] for g in names]
        if len(names) < 2 or any(len(p) == 0 for p in present):
            return None
        rates = [p.mean() for p in present]
        return float(max(rates) - min(rates))

    rng = np.random.default_rng(seed)
    out["accuracy_gap"] = gap(np.arange(len(correct)))
    out["accuracy_gap_ci"] = bootstrap_interval(gap, len(correct), n_boot, rng)
    fairness = group_fairness(
        y_true[kept], y_pred[kept], columns, min_group_size, n_boot=n_boot, seed=int(rng.integers(2**31))
    )
    return {**out, **fairness}


def classifier_fairness(
    true_occupation: Sequence[str],
    predicted_occupation: Sequence[str],
    gender: Sequence[str | None],
    min_group_size: int,
    n_boot: int = 0,
    seed: int = 0,
) -> dict[str, Any]:
    """Accuracy overall and per gender, worst-group accuracy, Fairlearn parity differences.

    Args:
        true_occupation: occupation per held-out image.
        predicted_occupation: the classifier's prediction per image.
        gender: perceived gender per image (``female`` / ``male``; others count in ``accuracy`` only).
        min_group_size: the smallest (occupation, gender) group that counts for worst-group accuracy.
        n_boot: bootstrap resamples of the images for the intervals of differences (0: none).
        seed: seed of those resamples.

    Returns:
        ``accuracy`` (all images), ``accuracy_by_gender`` ({gender: accuracy}), ``accuracy_gap``
        (max minus min over genders), ``worst_group_accuracy`` over (occupation, gender) groups with at
        least ``min_group_size`` images (None when none is that large) and ``worst_group``, plus
        :func:`biasloop.metrics.downstream.group_fairness` over the gender-labelled images
        (``demographic_parity_difference_mean`` / ``_max``, ``equalized_odds_difference_mean`` / ``_max``,
        ``accuracy_by_group``, ``per_occupation``, ``groups_too_small``). Intervals (95%): Wilson for
        ``accuracy_ci`` and ``accuracy_by_gender_ci``, bootstrap for ``accuracy_gap_ci`` and the
        differences (see :func:`group_fairness`).
    """
    y_true = np.asarray(true_occupation, dtype=object)
    y_pred = np.asarray(predicted_occupation, dtype=object)
    groups = np.asarray([g if g in ("female", "male") else "" for g in gender], dtype=object)
    if not len(y_true) == len(y_pred) == len(groups):
        raise ValueError(f"{len(y_true)} true occupations, {len(y_pred)} predictions, {len(groups)} genders")
    if not len(y_true):
        raise ValueError("no held-out images to score the classifier on")
    correct = y_true == y_pred
    by_gender = {g: float(correct[groups == g].mean()) for g in ("female", "male") if (groups == g).any()}

    def gap(rows: np.ndarray) -> float | None:
        rates = [correct[rows][groups[rows] == g].mean() for g in ("female", "male") if (groups[rows] == g).any()]
        return float(max(rates) - min(rates)) if len(rates) == 2 else None

    rng = np.random.default_rng(seed)
    out: dict[str, Any] = {
        "accuracy": float(correct.mean()),
        "accuracy_ci": wilson_interval(int(correct.sum()), len(correct)),
        "accuracy_by_gender": by_gender,
        "accuracy_by_gender_ci": {
            g: wilson_interval(int(correct[groups == g].sum()), int((groups == g).sum())) for g in by_gender
        },
        "accuracy_gap": gap(np.arange(len(correct))),
        "accuracy_gap_ci": bootstrap_interval(gap, len(correct), n_boot, rng) if len(by_gender) == 2 else None,
        "n_test": int(len(y_true)),
    }
    labelled = groups != ""
    if labelled.any():
        # one place decides which groups are too small, so groups_too_small lists exactly what was left out
        out.update(
            group_fairness(
                y_true[labelled],
                y_pred[labelled],
                groups[labelled],
                min_group_size=min_group_size,
                n_boot=n_boot,
                seed=int(rng.integers(2**31)),
            )
        )
    return out
