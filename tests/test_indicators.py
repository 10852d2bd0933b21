"""Gender-indicator labelling: every rule of biasloop.data.indicators on hand-written captions.

Decisions these tests pin down: whole words only (compound words such as "salesman", "mankind",
"heroine" never count); possessives count as the word before the apostrophe ("woman's" -> woman);
’ and ' are the same; hyphens separate words ("man-made" counts); first names only behind the flag.
"""

from __future__ import annotations

import polars as pl
import pytest

from biasloop.data.indicators import label_caption, tag_indicators

CASES = [
    # caption, label, male terms, female terms (in order of occurrence)
    ("he is an engineer", "male", ("he",), ()),
    ("She is an engineer", "female", (), ("she",)),
    ("a nurse with his patient", "male", ("his",), ()),
    ("a nurse helping her patient", "female", (), ("her",)),
    ("the engineer and him", "male", ("him",), ()),
    ("the chef herself", "female", (), ("herself",)),
    ("the chef himself", "male", ("himself",), ()),
    ("the book is hers", "female", (), ("hers",)),
    ("a man working as a nurse", "male", ("man",), ()),
    ("two men working as nurses", "male", ("men",), ()),
    ("a woman at a desk", "female", (), ("woman",)),
    ("women on shift", "female", (), ("women",)),
    ("boys and a teacher", "male", ("boys",), ()),
    ("a girl and her teacher", "female", (), ("girl", "her")),
    ("ladies who lunch", "female", (), ("ladies",)),
    ("a gentleman baker", "male", ("gentleman",), ()),
    ("gentlemen of the jury", "male", ("gentlemen",), ()),
    ("a female engineer at a desk", "female", (), ("female",)),
    ("Male nurses on shift", "male", ("male",), ()),
    # apostrophes: straight, curly, and none
    ("he's a nurse", "male", ("he's",), ()),
    ("he’s a nurse", "male", ("he's",), ()),
    ("hes a nurse", "male", ("hes",), ()),
    ("she’s a carpenter", "female", (), ("she's",)),
    ("SHE'S A CARPENTER", "female", (), ("she's",)),
    ("the book is her's", "female", (), ("her's",)),
    ("a woman's hat", "female", (), ("woman",)),
    ("a woman’s hat", "female", (), ("woman",)),
    ("a womans hat", "female", (), ("womans",)),
    ("the men's room", "male", ("men",), ()),
    ("he'll be a chef", "male", ("he",), ()),
    # both
    ("she and he are engineers", "both", ("he",), ("she",)),
    ("a man and a woman at work", "both", ("man",), ("woman",)),
    ("His and Hers towels", "both", ("his",), ("hers",)),
    # none: no indicator, and words that only contain a term (compound words do not count)
    ("portrait of a nurse at work", "none", (), ()),
    ("mankind on the moon", "none", (), ()),
    ("a hero of the city", "none", (), ()),
    ("the heroine of the film", "none", (), ()),
    ("a manager at a desk", "none", (), ()),
    ("a human in a field", "none", (), ()),
    ("a salesman at the door", "none", (), ()),
    ("a saleswoman at the door", "none", (), ()),
    ("a shell on the beach", "none", (), ()),
    ("a shepherd with sheep", "none", (), ()),
    ("here is the herbal tea", "none", (), ()),
    ("the theme of the show", "none", (), ()),
    ("womanhood and manhood", "none", (), ()),
    ("a boyish grin", "none", (), ()),
    ("the gentry", "none", (), ()),
    ("", "none", (), ()),
    # hyphens separate words
    ("a man-made lake", "male", ("man",), ()),
    ("a female-led team", "female", (), ("female",)),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] or "<empty>" for c in CASES])
def test_label_caption(case) -> None:
    caption, label, male, female = case
    assert label_caption(caption) == (label, male, female)


def test_polars_expressions_agree_with_python() -> None:
    captions = [c[0] for c in CASES] + ["He and she and his and hers, he’s", None]
    tagged = tag_indicators(pl.DataFrame({"caption": captions}, schema={"caption": pl.String}))
    for row in tagged.iter_rows(named=True):
        expected = label_caption(row["caption"])
        assert row["indicator"] == expected.label, row["caption"]
        assert tuple(row["male_terms"] or ()) == expected.male_terms, row["caption"]
        assert tuple(row["female_terms"] or ()) == expected.female_terms, row["caption"]


def test_terms_in_order_of_occurrence() -> None:
    found = label_caption("He met her, then him and HERSELF")
    assert found.male_terms == ("he", "him")
    assert found.female_terms == ("her", "herself")


def test_tag_indicators_is_lazy_and_keeps_columns() -> None:
    frame = pl.LazyFrame({"id": ["a", "b"], "text": ["a man", "a dog"]})
    out = tag_indicators(frame, column="text").collect(engine="streaming")
    assert out.columns == ["id", "text", "male_terms", "female_terms", "indicator"]
    assert out["indicator"].to_list() == ["male", "none"]


def test_first_names_only_behind_the_flag() -> None:
    caption = "portrait of Mary the engineer"
    assert label_caption(caption).label == "none"
    with_names = label_caption(caption, first_names=True)
    assert with_names.label == "female" and with_names.female_terms == ("mary",)
    assert label_caption("a photo of John, a nurse", first_names=True).male_terms == ("john",)
    # the first word's capital says nothing; lower-case words are not names
    assert label_caption("Mary", first_names=True).label == "none"
    assert label_caption("a nurse named mary", first_names=True).label == "none"
    tagged = tag_indicators(pl.DataFrame({"caption": [caption, "a photo of John, a nurse", "Mary"]}), first_names=True)
    assert tagged["indicator"].to_list() == ["female", "male", "none"]
    assert tagged["female_terms"].to_list()[0] == ["mary"]
