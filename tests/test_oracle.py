"""The hue oracle: the glyph world's ground-truth labeller, on hand-made pixels and on world images."""

from __future__ import annotations

import colorsys
import dataclasses

import numpy as np
import polars as pl
import pytest

from biasloop.data.hues import image_hues, oracle_labels
from biasloop.data.world import WorldConfig, build_world

HUE_FEMALE, HUE_MALE = 0.93, 0.57  # the default world's; midpoint 0.75, bands +-0.09


def _glyph_image(hue: float, saturation: float = 0.9, value: float = 1.0, size: int = 8) -> np.ndarray:
    """A plus-shaped glyph of one colour on black, with a dim (low-chroma) rim like a resized glyph's edge."""
    rgb = np.array(colorsys.hsv_to_rgb(hue % 1.0, saturation, value))
    grey = np.zeros((size, size))
    grey[size // 2 - 1 : size // 2 + 1, 1:-1] = 1.0
    grey[1:-1, size // 2 - 1 : size // 2 + 1] = 1.0
    grey[1, 1] = 0.1  # one dim pixel: too little chroma to count
    return np.rint(grey[..., None] * rgb * 255).astype(np.uint8)


@pytest.mark.parametrize(
    ("hue", "expected"),
    [
        (0.93, "female"),
        (0.90, "female"),
        (0.99, "female"),
        (0.01, "female"),  # 0.01 wraps: 0.08 from 0.93
        (0.57, "male"),
        (0.52, "male"),
        (0.63, "male"),
        (0.75, "abstain"),
        (0.72, "abstain"),
        (0.78, "abstain"),  # the ambiguous midpoint, with jitter
        (0.25, "abstain"),
        (0.05, "abstain"),  # far from both hues (green; orange 0.12 from 0.93)
    ],
)
def test_hand_made_hues(hue: float, expected: str) -> None:
    image = _glyph_image(hue)[None]
    assert image_hues(image)[0] == pytest.approx(hue % 1.0, abs=0.01)
    assert oracle_labels(image, HUE_FEMALE, HUE_MALE)[0] == expected


def test_grey_blank_and_tiny_images_abstain() -> None:
    grey = _glyph_image(0.93, saturation=0.0)
    blank = np.zeros_like(grey)
    speck = np.zeros_like(grey)
    speck[0, 0] = (230, 30, 120)  # one coloured pixel: fewer than min_pixels
    images = np.stack([grey, blank, speck])
    assert np.isnan(image_hues(images)).all()
    assert oracle_labels(images, HUE_FEMALE, HUE_MALE).tolist() == ["abstain"] * 3


def test_mixed_colours_fall_between() -> None:
    # half the pixels female-hued, half male-hued, equally bright: the mean hue is the midpoint, so abstain
    image = _glyph_image(HUE_FEMALE)
    image[:, image.shape[1] // 2 :] = _glyph_image(HUE_MALE)[:, image.shape[1] // 2 :]
    hue = image_hues(image[None])[0]
    assert abs(hue - 0.75) < 0.05
    assert oracle_labels(image[None], HUE_FEMALE, HUE_MALE)[0] == "abstain"


def test_bad_input_is_named() -> None:
    with pytest.raises(ValueError, match="RGB"):
        image_hues(np.zeros((2, 8, 8)))
    with pytest.raises(ValueError, match="differ"):
        oracle_labels(np.zeros((1, 8, 8, 3), np.uint8), 0.5, 0.5)


def test_oracle_on_world_images(data_dir) -> None:
    """On the world's own images the oracle is exact: every clear image gets its ``true_gender``
    (accuracy 1.0 on 3,895 images of the default world, params.yaml's occupations), every ambiguous one
    and every grey scene abstains."""
    config = WorldConfig(
        samples_per_occupation=200,
        glyphs=str(data_dir / "glyphs" / "mnist"),
        occupation_table=str(data_dir / "occupations" / "occupations_bls.tsv"),
        ambiguous_fraction=0.1,
    )
    samples, images = build_world(config, ["carpenter", "engineer", "teacher", "nurse"])
    labels = oracle_labels(images, config.hue_female, config.hue_male)
    samples = samples.with_columns(oracle=pl.Series(labels.tolist(), dtype=pl.String))
    people = samples.filter(pl.col("true_gender").is_not_null())
    clear = people.filter(~pl.col("true_ambiguous"))
    assert len(clear) > 600 and (clear["oracle"] == clear["true_gender"]).all()
    ambiguous = people.filter(pl.col("true_ambiguous"))
    assert len(ambiguous) > 40 and (ambiguous["oracle"] == "abstain").all()
    assert (samples.filter(pl.col("true_gender").is_null())["oracle"] == "abstain").all()
    # the other way round: with the hues swapped the oracle gets every clear image wrong
    swapped = oracle_labels(images, config.hue_male, config.hue_female)
    clear_rows = (samples["true_gender"].is_not_null() & ~samples["true_ambiguous"]).to_numpy()
    assert (swapped[clear_rows] != np.asarray(samples["true_gender"].to_list(), dtype=object)[clear_rows]).all()


def test_oracle_follows_the_configured_hues(data_dir) -> None:
    config = WorldConfig(
        samples_per_occupation=60,
        hue_female=0.05,
        hue_male=0.35,
        ambiguous_fraction=0.0,
        glyphs=str(data_dir / "glyphs" / "mnist"),
        occupation_table=str(data_dir / "occupations" / "occupations_bls.tsv"),
    )
    samples, images = build_world(dataclasses.replace(config, distractors=0, near_misses=0), ["nurse", "engineer"])
    labels = oracle_labels(images, config.hue_female, config.hue_male)
    assert labels.tolist() == samples["true_gender"].to_list()
