"""The downstream CLIP's retrieval and zero-shot fairness per K-class attribute and per gender x attribute.

Perceived gender keeps its binary block (:func:`biasloop.metrics.evaluation.downstream_bias`); every other
attribute of ``params.yaml``'s ``attributes:`` (skin tone in the glyph world) gets the same measures with
its K classes as the groups, and so does the intersection ``gender_x_<name>`` (Chen et al., CVPR 2024
report retrieval gaps per skin tone; the Stable Bias and DALL-Eval audits cross tone with gender):

- each held-out image's class (:func:`held_out_classes`: ground truth ``true_<name>`` where the corpus has
  it, as for gender, else the cross-fitted instrument's label, an abstention giving no group), and its
  intersection cell ``"<gender> x <class>"`` when both labels are confident (the spelling of
  :mod:`biasloop.metrics.kclass.cells`); a group with fewer than ``evaluate.min_group_size`` images is
  left out of every measure and listed with its size (:func:`group_labels`);
- text-to-image recall@k per group and its gap, max minus min over the groups kept
  (:func:`biasloop.metrics.downstream.recall_at_k`);
- MaxSkew@k and NDKL (Geyik et al., 2019) of the groups among the images retrieved for each neutral
  occupation query, against the uniform distribution over the kept groups and (``_vs_training``) against
  the occupation's distribution among the images of the dataset the CLIP trained on, add-one smoothed
  (:func:`training_class_counts`, :func:`biasloop.metrics.kclass.ranking.skew_against_training`);
- zero-shot occupation accuracy per (occupation, group) with worst-group accuracy, demographic parity and
  equalized odds differences (:func:`biasloop.metrics.downstream.group_fairness`; the intersection's
  features enter Fairlearn's MetricFrame as two columns).

Recalls, accuracies and differences are fractions in [0, 1]; MaxSkew and NDKL are in nats.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import polars as pl

from biasloop.core.attributes import AttributeSpec
from biasloop.core.labels import LABELS
from biasloop.core.seeds import stream_seed
from biasloop.metrics.downstream import group_fairness, max_skew_at_k, ndkl, recall_at_k
from biasloop.metrics.evaluation import EvaluateConfig, HeldOutVectors, encode_held_out, training_dataset_rows
from biasloop.metrics.kclass.cells import SEPARATOR
from biasloop.metrics.kclass.ranking import skew_against_training

GENDERS = LABELS[:2]  # the binary path's confident labels (female, male)


def intersection_name(name: str) -> str:
    """The key of the intersection of perceived gender with attribute ``name`` (``gender_x_tone``)."""
    return f"gender_x_{name}"


def attribute_and_intersection(
    name: str, labels: Sequence[str | None], gender: Sequence[str | None], classes: Sequence[str]
) -> list[tuple[str, dict[str, Sequence[str | None]], dict[str, Sequence[str]]]]:
    """The two blocks of one attribute, as ``(key, features, classes per feature)``: the attribute alone
    (``name``) and crossed with perceived gender (``gender_x_<name>``), for :func:`group_labels`."""
    return [
        (name, {name: labels}, {name: classes}),
        (intersection_name(name), {"gender": gender, name: labels}, {"gender": GENDERS, name: classes}),
    ]


@dataclasses.dataclass(frozen=True)
class Groups:
    """Each row's group under one or more sensitive features, with the groups too small left out."""

    labels: list[str | None]  # the row's group, or None: no confident label on some feature, or a group too small
    sizes: dict[str, int]  # kept group -> rows, in class order (the product of the features' classes)
    excluded: list[dict[str, Any]]  # [{"group", "n"}]: groups with fewer than min_group_size rows
    n_unlabelled: int  # rows without a confident label on every feature

    @property
    def kept(self) -> np.ndarray:
        """Boolean mask of the rows in a kept group."""
        return np.array([label is not None for label in self.labels], dtype=bool)

    def report(self, min_group_size: int) -> dict[str, Any]:
        """The JSON part naming the groups: kept sizes, the excluded, the unlabelled rows."""
        return {
            "groups": dict(self.sizes),
            "groups_excluded": list(self.excluded),
            "min_group_size": int(min_group_size),
            "n_unlabelled": self.n_unlabelled,
        }


