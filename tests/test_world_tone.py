"""The glyph world's tone attribute: off is byte-identical, on leaves gender alone, draws follow the table,
markedness follows its params, the brightness oracle reads tone back, bad tables and params are named."""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from biasloop.core.config import from_dict
from biasloop.data.corpus import CAPTION_COLUMNS, OPTIONAL_CAPTION_SCHEMA, write_corpus
from biasloop.data.hues import image_hues, image_values, oracle_labels, oracle_tones
from biasloop.data.indicators import TONE_TERMS, label_caption, label_tone_caption, tag_tone_indicators
from biasloop.data.tones import (
    TONE_ADJECTIVES,
    TONE_SCHEMA,
    TONES,
    majority_tone,
    read_tone_table,
    tone_statistics,
    tone_template,
)
from biasloop.data.world import MarkednessConfig, ToneConfig, WorldConfig, build_world
from tests.conftest import committed_params

TABLE = Path(__file__).resolve().parents[1] / "biasloop" / "data" / "assets" / "tone_by_occupation.csv"
SMALL = ["carpenter", "nurse", "lawyer", "salesperson"]
# sha256 of samples.write_csv() and of images.tobytes() of the small world below, computed with the code
# of main at fc2bf54, before tone existed.
SMALL_CAPTIONS_SHA = "c718266da1f7944a7ea568cf111b31e4ae3e69160b1dd0fb4d3ba192e740546c"
SMALL_IMAGES_SHA = "d10a36165f0b13db967b09c1e4d90379e1038578f71c879e52057b4aeca6b8ec"
PEOPLE_COLUMNS = ["id", "true_occupation", "true_gender", "true_indicator", "true_ambiguous", "split"]


@pytest.fixture(scope="module")
def small(data_dir: Path) -> WorldConfig:
    return WorldConfig(
        samples_per_occupation=60,
        distractors=10,
        near_misses=6,
        glyphs=str(data_dir / "glyphs" / "mnist"),
        occupation_table=str(data_dir / "occupations" / "occupations_bls.tsv"),
        seed=7,
    )


def _with_tone(config: WorldConfig, **changes) -> WorldConfig:
    return dataclasses.replace(config, tone=ToneConfig(enabled=True, table=str(TABLE), **changes))


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_tone_off_is_byte_identical_to_the_world_before_tone(small: WorldConfig) -> None:
    samples, images = build_world(small, SMALL)
    assert _sha(samples.write_csv().encode()) == SMALL_CAPTIONS_SHA
    assert _sha(images.tobytes()) == SMALL_IMAGES_SHA
    assert "true_tone" not in samples.columns
    # off means unread: a missing table and odd brightness change nothing
    odd = dataclasses.replace(small, tone=ToneConfig(table="no/such.csv", value_light=0.1, value_jitter=0.9))
    odd_samples, odd_images = build_world(odd, SMALL)
    assert odd_samples.equals(samples) and np.array_equal(odd_images, images)


def test_committed_params_turn_tone_on_with_the_code_defaults_otherwise() -> None:
    world = from_dict(WorldConfig, committed_params()["world"], "world")
    assert world.tone == dataclasses.replace(ToneConfig(), enabled=True) and not ToneConfig().enabled
    assert world.tone.values == {"light": 0.92, "medium": 0.63, "dark": 0.4}


def _drop_adjective(caption: str, tone: str) -> str:
    found = [a for a in TONE_ADJECTIVES[tone] if f"{a} " in caption]
    assert len(found) == 1, caption
    return caption.replace(f"{found[0]} ", "", 1)


