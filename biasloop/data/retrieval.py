"""Keyword retrieval: for each occupation, the captions that mention it, with their gender indicators.

Matching rules:

- **Whole words, case-insensitive**: ``nurse`` matches "Nurse", "nurse's", "NURSES" but never
  "nursery"; ``engineer`` never matches "engineering".
- **Singular and plural**: the plural rule of :func:`biasloop.data.text.plural` unless the ``plurals``
  mapping names the plural(s) for the occupation or for its last word (``salesperson: salespeople``);
  a mapped plural replaces the rule's.
- **Multi-word occupations** ("aerospace engineer") match with any run of whitespace between words;
  only the last word is pluralised ("aerospace engineers").
- A caption that mentions several occupations is retrieved once for each; "an aerospace engineer"
  counts for ``aerospace engineer`` and for ``engineer``, as a per-occupation search would.

All occupations are searched in **one regex pass** over the corpus (per-occupation passes would cost K
scans); matches are mapped back to occupations, so a nested occupation ("engineer" inside "aerospace
engineer") is found through its container's match. Occupations whose phrases could overlap without one
containing the other are put in separate passes ("layers") so that no match hides another.

The query is a polars lazy scan that runs on the streaming engine end to end (no in-memory fallback,
no memory-intensive node), so a corpus larger than memory streams through; only the matches are kept.

Output columns: ``occupation, id, caption, indicator, male_terms, female_terms``; the terms are
``list[str]`` (see :mod:`biasloop.data.indicators`), plus any requested ``keep`` columns.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from biasloop.data.indicators import LABELS, tag_indicators
from biasloop.data.text import plural

_SEPARATOR = "\x1f"  # joins several occupations mapped from one matched phrase; never in an occupation


@dataclasses.dataclass(frozen=True)
class RetrieveConfig:
    """``retrieve``: keyword retrieval and indicator tagging."""

    plurals: dict[str, str | tuple[str, ...]] = dataclasses.field(default_factory=dict)
    first_names: bool = False
    split: str | None = "train"


def normalise_occupation(occupation: str) -> str:
    """Lower-case with single spaces; raises ValueError for names that cannot match as whole words."""
    name = " ".join(occupation.lower().split())
    if not name or not re.match(r"\w", name) or not re.search(r"\w$", name):
        raise ValueError(f"occupation {occupation!r} must start and end with a letter or digit")
    if _SEPARATOR in name:
        raise ValueError(f"occupation {occupation!r} contains a control character")
    return name


def occupation_forms(occupation: str, plurals: Mapping[str, str | Sequence[str]] | None = None) -> tuple[str, ...]:
    """Singular and plural surface forms of an occupation, lower-case, singular first.

    Args:
        occupation: e.g. ``"nurse"``, ``"aerospace engineer"``.
        plurals: irregular plurals keyed by the whole occupation or by its last word; a value is one
            plural or a list of plurals.
    """
    name = normalise_occupation(occupation)
    plurals = {normalise_occupation(k): v for k, v in (plurals or {}).items()}
    *head, last = name.split(" ")
    if name in plurals:
        mapped = plurals[name]
        plural_forms = [mapped] if isinstance(mapped, str) else list(mapped)
        plural_forms = [normalise_occupation(p) for p in plural_forms]
    else:
        mapped = plurals.get(last, plural(last))
        last_forms = [mapped] if isinstance(mapped, str) else list(mapped)
        plural_forms = [" ".join([*head, normalise_occupation(p)]) for p in last_forms]
    return tuple(dict.fromkeys([name, *plural_forms]))


def form_regex(forms: Iterable[str]) -> str:
    """Case-insensitive whole-word regex for any of ``forms`` (longest first; spaces match any whitespace)."""
    ordered = sorted(set(forms), key=lambda f: (-len(f), f))
    alternatives = "|".join(r"\s+".join(re.escape(w) for w in f.split(" ")) for f in ordered)
    return rf"(?i)\b(?:{alternatives})\b"


def _can_overlap(first: str, second: str) -> bool:
    """Whether a word-bounded match of ``first`` can end inside one of ``second`` (a suffix of its words
    is a prefix of the other's); containment is handled separately."""
    a, b = re.findall(r"\w+", first), re.findall(r"\w+", second)
    return any(a[-n:] == b[:n] for n in range(1, min(len(a), len(b)) + 1))


@dataclass(frozen=True)
class OccupationMatcher:
    """Compiled search plan for a list of occupations.

    Attributes:
        occupations: normalised occupation names, in the given order.
        forms: ``{occupation: (singular, plural, ...)}``.
        layers: groups of forms searched in one regex pass each (usually a single group).
        form_occupations: ``{form: occupations a match of this form counts for}`` (itself and every
            occupation nested inside it).
    """

    occupations: tuple[str, ...]
    forms: Mapping[str, tuple[str, ...]]
    layers: tuple[tuple[str, ...], ...]
    form_occupations: Mapping[str, tuple[str, ...]]

    @classmethod
    def build(
        cls, occupations: Sequence[str], plurals: Mapping[str, str | Sequence[str]] | None = None
    ) -> OccupationMatcher:
        """Build the plan; raises ValueError for an empty list, duplicates, or two occupations sharing a form."""
        names = [normalise_occupation(o) for o in occupations]
        if not names:
            raise ValueError("no occupations given")
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate occupations in {list(occupations)}")
        forms = {name: occupation_forms(name, plurals) for name in names}
        owner: dict[str, str] = {}
        for name, name_forms in forms.items():
            for form in name_forms:
                if owner.setdefault(form, name) != name:
                    raise ValueError(f"occupations {owner[form]!r} and {name!r} share the form {form!r}")
        contained = {form: [owner[form]] for form in owner}
        conflicts: dict[str, set[str]] = {name: set() for name in names}
        compiled = {form: re.compile(form_regex([form])) for form in owner}
        for outer in owner:
            for inner in owner:
                if owner[inner] == owner[outer] or inner == outer:
                    continue
                if compiled[inner].search(outer):
                    if owner[inner] not in contained[outer]:
                        contained[outer].append(owner[inner])
                elif not compiled[outer].search(inner) and _can_overlap(inner, outer):
                    # a caption can hold both phrases overlapping ("software engineer manager" for
                    # "software engineer" and "engineer manager"): one pass would report only the first
                    conflicts[owner[inner]].add(owner[outer])
                    conflicts[owner[outer]].add(owner[inner])
        layer_of: dict[str, int] = {}
        for name in names:  # greedy colouring; occupations in the same layer never overlap
            taken = {layer_of[other] for other in conflicts[name] if other in layer_of}
            layer_of[name] = next(i for i in range(len(names)) if i not in taken)
        layers = tuple(
            tuple(form for name in names if layer_of[name] == i for form in forms[name])
            for i in range(max(layer_of.values()) + 1)
        )
        return cls(tuple(names), forms, layers, {f: tuple(o) for f, o in contained.items()})

    def pattern(self, occupation: str) -> str:
        """The regex of one occupation alone (for per-occupation searches such as a pandas baseline)."""
        return form_regex(self.forms[normalise_occupation(occupation)])

    def occupations_expr(self, column: str = "caption") -> tuple[list[pl.Expr], pl.Expr, pl.Expr]:
        """Expressions finding the occupations a caption mentions.

        Returns:
            ``(found, any_found, occupations)``: ``found`` adds one ``list[str]`` column of matched text
            per layer (``_match0``, ...); ``any_found`` is true where any layer matched; ``occupations``
            is the ``list[str]`` of distinct occupations, in order of first mention.
        """
        found = [
            pl.col(column).str.extract_all(form_regex(layer)).alias(f"_match{i}") for i, layer in enumerate(self.layers)
        ]
        any_found = pl.any_horizontal([pl.col(f"_match{i}").list.len() > 0 for i in range(len(self.layers))])
        mapping = {form: _SEPARATOR.join(occs) for form, occs in self.form_occupations.items()}
        # each step costs a pass over the matches, so only the ones these occupations need are added
        matched = pl.element().str.to_lowercase()
        if any(" " in form for form in mapping):
            matched = matched.str.replace_all(r"\s+", " ")
        matched = matched.replace_strict(mapping, return_dtype=pl.String)
        if any(len(occs) > 1 for occs in self.form_occupations.values()):
            matched = matched.str.split(_SEPARATOR).explode()
        per_layer = [pl.col(f"_match{i}").list.eval(matched) for i in range(len(self.layers))]
        merged = per_layer[0] if len(per_layer) == 1 else pl.concat_list(per_layer)
        return found, any_found, merged.list.unique(maintain_order=True)


OUTPUT_COLUMNS = ("occupation", "id", "caption", "indicator", "male_terms", "female_terms")


def retrieve_lazy(
    corpus: pl.LazyFrame | str | Path,
    occupations: Sequence[str],
    plurals: Mapping[str, str | Sequence[str]] | None = None,
    first_names: bool = False,
    keep: Sequence[str] = (),
) -> pl.LazyFrame:
    """The lazy retrieval query: one row per (occupation, caption that mentions it).

    Args:
        corpus: a lazy frame or a parquet path/glob with ``id`` and ``caption`` columns.
        occupations: occupation names (see :func:`occupation_forms` for the forms matched).
        plurals: irregular plurals (``{"salesperson": "salespeople"}``).
        first_names: also count gendered first names as indicators (gender-guesser).
        keep: extra corpus columns to carry along (e.g. ground truth for evaluation).

    Returns:
        A lazy frame with :data:`OUTPUT_COLUMNS` plus ``keep``, in corpus order, for
        ``.collect(engine="streaming")`` or ``.sink_parquet(...)``.
    """
    matcher = OccupationMatcher.build(occupations, plurals)
    scan = pl.scan_parquet(corpus) if isinstance(corpus, (str, Path)) else corpus
    found, any_found, occupations_found = matcher.occupations_expr("caption")
    matches = (
        scan.select("id", "caption", *keep)
        .with_columns(found)
        .filter(any_found)  # cheap rows-out first: the rest only runs on captions that matched
        .with_columns(occupations_found.alias("occupation"))
        .drop([f"_match{i}" for i in range(len(matcher.layers))])
    )
    return tag_indicators(matches, "caption", first_names).explode("occupation").select(*OUTPUT_COLUMNS, *keep)


def streaming_problems(query: pl.LazyFrame) -> list[str]:
    """Nodes of ``query``'s streaming physical plan that fall back to the in-memory engine or may hold
    their whole input in memory (empty when the query streams end to end).

    Reads the colour legend of polars' physical plan graph, which is the only place polars reports this.
    """
    dot = query.show_graph(engine="streaming", plan_stage="physical", raw_output=True) or ""
    legend = re.search(
        r'<FONT COLOR="([^"]+)">⬤</FONT> potentially memory-intensive.*?<FONT COLOR="([^"]+)">⬤</FONT> in-memory', dot
    )
    colours = set(legend.groups()) if legend else {"0.16 0.3 1.0", "0.0 0.3 1.0"}
    problems = []
    for label, colour in re.findall(r'\[label="([^"]*(?:\\"[^"]*)*)",style=filled,fillcolor="([^"]+)"\]', dot):
        if colour in colours:
            problems.append(label.split("\\n", 1)[0])
    return problems


def parse_occupations(value: object) -> tuple[str, ...]:
    """Validate the top-level ``occupations`` param: a non-empty list of distinct names."""
    if not isinstance(value, (list, tuple)) or not value or not all(isinstance(o, str) for o in value):
        raise ValueError(f"occupations: expected a non-empty list of strings, found {value!r}")
    names = tuple(normalise_occupation(o) for o in value)
    if len(set(names)) != len(names):
        raise ValueError(f"occupations: duplicate names in {list(value)}")
    return names


def evaluate_against_truth(matches: pl.DataFrame, corpus: pl.LazyFrame, occupations: Sequence[str]) -> dict:
    """Retrieval precision/recall against ``true_occupation`` and indicator agreement with ``true_indicator``.

    Args:
        matches: retrieval output carrying the ground-truth columns it found in the corpus.
        corpus: the corpus scan (only ``true_occupation`` is read, streaming, for recall denominators).
        occupations: the occupations searched.

    Returns:
        ``{"precision", "recall", "occupations": {o: {"precision", "recall", "n_true"}}}`` (micro
        averages over occupations) and, where ``true_indicator`` exists, ``indicator_agreement`` (share
        of retrieved captions whose label equals the world's) with ``indicator_confusion``
        (``{true: {found: n}}``). Empty when the corpus has no ground truth.
    """
    result: dict = {}
    if "true_occupation" in matches.columns:
        n_true = dict(corpus.group_by("true_occupation").len().collect(engine="streaming").iter_rows())
        per_occupation = (
            matches.group_by("occupation")
            .agg(n=pl.len(), correct=(pl.col("true_occupation") == pl.col("occupation")).sum())
            .rows_by_key("occupation", unique=True)
        )
        table = {}
        for name in occupations:
            n, correct = per_occupation.get(name, (0, 0))
            table[name] = {
                "precision": correct / n if n else None,
                "recall": correct / n_true[name] if n_true.get(name) else None,
                "n_true": int(n_true.get(name, 0)),
            }
        retrieved = sum(v[0] for v in per_occupation.values())
        correct = sum(v[1] for v in per_occupation.values())
        relevant = sum(int(n_true.get(name, 0)) for name in occupations)
        result.update(
            precision=correct / retrieved if retrieved else None,
            recall=correct / relevant if relevant else None,
            occupations=table,
        )
    if "true_indicator" in matches.columns:
        labelled = matches.unique("id").filter(pl.col("true_indicator").is_not_null())
        confusion: dict[str, dict[str, int]] = {}
        for truth, found, n in (
            labelled.group_by("true_indicator", "indicator").len().sort("true_indicator", "indicator").iter_rows()
        ):
            confusion.setdefault(truth, {})[found] = n
        result["indicator_agreement"] = (
            float((labelled["indicator"] == labelled["true_indicator"]).mean()) if len(labelled) else None
        )
        result["indicator_confusion"] = confusion
    return result


def occupations_without_matches(matches: pl.DataFrame, occupations: Sequence[str]) -> list[str]:
    """The occupations (in the given order) that no retrieved caption mentions.

    Such an occupation has no training share, so every average over occupations downstream leaves it
    out; the retrieve stage names them in a warning and in its metrics.
    """
    found = set(matches["occupation"].unique().to_list()) if len(matches) else set()
    return [name for name in occupations if name not in found]


def indicator_shares(matches: pl.DataFrame, occupations: Sequence[str]) -> dict:
    """Counts and label shares of retrieved captions, overall (distinct captions) and per occupation."""

    def shares(frame: pl.DataFrame) -> dict:
        counts = dict(frame.group_by("indicator").len().iter_rows())
        n = len(frame)
        return {"n": n, **{f"share_{label}": (counts.get(label, 0) / n if n else None) for label in LABELS}}

    return {
        "all": shares(matches.unique("id")),
        "occupations": {name: shares(matches.filter(pl.col("occupation") == name)) for name in occupations},
    }


DEFAULT_PROMPTS: tuple[str, ...] = (
    "A photo of the face of {article} {occupation}",
    "A photo of {article} {occupation}",
    "A portrait of {article} {occupation} at work",
)
SELECTIONS: tuple[str, ...] = ("keyword", "keyword_no_indicator", "nn", "nn_no_indicator")


@dataclasses.dataclass(frozen=True)
class NeighboursConfig:
    """``neighbours``: nearest-neighbour caption selection."""

    model: str | None = None
    prompts: tuple[str, ...] = DEFAULT_PROMPTS
    k: int = 100
    batch_size: int = 64
    allow_download: bool = False


def select_neighbours(matches: pl.DataFrame, similarity: Sequence[float], k: int) -> pl.DataFrame:
    """The four caption selections of the paradox study, ranked by similarity to the occupation prompts.

    Args:
        matches: retrieval output (``occupation, id, indicator``).
        similarity: cosine similarity of each match row's caption to its occupation's prompt embedding.
        k: captions per occupation in the nearest-neighbour selections.

    Returns:
        ``selection, occupation, id, similarity, rank``: ``keyword`` (every retrieved caption) and
        ``keyword_no_indicator`` (those labelled ``none``) ranked in full; ``nn`` and
        ``nn_no_indicator`` their top ``k`` per occupation. Rank 1 is the most similar; ties go to
        the smaller id.
    """
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    scored = (
        matches.select("occupation", "id", "indicator")
        .with_columns(similarity=pl.Series(np.asarray(similarity, dtype=np.float32)))
        .unique(["occupation", "id"], maintain_order=True)
    )
    ranked_frames = []
    for selection, frame in (
        ("keyword", scored),
        ("keyword_no_indicator", scored.filter(pl.col("indicator") == "none")),
    ):
        ranked = frame.sort(["occupation", "similarity", "id"], descending=[False, True, False]).with_columns(
            selection=pl.lit(selection), rank=pl.int_range(1, pl.len() + 1, dtype=pl.UInt32).over("occupation")
        )
        nn_name = selection.replace("keyword", "nn")
        ranked_frames += [ranked, ranked.filter(pl.col("rank") <= k).with_columns(selection=pl.lit(nn_name))]
    columns = ["selection", "occupation", "id", "similarity", "rank"]
    return pl.concat([f.select(columns) for f in ranked_frames]).sort(
        pl.col("selection").cast(pl.Enum(list(SELECTIONS))), "occupation", "rank"
    )