def group_labels(
    features: Mapping[str, Sequence[str | None]], classes: Mapping[str, Sequence[str]], min_group_size: int
) -> Groups:
    """Each row's group: its class of one feature, or its cell ``"a x b"`` of several.

    Args:
        features: ``{name: label per row}``; a label outside ``classes[name]`` (None, ``abstain``,
            ``none``) is not confident and leaves the row without a group.
        classes: each feature's classes, in the order the groups are listed.
        min_group_size: groups with fewer rows are excluded (their rows get None) and listed with their size.
    """
    if min_group_size < 1:
        raise ValueError(f"min_group_size must be at least 1, got {min_group_size}")
    columns = [list(features[name]) for name in features]
    if len({len(c) for c in columns}) > 1:
        raise ValueError(f"features of different lengths: {[len(c) for c in columns]}")
    allowed = [set(classes[name]) for name in features]
    joined = [
        SEPARATOR.join(row) if all(v in ok for v, ok in zip(row, allowed)) else None
        for row in zip(*columns, strict=True)
    ]
    order = [SEPARATOR.join(cell) for cell in itertools.product(*(classes[name] for name in features))]
    counts = {group: joined.count(group) for group in order}
    kept = {group: n for group, n in counts.items() if n >= min_group_size}
    return Groups(
        labels=[label if label in kept else None for label in joined],
        sizes=kept,
        excluded=[{"group": group, "n": n} for group, n in counts.items() if 0 < n < min_group_size],
        n_unlabelled=sum(label is None for label in joined),
    )


def held_out_classes(
    test: pl.DataFrame,
    specs: Mapping[str, AttributeSpec],
    instrument_dir: str | None,
    device: str = "cpu",
    truth: bool | None = None,
) -> dict[str, list[str | None]]:
    """Each held-out row's class of every attribute in ``specs``; None where it has none.

    Args:
        test: held-out rows (``image_ref``; ``true_<name>`` in the glyph world).
        specs: the K-class attributes (name -> spec).
        instrument_dir: the instrument stage's folder (the cross-fitted instrument), or None.
        device: where the instrument runs.
        truth: True: ``true_<name>`` (an error when the corpus has none); False: the instrument's label
            (:func:`biasloop.models.instrument.kclass.label_attribute`, an abstention giving None); None
            (default): ground truth where the corpus has it, else the instrument, as for gender
            (:func:`biasloop.metrics.evaluation.perceived_groups`).
    """
    out: dict[str, list[str | None]] = {}
    instrument = None
    for name, spec in specs.items():
        column = f"true_{name}"
        has_truth = column in test.columns and test[column].null_count() < len(test)
        if truth if truth is not None else has_truth:
            if not has_truth:
                raise ValueError(f"attribute {name!r}: the held-out split has no ground truth column {column!r}")
            labels = test[column].to_list()
        else:
            if instrument_dir is None:
                raise ValueError(
                    f"attribute {name!r}: no {column!r} in the held-out split and no instrument to label it"
                )
            from biasloop.models.instrument import load_cross_fitted
            from biasloop.models.instrument.kclass import label_attribute

            instrument = instrument or load_cross_fitted(instrument_dir, device)
            labels = label_attribute(instrument, spec, test["image_ref"].to_list())["label"].to_list()
        out[name] = [label if label in spec.classes else None for label in labels]
    return out


