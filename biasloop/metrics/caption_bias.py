"""Gender bias of captions: misprediction (Burns et al. 2018) and the LIC leakage score (Hirota et al. 2022).

Word lists. The masculine and feminine words are those of Hirota, Nakashima and Garcia, "Quantifying
Societal Bias Amplification in Image Captioning" (CVPR 2022), as published with their LIC code
(github.com/rebnej/lick-caption-bias, ``lstm_leakage.py``), which extend the man/woman word lists of
Burns, Hendricks, Saenko, Darrell and Rohrbach, "Women also Snowboard: Overcoming Bias in Captioning
Models" (ECCV 2018). The same lists serve both uses here, as the issue asks: a caption's predicted gender
(misprediction) and the masking of gender words before the leakage classifier. They are not the
paradox study's indicator lists (:mod:`biasloop.data.indicators`), which serve caption retrieval.

Words are matched as whole tokens of :func:`biasloop.metrics.captions.tokenize` (lower-cased,
punctuation stripped), so ``woman's`` counts as ``woman`` and ``manager`` never counts as ``man``.

- **Caption gender** (Burns et al.): ``female`` when the caption has feminine words and no masculine
  ones, ``male`` for the converse, ``neutral`` otherwise (no gender word, or both kinds).
- **Error** (Burns et al.): the share of gender-labelled images whose caption names the other gender,
  ``(#women described as male + #men described as female) / #images``; neutral captions are not errors
  but their rates per gender are reported beside it. **Ratio**: captions predicted female over captions
  predicted male, beside the ratio of women to men among the images.
- **LIC score** (Hirota et al.): a classifier reads a caption with its gender words masked and outputs
  ``p = P(female)``; its prediction is female when ``p >= 0.5``; ``LIC = (1/n) sum_i [prediction_i
  correct] * max(p_i, 1 - p_i)``, the mean confidence in the correct gender (0 when wrong). LIC_M is this
  score on model captions, LIC_D on human captions of the same images; leakage ``= LIC_M - LIC_D``
  (:mod:`biasloop.models.leakage` trains the classifier).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from biasloop.metrics.captions import tokenize

MASCULINE_WORDS: tuple[str, ...] = (
    "man", "men", "male", "father", "gentleman", "gentlemen", "boy", "boys", "uncle", "husband", "actor",
    "prince", "waiter", "son", "he", "his", "him", "himself", "brother", "brothers", "guy", "guys", "emperor",
    "emperors", "dude", "dudes", "cowboy",
)  # fmt: skip
FEMININE_WORDS: tuple[str, ...] = (
    "woman", "women", "female", "lady", "ladies", "mother", "girl", "girls", "aunt", "wife", "actress",
    "princess", "waitress", "daughter", "she", "her", "hers", "herself", "sister", "sisters", "queen", "queens",
    "pregnant",
)  # fmt: skip
MASK_TOKEN = "genderword"  # what every gender word becomes before the leakage classifier (Hirota et al.)
CAPTION_GENDERS = ("female", "male", "neutral")

_MASCULINE = frozenset(MASCULINE_WORDS)
_FEMININE = frozenset(FEMININE_WORDS)


def caption_gender(caption: str) -> str:
    """``female`` / ``male`` when the caption has only that gender's words, else ``neutral``."""
    tokens = set(tokenize(caption))
    has_male, has_female = bool(tokens & _MASCULINE), bool(tokens & _FEMININE)
    if has_female and not has_male:
        return "female"
    if has_male and not has_female:
        return "male"
    return "neutral"


def mask_gender_words(caption: str, mask: str = MASK_TOKEN) -> str:
    """The tokenised caption with every masculine or feminine word replaced by ``mask``.

    >>> mask_gender_words("She is a Nurse; her shift starts.")
    'genderword is a nurse genderword shift starts'
    """
    return " ".join(mask if t in _MASCULINE or t in _FEMININE else t for t in tokenize(caption))


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
        among the images), and the counts. Rates are None where their denominator is 0.
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
    return {
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
