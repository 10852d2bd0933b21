"""The committed default run (metrics/), read as a user would: gender through the K-class code at K = 2 gives
the binary numbers, and tone's measured gap holds the ground-truth gap with a decomposition that adds up."""

from __future__ import annotations

import json

import numpy as np
import pytest

from biasloop.metrics.kclass import class_amplification_table
from tests.conftest import REPO_ROOT

PARADOX = json.loads((REPO_ROOT / "metrics" / "paradox.json").read_text())
GENERATIONS = sorted((REPO_ROOT / "metrics" / "generations").glob("gen[0-9]*.json"))


@pytest.mark.parametrize("pairing", ["prompt_vs_keyword", "prompt_vs_nn", "prompt_vs_nn_no_indicator"])
def test_gender_through_the_k_class_code_equals_the_committed_binary_numbers(pairing: str) -> None:
    measured = PARADOX["table"][pairing]["measured"]
    rows = [r for r in measured["per_occupation"] if r["occupation"] not in measured["dropped"]]
    names = [r["occupation"] for r in rows]
    train = np.array([[r["n_female_train"], r["n_male_train"]] for r in rows])
    gen = np.array([[r["n_female_gen"], r["n_male_gen"]] for r in rows])
    table = class_amplification_table(names, ["female", "male"], train, gen, n_boot=0)
    for name in ("shift", "gap"):
        committed = measured["estimands"][name]
        assert table["estimands"][name]["estimate"] == pytest.approx(committed["estimate"], abs=1e-12, rel=0)
        assert table["estimands"][name]["ci"] == pytest.approx(committed["ci"], abs=1e-12, rel=0)
    assert table["estimands"]["tv_raw"] == pytest.approx(measured["estimands"]["a_abs_raw"], abs=1e-12, rel=0)


def test_tone_is_measured_and_its_gap_interval_holds_the_ground_truth_gap() -> None:
    tone = PARADOX["attributes"]["tone"]
    assert tone["classes"] == ["light", "medium", "dark"]
    pairing = tone["pairings"]["prompt_vs_keyword"]
    truth = pairing["truth"]["estimands"]["gap"]["estimate"]  # true training classes vs. the oracle's
    for kind in ("measured", "corrected"):
        lo, hi = pairing[kind]["estimands"]["gap"]["ci"]
        assert lo <= truth <= hi, (kind, lo, truth, hi)
    assert len(GENERATIONS) == 3
    for path in GENERATIONS:
        entry = json.loads(path.read_text())["attributes"]["tone"]
        lo, hi = entry["amplification"]["estimands"]["gap"]["ci"]
        assert lo <= entry["amplification_true"]["estimands"]["gap"]["estimate"] <= hi, path.name


def test_tone_decomposition_adds_up_to_the_measured_shift() -> None:
    for name, pairing in PARADOX["attributes"]["tone"]["pairings"].items():
        terms = pairing["decomposition"]
        assert terms["available"] and terms["ground_truth"], name
        total = terms["data"]["estimate"] + terms["generator"]["estimate"] + terms["instrument"]["estimate"]
        assert total == pytest.approx(terms["measured"]["estimate"], abs=1e-12, rel=0), name
        if not pairing["paired_by_source"]:  # the paired one's shift is a pair bootstrap's; its terms add up too
            shift = pairing["measured"]["estimands"]["shift"]["estimate"]
            assert terms["measured"]["estimate"] == pytest.approx(shift, abs=1e-12, rel=0), name
    for path in GENERATIONS:
        terms = json.loads(path.read_text())["attributes"]["tone"]["decomposition"]["prompt_vs_keyword"]
        total = terms["data"]["estimate"] + terms["generator"]["estimate"] + terms["instrument"]["estimate"]
        assert total == pytest.approx(terms["measured"]["estimate"], abs=1e-12, rel=0), path.name
