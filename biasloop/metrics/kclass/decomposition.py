"""The data / generator / instrument decomposition of a measured K-class shift (the binary one is
:mod:`biasloop.metrics.decomposition`; DESIGN.md, "The ideal learner").

With per-occupation class distributions (rows of ``(..., occupations, K)`` arrays, fractions)

- ``train_measured``, ``gen_measured``: the instrument's confident labels of the training / generated images;
- ``train_true``: the training images' true classes;
- ``ideal_true``: the true classes of the training images whose caption carries no indicator of the
  attribute (the ideal learner: a generator that learned its training data perfectly, asked a neutral
  prompt, reproduces the unmarked captions' distribution);
- ``gen_oracle``: the oracle's labels of the generated images;

and the weights ``w(o, k)`` of each occupation's measured training majority class
(:func:`biasloop.metrics.kclass.estimands.majority_weights`, held fixed), writing ``<x> = sum_k w(o, k)
x(o, k)``, the measured shift ``mean_o <gen_measured - train_measured>`` is, exactly,

- (a) ``data       = mean_o <ideal - train_true>``;
- (b) ``generator  = mean_o <gen_oracle - ideal>``;
- (c) ``instrument = mean_o <(gen_measured - gen_oracle) - (train_measured - train_true)>``.

The weights are linear, so (a) + (b) + (c) telescopes to the measured shift. At K = 2 with the classes
(female, male), ``<x> = sign(F_train_meas - 1/2) x(female)``: the binary terms. For paired pairings
(captions as prompts) ``ideal = train_true`` and (a) is 0; without ground truth (a) is read from the
instrument (``ideal_measured`` against ``train_measured``) and (b) + (c) is one term,
``generator_and_instrument``, as in the binary decomposition.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from biasloop.metrics.kclass.estimands import majority_weights, total_variation


def _towards_majority(weights: np.ndarray, difference: np.ndarray) -> np.ndarray:
    """``mean_o sum_k w(o, k) difference(o, k)`` over the last two axes."""
    return np.mean(np.sum(weights * difference, axis=-1), axis=-1)


def class_decomposition_terms(
    shares: dict[str, Any], ground_truth: bool, paired: bool, weights: Any = None
) -> dict[str, np.ndarray]:
    """The decomposition's terms from per-occupation class distributions (see the module docstring).

    Args:
        shares: ``train_measured``, ``gen_measured`` and, with ground truth, ``train_true``, ``ideal_true``
            (unless paired), ``gen_oracle``; without, ``ideal_measured`` (unless paired). Arrays
            ``(..., occupations, K)``, each row a distribution.
        ground_truth: the truth terms (a, b, c), or the instrument-only ones (a, b + c).
        paired: the ideal learner reproduces each pair's training image, so (a) is 0.
        weights: ``(..., occupations, K)`` majority weights; default :func:`majority_weights` of
            ``train_measured``.

    Returns:
        ``measured``, the terms, and ``ideal_gap`` (``mean_o TV(ideal, train)``, the ideal learner's
        gap, plug-in), fractions of shape ``(...)``.
    """
    train_measured = np.asarray(shares["train_measured"], float)
    gen_measured = np.asarray(shares["gen_measured"], float)
    weights = majority_weights(train_measured) if weights is None else np.asarray(weights, float)
    out = {"measured": _towards_majority(weights, gen_measured - train_measured)}
    if ground_truth:
        train_true, gen_oracle = np.asarray(shares["train_true"], float), np.asarray(shares["gen_oracle"], float)
        ideal = train_true if paired else np.asarray(shares["ideal_true"], float)
        out["data"] = _towards_majority(weights, ideal - train_true)
        out["generator"] = _towards_majority(weights, gen_oracle - ideal)
        out["instrument"] = _towards_majority(weights, (gen_measured - gen_oracle) - (train_measured - train_true))
        out["ideal_gap"] = np.mean(total_variation(ideal, train_true), axis=-1)
    else:
        ideal = train_measured if paired else np.asarray(shares["ideal_measured"], float)
        out["data"] = _towards_majority(weights, ideal - train_measured)
        out["generator_and_instrument"] = _towards_majority(weights, gen_measured - ideal)
        out["ideal_gap"] = np.mean(total_variation(ideal, train_measured), axis=-1)
    return out
