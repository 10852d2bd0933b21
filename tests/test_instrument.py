"""The perceived-gender instrument: training on glyphs, its confusion rates, open_clip backend, save/load."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from biasloop.instrument import (
    InstrumentConfig,
    build_open_clip_instrument,
    evaluate_instrument,
    load_instrument,
    train_locked_text_clip,
)
from biasloop.world import WorldConfig, build_world

OCCUPATIONS = ["engineer", "nurse"]


@pytest.fixture(scope="module")
def glyphs(data_dir):
    config = WorldConfig(
        samples_per_occupation=300, distractors=0, near_misses=0, ambiguous_fraction=0.0,
        markedness=WorldConfig().markedness.__class__(base=0.5, counter=0.0),
        glyphs=str(data_dir / "glyphs" / "mnist"), occupation_table=str(data_dir / "occupations" / "occupations_bls.tsv"),
    )
    samples, images = build_world(config, OCCUPATIONS)
    return samples, images


@pytest.fixture(scope="module")
def trained(glyphs):
    samples, images = glyphs
    config = InstrumentConfig(text_encoder="fake:32", epochs=6, batch_size=128)
    instrument, stats = train_locked_text_clip(config, images[:450], samples["caption"].to_list()[:450], seed=0,
                                               progress=False)
    return instrument, stats


def test_locked_text_clip_learns_gender_from_colour(glyphs, trained) -> None:
    samples, images = glyphs
    instrument, stats = trained
    assert stats["epochs"] == 6 and stats["seconds"] > 0
    held_out = slice(450, None)
    result = evaluate_instrument(instrument, images[held_out], samples["true_gender"].to_list()[held_out], 0.3)
    # The fake encoder shares the word vectors of "woman"/"man" between captions and prompts, so half the
    # captions (those with indicators) teach the colour: far above the 0.5 of chance.
    assert result["accuracy"] > 0.8
    assert result["n"] == len(samples) - 450


def test_save_load_round_trip(glyphs, trained, tmp_path) -> None:
    _, images = glyphs
    instrument, _ = trained
    instrument.save(tmp_path / "instrument")
    loaded = load_instrument(tmp_path / "instrument")
    np.testing.assert_allclose(loaded.p_female(images[:20]), instrument.p_female(images[:20]), atol=1e-6)
    probs = loaded.occupation_probs(images[:5], OCCUPATIONS)
    assert probs.shape == (5, 2) and np.allclose(probs.sum(axis=1), 1.0)


class _Fixed:
    """An instrument stand-in with fixed probabilities, to check the confusion arithmetic."""

    def __init__(self, p: list[float]) -> None:
        self.p = np.array(p)

    def p_female(self, images: np.ndarray) -> np.ndarray:
        return self.p


def test_evaluate_instrument_hand_case() -> None:
    p = [0.95, 0.99, 0.02, 0.5, 0.05, 0.01, 0.97, 0.6]
    truth = ["female", "female", "female", "female", "male", "male", "male", "male"]
    result = evaluate_instrument(_Fixed(p), np.zeros((8, 2, 2, 3), np.uint8), truth, 0.1)
    # confident women: 2 as female, 1 as male -> tpr 2/3; confident men: 1 as female, 2 as male -> fpr 1/3
    assert result["tpr"] == pytest.approx(2 / 3)
    assert result["fpr"] == pytest.approx(1 / 3)
    assert result["accuracy"] == pytest.approx(4 / 6)
    assert result["abstain_rate"] == pytest.approx(2 / 8)


def test_open_clip_backend_offline_random_weights(tmp_path) -> None:
    import open_clip

    from biasloop.downstream import CONFIG_DIR

    if "biasloop-tiny-clip" not in open_clip.list_models():
        open_clip.add_model_config(CONFIG_DIR)
    config = InstrumentConfig(backend="open-clip", model="biasloop-tiny-clip", pretrained=None)
    instrument = build_open_clip_instrument(config)
    images = np.random.default_rng(0).integers(0, 255, size=(4, 16, 16, 3), dtype=np.uint8)
    p = instrument.p_female(images)
    assert p.shape == (4,) and np.all((p >= 0) & (p <= 1))
    assert instrument.occupation_probs(images, OCCUPATIONS).shape == (4, 2)
    instrument.save(tmp_path / "oc")
    # reloading rebuilds the architecture (pretrained=None: random weights again, so only shapes compare)
    assert load_instrument(tmp_path / "oc").p_female(images).shape == (4,)


def test_config_is_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        InstrumentConfig().epochs = 3  # type: ignore[misc]
