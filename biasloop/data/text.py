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

import re
import string

PLACEHOLDERS = ("article", "occupation", "occupations", "gender")
# Irregular plurals of a final word; a word ending in one of these keys takes the mapped ending
# ("salesperson" -> "salespeople", "chairman" -> "chairmen", "woman" -> "women").
IRREGULAR_ENDINGS = {"person": "people", "man": "men", "child": "children"}
_ARTICLE_MARK = "\x00"


def article(word: str) -> str:
    """"an" before a word starting with a vowel letter, else "a" (a spelling rule, not a sound rule)."""
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