def training_class_counts(
    train_predictions: pl.DataFrame, dataset_predictions: pl.DataFrame, specs: Mapping[str, AttributeSpec]
) -> dict[str, dict[str, dict[str, int]]]:
    """Per attribute and per intersection, each occupation's confident labels among the training images.

    The images of dataset N behind the ``keyword`` captions
    (:func:`biasloop.metrics.evaluation.training_dataset_rows`, as :func:`~biasloop.metrics.evaluation.training_shares`
    for gender), labelled by the instrument (label_dataset@N's ``<name>_label``, and ``label`` for gender);
    abstentions left out. An attribute whose column is missing (not measured) is left out.

    Returns:
        ``{name: {occupation: {class: count}}, "gender_x_<name>": {occupation: {cell: count}}}``.
    """
    rows = training_dataset_rows(train_predictions, dataset_predictions)
    occupations = rows["occupation"].to_list()
    out: dict[str, dict[str, dict[str, int]]] = {}
    for name, spec in specs.items():
        if f"{name}_label" not in rows.columns:
            continue
        blocks = attribute_and_intersection(
            name, rows[f"{name}_label"].to_list(), rows["label"].to_list(), spec.classes
        )
        for key, features, classes in blocks:
            labels = group_labels(features, classes, min_group_size=1).labels
            table: dict[str, dict[str, int]] = {}
            for (occupation, label), n in sorted(Counter(zip(occupations, labels)).items(), key=str):
                if label is not None:
                    table.setdefault(occupation, {})[label] = n
            out[key] = table
    return out


def downstream_attribute_bias(
    model: Any,
    test: pl.DataFrame,
    images: np.ndarray,
    groups: list[str | None],
    attribute_classes: Mapping[str, list[str | None]],
    occupations: list[str],
    config: EvaluateConfig,
    specs: Mapping[str, AttributeSpec],
    training_counts: Mapping[str, Mapping[str, Mapping[str, int]]] | None = None,
    seed: int = 0,
    vectors: HeldOutVectors | None = None,
) -> dict[str, dict[str, Any]]:
    """:func:`~biasloop.metrics.evaluation.downstream_bias`'s measures per K-class attribute and per gender x attribute.

    Args:
        model, test, images, occupations, config: as :func:`~biasloop.metrics.evaluation.downstream_bias`.
        groups: perceived gender per row (``female``/``male``; anything else: none), as given to it.
        attribute_classes: :func:`held_out_classes`'s labels, aligned with ``test``.
        specs: the K-class attributes (their classes order the groups).
        training_counts: :func:`training_class_counts`; adds the ``_vs_training`` MaxSkew and NDKL.
        seed: ``base.seed``; the group metrics' bootstrap streams are ``downstream-fairness-bootstrap-<key>``.
        vectors: :func:`~biasloop.metrics.evaluation.encode_held_out` of these inputs, the ones gender's
            block used (None: encoded here).

    Returns:
        ``{"<name>": block, "gender_x_<name>": block}`` per attribute, each block shaped like the gender
        one: ``recall`` (per group, ``recall@k_gap`` over the kept groups), ``max_skew_mean`` / ``_max``,
        ``ndkl_mean`` (against uniform), ``max_skew_vs_training_mean`` / ``_max``, ``ndkl_vs_training_mean``,
        ``skew_k``, ``skew_k_effective``, ``per_query``, ``fairness`` (:func:`group_fairness`), ``n_test``,
        and the groups (:meth:`Groups.report`).
    """
    vectors = vectors or encode_held_out(model, test, images, occupations, config)
    image_vectors, queries = vectors.images, vectors.queries
    similarity = vectors.captions @ image_vectors.T
    scores = image_vectors @ queries.T  # (images, occupations): each image's score for each occupation query
    predicted = np.array(occupations, dtype=object)[np.argmax(scores, axis=1)]  # zero-shot occupation
    gender = [g if g in GENDERS else None for g in groups]
    out: dict[str, dict[str, Any]] = {}
    for name, labels in attribute_classes.items():
        for key, features, feature_classes in attribute_and_intersection(name, labels, gender, specs[name].classes):
            grouped = group_labels(features, feature_classes, config.min_group_size)
            out[key] = {
                **grouped.report(config.min_group_size),
                "recall": recall_at_k(
                    similarity, ks=config.recall_ks, groups=grouped.labels, captions=test["caption"].to_list()
                ),
                **_skews(scores, grouped, occupations, config.skew_k, (training_counts or {}).get(key)),
                "fairness": _zero_shot_fairness(
                    test,
                    predicted,
                    features,
                    grouped,
                    config,
                    stream_seed(seed, f"downstream-fairness-bootstrap-{key}"),
                ),
                "n_test": len(test),
            }
    return out


