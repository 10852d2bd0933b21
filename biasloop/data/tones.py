"""The tone attribute of the glyph world: a second perceived attribute, three classes, with ground truth.

Each sample of occupation ``o`` draws a tone ``t`` in :data:`TONES` (``light``, ``medium``, ``dark``) from
``table[o]``, a synthetic table of tone distributions per occupation (``world.tone.table``, by default
``biasloop/data/assets/tone_by_occupation.csv``: invented numbers, not statistics of any population; see
docs/attributes.md). Tone is rendered as the **brightness** (HSV value) of the glyph's colour, a
channel independent of the hue that codes gender: the glyph is scaled so that its brightest pixel is 1,
then tinted with the sample's hue and saturation at the tone's brightness (:func:`tone_images`), so the
brightest glyph pixel reads back the tone (:func:`biasloop.data.hues.oracle_tones`). Captions are marked
as for gender: a caption carries a tone adjective ("a dark-skinned nurse") with probability::

    P(tone indicator | o, t) = tone.markedness.base + tone.markedness.counter * [t is not the majority tone of o]

where the majority tone of ``o`` is the class with the largest fraction in ``table[o]`` (the first of
:data:`TONES` on a tie). The adjective goes right before the occupation word, or before a gender adjective
standing right before it ("a dark-skinned female engineer"), so one caption can carry both indicators.

Every tone draw comes from the tone's own random stream (:func:`tone_rng`), so the world's main stream,
and with it every gender, caption template, glyph, hue and split, is the same with tone on or off.
"""

from __future__ import annotations

import csv
import dataclasses
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import polars as pl

from biasloop.data.hues import colour_glyphs, with_value

TONES = ("light", "medium", "dark")
# The caption adjectives of each tone in the world. Each starts with a consonant, so a template's literal
# "a" before the inserted adjective stays right ("a dark-skinned male nurse").
TONE_ADJECTIVES = {
    "light": ("light-skinned", "fair-skinned"),
    "medium": ("medium-skinned", "tan-skinned"),
    "dark": ("dark-skinned", "brown-skinned"),
}
# The columns build_world adds when tone is on (null for distractors); `none` when no tone indicator.
TONE_SCHEMA = {"true_tone": pl.String, "true_tone_indicator": pl.String}
TONE_STREAM = 1  # spawn key of the tone's random stream under the world seed
_SUM_TOLERANCE = 1e-6
_OCCUPATION_SLOT = re.compile(r"(\b(?:fe)?male )?(\{occupations?\})")


def tone_rng(seed: int) -> np.random.Generator:
    """The tone's own random stream: the child of ``SeedSequence(seed)`` with spawn key ``(TONE_STREAM,)``,
    independent of the world's main stream ``default_rng(seed)``."""
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(TONE_STREAM,)))


