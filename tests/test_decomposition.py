"""The decomposition of a measured shift into data, generator and instrument, on hand-built images."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from biasloop.metrics.decomposition import decompose, instrument_agreement


def _train(occupation: str, rows: list[tuple[str, str, str]]) -> list[dict]:
    """rows: (true_gender, indicator, instrument label)."""
    return [
        {"occupation": occupation, "id": f"{occupation}{i}", "true_gender": t, "indicator": ind, "label": lab}
        for i, (t, ind, lab) in enumerate(rows)
    ]


def _gen(occupation: str, rows: list[tuple[str, str]]) -> list[dict]:
    """rows: (oracle label, instrument label)."""
    return [{"occupation": occupation, "oracle_label": o, "label": lab} for o, lab in rows]


def hand_example() -> tuple[pl.DataFrame, pl.DataFrame]:
    # Nurse, training (10): 8 women, 2 men. Both men and one woman are marked ("male"/"female"), so the
    # 7 unmarked captions are all women: F_train_true = 0.8, F_ideal = 7/7 = 1. The instrument abstains on
    # the marked woman, calls the other 7 women women, one man a woman and the other a man:
    # F_train_meas = 8/9, s = +1.
    nurse_train = (
        [("female", "none", "female")] * 7
        + [("female", "female", "abstain")]
        + [("male", "male", "female"), ("male", "male", "male")]
    )
    # Nurse, generated (10): the oracle sees 9 women and 1 man (F_gen_oracle = 0.9); the instrument calls
    # 7 of the women women, one a man, abstains on one, and calls the man a woman: F_gen_meas = 8/9.
    nurse_gen = [("female", "female")] * 7 + [("female", "male"), ("female", "abstain"), ("male", "female")]
    # Engineer, training (10): 2 women (both marked), 8 men (one marked): F_train_true = 0.2, unmarked
    # 7 men: F_ideal = 0. The instrument is right on all: F_train_meas = 0.2, s = -1.
    engineer_train = [("female", "female", "female")] * 2 + [("male", "male", "male")] + [("male", "none", "male")] * 7
    # Engineer, generated (10): oracle 1 woman, 8 men, 1 abstain (F_gen_oracle = 1/9); the instrument
    # says man for all 10: F_gen_meas = 0.
    engineer_gen = [("female", "male")] + [("male", "male")] * 8 + [("abstain", "male")]
    train = pl.DataFrame(_train("nurse", nurse_train) + _train("engineer", engineer_train))
    generated = pl.DataFrame(_gen("nurse", nurse_gen) + _gen("engineer", engineer_gen))
    return train, generated


def test_hand_computed_two_occupations() -> None:
    train, generated = hand_example()
    result = decompose(train, generated, n_boot=200, seed=0)
    terms = result["decomposition"]
    # measured   = mean[+(8/9 - 8/9), -(0 - 0.2)]                           = 0.1 = 18/180
    # data       = mean[+(1 - 0.8), -(0 - 0.2)]                             = 0.2 = 36/180
    # generator  = mean[+(0.9 - 1), -(1/9 - 0)]                             = (-9/90 - 10/90)/2 = -19/180
    # instrument = mean[+((8/9 - 0.9) - (8/9 - 0.8)), -((0 - 1/9) - 0)]     = (-1/10 + 1/9)/2 = 1/180
    # and 36 - 19 + 1 = 18.
    assert terms["ground_truth"] is True and terms["reason"] is None and terms["paired"] is False
    assert terms["measured"]["estimate"] == pytest.approx(18 / 180, abs=1e-15)
    assert terms["data"]["estimate"] == pytest.approx(36 / 180, abs=1e-15)
    assert terms["generator"]["estimate"] == pytest.approx(-19 / 180, abs=1e-15)
    assert terms["instrument"]["estimate"] == pytest.approx(1 / 180, abs=1e-15)
    assert abs(terms["sum_of_terms"] - terms["measured"]["estimate"]) < 1e-12
    assert terms["occupations"] == ["engineer", "nurse"] and terms["occupations_left_out"] == []
    nurse = next(r for r in terms["per_occupation"] if r["occupation"] == "nurse")
    assert (nurse["sign"], nurse["share_ideal_true"], nurse["n_train_unmarked"], nurse["n_gen_oracle_confident"]) == (
        1.0,
        1.0,
        7,
        10,
    )
    # the ideal learner: its shift is the data term; its gap mean[|1 - 0.8|, |0 - 0.2|] = 0.2
    ideal = result["ideal"]
    assert ideal["basis"] == "true_gender" and ideal["shift"]["estimate"] == pytest.approx(0.2)
    assert ideal["gap"]["estimate"] == pytest.approx(0.2)
    for name in ("measured", "data", "generator", "instrument"):
        lo, hi = terms[name]["ci"]
        assert lo <= terms[name]["estimate"] <= hi, name


def test_without_ground_truth_b_and_c_are_one_term() -> None:
    train, generated = hand_example()
    # The instrument's unmarked shares: nurse 7 women of 7 confident (1.0), engineer 0 of 7.
    # data = mean[+(1 - 8/9), -(0 - 0.2)] = (5/45 + 9/45)/2 = 7/45; the rest, 18/180 - 28/180 = -1/18.
    result = decompose(train.drop("true_gender"), generated.drop("oracle_label"), n_boot=100, seed=0)
    terms = result["decomposition"]
    assert terms["ground_truth"] is False and "true_gender" in terms["reason"]
    assert set(terms) >= {"data", "generator_and_instrument"} and "generator" not in terms
    assert terms["data"]["estimate"] == pytest.approx(7 / 45)
    assert terms["generator_and_instrument"]["estimate"] == pytest.approx(-1 / 18)
    assert abs(terms["sum_of_terms"] - terms["measured"]["estimate"]) < 1e-12
    assert result["ideal"]["basis"] == "instrument"
    # truth on the training side but no oracle on the generated one: still no ground truth, said why
    partial = decompose(train, generated.drop("oracle_label"), n_boot=0)["decomposition"]
    assert partial["ground_truth"] is False and "oracle_label" in partial["reason"]


def test_paired_rows_have_no_data_term() -> None:
    train, generated = hand_example()
    paired = decompose(train.drop("indicator"), generated, paired=True, n_boot=100, seed=1)
    terms = paired["decomposition"]
    assert terms["paired"] is True and terms["data"]["estimate"] == 0.0 and terms["data"]["ci"] == [0.0, 0.0]
    assert abs(terms["sum_of_terms"] - terms["measured"]["estimate"]) < 1e-12
    assert "by construction" in paired["ideal"]["note"]
    with pytest.raises(ValueError, match="paired"):
        decompose(train.head(3), generated, paired=True)


def test_terms_sum_exactly_on_random_tables() -> None:
    rng = np.random.default_rng(7)
    labels = np.array(["female", "male", "abstain"], dtype=object)
    for trial in range(20):
        train, generated = [], []
        for occupation in ("a", "b", "c", "d", "e"):
            n_t, n_g = rng.integers(20, 200), rng.integers(20, 100)
            share = rng.random()
            train += [
                {
                    "occupation": occupation,
                    "true_gender": "female" if rng.random() < share else "male",
                    "indicator": "none" if rng.random() < 0.7 else "male",
                    "label": labels[rng.integers(3)],
                }
                for _ in range(n_t)
            ]
            generated += [
                {"occupation": occupation, "oracle_label": labels[rng.integers(3)], "label": labels[rng.integers(3)]}
                for _ in range(n_g)
            ]
        terms = decompose(pl.DataFrame(train), pl.DataFrame(generated), n_boot=0)["decomposition"]
        total = terms["data"]["estimate"] + terms["generator"]["estimate"] + terms["instrument"]["estimate"]
        assert abs(total - terms["measured"]["estimate"]) < 1e-12, trial


def test_data_interval_covers_zero_without_markedness() -> None:
    """Indicators independent of gender (the world's markedness counter 0): unmarked captions have the
    selection's share, so the data term's interval contains 0 (in about 95% of such tables; at least 85 of
    100 here), while with markedness it lies above 0."""
    rng = np.random.default_rng(11)
    shares = {"carpenter": 0.02, "engineer": 0.16, "lawyer": 0.38, "teacher": 0.73, "nurse": 0.87}

    def table(counter: float) -> pl.DataFrame:
        rows = []
        for occupation, share in shares.items():
            female = rng.random(300) < share
            minority = female if share < 0.5 else ~female
            marked = rng.random(300) < 0.1 + counter * minority
            rows += [
                {
                    "occupation": occupation,
                    "true_gender": "female" if f else "male",
                    "indicator": ("female" if f else "male") if m else "none",
                    "label": "female" if f else "male",
                }
                for f, m in zip(female, marked)
            ]
        return pl.DataFrame(rows)

    generated = pl.DataFrame(
        [{"occupation": o, "oracle_label": "female", "label": "female"} for o in shares]
        + [{"occupation": o, "oracle_label": "male", "label": "male"} for o in shares]
    )
    covered = 0
    for replicate in range(100):
        lo, hi = decompose(table(0.0), generated, n_boot=300, seed=replicate)["decomposition"]["data"]["ci"]
        covered += lo <= 0 <= hi
    assert covered >= 85
    marked = decompose(table(0.4), generated, n_boot=300, seed=0)["decomposition"]["data"]
    assert marked["ci"][0] > 0


def test_occupation_missing_a_share_is_left_out() -> None:
    train, generated = hand_example()
    # every engineer caption marked: no ideal share for engineers, so they leave every term
    train = train.with_columns(
        indicator=pl.when(pl.col("occupation") == "engineer").then(pl.lit("male")).otherwise(pl.col("indicator"))
    )
    terms = decompose(train, generated, n_boot=0)["decomposition"]
    assert terms["occupations"] == ["nurse"] and terms["occupations_left_out"] == ["engineer"]
    assert terms["measured"]["estimate"] == pytest.approx(8 / 9 - 8 / 9) and terms["data"]["estimate"] == pytest.approx(
        0.2
    )
    assert decompose(train.drop("indicator"), generated)["decomposition"]["available"] is False


def test_instrument_agreement_by_hand() -> None:
    _, generated = hand_example()
    agreement = instrument_agreement(generated)
    overall = agreement["overall"]
    # oracle women: nurse 9 + engineer 1 = 10; men 1 + 8 = 9; 1 oracle abstain. Both confident: nurse 9
    # (not the instrument's abstention), engineer 9 (not the oracle's) = 18. Agreements: nurse 7, engineer 8.
    assert (overall["n"], overall["n_oracle_female"], overall["n_oracle_male"], overall["n_oracle_abstain"]) == (
        20,
        10,
        9,
        1,
    )
    assert overall["n_both_confident"] == 18 and overall["accuracy"] == pytest.approx(15 / 18)
    # tpr: of the 9 oracle women both label (nurse 8, engineer 1), the instrument calls 7 women
    assert overall["tpr"] == pytest.approx(7 / 9)
    # fpr: of the 9 oracle men (nurse 1, engineer 8), the instrument calls 1 (the nurse) a woman
    assert overall["fpr"] == pytest.approx(1 / 9)
    assert overall["abstain_rate_female"] == pytest.approx(1 / 10) and overall["abstain_rate_male"] == 0.0
    engineer = next(r for r in agreement["per_occupation"] if r["occupation"] == "engineer")
    assert engineer["tpr"] == 0.0 and engineer["fpr"] == 0.0 and engineer["n"] == 10
    assert instrument_agreement(generated.drop("oracle_label")) is None
