"""`biasloop amplify` on K-class count files (wide and long form), in-process; binary files still print
what they printed before K-class files existed (golden files of commit fc2bf54)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from biasloop.cli import main as cli_main
from biasloop.cli.amplify import main

GOLDEN = Path(__file__).parent / "golden" / "amplify_binary"

# classes light, medium, dark: nurse (6, 3, 1) + 2 abstained -> (5, 4, 1); chef (1, 2, 7) -> (0, 2, 8).
WIDE_TRAIN = "occupation,light,medium,dark,abstain\nnurse,6,3,1,2\nchef,1,2,7,\n"
WIDE_GEN = "occupation,light,medium,dark\nnurse,5,4,1\nchef,0,2,8\n"
# The generated file in long form: other row and class order, chef's light row missing (counts 0).
LONG_GEN = "occupation,class,count\nchef,dark,8\nnurse,dark,1\nnurse,medium,4\nnurse,light,5\nchef,medium,2\n"


def _write(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize(("flag", "expected"), [([], "expected_table.txt"), (["--json"], "expected.json")])
def test_binary_output_is_byte_identical(capsys: pytest.CaptureFixture, flag: list[str], expected: str) -> None:
    status = main([str(GOLDEN / "train.csv"), str(GOLDEN / "gen.csv"), "--n-boot", "200", *flag])
    assert status == 0
    assert capsys.readouterr().out == (GOLDEN / expected).read_text()


def test_wide_form_by_hand(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    train, gen = _write(tmp_path / "t.csv", WIDE_TRAIN), _write(tmp_path / "g.csv", WIDE_GEN)
    assert main([train, gen, "--json", "--n-boot", "100"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["classes"] == ["light", "medium", "dark"] and result["n_occupations"] == 2
    chef, nurse = result["per_occupation"]  # sorted by name
    assert nurse["p_train"] == pytest.approx({"light": 0.6, "medium": 0.3, "dark": 0.1})
    assert nurse["p_gen"] == pytest.approx({"light": 0.5, "medium": 0.4, "dark": 0.1})
    assert nurse["abstain_rate_train"] == pytest.approx(2 / 12) and chef["abstain_rate_train"] == 0.0
    assert nurse["tv"] == pytest.approx(0.1) and chef["tv"] == pytest.approx(0.1)
    assert nurse["majority_train"] == ["light"] and chef["majority_train"] == ["dark"]
    estimands = result["estimands"]
    assert estimands["tv_raw"] == pytest.approx(0.1)
    assert estimands["shift"]["estimate"] == pytest.approx((-0.1 + 0.1) / 2, abs=1e-15)
    lo, hi = estimands["gap"]["ci"]
    assert lo <= estimands["gap"]["estimate"] <= hi
    assert set(result["bias_amp"]) == {"A->T", "T->A"}


def test_long_form_reads_as_the_wide_form(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    train = _write(tmp_path / "t.csv", WIDE_TRAIN)
    outputs = []
    for name, text in (("wide.csv", WIDE_GEN), ("long.csv", LONG_GEN)):
        assert main([train, _write(tmp_path / name, text), "--json", "--n-boot", "50"]) == 0
        outputs.append(json.loads(capsys.readouterr().out))
    assert outputs[0] == outputs[1]


def test_table_output_and_plural_matching(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    train = _write(tmp_path / "t.csv", WIDE_TRAIN)
    gen = _write(tmp_path / "g.csv", LONG_GEN.replace("nurse,", "Nurses,"))
    assert cli_main(["amplify", train, gen, "--n-boot", "50"]) == 0
    captured = capsys.readouterr()
    assert "'Nurses'" in captured.err and "= 'nurse'" in captured.err
    lines = captured.out.splitlines()
    assert lines[0].startswith("estimand") and "3 classes: light, medium, dark; 2 occupations" in lines[0]
    assert lines[2].startswith("gap") and lines[2].endswith("raw TV 10.0 pp")
    (nurse,) = [line for line in lines if line.startswith("nurse")]
    assert nurse.split()[:4] == ["nurse", "60.0/50.0", "30.0/40.0", "10.0/10.0"]
    assert "bias_amp A->T" in captured.out and "Wang & Russakovsky 2021" in captured.out


def test_two_classes_match_the_binary_file(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    binary = []
    for header in ("occupation,n_female,n_male", "occupation,female,male"):
        train = _write(tmp_path / "t.csv", f"{header}\nnurse,180,20\nengineer,15,185\nbaker,42,56\n")
        gen = _write(tmp_path / "g.csv", f"{header}\nnurse,76,4\nengineer,5,75\nbaker,68,12\n")
        assert main([train, gen, "--json", "--n-boot", "10"]) == 0
        binary.append(json.loads(capsys.readouterr().out)["estimands"])
    for name in ("shift", "gap"):
        assert binary[1][name]["estimate"] == pytest.approx(binary[0][name]["estimate"], abs=1e-12)
        assert binary[1][name]["ci"] == pytest.approx(binary[0][name]["ci"], abs=1e-12)
    assert binary[1]["tv_raw"] == pytest.approx(binary[0]["a_abs_raw"], abs=1e-12)


@pytest.mark.parametrize(
    ("train", "gen", "message"),
    [
        (WIDE_TRAIN, WIDE_GEN.replace("dark", "brown"), "name different classes"),
        (WIDE_TRAIN, LONG_GEN.replace("chef,medium,2\n", "").replace("nurse,medium,4\n", ""), "count 0"),
        (
            WIDE_TRAIN,
            WIDE_GEN.replace("chef,0,2,8", "chef,0,-2,8"),
            "line 3: medium must be a non-negative integer, found '-2'",
        ),
        (
            WIDE_TRAIN,
            LONG_GEN.replace("nurse,dark,1", "nurse,dark,x"),
            "line 3: count must be a non-negative integer, found 'x'",
        ),
        (
            WIDE_TRAIN,
            LONG_GEN + "chef,dark,3\n",
            "line 7: duplicate row for occupation 'chef', class 'dark' (first on line 2)",
        ),
        (WIDE_TRAIN, WIDE_GEN.replace("chef", "cook"), "only in {train}: 'chef'"),
        (WIDE_TRAIN, WIDE_GEN.replace(",0,2,8", ",,2,8"), "line 3: light must be a non-negative integer, found ''"),
        ("occupation,light\nnurse,3\n", WIDE_GEN, "at least two class columns"),
        (WIDE_TRAIN, "occupation,n_female,n_male\nnurse,1,1\n", "is binary (n_female, n_male)"),
        (WIDE_TRAIN, ",light,medium\nnurse,1,2\n", "missing column(s) occupation"),
        (WIDE_TRAIN, "occupation,a,b,abstain,n_abstain\nnurse,1,2,0,0\n", "both abstain and n_abstain"),
        (WIDE_TRAIN, "occupation,li\u202eght,dark\nnurse,1,2\n", "line 1: class contains a bidirectional control"),
        (WIDE_TRAIN, "occupation,class,count\nnurse,da\x07rk,1\n", "line 2: class contains a control character"),
    ],
)
def test_bad_class_files_are_named(
    tmp_path: Path, capsys: pytest.CaptureFixture, train: str, gen: str, message: str
) -> None:
    train_path, gen_path = _write(tmp_path / "train.csv", train), _write(tmp_path / "gen.csv", gen)
    assert main([train_path, gen_path]) == 2
    error = capsys.readouterr().err
    assert message.format(train=train_path) in error
    assert "gen.csv" in error or "train.csv" in error


def test_allow_unmatched_leaves_an_occupation_out(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    train = _write(tmp_path / "t.csv", WIDE_TRAIN + "baker,1,1,1,0\n")
    gen = _write(tmp_path / "g.csv", WIDE_GEN)
    assert main([train, gen, "--json", "--n-boot", "10", "--allow-unmatched"]) == 0
    captured = capsys.readouterr()
    assert "warning" in captured.err and "baker" in captured.err
    result = json.loads(captured.out)
    assert result["unmatched"] == {"train_only": ["baker"], "gen_only": []} and result["n_occupations"] == 2


def test_help_explains_both_forms(capsys: pytest.CaptureFixture) -> None:
    assert main(["--help"]) == 0
    text = capsys.readouterr().out
    assert "occupation,n_female,n_male,n_abstain" in text
    assert "occupation,light,medium,dark,abstain" in text and "occupation,class,count" in text
    assert "total-variation" in text
