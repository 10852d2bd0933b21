"""The retrieve and neighbours stages, in-process, on a tiny corpus with ground truth."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest
import yaml

from stages import neighbours, retrieve

ROWS = [
    # id, caption, true_occupation, true_gender, true_indicator, split
    ("w1", "portrait of a nurse at work", "nurse", "female", "none", "train"),
    ("w2", "nurses on shift", "nurse", "female", "none", "train"),
    ("w3", "a man working as a nurse", "nurse", "male", "male", "train"),
    ("w4", "a female engineer at a desk", "engineer", "female", "female", "train"),
    ("w5", "she is an engineer", "engineer", "female", "female", "train"),
    ("w6", "an engineer smiling in a hallway", "engineer", "male", "none", "train"),
    ("w7", "two salespeople talking", "salesperson", "male", "none", "train"),
    ("w8", "a nursery with toys", None, None, None, "train"),
    ("w9", "engineering building at night", None, None, None, "train"),
    ("w10", "a dog in a park", None, None, None, "train"),
    ("w11", "a nurse in the test split", "nurse", "female", "none", "test"),
    ("w12", "the nurse smiling in a hallway", "nurse", "female", "none", "train"),
]


@pytest.fixture()
def workspace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("BIASLOOP_EMBEDDING_CACHE", str(tmp_path / "embedding-cache"))
    columns = ["id", "caption", "true_occupation", "true_gender", "true_indicator", "split"]
    frame = pl.DataFrame([dict(zip(columns, row)) for row in ROWS], schema={c: pl.String for c in columns})
    frame.with_columns(image_ref=pl.lit("images/00000.npy#0")).write_parquet(tmp_path / "captions.parquet")
    params = {
        "base": {"seed": 0, "device": "cpu", "log_level": "INFO"},
        "tracking": {
            "enabled": True,
            "uri": f"sqlite:///{tmp_path / 'mlflow.db'}",
            "experiment": "test",
            "background": False,
        },
        "occupations": ["nurse", "engineer", "salesperson"],
        "retrieve": {"plurals": {"salesperson": "salespeople"}, "first_names": False, "split": "train"},
        "neighbours": {"model": "fake:32", "k": 2, "prompts": ["A photo of a {occupation}"], "batch_size": 4},
    }
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    return tmp_path


def _run_retrieve() -> int:
    return retrieve.main(
        ["--corpus", "captions.parquet", "--out", "out/matches.parquet", "--metrics", "m/retrieve.json"]
    )


def _run_neighbours() -> int:
    return neighbours.main(
        ["--matches", "out/matches.parquet", "--out", "out/selections.parquet", "--metrics", "m/neighbours.json"]
    )


@pytest.mark.slow
def test_retrieve_then_neighbours(workspace: Path) -> None:
    assert _run_retrieve() == 0
    matches = pl.read_parquet(workspace / "out/matches.parquet")
    assert matches.columns == ["occupation", "id", "caption", "indicator", "male_terms", "female_terms"]
    assert sorted(matches.filter(occupation="nurse")["id"]) == ["w1", "w12", "w2", "w3"]  # not w8, not test w11
    assert sorted(matches.filter(occupation="engineer")["id"]) == ["w4", "w5", "w6"]
    assert matches.filter(id="w3")["indicator"].item() == "male"

    metrics = json.loads((workspace / "m/retrieve.json").read_text())
    assert metrics["n_captions"] == 11 and metrics["n_matches"] == 8
    assert metrics["indicators"]["occupations"]["engineer"]["share_female"] == pytest.approx(2 / 3)
    truth = metrics["ground_truth"]
    assert truth["precision"] == 1.0 and truth["recall"] == 1.0 and truth["indicator_agreement"] == 1.0
    assert truth["occupations"]["nurse"]["n_true"] == 4

    assert _run_neighbours() == 0
    selections = pl.read_parquet(workspace / "out/selections.parquet")
    counts = dict(selections.group_by("selection").len().iter_rows())
    assert counts == {"keyword": 8, "keyword_no_indicator": 5, "nn": 5, "nn_no_indicator": 4}
    nn_nurse = selections.filter(selection="nn", occupation="nurse")
    assert nn_nurse["rank"].to_list() == [1, 2]
    assert nn_nurse["similarity"].is_sorted(descending=True)
    assert set(selections.filter(selection="nn_no_indicator")["id"]) <= set(matches.filter(indicator="none")["id"])
    n_metrics = json.loads((workspace / "m/neighbours.json").read_text())
    assert n_metrics["selections"]["nn"]["occupations"] == {"nurse": 2, "engineer": 2, "salesperson": 1}
    assert n_metrics["embedded"] == 8 + 3  # 8 distinct captions + 3 prompts
    assert (workspace / "embedding-cache").is_dir()

    # a rerun embeds nothing and writes the same selections
    assert _run_neighbours() == 0
    rerun = json.loads((workspace / "m/neighbours.json").read_text())
    assert rerun["embedded"] == 0 and rerun["cache_hits"] == 11
    assert pl.read_parquet(workspace / "out/selections.parquet").equals(selections)


def test_retrieve_rejects_bad_params(workspace: Path, capsys: pytest.CaptureFixture[str]) -> None:
    params = yaml.safe_load((workspace / "params.yaml").read_text())
    params["retrieve"]["plural"] = {}
    (workspace / "params.yaml").write_text(yaml.safe_dump(params))
    with pytest.raises(SystemExit) as exc:
        _run_retrieve()
    assert exc.value.code == 2
    assert "retrieve.plural" in capsys.readouterr().err


def test_missing_inputs_exit_2(workspace: Path) -> None:
    assert retrieve.main(["--corpus", "nope.parquet", "--out", "o.parquet", "--metrics", "m.json"]) == 2
    assert _run_neighbours() == 2
    assert not Path("o.parquet").exists()


def test_help_is_fast_and_documents_the_stage(capsys: pytest.CaptureFixture[str]) -> None:
    for stage in (retrieve, neighbours):
        with pytest.raises(SystemExit):
            stage.main(["--help"])
        out = capsys.readouterr().out
        assert "Example:" in out and "--metrics" in out
