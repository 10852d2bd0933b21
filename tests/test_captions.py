"""Caption quality metrics (BLEU, ROUGE-L, CIDEr-D) on a hand-computed 3-image case, the tokeniser,
agreement with the COCO caption evaluation code (a pinned test requirement), and `biasloop captions-score`."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pytest

from biasloop.cli import main as cli_main
from biasloop.data.text import caption_tokens
from biasloop.metrics.caption_quality import bleu, bleu_from_image_counts, cider_d, lcs_length, rouge_l, score_captions

# Three images: an exact match, a short hypothesis, and two references of different lengths.
REFS = {"img1": ["a b c d"], "img2": ["a b e"], "img3": ["f g h i", "f g"]}
HYPS = {"img1": "a b c d", "img2": "a b", "img3": "f x"}


def test_bleu_hand_computed() -> None:
    # Clipped / total n-grams per order, summed over images: 1-grams 4+2+1 / 4+2+2, 2-grams 3+1+0 / 3+1+1,
    # 3-grams 2/2, 4-grams 1/1. Hypothesis length 8; closest reference lengths 4 + 3 + 2 = 9, so the
    # brevity penalty is exp(1 - 9/8).
    penalty = math.exp(1 - 9 / 8)
    expected = [
        7 / 8 * penalty,
        (7 / 8 * 4 / 5) ** (1 / 2) * penalty,
        (7 / 8 * 4 / 5) ** (1 / 3) * penalty,
        (7 / 8 * 4 / 5) ** (1 / 4) * penalty,
    ]
    assert bleu(REFS, HYPS)["bleu"] == pytest.approx(expected, abs=1e-9)
    # Per image: the exact match scores 1; img3 has no matching bigram, so BLEU-2..4 are (almost) 0.
    per_image = bleu(REFS, HYPS)["per_image"]
    assert per_image[0] == pytest.approx([1, 1, 1, 1], abs=1e-9)
    assert per_image[2][0] == pytest.approx(0.5, abs=1e-9) and per_image[2][3] < 1e-3


def test_rouge_l_hand_computed() -> None:
    beta2 = 1.2**2
    f2 = (1 + beta2) * 1 * (2 / 3) / (2 / 3 + beta2 * 1)  # LCS 2: P = 2/2, R = 2/3
    f3 = (1 + beta2) * 0.5 * 0.5 / (0.5 + beta2 * 0.5)  # P = max(1/2, 1/2), R = max(1/4, 1/2)
    result = rouge_l(REFS, HYPS)
    assert result["per_image"] == pytest.approx([1.0, f2, f3], abs=1e-12)
    assert result["rouge_l"] == pytest.approx((1 + f2 + f3) / 3, abs=1e-12)
    assert lcs_length("a b c d".split(), "a x c y d".split()) == 3


def test_cider_d_hand_computed() -> None:
    # N = 3 images; a, b and "a b" occur in the references of 2 images (idf ln 3 - ln 2), every other
    # n-gram in 1 (idf ln 3); "x" in none (df clipped to 1: idf ln 3).
    big, small = math.log(3), math.log(3) - math.log(2)
    img1 = 10.0  # hypothesis = reference: cosine 1 for every order, equal lengths
    # img2: order 1 {a, b} vs {a, b, e}; order 2 {ab} vs {ab, be}; no 3-/4-grams; bigram counts 1 vs 2.
    sim1 = 2 * small**2 / (math.sqrt(2) * small * math.sqrt(2 * small**2 + big**2))
    sim2 = small**2 / (small * math.sqrt(small**2 + big**2))
    img2 = 10 * (sim1 + sim2) / 4 * math.exp(-1 / 72)
    # img3: only the unigram f matches; vs "f g h i" cosine 1/(2 sqrt 2), bigram counts 1 vs 3;
    # vs "f g" cosine 1/2, equal bigram counts; averaged over the 2 references.
    img3 = 10 * ((1 / (2 * math.sqrt(2))) * math.exp(-4 / 72) / 4 + 0.5 / 4) / 2
    result = cider_d(REFS, HYPS)
    assert result["per_image"] == pytest.approx([img1, img2, img3], abs=1e-12)
    assert result["cider_d"] == pytest.approx((img1 + img2 + img3) / 3, abs=1e-12)


def test_bootstrap_intervals_of_caption_scores() -> None:
    """Per-image BLEU counts summed over all images give the corpus BLEU; resampled, they give the interval."""
    rng = random.Random(0)
    words = "a photo of the nurse engineer at work smiling in hallway".split()
    references = {i: [" ".join(rng.choices(words, k=6))] for i in range(40)}
    hypotheses = {i: " ".join(rng.choices(words, k=5)) for i in range(40)}
    scored = bleu(references, hypotheses)
    assert bleu_from_image_counts(scored["counts"], range(40)) == pytest.approx(scored["bleu"])
    twice = bleu({0: references[3], 1: references[3]}, {0: hypotheses[3], 1: hypotheses[3]})["bleu"]
    assert bleu_from_image_counts(scored["counts"], [3, 3]) == pytest.approx(twice)  # a resample repeats images
    result = score_captions(references, hypotheses, n_boot=200, seed=0)
    for key in ("bleu4", "rouge_l", "cider_d"):
        lo, hi = result[f"{key}_ci"]
        assert lo <= result[key] <= hi, key
    assert "bleu4_ci" not in score_captions(references, hypotheses)


def test_tokenizer_lower_cases_and_strips_punctuation() -> None:
    assert caption_tokens("A Close-up of the NURSE, smiling!") == ["a", "close-up", "of", "the", "nurse", "smiling"]
    assert caption_tokens("The woman’s bag... (2 of them)") == ["the", "woman", "'s", "bag", "2", "of", "them"]
    assert caption_tokens(None) == []
    # score_captions tokenises first: case and punctuation do not change the scores.
    loud = {"img1": ["A B C D."], "img2": ["a, b e"], "img3": ["F g h i!", "f G"]}
    assert score_captions(loud, {k: v.upper() + "." for k, v in HYPS.items()}) == score_captions(REFS, HYPS)


def test_mismatched_ids_and_bad_inputs_are_errors() -> None:
    with pytest.raises(ValueError, match="same image ids"):
        bleu(REFS, {"img1": "a"})
    with pytest.raises(ValueError, match="non-empty list"):
        cider_d({"img1": "a b"}, {"img1": "a b"})


def _random_case(rng: random.Random) -> tuple[dict, dict]:
    words = "a the nurse engineer at work photo of smiling in hallway on shift two talking she he is".split()

    def sentence() -> str:
        return " ".join(rng.choice(words) for _ in range(rng.randint(1, 12)))

    n = rng.randint(1, 8)
    refs = {i: [sentence() for _ in range(rng.randint(1, 5))] for i in range(n)}
    return refs, {i: sentence() for i in range(n)}


def test_agrees_with_the_coco_caption_evaluation_code() -> None:
    """pycocoevalcap's pure-Python Bleu, Rouge and Cider (its tokenizer, METEOR and SPICE need Java).
    A test requirement (requirements-test.txt, installed by `make venv`): missing, the test fails."""
    try:
        import pycocoevalcap  # noqa: F401
    except ImportError:
        pytest.fail("pycocoevalcap is not installed: `make venv` installs requirements-test.txt into .venv")
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    rng = random.Random(1)
    for case in [(REFS, HYPS)] + [_random_case(rng) for _ in range(25)]:
        refs, hyps = case
        listed = {k: [v] for k, v in hyps.items()}
        ids = sorted(refs, key=str)
        coco_bleu, coco_bleu_per_image = Bleu(4).compute_score(refs, listed, verbose=0)
        coco_rouge, coco_rouge_per_image = Rouge().compute_score(refs, listed)
        coco_cider, coco_cider_per_image = Cider().compute_score(refs, listed)
        ours_bleu, ours_rouge, ours_cider = bleu(refs, hyps), rouge_l(refs, hyps), cider_d(refs, hyps)
        assert ours_bleu["bleu"] == pytest.approx(coco_bleu, abs=1e-9)
        assert ours_rouge["rouge_l"] == pytest.approx(coco_rouge, abs=1e-9)
        assert ours_cider["cider_d"] == pytest.approx(coco_cider, abs=1e-6)
        # pycocoevalcap's per-image lists follow the dict's key order; ours are sorted by id.
        order = [list(refs).index(i) for i in ids]
        assert ours_cider["per_image"] == pytest.approx([coco_cider_per_image[j] for j in order], abs=1e-6)
        assert ours_rouge["per_image"] == pytest.approx([coco_rouge_per_image[j] for j in order], abs=1e-9)
        for k in range(4):
            assert [row[k] for row in ours_bleu["per_image"]] == pytest.approx(
                [coco_bleu_per_image[k][j] for j in order], abs=1e-9
            )


def test_captions_score_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    refs, hyps = tmp_path / "refs.json", tmp_path / "hyps.json"
    refs.write_text(json.dumps(REFS))
    hyps.write_text(json.dumps({k: [v] if k == "img2" else v for k, v in HYPS.items()}))
    assert cli_main(["captions-score", str(refs), str(hyps), "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["cider_d"] == pytest.approx(cider_d(REFS, HYPS)["cider_d"], abs=1e-12)
    assert printed["bleu4"] == pytest.approx(bleu(REFS, HYPS)["bleu"][3]) and printed["n_images"] == 3
    hyps.write_text(json.dumps({"img1": "a"}))
    assert cli_main(["captions-score", str(refs), str(hyps)]) == 2
    assert "image ids differ" in capsys.readouterr().err
    assert cli_main(["captions-score", str(refs), str(tmp_path / "missing.json")]) == 2
