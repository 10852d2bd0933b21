"""The amplification table: generated against training counts, with intervals, the estimands
(:mod:`biasloop.metrics.estimands`), per-occupation rows and the misclassification-corrected table."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from biasloop.core.io import json_float
from biasloop.core.labels import LABELS
from biasloop.metrics import correction, estimands
from biasloop.metrics.amplification.resampling import (
    AGGREGATES,
    NOISE_FLOORED,
    _nan_quantiles,
    bootstrap_shares,
    null_shares,
    summarize_aggregates,
)
from biasloop.metrics.amplification.shares import (
    _validated_counts,
    abstain_rate,
    corrected_share,
    share_female,
)

log = logging.getLogger(__name__)

ALIASES = {
    "bias_amp": "shift_to_majority (BiasAmp, Zhao et al. 2017, with two groups)",
    "mad_gen - mad_train": "amplification_dir",
}


def _interval_pair(lo: Any, hi: Any) -> list[float | None]:
    return [json_float(lo), json_float(hi)]


def _table(
    names: list[str],
    train: np.ndarray,
    gen: np.ndarray,
    shares: tuple[np.ndarray, np.ndarray],
    boot: tuple[np.ndarray, np.ndarray],
    null: tuple[np.ndarray, np.ndarray],
    keep: np.ndarray,
    parts: dict[str, Any],
) -> dict[str, Any]:
    """Aggregates over the kept occupations with intervals, the estimands, and per-occupation rows (all
    occupations). ``parts``: the caller's ``gap`` (``estimate``/``lo``/``hi``/``kind``) and ``shift``
    (``lo``/``hi``/``kind``/``n_unclear_majority``); empty when no occupation is kept."""
    share_train, share_gen = shares
    out: dict[str, Any] = {}
    stats = (
        summarize_aggregates(
            share_train[keep], share_gen[keep], boot[0][:, keep], boot[1][:, keep], null[0][:, keep], null[1][:, keep]
        )
        if keep.any()
        else {}
    )
    value = lambda key: json_float(stats[key]) if key in stats else None  # noqa: E731
    for name in AGGREGATES:
        out[name] = value(name)
        if name in NOISE_FLOORED:
            suffix = NOISE_FLOORED[name]
            out[f"noise_floor_{suffix}"] = value(f"noise_floor_{suffix}")
            out[f"excess_{suffix}"] = value(f"excess_{suffix}")
            out[f"excess_{suffix}_ci"] = [value(f"excess_{suffix}_lo"), value(f"excess_{suffix}_hi")]
            out[f"p_value_{suffix}"] = value(f"p_value_{suffix}")
            out[f"p_value_{suffix}_is_bound"] = bool(stats.get(f"p_value_{suffix}_is_bound", False))
        else:
            out[f"{name}_ci"] = [value(f"{name}_lo"), value(f"{name}_hi")]
    out["n_occupations"] = int(keep.sum())
    out["n_boot"] = int(boot[0].shape[0])
    out["estimands"] = _estimands_entry(out, stats, parts)
    for side, counts in (("train", train), ("gen", gen)):
        out[f"n_images_{side}"] = int(counts[keep].sum())
        out[f"n_confident_{side}"] = int(counts[keep, :2].sum())
    out["per_occupation"] = _per_occupation_rows(names, train, gen, shares, boot)
    return out


def _estimands_entry(out: dict[str, Any], stats: dict[str, Any], parts: dict[str, Any]) -> dict[str, Any]:
    """The table's ``estimands``: the shift and the gap with intervals and p-values, and ``a_abs_raw``."""
    value = lambda key: json_float(stats[key]) if key in stats else None  # noqa: E731
    gap, shift = parts.get("gap", {}), parts.get("shift")
    return {
        "shift": {
            "estimate": out["shift_to_majority"],
            "ci": [json_float(shift["lo"]), json_float(shift["hi"])] if shift else [None, None],
            "p_value": value("p_value_shift"),
            "p_value_is_bound": bool(stats.get("p_value_shift_is_bound", False)),
            "n_boot": out["n_boot"],
            "kind": shift["kind"] if shift else None,
            # occupations whose training majority is unclear, counted both ways in the interval
            "n_unclear_majority": int(shift["n_unclear_majority"]) if shift else None,
        },
        # The gap is 0 exactly under the null "equal shares in every occupation" that p_value_abs tests.
        "gap": {
            "estimate": json_float(gap.get("estimate", np.nan)),
            "ci": [json_float(gap.get("lo", np.nan)), json_float(gap.get("hi", np.nan))],
            "p_value": out["p_value_abs"],
            "p_value_is_bound": out["p_value_abs_is_bound"],
            "kind": gap.get("kind"),
        },
        "a_abs_raw": out["amplification_abs"],
    }


