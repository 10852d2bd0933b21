"""The text rules every part of biasloop shares: articles, plurals and prompt templates.

Templates (captions of the glyph world, neutral prompts, zero-shot prompts, downstream queries) use one
placeholder spelling everywhere:

- ``{occupation}``: the occupation ("engineer"); ``{occupations}``: its plural ("engineers");
- ``{gender}``: a gender noun ("woman", "man") in the instrument's zero-shot templates;
- ``{article}``: "a" or "an", chosen by the word that follows it ("a photo of {article} {occupation}"
  becomes "a photo of an engineer").

Caption tokens (:func:`caption_tokens`) are the one word split that caption metrics, the captioner's
vocabulary and gender-word matching for captioning share.
"""

from __future__ import annotations

import difflib
import re
import string
import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

PLACEHOLDERS = ("article", "occupation", "occupations", "gender")
# Irregular plurals of a final word; a word ending in one of these keys takes the mapped ending
# ("salesperson" -> "salespeople", "chairman" -> "chairmen", "woman" -> "women").
IRREGULAR_ENDINGS = {"person": "people", "man": "men", "child": "children"}
_ARTICLE_MARK = "\x00"


def article(word: str) -> str:
    """ "an" before a word starting with a vowel letter, else "a" (a spelling rule, not a sound rule)."""
    return "an" if word[:1].lower() in tuple("aeiou") else "a"


def plural(word: str) -> str:
    """English plural of an occupation: only the last word changes.

    Rules, in order: an irregular ending (``-person`` -> ``-people``, ``-man`` -> ``-men``); ``+es``
    after s, x, z, ch, sh; consonant + ``y`` -> ``ies``; otherwise ``+s``. Irregular plurals of whole
    occupations are params (``retrieve.plurals``), not rules.
    """
    head, _, last = word.rpartition(" ")
    for ending, replacement in IRREGULAR_ENDINGS.items():
        if last.endswith(ending):
            last = last[: len(last) - len(ending)] + replacement
            break
    else:
        if last.endswith(("s", "x", "z", "ch", "sh")):
            last += "es"
        elif len(last) > 1 and last.endswith("y") and last[-2] not in "aeiou":
            last = last[:-1] + "ies"
        else:
            last += "s"
    return f"{head} {last}" if head else last


def template_fields(template: str) -> set[str]:
    """The placeholder names a template uses; raises ValueError for an unknown or positional one."""
    try:
        fields = {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}
    except ValueError as error:
        raise ValueError(f"template {template!r}: {error}") from None
    unknown = sorted(fields - set(PLACEHOLDERS))
    if unknown:
        raise ValueError(
            f"template {template!r}: unknown placeholder {{{unknown[0]}}}; use "
            + ", ".join(f"{{{p}}}" for p in PLACEHOLDERS)
        )
    return fields


def fill_template(template: str, occupation: str | None = None, gender: str | None = None) -> str:
    """Fill a template's placeholders (see the module docstring).

    Args:
        template: e.g. ``"a photo of {article} {occupation}"``.
        occupation: fills ``{occupation}`` and, pluralised, ``{occupations}``.
        gender: fills ``{gender}``.

    Returns:
        The text, with each ``{article}`` agreeing with the word after it.

    Raises:
        ValueError: a placeholder is unknown, or needed but not given.
    """
    fields = template_fields(template)
    values = {"article": _ARTICLE_MARK, "occupation": occupation, "gender": gender}
    values["occupations"] = plural(occupation) if occupation is not None else None
    missing = sorted(f for f in fields if values[f] is None)
    if missing:
        raise ValueError(f"template {template!r} needs {{{missing[0]}}}, which is not given here")
    text = template.format(**values)
    if "article" in fields:
        text = re.sub(_ARTICLE_MARK + r"(\W*)(\w)", lambda m: article(m[2]) + m[1] + m[2], text)
        if _ARTICLE_MARK in text:
            raise ValueError(f"template {template!r}: {{article}} must be followed by a word")
    return text


_APOSTROPHES = re.compile("[’‘ʼ`]")
# A token is a run of letters/digits (internal hyphens kept: "close-up"), or an apostrophe clitic
# ("he's" -> "he", "'s"), after lower-casing; every other character is punctuation or space and dropped.
_CAPTION_TOKEN = re.compile(r"[^\W_]+(?:-[^\W_]+)*|'[^\W_]+")


def caption_tokens(text: str | None) -> list[str]:
    """Lower-case word tokens of a caption, punctuation stripped (no Java).

    An approximation of the COCO caption evaluation code's Stanford PTB tokenizer followed by its
    punctuation filter: lower-cased; words are runs of letters and digits with internal hyphens kept
    (``close-up``); an apostrophe starts a clitic token (``woman's`` -> ``woman``, ``'s``; PTB splits
    ``don't`` into ``do``, ``n't``, here into ``don``, ``'t``); every other punctuation mark is dropped.

    Args:
        text: a caption (None reads as empty).

    Returns:
        The tokens in order.
    """
    return _CAPTION_TOKEN.findall(_APOSTROPHES.sub("'", (text or "").lower()))


