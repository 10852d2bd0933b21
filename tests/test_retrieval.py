"""Keyword retrieval: forms, word boundaries, nesting, and a streaming scan over millions of rows."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from biasloop.data.retrieval import (
    OccupationMatcher,
    occupation_forms,
    parse_occupations,
    retrieve_lazy,
    select_neighbours,
    streaming_problems,
)

OCCUPATIONS = ["nurse", "engineer", "aerospace engineer", "salesperson", "secretary", "chairman", "mechanic"]
PLURALS = {"salesperson": "salespeople"}


def _matched(captions: list[str], occupations=OCCUPATIONS, plurals=PLURALS) -> list[set[str]]:
    corpus = pl.LazyFrame({"id": [f"c{i}" for i in range(len(captions))], "caption": captions})
    found = retrieve_lazy(corpus, occupations, plurals).collect(engine="streaming")
    by_id = found.group_by("id").agg(pl.col("occupation")).rows_by_key("id", unique=True)
    return [set(by_id.get(f"c{i}", [[]])[0]) for i in range(len(captions))]


def test_forms_irregular_and_multi_word() -> None:
    assert occupation_forms("Salesperson", PLURALS) == ("salesperson", "salespeople")
    assert occupation_forms("sales person", {"person": "people"}) == ("sales person", "sales people")
    assert occupation_forms("aerospace engineer") == ("aerospace engineer", "aerospace engineers")
    assert occupation_forms("attorney", {"attorney": ["attorneys", "attornies"]}) == (
        "attorney",
        "attorneys",
        "attornies",
    )


CASES = [
    ("portrait of a nurse at work", {"nurse"}),
    ("nurses on shift", {"nurse"}),
    ("A NURSE smiling", {"nurse"}),
    ("the Nurse’s station", {"nurse"}),
    ("the nurses' lounge", {"nurse"}),
    ("a nursery with toys", set()),
    ("engineering building at night", set()),
    ("an engineer at a desk", {"engineer"}),
    ("two salespeople talking", {"salesperson"}),
    ("a salesperson smiling", {"salesperson"}),
    ("salespersons", set()),  # the mapped plural replaces the regular one
    ("the secretaries' office", {"secretary"}),
    ("an aerospace engineer at work", {"aerospace engineer", "engineer"}),
    ("Aerospace   Engineers at work", {"aerospace engineer", "engineer"}),
    ("aerospace engineering", set()),
    ("aerospace and an engineer", {"engineer"}),
    ("chairmen of the board", {"chairman"}),
    ("a nurse and a mechanic", {"nurse", "mechanic"}),
    ("nurse, nurses and more nurses", {"nurse"}),
    ("mechanical parts", set()),
    ("a dog in a park", set()),
]


def test_matching_rules() -> None:
    found = _matched([c for c, _ in CASES])
    for (caption, expected), got in zip(CASES, found):
        assert got == expected, caption


def test_matches_equal_per_occupation_search() -> None:
    """The single-pass plan finds exactly what one regex per occupation finds."""
    captions = [c for c, _ in CASES]
    matcher = OccupationMatcher.build(OCCUPATIONS, PLURALS)
    series = pl.Series(captions)
    expected = [
        {o for o in matcher.occupations if series.str.contains(matcher.pattern(o))[i]} for i in range(len(captions))
    ]
    assert _matched(captions) == expected


def test_overlapping_occupations_use_separate_passes() -> None:
    occupations = ["software engineer", "engineer manager", "engineer"]
    matcher = OccupationMatcher.build(occupations)
    assert len(matcher.layers) == 2  # nested ones share a pass; overlapping ones cannot
    assert _matched(["a software engineer manager"], occupations, {}) == [set(occupations)]
    assert len(OccupationMatcher.build(["engineer", "aerospace engineer", "software engineer"]).layers) == 1


def test_output_columns_and_indicators() -> None:
    corpus = pl.LazyFrame({"id": ["a", "b", "c"], "caption": ["she is a nurse", "he and she, nurses", "a dog"]})
    out = retrieve_lazy(corpus, ["nurse"]).collect(engine="streaming")
    assert out.columns == ["occupation", "id", "caption", "indicator", "male_terms", "female_terms"]
    assert out["indicator"].to_list() == ["female", "both"]
    assert out["female_terms"].to_list() == [["she"], ["she"]]
    assert out.schema["male_terms"] == pl.List(pl.String)


def test_bad_occupations_rejected() -> None:
    with pytest.raises(ValueError, match="duplicate"):
        parse_occupations(["nurse", "Nurse"])
    with pytest.raises(ValueError, match="non-empty list"):
        parse_occupations("nurse")
    with pytest.raises(ValueError, match="share the form"):
        OccupationMatcher.build(["person", "persons"], {"person": "persons"})
    with pytest.raises(ValueError, match="letter or digit"):
        OccupationMatcher.build(["c++"])


def test_select_neighbours_ranks_and_ties() -> None:
    matches = pl.DataFrame(
        {
            "occupation": ["nurse"] * 4 + ["chef"],
            "id": ["d", "c", "b", "a", "e"],
            "indicator": ["none", "female", "none", "none", "male"],
        }
    )
    selections = select_neighbours(matches, [0.9, 0.95, 0.5, 0.9, 0.1], k=2)

    def pick(name: str, occupation: str = "nurse") -> list[str]:
        return selections.filter(selection=name, occupation=occupation)["id"].to_list()

    assert pick("keyword") == ["c", "a", "d", "b"]  # a and d tie at 0.9: smaller id first
    assert pick("nn") == ["c", "a"]
    assert pick("keyword_no_indicator") == ["a", "d", "b"]
    assert pick("nn_no_indicator") == ["a", "d"]
    assert pick("nn", "chef") == ["e"] and pick("nn_no_indicator", "chef") == []
    assert selections.columns == ["selection", "occupation", "id", "similarity", "rank"]
    assert selections.filter(selection="nn", occupation="nurse")["rank"].to_list() == [1, 2]


def test_streaming_scan_of_millions_of_rows(tmp_path: Path) -> None:
    """A few million rows stream through the plan (no in-memory fallback) with exact counts."""
    pool = ["a nurse at work", "nurses on shift", "a nursery", "an engineer", "engineering", "she is a nurse", "a dog"]
    per_row = {"nurse": [1, 1, 0, 0, 0, 1, 0], "engineer": [0, 0, 0, 1, 0, 0, 0]}
    n = 3_000_000
    choice = np.random.default_rng(0).integers(0, len(pool), n)
    path = tmp_path / "captions.parquet"
    pl.DataFrame({"id": np.arange(n).astype(str), "caption": np.array(pool)[choice]}).write_parquet(
        path, row_group_size=200_000
    )
    query = retrieve_lazy(path, ["nurse", "engineer"])
    assert streaming_problems(query) == []
    start = time.perf_counter()
    out = query.collect(engine="streaming")
    elapsed = time.perf_counter() - start
    counts = np.bincount(choice, minlength=len(pool))
    for occupation, hits in per_row.items():
        assert (out["occupation"] == occupation).sum() == int(np.dot(counts, hits))
    assert (out["indicator"] == "female").sum() == counts[pool.index("she is a nurse")]
    assert elapsed < 10, f"retrieval of {n} rows took {elapsed:.1f} s"


def test_streaming_problems_flags_blocking_nodes(tmp_path: Path) -> None:
    path = tmp_path / "c.parquet"
    pl.DataFrame({"id": ["a"], "caption": ["x"]}).write_parquet(path)
    assert streaming_problems(pl.scan_parquet(path).sort("caption")) != []
