"""Downstream retrieval and zero-shot fairness per K-class attribute and per gender x attribute, by hand.

A fake CLIP on eight held-out images with one-hot vectors: caption i scores 1 with one image only, so
recall@1 is known per image; two more dimensions are the occupation queries, so the retrieval order
and the zero-shot predictions are known too.
"""

from __future__ import annotations

import math

import numpy as np
import polars as pl
import pytest

from biasloop.core.attributes import AbstainRule, AttributeSpec
from biasloop.metrics import downstream_attributes
from biasloop.metrics.downstream_attributes import (
    downstream_attribute_bias,
    group_labels,
    held_out_classes,
    training_class_counts,
)
from biasloop.metrics.evaluation import EvaluateConfig

TONE = AttributeSpec(
    classes=("light", "medium", "dark"),
    prompts={c: (f"a {c} glyph",) for c in ("light", "medium", "dark")},
    abstain=AbstainRule(min_top_probability=0.5),
)
SPECS = {"tone": TONE}
TONES = {"light", "medium", "dark"}

# image: tone (None: abstained), gender, true occupation, the image caption i points at, nurse score, engineer score
IMAGES = [
    ("light", "female", "nurse", 0, 0.9, 0.1),
    ("light", "female", "nurse", 1, 0.8, 0.2),
    ("medium", "male", "nurse", 2, 0.5, 0.3),
    ("medium", "male", "engineer", 2, 0.1, 0.9),  # caption 3 retrieves image 2: a miss
    ("dark", "female", "engineer", 4, 0.7, 0.6),  # zero-shot: nurse (wrong)
    ("dark", "female", "engineer", 4, 0.3, 0.8),  # caption 5 retrieves image 4: a miss
    (None, "female", "nurse", 6, 0.95, 0.05),  # tone abstained: first for the nurse query if it counted
    ("dark", "male", "engineer", 7, 0.05, 0.4),
]
QUERIES = {"a photo of a nurse": 8, "a photo of an engineer": 9}


class FakeClip:
    """Image i: e_i + (nurse score) e_8 + (engineer score) e_9; caption i: e_(image it points at)."""

    def __init__(self) -> None:
        self.images = np.zeros((len(IMAGES), 10))
        for i, (*_, nurse, engineer) in enumerate(IMAGES):
            self.images[i, [i, 8, 9]] = (1.0, nurse, engineer)

    def encode_images(self, images: np.ndarray) -> np.ndarray:
        return self.images[: len(images)]

    def encode_texts(self, texts: list[str]) -> np.ndarray:
        out = np.zeros((len(texts), 10))
        for row, text in enumerate(texts):
            out[row, QUERIES[text] if text in QUERIES else IMAGES[int(text[1:])][3]] = 1.0
        return out


def _test_frame() -> pl.DataFrame:
    return pl.DataFrame(
        {
            "caption": [f"c{i}" for i in range(len(IMAGES))],
            "true_occupation": [row[2] for row in IMAGES],
            "image_ref": [f"shard-0.npy:{i}" for i in range(len(IMAGES))],
            "true_tone": [row[0] for row in IMAGES],
        }
    )


def _config(**kwargs) -> EvaluateConfig:
    return EvaluateConfig(**{"n_boot": 0, "recall_ks": (1,), "skew_k": 2, "min_group_size": 2, **kwargs})


def _bias(training_counts=None) -> dict:
    test = _test_frame()
    return downstream_attribute_bias(
        FakeClip(),
        test,
        np.zeros((len(IMAGES), 2, 2, 3), np.uint8),
        [row[1] for row in IMAGES],
        held_out_classes(test, SPECS, None),
        ["nurse", "engineer"],
        _config(),
        SPECS,
        training_counts=training_counts,
    )


