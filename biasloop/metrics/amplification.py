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

Intervals are 95% percentile bootstrap intervals resampling images within occupations. Sampling noise
alone makes ``amplification_abs`` (and the MADs) positive, and the bootstrap adds that noise again, so
for these the interval sits above the estimate when amplification is near 0; compare against the same
metric for two samples of one population rather than against 0.

The canonical per-image classification table is a polars DataFrame with ``occupation`` (str),
``p_female`` (float) and ``label`` (``female``/``male``/``abstain``); a count table has
``occupation, n_female, n_male[, n_abstain]``.
"""

from __future__ import annotations

import json
import logging
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from biasloop.core.io import json_float

log = logging.getLogger(__name__)

LABELS = ("female", "male", "abstain")
AGGREGATES = ("amplification_abs", "amplification_dir", "shift_to_majority", "bias_amp", "mad_train", "mad_gen", "pearson")


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


def count_table(predictions: pl.DataFrame) -> pl.DataFrame:
    """Per-occupation label counts of a classification table (needs ``occupation`` and ``label``).

    Returns:
        ``occupation, n_female, n_male, n_abstain`` (counts Int64), one row per occupation, sorted by
        occupation. Labels outside ``female``/``male``/``abstain`` are not counted.
    """
    for column in ("occupation", "label"):
        if column not in predictions.columns:
            raise ValueError(f"classification table has no {column!r} column")
    return (
        predictions.group_by("occupation")
        .agg(*[(pl.col("label") == label).sum().cast(pl.Int64).alias(f"n_{label}") for label in LABELS])
        .sort("occupation")
    )


def _scalar_or_array(values: np.ndarray) -> Any:
    return values.item() if values.ndim == 0 else values


def share_female(n_female: Any, n_male: Any) -> Any:
    """Share of women among confident images, ``n_female / (n_female + n_male)``.

    Args:
        n_female, n_male: counts (scalars or broadcastable arrays).

    Returns:
        A fraction in [0, 1] (a float for scalar input, else an array); nan where both counts are 0.
    """
    n_female = np.asarray(n_female, dtype=float)
    total = n_female + np.asarray(n_male, dtype=float)
    with np.errstate(invalid="ignore", divide="ignore"):
        return _scalar_or_array(np.where(total > 0, n_female / np.where(total > 0, total, 1.0), np.nan))


def abstain_rate(n_female: Any, n_male: Any, n_abstain: Any) -> Any:
    """Share of images the classifier abstained on, ``n_abstain / (n_female + n_male + n_abstain)``.

    Returns:
        A fraction in [0, 1] (float or array); nan where there are no images.
    """
    n_abstain = np.asarray(n_abstain, dtype=float)
    total = np.asarray(n_female, dtype=float) + np.asarray(n_male, dtype=float) + n_abstain
    with np.errstate(invalid="ignore", divide="ignore"):
        return _scalar_or_array(np.where(total > 0, n_abstain / np.where(total > 0, total, 1.0), np.nan))


def amplification_abs(share_train: Any, share_gen: Any) -> Any:
    """``mean_o |F_gen(o) - F_train(o)|`` over the last axis (occupations); a fraction in [0, 1]."""
    return np.mean(np.abs(np.asarray(share_gen, float) - np.asarray(share_train, float)), axis=-1)


def amplification_dir(share_train: Any, share_gen: Any) -> Any:
    """``mean_o (|F_gen - 1/2| - |F_train - 1/2|)`` over the last axis; in [-1/2, 1/2].

    Positive: generated images are further from parity than the training images.
    """
    deviation_gen = np.abs(np.asarray(share_gen, float) - 0.5)
    deviation_train = np.abs(np.asarray(share_train, float) - 0.5)
    return np.mean(deviation_gen - deviation_train, axis=-1)


def shift_to_majority(share_train: Any, share_gen: Any) -> Any:
    """``mean_o sign(F_train - 1/2) * (F_gen - F_train)`` over the last axis; in [-1, 1].

    Positive: generated images lean further towards each occupation's training majority. Occupations
    at exact parity in training count 0.
    """
    share_train, share_gen = np.asarray(share_train, float), np.asarray(share_gen, float)
    return np.mean(np.sign(share_train - 0.5) * (share_gen - share_train), axis=-1)


def bias_amp(group_shares_train: Any, group_shares_gen: Any) -> Any:
    """BiasAmp (Zhao et al., 2017) in its general multi-group form.

    Args:
        group_shares_train: ``(..., occupations, groups)``: b_train(o, g), the share of group g among
            the training images of occupation o (each row sums to 1).
        group_shares_gen: the same for generated images.

    Returns:
        ``mean_o sum_{g: b_train(o,g) > 1/|G|} (b_gen(o,g) - b_train(o,g))``, a fraction. For two groups
        (women, men) this equals :func:`shift_to_majority` except for occupations at exact parity in
        training, which count 0 in both, so the two agree there too; they differ only in how a
        group favoured in training is chosen when there are more than two groups.
    """
    train, gen = np.asarray(group_shares_train, float), np.asarray(group_shares_gen, float)
    favoured = train > 1.0 / train.shape[-1]
    return np.mean(np.sum(np.where(favoured, gen - train, 0.0), axis=-1), axis=-1)


def gender_mad(shares: Any) -> Any:
    """Mean absolute deviation from parity, ``mean_o |F(o) - 1/2|`` (DALL-Eval); in [0, 1/2]."""
    return np.mean(np.abs(np.asarray(shares, float) - 0.5), axis=-1)


def pearson(x: Any, y: Any) -> Any:
    """Pearson correlation of ``x`` and ``y`` over the last axis (occupations).

    Returns:
        A value in [-1, 1]; nan when undefined (fewer than two occupations, or either side constant).
    """
    x, y = np.asarray(x, float), np.asarray(y, float)
    if x.shape[-1] < 2:
        return _scalar_or_array(np.full(x.shape[:-1], np.nan))
    x_centred = x - x.mean(axis=-1, keepdims=True)
    y_centred = y - y.mean(axis=-1, keepdims=True)
    # An exact range test: the mean of equal values can round off and leave ~1e-17 residuals that
    # would otherwise yield a spurious correlation of +-1.
    defined = (np.ptp(x, axis=-1) > 0) & (np.ptp(y, axis=-1) > 0)
    denominator = np.sqrt((x_centred**2).sum(axis=-1) * (y_centred**2).sum(axis=-1))
    with np.errstate(invalid="ignore", divide="ignore"):
        correlation = (x_centred * y_centred).sum(axis=-1) / np.where(defined, denominator, 1.0)
    return _scalar_or_array(np.where(defined, np.clip(correlation, -1.0, 1.0), np.nan))


def corrected_share(f_obs: Any, tpr: float, fpr: float) -> Any:
    """Correct observed shares of women for classifier error: ``clip((F_obs - fpr) / (tpr - fpr), 0, 1)``.

    Args:
        f_obs: observed share(s) of women, fractions.
        tpr: P(labelled female | female) over confident labelled images.
        fpr: P(labelled female | male) over confident labelled images.

    Returns:
        The corrected share(s), fractions in [0, 1] (float or array); nan stays nan.

    Raises:
        ValueError: when ``tpr <= fpr`` (the labels carry no information to invert).
    """
    if not tpr > fpr:
        raise ValueError(f"cannot correct shares: tpr ({tpr}) must exceed fpr ({fpr})")
    return _scalar_or_array(np.clip((np.asarray(f_obs, float) - fpr) / (tpr - fpr), 0.0, 1.0))


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
    counts = {
        f"{t}_as_{p}": int(np.sum((truth == t) & (predicted == p))) for t in ("female", "male") for p in LABELS
    }
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


def _validated_counts(counts: pl.DataFrame, side: str) -> pl.DataFrame:
    """``occupation, n_female, n_male, n_abstain`` (n_abstain 0 when absent), checked."""
    for column in ("occupation", "n_female", "n_male"):
        if column not in counts.columns:
            raise ValueError(f"{side} count table has no {column!r} column")
    if "n_abstain" not in counts.columns:
        counts = counts.with_columns(pl.lit(0, dtype=pl.Int64).alias("n_abstain"))
    counts = counts.select(
        pl.col("occupation").cast(pl.String), *[pl.col(f"n_{label}").cast(pl.Int64) for label in LABELS]
    )
    if counts.null_count().sum_horizontal().item() > 0:
        raise ValueError(f"{side} count table has missing values")
    if counts.filter(pl.any_horizontal(*[pl.col(f"n_{label}") < 0 for label in LABELS])).height:
        raise ValueError(f"{side} count table has a negative count")
    duplicated = counts.filter(pl.col("occupation").is_duplicated())["occupation"].unique().sort().to_list()
    if duplicated:
        raise ValueError(f"{side} count table repeats occupation(s) {duplicated}")
    return counts


def _aggregates(share_train: np.ndarray, share_gen: np.ndarray) -> dict[str, np.ndarray]:
    """Every aggregate over the last axis; shares ``(..., occupations)``."""
    return {
        "amplification_abs": amplification_abs(share_train, share_gen),
        "amplification_dir": amplification_dir(share_train, share_gen),
        "shift_to_majority": shift_to_majority(share_train, share_gen),
        # Two groups: women with share F, men with share 1 - F.
        "bias_amp": bias_amp(np.stack([share_train, 1 - share_train], -1), np.stack([share_gen, 1 - share_gen], -1)),
        "mad_train": gender_mad(share_train),
        "mad_gen": gender_mad(share_gen),
        "pearson": pearson(share_train, share_gen),
    }


def _bootstrap_shares(counts: np.ndarray, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """``(n_boot, occupations)`` shares of women from a multinomial redraw of each occupation's images.

    Each replicate draws n(o) images with replacement from occupation o's observed
    (female, male, abstain) proportions, so abstentions vary between replicates as they would between
    samples; a replicate with no confident image gives nan.
    """
    totals = counts.sum(axis=1)
    proportions = counts / np.maximum(totals, 1)[:, None]
    draws = rng.multinomial(totals, proportions, size=(n_boot, len(totals)))  # (n_boot, occupations, 3)
    return np.asarray(share_female(draws[..., 0], draws[..., 1]), dtype=float).reshape(n_boot, len(totals))


def _intervals(samples: np.ndarray) -> np.ndarray:
    """``(2, ...)`` 2.5% and 97.5% percentiles over axis 0, ignoring nan replicates (nan if none)."""
    if samples.shape[0] == 0:
        return np.full((2, *samples.shape[1:]), np.nan)
    with warnings.catch_warnings():
        # A column with no usable replicate legitimately gives a nan interval.
        warnings.filterwarnings("ignore", message="All-NaN slice")
        return np.nanpercentile(samples, [2.5, 97.5], axis=0)


def _interval_pair(bounds: np.ndarray) -> list[float | None]:
    return [json_float(bounds[0]), json_float(bounds[1])]


def _table(
    names: list[str],
    train: np.ndarray,
    gen: np.ndarray,
    share_train: np.ndarray,
    share_gen: np.ndarray,
    boot_train: np.ndarray,
    boot_gen: np.ndarray,
    keep: np.ndarray,
) -> dict[str, Any]:
    """Aggregates over the kept occupations with intervals, and per-occupation rows (all occupations)."""
    out: dict[str, Any] = {}
    n_boot = boot_train.shape[0]
    if keep.any():
        point = _aggregates(share_train[keep], share_gen[keep])
        # A replicate in which some kept occupation drew no confident image gives nan aggregates and
        # is left out of that interval.
        boot = _aggregates(boot_train[:, keep], boot_gen[:, keep])
    else:
        point = {name: np.nan for name in AGGREGATES}
        boot = {name: np.full(n_boot, np.nan) for name in AGGREGATES}
    for name in AGGREGATES:
        out[name] = json_float(point[name])
        out[f"{name}_ci"] = _interval_pair(_intervals(np.asarray(boot[name], float).reshape(n_boot)))
    out["n_occupations"] = int(keep.sum())
    intervals_train, intervals_gen = _intervals(boot_train), _intervals(boot_gen)
    abstain_train, abstain_gen = abstain_rate(*train.T), abstain_rate(*gen.T)
    out["per_occupation"] = [
        {
            "occupation": occupation,
            "n_female_train": int(train[i, 0]),
            "n_male_train": int(train[i, 1]),
            "n_abstain_train": int(train[i, 2]),
            "n_female_gen": int(gen[i, 0]),
            "n_male_gen": int(gen[i, 1]),
            "n_abstain_gen": int(gen[i, 2]),
            "share_train": json_float(share_train[i]),
            "share_train_ci": _interval_pair(intervals_train[:, i]),
            "share_gen": json_float(share_gen[i]),
            "share_gen_ci": _interval_pair(intervals_gen[:, i]),
            "abstain_rate_train": json_float(np.atleast_1d(abstain_train)[i]),
            "abstain_rate_gen": json_float(np.atleast_1d(abstain_gen)[i]),
            "difference": json_float(share_gen[i] - share_train[i]),
        }
        for i, occupation in enumerate(names)
    ]
    return out


def amplification_table(
    train_counts: pl.DataFrame,
    gen_counts: pl.DataFrame,
    *,
    n_boot: int = 1000,
    seed: int = 0,
    confusion: dict[str, float] | None = None,
    correct_train: bool = True,
) -> dict[str, Any]:
    """Amplification of generated images against training images, with bootstrap intervals.

    Args:
        train_counts: ``occupation, n_female, n_male[, n_abstain]`` of the training images (one row
            per occupation, non-negative counts; n_abstain 0 when absent).
        gen_counts: the same for generated images. Occupations are inner-joined by name.
        n_boot: bootstrap replicates (0: no intervals). Images are redrawn within each occupation
            (multinomial over female/male/abstain with the observed n), train and gen independently.
        seed: seed of ``numpy.random.default_rng`` for the bootstrap; equal seeds give equal results.
        confusion: the instrument's ``{"tpr": .., "fpr": ..}``; adds a ``corrected`` table.
        correct_train: correct the training shares as well as the generated ones (False when the
            training counts come from ground truth rather than from the instrument).

    Returns:
        A JSON-ready dict (python floats; None where undefined), all values fractions:
        ``amplification_abs``, ``amplification_dir``, ``shift_to_majority``, ``bias_amp``,
        ``mad_train``, ``mad_gen``, ``pearson``, each with ``<name>_ci`` = [lo, hi] (95% percentile
        interval); ``n_occupations`` (occupations in the aggregates); ``per_occupation`` rows (counts,
        shares with intervals, abstain rates, ``difference`` = share_gen - share_train) for every
        matched occupation; ``unmatched`` = {"train_only": [..], "gen_only": [..]}; ``dropped``:
        matched occupations left out of the aggregates because a side has no confident image; and,
        with ``confusion``, ``corrected``: the same aggregates and rows on corrected shares, plus
        ``confusion`` = {"tpr", "fpr", "train_corrected"}.

    Raises:
        ValueError: a missing column, a negative or missing count, a repeated occupation, a negative
            ``n_boot``, or ``tpr <= fpr``.
    """
    if n_boot < 0:
        raise ValueError(f"n_boot must be >= 0, got {n_boot}")
    train_counts = _validated_counts(train_counts, "training")
    gen_counts = _validated_counts(gen_counts, "generated")
    train_names, gen_names = set(train_counts["occupation"]), set(gen_counts["occupation"])
    joined = train_counts.join(gen_counts, on="occupation", suffix="_gen").sort("occupation")
    names = joined["occupation"].to_list()
    train = np.stack([joined[f"n_{label}"].to_numpy() for label in LABELS], axis=1).astype(np.int64).reshape(-1, 3)
    gen = np.stack([joined[f"n_{label}_gen"].to_numpy() for label in LABELS], axis=1).astype(np.int64).reshape(-1, 3)
    share_train = np.asarray(share_female(train[:, 0], train[:, 1]), float).reshape(-1)
    share_gen = np.asarray(share_female(gen[:, 0], gen[:, 1]), float).reshape(-1)
    keep = ~(np.isnan(share_train) | np.isnan(share_gen))

    rng = np.random.default_rng(seed)
    boot_train = _bootstrap_shares(train, n_boot, rng)
    boot_gen = _bootstrap_shares(gen, n_boot, rng)

    result = _table(names, train, gen, share_train, share_gen, boot_train, boot_gen, keep)
    result["unmatched"] = {"train_only": sorted(train_names - gen_names), "gen_only": sorted(gen_names - train_names)}
    result["dropped"] = [name for name, kept in zip(names, keep) if not kept]
    if confusion is not None:
        tpr, fpr = float(confusion["tpr"]), float(confusion["fpr"])

        def correct(shares: np.ndarray) -> np.ndarray:
            return np.asarray(corrected_share(shares, tpr, fpr), float).reshape(shares.shape)

        corrected_train = correct(share_train) if correct_train else share_train
        corrected_boot_train = correct(boot_train) if correct_train else boot_train
        corrected = _table(
            names, train, gen, corrected_train, correct(share_gen), corrected_boot_train, correct(boot_gen), keep
        )
        corrected["confusion"] = {"tpr": tpr, "fpr": fpr, "train_corrected": bool(correct_train)}
        result["corrected"] = corrected
    return result


def read_confusion(path: str | Path) -> dict[str, float] | None:
    """The instrument's ``{"tpr", "fpr"}`` from its metrics file, or None when unknown or unusable."""
    metrics = json.loads(Path(path).read_text())
    tpr, fpr = metrics.get("tpr"), metrics.get("fpr")
    if tpr is None or fpr is None or tpr <= fpr:
        log.warning("instrument confusion rates unknown or unusable (tpr=%s, fpr=%s): no correction", tpr, fpr)
        return None
    return {"tpr": float(tpr), "fpr": float(fpr)}
