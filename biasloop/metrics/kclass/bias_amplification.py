"""Directional bias amplification (Wang & Russakovsky 2021) between an attribute with K classes and the
occupations, from counts per (occupation, attribute class) of training and generated images.

With attribute classes ``a`` and tasks (occupations) ``t``, training probabilities ``P`` and generated
(or predicted) ones ``P^``, Wang & Russakovsky (2021, eq. 2) define

    BiasAmp_-> = 1 / (|A| |T|) sum_{a, t} [ y_at Delta_at + (1 - y_at) (-Delta_at) ]
    y_at       = 1[ P(A = a, T = t) > P(A = a) P(T = t) ]            (from the training counts)
    Delta_at   = P^(T = t | A = a) - P(T = t | A = a)                  (attribute -> task, A->T)
               = P^(A = a | T = t) - P(A = a | T = t)                  (task -> attribute, T->A)

``y_at`` says whether class ``a`` and occupation ``t`` co-occur more than independence would have in
training; the sum is positive when the generated data strengthens those associations (and weakens the
under-represented ones). Values are fractions; 0 when nothing changes.

For a text-to-image model the occupation is the prompt and the attribute is read from the image, so
T->A (``P^(A | T)`` is the generated class distribution per occupation) is the direction that compares
like with like. A->T (``P^(T | A)``, what the issue asks for) also moves when the generated set's
occupation mix differs from the training set's (e.g. equal images per prompt against unequal training
counts), even with no change of any class distribution; read it with that in mind.

Reference: Wang, A. & Russakovsky, O. (2021), Directional Bias Amplification, Proceedings of the 38th
International Conference on Machine Learning (ICML), PMLR 139.
"""

from __future__ import annotations

from typing import Any

import numpy as np

DIRECTIONS = ("A->T", "T->A")


def directional_bias_amplification(train: Any, gen: Any, direction: str = "A->T") -> float:
    """``BiasAmp_->`` of Wang & Russakovsky (2021) from two ``(occupations, K)`` count tables.

    Args:
        train: ``(occupations, K)`` counts of training images per (occupation, attribute class).
        gen: the same for generated images (same occupations and classes, same order).
        direction: ``"A->T"`` (``Delta = P^(T | A) - P(T | A)``) or ``"T->A"`` (``P^(A | T) - P(A | T)``).

    Returns:
        The mean over (class, occupation) of ``y_at Delta_at - (1 - y_at) Delta_at`` (a fraction in
        [-1, 1]; positive when generated data strengthens the training associations).

    Raises:
        ValueError: mismatched shapes, negative counts, an unknown direction, or a conditional probability
            that is undefined (a class or an occupation with no image on a side).
    """
    train, gen = np.asarray(train, float), np.asarray(gen, float)
    if train.shape != gen.shape or train.ndim != 2:
        raise ValueError(f"train and gen must be (occupations, K) counts of one shape: {train.shape}, {gen.shape}")
    if (train < 0).any() or (gen < 0).any():
        raise ValueError("counts must be non-negative")
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be one of {DIRECTIONS}, got {direction!r}")
    joint = train / train.sum()
    co_occur = joint > joint.sum(axis=1, keepdims=True) * joint.sum(axis=0, keepdims=True)
    # A->T conditions on the class (normalise each column), T->A on the occupation (each row).
    axis = 0 if direction == "A->T" else 1
    for name, counts in (("training", train), ("generated", gen)):
        if (counts.sum(axis=axis) == 0).any():
            what = "class" if axis == 0 else "occupation"
            raise ValueError(f"a {what} has no {name} image: P({direction}) is undefined")
    delta = gen / gen.sum(axis=axis, keepdims=True) - train / train.sum(axis=axis, keepdims=True)
    return float(np.mean(np.where(co_occur, delta, -delta)))