def read_tone_table(path: str | Path) -> dict[str, np.ndarray]:
    """Read ``occupation -> (light, medium, dark)`` fractions from a CSV (lines starting with ``#`` are
    comments; columns ``occupation`` and exactly the classes of :data:`TONES`, in any order).

    Raises:
        FileNotFoundError: no such file.
        ValueError: naming the file, the line and the field: a missing or unknown class column, a
            fraction that is not a number in [0, 1], fractions not summing to 1 (within 1e-6), an
            occupation listed twice.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"world.tone.table: {path} not found")
    with path.open(newline="") as handle:
        numbered = [(n, line) for n, line in enumerate(handle, start=1) if line.strip() and line[0] != "#"]
    if not numbered:
        raise ValueError(f"world.tone.table: {path} has no header line")
    header = next(csv.reader([numbered[0][1]]))
    if header[:1] != ["occupation"]:
        raise ValueError(f"world.tone.table: {path}, line {numbered[0][0]}: the first column must be 'occupation'")
    unknown = [c for c in header[1:] if c not in TONES]
    if unknown:
        raise ValueError(f"world.tone.table: {path}: unknown tone class {unknown[0]!r} (classes: {', '.join(TONES)})")
    missing = [t for t in TONES if t not in header]
    if missing:
        raise ValueError(f"world.tone.table: {path}: missing the column of tone class {missing[0]!r}")
    table: dict[str, np.ndarray] = {}
    for line, row in zip((n for n, _ in numbered[1:]), csv.DictReader([text for _, text in numbered])):
        where = f"world.tone.table: {path}, line {line}, occupation {row['occupation']!r}"
        try:
            fractions = np.array([float(row[t]) for t in TONES])
        except (TypeError, ValueError):
            raise ValueError(f"{where}: fractions must be numbers, got {[row[t] for t in TONES]}") from None
        if not np.all((fractions >= 0) & (fractions <= 1)):
            raise ValueError(f"{where}: fractions must be in [0, 1], got {fractions.tolist()}")
        if abs(fractions.sum() - 1.0) > _SUM_TOLERANCE:
            raise ValueError(f"{where}: fractions sum to {fractions.sum():.6g}, not 1")
        if row["occupation"] in table:
            raise ValueError(f"{where}: occupation listed twice")
        table[row["occupation"]] = fractions
    return table


def check_tone_brightness(values: Mapping[str, float], jitter: float) -> None:
    """Check ``world.tone``'s brightness: each class's band ``value * [1 - jitter, 1 + jitter]`` lies in
    (0, 1], and the bands do not overlap, darkest to lightest (so :func:`biasloop.data.hues.oracle_tones`
    reads every drawn brightness back). Raises ValueError naming the ``world.tone`` key."""
    if not 0.0 <= jitter < 1.0:
        raise ValueError(f"world.tone.value_jitter: must be in [0, 1), got {jitter}")
    low, high = 1.0 - jitter, 1.0 + jitter
    if not values[TONES[-1]] > 0.0:
        raise ValueError(f"world.tone.value_{TONES[-1]}: must be above 0, got {values[TONES[-1]]}")
    for lighter, darker in zip(TONES, TONES[1:]):
        if values[darker] * high >= values[lighter] * low:
            raise ValueError(
                f"world.tone.value_{lighter}: must lie above value_{darker}, their bands "
                f"value * [1 - value_jitter, 1 + value_jitter] overlap ({values[lighter]} and {values[darker]})"
            )
    if values[TONES[0]] * high > 1.0:
        raise ValueError(
            f"world.tone.value_{TONES[0]}: value * (1 + value_jitter) must be at most 1, got {values[TONES[0]]}"
        )


def majority_tone(fractions: np.ndarray) -> str:
    """The class with the largest fraction (the first of :data:`TONES` on a tie)."""
    return TONES[int(np.argmax(fractions))]


def tone_template(template: str, adjective: str) -> str:
    """``template`` with ``adjective`` before its first ``{occupation}`` / ``{occupations}``, or before a
    ``female`` / ``male`` right in front of it: ``"a female {occupation} at work"`` becomes
    ``"a dark-skinned female {occupation} at work"``."""
    text, n = _OCCUPATION_SLOT.subn(lambda m: f"{adjective} {m[1] or ''}{m[2]}", template, count=1)
    if n == 0:
        raise ValueError(f"template {template!r}: no {{occupation}} to put a tone adjective before")
    return text


@dataclasses.dataclass(frozen=True)
class ToneDraws:
    """The tone draws of a world's people, occupation by occupation, in the order build_world draws them."""

    tone: np.ndarray  # (n,) str: the sample's tone
    indicator: np.ndarray  # (n,) bool: the caption carries a tone adjective
    adjective: np.ndarray  # (n,) object: the adjective ("" without indicator)
    value: np.ndarray  # (n,) float: the brightness (HSV value) of the sample's colour


