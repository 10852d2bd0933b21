"""Attributable amplification: a pairing's measured shift split into data, generator and instrument.

Minority genders are marked more often in captions ("a male nurse"), so a generator that learned its
training distribution perfectly, asked a neutral prompt, reproduces the share of women among the
selection's *unmarked* captions (gender indicator ``none``), not among all of them: the **ideal
learner**. With shares of women per occupation ``o``

- ``F_train_meas``, ``F_gen_meas``: the instrument's confident labels of the training / generated images;
- ``F_train_true``: the training images' ``true_gender``;
- ``F_ideal``: ``true_gender`` of the training images whose caption has no gender indicator;
- ``F_gen_oracle``: the hue oracle's confident labels of the generated images
  (:func:`biasloop.data.hues.oracle_labels`);

and the weights ``s_o = sign(F_train_meas(o) - 1/2)`` of the measured shift (DESIGN.md, "What a number
means"), the measured shift ``mean_o s_o (F_gen_meas - F_train_meas)`` is, exactly,

- (a) ``data       = mean_o s_o (F_ideal - F_train_true)``: the ideal learner's own shift;
- (b) ``generator  = mean_o s_o (F_gen_oracle - F_ideal)``: what the generator adds to the ideal learner;
- (c) ``instrument = mean_o s_o [(F_gen_meas - F_gen_oracle) - (F_train_meas - F_train_true)]``: the
  instrument's error on the generated side minus its error on the training side.

For a paired pairing (captions as prompts: each generated image comes from one training image's caption)
the ideal learner given the caption reproduces that image, so ``F_ideal = F_train_true`` and (a) is 0 by
construction. Without ground truth (a LAION corpus: no ``true_gender``, no oracle) (a) is read from the
instrument's labels (unmarked vs. all selected training images) and (b) and (c) are one term,
``generator_and_instrument``.

Each term has a 95% percentile bootstrap interval (Efron & Tibshirani 1993, ch. 13): training images are
resampled within occupation with their measured, true and indicator columns together, generated images
within occupation with their measured and oracle labels together (a paired pairing resamples whole
pairs); the weights ``s_o`` stay at their observed values, so every replicate's terms also sum exactly.
:func:`instrument_agreement` is the instrument checked against the oracle on generated images.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import polars as pl

TRUTH_TERMS = ("data", "generator", "instrument")
NO_TRUTH_TERMS = ("data", "generator_and_instrument")
NO_TRUTH_REASON = {
    "train": "the training images have no true_gender (not the glyph world): (a) is read from instrument labels, "
    "(b) and (c) are reported together",
    "oracle": "the generated images have no oracle_label (the corpus is not the glyph world): (a) is read from "
    "instrument labels, (b) and (c) are reported together",
}
# Row sums a share needs, per side: name -> (numerator column, denominator column).
_TRAIN_SHARES = {
    "train_measured": ("meas_female", "meas_confident"),
    "train_true": ("true_female", "true_known"),
    "ideal_true": ("unmarked_true_female", "unmarked_true_known"),
    "ideal_measured": ("unmarked_meas_female", "unmarked_meas_confident"),
}
_GEN_SHARES = {"gen_measured": ("meas_female", "meas_confident"), "gen_oracle": ("oracle_female", "oracle_confident")}
# The 0/1 columns of one image whose sums over an occupation's images give those shares (and counts).
_TRAIN_NAMES = [
    "meas_female",
    "meas_confident",
    "true_female",
    "true_known",
    "unmarked",
    "unmarked_true_female",
    "unmarked_true_known",
    "unmarked_meas_female",
    "unmarked_meas_confident",
    "n",
]
_GEN_NAMES = ["meas_female", "meas_confident", "oracle_female", "oracle_confident", "n"]


def _train_columns(train: pl.DataFrame) -> np.ndarray:
    """Per training image, the 0/1 columns :data:`_TRAIN_NAMES` (float ``(n_images, len(_TRAIN_NAMES))``)."""
    label = pl.col("label")
    truth = pl.col("true_gender") if "true_gender" in train.columns else pl.lit(None, dtype=pl.String)
    unmarked = (pl.col("indicator") == "none").fill_null(False) if "indicator" in train.columns else pl.lit(False)
    frame = train.select(
        meas_female=label == "female",
        meas_confident=label.is_in(["female", "male"]),
        true_female=(truth == "female").fill_null(False),
        true_known=truth.is_in(["female", "male"]).fill_null(False),
        unmarked=unmarked,
    ).with_columns(
        unmarked_true_female=pl.col("true_female") & pl.col("unmarked"),
        unmarked_true_known=pl.col("true_known") & pl.col("unmarked"),
        unmarked_meas_female=pl.col("meas_female") & pl.col("unmarked"),
        unmarked_meas_confident=pl.col("meas_confident") & pl.col("unmarked"),
        n=pl.lit(True),
    )
    return frame.select(_TRAIN_NAMES).to_numpy().astype(np.float64)


def _gen_columns(generated: pl.DataFrame) -> np.ndarray:
    """Per generated image, the 0/1 columns :data:`_GEN_NAMES`."""
    label = pl.col("label")
    oracle = pl.col("oracle_label") if "oracle_label" in generated.columns else pl.lit(None, dtype=pl.String)
    frame = generated.select(
        meas_female=label == "female",
        meas_confident=label.is_in(["female", "male"]),
        oracle_female=(oracle == "female").fill_null(False),
        oracle_confident=oracle.is_in(["female", "male"]).fill_null(False),
        n=pl.lit(True),
    )
    return frame.select(_GEN_NAMES).to_numpy().astype(np.float64)


def _shares(sums: np.ndarray, names: list[str], spec: dict[str, tuple[str, str]]) -> dict[str, np.ndarray]:
    """Shares from row sums ``(..., k)``: nan where the denominator is 0."""
    out = {}
    for share, (numerator, denominator) in spec.items():
        top, bottom = sums[..., names.index(numerator)], sums[..., names.index(denominator)]
        with np.errstate(invalid="ignore", divide="ignore"):
            out[share] = np.where(bottom > 0, top / np.where(bottom > 0, bottom, 1.0), np.nan)
    return out


def decomposition_terms(
    shares: dict[str, np.ndarray], sign: np.ndarray, ground_truth: bool, paired: bool
) -> dict[str, Any]:
    """The terms of the decomposition from per-occupation shares (last axis: occupations).

    Args:
        shares: ``train_measured``, ``gen_measured`` and, with ground truth, ``train_true``, ``ideal_true``,
            ``gen_oracle``; without, ``ideal_measured`` (arrays ``(..., n_occupations)``, fractions).
        sign: ``s_o = sign(F_train_meas(o) - 1/2)`` per occupation, held fixed.
        ground_truth: use the truth terms (a, b, c) or the instrument-only ones (a, b + c).
        paired: the ideal learner reproduces each pair's training image (``F_ideal = F_train_true``, or
            ``F_train_meas`` without truth), so (a) is 0.

    Returns:
        ``measured``, the terms (fractions; ``mean_o`` over the last axis) and ``ideal_gap``
        (``mean_o |F_ideal - F_train|``, the ideal learner's gap).
    """
    train_measured, gen_measured = shares["train_measured"], shares["gen_measured"]
    out = {"measured": np.mean(sign * (gen_measured - train_measured), axis=-1)}
    if ground_truth:
        train_true, gen_oracle = shares["train_true"], shares["gen_oracle"]
        ideal = train_true if paired else shares["ideal_true"]
        out["data"] = np.mean(sign * (ideal - train_true), axis=-1)
        out["generator"] = np.mean(sign * (gen_oracle - ideal), axis=-1)
        out["instrument"] = np.mean(sign * ((gen_measured - gen_oracle) - (train_measured - train_true)), axis=-1)
        out["ideal_gap"] = np.mean(np.abs(ideal - train_true), axis=-1)
    else:
        ideal = train_measured if paired else shares["ideal_measured"]
        out["data"] = np.mean(sign * (ideal - train_measured), axis=-1)
        out["generator_and_instrument"] = np.mean(sign * (gen_measured - ideal), axis=-1)
        out["ideal_gap"] = np.mean(np.abs(ideal - train_measured), axis=-1)
    return out


def _interval(values: np.ndarray) -> list[float | None]:
    values = values[np.isfinite(values)]
    if not len(values):
        return [None, None]
    lo, hi = np.percentile(values, [2.5, 97.5])
    return [float(lo), float(hi)]


def decompose(
    train: pl.DataFrame, generated: pl.DataFrame, paired: bool = False, n_boot: int = 1000, seed: int = 0
) -> dict[str, Any]:
    """The decomposition of one pairing's measured shift (see the module docstring), with intervals.

    Args:
        train: the pairing's training images, ``occupation, label`` (instrument: ``female``/``male``/
            ``abstain``) and, where known, ``true_gender`` and ``indicator`` (the caption's gender
            indicator from the retrieve stage: ``none`` when unmarked).
        generated: the pairing's generated images, ``occupation, label`` and, in the glyph world,
            ``oracle_label`` (:func:`biasloop.data.hues.oracle_labels`).
        paired: ``train`` and ``generated`` are aligned pairs, one row each (captions as prompts:
            :func:`biasloop.metrics.paradox.paired_by_source`); pairs are resampled whole and (a) is 0.
        n_boot: bootstrap replicates (0: no intervals).
        seed: seed of the bootstrap draws (``stream_seed(base.seed, "decomposition-bootstrap", ...)``).

    Returns:
        ``{"decomposition": {...}, "ideal": {...}}``. ``decomposition`` holds ``ground_truth`` (bool), a
        one-line ``reason`` when false, ``paired``, ``measured`` and each term as ``{"estimate", "ci"}``
        (fractions; ``data``, ``generator``, ``instrument`` with ground truth, else ``data`` and
        ``generator_and_instrument``), ``sum_of_terms``, ``occupations`` / ``occupations_left_out`` (an
        occupation missing any share is left out of every term), ``per_occupation`` rows (shares, counts,
        weight ``sign`` and each term's contribution), ``n_boot`` and ``n_boot_dropped`` (replicates
        where a resampled occupation lost a share). ``ideal`` holds the ideal learner's ``shift`` (= the
        data term) and ``gap`` (``mean_o |F_ideal - F_train|``, plug-in, biased upwards like any mean of
        absolute differences), the ``basis`` of ``F_ideal`` and a ``note``.
    """
    if paired and len(train) != len(generated):
        raise ValueError(f"paired decomposition: {len(train)} training rows for {len(generated)} generated rows")
    has_true = "true_gender" in train.columns and train["true_gender"].is_in(["female", "male"]).any()
    has_oracle = "oracle_label" in generated.columns and generated["oracle_label"].is_not_null().any()
    ground_truth = bool(has_true and has_oracle)
    reason = None if ground_truth else NO_TRUTH_REASON["train" if not has_true else "oracle"]
    has_indicator = "indicator" in train.columns and train["indicator"].is_not_null().any()
    if not paired and not has_indicator:
        return _unavailable("the training images have no caption indicator column")
    specs = _share_specs(ground_truth, paired)

    candidates = sorted(set(train["occupation"].unique().to_list()) | set(generated["occupation"].unique().to_list()))
    train_rows = [_train_columns(train.filter(pl.col("occupation") == o)) for o in candidates]
    gen_rows = [_gen_columns(generated.filter(pl.col("occupation") == o)) for o in candidates]
    sums_t = np.stack([r.sum(axis=0) if len(r) else np.zeros(len(_TRAIN_NAMES)) for r in train_rows])
    sums_g = np.stack([r.sum(axis=0) if len(r) else np.zeros(len(_GEN_NAMES)) for r in gen_rows])
    shares = {**_shares(sums_t, _TRAIN_NAMES, specs[0]), **_shares(sums_g, _GEN_NAMES, specs[1])}
    complete = np.all(np.isfinite(np.stack(list(shares.values()))), axis=0)
    keep = np.flatnonzero(complete)
    occupations = [candidates[i] for i in keep]
    if not occupations:
        return _unavailable("no occupation has every share", ground_truth=ground_truth)
    shares = {k: v[keep] for k, v in shares.items()}
    sign = np.sign(shares["train_measured"] - 0.5)
    point = decomposition_terms(shares, sign, ground_truth, paired)
    terms = TRUTH_TERMS if ground_truth else NO_TRUTH_TERMS
    rows = [(train_rows[i], gen_rows[i]) for i in keep]
    replicates, dropped = _bootstrap_terms(rows, specs, sign, ground_truth, paired, n_boot, seed)

    def summary(name: str) -> dict[str, Any]:
        return {"estimate": float(point[name]), "ci": _interval(replicates[name]) if replicates else [None, None]}

    per_occupation = _per_occupation_rows(occupations, shares, sign, (sums_t[keep], sums_g[keep]), ground_truth, paired)
    decomposition: dict[str, Any] = {
        "available": True,
        "ground_truth": ground_truth,
        "reason": reason,
        "paired": paired,
        "measured": summary("measured"),
        **{name: summary(name) for name in terms},
        "sum_of_terms": float(sum(point[name] for name in terms)),
        "occupations": occupations,
        "occupations_left_out": [o for o in candidates if o not in occupations],
        "per_occupation": per_occupation,
        "n_boot": n_boot,
        "n_boot_dropped": dropped,
    }
    ideal = _ideal_entry(per_occupation, ground_truth, paired, summary("data"), summary("ideal_gap"))
    return {"decomposition": decomposition, "ideal": ideal}


def _unavailable(reason: str, **flags: Any) -> dict[str, Any]:
    """:func:`decompose`'s result when it cannot decompose: why, and no ideal learner."""
    return {"decomposition": {"available": False, **flags, "reason": reason}, "ideal": None}


