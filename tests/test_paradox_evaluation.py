"""The paradox table and a generation's evaluation, called directly on hand-built predictions."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from biasloop.metrics.evaluation import (
    EvaluateConfig,
    amplification_vs_training_dataset,
    downstream_bias,
    evaluate_generation,
    training_shares,
)
from biasloop.metrics.paradox import paradox_table, table_rows


def _train_rows(selection: str, occupation: str, labels: list[str], prefix: str) -> list[dict]:
    return [
        {
            "selection": selection,
            "occupation": occupation,
            "id": f"{prefix}{i}",
            "p_female": 0.5,
            "label": label,
            "true_gender": label if label != "abstain" else "female",
        }
        for i, label in enumerate(labels)
    ]


def _hand_world() -> tuple[pl.DataFrame, pl.DataFrame]:
    # keyword: nurse n0..n9 = 8 women (n0-n7), 2 men (n8, n9); engineer e0..e9 = 1 woman (e0), 9 men
    train = (
        _train_rows("keyword", "nurse", ["female"] * 8 + ["male"] * 2, "n")
        + _train_rows("keyword", "engineer", ["female"] + ["male"] * 9, "e")
        + _train_rows("nn", "nurse", ["female"] * 3 + ["male"], "n")
        + _train_rows("nn", "engineer", ["male"] * 4, "e")
    )
    generated = (
        # neutral prompts: nurse 9 women / 1 man, engineer 0 / 10
        [
            {"prompt_kind": "neutral", "occupation": "nurse", "source_id": None, "label": lab}
            for lab in ["female"] * 9 + ["male"]
        ]
        + [{"prompt_kind": "neutral", "occupation": "engineer", "source_id": None, "label": "male"}] * 10
        # captions as prompts: from nurse captions n0, n1 (women) and n8 (a man), all generated as women;
        # engineer captions e0 (a woman) and e5 (a man), both generated as men; "zz" is not a keyword caption
        + [
            {"prompt_kind": "caption", "occupation": "nurse", "source_id": s, "label": "female"}
            for s in ("n0", "n1", "n8")
        ]
        + [
            {"prompt_kind": "caption", "occupation": "engineer", "source_id": s, "label": "male"}
            for s in ("e0", "e5", "zz")
        ]
    )
    generated = pl.DataFrame(
        generated,
        schema={"prompt_kind": pl.String, "occupation": pl.String, "source_id": pl.String, "label": pl.String},
    )
    return pl.DataFrame(train), generated.with_columns(p_female=pl.lit(0.5))


def test_paradox_pairings_by_hand() -> None:
    train, generated = _hand_world()
    table = paradox_table(train, generated, {"tpr": 0.9, "fpr": 0.1}, n_boot=200, seed=0)
    # prompt vs keyword: (|0.9 - 0.8| + |0.0 - 0.1|) / 2 = 0.1, 20 images a side
    keyword = table["prompt_vs_keyword"]["measured"]
    assert keyword["amplification_abs"] == pytest.approx(0.1)
    assert (keyword["n_images_train"], keyword["n_images_gen"]) == (20, 20)
    assert keyword["excess_abs"] == pytest.approx(0.1 - keyword["noise_floor_abs"])
    assert table["prompt_vs_keyword"]["paired_by_source"] is False
    # captions as prompts, paired: nurse training images n0, n1, n8 -> 2/3 vs generated 1.0;
    # engineer e0, e5 -> 1/2 vs 0.0 ("zz" has no training image): (1/3 + 1/2) / 2 = 5/12, 5 pairs.
    # Against the whole keyword selection it would have been (0.2 + 0.1) / 2 = 0.15.
    paired = table["captions_vs_keyword"]
    assert paired["paired_by_source"] is True and paired["n_pairs"] == 5
    assert paired["measured"]["amplification_abs"] == pytest.approx(5 / 12)
    assert (
        paired["measured"]["n_images_train"],
        paired["measured"]["n_images_gen"],
        paired["measured"]["n_pairs"],
    ) == (5, 5, 5)
    # prompt vs nn: nurse 0.75 vs 0.9, engineer 0 vs 0 -> 0.075
    assert table["prompt_vs_nn"]["measured"]["amplification_abs"] == pytest.approx(0.075)
    assert table["prompt_vs_nn_no_indicator"]["missing"] is True
    # ground truth present and confusion known: a "true" table (train from truth, gen corrected)
    assert table["prompt_vs_keyword"]["true"]["amplification_abs"] is not None
    rows = table_rows(table)
    assert {r["name"] for r in rows} == {"prompt_vs_keyword", "captions_vs_keyword", "prompt_vs_nn"}
    assert all(r["noise_floor_abs"] is not None for r in rows)


def test_paradox_null_case_has_no_excess() -> None:
    # Generated images drawn from the training shares themselves: the raw A_abs is positive, the excess
    # interval covers 0 and the p-value is large.
    rng = np.random.default_rng(3)
    shares = {"nurse": 0.9, "engineer": 0.15, "chef": 0.25, "teacher": 0.75, "baker": 0.6}
    train, generated = [], []
    for occupation, share in shares.items():
        labels = np.where(rng.random(300) < share, "female", "male")
        train += _train_rows("keyword", occupation, labels.tolist(), occupation)
        generated += [
            {"prompt_kind": "neutral", "occupation": occupation, "source_id": None, "label": lab}
            for lab in np.where(rng.random(80) < share, "female", "male")
        ]
    table = paradox_table(pl.DataFrame(train), pl.DataFrame(generated), None, n_boot=500, seed=0)
    measured = table["prompt_vs_keyword"]["measured"]
    lo, hi = measured["excess_abs_ci"]
    assert measured["amplification_abs"] > 0.01 and lo < 0 < hi and measured["p_value_abs"] > 0.05
    assert table["prompt_vs_keyword"]["corrected"] is None  # no confusion rates: no correction
    assert table["captions_vs_keyword"]["missing"] is True


class _FakeCLIP:
    """Images and texts embedded by hand: image i and caption i point the same way."""

    def __init__(self, vectors: dict[str, np.ndarray]) -> None:
        self.vectors = vectors

    def encode_images(self, images: np.ndarray) -> np.ndarray:
        return images.reshape(len(images), -1).astype(float)

    def encode_texts(self, texts: list[str]) -> np.ndarray:
        return np.stack([self.vectors[t] for t in texts])


def test_evaluation_by_hand() -> None:
    # 4 held-out images in 2-d: nurses point along x, chefs along y. Captions repeat ("a nurse" twice).
    images = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]])
    test = pl.DataFrame(
        {
            "caption": ["a nurse", "a nurse", "a chef", "chef cooking"],
            "true_occupation": ["nurse", "nurse", "chef", "chef"],
        }
    )
    vectors = {
        "a nurse": np.array([1.0, 0.0]),
        "a chef": np.array([0.0, 1.0]),
        "chef cooking": np.array([0.1, 0.9]),
        "a photo of a nurse": np.array([1.0, 0.0]),
        "a photo of a chef": np.array([0.0, 1.0]),
    }
    config = EvaluateConfig(recall_ks=(1,), skew_k=2, min_group_size=2)
    result = downstream_bias(
        _FakeCLIP(vectors), test, images, ["female", "female", "male", "male"], ["nurse", "chef"], config
    )
    # "a nurse" twice: its best image (0) has the identical caption, so both count as correct at k = 1;
    # "a chef" ranks its image 2 first (1.0 against 0.9); "chef cooking" scores image 2 at 0.9 and its
    # own image 3 at 0.82, and image 2's caption differs: a miss. recall@1 = 3/4.
    assert result["recall"]["recall@1"] == pytest.approx(3 / 4)
    assert result["recall"]["correct"] == "identical caption"
    # nurse query retrieves images 0, 1 (women): MaxSkew@2 = ln 2; chef: images 2, 3 (men)
    assert result["max_skew_mean"] == pytest.approx(np.log(2))
    fairness = result["fairness"]
    assert fairness["overall_accuracy"] == 1.0 and fairness["worst_group_accuracy"] == 1.0
    assert fairness["min_group_size"] == 2 and fairness["groups_too_small"] == []

    assert result["skew_k_effective"] == 2 and result["max_skew_vs_training_mean"] is None  # no training shares given

    train, generated = _hand_world()
    metrics = evaluate_generation(1, train, generated, None, EvaluateConfig(n_boot=100), seed=0, downstream=result)
    assert metrics["generation"] == 1
    assert metrics["amplification"]["amplification_abs"] == pytest.approx(0.1)
    assert "noise_floor_abs" in metrics["amplification"] and "excess_abs_ci" in metrics["amplification"]
    assert metrics["paradox"]["captions_vs_keyword"]["measured"]["n_pairs"] == 5
    assert metrics["amplification_corrected"] == {} and metrics["downstream"] is result


def test_evaluation_carries_the_decomposition() -> None:
    """gen{N}.json's ``ideal``, ``decomposition`` and ``instrument_on_generated``: with the captions'
    indicators (retrieve's matches) and the generated images' oracle labels; without them, said so."""
    train, generated = _hand_world()
    # no matches: the unpaired pairings cannot place the ideal learner; the paired one needs no indicator
    metrics = evaluate_generation(0, train, generated, None, EvaluateConfig(n_boot=50), seed=0, downstream=None)
    assert metrics["decomposition"]["prompt_vs_keyword"]["available"] is False
    assert metrics["decomposition"]["captions_vs_keyword"]["paired"] is True
    assert metrics["decomposition"]["prompt_vs_nn_no_indicator"] is None  # a missing pairing
    assert metrics["instrument_on_generated"]["available"] is False
    # with matches (every keyword caption unmarked but n8, the marked man) and an oracle that agrees
    # with the instrument everywhere: the instrument term is the training side's error only
    ids = train.select("occupation", "id").unique()
    matches = ids.with_columns(indicator=pl.when(pl.col("id") == "n8").then(pl.lit("male")).otherwise(pl.lit("none")))
    metrics = evaluate_generation(
        0,
        train,
        generated.with_columns(oracle_label=pl.col("label")),
        None,
        EvaluateConfig(n_boot=50),
        seed=0,
        downstream=None,
        matches=matches,
    )
    keyword = metrics["decomposition"]["prompt_vs_keyword"]
    assert keyword["ground_truth"] is True
    assert (
        abs(
            keyword["data"]["estimate"]
            + keyword["generator"]["estimate"]
            + keyword["instrument"]["estimate"]
            - metrics["amplification"]["shift_to_majority"]
        )
        < 1e-12
    )
    nurse = next(r for r in keyword["per_occupation"] if r["occupation"] == "nurse")
    # nurse keyword captions: n0-n7 women, n8 and n9 men; n8 marked, so the unmarked ones are 8 women of 9
    assert nurse["share_ideal_true"] == pytest.approx(8 / 9) and nurse["share_train_true"] == pytest.approx(0.8)
    assert metrics["ideal"]["prompt_vs_keyword"]["shift"]["estimate"] == keyword["data"]["estimate"]
    agreement = metrics["instrument_on_generated"]
    assert agreement["available"] and agreement["all"]["overall"]["accuracy"] == 1.0


def test_max_skew_and_ndkl_against_the_training_share_by_hand() -> None:
    """Same 4 images; training shares of women: nurse 0.8, chef 0.25; k = 3.
    Nurse query ranks images 0 (F), 1 (F), 3 (M): top-3 shares (2/3, 1/3) against (0.8, 0.2):
    MaxSkew = max(ln(2/3 / 0.8), ln(1/3 / 0.2)) = ln(5/3) = 0.5108 (against parity ln(4/3) = 0.2877).
    NDKL: prefix KLs ln(1/0.8), ln(1/0.8), 2/3 ln(5/6) + 1/3 ln(5/3), weights 1, 1/log2 3, 1/2: 0.1822.
    Chef query ranks 2 (M), 3 (M), 1 (F): (1/3, 2/3) against (0.25, 0.75): MaxSkew ln(4/3) = 0.2877."""
    images = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]])
    test = pl.DataFrame(
        {
            "caption": ["a nurse", "a nurse", "a chef", "chef cooking"],
            "true_occupation": ["nurse", "nurse", "chef", "chef"],
        }
    )
    vectors = {
        "a nurse": np.array([1.0, 0.0]),
        "a chef": np.array([0.0, 1.0]),
        "chef cooking": np.array([0.1, 0.9]),
        "a photo of a nurse": np.array([1.0, 0.0]),
        "a photo of a chef": np.array([0.0, 1.0]),
    }
    shares = {"nurse": 0.8, "chef": 0.25}
    result = downstream_bias(
        _FakeCLIP(vectors),
        test,
        images,
        ["female", "female", "male", "male"],
        ["nurse", "chef"],
        EvaluateConfig(recall_ks=(1,), skew_k=3, min_group_size=2, n_boot=20),
        training_share_female=shares,
    )
    nurse, chef = result["per_query"]
    assert nurse["max_skew_vs_training"] == pytest.approx(np.log(5 / 3))
    assert nurse["max_skew"] == pytest.approx(np.log(4 / 3))
    weights = np.array([1, 1 / np.log2(3), 0.5])
    kls = np.array([np.log(1 / 0.8), np.log(1 / 0.8), 2 / 3 * np.log(5 / 6) + 1 / 3 * np.log(5 / 3)])
    assert nurse["ndkl_vs_training"] == pytest.approx((weights * kls).sum() / weights.sum())
    assert nurse["ndkl_vs_training"] == pytest.approx(0.18222, abs=1e-4)
    assert chef["max_skew_vs_training"] == pytest.approx(np.log(4 / 3))
    assert result["max_skew_vs_training_mean"] == pytest.approx((np.log(5 / 3) + np.log(4 / 3)) / 2)
    assert (result["skew_k"], result["skew_k_effective"], nurse["k_effective"]) == (3, 3, 3)
    # k above the held-out people: every one of the 4 is ranked; the nurse top-4 is half women: ln(0.5 / 0.2)
    wide = downstream_bias(
        _FakeCLIP(vectors),
        test,
        images,
        ["female", "female", "male", "male"],
        ["nurse", "chef"],
        EvaluateConfig(recall_ks=(1,), skew_k=50, min_group_size=2),
        training_share_female=shares,
    )
    assert (wide["skew_k"], wide["skew_k_effective"]) == (50, 4)
    assert wide["per_query"][0]["max_skew_vs_training"] == pytest.approx(np.log(2.5))
    assert result["fairness"]["overall_accuracy_ci"] == pytest.approx([0.5101, 1.0], abs=1e-4)  # Wilson, 4 of 4


def test_training_shares_are_add_one_smoothed() -> None:
    """Dataset rows behind keyword captions: nurse 5 women 1 man -> 6/8; engineer 1 woman 4 men -> 2/7."""
    train = pl.DataFrame(
        _train_rows("keyword", "nurse", ["female"] * 3 + ["male"], "n")
        + _train_rows("keyword", "engineer", ["male"] * 3 + ["female"], "e")
    )
    real = train.select("id", pl.col("id").alias("source_id"), pl.lit(False).alias("synthetic"), "label")
    copies = pl.DataFrame(
        {
            "id": ["n0@gen1", "n3@gen1", "e0@gen1", "e1@gen1"],
            "source_id": ["n0", "n3", "e0", "e1"],
            "synthetic": [True] * 4,
            "label": ["female", "female", "male", "abstain"],
        }
    )
    assert training_shares(train, pl.concat([real, copies])) == pytest.approx({"nurse": 6 / 8, "engineer": 2 / 7})


def test_amplification_against_the_training_dataset_by_hand() -> None:
    """Real keyword selection: nurse F F F M (0.75), engineer M M M F (0.25). Dataset N (accumulate) adds
    generated copies n0 -> F, n3 -> F, e0 -> M: nurse 5/6, engineer 1/5. Generated: nurse 0.9, engineer 0.
    Against the dataset A_abs = (|0.9 - 5/6| + |0 - 0.2|) / 2 = 2/15; against the corpus (0.15 + 0.25) / 2 = 0.2;
    the dataset's own drift from the corpus (|5/6 - 0.75| + |0.2 - 0.25|) / 2 = 1/15."""
    train = pl.DataFrame(
        _train_rows("keyword", "nurse", ["female"] * 3 + ["male"], "n")
        + _train_rows("keyword", "engineer", ["male"] * 3 + ["female"], "e")
        + _train_rows("nn", "nurse", ["male"], "n")
    )
    real = train.filter(pl.col("selection") == "keyword").select(
        "id", pl.col("id").alias("source_id"), pl.lit(False).alias("synthetic"), "label"
    )
    copies = pl.DataFrame(
        {
            "id": ["n0@gen1", "n3@gen1", "e0@gen1"],
            "source_id": ["n0", "n3", "e0"],
            "synthetic": [True] * 3,
            "label": ["female", "female", "male"],
        }
    )
    dataset = pl.concat([real, copies])
    generated = pl.DataFrame(
        [{"prompt_kind": "neutral", "occupation": "nurse", "label": lab} for lab in ["female"] * 9 + ["male"]]
        + [{"prompt_kind": "neutral", "occupation": "engineer", "label": "male"}] * 10
        + [{"prompt_kind": "caption", "occupation": "nurse", "label": "male", "source_id": "n1"}] * 5
    )
    result = amplification_vs_training_dataset(train, dataset, generated, None, n_boot=50, seed=0)
    assert result["available"] and result["corrected"] is None
    assert result["measured"]["amplification_abs"] == pytest.approx(2 / 15)
    assert result["dataset_vs_real_corpus"]["amplification_abs"] == pytest.approx(1 / 15)
    assert (result["n_images_dataset"], result["n_synthetic_dataset"]) == (11, 3)
    assert result["share_synthetic_dataset"] == pytest.approx(3 / 11)
    shares = {row["occupation"]: row["share_train"] for row in result["per_occupation"]}
    assert shares == pytest.approx({"nurse": 5 / 6, "engineer": 0.2})
    metrics = evaluate_generation(
        1, train, generated, None, EvaluateConfig(n_boot=50), seed=0, downstream=None, dataset_predictions=dataset
    )
    assert metrics["amplification"]["amplification_abs"] == pytest.approx(0.2)  # against the real corpus
    assert metrics["amplification_vs_training_dataset"]["measured"]["amplification_abs"] == pytest.approx(2 / 15)
    assert "amplification_vs_training_dataset" not in evaluate_generation(
        1, train, generated, None, EvaluateConfig(n_boot=50), seed=0, downstream=None
    )
    empty = amplification_vs_training_dataset(train, dataset.clear(), generated, None, n_boot=50, seed=0)
    assert empty == {"available": False, "reason": empty["reason"]}