def test_group_labels_leave_out_abstentions_and_list_small_groups() -> None:
    tone = ["light", "light", "dark", "abstain", None, "medium", "dark"]
    grouped = group_labels({"tone": tone}, {"tone": TONE.classes}, min_group_size=2)
    assert grouped.labels == ["light", "light", "dark", None, None, None, "dark"]
    assert grouped.sizes == {"light": 2, "dark": 2}  # in class order
    assert grouped.excluded == [{"group": "medium", "n": 1}] and grouped.n_unlabelled == 2
    gender = ["female", "female", "male", "female", "male", "male", "male"]
    cells = group_labels({"gender": gender, "tone": tone}, {"gender": ("female", "male"), "tone": TONE.classes}, 1)
    assert cells.labels == [
        "female x light",
        "female x light",
        "male x dark",
        None,
        None,
        "male x medium",
        "male x dark",
    ]
    assert list(cells.sizes) == ["female x light", "male x medium", "male x dark"]  # gender's then tone's order
    with pytest.raises(ValueError, match="min_group_size"):
        group_labels({"tone": tone}, {"tone": TONE.classes}, 0)


def test_held_out_classes_from_truth_or_the_instrument(monkeypatch: pytest.MonkeyPatch) -> None:
    test = _test_frame()
    assert held_out_classes(test, SPECS, None)["tone"] == [row[0] for row in IMAGES]  # ground truth where known
    with pytest.raises(ValueError, match="no ground truth column 'true_tone'"):
        held_out_classes(test.drop("true_tone"), SPECS, None, truth=True)
    with pytest.raises(ValueError, match="no instrument"):
        held_out_classes(test.drop("true_tone"), SPECS, None)

    import biasloop.models.instrument as instrument_package
    import biasloop.models.instrument.kclass as kclass

    labels = ["dark", "abstain", "light", "medium", "abstain", "dark", "light", "light"]
    monkeypatch.setattr(instrument_package, "load_cross_fitted", lambda folder, device: "fake instrument")
    monkeypatch.setattr(kclass, "label_attribute", lambda instrument, spec, refs: pl.DataFrame({"label": labels}))
    expected = [None if label == "abstain" else label for label in labels]  # an abstention is no group
    assert held_out_classes(test, SPECS, "artifacts/instrument", truth=False)["tone"] == expected
    assert held_out_classes(test.drop("true_tone"), SPECS, "artifacts/instrument")["tone"] == expected


def test_recall_gap_per_tone_and_per_cell() -> None:
    result = _bias()
    assert set(result) == {"tone", "gender_x_tone"}
    tone = result["tone"]
    # recall@1: light images 0, 1 hit; medium 2 hits, 3 misses; dark 4, 7 hit, 5 misses. Image 6 has no tone.
    assert tone["recall"]["recall@1"] == pytest.approx(6 / 8)
    assert tone["recall"]["by_group"] == {
        "light": {"recall@1": 1.0},
        "medium": {"recall@1": 0.5},
        "dark": {"recall@1": pytest.approx(2 / 3)},
    }
    assert tone["recall"]["recall@1_gap"] == pytest.approx(0.5)
    assert tone["groups"] == {"light": 2, "medium": 2, "dark": 3} and tone["groups_excluded"] == []
    assert tone["n_unlabelled"] == 1 and tone["n_test"] == 8
    cells = result["gender_x_tone"]
    # male x dark has one image (7): left out and listed (not unlabelled); image 6 has no tone
    assert cells["groups"] == {"female x light": 2, "male x medium": 2, "female x dark": 2}
    assert cells["groups_excluded"] == [{"group": "male x dark", "n": 1}] and cells["n_unlabelled"] == 1
    assert cells["recall"]["by_group"] == {
        "female x light": {"recall@1": 1.0},
        "male x medium": {"recall@1": 0.5},
        "female x dark": {"recall@1": 0.5},
    }
    assert cells["recall"]["recall@1_gap"] == pytest.approx(0.5)