def test_tone_on_changes_only_tone(small: WorldConfig) -> None:
    off, off_images = build_world(small, SMALL)
    on, on_images = build_world(_with_tone(small), SMALL)
    assert on.columns == [*off.columns, *TONE_SCHEMA]
    assert on.select(PEOPLE_COLUMNS).equals(off.select(PEOPLE_COLUMNS))
    marked = (on["true_tone_indicator"].fill_null("none") != "none").to_list()
    for caption_on, caption_off, tone, is_marked in zip(on["caption"], off["caption"], on["true_tone"], marked):
        assert (_drop_adjective(caption_on, tone) if is_marked else caption_on) == caption_off
        assert label_caption(caption_on) == label_caption(caption_off)  # the gender indicators are the same
    assert 0 < sum(marked) < len(marked)

    people = on["true_occupation"].is_not_null().to_numpy()
    assert np.array_equal(on_images[~people], off_images[~people])  # grey scenes untouched
    assert not np.array_equal(on_images[people], off_images[people])
    hue_on, hue_off = image_hues(on_images[people]), image_hues(off_images[people])
    assert np.allclose(np.angle(np.exp(2j * np.pi * (hue_on - hue_off))), 0.0, atol=2 * np.pi * 0.01)
    hues = (small.hue_female, small.hue_male)
    assert (oracle_labels(on_images, *hues) == oracle_labels(off_images, *hues)).all()


@pytest.fixture(scope="module")
def large(small: WorldConfig) -> tuple[WorldConfig, pl.DataFrame, np.ndarray]:
    # carpenter, salesperson: 0.80 light; chef: 0.70 medium; nurse, scientist: balanced; teacher: split;
    # baker: 0.80 dark (the committed table)
    config = dataclasses.replace(_with_tone(small), samples_per_occupation=3000, image_size=8, seed=11)
    samples, images = build_world(config, ["carpenter", "chef", "nurse", "teacher", "baker"])
    return config, samples, images


def test_drawn_tones_follow_the_table(large) -> None:
    config, samples, _ = large
    table = read_tone_table(TABLE)
    people = samples.filter(pl.col("true_occupation").is_not_null())
    assert people["true_tone"].null_count() == 0
    assert samples.filter(pl.col("true_occupation").is_null())["true_tone"].null_count() == config.distractors + 6
    for occupation, tones in people.group_by("true_occupation"):
        n = len(tones)
        for k, tone in enumerate(TONES):
            p = table[occupation[0]][k]
            observed = (tones["true_tone"] == tone).mean()
            assert abs(observed - p) < 4 * np.sqrt(p * (1 - p) / n) + 1e-9, (occupation, tone, observed, p)


def _rates(samples: pl.DataFrame) -> list[tuple[float, float, int]]:
    """Per (occupation, is majority): (observed tone-indicator rate, its majority flag, n)."""
    table = read_tone_table(TABLE)
    people = samples.filter(pl.col("true_occupation").is_not_null()).with_columns(
        majority=pl.col("true_tone")
        == pl.col("true_occupation").replace_strict({o: majority_tone(table[o]) for o in table})
    )
    rates = people.group_by("true_occupation", "majority").agg(
        (pl.col("true_tone_indicator") != "none").mean().alias("rate"), pl.len().alias("n")
    )
    return [(r["rate"], r["majority"], r["n"]) for r in rates.iter_rows(named=True)]


def test_tone_markedness_follows_base_and_counter(large, small: WorldConfig) -> None:
    _, samples, _ = large
    for rate, majority, n in _rates(samples):  # defaults: 0.1 for the majority tone, 0.5 for the others
        p = 0.1 if majority else 0.5
        assert abs(rate - p) < 4 * np.sqrt(p * (1 - p) / n), (rate, majority, n)
    written = samples.filter(pl.col("true_tone_indicator") != "none")
    assert (written["true_tone_indicator"] == written["true_tone"]).all()
    stats = tone_statistics(samples, read_tone_table(TABLE))
    assert stats["mtv_no_indicator_captions"] > stats["mtv_all_captions"] + 0.03  # the paradox's mechanism

    flat = dataclasses.replace(
        _with_tone(small, markedness=MarkednessConfig(base=0.3, counter=0.0)), samples_per_occupation=2000
    )
    flat_samples, _ = build_world(flat, ["carpenter", "chef"])
    for rate, _, n in _rates(flat_samples):
        assert abs(rate - 0.3) < 4 * np.sqrt(0.3 * 0.7 / n)


