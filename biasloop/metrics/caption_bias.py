"""Gender bias of captions: misprediction (Burns et al. 2018) and the LIC leakage score (Hirota et al. 2022).

Word lists. The masculine and feminine words are those of Hirota, Nakashima and Garcia, "Quantifying
Societal Bias Amplification in Image Captioning" (CVPR 2022), as published with their LIC code
(github.com/rebnej/lick-caption-bias, ``lstm_leakage.py``), which extend the man/woman word lists of
Burns, Hendricks, Saenko, Darrell and Rohrbach, "Women also Snowboard: Overcoming Bias in Captioning
Models" (ECCV 2018). The same lists serve both uses here, as the issue asks: a caption's predicted gender
(misprediction) and the masking of gender words before the leakage classifier. They are not the
paradox study's indicator lists (:mod:`biasloop.data.indicators`), which serve caption retrieval.

The lists live in :mod:`biasloop.data.indicators` (``MASCULINE_WORDS``, ``FEMININE_WORDS``) and are matched
as whole caption tokens (lower-cased, punctuation stripped), so ``woman's`` counts as ``woman`` and
``manager`` never counts as ``man``.

- **Caption gender** (Burns et al.): ``female`` when the caption has feminine words and no masculine
  ones, ``male`` for the converse, ``neutral`` otherwise (no gender word, or both kinds).
- **Error** (Burns et al.): the share of gender-labelled images whose caption names the other gender,
  ``(#women described as male + #men described as female) / #images``; neutral captions are not errors
  but their rates per gender are reported beside it. **Ratio**: captions predicted female over captions
  predicted male, beside the ratio of women to men among the images.
- **LIC score** (Hirota et al.): a classifier reads a caption with its gender words masked and outputs
  ``p = P(female)``; its prediction is female when ``p >= 0.5``; ``LIC = (1/n) sum_i [prediction_i
  correct] * max(p_i, 1 - p_i)``, the mean confidence in the correct gender (0 when wrong). LIC_M is this
  score on model captions, LIC_D on human captions of the same images; leakage ``= LIC_M - LIC_D``.
  :func:`caption_leakage` runs the protocol: a gender-balanced split (the same number of women's and
  men's images in training and in test, the larger group subsampled at random), LIC_M and LIC_D on the
  same images in each run, several runs (own split and initialisation each), mean and standard
  deviation; with ``align_vocabulary``, human-caption words the captioner never writes become ``<unk>``
  (their ``align_vocab``), so LIC_D does not gain from words the model cannot produce. The classifier
  itself is :mod:`biasloop.models.leakage`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from biasloop.core.seeds import stream_seed
from biasloop.data.indicators import caption_gender, mask_gender_words
from biasloop.metrics.intervals import bootstrap_interval, wilson_interval
from biasloop.models.leakage import LeakageConfig, predict_gender_from_captions

log = logging.getLogger(__name__)
UNKNOWN = "<unk>"


def misprediction(captions: Sequence[str], true_genders: Sequence[str | None]) -> dict[str, Any]:
    """Gender misprediction of captions (Burns et al. 2018) over images labelled female or male.

    Args:
        captions: one caption per image (a model's).
        true_genders: the image's gender, ``female`` / ``male``; other values (None) are left out.

    Returns:
        ``error`` (fraction of labelled images described as the other gender), ``error_female`` /
        ``error_male`` (among images of women / men), ``neutral_female`` / ``neutral_male`` (share of
        neutral captions), ``correct`` (share naming the right gender), ``ratio_predicted`` (captions
        predicted female / predicted male; None without a male prediction), ``ratio_true`` (women / men
        among the images), and the counts. Rates are None where their denominator is 0. Each rate has a
        Wilson 95% interval ``<rate>_ci`` (:func:`biasloop.metrics.intervals.wilson_interval`).
    """
    if len(captions) != len(true_genders):
        raise ValueError(f"{len(captions)} captions but {len(true_genders)} gender labels")
    predicted = np.array([caption_gender(c) for c in captions], dtype=object)
    truth = np.array([g if g in ("female", "male") else "" for g in true_genders], dtype=object)
    labelled = truth != ""
    n = int(labelled.sum())

    def rate(mask: np.ndarray, among: np.ndarray) -> float | None:
        return float((mask & among).sum() / among.sum()) if among.sum() else None

    women, men = truth == "female", truth == "male"
    wrong = (women & (predicted == "male")) | (men & (predicted == "female"))
    n_pred_female = int((labelled & (predicted == "female")).sum())
    n_pred_male = int((labelled & (predicted == "male")).sum())

    def interval(mask: np.ndarray, among: np.ndarray) -> list[float] | None:
        return wilson_interval(int((mask & among).sum()), int(among.sum()))

    return {
        "error_ci": interval(wrong, labelled),
        "error_female_ci": interval(predicted == "male", women),
        "error_male_ci": interval(predicted == "female", men),
        "correct_ci": interval(predicted == truth, labelled),
        "neutral_female_ci": interval(predicted == "neutral", women),
        "neutral_male_ci": interval(predicted == "neutral", men),
        "error": rate(wrong, labelled),
        "error_female": rate(predicted == "male", women),
        "error_male": rate(predicted == "female", men),
        "correct": rate(predicted == truth, labelled),
        "neutral_female": rate(predicted == "neutral", women),
        "neutral_male": rate(predicted == "neutral", men),
        "ratio_predicted": n_pred_female / n_pred_male if n_pred_male else None,
        "ratio_true": int(women.sum()) / int(men.sum()) if men.sum() else None,
        "n_images": n,
        "n_female": int(women.sum()),
        "n_male": int(men.sum()),
        "n_predicted_female": n_pred_female,
        "n_predicted_male": n_pred_male,
    }


def lic_score(p_female: Sequence[float] | np.ndarray, is_female: Sequence[bool] | np.ndarray) -> float:
    """The LIC score (Hirota et al. 2022): mean confidence in the correct gender, 0 when wrong.

    Args:
        p_female: the leakage classifier's ``P(female)`` per caption, in [0, 1].
        is_female: the image's gender per caption (True: female).

    Returns:
        ``(1/n) sum_i [(p_i >= 0.5) == is_female_i] * max(p_i, 1 - p_i)``, in [0, 1]; 0.5 or less for a
        classifier that cannot tell (ties at 0.5 predict female, as in the published code).
    """
    p = np.asarray(p_female, dtype=float)
    truth = np.asarray(is_female, dtype=bool)
    if p.shape != truth.shape or p.ndim != 1 or len(p) == 0:
        raise ValueError(f"expected two equal-length non-empty vectors, got {p.shape} and {truth.shape}")
    if np.any((p < 0) | (p > 1)) or np.any(np.isnan(p)):
        raise ValueError("p_female must be probabilities in [0, 1]")
    correct = (p >= 0.5) == truth
    return float(np.mean(correct * np.maximum(p, 1 - p)))


def caption_lic_scores(p_female: Sequence[float] | np.ndarray, is_female: Sequence[bool] | np.ndarray) -> np.ndarray:
    """Each caption's term of the LIC score: ``[(p >= 0.5) == is_female] * max(p, 1 - p)`` (their mean is :func:`lic_score`)."""
    p = np.asarray(p_female, dtype=float)
    return ((p >= 0.5) == np.asarray(is_female, dtype=bool)) * np.maximum(p, 1 - p)


def balanced_split(
    is_female: np.ndarray, test_fraction: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Gender-balanced train and test indices.

    Each gender contributes ``m = min(#women, #men)`` images, drawn at random: ``round(m * test_fraction)``
    to the test set and the rest to the training set.

    Returns:
        ``(train_indices, test_indices)`` into ``is_female``, each shuffled.
    """
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"captioner.leakage.test_fraction: must be in (0, 1), got {test_fraction}")
    is_female = np.asarray(is_female, dtype=bool)
    women, men = np.flatnonzero(is_female), np.flatnonzero(~is_female)
    m = min(len(women), len(men))
    n_test = int(round(m * test_fraction))
    if n_test < 1 or m - n_test < 1:
        raise ValueError(f"the leakage classifier needs images of both genders: {len(women)} women, {len(men)} men")
    women, men = rng.permutation(women)[:m], rng.permutation(men)[:m]
    train = rng.permutation(np.concatenate([women[n_test:], men[n_test:]]))
    test = rng.permutation(np.concatenate([women[:n_test], men[:n_test]]))
    return train, test


def masked_tokens(captions: Sequence[str], vocabulary: set[str] | None = None) -> list[list[str]]:
    """Tokens of each caption with gender words masked; with ``vocabulary``, other words become ``<unk>``."""
    out = []
    for caption in captions:
        tokens = mask_gender_words(caption).split()
        if vocabulary is not None:
            tokens = [t if t in vocabulary or t == "genderword" else UNKNOWN for t in tokens]
        out.append(tokens)
    return out


def caption_leakage(
    model_captions: Sequence[str],
    human_captions: Sequence[str],
    genders: Sequence[str | None],
    config: LeakageConfig,
    seed: int,
    model_vocabulary: set[str] | None = None,
    n_boot: int = 0,
) -> dict[str, Any]:
    """LIC_M, LIC_D and leakage over ``config.seeds`` runs (see the module docstring).

    Args:
        model_captions: a captioner's caption per image.
        human_captions: the human (reference) caption of the same images.
        genders: the image's gender, ``female`` / ``male``; other images are left out.
        config: the leakage classifier's params.
        seed: the captioner's seed; run ``r`` splits with stream ``leakage-split``, r and initialises its
            classifiers with stream ``leakage-classifier``, r (:func:`biasloop.core.seeds.stream_seed`).
        model_vocabulary: the words the captioner can write (for ``align_vocabulary``; None: the words
            its captions here contain).
        n_boot: bootstrap resamples for the intervals (0: none); stream ``leakage-bootstrap``.

    Returns:
        ``lic_m``, ``lic_d``, ``leakage`` (means over runs, fractions) with ``_std`` (sample standard
        deviation; 0 for one run), the classifiers' mean test accuracies ``accuracy_m`` / ``accuracy_d``,
        ``per_seed`` rows, ``n_train`` and ``n_test`` (captions per run) and ``seconds``; with ``n_boot``,
        ``lic_m_ci``, ``lic_d_ci`` and ``leakage_ci``: percentile bootstrap over each run's test captions
        (the same resample for LIC_M and LIC_D, which score the same images), averaged over runs as the
        estimates are. The classifiers are not retrained per resample: the spread over runs is ``_std``.
    """
    if not len(model_captions) == len(human_captions) == len(genders):
        raise ValueError(
            f"{len(model_captions)} model captions, {len(human_captions)} human captions, {len(genders)} genders"
        )
    if config.seeds < 1:
        raise ValueError("captioner.leakage.seeds must be >= 1")
    labelled = np.array([g in ("female", "male") for g in genders], dtype=bool)
    is_female = np.array([g == "female" for g in genders], dtype=bool)[labelled]
    model_tokens = [t for t, keep in zip(masked_tokens(model_captions), labelled) if keep]
    vocabulary = None
    if config.align_vocabulary:
        vocabulary = model_vocabulary if model_vocabulary is not None else {t for ts in model_tokens for t in ts}
    human_tokens = [t for t, keep in zip(masked_tokens(human_captions, vocabulary), labelled) if keep]
    start = time.perf_counter()
    runs, scores = [], []
    for run in range(config.seeds):
        row, run_scores, (train, test) = _leakage_run(run, is_female, (model_tokens, human_tokens), config, seed)
        scores.append(run_scores)
        runs.append(row)

    def mean_std(key: str) -> tuple[float, float]:
        values = np.array([r[key] for r in runs])
        return float(values.mean()), float(values.std(ddof=1)) if len(values) > 1 else 0.0

    out: dict[str, Any] = {}
    for key in ("lic_m", "lic_d", "leakage"):
        out[key], out[f"{key}_std"] = mean_std(key)
    out["accuracy_m"], out["accuracy_d"] = mean_std("accuracy_m")[0], mean_std("accuracy_d")[0]
    if n_boot > 0:
        out.update(_leakage_intervals(scores, n_boot, seed))
    out.update(per_seed=runs, n_train=len(train), n_test=len(test), seconds=time.perf_counter() - start)
    log.info(
        "leakage: LIC_M %.3f +- %.3f, LIC_D %.3f +- %.3f, leakage %.3f (%d runs, %d train / %d test, %.1f s)",
        out["lic_m"],
        out["lic_m_std"],
        out["lic_d"],
        out["lic_d_std"],
        out["leakage"],
        config.seeds,
        len(train),
        len(test),
        out["seconds"],
    )
    return out


def _leakage_run(
    run: int,
    is_female: np.ndarray,
    tokens: tuple[list[list[str]], list[list[str]]],
    config: LeakageConfig,
    seed: int,
) -> tuple[dict[str, Any], tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """Run ``run`` of :func:`caption_leakage`: a balanced split, then a classifier on the model's and one
    on the human captions. Returns the run's row (LIC_M, LIC_D, leakage, accuracies), the per-caption
    LIC scores of its test captions (model, human) and the split's ``(train, test)`` indices."""
    split_rng = np.random.default_rng(stream_seed(seed, "leakage-split", run))
    train, test = balanced_split(is_female, config.test_fraction, split_rng)
    row: dict[str, Any] = {"seed": run}
    for name, side_tokens in zip(("m", "d"), tokens):
        p_female = predict_gender_from_captions(
            [side_tokens[i] for i in train],
            is_female[train],
            [side_tokens[i] for i in test],
            config,
            stream_seed(seed, "leakage-classifier", run),
        )
        row[f"lic_{name}"] = lic_score(p_female, is_female[test])
        row[f"accuracy_{name}"] = float(np.mean((p_female >= 0.5) == is_female[test]))
        row[f"_scores_{name}"] = caption_lic_scores(p_female, is_female[test])
    row["leakage"] = row["lic_m"] - row["lic_d"]
    return row, (row.pop("_scores_m"), row.pop("_scores_d")), (train, test)


def _leakage_intervals(scores: list[tuple[np.ndarray, np.ndarray]], n_boot: int, seed: int) -> dict[str, Any]:
    """``lic_m_ci``, ``lic_d_ci``, ``leakage_ci``: percentile bootstrap over test positions, one resample
    applied to every run (each run's test set has the same number of captions), averaged over runs."""
    rng = np.random.default_rng(stream_seed(seed, "leakage-bootstrap"))
    n_test = len(scores[0][0])
    out = {}
    for key, pick in (("lic_m", lambda m, d: m), ("lic_d", lambda m, d: d), ("leakage", lambda m, d: m - d)):
        out[f"{key}_ci"] = bootstrap_interval(
            lambda rows, f=pick: float(np.mean([f(m[rows], d[rows]).mean() for m, d in scores])),
            n_test,
            n_boot,
            rng,
        )
    return out
