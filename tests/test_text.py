"""The shared text rules: articles, plurals, templates."""

from __future__ import annotations

import re

import pytest

from biasloop.data.text import article, fill_template, match_occupations, occupation_key, plural


@pytest.mark.parametrize(
    ("word", "expected"),
    [
        ("nurse", "nurses"),
        ("secretary", "secretaries"),
        ("day", "days"),
        ("coach", "coaches"),
        ("boss", "bosses"),
        ("chairman", "chairmen"),
        ("mechanic", "mechanics"),
        ("salesperson", "salespeople"),
        ("aerospace engineer", "aerospace engineers"),
        ("woman", "women"),
        ("box", "boxes"),
    ],
)
def test_plural(word: str, expected: str) -> None:
    assert plural(word) == expected


def test_article() -> None:
    assert [article(w) for w in ("engineer", "nurse", "Accountant", "")] == ["an", "a", "an", "a"]


def test_fill_template_articles_follow_the_next_word() -> None:
    assert fill_template("A photo of the face of {article} {occupation}", occupation="engineer") == (
        "A photo of the face of an engineer"
    )
    assert fill_template("{article} {occupation} at work", occupation="accountant") == "an accountant at work"
    assert fill_template("a portrait of {article} {occupation}", occupation="aerospace engineer") == (
        "a portrait of an aerospace engineer"
    )
    assert fill_template("two {occupations} talking", occupation="salesperson") == "two salespeople talking"
    assert fill_template("a photo of {article} {gender}", gender="woman") == "a photo of a woman"
    assert fill_template("{article} experienced {occupation}", occupation="nurse") == "an experienced nurse"


@pytest.mark.parametrize(
    ("template", "message"),
    [
        ("a photo of {a} {occupation}", "unknown placeholder {a}"),
        ("a photo of a {}", "unknown placeholder {}"),
        ("a photo of {article} {gender}", "needs {gender}"),
        ("a photo {article}", "must be followed by a word"),
        ("a photo of {occupation", "template"),
    ],
)
def test_fill_template_rejects_bad_templates(template: str, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("{", r"\{").replace("}", r"\}")):
        fill_template(template, occupation="nurse")


# ------------------------------------------------------------------------------ occupation names
def test_occupation_key_ignores_case_spacing_and_width() -> None:
    assert occupation_key("  Police\u00a0 Officer ") == occupation_key("police officer") == "police officer"
    assert occupation_key("ＮＵＲＳＥ") == "nurse"  # fullwidth letters (NFKC)


def test_match_by_case_and_plural_keeps_our_names() -> None:
    match = match_occupations(
        ["nurse", "carpenter", "salesperson", "police officer", "chef", "boss"],
        ["Nurses", "Carpenter", "salespeople", "Police Officers", "carpentr", "bosses", "baker"],
    )
    assert match.renamed == {
        "Nurses": "nurse",
        "Carpenter": "carpenter",
        "salespeople": "salesperson",
        "Police Officers": "police officer",
        "bosses": "boss",
    }
    assert match.matched == ["nurse", "carpenter", "salesperson", "police officer", "boss"]
    assert match.only_ours == ["chef"] and match.only_theirs == ["carpentr", "baker"]
    assert match.closest("carpentr", ["nurse", "carpenter"]) == "carpenter"
    assert match.closest("baker", ["nurse", "chef"]) is None  # nothing spelled alike: no guess
    reverse = match_occupations(["nurses"], ["nurse"])  # ours plural, theirs singular
    assert reverse.renamed == {"nurse": "nurses"} and reverse.matched == ["nurses"]


def test_match_uses_irregular_plurals_given() -> None:
    assert match_occupations(["fireman"], ["firemen"]).matched == ["fireman"]  # the -man rule
    assert match_occupations(["alumnus"], ["alumni"]).only_ours == ["alumnus"]
    assert match_occupations(["alumnus"], ["alumni"], plurals={"alumnus": "alumni"}).matched == ["alumnus"]


@pytest.mark.parametrize(
    ("ours", "theirs", "message"),
    [
        (["Nurse", "nurse"], ["nurse"], "T: 'Nurse' and 'nurse' name one occupation (case and spacing"),
        (["nurse"], ["nurse", "nurses"], "G: 'nurse' and 'nurses' name one occupation (singular and plural)"),
        (["nurse", " "], ["nurse"], "T: an empty occupation name"),
        (["bu", "buses"], ["bus"], "G: 'bus' matches both 'bu' and 'buses' of T"),
    ],
)
def test_one_occupation_named_twice_is_an_error(ours: list[str], theirs: list[str], message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        match_occupations(ours, theirs, sides=("T", "G"))