def _per_occupation_rows(
    names: list[str],
    train: np.ndarray,
    gen: np.ndarray,
    shares: tuple[np.ndarray, np.ndarray],
    boot: tuple[np.ndarray, np.ndarray],
) -> list[dict[str, Any]]:
    """One row per occupation: counts, shares with 95% percentile intervals, abstain rates, difference."""
    share_train, share_gen = shares
    lo_train, hi_train = _nan_quantiles(np.moveaxis(boot[0], 0, -1), (2.5, 97.5))
    lo_gen, hi_gen = _nan_quantiles(np.moveaxis(boot[1], 0, -1), (2.5, 97.5))
    abstain_train, abstain_gen = abstain_rate(*train.T), abstain_rate(*gen.T)
    return [
        {
            "occupation": occupation,
            "n_female_train": int(train[i, 0]),
            "n_male_train": int(train[i, 1]),
            "n_abstain_train": int(train[i, 2]),
            "n_female_gen": int(gen[i, 0]),
            "n_male_gen": int(gen[i, 1]),
            "n_abstain_gen": int(gen[i, 2]),
            "share_train": json_float(share_train[i]),
            "share_train_ci": _interval_pair(lo_train[i], hi_train[i]),
            "share_gen": json_float(share_gen[i]),
            "share_gen_ci": _interval_pair(lo_gen[i], hi_gen[i]),
            "abstain_rate_train": json_float(np.atleast_1d(abstain_train)[i]),
            "abstain_rate_gen": json_float(np.atleast_1d(abstain_gen)[i]),
            "difference": json_float(share_gen[i] - share_train[i]),
        }
        for i, occupation in enumerate(names)
    ]


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
        n_boot: bootstrap replicates (0: no intervals and no noise floor). Images are redrawn within
            each occupation (multinomial over female/male/abstain with the observed n), train and gen
            independently; the null draws as many replicates (:func:`null_shares`).
        seed: seed of ``numpy.random.default_rng`` for the bootstrap; equal seeds give equal results.
        confusion: the instrument's ``{"tpr": .., "fpr": ..}``, taken as exact, or with ``"counts"``
            (:func:`read_confusion`), redrawn in each replicate; adds a ``corrected`` table.
        correct_train: correct the training shares as well as the generated ones (False when the
            training counts come from ground truth rather than from the instrument).

    Returns:
        A JSON-ready dict (python floats; None where undefined), all values fractions:
        ``estimands`` = {"shift": {"estimate", "ci", "p_value", "p_value_is_bound", "n_boot", "kind",
        "n_unclear_majority"}, "gap": {"estimate", "ci", "p_value", "p_value_is_bound", "kind"},
        "a_abs_raw"} (:mod:`biasloop.metrics.estimands`, ``docs/estimands.md``: the headline numbers;
        the shift's p-value is two-sided against the null draws, the gap's is ``p_value_abs``);
        ``aliases`` (:data:`ALIASES`: names not repeated as keys); ``amplification_abs`` and
        ``amplification_dir`` each with ``noise_floor_<s>``, ``excess_<s>``, ``excess_<s>_ci`` (95%)
        and ``p_value_<s>`` with ``p_value_<s>_is_bound`` (``s`` = ``abs``/``dir``;
        :func:`excess_over_noise`, diagnostics); ``shift_to_majority``, ``mad_train``, ``mad_gen``,
        ``pearson``, each with ``<name>_ci`` = [lo, hi] (95% percentile interval); ``n_occupations`` (occupations in the aggregates), ``n_boot``, ``n_images_<side>``
        and ``n_confident_<side>`` (images and confidently labelled images over those occupations,
        side = train/gen); ``per_occupation`` rows (counts,
        shares with intervals, abstain rates, ``difference`` = share_gen - share_train) for every
        matched occupation; ``unmatched`` = {"train_only": [..], "gen_only": [..]}; ``dropped``:
        matched occupations left out of the aggregates because a side has no confident image;
        ``occupations_left_out``: the unmatched and dropped names together (occupations of either
        file that the aggregates do not cover, e.g. one no training caption mentions); and,
        with ``confusion``, ``corrected``: the same aggregates and rows on corrected shares, plus
        ``confusion`` = {"tpr", "fpr", "train_corrected", "uncertainty": "fixed" | "bootstrapped"[,
        "counts"]}; its gap interval also covers the rates' uncertainty when counts are given.

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
    rng = np.random.default_rng(seed)
    boot = (bootstrap_shares(train, n_boot, rng), bootstrap_shares(gen, n_boot, rng))
    null = null_shares(train, gen, n_boot, rng)
    unmatched = {"train_only": sorted(train_names - gen_names), "gen_only": sorted(gen_names - train_names)}
    return table_from_draws(
        names, train, gen, boot, null, rng=rng, confusion=confusion, correct_train=correct_train, unmatched=unmatched
    )


