"""Labelling image sets with the cross-fitted instrument (:func:`label_images`, :func:`label_units` for
forward passes shared by processes), and measuring it on the labelled set (:func:`measure_cross_fitted`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from biasloop.core.io import load_images
from biasloop.models.instrument.cross_fitting import CrossFittedInstrument
from biasloop.models.instrument.rule import confusion_rates, evaluate_instrument, label_from_p
from biasloop.models.instrument.training import corpus_split, labelled_set
from biasloop.models.instrument.zero_shot import (
    InstrumentConfig,
)

if TYPE_CHECKING:
    import polars as pl


def label_units(instrument: CrossFittedInstrument, image_refs: Sequence[str], batch_size: int) -> list[np.ndarray]:
    """The forward passes :func:`label_images` makes over ``image_refs``, as row indices: for each fold model
    (ascending), the rows it labels in order, in chunks of ``batch_size``.

    Encoding each unit on its own (:func:`encode_units`) runs the image tower on exactly the batches one
    call over every image runs, so the units can be dealt to several processes
    (``label.num_processes``): unit ``u`` to process ``u mod P``, the embeddings gathered by row and
    scored in one :func:`label_images` call (``image_vectors``). Labels and probabilities are then
    bit-identical to one call over every image, whatever ``P`` is. (Scoring each unit apart would not be:
    the similarity matrix product rounds differently with fewer rows, by about 1e-8.)

    Args:
        instrument: the cross-fitted instrument (its :meth:`CrossFittedInstrument.fold_for` rule).
        image_refs: the images to label (``"<shard>#<row>"``).
        batch_size: images per forward pass (``label.batch_size``).

    Returns:
        ``int64`` row-index arrays, each of at most ``batch_size`` rows of one fold model, covering every
        row once.
    """
    if batch_size < 1:
        raise ValueError(f"label.batch_size must be at least 1, got {batch_size}")
    fold = instrument.fold_for(list(image_refs))
    units = []
    for k in np.unique(fold).tolist():
        rows = np.flatnonzero(fold == k)
        units.extend(rows[start : start + batch_size] for start in range(0, len(rows), batch_size))
    return units


def encode_units(
    instrument: CrossFittedInstrument, image_refs: Sequence[str], units: Sequence[np.ndarray], batch_size: int
) -> np.ndarray:
    """Image embeddings of the rows of ``units`` (from :func:`label_units`), each unit one forward pass of
    its fold's model: ``(sum of unit sizes, dim)`` float32, rows in the order of the units."""
    refs = list(image_refs)
    vectors = []
    for rows in units:
        unit_refs = [refs[i] for i in rows]
        folds = np.unique(instrument.fold_for(unit_refs))
        if len(folds) != 1:
            raise ValueError(f"a label unit spans fold models {folds.tolist()}; units come from label_units")
        vectors.append(instrument.models[int(folds[0])].encode_images(load_images(unit_refs), batch_size))
    return np.concatenate(vectors) if vectors else np.zeros((0, 0), dtype=np.float32)


def encode_cross_fitted(
    instrument: CrossFittedInstrument,
    image_refs: Sequence[str],
    batch_size: int,
    known: tuple[Sequence[str], np.ndarray] | None = None,
) -> np.ndarray:
    """Each image's embedding by its fold model, row-aligned with ``image_refs``: ``(n, dim)`` float32.

    The forward passes are :func:`label_units`' (per fold model, its rows in order, ``batch_size`` at a
    time), those :func:`label_images` runs without ``image_vectors``, so the labels scored from these
    vectors are bit-identical to that call's. Perceived gender and every K-class attribute
    (:func:`biasloop.models.instrument.kclass.attribute_columns`) are scored from the same vectors: the
    image tower runs once per image.

    Args:
        known: ``(refs, vectors)`` encoded already (gender's held-out pass): those images are taken from
            there, only the others are encoded.
    """
    refs = list(image_refs)
    if known is not None:
        index = {ref: i for i, ref in enumerate(known[0])}
        missing = list(dict.fromkeys(ref for ref in refs if ref not in index))
        pool = known[1]
        if missing:
            extra = encode_cross_fitted(instrument, missing, batch_size)
            pool = np.concatenate([pool, extra]) if len(known[0]) else extra
            index.update({ref: len(known[0]) + i for i, ref in enumerate(missing)})
        return pool[np.array([index[ref] for ref in refs], dtype=np.int64)]
    units = label_units(instrument, refs, batch_size)
    vectors = encode_units(instrument, refs, units, batch_size)
    if not units:
        return vectors
    by_row = np.empty_like(vectors)
    by_row[np.concatenate(units)] = vectors
    return by_row


