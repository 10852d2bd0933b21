"""Caption gender, misprediction Error and Ratio, masking and the LIC score, by hand; the leakage protocol."""

from __future__ import annotations

import numpy as np
import pytest

from biasloop.data.indicators import FEMININE_WORDS, MASCULINE_WORDS, caption_gender, mask_gender_words
from biasloop.metrics.caption_bias import (
    balanced_split,
    caption_leakage,
    caption_lic_scores,
    lic_score,
    masked_tokens,
    misprediction,
)
from biasloop.models.leakage import LeakageConfig


def test_caption_gender_and_masking_use_whole_tokens() -> None:
    assert caption_gender("A woman cooking") == "female"
    assert caption_gender("the chef and HIS colleagues") == "male"
    assert caption_gender("he and she at work") == "neutral"  # both kinds of words
    assert caption_gender("the manager of a human resources team") == "neutral"  # man/he inside words
    assert caption_gender("the woman's bag") == "female"
    assert mask_gender_words("She is a Nurse; her shift starts.") == "genderword is a nurse genderword shift starts"
    assert masked_tokens(["a man in a kitchen"], vocabulary={"a", "in"}) == [["a", "genderword", "in", "a", "<unk>"]]
    assert not set(MASCULINE_WORDS) & set(FEMININE_WORDS) and len(MASCULINE_WORDS) == 27 and len(FEMININE_WORDS) == 23


def test_misprediction_hand_computed() -> None:
    captions = ["a woman cooking", "a man at work", "a person", "he and she", "a girl", "a boy"]
    genders = ["female", "female", "male", "male", None, "male"]
    # Labelled: 2 women (1 described as male), 3 men (2 neutral, 1 male); the None row is left out.
    result = misprediction(captions, genders)
    assert result["error"] == pytest.approx(1 / 5)
    assert result["error_female"] == pytest.approx(1 / 2) and result["error_male"] == 0
    assert result["neutral_female"] == 0 and result["neutral_male"] == pytest.approx(2 / 3)
    assert result["correct"] == pytest.approx(2 / 5)
    assert result["ratio_predicted"] == pytest.approx(1 / 2)  # 1 caption predicted female, 2 male
    assert result["ratio_true"] == pytest.approx(2 / 3)
    assert (result["n_images"], result["n_female"], result["n_male"]) == (5, 2, 3)
    # Wilson 95% intervals: error 1 of 5 -> [0.0362, 0.6245]; error_male 0 of 3 -> [0, 0.5615]
    assert result["error_ci"] == pytest.approx([0.03622, 0.62449], abs=1e-4)
    assert result["error_male_ci"] == pytest.approx([0.0, 0.56150], abs=1e-4)
    assert result["neutral_male_ci"][0] < 2 / 3 < result["neutral_male_ci"][1]
    with pytest.raises(ValueError, match="captions but"):
        misprediction(["a"], [])


def test_lic_score_hand_computed() -> None:
    # Predictions female, male, female, female (0.5 counts as female); only the first is right.
    assert lic_score([0.9, 0.4, 0.7, 0.5], [True, True, False, False]) == pytest.approx(0.9 / 4)
    assert lic_score([0.2, 0.6], [False, True]) == pytest.approx((0.8 + 0.6) / 2)
    with pytest.raises(ValueError):
        lic_score([1.2], [True])


def test_balanced_split_is_balanced_and_disjoint() -> None:
    is_female = np.array([True] * 30 + [False] * 70)
    train, test = balanced_split(is_female, 0.2, np.random.default_rng(0))
    assert is_female[train].sum() == (~is_female[train]).sum() == 24
    assert is_female[test].sum() == (~is_female[test]).sum() == 6
    assert not set(train) & set(test)
    with pytest.raises(ValueError, match="both genders"):
        balanced_split(np.ones(5, dtype=bool), 0.2, np.random.default_rng(0))


@pytest.mark.slow
def test_leakage_is_positive_when_model_captions_reveal_gender() -> None:
    """Model captions whose context words follow the gender (masked gender words aside) leak it; human
    captions of the same images do not: LIC_M near 1, LIC_D near chance, leakage clearly positive."""
    rng = np.random.default_rng(0)
    genders = rng.choice(["female", "male"], size=160).tolist()
    human = [f"{'a woman' if g == 'female' else 'a man'} at {rng.choice(['work', 'home'])}" for g in genders]
    model = [
        f"{'a woman' if g == 'female' else 'a man'} in a {'kitchen' if g == 'female' else 'garage'}" for g in genders
    ]
    config = LeakageConfig(seeds=2, epochs=40, cpu_threads=1)
    result = caption_leakage(model, human, genders, config, seed=0)
    assert result["lic_m"] > 0.8 and result["lic_d"] < 0.6
    assert result["leakage"] > 0.3 and len(result["per_seed"]) == 2 and result["leakage_std"] >= 0
    assert result["n_test"] == 2 * round(min(genders.count("female"), genders.count("male")) * config.test_fraction)
    assert "leakage_ci" not in result
    with_intervals = caption_leakage(model, human, genders, config, seed=0, n_boot=200)
    assert with_intervals["leakage"] == pytest.approx(result["leakage"])  # the intervals change no estimate
    for key in ("lic_m", "lic_d", "leakage"):
        lo, hi = with_intervals[f"{key}_ci"]
        assert lo <= with_intervals[key] <= hi, key


def test_caption_lic_scores_average_to_the_lic_score() -> None:
    p, truth = [0.9, 0.4, 0.7, 0.5], [True, True, False, False]
    assert caption_lic_scores(p, truth).tolist() == pytest.approx([0.9, 0.0, 0.0, 0.0])
    assert caption_lic_scores(p, truth).mean() == pytest.approx(lic_score(p, truth))