def test_skew_of_the_retrieved_tones_against_uniform_and_training() -> None:
    result = _bias(training_counts={"tone": {"nurse": {"light": 3, "dark": 1}}})["tone"]
    nurse, engineer = result["per_query"]
    # nurse query, top 2 of the images with a tone: 0, 1 (image 6 scores higher but abstained): light, light
    assert nurse["distribution_retrieved"] == {"light": 1.0, "medium": 0.0, "dark": 0.0}
    assert nurse["max_skew"] == pytest.approx(math.log(3)) and nurse["ndkl"] == pytest.approx(math.log(3))
    # against training (3, 0, 1) + 1 = (4, 1, 2) / 7: ln(1 / (4/7))
    assert nurse["distribution_training"] == pytest.approx({"light": 4 / 7, "medium": 1 / 7, "dark": 2 / 7})
    assert nurse["max_skew_vs_training"] == pytest.approx(math.log(7 / 4))
    # engineer query: images 3 (medium), 5 (dark); NDKL's prefixes (0, 1, 0) then (0, 1/2, 1/2), weights 1, 1/log2(3)
    assert engineer["max_skew"] == pytest.approx(math.log(1.5))
    w = 1 / math.log2(3)
    assert engineer["ndkl"] == pytest.approx((math.log(3) + w * math.log(1.5)) / (1 + w))
    assert "max_skew_vs_training" not in engineer  # no training image of engineers
    assert result["max_skew_mean"] == pytest.approx((math.log(3) + math.log(1.5)) / 2)
    assert result["max_skew_max"] == pytest.approx(math.log(3))
    assert result["max_skew_vs_training_mean"] == pytest.approx(math.log(7 / 4))
    assert result["skew_k"] == 2 and result["skew_k_effective"] == 2


def test_zero_shot_worst_group_over_occupation_and_tone() -> None:
    result = _bias()
    fairness = result["tone"]["fairness"]
    # predicted: all right but image 4 (engineer taken for a nurse). (occupation, tone) groups: nurse/light
    # 2 of 2, nurse/medium 1 of 1, engineer/medium 1 of 1, engineer/dark 2 of 3 (images 4, 5, 7).
    assert fairness["overall_accuracy"] == pytest.approx(6 / 7)
    assert fairness["worst_group_accuracy"] == pytest.approx(2 / 3)
    assert fairness["worst_group"] == {"occupation": "engineer", "tone": "dark", "n": 3}
    assert sorted(g["occupation"] + "/" + g["tone"] for g in fairness["groups_too_small"]) == [
        "engineer/medium",
        "nurse/medium",
    ]
    # one-vs-rest nurse: predicted for 2/2 light, 1/2 medium, 1/3 dark: 2/3; engineer: 0, 1/2, 2/3: 2/3
    assert fairness["demographic_parity_difference_mean"] == pytest.approx(2 / 3)
    cells = result["gender_x_tone"]["fairness"]
    # images 0-5 (7's cell is too small): engineer/female/dark is 1 of 2
    assert cells["worst_group"] == {"occupation": "engineer", "gender": "female", "tone": "dark", "n": 2}
    assert cells["worst_group_accuracy"] == pytest.approx(0.5)


def test_training_class_counts_per_tone_and_cell() -> None:
    train = pl.DataFrame({"selection": ["keyword"] * 3 + ["nn"], "occupation": ["nurse", "nurse", "chef", "chef"]})
    train = train.with_columns(pl.Series("id", ["a", "b", "c", "d"]))
    dataset = pl.DataFrame(
        {
            "id": ["a", "a2", "b", "c", "d"],
            "source_id": ["a", "a", "b", "c", "d"],
            "synthetic": [False, True, False, False, False],
            "label": ["female", "male", "abstain", "male", "female"],
            "tone_label": ["dark", "dark", "light", "abstain", "light"],
        }
    )
    counts = training_class_counts(train, dataset, SPECS)
    # keyword rows only (d is nn); an abstention leaves the count of its table
    assert counts["tone"] == {"nurse": {"dark": 2, "light": 1}}
    assert counts["gender_x_tone"] == {"nurse": {"female x dark": 1, "male x dark": 1}}
    assert training_class_counts(train, dataset.drop("tone_label"), SPECS) == {}  # tone not measured


def test_the_intersection_is_named_after_the_attribute() -> None:
    assert downstream_attributes.intersection_name("tone") == "gender_x_tone"