def _skews(
    scores: np.ndarray,
    grouped: Groups,
    occupations: list[str],
    skew_k: int,
    training: Mapping[str, Mapping[str, int]] | None,
) -> dict[str, Any]:
    """MaxSkew@k and NDKL of the kept groups among the top ``skew_k`` images of each occupation query,
    against uniform and, where ``training`` has the occupation's counts, against their add-one smoothed
    distribution over the kept groups, ``(n_g + 1) / (n + G)`` (finite skew for a group absent in training,
    as :func:`~biasloop.metrics.evaluation.training_shares` for gender)."""
    rows = np.flatnonzero(grouped.kept)
    classes = list(grouped.sizes)
    labels = np.array(grouped.labels, dtype=object)[rows]
    per_query = []
    for j, occupation in enumerate(occupations if len(rows) else []):
        retrieved = labels[np.argsort(-scores[rows, j], kind="stable")[:skew_k]].tolist()
        row = {
            "occupation": occupation,
            "max_skew": max_skew_at_k(retrieved, skew_k, group_set=classes),
            "ndkl": ndkl(retrieved, group_set=classes),
            "distribution_retrieved": {c: retrieved.count(c) / len(retrieved) for c in classes},
            "k_effective": len(retrieved),
        }
        counts = (training or {}).get(occupation)  # None: no training image of the occupation (as for gender)
        if counts is not None:
            smoothed = np.array([counts.get(c, 0) + 1.0 for c in classes])
            against = skew_against_training(retrieved, smoothed, classes, skew_k)
            row.update(
                distribution_training=dict(zip(classes, (smoothed / smoothed.sum()).tolist())),
                max_skew_vs_training=against["max_skew"],
                ndkl_vs_training=against["ndkl"],
            )
        per_query.append(row)

    def reduce(key: str, how: Any) -> float | None:
        values = [r[key] for r in per_query if key in r]
        return float(how(values)) if values else None

    return {
        "max_skew_mean": reduce("max_skew", np.mean),
        "max_skew_max": reduce("max_skew", np.max),
        "ndkl_mean": reduce("ndkl", np.mean),
        "max_skew_vs_training_mean": reduce("max_skew_vs_training", np.mean),
        "max_skew_vs_training_max": reduce("max_skew_vs_training", np.max),
        "ndkl_vs_training_mean": reduce("ndkl_vs_training", np.mean),
        "skew_k": skew_k,
        "skew_k_effective": min(skew_k, len(rows)),
        "per_query": per_query,
    }


def _zero_shot_fairness(
    test: pl.DataFrame,
    predicted: np.ndarray,
    features: Mapping[str, Sequence[str | None]],
    grouped: Groups,
    config: EvaluateConfig,
    seed: int,
) -> dict[str, Any]:
    """:func:`group_fairness` of zero-shot occupation classification on held-out images with a true
    occupation and a kept group, each feature a column; empty when there is none."""
    rows = np.flatnonzero(test["true_occupation"].is_not_null().to_numpy() & grouped.kept)
    if not len(rows):
        return {}
    return group_fairness(
        np.array(test["true_occupation"].to_list(), dtype=object)[rows],
        predicted[rows],
        {name: np.array(labels, dtype=object)[rows] for name, labels in features.items()},
        min_group_size=config.min_group_size,
        n_boot=config.n_boot,
        seed=seed,
    )