def test_tone_statistics_by_hand() -> None:
    frame = pl.DataFrame(
        {
            "true_occupation": ["nurse"] * 4 + [None],
            "true_tone": ["light", "light", "dark", "medium", None],
            "true_tone_indicator": ["none", "none", "dark", "none", None],
        }
    )
    stats = tone_statistics(frame, {"nurse": np.array([0.5, 0.25, 0.25])})
    row = stats["per_occupation"][0]
    assert (row["n"], row["share_light"], row["share_dark"], row["indicator_rate"]) == (4, 0.5, 0.25, 0.25)
    assert row["share_dark_no_indicator"] == 0.0 and row["table_light"] == 0.5
    assert stats["mtv_all_captions"] == pytest.approx(1 / 6)  # (|1/2 - 1/3| + 2 |1/4 - 1/3|) / 2
    assert stats["mtv_no_indicator_captions"] == pytest.approx(1 / 3)  # (|2/3 - 1/3| + |1/3 - 1/3| + 1/3) / 2


@pytest.mark.parametrize("image_size", [8, 16, 32])
def test_the_oracle_reads_tone_back(small: WorldConfig, image_size: int) -> None:
    config = dataclasses.replace(_with_tone(small), samples_per_occupation=500, image_size=image_size)
    samples, images = build_world(config, SMALL)
    labels = oracle_tones(images, config.tone.values)
    people = samples["true_occupation"].is_not_null().to_numpy()
    assert (labels[people] == samples["true_tone"].to_numpy()[people]).mean() >= 0.97
    assert (labels[~people] == "abstain").all()  # grey scenes: no coloured pixel
    assert np.isnan(image_values(images[~people])).all()


def _patch(value: float, hue: float = 0.57) -> np.ndarray:
    """A 4x4 image of one colour (saturation 1) at brightness ``value``, on black."""
    from biasloop.data.hues import hsv_to_rgb

    image = np.zeros((6, 6, 3))
    image[1:5, 1:5] = hsv_to_rgb(np.array([hue]), np.array([1.0]), np.array([value]))[0]
    return image


def test_the_oracle_bands_by_hand() -> None:
    # centres 0.92, 0.63, 0.40: log half-gaps ln(0.92/0.63)/2 for light and medium, ln(0.63/0.40)/2 for dark,
    # so light [0.762, 1.11], medium [0.521, 0.761], dark [0.319, 0.502]
    values = {"light": 0.92, "medium": 0.63, "dark": 0.4}
    cases = {1.0: "light", 0.77: "light", 0.75: "medium", 0.53: "medium", 0.51: "abstain", 0.49: "dark"}
    cases |= {0.33: "dark", 0.30: "abstain"}
    images = np.stack([_patch(v) for v in cases])
    assert image_values(images) == pytest.approx(list(cases))
    assert oracle_tones(images, values).tolist() == list(cases.values())
    grey, blank = np.full((6, 6, 3), 0.5), np.zeros((6, 6, 3))
    speck = np.zeros((6, 6, 3))
    speck[0, :2] = (0.9, 0.1, 0.1)  # two coloured pixels: fewer than min_pixels
    assert oracle_tones(np.stack([grey, blank, speck]), values).tolist() == ["abstain"] * 3
    with pytest.raises(ValueError, match="distinct"):
        oracle_tones(images, {"light": 0.9, "dark": 0.9})


def test_captions_carry_the_tone_lists(large) -> None:
    _, samples, _ = large
    people = samples.filter(pl.col("true_occupation").is_not_null())
    labels = [label_tone_caption(c).label for c in people["caption"]]
    assert labels == people["true_tone_indicator"].to_list()
    tagged = tag_tone_indicators(samples)
    assert tagged["tone_indicator"].to_list() == [label_tone_caption(c).label for c in samples["caption"]]
    assert tuple(TONE_TERMS) == TONES
    for tone, adjectives in TONE_ADJECTIVES.items():
        assert set(adjectives) <= set(TONE_TERMS[tone])
        assert all(a[0] not in "aeiou" for a in adjectives)  # a template's literal "a" stays right


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("photo of {article} {occupation}", "photo of {article} dark-skinned {occupation}"),
        ("a female {occupation} at work", "a dark-skinned female {occupation} at work"),
        ("two men working as {occupations}", "two men working as dark-skinned {occupations}"),
        ("male {occupations} on shift", "dark-skinned male {occupations} on shift"),
    ],
)
def test_tone_template(template: str, expected: str) -> None:
    assert tone_template(template, "dark-skinned") == expected


