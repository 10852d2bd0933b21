"""The glyph world: ground-truth statistics, markedness, determinism."""

from __future__ import annotations

import dataclasses
import hashlib

import numpy as np
import polars as pl
import pytest

from biasloop.data.world import (
    MarkednessConfig,
    WorldConfig,
    build_world,
    read_occupation_shares,
)

OCCUPATIONS = ["carpenter", "engineer", "lawyer", "teacher", "nurse"]


@pytest.fixture(scope="module")
def config(data_dir) -> WorldConfig:
    return WorldConfig(
        samples_per_occupation=1000,
        glyphs=str(data_dir / "glyphs" / "mnist"),
        occupation_table=str(data_dir / "occupations" / "occupations_bls.tsv"),
    )


def _digest(samples: pl.DataFrame, images: np.ndarray) -> str:
    return hashlib.sha256(samples.write_csv().encode() + images.tobytes()).hexdigest()


def test_shares_match_bls_within_sampling_error(config: WorldConfig) -> None:
    samples, images = build_world(config, OCCUPATIONS)
    shares = read_occupation_shares(config.occupation_table)
    people = samples.filter(pl.col("true_occupation").is_not_null())
    for occupation in OCCUPATIONS:
        genders = people.filter(pl.col("true_occupation") == occupation)["true_gender"]
        observed = (genders == "female").mean()
        p = shares[occupation]
        standard_error = np.sqrt(p * (1 - p) / len(genders))
        assert abs(observed - p) < 4 * standard_error + 1e-9, (occupation, observed, p)
    assert images.shape == (len(samples), 16, 16, 3) and images.dtype == np.uint8


def _distance_from_parity(samples: pl.DataFrame, only_no_indicator: bool) -> float:
    people = samples.filter(pl.col("true_occupation").is_not_null())
    if only_no_indicator:
        people = people.filter(pl.col("true_indicator") == "none")
    shares = people.group_by("true_occupation").agg((pl.col("true_gender") == "female").mean().alias("f"))
    return float((shares["f"] - 0.5).abs().mean())


def test_markedness_pushes_unmarked_captions_away_from_parity(config: WorldConfig) -> None:
    marked, _ = build_world(config, OCCUPATIONS)
    gap = _distance_from_parity(marked, True) - _distance_from_parity(marked, False)
    assert gap > 0.03
    unmarked_config = dataclasses.replace(config, markedness=MarkednessConfig(base=0.2, counter=0.0))
    unmarked, _ = build_world(unmarked_config, OCCUPATIONS)
    assert abs(_distance_from_parity(unmarked, True) - _distance_from_parity(unmarked, False)) < 0.03
    stronger = dataclasses.replace(config, markedness=MarkednessConfig(base=0.1, counter=0.8))
    stronger_world, _ = build_world(stronger, OCCUPATIONS)
    assert _distance_from_parity(stronger_world, True) - _distance_from_parity(stronger_world, False) > gap


def test_indicator_rates_follow_markedness(config: WorldConfig) -> None:
    samples, _ = build_world(config, ["engineer"])  # women are the minority among engineers
    people = samples.filter(pl.col("true_occupation") == "engineer")
    rate = people.group_by("true_gender").agg((pl.col("true_indicator") != "none").mean().alias("r"))
    rates = dict(zip(rate["true_gender"], rate["r"]))
    assert rates["male"] == pytest.approx(0.1, abs=0.04)
    assert rates["female"] == pytest.approx(0.5, abs=0.12)
    written = people.filter(pl.col("true_indicator") != "none")
    assert (written["true_indicator"] == written["true_gender"]).all()


def test_same_seed_same_bytes_other_seed_differs(config: WorldConfig) -> None:
    small = dataclasses.replace(config, samples_per_occupation=50)
    first = _digest(*build_world(small, OCCUPATIONS))
    assert first == _digest(*build_world(small, OCCUPATIONS))
    assert first != _digest(*build_world(dataclasses.replace(small, seed=1), OCCUPATIONS))


def test_captions_have_distractors_and_near_misses(config: WorldConfig) -> None:
    samples, images = build_world(dataclasses.replace(config, samples_per_occupation=20), ["nurse", "engineer"])
    others = samples.filter(pl.col("true_occupation").is_null())
    assert len(others) == config.distractors + config.near_misses
    assert others["caption"].str.contains("nursery|engineering|nursing").any()
    grey = images[samples["true_occupation"].is_null().to_numpy()]
    assert np.all(grey[..., 0] == grey[..., 1])  # scenes without people carry no hue


def test_colour_follows_gender(config: WorldConfig) -> None:
    samples, images = build_world(dataclasses.replace(config, ambiguous_fraction=0.0), ["teacher"])
    people = samples["true_occupation"].is_not_null().to_numpy()
    red = images[..., 0].astype(float).sum(axis=(1, 2))
    blue = images[..., 2].astype(float).sum(axis=(1, 2))
    female = (samples["true_gender"] == "female").fill_null(False).to_numpy()
    assert np.all(red[female & people] > blue[female & people])
    assert np.all(blue[~female & people] > red[~female & people])


def test_bad_occupation_is_named(config: WorldConfig) -> None:
    with pytest.raises(ValueError, match="astronaut"):
        build_world(config, ["nurse", "astronaut"])


def test_ambiguous_images_carry_no_gender() -> None:
    """An ambiguous sample's colour does not depend on its gender: the same random draws give the same
    colour for a woman and a man, so a model must fall back on the occupation to guess the gender."""
    from biasloop.data.world import WorldConfig, gender_colours

    config = WorldConfig(ambiguous_fraction=0.4)
    women, flags = gender_colours(np.array(["female"] * 500), config, np.random.default_rng(3))
    men, same_flags = gender_colours(np.array(["male"] * 500), config, np.random.default_rng(3))
    assert (flags == same_flags).all() and 0.3 < flags.mean() < 0.5
    assert np.allclose(women[flags], men[flags])
    assert not np.allclose(women[~flags], men[~flags], atol=0.05)
