"""The perceived-gender instrument: training on glyphs, its confusion rates, open_clip backend, save/load."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from biasloop.core.runtime import cpu_threads
from biasloop.data.world import MarkednessConfig, WorldConfig, build_world
from biasloop.models.instrument import (
    InstrumentConfig,
    evaluate_instrument,
    load_instrument,
    train_or_load_instrument,
)

OCCUPATIONS = ["engineer", "nurse"]
N_TRAIN = 450


@pytest.fixture(scope="module")
def glyphs(data_dir):
    config = WorldConfig(
        samples_per_occupation=300,
        distractors=0,
        near_misses=0,
        ambiguous_fraction=0.0,
        markedness=MarkednessConfig(base=0.5, counter=0.0),
        glyphs=str(data_dir / "glyphs" / "mnist"),
        occupation_table=str(data_dir / "occupations" / "occupations_bls.tsv"),
    )
    return build_world(config, OCCUPATIONS)


def _captions(samples) -> list[str]:
    """Half the world's captions, half with the words of the zero-shot prompts ("woman"/"man").

    The fake encoder is a bag of random word vectors, so only captions that contain "woman"/"man"
    themselves (not "she", "female") teach the colour to the prompts' words; the glyph world has few.
    """
    rows = zip(samples["caption"].to_list(), samples["true_gender"].to_list(), samples["true_occupation"].to_list())
    return [
        caption if i % 2 else f"a {'woman' if g == 'female' else 'man'} working as a {o}"
        for i, (caption, g, o) in enumerate(rows)
    ]


@pytest.fixture(scope="module")
def trained(glyphs):
    samples, images = glyphs
    config = InstrumentConfig(text_encoder="fake:32", epochs=10, batch_size=64)
    return train_or_load_instrument(
        config, images[:N_TRAIN], _captions(samples)[:N_TRAIN], OCCUPATIONS, seed=0, progress=False
    )


def test_locked_text_clip_learns_gender_and_occupation(glyphs, trained) -> None:
    samples, images = glyphs
    instrument, stats = trained
    assert stats["epochs"] == 10 and stats["seconds"] > 0 and np.isfinite(stats["final_loss"])
    held_out = slice(N_TRAIN, None)
    truth = samples["true_gender"].to_list()[held_out]
    result = evaluate_instrument(instrument, images[held_out], truth, 0.1)
    assert result["accuracy"] > 0.9 and result["abstain_rate"] < 0.5  # chance: 0.5
    assert result["n"] == len(samples) - N_TRAIN
    probs = instrument.occupation_probs(images[held_out], OCCUPATIONS)
    predicted = np.array(OCCUPATIONS)[probs.argmax(axis=1)]
    assert np.mean(predicted == np.array(samples["true_occupation"].to_list()[held_out])) > 0.8


def test_save_load_round_trip(glyphs, trained, tmp_path) -> None:
    _, images = glyphs
    instrument, _ = trained
    instrument.save(tmp_path / "instrument")
    loaded = load_instrument(tmp_path / "instrument")
    assert loaded.config == instrument.config
    np.testing.assert_allclose(loaded.p_female(images[:40]), instrument.p_female(images[:40]), atol=1e-6)
    np.testing.assert_allclose(
        loaded.occupation_probs(images[:5], OCCUPATIONS),
        instrument.occupation_probs(images[:5], OCCUPATIONS),
        atol=1e-6,
    )
    probs = loaded.occupation_probs(images[:5], OCCUPATIONS, batch_size=2)
    assert probs.shape == (5, 2) and np.allclose(probs.sum(axis=1), 1.0)
    # one pass of the image tower gives both, identical to the separate calls
    p_female, occupation = loaded.p_female_and_occupation(images[:40], OCCUPATIONS, batch_size=16)
    np.testing.assert_allclose(p_female, loaded.p_female(images[:40]), atol=1e-9)
    np.testing.assert_allclose(occupation, loaded.occupation_probs(images[:40], OCCUPATIONS), atol=1e-9)
    with pytest.raises(FileNotFoundError, match="not an instrument folder"):
        load_instrument(tmp_path / "nothing")


class _Fixed:
    """An instrument stand-in with fixed probabilities, to check the confusion arithmetic."""

    def __init__(self, p: list[float]) -> None:
        self.p = np.array(p)

    def p_female(self, images: np.ndarray, batch_size: int = 512) -> np.ndarray:
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
    assert result["n"] == 8 and result["n_confident"] == 6
    assert result["confusion"] == {
        "female_as_female": 2,
        "female_as_male": 1,
        "female_as_abstain": 1,
        "male_as_female": 1,
        "male_as_male": 2,
        "male_as_abstain": 1,
    }
    # a looser threshold keeps the 0.6 (a man, as female) and the 0.5 (abstains only at p == 0.5)
    loose = evaluate_instrument(_Fixed(p), np.zeros((8, 2, 2, 3), np.uint8), truth, 0.5)
    assert loose["fpr"] == pytest.approx(2 / 4) and loose["abstain_rate"] == pytest.approx(1 / 8)


def test_open_clip_backend_offline_random_weights(tmp_path) -> None:
    config = InstrumentConfig(backend="open-clip", model="biasloop-tiny-clip", pretrained=None)
    instrument, stats = train_or_load_instrument(config, None, None, OCCUPATIONS, seed=0, progress=False)
    assert stats["model"] == "biasloop-tiny-clip"
    images = np.random.default_rng(0).integers(0, 255, size=(4, 8, 8, 3), dtype=np.uint8)  # resized to 16x16
    p = instrument.p_female(images)
    assert p.shape == (4,) and np.all((p >= 0) & (p <= 1))
    probs = instrument.occupation_probs(images, OCCUPATIONS)
    assert probs.shape == (4, 2) and np.allclose(probs.sum(axis=1), 1.0)
    larger = np.random.default_rng(1).integers(0, 255, size=(2, 40, 40, 3), dtype=np.uint8)  # shrunk, antialiased
    assert np.all(np.isfinite(instrument.p_female(larger)))
    instrument.save(tmp_path / "oc")
    # reloading rebuilds the architecture (pretrained=None: random weights again, so only shapes compare)
    assert load_instrument(tmp_path / "oc").p_female(images).shape == (4,)


def test_locked_text_clip_needs_training_data() -> None:
    with pytest.raises(ValueError, match="images and captions"):
        train_or_load_instrument(InstrumentConfig(text_encoder="fake:8"), None, None, seed=0)


def test_cpu_threads_restored() -> None:
    import torch

    before = torch.get_num_threads()
    with cpu_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    with cpu_threads(None):
        assert torch.get_num_threads() == before


def test_config_is_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        InstrumentConfig().epochs = 3  # type: ignore[misc]
