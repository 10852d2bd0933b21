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
    assert cli_main(["amplify", train, gen, "--n-boot", "50"]) == 0
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
    assert main([train, gen, "--json", "--n-boot", "20", "--seed", "3"]) == 0
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
    for word in ("occupation,n_female,n_male", "amplification_abs", "amplification_dir", "shift_to_majority",
                 "bias_amp", "mad_gen", "pearson", "bootstrap", "noise floor", "excess_abs", "p-value"):
        assert word in text
