"""Shares of women and amplification metrics (DESIGN.md, "Metrics").

Every share and amplification is a fraction in [0, 1] (or [-1, 1] for signed ones), never a percentage.
With ``F(o) = n_female / (n_female + n_male)`` over confident (non-abstained) images of occupation ``o``:

- ``amplification_abs = mean_o |F_gen(o) - F_train(o)|``
- ``amplification_dir = mean_o (|F_gen(o) - 1/2| - |F_train(o) - 1/2|)``: positive when generated images
  are further from parity than training images
- ``shift_to_majority = mean_o sign(F_train(o) - 1/2) * (F_gen(o) - F_train(o))``
- ``bias_amp``: BiasAmp of Zhao et al. (2017)
- ``gender_mad = mean_o |F(o) - 1/2|`` (DALL-Eval)
- corrected shares ``F_true = (F_obs - fpr) / (tpr - fpr)`` clipped to [0, 1]

Intervals are 95% percentile bootstrap intervals resampling images within occupations.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import polars as pl

LABELS = ("female", "male", "abstain")
AGGREGATES = ("amplification_abs", "amplification_dir", "shift_to_majority", "bias_amp", "mad_train", "mad_gen", "pearson")


def label_from_p(p_female: Sequence[float] | np.ndarray, threshold: float = 0.1) -> np.ndarray:
    """Labels from probabilities: ``female`` if p > 1 - t, ``male`` if p < t, else ``abstain``.

    Args:
        p_female: probability of "female" per image.
        threshold: the abstain threshold t in (0, 0.5] (the paradox study keeps p < 0.1 or p > 0.9).

    Returns:
        An array of label strings.
    """
    if not 0.0 < threshold <= 0.5:
        raise ValueError(f"abstain threshold must be in (0, 0.5], got {threshold}")
    p = np.asarray(p_female, dtype=float)
    return np.where(p > 1.0 - threshold, "female", np.where(p < threshold, "male", "abstain")).astype(object)


def count_table(predictions: pl.DataFrame) -> pl.DataFrame:
    """Per-occupation label counts of a classification table (``occupation``, ``label``).

    Returns:
        ``occupation, n_female, n_male, n_abstain`` (Int64), sorted by occupation.
    """
    for column in ("occupation", "label"):
        if column not in predictions.columns:
            raise ValueError(f"classification table has no {column!r} column")
    return (
        predictions.group_by("occupation")
        .agg(*[(pl.col("label") == label).sum().cast(pl.Int64).alias(f"n_{label}") for label in LABELS])
        .sort("occupation")
    )


def share_female(n_female: Any, n_male: Any) -> Any:
    """``n_female / (n_female + n_male)``; nan where both are 0. Works on scalars and arrays."""
    n_female = np.asarray(n_female, dtype=float)
    n_male = np.asarray(n_male, dtype=float)
    total = n_female + n_male
    with np.errstate(invalid="ignore", divide="ignore"):
        share = np.where(total > 0, n_female / np.where(total > 0, total, 1.0), np.nan)
    return share.item() if share.ndim == 0 else share


def abstain_rate(n_female: Any, n_male: Any, n_abstain: Any) -> Any:
    """``n_abstain / (n_female + n_male + n_abstain)``; nan when there are no images."""
    total = np.asarray(n_female, float) + np.asarray(n_male, float) + np.asarray(n_abstain, float)
    with np.errstate(invalid="ignore", divide="ignore"):
        rate = np.where(total > 0, np.asarray(n_abstain, float) / np.where(total > 0, total, 1.0), np.nan)
    return rate.item() if rate.ndim == 0 else rate


def amplification_abs(share_train: np.ndarray, share_gen: np.ndarray) -> np.ndarray:
    """``mean_o |F_gen - F_train|`` over the last axis (occupations)."""
    return np.mean(np.abs(np.asarray(share_gen) - np.asarray(share_train)), axis=-1)


def amplification_dir(share_train: np.ndarray, share_gen: np.ndarray) -> np.ndarray:
    """``mean_o (|F_gen - 1/2| - |F_train - 1/2|)``; positive: generated further from parity."""
    return np.mean(np.abs(np.asarray(share_gen) - 0.5) - np.abs(np.asarray(share_train) - 0.5), axis=-1)


def shift_to_majority(share_train: np.ndarray, share_gen: np.ndarray) -> np.ndarray:
    """``mean_o sign(F_train - 1/2) (F_gen - F_train)``; positive: generated images lean to the training majority."""
    share_train, share_gen = np.asarray(share_train), np.asarray(share_gen)
    return np.mean(np.sign(share_train - 0.5) * (share_gen - share_train), axis=-1)


def bias_amp(group_shares_train: np.ndarray, group_shares_gen: np.ndarray) -> np.ndarray:
    """BiasAmp (Zhao et al., 2017) for any number of groups.

    Args:
        group_shares_train: ``(..., occupations, groups)`` share of each group per occupation in training data.
        group_shares_gen: the same for generated data.

    Returns:
        ``mean_o sum_{g: b_train(o,g) > 1/|G|} (b_gen(o,g) - b_train(o,g))``. For two groups this equals
        :func:`shift_to_majority` except for occupations at exact parity, which count 0 in both.
    """
    train, gen = np.asarray(group_shares_train, float), np.asarray(group_shares_gen, float)
    favoured = train > 1.0 / train.shape[-1]
    return np.mean(np.sum(np.where(favoured, gen - train, 0.0), axis=-1), axis=-1)


def gender_mad(shares: np.ndarray) -> np.ndarray:
    """Mean absolute deviation from parity, ``mean_o |F(o) - 1/2|`` (DALL-Eval)."""
    return np.mean(np.abs(np.asarray(shares) - 0.5), axis=-1)


def pearson(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Pearson correlation over the last axis; nan when either side is constant."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    xc = x - x.mean(axis=-1, keepdims=True)
    yc = y - y.mean(axis=-1, keepdims=True)
    denominator = np.sqrt((xc**2).sum(axis=-1) * (yc**2).sum(axis=-1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denominator > 0, (xc * yc).sum(axis=-1) / np.where(denominator > 0, denominator, 1), np.nan)


def corrected_share(f_obs: Any, tpr: float, fpr: float) -> Any:
    """Correct an observed share with the classifier's rates: ``clip((F_obs - fpr) / (tpr - fpr), 0, 1)``.

    Args:
        f_obs: observed share(s) of women.
        tpr: P(labelled female | female), on confident labelled images.
        fpr: P(labelled female | male).

    Raises:
        ValueError: when ``tpr <= fpr`` (the classifier carries no information to invert).
    """
    if tpr <= fpr:
        raise ValueError(f"cannot correct shares: tpr ({tpr}) must exceed fpr ({fpr})")
    corrected = np.clip((np.asarray(f_obs, float) - fpr) / (tpr - fpr), 0.0, 1.0)
    return corrected.item() if corrected.ndim == 0 else corrected


def confusion_rates(true_gender: Sequence[str | None], predicted_label: Sequence[str]) -> dict[str, Any]:
    """Accuracy and confusion of perceived-gender labels against ground truth.

    Args:
        true_gender: ``female``/``male`` per image (None rows are ignored).
        predicted_label: ``female``/``male``/``abstain`` per image.

    Returns:
        ``accuracy``, ``tpr``, ``fpr`` (female the positive class) over confident images,
        ``abstain_rate`` over all labelled images, ``n``, and the confusion counts.
    """
    truth = np.asarray([t if t is not None else "" for t in true_gender], dtype=object)
    predicted = np.asarray(predicted_label, dtype=object)
    known = np.isin(truth, ["female", "male"])
    truth, predicted = truth[known], predicted[known]
    confident = predicted != "abstain"
    counts = {
        f"{t}_as_{p}": int(np.sum((truth == t) & (predicted == p)))
        for t in ("female", "male")
        for p in ("female", "male", "abstain")
    }
    female_confident = counts["female_as_female"] + counts["female_as_male"]
    male_confident = counts["male_as_female"] + counts["male_as_male"]
    n_confident = int(confident.sum())
    return {
        "accuracy": float(np.mean(truth[confident] == predicted[confident])) if n_confident else None,
        "tpr": counts["female_as_female"] / female_confident if female_confident else None,
        "fpr": counts["male_as_female"] / male_confident if male_confident else None,
        "abstain_rate": float(np.mean(~confident)) if len(truth) else None,
        "n": int(len(truth)),
        "n_confident": n_confident,
        "confusion": counts,
    }


def _counts_array(table: pl.DataFrame) -> np.ndarray:
    return np.stack([table[f"n_{label}"].to_numpy().astype(np.int64) for label in LABELS], axis=1)


def _aggregates(share_train: np.ndarray, share_gen: np.ndarray) -> dict[str, np.ndarray]:
    group_train = np.stack([share_train, 1 - share_train], axis=-1)
    group_gen = np.stack([share_gen, 1 - share_gen], axis=-1)
    return {
        "amplification_abs": amplification_abs(share_train, share_gen),
        "amplification_dir": amplification_dir(share_train, share_gen),
        "shift_to_majority": shift_to_majority(share_train, share_gen),
        "bias_amp": bias_amp(group_train, group_gen),
        "mad_train": gender_mad(share_train),
        "mad_gen": gender_mad(share_gen),
        "pearson": pearson(share_train, share_gen),
    }


def _bootstrap_shares(counts: np.ndarray, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """``(n_boot, occupations)`` shares from multinomial redraws of each occupation's images."""
    totals = counts.sum(axis=1)
    probabilities = counts / np.maximum(totals, 1)[:, None]
    draws = rng.multinomial(totals, probabilities, size=(n_boot, len(totals)))  # (n_boot, occupations, 3)
    return share_female(draws[..., 0], draws[..., 1])