# ------------------------------------------------------------------------------ occupation names
def occupation_key(name: str) -> str:
    """How two spellings of one occupation compare: Unicode NFKC, case folded, invisible format characters
    (zero-width space, soft hyphen, byte-order mark: category Cf) dropped, runs of white space as one space,
    none at the ends (``" Police  Officer"`` -> ``"police officer"``)."""
    text = unicodedata.normalize("NFKC", name).casefold()
    return " ".join("".join(ch for ch in text if unicodedata.category(ch) != "Cf").split())


@dataclass(frozen=True)
class OccupationMatch:
    """Two lists of occupation names matched by :func:`match_occupations`.

    Attributes:
        renamed: a name of ``theirs`` -> the name of ``ours`` it matched, for the names that differ.
        matched: the names of ``ours`` that ``theirs`` has too, in ``ours`` order.
        only_ours, only_theirs: names with no match on the other side, in input order.
    """

    renamed: dict[str, str]
    matched: list[str]
    only_ours: list[str]
    only_theirs: list[str]

    def closest(self, name: str, candidates: Iterable[str]) -> str | None:
        """The candidate spelled most like ``name`` (a misspelling's likely meaning), or None."""
        keys = {occupation_key(c): c for c in candidates}
        hits = difflib.get_close_matches(occupation_key(name), list(keys), n=1, cutoff=0.75)
        return keys[hits[0]] if hits else None


def _spellings(names: Iterable[str], side: str, plurals: Mapping[str, str]) -> tuple[dict[str, str], dict[str, str]]:
    """``key -> name`` and ``plural key -> name`` of one side; ValueError when two names are one occupation."""
    by_key: dict[str, str] = {}
    for name in names:
        key = occupation_key(name)
        if not key:
            raise ValueError(f"{side}: an empty occupation name ({name!r})")
        if key in by_key:
            raise ValueError(f"{side}: {by_key[key]!r} and {name!r} name one occupation (case and spacing are ignored)")
        by_key[key] = name
    by_plural: dict[str, str] = {}
    for key, name in by_key.items():
        plural_key = occupation_key(plurals.get(key) or plural(key))
        if plural_key in by_key and plural_key != key:
            raise ValueError(f"{side}: {name!r} and {by_key[plural_key]!r} name one occupation (singular and plural)")
        by_plural[plural_key] = name
    return by_key, by_plural


def match_occupations(
    ours: Iterable[str],
    theirs: Iterable[str],
    *,
    plurals: Mapping[str, str] | None = None,
    sides: tuple[str, str] = ("first list", "second list"),
) -> OccupationMatch:
    """Match two lists of occupation names the way a person reads them: ignoring case and spacing
    (:func:`occupation_key`), and a plural against its singular by :func:`plural` ("nurses" = "nurse",
    "salespeople" = "salesperson"; ``plurals`` adds whole-word irregular ones, singular -> plural, as
    ``retrieve.plurals`` does). Nothing else is guessed: a misspelling stays unmatched
    (:meth:`OccupationMatch.closest` suggests what it may mean).

    Args:
        ours: the names that win (a table shows these).
        theirs: the names matched against them.
        plurals: irregular plurals of whole occupations.
        sides: what to call the two lists in an error (file names).

    Raises:
        ValueError: one list names an occupation twice ("Nurse" and "nurse", or "nurse" and "nurses"), a
            name is empty, or a name matches two of the other list; the message names the list and the names.
    """
    plurals = {occupation_key(k): v for k, v in (plurals or {}).items()}
    ours, theirs = list(ours), list(theirs)
    our_keys, our_plurals = _spellings(ours, sides[0], plurals)
    their_keys, their_plurals = _spellings(theirs, sides[1], plurals)
    their_plural_key = {name: key for key, name in their_plurals.items()}
    renamed: dict[str, str] = {}
    matched: dict[str, str] = {}  # our name -> their name
    only_theirs = []
    for key, name in their_keys.items():
        # the same name; ours in the singular, theirs in the plural; ours in the plural, theirs in the singular
        candidates = (our_keys.get(key), our_plurals.get(key), our_keys.get(their_plural_key[name]))
        hits = list(dict.fromkeys(c for c in candidates if c is not None))
        if len(hits) > 1:
            raise ValueError(f"{sides[1]}: {name!r} matches both {hits[0]!r} and {hits[1]!r} of {sides[0]}")
        if not hits:
            only_theirs.append(name)
            continue
        if hits[0] in matched:
            raise ValueError(f"{sides[1]}: {matched[hits[0]]!r} and {name!r} both match {hits[0]!r} of {sides[0]}")
        matched[hits[0]] = name
        if name != hits[0]:
            renamed[name] = hits[0]
    return OccupationMatch(
        renamed=renamed,
        matched=[n for n in ours if n in matched],
        only_ours=[n for n in ours if n not in matched],
        only_theirs=only_theirs,
    )
