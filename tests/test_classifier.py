"""The occupation classifier: fairness scores by hand (per gender, per K-class attribute and per gender x
attribute), training on a tiny world, timm architectures by name."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from biasloop.core.attributes import AbstainRule, AttributeSpec
from biasloop.core.config import from_dict
from biasloop.data.world import WorldConfig, build_world
from biasloop.metrics import classification
from biasloop.metrics.classification import attribute_fairness, classifier_fairness
from biasloop.metrics.downstream import group_fairness, parity_differences
from biasloop.models.classifier import ClassifierConfig, build_classifier, train_classifier


def test_classifier_fairness_hand_computed() -> None:
    true = ["nurse"] * 6 + ["engineer"] * 6
    gender = ["female"] * 4 + ["male"] * 2 + ["male"] * 4 + ["female"] * 2
    # Men nursing are taken for engineers, women engineers for nurses; everyone else is right.
    predicted = ["nurse"] * 4 + ["engineer"] * 2 + ["engineer"] * 4 + ["nurse"] * 2
    result = classifier_fairness(true, predicted, gender, min_group_size=3)
    assert result["accuracy"] == pytest.approx(8 / 12)
    assert result["accuracy_by_gender"] == {"female": pytest.approx(4 / 6), "male": pytest.approx(4 / 6)}
    assert result["accuracy_gap"] == pytest.approx(0.0)
    # Groups (occupation, gender): nurse/female 4 right of 4, nurse/male 0 of 2, engineer/male 4 of 4,
    # engineer/female 0 of 2; only groups of >= 3 images count for the worst group.
    assert result["worst_group_accuracy"] == 1.0 and result["worst_group"]["n"] == 4
    assert classifier_fairness(true, predicted, gender, min_group_size=2)["worst_group_accuracy"] == 0.0
    assert classifier_fairness(true, predicted, gender, min_group_size=10)["worst_group_accuracy"] is None
    # One-vs-rest "nurse": predicted for every woman, no man: demographic parity difference 1; true positive
    # rates 1 (women) vs 0 (men), so the equalized odds difference is 1 too.
    nurse = next(r for r in result["per_occupation"] if r["occupation"] == "nurse")
    assert nurse["demographic_parity_difference"] == pytest.approx(1.0)
    assert nurse["equalized_odds_difference"] == pytest.approx(1.0)
    assert result["demographic_parity_difference_mean"] == pytest.approx(1.0)


def test_classifier_fairness_lists_the_groups_it_left_out_and_gives_intervals() -> None:
    """Same data as above at min_group_size 3: the two 2-image groups are left out and listed (they were
    written empty before); accuracies get Wilson intervals, differences bootstrap ones."""
    true = ["nurse"] * 6 + ["engineer"] * 6
    gender = ["female"] * 4 + ["male"] * 2 + ["male"] * 4 + ["female"] * 2
    predicted = ["nurse"] * 4 + ["engineer"] * 2 + ["engineer"] * 4 + ["nurse"] * 2
    result = classifier_fairness(true, predicted, gender, min_group_size=3, n_boot=200, seed=0)
    assert result["min_group_size"] == 3
    assert sorted((g["occupation"], g["gender"], g["n"]) for g in result["groups_too_small"]) == [
        ("engineer", "female", 2),
        ("nurse", "male", 2),
    ]
    # Wilson, 8 of 12: p = 2/3, z = 1.96: (p + z^2/24 +- z sqrt(p(1-p)/12 + z^2/576)) / (1 + z^2/12)
    assert result["accuracy_ci"] == pytest.approx([0.3906, 0.8619], abs=1e-4)
    assert result["accuracy_by_gender_ci"]["female"] == pytest.approx([0.2999, 0.9032], abs=1e-4)  # 4 of 6
    assert result["worst_group_accuracy_ci"] == pytest.approx([0.5101, 1.0], abs=1e-4)  # 4 of 4
    lo, hi = result["accuracy_gap_ci"]
    assert 0.0 <= lo <= result["accuracy_gap"] <= hi <= 1.0
    lo, hi = result["demographic_parity_difference_mean_ci"]
    assert 0.0 <= lo <= hi <= 1.0 and result["n_boot"] == 200
    assert classifier_fairness(true, predicted, gender, min_group_size=3)["accuracy_gap_ci"] is None  # n_boot 0


def test_numpy_parity_differences_match_fairlearn() -> None:
    rng = np.random.default_rng(0)
    true = rng.choice(["nurse", "chef", "engineer"], size=200)
    predicted = np.where(rng.random(200) < 0.7, true, rng.choice(["nurse", "chef", "engineer"], size=200))
    gender = rng.choice(["female", "male"], size=200)
    result = group_fairness(true, predicted, gender)
    parity, odds = parity_differences(true.astype(object), predicted.astype(object), gender.astype(object))
    assert parity == pytest.approx(result["demographic_parity_difference_mean"])
    assert odds == pytest.approx(result["equalized_odds_difference_mean"])


TONE = AttributeSpec(
    classes=("light", "medium", "dark"),
    prompts={c: (f"a {c} glyph",) for c in ("light", "medium", "dark")},
    abstain=AbstainRule(min_top_probability=0.5),
)
# image: occupation, prediction, tone (None: abstained), gender
ROWS = [
    ("nurse", "nurse", "light", "female"),
    ("nurse", "nurse", "light", "male"),
    ("nurse", "engineer", "dark", "female"),
    ("nurse", "nurse", "dark", "male"),
    ("engineer", "engineer", "light", "female"),
    ("engineer", "nurse", "dark", "female"),
    ("engineer", "engineer", "dark", "male"),
    ("engineer", "engineer", None, "female"),
]


def _attribute_fairness(**kwargs) -> dict:
    true, predicted, tone, gender = (list(column) for column in zip(*ROWS))
    return attribute_fairness(
        true, predicted, gender, {"tone": tone}, {"tone": TONE}, **{"min_group_size": 2, **kwargs}
    )


def test_attribute_fairness_per_tone_by_hand() -> None:
    tone = _attribute_fairness()["tone"]
    # the abstained image 7 is in no group; medium has no image (not listed as too small)
    assert tone["groups"] == {"light": 3, "dark": 4} and tone["groups_excluded"] == [] and tone["n_unlabelled"] == 1
    by_class = [(g["tone"], g["accuracy"], g["n"]) for g in tone["accuracy_by_class"]]  # in class order
    assert by_class == [("light", 1.0, 3), ("dark", 0.5, 4)]  # light: 0, 1, 4 right; dark: 3, 6 of 2, 3, 5, 6
    assert tone["accuracy_gap"] == pytest.approx(0.5)
    # (occupation, tone): nurse/light 2 of 2, nurse/dark 1 of 2, engineer/light 1 of 1, engineer/dark 1 of 2
    assert tone["worst_group_accuracy"] == pytest.approx(0.5) and tone["worst_group"]["tone"] == "dark"
    assert tone["groups_too_small"] == [{"occupation": "engineer", "tone": "light", "n": 1}]
    # one-vs-rest nurse: predicted for 2/3 light, 2/4 dark: 1/6; TPR 1 vs 1/2, FPR 0 vs 1/2: EO 1/2
    # engineer: predicted for 1/3 light, 2/4 dark: 1/6; TPR 1 vs 1/2, FPR 0 vs 1/2: EO 1/2
    assert tone["demographic_parity_difference_mean"] == pytest.approx(1 / 6)
    assert tone["equalized_odds_difference_mean"] == pytest.approx(0.5)


def test_attribute_fairness_per_gender_x_tone_with_metricframe_columns() -> None:
    cells = _attribute_fairness()["gender_x_tone"]
    assert cells["groups"] == {"female x light": 2, "female x dark": 2, "male x dark": 2}
    assert cells["groups_excluded"] == [{"group": "male x light", "n": 1}] and cells["n_unlabelled"] == 1
    by_cell = {(g["gender"], g["tone"]): g["accuracy"] for g in cells["accuracy_by_class"]}
    assert by_cell == {("female", "light"): 1.0, ("female", "dark"): 0.0, ("male", "dark"): 1.0}
    assert cells["accuracy_gap"] == pytest.approx(1.0)
    # every (occupation, gender, tone) group has one image: none reaches 2, all six are listed
    assert cells["worst_group_accuracy"] is None and len(cells["groups_too_small"]) == 6
    assert set(cells["groups_too_small"][0]) == {"occupation", "gender", "tone", "n"}
    # nurse is predicted for half of each cell: parity difference 0; but TPR 1, 0, 1 and FPR 0, 1, 0: EO 1
    assert cells["demographic_parity_difference_mean"] == pytest.approx(0.0)
    assert cells["equalized_odds_difference_mean"] == pytest.approx(1.0)
    # the bootstrap draws the same intersections as Fairlearn's columns
    lo, hi = _attribute_fairness(n_boot=100, seed=1)["gender_x_tone"]["equalized_odds_difference_mean_ci"]
    assert 0.0 <= lo <= hi <= 1.0


def test_gender_numbers_do_not_change_with_an_attribute(monkeypatch: pytest.MonkeyPatch) -> None:
    """classifier_scores with and without the tone attribute: every gender key identical, tone under attributes."""
    import polars as pl

    true, predicted, tone, gender = (list(column) for column in zip(*ROWS))

    class Fixed:
        def predict(self, images: np.ndarray) -> np.ndarray:
            return np.array(predicted, dtype=object)

    monkeypatch.setattr(classification, "load_images", lambda refs: np.zeros((len(refs), 2, 2, 3), np.uint8))
    rows = pl.DataFrame({"id": [str(i) for i in range(len(ROWS))], "image_ref": ["x"] * len(ROWS), "occ": true})
    config = ClassifierConfig(label_column="occ", min_group_size=2, n_boot=50)
    plain, plain_predictions = classification.classifier_scores(Fixed(), rows, gender, config, seed=3)
    both, predictions = classification.classifier_scores(
        Fixed(), rows, gender, config, seed=3, attribute_classes={"tone": tone}, specs={"tone": TONE}
    )
    assert {k: v for k, v in both.items() if k != "attributes"} == plain and "attributes" not in plain
    assert both["attributes"]["tone"]["accuracy_gap"] == pytest.approx(0.5)
    assert predictions["tone"].to_list() == tone and predictions.drop("tone").equals(plain_predictions)


def test_one_min_group_size_in_params() -> None:
    """The classifier's and the downstream CLIP's worst-group accuracies leave out the same small groups."""
    from biasloop.core.config import read_params
    from tests.conftest import REPO_ROOT

    params = read_params(REPO_ROOT / "params.yaml")
    assert params["classifier"]["min_group_size"] == params["evaluate"]["min_group_size"] == 20
    assert ClassifierConfig().min_group_size == 20


def test_unknown_architecture_is_an_error() -> None:
    with pytest.raises(ValueError, match="classifier.architecture"):
        build_classifier(ClassifierConfig(architecture="no-such-net"), 3)


def test_timm_architecture_by_name() -> None:
    pytest.importorskip("timm")
    import torch

    network = build_classifier(ClassifierConfig(architecture="test_resnet"), 4)
    network.eval()
    assert network(torch.zeros(2, 3, 32, 32)).shape == (2, 4)


@pytest.mark.slow
def test_small_cnn_learns_occupations_from_glyphs(data_dir: Path) -> None:
    params = {
        "glyphs": str(data_dir / "glyphs" / "mnist"),
        "occupation_table": str(data_dir / "occupations" / "occupations_bls.tsv"),
        "samples_per_occupation": 150,
        "distractors": 0,
        "near_misses": 0,
    }
    samples, images = build_world(from_dict(WorldConfig, params, "world"), ["engineer", "teacher", "nurse"])
    train = (samples["split"] == "train").to_numpy()
    labels = samples["true_occupation"].to_numpy()
    classifier, stats = train_classifier(
        images[train], labels[train].tolist(), ClassifierConfig(cpu_threads=1), seed=0, progress=False
    )
    assert stats["classes"] == ["engineer", "nurse", "teacher"] and np.isfinite(stats["final_loss"])
    accuracy = np.mean(classifier.predict(images[~train]) == labels[~train])
    assert accuracy > 0.7, accuracy  # chance is 1/3


@pytest.mark.slow
def test_classifier_stage_writes_the_attributes(
    tmp_path: Path, tiny_params: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """classifier@0 in-process on a tiny world with tone: ``attributes`` holds tone and gender x tone, their
    groups counted from the corpus's ground truth (the world has true_tone), beside the gender keys."""
    import json

    import polars as pl
    import yaml

    from biasloop.data.corpus import write_corpus
    from stages import classifier
    from tests.conftest import REPO_ROOT

    monkeypatch.chdir(tmp_path)
    params = yaml.safe_load(tiny_params.read_text())
    params["classifier"].update(epochs=1, cpu_threads=1, min_group_size=3, n_boot=20)
    params["world"]["tone"]["table"] = str(REPO_ROOT / params["world"]["tone"]["table"])  # the test runs in tmp_path
    tiny_params.write_text(yaml.safe_dump(params, sort_keys=False))
    samples, images = build_world(from_dict(WorldConfig, params["world"], "world"), params["occupations"])
    write_corpus(samples, images, "artifacts/corpus", shard_size=64)
    corpus = "artifacts/corpus/captions.parquet"
    args = ["--params", "params.yaml", "--generation", "0", "--dataset", corpus, "--corpus", corpus]
    args += ["--instrument", "artifacts/instrument", "--out", "out", "--metrics", "classifier_gen0.json"]
    assert classifier.main(args) == 0
    metrics = json.loads(Path("classifier_gen0.json").read_text())
    assert set(metrics["accuracy_by_gender"]) == {"female", "male"}
    test = pl.read_parquet(corpus).filter((pl.col("split") == "test") & pl.col("true_occupation").is_not_null())
    tone = metrics["attributes"]["tone"]
    sizes = {t: n for t, n in test["true_tone"].value_counts().iter_rows() if n >= 3}
    assert tone["groups"] == {t: sizes[t] for t in ("light", "medium", "dark") if t in sizes}
    assert set(metrics["attributes"]) == {"tone", "gender_x_tone"}
    assert 0.0 <= metrics["attributes"]["gender_x_tone"]["overall_accuracy"] <= 1.0
    predictions = pl.read_parquet("out/predictions.parquet")
    assert predictions["tone"].to_list() == test["true_tone"].to_list()
