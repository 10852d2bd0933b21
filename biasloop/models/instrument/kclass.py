"""The K-class instrument: zero-shot probabilities over an attribute's classes, and its abstain rule.

An attribute (:class:`biasloop.core.attributes.AttributeSpec`, ``params.yaml``'s ``attributes:``) gives
K classes and their prompts. Either backend of :class:`~biasloop.models.instrument.zero_shot.Instrument`
scores them as it scores perceived gender today: a softmax over the class embeddings, each the
normalised mean of its prompts' embeddings (:meth:`Instrument.class_probabilities`); the cross-fitted
instrument picks, per image, the fold model that never trained on it, as for ``p_female``.

The rule (:func:`label_from_probabilities`): the most probable class when its probability exceeds
``min_top_probability``, else ``abstain``. With two classes and ``min_top_probability = 1 - t`` it is
:func:`biasloop.models.instrument.rule.label_from_p` with threshold t (``p_female > 1 - t``: female;
``p_male > 1 - t``, i.e. ``p_female < t``: male), so the default gender attribute labels as today.

In the pipeline, gender keeps the binary path; every attribute of ``attributes:``
(:func:`biasloop.core.attributes.load_attributes`) is scored from the embeddings gender's labels come from
(``image_vectors``,
:func:`~biasloop.models.instrument.labelling.encode_cross_fitted`), so each image passes the tower once:
the labelling stages' ``<name>_label`` / ``<name>_p_<class>`` columns (:func:`attribute_columns`) and the
instrument stage's held-out measurement (:func:`held_out_attribute_labels`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np

from biasloop.core.attributes import ABSTAIN, AttributeSpec
from biasloop.core.io import load_images
from biasloop.models.instrument.cross_fitting import CrossFittedInstrument
from biasloop.models.instrument.labelling import encode_cross_fitted, label_images
from biasloop.models.instrument.training import corpus_split
from biasloop.models.instrument.zero_shot import Instrument

if TYPE_CHECKING:
    import polars as pl


def attribute_probabilities(
    instrument: Instrument,
    spec: AttributeSpec,
    images: np.ndarray | None,
    batch_size: int = 512,
    image_vectors: np.ndarray | None = None,
) -> np.ndarray:
    """``(n, K)`` zero-shot probabilities over ``spec.classes`` (columns in class order) from one model.

    For the gender attribute (prompts = ``instrument.gender_templates`` filled with woman / man) column 0
    equals :meth:`Instrument.p_female` exactly: the same class embeddings and the same softmax.
    """
    return instrument.class_probabilities(
        spec.prompts_per_class(), images, batch_size=batch_size, image_vectors=image_vectors
    )


def cross_fitted_probabilities(
    instrument: CrossFittedInstrument,
    spec: AttributeSpec,
    images: np.ndarray | None,
    image_refs: Sequence[str],
    batch_size: int = 512,
    image_vectors: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """``(probabilities (n, K), fold (n,))``: each image scored by the fold model
    :meth:`CrossFittedInstrument.fold_for` picks (one that never trained on it).

    Args:
        images: ``uint8`` images, row-aligned with ``image_refs``; None when ``image_vectors`` is given.
        image_vectors: row i the embedding of image i by its fold model
            (:func:`biasloop.models.instrument.labelling.encode_cross_fitted`, the vectors gender's labels
            came from), so the image tower does not run again.
    """
    given = images if image_vectors is None else image_vectors
    if given is None or len(given) != len(image_refs):
        raise ValueError(f"{0 if given is None else len(given)} images but {len(image_refs)} image refs")
    fold = instrument.fold_for(list(image_refs))
    probs = np.zeros((len(fold), spec.k), dtype=np.float64)
    for k in np.unique(fold).tolist():
        rows = np.flatnonzero(fold == k)
        if image_vectors is None:
            probs[rows] = attribute_probabilities(instrument.models[k], spec, images[rows], batch_size)
        else:
            probs[rows] = attribute_probabilities(instrument.models[k], spec, None, image_vectors=image_vectors[rows])
    return probs, fold


def label_from_probabilities(
    probabilities: np.ndarray, classes: Sequence[str], min_top_probability: float
) -> np.ndarray:
    """Labels from ``(n, K)`` class probabilities: the top class if its probability exceeds the threshold.

    Args:
        probabilities: per image, the probability of each class (rows sum to 1); a row with nan abstains.
        classes: the K class names, in column order.
        min_top_probability: m in (1/K, 1); the top class is kept when ``p > m`` (strictly, as
            :func:`~biasloop.models.instrument.rule.label_from_p`), else the image abstains.

    Returns:
        An object array of class names and ``abstain``, one per image.
    """
    probs = np.asarray(probabilities, dtype=float)
    if probs.ndim != 2 or probs.shape[1] != len(classes):
        raise ValueError(f"expected probabilities of shape (n, {len(classes)}), found {probs.shape}")
    if not 1.0 / len(classes) < min_top_probability < 1.0:
        raise ValueError(f"min_top_probability must be in (1/{len(classes)}, 1), got {min_top_probability}")
    names = np.asarray(list(classes) + [ABSTAIN], dtype=object)
    if len(probs) == 0:
        return names[:0]
    top = np.argmax(np.nan_to_num(probs, nan=-1.0), axis=1)
    top_p = probs[np.arange(len(probs)), top]
    confident = (top_p > min_top_probability) & ~np.isnan(probs).any(axis=1)
    return names[np.where(confident, top, len(classes))]


def label_attribute(
    instrument: CrossFittedInstrument,
    spec: AttributeSpec,
    image_refs: Sequence[str],
    batch_size: int = 512,
    image_vectors: np.ndarray | None = None,
) -> pl.DataFrame:
    """An attribute's labels of the images behind ``image_refs``, out of sample (the K-class twin of
    :func:`~biasloop.models.instrument.labelling.label_images`).

    Args:
        image_vectors: the images' embeddings by their fold models, row-aligned with ``image_refs``
            (:func:`~biasloop.models.instrument.labelling.encode_cross_fitted`); None loads and encodes them.

    Returns:
        One row per image, in order: ``p_<class>`` (Float64) per class, ``label`` (a class or ``abstain``,
        :func:`label_from_probabilities` with ``spec.abstain.min_top_probability``) and ``instrument_fold``.
    """
    import polars as pl  # here, not at import: the GPU benchmark imports this package without polars

    refs = list(image_refs)
    if not refs:
        probs, fold = np.zeros((0, spec.k)), np.zeros(0, np.int64)
    elif image_vectors is not None:
        probs, fold = cross_fitted_probabilities(instrument, spec, None, refs, batch_size, image_vectors=image_vectors)
    else:
        probs, fold = cross_fitted_probabilities(instrument, spec, load_images(refs), refs, batch_size)
    labels = label_from_probabilities(probs, spec.classes, spec.abstain.min_top_probability)
    columns = [pl.Series(f"p_{name}", probs[:, i], dtype=pl.Float64) for i, name in enumerate(spec.classes)]
    columns += [
        pl.Series("label", labels.tolist(), dtype=pl.String),
        pl.Series("instrument_fold", fold, dtype=pl.Int64),
    ]
    return pl.DataFrame(columns)


def attribute_columns(
    instrument: CrossFittedInstrument,
    attributes: Mapping[str, AttributeSpec],
    image_refs: Sequence[str],
    image_vectors: np.ndarray | None,
    batch_size: int = 512,
) -> pl.DataFrame:
    """The labelling stages' columns of every K-class attribute, one row per image in order: per attribute
    ``<name>_label`` (a class or ``abstain``) and ``<name>_p_<class>`` per class (:func:`label_attribute`,
    from ``image_vectors``, the embeddings gender's labels came from). No attribute: a frame of no columns."""
    import polars as pl

    frames = []
    for name, spec in attributes.items():
        table = label_attribute(instrument, spec, image_refs, batch_size, image_vectors=image_vectors)
        frames.append(
            table.select(
                pl.col("label").alias(f"{name}_label"),
                *(pl.col(f"p_{c}").alias(f"{name}_p_{c}") for c in spec.classes),
            )
        )
    return pl.concat(frames, how="horizontal") if frames else pl.DataFrame()


def label_every_attribute(
    instrument: CrossFittedInstrument,
    attributes: Mapping[str, AttributeSpec],
    image_refs: Sequence[str],
    threshold: float,
    batch_size: int = 512,
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Gender's labels (:func:`~biasloop.models.instrument.labelling.label_images`, abstain threshold
    ``threshold``) and every K-class attribute's columns (:func:`attribute_columns`), from one pass of
    the image tower over ``image_refs``."""
    vectors = encode_cross_fitted(instrument, image_refs, batch_size)
    labels = label_images(instrument, image_refs, threshold, batch_size=batch_size, image_vectors=vectors)
    return labels, attribute_columns(instrument, attributes, image_refs, vectors, batch_size)


def held_out_attribute_labels(
    instrument: CrossFittedInstrument,
    corpus: pl.DataFrame,
    name: str,
    spec: AttributeSpec,
    batch_size: int = 512,
    known: tuple[Sequence[str], np.ndarray] | None = None,
) -> tuple[list[str] | None, list[str]]:
    """An attribute's labels of the held-out split, and their ground truth: what its confusion comes from.

    The images are the held-out split's rows with a ``true_<name>`` when the corpus has that ground truth
    (the glyph world's ``true_tone``), else every held-out row; as for gender's measurement
    (:func:`~biasloop.models.instrument.labelling.measure_cross_fitted`), each is labelled by a fold model
    that never trained on it (no model trained on the held-out split).

    Args:
        known: ``(refs, vectors)`` of images encoded already (gender's labelled set): not encoded again.

    Returns:
        ``(truth, labels)``: the true classes (None without ground truth) and the labels (a class or
        ``abstain``), one per held-out image.
    """
    import polars as pl

    test = corpus_split(corpus, "test")
    column = f"true_{name}"
    has_truth = column in test.columns and test[column].is_not_null().any()
    if has_truth:
        test = test.filter(pl.col(column).is_not_null())
    refs = test["image_ref"].to_list()
    vectors = encode_cross_fitted(instrument, refs, batch_size, known=known)
    labels = label_attribute(instrument, spec, refs, batch_size, image_vectors=vectors)["label"].to_list()
    return (test[column].to_list() if has_truth else None), labels
