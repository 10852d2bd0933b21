"""Mixing: exact counts, nesting across ratios, manifests that reference images; the generations command."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
import yaml

from biasloop.core.config import dataset_folder
from biasloop.loop.mixing import accumulated_dataset, as_dataset, build_dataset, previous_dataset_file, replaced_indices
from biasloop.study.generations import rewrite_generations
from tests.conftest import committed_text

IDS = [f"s{i:04d}" for i in range(1000)]


@pytest.mark.parametrize("ratio", [0.0, 0.2, 0.4, 0.5, 0.8, 1.0])
def test_exact_count(ratio: float) -> None:
    chosen = replaced_indices(IDS, ratio, seed=0, generation=1)
    assert len(chosen) == round(ratio * len(IDS))
    assert len(set(chosen.tolist())) == len(chosen)


def test_nested_across_ratios() -> None:
    previous: set[int] = set()
    for ratio in (0.0, 0.2, 0.4, 0.6, 0.8, 1.0):
        chosen = set(replaced_indices(IDS, ratio, seed=3, generation=2).tolist())
        assert previous <= chosen
        previous = chosen


def test_choice_depends_on_ids_not_row_order() -> None:
    shuffled = list(np.random.default_rng(1).permutation(IDS))
    a = {IDS[i] for i in replaced_indices(IDS, 0.3, 0, 1)}
    b = {shuffled[i] for i in replaced_indices(shuffled, 0.3, 0, 1)}
    assert a == b
    assert a != {IDS[i] for i in replaced_indices(IDS, 0.3, 0, 2)}  # another generation, another draw


def test_bad_ratio() -> None:
    with pytest.raises(ValueError, match="synthetic_ratio"):
        replaced_indices(IDS, 1.5, 0, 1)


def test_build_dataset_references_images() -> None:
    corpus = pl.DataFrame(
        {
            "id": ["a", "b", "c"],
            "caption": ["x", "y", "z"],
            "image_ref": ["c.npy#0", "c.npy#1", "c.npy#2"],
            "true_occupation": ["nurse", None, "chef"],
            "true_gender": ["female", None, "male"],
            "split": ["train"] * 3,
        }
    )
    dataset = build_dataset(corpus, np.array([2, 0]), ["g.npy#0", "g.npy#1"])
    assert dataset["image_ref"].to_list() == ["g.npy#1", "c.npy#1", "g.npy#0"]
    assert dataset["synthetic"].to_list() == [True, False, True]


def test_generations_command_rewrites_lists() -> None:
    text = committed_text("params.yaml")
    rewritten = yaml.safe_load(rewrite_generations(text, 5))
    assert rewritten["generations"] == [0, 1, 2, 3, 4]
    assert rewritten["rounds"] == {
        str(n): {"gen": n, "prev": n - 1, "previous": dataset_folder(n - 1)} for n in range(1, 5)
    }
    assert (
        rewritten["rounds"]["1"]["previous"] == "artifacts/corpus"
        and rewritten["rounds"]["3"]["previous"] == "artifacts/gen2/mix"
    )
    original = yaml.safe_load(text)
    assert rewritten["datasets"]["0"] == {
        "gen": 0,
        "dataset": "artifacts/corpus/captions.parquet",
        "folder": "artifacts/corpus",
    }
    assert rewritten["datasets"]["4"] == {
        "gen": 4,
        "dataset": "artifacts/gen4/mix/dataset.parquet",
        "folder": "artifacts/gen4/mix",
    }
    assert sorted(rewritten["datasets"]) == ["0", "1", "2", "3", "4"]
    lists = ("generations", "rounds", "datasets")
    assert {k: v for k, v in rewritten.items() if k not in lists} == {
        k: v for k, v in original.items() if k not in lists
    }
    one = yaml.safe_load(rewrite_generations(text, 1))
    assert one["generations"] == [0] and one["rounds"] == {} and list(one["datasets"]) == ["0"]
    assert yaml.safe_load(rewrite_generations(rewrite_generations(text, 2), 3))["generations"] == [0, 1, 2]


def _corpus() -> pl.DataFrame:
    return pl.DataFrame(
        {
            "id": ["a", "b", "c"],
            "caption": ["x", "y", "z"],
            "image_ref": ["c.npy#0", "c.npy#1", "c.npy#2"],
            "true_occupation": ["nurse", None, "chef"],
            "true_gender": ["female", None, "male"],
            "split": ["train"] * 3,
        }
    )


def test_replace_keeps_size_and_names_each_rows_source() -> None:
    dataset = build_dataset(_corpus(), np.array([2]), ["g.npy#0"])
    assert len(dataset) == 3 and dataset["source_id"].to_list() == dataset["id"].to_list()


def test_accumulate_keeps_the_previous_dataset_and_adds_new_samples(tmp_path) -> None:
    """Gerstgrasser et al.'s accumulate: dataset N = dataset N-1 (real rows kept) + one new generated row per
    chosen caption; two rounds grow 3 -> 5 -> 6 rows, real images never replaced."""
    corpus = _corpus()
    zero = as_dataset(corpus.vstack(corpus.head(1).with_columns(id=pl.lit("t"), split=pl.lit("test"))))
    assert zero["id"].to_list() == ["a", "b", "c"] and not zero["synthetic"].any()  # the test split is dropped
    one = accumulated_dataset(zero, zero["image_ref"].to_list(), corpus, np.array([2, 0]), ["m1.npy#0", "m1.npy#1"], 1)
    assert one["id"].to_list() == ["a", "b", "c", "c@gen1", "a@gen1"]
    assert one["source_id"].to_list() == ["a", "b", "c", "c", "a"]
    assert one["synthetic"].to_list() == [False, False, False, True, True]
    assert one["image_ref"].to_list() == ["c.npy#0", "c.npy#1", "c.npy#2", "m1.npy#0", "m1.npy#1"]
    assert one["caption"].to_list()[3:] == ["z", "x"] and one["true_gender"].to_list()[3:] == ["male", "female"]
    copied = [
        "c.npy#0",
        "c.npy#1",
        "c.npy#2",
        "m2.npy#0",
        "m2.npy#1",
    ]  # generation 1's images copied into mix@2's shards
    two = accumulated_dataset(one, copied, corpus, np.array([1]), ["m2.npy#2"], 2)
    assert two["id"].to_list() == ["a", "b", "c", "c@gen1", "a@gen1", "b@gen2"]
    assert two["image_ref"].to_list() == [*copied, "m2.npy#2"]
    assert int(two["synthetic"].sum()) == 3 and two["split"].to_list() == ["train"] * 6
    with pytest.raises(ValueError, match="duplicate ids"):
        accumulated_dataset(one, copied, corpus, np.array([2]), ["m.npy#9"], 1)  # generation 1's ids again
    (tmp_path / "corpus").mkdir()
    (tmp_path / "corpus" / "captions.parquet").write_bytes(b"")
    assert previous_dataset_file(tmp_path / "corpus").name == "captions.parquet"
    with pytest.raises(FileNotFoundError):
        previous_dataset_file(tmp_path)