def _float(value: Any) -> float | None:
    value = float(value)
    return None if np.isnan(value) else value


def _interval(samples: np.ndarray) -> list[float | None]:
    samples = samples[~np.isnan(samples)]
    if len(samples) == 0:
        return [None, None]
    return [float(np.percentile(samples, 2.5)), float(np.percentile(samples, 97.5))]


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
        train_counts: ``occupation, n_female, n_male[, n_abstain]`` of the training images.
        gen_counts: the same for generated images. Occupations are joined by name.
        n_boot: bootstrap replicates (images resampled within occupations, train and gen independently).
        seed: bootstrap seed.
        confusion: ``{"tpr", "fpr"}`` of the instrument; adds a ``corrected`` table.
        correct_train: correct the training shares too (False when they come from ground truth).

    Returns:
        A JSON-ready dict: every aggregate in :data:`AGGREGATES` with ``<name>_ci``, ``n_occupations``,
        ``per_occupation`` rows, ``unmatched`` names, ``dropped`` occupations (no confident image on a
        side), and ``corrected`` when ``confusion`` is given.
    """
    train_counts = _with_abstain(train_counts)
    gen_counts = _with_abstain(gen_counts)
    train_names, gen_names = set(train_counts["occupation"]), set(gen_counts["occupation"])
    joined = train_counts.join(gen_counts, on="occupation", suffix="_gen").sort("occupation")
    train = _counts_array(joined)
    gen = np.stack([joined[f"n_{label}_gen"].to_numpy().astype(np.int64) for label in LABELS], axis=1)
    share_train = share_female(train[:, 0], train[:, 1])
    share_gen = share_female(gen[:, 0], gen[:, 1])
    keep = ~(np.isnan(share_train) | np.isnan(share_gen))
    names = joined["occupation"].to_list()

    rng = np.random.default_rng(seed)
    boot_train = _bootstrap_shares(train, n_boot, rng)
    boot_gen = _bootstrap_shares(gen, n_boot, rng)

    def table(st: np.ndarray, sg: np.ndarray, bt: np.ndarray, bg: np.ndarray) -> dict[str, Any]:
        out: dict[str, Any] = {}
        point = _aggregates(st[keep], sg[keep]) if keep.any() else {k: np.nan for k in AGGREGATES}
        # Replicates where an occupation lost all confident images are dropped from the interval.
        boot = _aggregates(bt[:, keep], bg[:, keep]) if keep.any() else {k: np.full(n_boot, np.nan) for k in AGGREGATES}
        for name in AGGREGATES:
            out[name] = _float(point[name])
            out[f"{name}_ci"] = _interval(np.asarray(boot[name], float))
        out["n_occupations"] = int(keep.sum())
        rows = []
        for i, occupation in enumerate(names):
            rows.append({
                "occupation": occupation,
                "n_female_train": int(train[i, 0]), "n_male_train": int(train[i, 1]), "n_abstain_train": int(train[i, 2]),
                "n_female_gen": int(gen[i, 0]), "n_male_gen": int(gen[i, 1]), "n_abstain_gen": int(gen[i, 2]),
                "share_train": _float(st[i]), "share_train_ci": _interval(bt[:, i]),
                "share_gen": _float(sg[i]), "share_gen_ci": _interval(bg[:, i]),
                "abstain_rate_train": _float(abstain_rate(*train[i])),
                "abstain_rate_gen": _float(abstain_rate(*gen[i])),
                "difference": _float(sg[i] - st[i]),
            })
        out["per_occupation"] = rows
        return out

    result = table(share_train, share_gen, boot_train, boot_gen)
    result["unmatched"] = {"train_only": sorted(train_names - gen_names), "gen_only": sorted(gen_names - train_names)}
    result["dropped"] = [n for n, k in zip(names, keep) if not k]
    if confusion is not None:
        tpr, fpr = confusion["tpr"], confusion["fpr"]

        def correct(shares: np.ndarray) -> np.ndarray:
            with np.errstate(invalid="ignore"):
                return np.where(np.isnan(shares), np.nan, corrected_share(np.nan_to_num(shares), tpr, fpr))

        ct = correct(share_train) if correct_train else share_train
        cbt = correct(boot_train) if correct_train else boot_train
        result["corrected"] = table(ct, correct(share_gen), cbt, correct(boot_gen))
        result["corrected"]["confusion"] = {"tpr": tpr, "fpr": fpr, "train_corrected": correct_train}
    return result


def _with_abstain(counts: pl.DataFrame) -> pl.DataFrame:
    for column in ("occupation", "n_female", "n_male"):
        if column not in counts.columns:
            raise ValueError(f"count table has no {column!r} column")
    if "n_abstain" not in counts.columns:
        counts = counts.with_columns(pl.lit(0, dtype=pl.Int64).alias("n_abstain"))
    return counts.select("occupation", "n_female", "n_male", "n_abstain")
