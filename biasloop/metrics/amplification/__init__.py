"""Shares of women and amplification metrics (DESIGN.md, "Metrics").

Every share and amplification is a fraction (shares in [0, 1], signed amplifications in [-1, 1]), never
a percentage. With ``F(o) = n_female / (n_female + n_male)`` over the confident (non-abstained) images
of occupation ``o`` and the mean taken over occupations:

- ``amplification_abs = mean_o |F_gen(o) - F_train(o)|``
- ``amplification_dir = mean_o (|F_gen(o) - 1/2| - |F_train(o) - 1/2|)``: positive when generated images
  are further from parity than training images
- ``shift_to_majority = mean_o sign(F_train(o) - 1/2) * (F_gen(o) - F_train(o))``
- ``bias_amp``: BiasAmp of Zhao et al. (2017)
- ``gender_mad = mean_o |F(o) - 1/2|`` (DALL-Eval)
- corrected shares ``F_true = clip((F_obs - fpr) / (tpr - fpr), 0, 1)``

Two aliases are shown once: for two groups ``bias_amp`` equals ``shift_to_majority`` (so the tables
carry only ``shift_to_majority``), and ``amplification_dir`` equals ``mad_gen - mad_train`` exactly.

**Estimands.** Each table leads with ``estimands`` (:mod:`biasloop.metrics.estimands`,
``docs/estimands.md``): the ``shift`` (``shift_to_majority`` with an adjusted Wald interval, or for
pairs and corrected shares a bootstrap one, occupations with an unclear training majority counted both
ways, and a two-sided null p-value), the ``gap`` (the noise-free ``mean_o |p_gen - p_train|``,
debiased, with an interval from simultaneous per-occupation intervals), and ``a_abs_raw``, the paper's
plug-in A_abs. ``tests/test_calibration.py`` measures that both intervals cover the noise-free values.
``shift_to_majority_ci`` stays the plain percentile bootstrap (which re-estimates every majority in
each replicate and fails near parity).

**Noise floor and excess: a diagnostic, not an estimate of the amplification.**
``amplification_abs`` and ``amplification_dir`` are built from absolute values, so sampling noise alone
makes them positive: with 80 generated and 335 training images per occupation, two samples of one
population give ``amplification_abs`` of about 4 to 5 pp. Each table therefore also reports, for ``abs``
and ``dir`` (see :func:`excess_over_noise`):

- ``noise_floor_<s>``: the statistic's mean under the null "generated share = training share", simulated
  with the observed confident counts per occupation from the pooled share (parametric bootstrap, the
  same number of replicates as the intervals);
- ``excess_<s> = <statistic> - noise_floor_<s>`` with ``excess_<s>_ci``: it estimates
  ``E[T] - E_null[T]``, which lies below the noise-free gap once differences are real (it covered a
  true gap of 17 pp in 12% of headline-like simulated tables), so read the ``gap`` estimand instead;
- ``p_value_<s>``: the one-sided Monte Carlo p-value of the statistic under that null (the gap's p-value),
  with ``p_value_<s>_is_bound`` true when it is the floor ``1 / (1 + n_boot)``.

Signed statistics (``shift_to_majority``, ``pearson``) and the one-sided MADs keep 95% percentile bootstrap
intervals (images resampled within occupations).

The canonical per-image classification table is a polars DataFrame with ``occupation`` (str),
``p_female`` (float) and ``label`` (``female``/``male``/``abstain``); a count table has
``occupation, n_female, n_male[, n_abstain]``.

Modules: :mod:`~.shares` (shares and the statistics), :mod:`~.resampling` (bootstrap and null draws,
noise floors), :mod:`~.table` (the table the stages write).
"""

from biasloop.metrics.amplification.resampling import (
    AGGREGATES,
    NOISE_FLOORED,
    bootstrap_shares,
    excess_over_noise,
    null_shares,
    summarize_aggregates,
)
from biasloop.metrics.amplification.shares import (
    abstain_rate,
    amplification_abs,
    amplification_dir,
    bias_amp,
    corrected_share,
    count_table,
    gender_mad,
    pearson,
    share_female,
    shift_to_majority,
)
from biasloop.metrics.amplification.table import ALIASES, amplification_table, read_confusion, table_from_draws

__all__ = [
    "AGGREGATES",
    "ALIASES",
    "NOISE_FLOORED",
    "abstain_rate",
    "amplification_abs",
    "amplification_dir",
    "amplification_table",
    "bias_amp",
    "bootstrap_shares",
    "corrected_share",
    "count_table",
    "excess_over_noise",
    "gender_mad",
    "null_shares",
    "pearson",
    "read_confusion",
    "share_female",
    "shift_to_majority",
    "summarize_aggregates",
    "table_from_draws",
]
