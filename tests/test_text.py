"""The shared text rules: articles, plurals, templates."""

from __future__ import annotations

import pytest

from biasloop.data.text import article, fill_template, plural


@pytest.mark.parametrize(
    ("word", "expected"),
    [("nurse", "nurses"), ("secretary", "secretaries"), ("day", "days"), ("coach", "coaches"),
     ("boss", "bosses"), ("chairman", "chairmen"), ("mechanic", "mechanics"), ("salesperson", "salespeople"),
     ("aerospace engineer", "aerospace engineers"), ("woman", "women"), ("box", "boxes")],
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
    [("a photo of {a} {occupation}", "unknown placeholder {a}"), ("a photo of a {}", "unknown placeholder {}"),
     ("a photo of {article} {gender}", "needs {gender}"), ("a photo {article}", "must be followed by a word"),
     ("a photo of {occupation", "template")],
)
def test_fill_template_rejects_bad_templates(template: str, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("{", r"\{").replace("}", r"\}")):
        fill_template(template, occupation="nurse")