def _share_specs(ground_truth: bool, paired: bool) -> tuple[dict[str, Any], dict[str, Any]]:
    """The training and generated shares the decomposition needs (of :data:`_TRAIN_SHARES`, :data:`_GEN_SHARES`)."""
    train_spec = {
        k: v
        for k, v in _TRAIN_SHARES.items()
        if k == "train_measured"
        or (ground_truth and k in ("train_true", "ideal_true"))
        or (not ground_truth and k == "ideal_measured")
    }
    gen_spec = {k: v for k, v in _GEN_SHARES.items() if ground_truth or k == "gen_measured"}
    if paired:  # the ideal share is the training share itself: no unmarked subset is needed
        train_spec = {k: v for k, v in train_spec.items() if not k.startswith("ideal")}
    return train_spec, gen_spec


def _bootstrap_terms(
    rows: list[tuple[np.ndarray, np.ndarray]],
    specs: tuple[dict[str, Any], dict[str, Any]],
    sign: np.ndarray,
    ground_truth: bool,
    paired: bool,
    n_boot: int,
    seed: int,
) -> tuple[dict[str, np.ndarray], int]:
    """Bootstrap replicates of every term, images resampled within each kept occupation (pairs whole).

    ``rows``: per kept occupation, its training and generated image columns. Returns the replicates (nan
    where a resampled occupation lost a share) and how many replicates were dropped so; ``({}, 0)`` when
    ``n_boot`` is 0.
    """
    if n_boot <= 0:
        return {}, 0
    rng = np.random.default_rng(seed)
    boot_t = np.empty((n_boot, len(rows), len(_TRAIN_NAMES)))
    boot_g = np.empty((n_boot, len(rows), len(_GEN_NAMES)))
    for j, (train_rows, gen_rows) in enumerate(rows):
        if paired:  # a pair's two rows are one resampling unit
            unit = np.concatenate([train_rows, gen_rows], axis=1)
            n = len(unit)
            weights = rng.multinomial(n, np.full(n, 1.0 / n), size=n_boot).astype(np.float64)
            both = weights @ unit
            boot_t[:, j], boot_g[:, j] = both[:, : len(_TRAIN_NAMES)], both[:, len(_TRAIN_NAMES) :]
            continue
        for side_rows, out in ((train_rows, boot_t), (gen_rows, boot_g)):
            n = len(side_rows)
            weights = rng.multinomial(n, np.full(n, 1.0 / n), size=n_boot).astype(np.float64)
            out[:, j] = weights @ side_rows
    boot_shares = {**_shares(boot_t, _TRAIN_NAMES, specs[0]), **_shares(boot_g, _GEN_NAMES, specs[1])}
    replicates = decomposition_terms(boot_shares, sign, ground_truth, paired)
    terms = TRUTH_TERMS if ground_truth else NO_TRUTH_TERMS
    finite = np.all(np.isfinite(np.stack([replicates[k] for k in ("measured", *terms)])), axis=0)
    return {k: np.where(finite, v, np.nan) for k, v in replicates.items()}, int((~finite).sum())


