"""The `biasloop amplify` command, in-process."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from biasloop.amplify import main
from biasloop.cli import main as cli_main


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
    assert len(result["amplification_abs_ci"]) == 2


def test_table_output_through_the_cli(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    train = _write(tmp_path / "train.csv", "occupation,n_female,n_male\nnurse,8,2\nchef,2,8\n")
    gen = _write(tmp_path / "gen.csv", "occupation,n_female,n_male\nnurse,9,1\nchef,2,8\nbaker,1,1\n")
    assert cli_main(["amplify", train, gen, "--n-boot", "50"]) == 0
    captured = capsys.readouterr()
    assert "amplification_abs" in captured.out and "5.0" in captured.out  # (10 + 0) / 2 pp
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