def draw_tones(
    table: Mapping[str, np.ndarray],
    occupations: Sequence[str],
    n: int,
    markedness: tuple[float, float],
    values: Mapping[str, float],
    jitter: float,
    seed: int,
) -> ToneDraws:
    """Draw ``n`` samples' tones per occupation, their caption markedness and brightness, from :func:`tone_rng`.

    Args:
        table: occupation -> fractions of :data:`TONES` (:func:`read_tone_table`).
        occupations: in build_world's order.
        n: samples per occupation.
        markedness: ``(base, counter)`` of ``world.tone.markedness``.
        values: tone -> its brightness (HSV value in (0, 1]).
        jitter: the brightness is ``values[tone] * U(1 - jitter, 1 + jitter)``.
        seed: the world seed.
    """
    rng = tone_rng(seed)
    base, counter = markedness
    tones, indicators, adjectives = [], [], []
    for occupation in occupations:
        fractions = np.asarray(table[occupation], dtype=float)
        tone = np.asarray(TONES)[rng.choice(len(TONES), size=n, p=fractions / fractions.sum())]
        indicator = rng.random(n) < base + counter * (tone != majority_tone(fractions))
        pick = rng.random(n)
        adjectives += [
            TONE_ADJECTIVES[t][int(u * len(TONE_ADJECTIVES[t]))] if marked else ""
            for t, marked, u in zip(tone, indicator, pick)
        ]
        tones.append(tone)
        indicators.append(indicator)
    tone = np.concatenate(tones) if tones else np.array([], dtype=str)
    value = np.array([values[t] for t in tone], dtype=float) * rng.uniform(1.0 - jitter, 1.0 + jitter, len(tone))
    return ToneDraws(tone, np.concatenate(indicators), np.array(adjectives, dtype=object), value)


def tone_images(glyphs: np.ndarray, rgb: np.ndarray, value: np.ndarray) -> np.ndarray:
    """Render tone: each grey glyph ``(n, h, w)`` scaled so its brightest pixel is 1, tinted with its colour
    ``rgb`` (n, 3) brought to brightness ``value`` (n,) (hue and saturation kept). Returns uint8 (n, h, w, 3)."""
    peak = glyphs.reshape(len(glyphs), -1).max(axis=1)
    scaled = glyphs / np.maximum(peak, 1e-6)[:, None, None]
    return colour_glyphs(scaled, with_value(rgb, value))


def tone_columns(draws: ToneDraws, n_other: int, order: np.ndarray) -> dict[str, list]:
    """``true_tone`` and ``true_tone_indicator`` (the tone, or ``none``) of build_world's rows: the people
    in draw order, then ``n_other`` distractors (null), permuted by ``order``."""
    tone = draws.tone.tolist() + [None] * n_other
    indicator = np.where(draws.indicator, draws.tone, "none").tolist() + [None] * n_other
    return {"true_tone": [tone[j] for j in order], "true_tone_indicator": [indicator[j] for j in order]}


def tone_statistics(samples: pl.DataFrame, table: Mapping[str, np.ndarray]) -> dict:
    """Per occupation: the table's fractions, the drawn share of each tone, that share among captions
    without a tone indicator, and the tone indicator rate; and, averaged over occupations, the total
    variation distance from the uniform distribution of all captions and of unmarked ones (the K-class
    counterpart of the gender's mean distance from parity: unmarked captions lie further from uniform)."""
    people = samples.filter(pl.col("true_tone").is_not_null())
    unmarked = pl.col("true_tone_indicator") == "none"
    shares = [(pl.col("true_tone") == t).mean().alias(f"share_{t}") for t in TONES]
    shares_unmarked = [
        (pl.col("true_tone") == t).filter(unmarked).mean().alias(f"share_{t}_no_indicator") for t in TONES
    ]
    rate = (~unmarked).mean().alias("indicator_rate")
    frame = people.group_by("true_occupation").agg(pl.len().alias("n"), *shares, *shares_unmarked, rate)
    per_occupation, tv_all, tv_unmarked = [], [], []
    for row in frame.sort("true_occupation").iter_rows(named=True):
        fractions = table.get(row["true_occupation"])
        table_row = {f"table_{t}": float(fractions[i]) if fractions is not None else None for i, t in enumerate(TONES)}
        per_occupation.append({"occupation": row["true_occupation"], **table_row, **row})
        tv_all.append(0.5 * sum(abs(row[f"share_{t}"] - 1 / len(TONES)) for t in TONES))
        if row["indicator_rate"] < 1.0:  # an occupation whose captions are all marked has no unmarked share
            tv_unmarked.append(0.5 * sum(abs(row[f"share_{t}_no_indicator"] - 1 / len(TONES)) for t in TONES))
    return {
        "mtv_all_captions": sum(tv_all) / max(len(tv_all), 1),
        "mtv_no_indicator_captions": sum(tv_unmarked) / max(len(tv_unmarked), 1),
        "per_occupation": per_occupation,
    }