def test_tone_template_needs_an_occupation() -> None:
    with pytest.raises(ValueError, match="no \\{occupation\\}"):
        tone_template("a city street", "dark-skinned")


def _table(tmp_path: Path, text: str) -> str:
    path = tmp_path / "tones.csv"
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("occupation,light,medium,dark\nnurse,0.2,0.3,0.5\n", r"occupations \['carpenter'\] not in"),
        ("occupation,light,medium,dark\nnurse,0.2,0.3,0.4\ncarpenter,0.2,0.3,0.5\n", "line 2, occupation 'nurse'.*sum"),
        ("# c\noccupation,light,medium,dark\nnurse,0.2,0.3,0.5\ncarpenter,0.2,0.3,x\n", "line 4.*carpenter.*numbers"),
        ("occupation,light,medium,beige\nnurse,0.2,0.3,0.5\n", "unknown tone class 'beige'"),
        ("occupation,light,medium\nnurse,0.5,0.5\n", "missing the column of tone class 'dark'"),
        ("occupation,light,medium,dark\nnurse,1.2,-0.3,0.1\n", r"in \[0, 1\]"),
        ("occupation,light,medium,dark\nnurse,0.2,0.3,0.5\nnurse,0.2,0.3,0.5\n", "listed twice"),
    ],
)
def test_bad_tables_are_named(small: WorldConfig, tmp_path: Path, text: str, message: str) -> None:
    config = dataclasses.replace(small, tone=ToneConfig(enabled=True, table=_table(tmp_path, text)))
    with pytest.raises(ValueError, match=f"world.tone.table: .*{message}"):
        build_world(config, ["nurse", "carpenter"])


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"value_medium": 0.85}, "world.tone.value_light: must lie above value_medium"),
        ({"value_dark": 0.6}, "world.tone.value_medium: must lie above value_dark"),
        ({"value_light": 0.97}, "world.tone.value_light: value \\* \\(1 \\+ value_jitter\\)"),
        ({"value_jitter": 1.0}, "world.tone.value_jitter"),
        ({"value_dark": 0.0}, "world.tone.value_dark: must be above 0"),
        ({"markedness": MarkednessConfig(base=0.7, counter=0.4)}, "world.tone.markedness"),
    ],
)
def test_bad_tone_params_are_named(small: WorldConfig, changes: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build_world(_with_tone(small, **changes), SMALL)


def test_missing_table_is_named(small: WorldConfig) -> None:
    config = dataclasses.replace(small, tone=ToneConfig(enabled=True, table="no/such/tones.csv"))
    with pytest.raises(FileNotFoundError, match="world.tone.table: no/such/tones.csv"):
        build_world(config, SMALL)


def test_the_committed_table_covers_every_occupation(data_dir: Path) -> None:
    import csv

    with (data_dir / "occupations" / "occupations_bls.tsv").open() as handle:
        occupations = {row["occupation"] for row in csv.DictReader(handle, delimiter="\t")}
    table = read_tone_table(TABLE)
    assert set(table) == occupations
    majorities = {majority_tone(f) for f in table.values()}
    assert majorities == set(TONES)  # skewed to every class
    assert any(f.max() - f.min() < 0.05 for f in table.values())  # and balanced ones


def test_the_corpus_keeps_tone_columns_only_when_the_world_has_them(small: WorldConfig, tmp_path: Path) -> None:
    assert TONE_SCHEMA == OPTIONAL_CAPTION_SCHEMA
    off = write_corpus(*build_world(small, SMALL), tmp_path / "off", shard_size=100)
    assert tuple(off.columns) == CAPTION_COLUMNS
    samples, images = build_world(_with_tone(small), SMALL)
    on = write_corpus(samples, images, tmp_path / "on", shard_size=100)
    assert tuple(on.columns) == (*CAPTION_COLUMNS, *TONE_SCHEMA)
    assert on.select(*TONE_SCHEMA).equals(samples.select(*TONE_SCHEMA))


def test_the_packaged_table_is_found_from_any_working_directory(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)  # stages in DVC's queue copies and in-process tests run elsewhere
    table = read_tone_table(WorldConfig().tone.table)
    assert "nurse" in table and abs(float(table["nurse"].sum()) - 1) < 1e-9
