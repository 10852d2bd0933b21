"""Gender indicators in captions: the word lists of the bias-amplification-paradox study.

A caption is labelled ``male``, ``female``, ``both`` or ``none`` by the gendered words it contains, and
the matched words are returned so that a label can always be traced back to its cause.

Matching rules (the same in the vectorised polars expressions and in :func:`label_caption`):

- **Whole words, case-insensitive.** A term matches only between word boundaries, so words that merely
  contain a term never count: ``mankind``, ``manager``, ``human``, ``salesman``, ``hero``,
  ``heroine``, ``shell``, ``shepherd``, ``woman`` inside ``womanhood``. Compound words are not split.
- **Apostrophes.** ``'``, ``’``, ``‘`` and ``ʼ`` are the same character: ``he’s``, ``he's`` and ``hes``
  all match. Matched terms are reported lower-cased with the apostrophe written ``'``.
- **Possessives and contractions count as the word before the apostrophe**: ``woman's`` and
  ``woman’s`` match ``woman`` (an apostrophe ends a word), ``he'll`` matches ``he``. The explicit
  forms of the list (``he's``, ``she's``, ``her's``) are reported as themselves.
- **Hyphens separate words**, as in the study's tokenisation: ``man-made`` and ``female-led`` count.
- **First names** (optional, off by default): capitalised words that ``gender-guesser`` calls male or
  mostly male (female or mostly female), except the caption's first word, whose capital says nothing.
  Names that are also common words ("Will", "Rose", "Grace") make this noisy, which is why it is off.
  Matched names are added to ``male_terms`` / ``female_terms`` lower-cased.

**Captioning lists.** The captioning bias metrics (misprediction, LIC leakage) use another pair of lists,
:data:`MASCULINE_WORDS` and :data:`FEMININE_WORDS`: those of Hirota, Nakashima and Garcia, "Quantifying
Societal Bias Amplification in Image Captioning" (CVPR 2022), as published with their LIC code
(github.com/rebnej/lick-caption-bias, ``lstm_leakage.py``), which extend the man/woman word lists of
Burns et al., "Women also Snowboard" (ECCV 2018). They are matched as whole caption tokens
(:func:`biasloop.data.text.caption_tokens`), the same lists for a caption's gender and for masking.

Terms are ``list[str]`` columns in polars and tuples in Python, in the order they occur (a null
caption gets null term lists in polars, empty tuples in Python, and the label ``none``).

**Tone lists.** The glyph world's second attribute, tone (:mod:`biasloop.data.tones`), has its own lists,
:data:`TONE_TERMS`: skin-tone adjectives and nouns per class ("dark-skinned", "fair skin"). A caption is
labelled with the class whose terms it contains, ``mixed`` with terms of several classes, ``none``
without (:func:`tone_indicator_columns`, :func:`label_tone_caption`). They match whole words,
case-insensitively, and a hyphen or space inside a term matches a hyphen, a space or nothing
("dark-skinned", "dark skinned", "darkskinned"). Gender's lists and labels do not change.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Mapping
from typing import NamedTuple

import polars as pl

from biasloop.data.text import caption_tokens

MALE_TERMS: tuple[str, ...] = (
    "he", "hes", "he's", "him", "his", "himself", "male", "males", "man", "mans", "men", "mens",
    "boy", "boys", "gent", "gents", "gentleman", "gentlemans", "gentlemen", "gentlemens",
)  # fmt: skip
FEMALE_TERMS: tuple[str, ...] = (
    "she", "shes", "she's", "her", "hers", "her's", "herself", "female", "females", "woman", "womans",
    "women", "womens", "girl", "girls", "lady", "ladies",
)  # fmt: skip
LABELS: tuple[str, ...] = ("male", "female", "both", "none")

APOSTROPHES = "'’‘ʼ"
_APOSTROPHE_CLASS = f"[{APOSTROPHES}]"
# Polars (Rust regex) knows \p{..} classes; Python's re does not, so the Python twin uses str methods.
_CAPITALISED_WORD = r"\b\p{Lu}\p{Ll}+\b"
_FIRST_WORD = r"^\W*\w+"


def term_regex(terms: Iterable[str]) -> str:
    """A case-insensitive whole-word regex matching any of ``terms`` (valid in Rust regex and Python re).

    Longer terms come first so that ``he's`` is preferred to ``he`` at the same position; ``'`` in a term
    matches any apostrophe variant.
    """
    ordered = sorted(set(terms), key=lambda t: (-len(t), t))
    alternatives = "|".join(re.escape(t).replace("'", _APOSTROPHE_CLASS) for t in ordered)
    return rf"(?i)\b(?:{alternatives})\b"


MALE_REGEX = term_regex(MALE_TERMS)
FEMALE_REGEX = term_regex(FEMALE_TERMS)


class IndicatorMatch(NamedTuple):
    """The label of one caption and the terms that caused it."""

    label: str
    male_terms: tuple[str, ...]
    female_terms: tuple[str, ...]


def _normalise_term(expr: pl.Expr) -> pl.Expr:
    return expr.str.to_lowercase().str.replace_all(_APOSTROPHE_CLASS, "'")


def _normalise_term_py(term: str) -> str:
    return re.sub(_APOSTROPHE_CLASS, "'", term.lower())


@functools.lru_cache(maxsize=1)
def first_name_genders() -> Mapping[str, str]:
    """``{lower-cased first name: "male" | "female"}`` from gender-guesser (mostly_* included, andy not).

    Built once per process (about 60,000 names, well under a second).
    """
    import gender_guesser.detector as gender_detector

    detector = gender_detector.Detector(case_sensitive=False)
    wanted = {"male": "male", "mostly_male": "male", "female": "female", "mostly_female": "female"}
    genders = {}
    for name in detector.names:
        gender = wanted.get(detector.get_gender(name))
        if gender is not None and name.isalpha():
            genders[name] = gender
    return genders


def _first_name_terms(column: str, gender: str) -> pl.Expr:
    # a lookup table, not is_in: is_in inside list.eval is over ten times slower in polars 2
    is_gender = {name: g == gender for name, g in first_name_genders().items()}
    names = pl.element().str.to_lowercase()
    return (
        pl.col(column)
        .str.replace(_FIRST_WORD, "")
        .str.extract_all(_CAPITALISED_WORD)
        .list.eval(names.filter(names.replace_strict(is_gender, default=False, return_dtype=pl.Boolean)))
    )


def male_terms_expr(column: str = "caption", first_names: bool = False) -> pl.Expr:
    """``list[str]`` of the male terms (and, optionally, male first names) in ``column``."""
    terms = pl.col(column).str.extract_all(MALE_REGEX).list.eval(_normalise_term(pl.element()))
    if first_names:
        terms = terms.list.concat(_first_name_terms(column, "male"))
    return terms


def female_terms_expr(column: str = "caption", first_names: bool = False) -> pl.Expr:
    """``list[str]`` of the female terms (and, optionally, female first names) in ``column``."""
    terms = pl.col(column).str.extract_all(FEMALE_REGEX).list.eval(_normalise_term(pl.element()))
    if first_names:
        terms = terms.list.concat(_first_name_terms(column, "female"))
    return terms


def label_expr(male_terms: pl.Expr, female_terms: pl.Expr) -> pl.Expr:
    """``male | female | both | none`` from two ``list[str]`` term columns."""
    has_male = male_terms.list.len() > 0
    has_female = female_terms.list.len() > 0
    return (
        pl.when(has_male & has_female)
        .then(pl.lit("both"))
        .when(has_male)
        .then(pl.lit("male"))
        .when(has_female)
        .then(pl.lit("female"))
        .otherwise(pl.lit("none"))
    )


def indicator_columns(column: str = "caption", first_names: bool = False) -> list[pl.Expr]:
    """Expressions adding ``male_terms``, ``female_terms`` (``list[str]``) and ``indicator`` (label).

    Use in two steps, because the label is computed from the term columns::

        frame.with_columns(indicator_columns()[:2]).with_columns(indicator_columns()[2])

    or simply :func:`tag_indicators`. All three are streaming-friendly row-wise expressions.
    """
    return [
        male_terms_expr(column, first_names).alias("male_terms"),
        female_terms_expr(column, first_names).alias("female_terms"),
        label_expr(pl.col("male_terms"), pl.col("female_terms")).alias("indicator"),
    ]


def tag_indicators(frame: pl.LazyFrame | pl.DataFrame, column: str = "caption", first_names: bool = False):
    """Add ``male_terms``, ``female_terms`` and ``indicator`` to a (lazy) frame with a caption column."""
    male, female, label = indicator_columns(column, first_names)
    return frame.with_columns(male, female).with_columns(label)


_MALE_PY = re.compile(MALE_REGEX)
_FEMALE_PY = re.compile(FEMALE_REGEX)


def _first_names_py(caption: str, gender: str) -> list[str]:
    genders = first_name_genders()
    words = re.findall(r"\b\w+\b", re.sub(r"^\W*\w+", "", caption))
    return [
        w.lower()
        for w in words
        if len(w) > 1 and w[0].isupper() and w[1:].islower() and w.isalpha() and genders.get(w.lower()) == gender
    ]


def label_caption(caption: str | None, first_names: bool = False) -> IndicatorMatch:
    """Label one caption; the plain-Python twin of :func:`indicator_columns` (same rules, same terms).

    Args:
        caption: the caption text (None counts as empty).
        first_names: also count gendered first names (gender-guesser).

    Returns:
        An :class:`IndicatorMatch` with the label and the matched terms in order of occurrence.
    """
    caption = caption or ""
    male = [_normalise_term_py(t) for t in _MALE_PY.findall(caption)]
    female = [_normalise_term_py(t) for t in _FEMALE_PY.findall(caption)]
    if first_names:
        male += _first_names_py(caption, "male")
        female += _first_names_py(caption, "female")
    if male and female:
        label = "both"
    elif male:
        label = "male"
    elif female:
        label = "female"
    else:
        label = "none"
    return IndicatorMatch(label, tuple(male), tuple(female))


# --- captioning lists (Hirota et al. 2022; see the module docstring) ---------------------------------

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
    tokens = set(caption_tokens(caption))
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
    return " ".join(mask if t in _MASCULINE or t in _FEMININE else t for t in caption_tokens(caption))


# --- tone lists (the glyph world's tone; see the module docstring) -----------------------------------

TONE_TERMS: dict[str, tuple[str, ...]] = {
    "light": ("light-skinned", "fair-skinned", "pale-skinned", "light skin", "fair skin", "pale skin"),
    "medium": ("medium-skinned", "tan-skinned", "olive-skinned", "medium skin", "tan skin", "olive skin"),
    "dark": ("dark-skinned", "brown-skinned", "deep-skinned", "dark skin", "brown skin", "deep skin"),
}
TONE_LABELS: tuple[str, ...] = (*TONE_TERMS, "mixed", "none")


def tone_term_regex(terms: Iterable[str]) -> str:
    """A case-insensitive whole-word regex matching any of ``terms`` (valid in Rust regex and Python re),
    a hyphen or space inside a term matching a hyphen, a space or nothing; longer terms first."""
    ordered = sorted(set(terms), key=lambda t: (-len(t), t))
    alternatives = "|".join(r"[-\s]?".join(re.escape(part) for part in re.split(r"[- ]", t)) for t in ordered)
    return rf"(?i)\b(?:{alternatives})\b"


TONE_REGEX: dict[str, str] = {tone: tone_term_regex(terms) for tone, terms in TONE_TERMS.items()}
_TONE_PY = {tone: re.compile(regex) for tone, regex in TONE_REGEX.items()}


def tone_indicator_columns(column: str = "caption") -> list[pl.Expr]:
    """Expressions adding ``<tone>_terms`` (``list[str]``, lower-cased) per class of :data:`TONE_TERMS`,
    then ``tone_indicator`` (a class, ``mixed`` or ``none``); use as :func:`tag_tone_indicators` does."""
    terms = [
        pl.col(column).str.extract_all(regex).list.eval(pl.element().str.to_lowercase()).alias(f"{tone}_terms")
        for tone, regex in TONE_REGEX.items()
    ]
    found = [pl.col(f"{tone}_terms").list.len().fill_null(0) > 0 for tone in TONE_TERMS]
    n_found = pl.sum_horizontal([f.cast(pl.Int32) for f in found])
    label = pl.when(n_found > 1).then(pl.lit("mixed"))
    for tone, has in zip(TONE_TERMS, found):
        label = label.when(has).then(pl.lit(tone))
    return [*terms, label.otherwise(pl.lit("none")).alias("tone_indicator")]


def tag_tone_indicators(frame: pl.LazyFrame | pl.DataFrame, column: str = "caption"):
    """Add ``<tone>_terms`` and ``tone_indicator`` to a (lazy) frame with a caption column."""
    *terms, label = tone_indicator_columns(column)
    return frame.with_columns(terms).with_columns(label)


class ToneMatch(NamedTuple):
    """The tone label of one caption and the terms that caused it, per class."""

    label: str
    terms: dict[str, tuple[str, ...]]


def label_tone_caption(caption: str | None) -> ToneMatch:
    """Label one caption's tone; the plain-Python twin of :func:`tone_indicator_columns`."""
    terms = {tone: tuple(t.lower() for t in pattern.findall(caption or "")) for tone, pattern in _TONE_PY.items()}
    found = [tone for tone, matched in terms.items() if matched]
    label = "mixed" if len(found) > 1 else found[0] if found else "none"
    return ToneMatch(label, terms)