def label_images(
    instrument: CrossFittedInstrument,
    image_refs: Sequence[str],
    threshold: float,
    batch_size: int = 512,
    occupations: list[str] | None = None,
    asked: Sequence[str] | None = None,
    image_vectors: np.ndarray | None = None,
) -> pl.DataFrame:
    """Perceived gender (and optionally occupation) of the images behind ``image_refs``, out of sample.

    Args:
        instrument: the cross-fitted instrument.
        image_refs: the images (``"<shard>#<row>"``).
        threshold: the abstain threshold (``label.abstain_threshold``; rule in
            :func:`label_from_p`).
        batch_size: images per forward pass.
        occupations: zero-shot occupation classes; None skips occupation.
        asked: with ``occupations``, the occupation each image was meant to show (for ``p_occupation``).
        image_vectors: the images' embeddings by their fold models (row-aligned with ``image_refs``;
            :func:`encode_cross_fitted`, or :func:`encode_units` from several processes) instead of loading
            and encoding the images here. The numbers are the same either way.

    Returns:
        One row per image, in order: ``p_female`` (Float64), ``label`` (female/male/abstain),
        ``instrument_fold`` (the model that labelled it), and with ``occupations``
        ``predicted_occupation`` (argmax) and, with ``asked``, ``p_occupation`` (probability of the asked one).
    """
    import polars as pl  # here, not at import: the GPU benchmark imports this package without polars

    refs = list(image_refs)
    images = None
    if image_vectors is None:
        images = load_images(refs) if refs else np.zeros((0, 1, 1, 3), dtype=np.uint8)
    probs = np.zeros((0, len(occupations or [])))
    if not refs:
        p_female, fold = np.zeros(0), np.zeros(0, np.int64)
    elif occupations:  # each image through the image tower once, for both questions
        p_female, probs, fold = instrument.p_female_and_occupation(
            images, refs, occupations, batch_size, image_vectors=image_vectors
        )
    else:
        p_female, fold = instrument.p_female(images, refs, batch_size, image_vectors=image_vectors)
    columns = [
        pl.Series("p_female", p_female, dtype=pl.Float64),
        pl.Series("label", label_from_p(p_female, threshold).tolist(), dtype=pl.String),
        pl.Series("instrument_fold", fold, dtype=pl.Int64),
    ]
    if occupations:
        if asked is not None:
            unknown = sorted(set(asked) - set(occupations))
            if unknown:
                raise ValueError(f"asked occupations {unknown} are not among the zero-shot classes {occupations}")
            column = np.array([occupations.index(o) for o in asked], dtype=np.int64)
            columns.append(pl.Series("p_occupation", probs[np.arange(len(refs)), column], dtype=pl.Float64))
        columns.append(
            pl.Series("predicted_occupation", [occupations[i] for i in probs.argmax(axis=1)], dtype=pl.String)
        )
    return pl.DataFrame(columns)


def measure_cross_fitted(
    instrument: CrossFittedInstrument,
    corpus: pl.DataFrame,
    config: InstrumentConfig,
    occupations: list[str],
    threshold: float,
    batch_size: int = 512,
    image_vectors: np.ndarray | None = None,
) -> dict[str, Any]:
    """Accuracy and confusion rates of the instrument, on images no labelling model trained on.

    The headline rates (``accuracy``, ``abstain_rate``, ``tpr``, ``fpr``, ``confusion``, ``n``) are those
    of the labelling rule itself on the labelled set (:func:`biasloop.models.instrument.labelled_set`:
    the held-out split's ground truth, else ``instrument.labelled_csv``); they correct the shares.
    Also: ``per_fold`` (each model on the whole labelled set), ``out_of_fold`` (the training images,
    each labelled by its own fold's model, where ground truth exists: the labels ``label_train``
    gives), ``occupation_accuracy`` on the held-out split, ``n_labelled_in_training`` (labelled images
    that some model trained on; they were labelled by a model that did not).

    Args:
        image_vectors: the labelled set's embeddings (:func:`encode_cross_fitted` of
            :func:`~biasloop.models.instrument.labelled_set`'s refs, reused by the K-class attributes'
            measurement); None encodes them here. The numbers are the same either way.

    Returns:
        The metrics; rates are None and ``status`` is ``unknown`` without labelled images.
    """
    import polars as pl  # here, not at import: the GPU benchmark imports this package without polars

    metrics: dict[str, Any] = {
        "status": "unknown",
        "accuracy": None,
        "abstain_rate": None,
        "tpr": None,
        "fpr": None,
        "confusion": None,
        "n": 0,
        "per_fold": None,
        "out_of_fold": None,
    }
    labelled = labelled_set(corpus, config)
    if labelled is not None:
        refs, genders, source = labelled
        if image_vectors is not None and len(image_vectors) != len(refs):
            raise ValueError(f"{len(image_vectors)} image vectors for {len(refs)} labelled images")
        labels = label_images(instrument, refs, threshold, batch_size, image_vectors=image_vectors)
        metrics.update(
            confusion_rates(genders, labels["label"].to_list()),
            status="measured",
            labelled_source=source,
            n_labelled_in_training=sum(ref in instrument.fold_of_ref for ref in refs),
        )
        if instrument.folds > 1:
            images = load_images(refs)
            metrics["per_fold"] = [
                {
                    key: value
                    for key, value in evaluate_instrument(model, images, genders, threshold, batch_size).items()
                    if key in ("accuracy", "abstain_rate", "tpr", "fpr")
                }
                for model in instrument.models
            ]
    if instrument.fold_of_ref and "true_gender" in corpus.columns:
        trained = corpus.filter(
            pl.col("image_ref").is_in(list(instrument.fold_of_ref)) & pl.col("true_gender").is_in(["female", "male"])
        )
        if len(trained):
            labels = label_images(instrument, trained["image_ref"].to_list(), threshold, batch_size)
            rates = confusion_rates(trained["true_gender"].to_list(), labels["label"].to_list())
            metrics["out_of_fold"] = {key: rates[key] for key in ("accuracy", "abstain_rate", "tpr", "fpr", "n")}
    metrics["occupation_accuracy"] = None
    if "true_occupation" in corpus.columns and occupations:
        test = corpus_split(corpus, "test").filter(pl.col("true_occupation").is_in(occupations))
        if len(test):
            predicted = label_images(instrument, test["image_ref"].to_list(), threshold, batch_size, occupations)
            metrics["occupation_accuracy"] = float(
                np.mean(predicted["predicted_occupation"].to_numpy() == test["true_occupation"].to_numpy())
            )
            metrics["occupation_chance"] = 1.0 / len(occupations)
    return metrics
