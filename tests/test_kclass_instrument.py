"""The K-class instrument: zero-shot probabilities over an attribute's classes (both backends, tiny
random weights) and the abstain rule; with the gender attribute, exactly today's p_female and labels."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from biasloop.core.attributes import attribute_from_dict, load_attributes
from biasloop.core.config import load_section
from biasloop.core.io import write_image_shards
from biasloop.models.instrument import (
    CrossFittedInstrument,
    Instrument,
    InstrumentConfig,
    LabelConfig,
    build_open_clip_instrument,
    label_from_p,
)
from biasloop.models.instrument.gender_spec import gender_attribute
from biasloop.models.instrument.kclass import (
    attribute_probabilities,
    cross_fitted_probabilities,
    label_attribute,
    label_from_probabilities,
)
from biasloop.models.instrument.zero_shot import _build_tower
from tests.conftest import committed_params

PARAMS = committed_params()
GENDER = gender_attribute(
    load_section(InstrumentConfig, "instrument", PARAMS), load_section(LabelConfig, "label", PARAMS)
)
TONE = load_attributes(PARAMS)["tone"]


def _locked_text_clip(seed: int, logit_scale: float = 300.0) -> Instrument:
    """A locked-text CLIP with a random image tower (the fake text tower, offline); a large temperature
    spreads its probabilities so that both confident and abstained labels occur."""
    import torch

    torch.manual_seed(seed)
    instrument = Instrument(InstrumentConfig(text_encoder="fake:32", widths=(4, 8)))
    instrument.image_tower = _build_tower((4, 8), 32).eval()
    instrument.logit_scale = logit_scale
    return instrument


def _open_clip(seed: int = 3) -> Instrument:
    import torch

    torch.manual_seed(seed)
    instrument = build_open_clip_instrument(
        InstrumentConfig(backend="open-clip", model="biasloop-tiny-clip", pretrained=None)
    )
    instrument.logit_scale = 300.0  # random towers: cosine similarities near 0, so spread them
    return instrument


def _images(n: int, seed: int = 0) -> np.ndarray:
    """Noisy images of random colours (8 x 8; open_clip resizes them)."""
    rng = np.random.default_rng(seed)
    colour = rng.integers(0, 256, size=(n, 1, 1, 3))
    return np.clip(colour + rng.integers(-40, 40, size=(n, 8, 8, 3)), 0, 255).astype(np.uint8)


def test_the_rule_by_hand() -> None:
    probs = np.array(
        [
            [0.85, 0.10, 0.05],  # light, over 0.8
            [0.10, 0.80, 0.10],  # top 0.8 is not over 0.8: abstain
            [0.05, 0.05, 0.90],  # dark
            [0.40, 0.35, 0.25],  # abstain
            [np.nan, 0.5, 0.5],  # nan abstains
        ]
    )
    labels = label_from_probabilities(probs, ("light", "medium", "dark"), 0.8)
    assert labels.tolist() == ["light", "abstain", "dark", "abstain", "abstain"]
    assert label_from_probabilities(np.zeros((0, 3)), ("a", "b", "c"), 0.8).tolist() == []
    with pytest.raises(ValueError, match=r"\(1/3, 1\)"):
        label_from_probabilities(probs, ("light", "medium", "dark"), 0.3)
    with pytest.raises(ValueError, match=r"shape \(n, 2\)"):
        label_from_probabilities(probs, ("a", "b"), 0.9)


def test_two_classes_label_exactly_as_the_binary_rule() -> None:
    p = np.concatenate([np.random.default_rng(1).uniform(size=5000), [0.1, 0.9, 0.5, 0.0, 1.0, np.nan, 0.09, 0.91]])
    binary = label_from_p(p, 0.1)
    kclass = label_from_probabilities(np.column_stack([p, 1 - p]), GENDER.classes, GENDER.abstain.min_top_probability)
    assert kclass.tolist() == binary.tolist()
    assert set(binary.tolist()) == {"female", "male", "abstain"}


@pytest.mark.parametrize("backend", ["locked-text-clip", "open-clip"])
def test_gender_attribute_is_p_female_and_its_labels(backend: str) -> None:
    instrument = _locked_text_clip(3) if backend == "locked-text-clip" else _open_clip(3)
    images = _images(64)
    probs = attribute_probabilities(instrument, GENDER, images, batch_size=16)
    p_female = instrument.p_female(images, batch_size=16)
    assert probs.shape == (64, 2)
    np.testing.assert_allclose(probs[:, 0], p_female, rtol=0, atol=1e-12)
    np.testing.assert_allclose(probs[:, 1], 1 - p_female, rtol=0, atol=1e-12)
    labels = label_from_probabilities(probs, GENDER.classes, GENDER.abstain.min_top_probability)
    assert labels.tolist() == label_from_p(p_female, 0.1).tolist()
    assert set(labels.tolist()) == {"female", "male", "abstain"}  # (seed 3: the random towers give all three)
    # precomputed embeddings give the same numbers
    vectors = instrument.encode_images(images, 16)
    np.testing.assert_array_equal(attribute_probabilities(instrument, GENDER, None, image_vectors=vectors), probs)


@pytest.mark.parametrize("backend", ["locked-text-clip", "open-clip"])
def test_three_classes_from_either_backend(backend: str) -> None:
    instrument = _locked_text_clip(0) if backend == "locked-text-clip" else _open_clip()
    probs = attribute_probabilities(instrument, TONE, _images(32, seed=2))
    assert probs.shape == (32, 3) and np.allclose(probs.sum(axis=1), 1.0) and np.all(probs >= 0)
    # the classes are the prompts': with the prompts' order swapped, so are the columns
    swapped = attribute_from_dict(
        "tone",
        {
            "classes": ["dark", "medium", "light"],
            "prompts": {c: list(TONE.prompts[c]) for c in ("dark", "medium", "light")},
            "abstain": {"min_top_probability": 0.9},
        },
    )
    # (open_clip encodes the prompts in another order: float32 rounding, amplified by the temperature)
    reordered = attribute_probabilities(instrument, swapped, _images(32, seed=2))
    np.testing.assert_allclose(reordered, probs[:, ::-1], rtol=1e-3, atol=1e-9)


def test_unequal_prompt_counts_fail_on_open_clip() -> None:
    spec = attribute_from_dict(
        "x", {"classes": ["a", "b"], "prompts": {"a": ["p", "q"], "b": ["r"]}, "abstain": {"min_top_probability": 0.9}}
    )
    with pytest.raises(ValueError, match="same number of prompts"):
        attribute_probabilities(_open_clip(), spec, _images(2))


def test_cross_fitted_labels_come_from_the_fold_model_that_never_saw_the_image(tmp_path: Path) -> None:
    images = _images(12, seed=3)
    refs = write_image_shards(images, tmp_path / "shards", shard_size=5)
    models = [_locked_text_clip(3), _locked_text_clip(5)]
    trained = {refs[i]: i % 2 for i in range(8)}  # images 0..7 trained on; 8..11 get the mixture's model
    instrument = CrossFittedInstrument(models, trained, seed=0, labels="cross-fitted, 2 folds")
    probs, fold = cross_fitted_probabilities(instrument, TONE, images, refs, batch_size=4)
    assert fold[:8].tolist() == [i % 2 for i in range(8)]
    for k in (0, 1):
        rows = np.flatnonzero(fold == k)
        np.testing.assert_allclose(probs[rows], attribute_probabilities(models[k], TONE, images[rows], 4), atol=1e-12)
    table = label_attribute(instrument, TONE, refs, batch_size=4)
    assert table.columns == ["p_light", "p_medium", "p_dark", "label", "instrument_fold"]
    np.testing.assert_allclose(table.select("p_light", "p_medium", "p_dark").to_numpy(), probs, atol=1e-12)
    assert (
        table["label"].to_list()
        == label_from_probabilities(probs, TONE.classes, TONE.abstain.min_top_probability).tolist()
    )
    assert table["instrument_fold"].to_list() == fold.tolist()
    gender = label_attribute(instrument, GENDER, refs)
    p_female, _ = instrument.p_female(images, refs)
    np.testing.assert_allclose(gender["p_female"].to_numpy(), p_female, rtol=0, atol=1e-12)
    assert gender["label"].to_list() == label_from_p(p_female, 0.1).tolist()
    assert len(set(gender["label"].to_list())) > 1
    assert len(label_attribute(instrument, TONE, [])) == 0
