"""Metrics for an attribute with K classes (skin tone, age, perceived gender with an "unclear" class):
per-occupation class distributions and the estimands of the binary tables extended class by class
(``docs/attributes.md``, "Estimands for K classes"). All values are fractions.

Modules: :mod:`~.estimands` (distributions, total variation, the gap and the shift with intervals that
reduce to the binary ones at K = 2), :mod:`~.bias_amplification` (directional bias amplification, Wang &
Russakovsky 2021), :mod:`~.ranking` (MaxSkew@k and NDKL against the training distribution),
:mod:`~.decomposition` (data / generator / instrument terms), :mod:`~.cells` (intersectional cells with a
minimum size), :mod:`~.table` (the table ``biasloop amplify`` prints for K-class count files), :mod:`~.correction` (the KxK
confusion matrix and the correction of an observed distribution by inverting it, with intervals); :mod:`~.attribute` and
:mod:`~.attribute_terms` measure one attribute from per-image frames for the paradox and evaluate stages
(imported from there, not re-exported here: they read polars frames and the paradox pairings).
"""

from biasloop.metrics.kclass.bias_amplification import directional_bias_amplification
from biasloop.metrics.kclass.cells import intersectional_counts
from biasloop.metrics.kclass.correction import (
    Confusion,
    confusion_matrix,
    correct_distribution,
    corrected_distribution_interval,
    project_to_simplex,
)
from biasloop.metrics.kclass.decomposition import class_decomposition_terms
from biasloop.metrics.kclass.estimands import (
    class_distributions,
    gap_from_class_counts,
    majority_weights,
    shift_from_class_counts,
    total_variation,
)
from biasloop.metrics.kclass.ranking import skew_against_training
from biasloop.metrics.kclass.table import class_amplification_table

__all__ = [
    "Confusion",
    "confusion_matrix",
    "correct_distribution",
    "corrected_distribution_interval",
    "project_to_simplex",
    "class_amplification_table",
    "class_decomposition_terms",
    "class_distributions",
    "directional_bias_amplification",
    "gap_from_class_counts",
    "intersectional_counts",
    "majority_weights",
    "shift_from_class_counts",
    "skew_against_training",
    "total_variation",
]
