"""generator.backend: images: the export's requests served from a folder by generate@N, in-process; each
documented behaviour for missing, extra, unreadable and wrong-size images, under error and skip."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import yaml

from biasloop.core.io import load_images
from biasloop.loop.export import export_prompts, read_prompts, write_prompts
from biasloop.loop.prompts import GenerateConfig
from biasloop.models.generators import GeneratorConfig, build_generator, load_generator
from biasloop.models.generators.image_folder import prompt_id
from tests.test_stage_generate import ARGS, OCCUPATIONS, corpus_and_selections

GENERATE = {
    "neutral_prompts": ["a photo of {article} {occupation}"],
    "n_per_prompt": 2,
    "caption_selection": "keyword",
    "max_captions_per_occupation": 2,
    "batch_size": 3,
    "shard_size": 7,
}


def _colour(i: int) -> np.ndarray:
    image = np.zeros((8, 8, 3), dtype=np.uint8)
    image[..., 0], image[..., 1] = 10 * i, 255 - 7 * i
    return image


@pytest.fixture()
def folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, pl.DataFrame]:
    """A workspace whose gen0 generator is an images generator over imports/, with one PNG per exported
    request (image i a colour of its own) and the manifest.csv; returns the folder and the export."""
    from PIL import Image

    monkeypatch.chdir(tmp_path)
    corpus, selections = corpus_and_selections()
    Path("artifacts/corpus").mkdir(parents=True)
    Path("artifacts/neighbours").mkdir(parents=True)
    corpus.write_parquet("artifacts/corpus/captions.parquet")
    selections.write_parquet("artifacts/neighbours/selections.parquet")
    config = GeneratorConfig(backend="images", images="imports", image_size=8)
    build_generator(config).save("artifacts/models/gen0/generator")
    params = {
        "base": {"seed": 0, "device": "cpu", "log_level": "INFO"},
        "tracking": {"enabled": False, "uri": f"sqlite:///{tmp_path / 'mlflow.db'}", "background": False},
        "occupations": OCCUPATIONS,
        "generate": GENERATE,
        "sampling": {"guidance_scale": 1.5, "steps": 2},
    }
    Path("params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    exported = export_prompts(GenerateConfig(**{**GENERATE, "neutral_prompts": ("a photo of {article} {occupation}",)}),
                              OCCUPATIONS, selections, corpus, seed=0)  # fmt: skip
    images = Path("imports")
    images.mkdir()
    with (images / "manifest.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["prompt_id", "file"])
        for i, key in enumerate(exported["prompt_id"]):
            Image.fromarray(_colour(i)).save(images / f"{i:03d}.png")
            writer.writerow([key, f"{i:03d}.png"])
    return images, exported


def _set_policy(policy: str) -> None:
    config = GeneratorConfig(backend="images", images="imports", image_size=8, images_on_error=policy)
    build_generator(config).save("artifacts/models/gen0/generator")


def _drop_manifest_row(images: Path, index: int) -> str:
    lines = (images / "manifest.csv").read_text().splitlines(keepends=True)
    dropped = lines.pop(index + 1)
    (images / "manifest.csv").write_text("".join(lines))
    return dropped.split(",")[0]


def test_export_rows_ids_and_seeds(folder: tuple[Path, pl.DataFrame], tmp_path: Path) -> None:
    _, exported = folder
    assert len(exported) == 2 * 2 + 2 + 2  # 2 neutral images per occupation, 2 captions each
    neutral = exported.filter(pl.col("prompt_kind") == "neutral")
    assert neutral["n_images"].to_list() == [2] * 4 and neutral["source_id"].null_count() == 4
    captions = exported.filter(pl.col("prompt_kind") == "caption")
    assert captions["n_images"].to_list() == [1] * 4
    assert set(captions["source_id"]) <= {"c1", "c2", "c3", "c4", "c5"}
    row = exported.row(0, named=True)
    assert row["prompt_id"] == prompt_id(row["prompt"], row["seed"]) and len(row["prompt_id"]) == 17
    assert exported["prompt_id"].n_unique() == len(exported)
    for suffix in ("csv", "jsonl"):
        back = read_prompts(write_prompts(exported, tmp_path / f"prompts.{suffix}"))
        assert back.select(exported.columns).equals(exported)


def test_generate_serves_the_folder(folder: tuple[Path, pl.DataFrame]) -> None:
    from stages.generate import main

    _, exported = folder
    assert main(ARGS) == 0
    manifest = pl.read_parquet("artifacts/gen0/generate/manifest.parquet")
    assert manifest["seed"].to_list() == exported["seed"].to_list()  # the export's seeds are generate@0's
    assert manifest["source_id"].to_list() == exported["source_id"].to_list()
    np.testing.assert_array_equal(load_images(manifest["image_ref"].to_list()), np.stack(
        [_colour(i) for i in range(len(exported))]))  # fmt: skip
    report = json.loads(Path("artifacts/gen0/generate/import.json").read_text())
    assert report["n_requested"] == report["n_served"] == len(exported) and report["n_skipped"] == 0


def test_missing_image_is_an_error_naming_it_or_a_recorded_skip(
    folder: tuple[Path, pl.DataFrame], capsys: pytest.CaptureFixture[str]
) -> None:
    from stages.generate import main

    images, exported = folder
    gone = _drop_manifest_row(images, 3)
    (images / "005.png").unlink()  # listed, but no file
    assert main(ARGS) == 2
    err = capsys.readouterr().err
    assert "2 missing" in err and gone in err and exported["prompt_id"][5] in err
    assert not Path("artifacts/gen0/generate").exists()
    (images / "003.png").unlink()  # not an extra file any more
    _set_policy("skip")
    assert main(ARGS) == 0
    manifest = pl.read_parquet("artifacts/gen0/generate/manifest.parquet")
    assert len(manifest) == len(exported) - 2
    assert manifest["seed"].to_list() == [s for i, s in enumerate(exported["seed"]) if i not in (3, 5)]
    report = json.loads(Path("artifacts/gen0/generate/import.json").read_text())
    assert report["n_missing"] == report["n_skipped"] == 2 and set(report["missing"]) == {
        gone,
        exported["prompt_id"][5],
    }


def test_extra_images_are_an_error_or_recorded_and_ignored(
    folder: tuple[Path, pl.DataFrame], capsys: pytest.CaptureFixture[str]
) -> None:
    from PIL import Image

    from stages.generate import main

    images, exported = folder
    Image.fromarray(_colour(1)).save(images / "stray.png")  # in the folder, not in the manifest
    with (images / "manifest.csv").open("a") as handle:
        handle.write("pdeadbeefdeadbeef,000.png\n")  # a request nobody made
    assert main(ARGS) == 2
    err = capsys.readouterr().err
    assert "2 extra" in err and "stray.png" in err and "pdeadbeefdeadbeef" in err
    _set_policy("skip")
    assert main(ARGS) == 0
    report = json.loads(Path("artifacts/gen0/generate/import.json").read_text())
    assert report["n_served"] == len(exported) and report["n_skipped"] == 0
    assert report["extra"] == ["pdeadbeefdeadbeef", "stray.png"]


def test_corrupt_and_wrong_size_images_are_named_or_skipped(
    folder: tuple[Path, pl.DataFrame], capsys: pytest.CaptureFixture[str]
) -> None:
    from PIL import Image

    from stages.generate import main

    images, exported = folder
    (images / "001.png").write_bytes(b"\x89PNG\r\n\x1a\n not an image")
    Image.fromarray(np.zeros((9, 8, 3), dtype=np.uint8)).save(images / "002.png")
    assert main(ARGS) == 2
    err = capsys.readouterr().err
    assert "1 unreadable: 001.png" in err and "1 wrong size: 002.png (8 x 9)" in err
    _set_policy("skip")
    assert main(ARGS) == 0
    manifest = pl.read_parquet("artifacts/gen0/generate/manifest.parquet")
    assert len(manifest) == len(exported) - 2
    report = json.loads(Path("artifacts/gen0/generate/import.json").read_text())
    assert report["unreadable"] == ["001.png"] and report["wrong_size"] == ["002.png (8 x 9)"]
    assert report["n_skipped"] == 2


def test_generator_outside_the_stage_names_an_unexported_request(folder: tuple[Path, pl.DataFrame]) -> None:
    generator = load_generator("artifacts/models/gen0/generator")
    with pytest.raises(ValueError, match="no image for prompt_id"):
        generator.generate(["a caption mix@1 would ask for"], [7])
    assert generator.train(np.zeros((1, 8, 8, 3), np.uint8), ["x"], steps=5, seed=0)["steps"] == 0
    with pytest.raises(ValueError, match="generator.images"):
        build_generator(GeneratorConfig(backend="images", images=""))


def test_webdataset_shards_serve_the_same_images(folder: tuple[Path, pl.DataFrame]) -> None:
    """The images as webdataset shards (members <prompt_id>.png, with a .json beside each) instead of files
    listed in manifest.csv: the same manifest and images; a key in two members is an error naming it."""
    import tarfile

    from stages.generate import main

    images, exported = folder
    assert main(ARGS) == 0
    from_files = load_images(pl.read_parquet("artifacts/gen0/generate/manifest.parquet")["image_ref"].to_list())
    rows = list(csv.DictReader((images / "manifest.csv").open()))
    for number, part in enumerate((rows[:5], rows[5:])):
        with tarfile.open(images / f"shard-{number:05d}.tar", "w") as tar:
            for row in part:
                tar.add(images / row["file"], arcname=f"{row['prompt_id']}.png")
                (images / "meta.json").write_text(json.dumps({"prompt_id": row["prompt_id"]}))
                tar.add(images / "meta.json", arcname=f"{row['prompt_id']}.json")
    for path in [*images.glob("*.png"), images / "manifest.csv", images / "meta.json"]:
        path.unlink()
    assert main(ARGS) == 0
    manifest = pl.read_parquet("artifacts/gen0/generate/manifest.parquet")
    assert manifest["seed"].to_list() == exported["seed"].to_list()
    np.testing.assert_array_equal(load_images(manifest["image_ref"].to_list()), from_files)
    with tarfile.open(images / "shard-00002.tar", "w") as tar:
        tar.add(images / "shard-00000.tar", arcname="ignored.tar")
        (images / "again.png").write_bytes(b"")
        tar.add(images / "again.png", arcname=f"{rows[0]['prompt_id']}.png")
    with pytest.raises(ValueError, match=f"prompt_id '{rows[0]['prompt_id']}' in two members"):
        load_generator("artifacts/models/gen0/generator").index()
