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
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from biasloop.core.attributes import ABSTAIN, AttributeSpec
from biasloop.core.io import load_images
from biasloop.models.instrument.cross_fitting import CrossFittedInstrument
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
    images: np.ndarray,
    image_refs: Sequence[str],
    batch_size: int = 512,
) -> tuple[np.ndarray, np.ndarray]:
    """``(probabilities (n, K), fold (n,))``: each image scored by the fold model
    :meth:`CrossFittedInstrument.fold_for` picks (one that never trained on it)."""
    if len(images) != len(image_refs):
        raise ValueError(f"{len(images)} images but {len(image_refs)} image refs")
    fold = instrument.fold_for(list(image_refs))
    probs = np.zeros((len(fold), spec.k), dtype=np.float64)
    for k in np.unique(fold).tolist():
        rows = np.flatnonzero(fold == k)
        probs[rows] = attribute_probabilities(instrument.models[k], spec, images[rows], batch_size)
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
) -> pl.DataFrame:
    """An attribute's labels of the images behind ``image_refs``, out of sample (the K-class twin of
    :func:`~biasloop.models.instrument.labelling.label_images`).

    Returns:
        One row per image, in order: ``p_<class>`` (Float64) per class, ``label`` (a class or ``abstain``,
        :func:`label_from_probabilities` with ``spec.abstain.min_top_probability``) and ``instrument_fold``.
    """
    import polars as pl  # here, not at import: the GPU benchmark imports this package without polars

    refs = list(image_refs)
    if refs:
        probs, fold = cross_fitted_probabilities(instrument, spec, load_images(refs), refs, batch_size)
    else:
        probs, fold = np.zeros((0, spec.k)), np.zeros(0, np.int64)
    labels = label_from_probabilities(probs, spec.classes, spec.abstain.min_top_probability)
    columns = [pl.Series(f"p_{name}", probs[:, i], dtype=pl.Float64) for i, name in enumerate(spec.classes)]
    columns += [
        pl.Series("label", labels.tolist(), dtype=pl.String),
        pl.Series("instrument_fold", fold, dtype=pl.Int64),
    ]
    return pl.DataFrame(columns)