def _estimand_parts(
    train: np.ndarray,
    gen: np.ndarray,
    keep: np.ndarray,
    phi: np.ndarray | None,
    shares: tuple[np.ndarray, np.ndarray],
    boot: tuple[np.ndarray, np.ndarray],
) -> dict[str, Any]:
    """The gap and the shift's interval over the kept occupations (:mod:`.estimands`): adjusted Wald
    for independent sides, the pair bootstrap with fixed majorities for pairs."""
    if not keep.any():
        return {}
    kept_phi = None if phi is None else phi[keep]
    gap = estimands.gap_from_counts(train[keep], gen[keep], phi=kept_phi)
    if phi is None:
        shift = estimands.shift_interval(train[keep], gen[keep])
        return {
            "gap": {**gap, "kind": estimands.GAP_KIND_INDEPENDENT},
            "shift": {**shift, "kind": estimands.SHIFT_KIND_WALD},
        }
    unclear = estimands.unclear_majority(train[keep])
    lo, hi = estimands.shift_bootstrap_interval(
        shares[0][keep], shares[1][keep], boot[0][:, keep], boot[1][:, keep], unclear
    )
    return {
        "gap": {**gap, "kind": estimands.GAP_KIND_PAIRED},
        "shift": {"lo": lo, "hi": hi, "kind": estimands.SHIFT_KIND_PAIRED, "n_unclear_majority": unclear.sum()},
    }


def table_from_draws(
    names: list[str],
    train: np.ndarray,
    gen: np.ndarray,
    boot: tuple[np.ndarray, np.ndarray],
    null: tuple[np.ndarray, np.ndarray],
    *,
    rng: np.random.Generator,
    confusion: dict[str, Any] | None = None,
    correct_train: bool = True,
    phi: np.ndarray | None = None,
    unmatched: dict[str, list[str]] | None = None,
) -> dict[str, Any]:
    """:func:`amplification_table`'s dict from counts and replicate shares drawn by the caller.

    Args:
        names: occupation names, one per row of the counts.
        train, gen: ``(occupations, 3)`` female/male/abstain counts.
        boot: ``(n_boot, occupations)`` bootstrap shares of each side.
        null: ``(n_boot, occupations)`` shares of each side drawn under the null.
        rng: the generator that drew them; it goes on to draw the confusion rates.
        confusion: ``{"tpr", "fpr"}`` (rates taken as exact) or with ``"counts"`` (held-out counts,
            :func:`read_confusion`: rates redrawn in each replicate); adds ``corrected``.
        correct_train: correct the training side too.
        phi: ``(occupations,)`` within-pair correlations when the two sides are paired, else None.
        unmatched: occupations of one side only (reported, not analysed).
    """
    share_train = np.asarray(share_female(train[:, 0], train[:, 1]), float).reshape(-1)
    share_gen = np.asarray(share_female(gen[:, 0], gen[:, 1]), float).reshape(-1)
    keep = ~(np.isnan(share_train) | np.isnan(share_gen))
    result: dict[str, Any] = {"aliases": dict(ALIASES)}
    result.update(
        _table(
            names,
            train,
            gen,
            (share_train, share_gen),
            boot,
            null,
            keep,
            _estimand_parts(train, gen, keep, phi, (share_train, share_gen), boot),
        )
    )
    result["unmatched"] = unmatched or {"train_only": [], "gen_only": []}
    result["dropped"] = [name for name, kept in zip(names, keep) if not kept]
    result["occupations_left_out"] = sorted(
        {*result["unmatched"]["train_only"], *result["unmatched"]["gen_only"], *result["dropped"]}
    )
    if confusion is not None:
        result["corrected"] = _corrected_table(
            names, train, gen, (share_train, share_gen), boot, null, keep, rng, confusion, correct_train, phi
        )
        result["corrected"]["occupations_left_out"] = result["occupations_left_out"]
        result["corrected"]["confusion"] = _confusion_entry(confusion, correct_train, boot[0].shape[0])
    return result