def _per_occupation_rows(
    occupations: list[str],
    shares: dict[str, np.ndarray],
    sign: np.ndarray,
    sums: tuple[np.ndarray, np.ndarray],
    ground_truth: bool,
    paired: bool,
) -> list[dict[str, Any]]:
    """One row per kept occupation: its shares, counts, weight ``sign`` and each term's contribution."""
    sums_t, sums_g = sums
    terms = TRUTH_TERMS if ground_truth else NO_TRUTH_TERMS
    per_occupation = []
    for j, occupation in enumerate(occupations):
        row: dict[str, Any] = {"occupation": occupation, "sign": float(sign[j])}
        row.update({f"share_{k}": float(v[j]) for k, v in shares.items()})
        row.update(
            n_train=int(sums_t[j, _TRAIN_NAMES.index("n")]),
            n_train_confident=int(sums_t[j, _TRAIN_NAMES.index("meas_confident")]),
            n_train_unmarked=int(sums_t[j, _TRAIN_NAMES.index("unmarked")]),
            n_gen=int(sums_g[j, _GEN_NAMES.index("n")]),
            n_gen_confident=int(sums_g[j, _GEN_NAMES.index("meas_confident")]),
        )
        if ground_truth:
            row["n_gen_oracle_confident"] = int(sums_g[j, _GEN_NAMES.index("oracle_confident")])
        one = decomposition_terms({k: v[j : j + 1] for k, v in shares.items()}, sign[j : j + 1], ground_truth, paired)
        row.update({name: float(one[name]) for name in ("measured", *terms)})
        per_occupation.append(row)
    return per_occupation


