"""The labelling rule: ``female``/``male`` when ``p_female`` is confidently away from 1/2, else
``abstain`` (:func:`label_from_p`), and its confusion rates against ground truth."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from biasloop.core.labels import LABELS


def label_from_p(p_female: Sequence[float] | np.ndarray, threshold: float = 0.1) -> np.ndarray:
    """Labels from probabilities: ``female`` if p > 1 - t, ``male`` if p < t, else ``abstain``.

    Args:
        p_female: probability (in [0, 1]) that each image shows a woman; nan abstains.
        threshold: the abstain threshold t in (0, 0.5] (the paradox study keeps p < 0.1 or p > 0.9).

    Returns:
        An object array of label strings, one per image.
    """
    if not 0.0 < threshold <= 0.5:
        raise ValueError(f"abstain threshold must be in (0, 0.5], got {threshold}")
    p = np.asarray(p_female, dtype=float)
    return np.where(p > 1.0 - threshold, "female", np.where(p < threshold, "male", "abstain")).astype(object)


def confusion_rates(true_gender: Sequence[str | None], predicted_label: Sequence[str]) -> dict[str, Any]:
    """Accuracy and confusion of perceived-gender labels against ground truth, ``female`` positive.

    Args:
        true_gender: ``female``/``male`` per image; other values (None, ``none``) are ignored.
        predicted_label: ``female``/``male``/``abstain`` per image.

    Returns:
        ``tpr`` (female labelled female), ``fpr`` (male labelled female) and ``accuracy`` over
        confident images, ``abstain_rate`` over all images with a known gender (fractions; None when
        undefined), ``n`` (images with a known gender), ``n_confident`` and ``confusion``:
        ``{"<true>_as_<label>": count}``.
    """
    truth = np.asarray([t if t in ("female", "male") else "" for t in true_gender], dtype=object)
    predicted = np.asarray(predicted_label, dtype=object)
    if truth.shape != predicted.shape:
        raise ValueError(f"{len(truth)} true genders but {len(predicted)} predicted labels")
    known = truth != ""
    truth, predicted = truth[known], predicted[known]
    counts = {f"{t}_as_{p}": int(np.sum((truth == t) & (predicted == p))) for t in ("female", "male") for p in LABELS}
    female_confident = counts["female_as_female"] + counts["female_as_male"]
    male_confident = counts["male_as_female"] + counts["male_as_male"]
    n_confident = female_confident + male_confident
    n_correct = counts["female_as_female"] + counts["male_as_male"]
    return {
        "tpr": counts["female_as_female"] / female_confident if female_confident else None,
        "fpr": counts["male_as_female"] / male_confident if male_confident else None,
        "accuracy": n_correct / n_confident if n_confident else None,
        "abstain_rate": (len(truth) - n_confident) / len(truth) if len(truth) else None,
        "n": int(len(truth)),
        "n_confident": int(n_confident),
        "confusion": counts,
    }


def evaluate_instrument(
    instrument: Any, images: np.ndarray, true_gender: list[str | None], threshold: float, batch_size: int = 512
) -> dict[str, Any]:
    """Accuracy and confusion of the instrument's labels against ground truth.

    Args:
        instrument: anything with ``p_female(images, batch_size=...)``.
        images: ``uint8`` images.
        true_gender: ``female``/``male`` per image (None rows are ignored).
        threshold: the abstain threshold (``label.abstain_threshold``).
        batch_size: images per forward pass.

    Returns:
        ``accuracy`` (over confident images), ``abstain_rate``, ``tpr``/``fpr`` ("female" the positive
        class, over confident images), ``n``, ``n_confident`` and the confusion counts
        (``female_as_male`` ...), from :func:`biasloop.models.instrument.rule.confusion_rates`.
    """
    if len(images) != len(true_gender):
        raise ValueError(f"{len(images)} images but {len(true_gender)} labels")
    p = instrument.p_female(images, batch_size=batch_size)
    return confusion_rates(true_gender, label_from_p(p, threshold))