def _corrected_table(
    names: list[str],
    train: np.ndarray,
    gen: np.ndarray,
    shares: tuple[np.ndarray, np.ndarray],
    boot: tuple[np.ndarray, np.ndarray],
    null: tuple[np.ndarray, np.ndarray],
    keep: np.ndarray,
    rng: np.random.Generator,
    confusion: dict[str, Any],
    correct_train: bool,
    phi: np.ndarray | None,
) -> dict[str, Any]:
    """:func:`_table` on shares corrected for the instrument's confusion rates (``tpr``, ``fpr``)."""
    tpr, fpr = float(confusion["tpr"]), float(confusion["fpr"])
    corrected_share(0.5, tpr, fpr)  # raises unless tpr > fpr
    counts, n_boot = correction.confusion_counts(confusion), boot[0].shape[0]
    # Each replicate (bootstrap and null alike) is corrected with its own draw of the rates, so the
    # intervals carry the uncertainty of rates measured on a few hundred held-out images.
    tpr_draws, fpr_draws = correction.confusion_rate_draws(counts, n_boot, rng) if counts and n_boot else (tpr, fpr)
    rates = (np.reshape(tpr_draws, (-1, 1)), np.reshape(fpr_draws, (-1, 1)))

    def correct(shares: np.ndarray, side_corrected: bool = True, replicate_rates: bool = True) -> np.ndarray:
        if not side_corrected:
            return shares
        return estimands.correct_shares(shares, *(rates if replicate_rates else (tpr, fpr)))

    share_train, share_gen = shares
    corrected_shares = (correct(share_train, correct_train, False), correct(share_gen, True, False))
    corrected_boot = (correct(boot[0], correct_train), correct(boot[1]))
    parts = (
        _corrected_parts(train, gen, keep, corrected_shares, corrected_boot, confusion, correct_train, phi)
        if keep.any()
        else {}
    )
    return _table(
        names,
        train,
        gen,
        corrected_shares,
        corrected_boot,
        (correct(null[0], correct_train), correct(null[1])),
        keep,
        parts,
    )


def _corrected_parts(
    train: np.ndarray,
    gen: np.ndarray,
    keep: np.ndarray,
    corrected_shares: tuple[np.ndarray, np.ndarray],
    corrected_boot: tuple[np.ndarray, np.ndarray],
    confusion: dict[str, Any],
    correct_train: bool,
    phi: np.ndarray | None,
) -> dict[str, Any]:
    """The corrected table's gap (debiased, its interval from :func:`biasloop.metrics.correction.corrected_gap_interval`)
    and shift interval (bootstrap with fixed majorities) over the kept occupations."""
    tpr, fpr = float(confusion["tpr"]), float(confusion["fpr"])
    n_boot = corrected_boot[0].shape[0]
    difference = corrected_shares[1][keep] - corrected_shares[0][keep]
    variance = (
        np.nanvar(corrected_boot[1][:, keep] - corrected_boot[0][:, keep], axis=0, ddof=1)
        if n_boot > 1
        else np.zeros_like(difference)
    )
    lo, hi = correction.corrected_gap_interval(
        train[keep], gen[keep], confusion, correct_train, phi=None if phi is None else phi[keep]
    )
    gap = {
        "estimate": np.mean(estimands.debiased_abs(difference, variance)),
        "lo": lo,
        "hi": hi,
        "kind": estimands.GAP_KIND_CORRECTED,
    }
    unclear = estimands.unclear_majority(train[keep], rates=(tpr, fpr) if correct_train else None)
    shift_lo, shift_hi = estimands.shift_bootstrap_interval(
        corrected_shares[0][keep],
        corrected_shares[1][keep],
        corrected_boot[0][:, keep],
        corrected_boot[1][:, keep],
        unclear,
    )
    return {
        "gap": gap,
        "shift": {
            "lo": shift_lo,
            "hi": shift_hi,
            "n_unclear_majority": unclear.sum(),
            "kind": estimands.SHIFT_KIND_PAIRED if phi is not None else estimands.SHIFT_KIND_BOOTSTRAP,
        },
    }


def _confusion_entry(confusion: dict[str, Any], correct_train: bool, n_boot: int) -> dict[str, Any]:
    """The corrected table's ``confusion``: the rates, whether training was corrected, their uncertainty."""
    counts = correction.confusion_counts(confusion)
    entry = {
        "tpr": float(confusion["tpr"]),
        "fpr": float(confusion["fpr"]),
        "train_corrected": bool(correct_train),
        "uncertainty": "bootstrapped" if counts and n_boot else "fixed",
    }
    if counts:
        entry["counts"] = counts
    return entry


def read_confusion(path: str | Path) -> dict[str, Any] | None:
    """The instrument's ``{"tpr", "fpr"}`` from its metrics file, with ``"counts"`` (its held-out
    ``confusion`` counts, :func:`biasloop.metrics.correction.confusion_counts`) when the file has them, so
    that :func:`amplification_table` redraws the rates in each replicate; None when unknown or unusable."""
    metrics = json.loads(Path(path).read_text())
    tpr, fpr = metrics.get("tpr"), metrics.get("fpr")
    if tpr is None or fpr is None or tpr <= fpr:
        log.warning("instrument confusion rates unknown or unusable (tpr=%s, fpr=%s): no correction", tpr, fpr)
        return None
    confusion: dict[str, Any] = {"tpr": float(tpr), "fpr": float(fpr)}
    counts = correction.confusion_counts({"counts": metrics.get("confusion")})
    if counts is not None:
        confusion["counts"] = counts
    return confusion