def _ideal_entry(
    per_occupation: list[dict[str, Any]], ground_truth: bool, paired: bool, shift: dict, gap: dict
) -> dict[str, Any]:
    """The ideal learner: its ``shift`` (the data term), ``gap``, the basis of its shares and a note."""
    basis = "true_gender" if ground_truth else "instrument"
    train_share = "share_train_true" if ground_truth else "share_train_measured"
    ideal_share = train_share if paired else ("share_ideal_true" if ground_truth else "share_ideal_measured")
    note = (
        "paired: the ideal learner given a caption reproduces its own training image, so the data term is 0 "
        "by construction"
        if paired
        else f"share of women ({basis}) among the selection's captions without a gender indicator"
    )
    return {
        "basis": basis,
        "note": note,
        "shift": shift,
        "gap": gap,
        "per_occupation": [
            {
                "occupation": r["occupation"],
                "share_ideal": r[ideal_share],
                "share_train": r[train_share],
                "n_train_unmarked": r["n_train_unmarked"],
            }
            for r in per_occupation
        ],
    }


def instrument_agreement(generated: pl.DataFrame) -> dict[str, Any] | None:
    """The instrument against the hue oracle on generated images, overall and per occupation.

    "female" is the positive class, as in the instrument's own confusion rates; rates count images both
    labellers are confident about, except the abstain rates.

    Args:
        generated: ``occupation, label`` (instrument) and ``oracle_label``.

    Returns:
        None without oracle labels; else ``{"overall": row, "per_occupation": [row, ...]}`` where a row
        has ``n`` (images), ``n_oracle_female`` / ``n_oracle_male`` / ``n_oracle_abstain``, ``n_both_confident``,
        ``accuracy`` (agreement on images both label), ``tpr`` (P(instrument female | oracle female)),
        ``fpr`` (P(instrument female | oracle male)), ``abstain_rate_female`` / ``abstain_rate_male``
        (P(instrument abstains | oracle gender)) and ``share_female_oracle`` / ``share_female_instrument``;
        a rate is None when its denominator is 0.
    """
    if "oracle_label" not in generated.columns or generated["oracle_label"].is_null().all():
        return None

    def ratio(top: int, bottom: int) -> float | None:
        return top / bottom if bottom else None

    def row(frame: pl.DataFrame) -> dict[str, Any]:
        instrument, oracle = frame["label"].to_numpy(), frame["oracle_label"].fill_null("abstain").to_numpy()
        sure = np.isin(instrument, ["female", "male"]) & np.isin(oracle, ["female", "male"])
        female, male = oracle == "female", oracle == "male"
        said_female = instrument == "female"
        return {
            "n": len(frame),
            "n_oracle_female": int(female.sum()),
            "n_oracle_male": int(male.sum()),
            "n_oracle_abstain": int((~female & ~male).sum()),
            "n_both_confident": int(sure.sum()),
            "accuracy": ratio(int((sure & (instrument == oracle)).sum()), int(sure.sum())),
            "tpr": ratio(int((sure & female & said_female).sum()), int((sure & female).sum())),
            "fpr": ratio(int((sure & male & said_female).sum()), int((sure & male).sum())),
            "abstain_rate_female": ratio(int((female & (instrument == "abstain")).sum()), int(female.sum())),
            "abstain_rate_male": ratio(int((male & (instrument == "abstain")).sum()), int(male.sum())),
            "share_female_oracle": ratio(int(female.sum()), int((female | male).sum())),
            "share_female_instrument": ratio(
                int(said_female.sum()), int(np.isin(instrument, ["female", "male"]).sum())
            ),
        }

    occupations = sorted(generated["occupation"].unique().to_list())
    return {
        "overall": row(generated),
        "per_occupation": [{"occupation": o, **row(generated.filter(pl.col("occupation") == o))} for o in occupations],
    }
