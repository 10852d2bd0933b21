"""The `biasloop amplify` command, in-process."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from biasloop.cli import main as cli_main
from biasloop.cli.amplify import main


def _write(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


def test_json_output(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    train = _write(tmp_path / "train.csv", "occupation,n_female,n_male,n_abstain\nnurse,8,2,3\nengineer,1,9,0\n")
    gen = _write(tmp_path / "gen.csv", "occupation,n_female,n_male\nengineer,0,10\nnurse,9,1\n")
    assert main([train, gen, "--json", "--n-boot", "100"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["amplification_abs"] == pytest.approx(0.1)
    assert result["amplification_dir"] == pytest.approx(0.1)
    for key in ("noise_floor_abs", "excess_abs", "p_value_abs", "noise_floor_dir", "excess_dir", "p_value_dir"):
        assert isinstance(result[key], float), key
    assert result["excess_abs"] == pytest.approx(result["amplification_abs"] - result["noise_floor_abs"])
    lo, hi = result["excess_abs_ci"]
    assert lo <= result["excess_abs"] <= hi


def test_table_output_through_the_cli(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    train = _write(tmp_path / "train.csv", "occupation,n_female,n_male\nnurse,8,2\nchef,2,8\n")
    gen = _write(tmp_path / "gen.csv", "occupation,n_female,n_male\nnurse,9,1\nchef,2,8\nbaker,1,1\n")
    assert cli_main(["amplify", train, gen, "--n-boot", "50", "--allow-unmatched"]) == 0
    captured = capsys.readouterr()
    assert "amplification_abs" in captured.out and "5.0" in captured.out  # (10 + 0) / 2 pp
    assert "noise floor" in captured.out and "excess" in captured.out
    assert "bias_amp = shift_to_majority" in captured.out  # the alias, shown once
    assert "baker" in captured.err  # mismatch reported


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("occupation,n_female\nnurse,3\n", "line 1: missing column(s) n_male"),
        ("occupation,n_female,n_male\nnurse,3,x\n", "line 2: n_male must be a non-negative integer, found 'x'"),
        ("occupation,n_female,n_male\nnurse,3,1\nchef,-1,2\n", "line 3: n_female must be a non-negative integer"),
        ("occupation,n_female,n_male\nnurse,3,1\nnurse,1,1\n", "line 3: duplicate occupation 'nurse'"),
        ("", "empty file"),
    ],
)
def test_bad_files_are_named(tmp_path: Path, capsys: pytest.CaptureFixture, content: str, message: str) -> None:
    bad = _write(tmp_path / "bad.csv", content)
    good = _write(tmp_path / "good.csv", "occupation,n_female,n_male\nnurse,1,1\n")
    assert main([good, bad]) == 2
    error = capsys.readouterr().err
    assert "bad.csv" in error and message in error


def test_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main([str(tmp_path / "nope.csv"), str(tmp_path / "nope.csv")]) == 2
    assert "nope.csv: file not found" in capsys.readouterr().err


def test_json_per_occupation_and_unmatched(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    # train nurse 8/(8+2) = 0.8 with 3 abstentions out of 13 ; gen nurse 0.9 -> difference 0.1
    train = _write(tmp_path / "train.csv", "occupation,n_female,n_male,n_abstain\nnurse,8,2,3\nchef,1,1,0\n")
    gen = _write(tmp_path / "gen.csv", "occupation,n_female,n_male\nnurse,9,1\n")
    assert main([train, gen, "--json", "--n-boot", "20", "--seed", "3", "--allow-unmatched"]) == 0
    captured = capsys.readouterr()
    result = json.loads(captured.out)
    (row,) = result["per_occupation"]
    assert row["share_train"] == pytest.approx(0.8) and row["share_gen"] == pytest.approx(0.9)
    assert row["abstain_rate_train"] == pytest.approx(3 / 13)
    assert row["difference"] == pytest.approx(0.1)
    assert result["unmatched"] == {"train_only": ["chef"], "gen_only": []}
    assert "warning" in captured.err and "chef" in captured.err


def test_line_numbers_count_blank_lines_and_a_byte_order_mark_is_accepted(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    good = tmp_path / "good.csv"
    good.write_bytes(b"\xef\xbb\xbfoccupation,n_female,n_male\nnurse,1,1\n")
    bad = _write(tmp_path / "bad.csv", "occupation,n_female,n_male\n\nnurse,1,1\n\nchef,1.5,2\n")
    assert main([str(good), bad]) == 2
    assert "bad.csv, line 5: n_female must be a non-negative integer, found '1.5'" in capsys.readouterr().err


def test_unreadable_files(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    latin = tmp_path / "latin.csv"
    latin.write_bytes(b"occupation,n_female,n_male\ncaf\xe9,1,1\n")
    assert main([str(latin), str(latin)]) == 2
    assert "latin.csv: not UTF-8" in capsys.readouterr().err
    assert main([str(tmp_path), str(latin)]) == 2
    assert "cannot read" in capsys.readouterr().err


def test_help_explains_the_format_and_metrics(capsys: pytest.CaptureFixture) -> None:
    assert main(["--help"]) == 0
    text = capsys.readouterr().out
    for word in (
        "occupation,n_female,n_male",
        "amplification_abs",
        "amplification_dir",
        "shift_to_majority",
        "bias_amp",
        "mad_gen",
        "pearson",
        "bootstrap",
        "noise floor",
        "excess_abs",
        "p-value",
        "--paired",
        "occupation,train_label,gen_label",
        "estimands.gap",
        "p < 0.001",
        "raw A_abs",
    ):
        assert word in text


def test_json_estimands_and_text_leads_with_them(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    # nurse 80 / 20 -> 45 / 5, engineer 10 / 90 -> 0 / 50: shift = raw A_abs = 0.1 (tests/test_estimands.py)
    train = _write(tmp_path / "train.csv", "occupation,n_female,n_male,n_abstain\nnurse,80,20,3\nengineer,10,90,0\n")
    gen = _write(tmp_path / "gen.csv", "occupation,n_female,n_male,n_abstain\nnurse,45,5,0\nengineer,0,50,2\n")
    assert main([train, gen, "--json", "--n-boot", "200"]) == 0
    estimands = json.loads(capsys.readouterr().out)["estimands"]
    assert set(estimands) == {"shift", "gap", "a_abs_raw"}
    assert set(estimands["shift"]) == {
        "estimate",
        "ci",
        "p_value",
        "p_value_is_bound",
        "n_boot",
        "kind",
        "n_unclear_majority",
    }
    assert set(estimands["gap"]) == {"estimate", "ci", "p_value", "p_value_is_bound", "kind"}
    assert estimands["shift"]["estimate"] == pytest.approx(0.1) and estimands["a_abs_raw"] == pytest.approx(0.1)
    assert main([train, gen, "--n-boot", "200"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].split()[:2] == ["shift", "+10.0"] and "[+3.2, +16.8]" in lines[1]  # 10 +- 6.84 pp
    assert lines[2].split()[0] == "gap" and "raw A_abs 10.0 pp" in lines[2]
    assert "p " in lines[1] and "p " in lines[2]


def test_p_value_at_the_monte_carlo_floor_is_a_bound(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    train = _write(tmp_path / "train.csv", "occupation,n_female,n_male\nnurse,800,200\nengineer,100,900\n")
    gen = _write(tmp_path / "gen.csv", "occupation,n_female,n_male\nnurse,950,50\nengineer,5,995\n")
    assert main([train, gen, "--n-boot", "999"]) == 0
    text = capsys.readouterr().out
    assert "p < 0.001" in text and "0.001 " not in text.splitlines()[1]
    assert main([train, gen, "--n-boot", "999", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["estimands"]["shift"]["p_value"] == pytest.approx(1 / 1000)
    assert result["estimands"]["shift"]["p_value_is_bound"] and result["p_value_abs_is_bound"]


PAIRS = "occupation,train_label,gen_label,source_id\n" + "".join(
    [
        "nurse,female,female,1\n" * 6,
        "nurse,male,female,2\n" * 2,
        "nurse,male,male,3\n" * 2,
        "engineer,male,male,4\n" * 8,
        "engineer,female,male,5\n" * 2,
        "engineer,abstain,male,6\n",
    ]
)


def test_paired_json_and_table(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    # nurse: train 6/10 women, gen 8/10 (+0.2); engineer: train 2/10, gen 0/11 (-0.2): shift 0.2
    pairs = _write(tmp_path / "pairs.csv", PAIRS)
    assert main(["--paired", pairs, "--json", "--n-boot", "200"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["paired"] and result["n_pairs"] == 21
    assert result["estimands"]["shift"]["estimate"] == pytest.approx(0.2)
    assert result["estimands"]["shift"]["kind"] == "pair_bootstrap_percentile"
    assert result["estimands"]["gap"]["kind"] == "newcombe_paired_sidak_projection"
    rows = {row["occupation"]: row for row in result["per_occupation"]}
    assert rows["engineer"]["n_abstain_train"] == 1 and rows["engineer"]["n_pairs"] == 11
    assert main(["--paired", pairs, "--n-boot", "50"]) == 0
    assert "21 pairs (paired)" in capsys.readouterr().out.splitlines()[0]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("occupation,train_label\nnurse,female\n", "line 1: missing column(s) gen_label"),
        (
            "occupation,train_label,gen_label\nnurse,female,woman\n",
            "line 2: gen_label must be one of female, male, abstain, found 'woman'",
        ),
        ("occupation,train_label,gen_label\nnurse,female,male\n,male,male\n", "line 3: empty occupation"),
        ("occupation,train_label,gen_label\n", "no pair rows"),
        ("occupation,train_label,gen_label\nnurse,abstain,female\n", "has a confident (non-abstained) label on both"),
        ("", "empty file"),
    ],
)
def test_bad_pair_files_are_named(tmp_path: Path, capsys: pytest.CaptureFixture, content: str, message: str) -> None:
    bad = _write(tmp_path / "bad_pairs.csv", content)
    assert main(["--paired", bad]) == 2
    error = capsys.readouterr().err
    assert "bad_pairs.csv" in error and message in error


def test_paired_and_count_files_are_exclusive(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    pairs = _write(tmp_path / "pairs.csv", PAIRS)
    assert main(["--paired", pairs, pairs]) == 2
    assert "not both" in capsys.readouterr().err
    assert main([pairs]) == 2
    assert "--paired" in capsys.readouterr().err
