"""Corpus ingestion (webdataset tar shards, folder listing), its bad-input errors, and the corpus stage."""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import yaml
from PIL import Image

from biasloop.core.io import load_images
from biasloop.data.corpus import (
    CAPTION_COLUMNS,
    OPTIONAL_CAPTION_SCHEMA,
    CorpusConfig,
    CorpusError,
    ingest,
    iter_folder,
    iter_webdataset,
)


def _png(colour: tuple[int, int, int], size: tuple[int, int] = (20, 12)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, format="PNG")
    return buffer.getvalue()


def _write_tar(path: Path, members: dict[str, bytes]) -> None:
    with tarfile.open(path, "w") as archive:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))


@pytest.fixture()
def shards(tmp_path: Path) -> Path:
    folder = tmp_path / "shards"
    folder.mkdir()
    _write_tar(
        folder / "00000.tar",
        {
            "000000000.png": _png((255, 0, 0)),
            "000000000.txt": b"a nurse at work",
            "000000000.json": json.dumps({"key": "000000000", "url": "http://x"}).encode(),
            "000000001.jpg": _png((0, 0, 255)),  # wrong extension for the bytes: PIL reads it anyway
            "000000001.json": json.dumps({"key": "000000001", "caption": "an engineer"}).encode(),
        },
    )
    _write_tar(folder / "00001.tar", {"000000002.png": _png((0, 255, 0)), "000000002.txt": b"a bakery"})
    return folder


def test_webdataset_ingestion(shards: Path) -> None:
    config = CorpusConfig(source="webdataset", path=str(shards), image_size=8, test_fraction=0.0)
    samples, images = ingest(iter_webdataset(shards), config)
    assert samples["id"].to_list() == ["000000000", "000000001", "000000002"]
    assert samples["caption"].to_list() == ["a nurse at work", "an engineer", "a bakery"]
    assert images.shape == (3, 8, 8, 3)
    assert tuple(images[0, 4, 4]) == (255, 0, 0) and tuple(images[1, 4, 4]) == (0, 0, 255)
    assert samples["true_gender"].null_count() == 3


def test_empty_shard_is_recorded(shards: Path) -> None:
    _write_tar(shards / "00002.tar", {})
    records = list(iter_webdataset(shards))
    assert records[-1].where.endswith("00002.tar") and records[-1].problem[0] == "empty_shard"
    samples, _ = ingest(records, CorpusConfig(source="webdataset", image_size=8))
    assert len(samples) == 3  # an empty shard loses no record


def test_unreadable_image_is_named(shards: Path) -> None:
    _write_tar(shards / "00002.tar", {"000000009.jpg": b"not an image", "000000009.txt": b"x"})
    config = CorpusConfig(source="webdataset", path=str(shards))
    with pytest.raises(CorpusError, match=r"00002\.tar, sample '000000009': unreadable image"):
        ingest(iter_webdataset(shards), config)


def test_duplicate_id_is_named(shards: Path) -> None:
    _write_tar(shards / "00002.tar", {"000000002.png": _png((1, 2, 3)), "000000002.txt": b"again"})
    with pytest.raises(CorpusError, match=r"00002\.tar, sample '000000002': duplicate id '000000002'"):
        ingest(iter_webdataset(shards), CorpusConfig(source="webdataset"))


def test_missing_caption_and_image_are_named(shards: Path) -> None:
    config = CorpusConfig(source="webdataset", max_bad_fraction=0.0)
    _write_tar(shards / "00002.tar", {"000000005.png": _png((1, 2, 3))})
    with pytest.raises(CorpusError, match=r"sample '000000005': no caption"):
        ingest(iter_webdataset(shards), config)
    _write_tar(shards / "00002.tar", {"000000006.txt": b"text only"})
    with pytest.raises(CorpusError, match=r"sample '000000006': no image member"):
        ingest(iter_webdataset(shards), config)


def test_folder_source(tmp_path: Path) -> None:
    (tmp_path / "img").mkdir()
    (tmp_path / "img" / "a.png").write_bytes(_png((9, 9, 9)))
    pl.DataFrame({"caption": ["a chef"], "image_path": ["img/a.png"]}).write_parquet(tmp_path / "list.parquet")
    config = CorpusConfig(source="folder", path=str(tmp_path / "list.parquet"), image_size=4)
    samples, images = ingest(iter_folder(config), config)
    assert samples["caption"].to_list() == ["a chef"] and images.shape == (1, 4, 4, 3)
    pl.DataFrame({"text": ["a chef"], "image_path": ["img/a.png"]}).write_parquet(tmp_path / "bad.parquet")
    with pytest.raises(CorpusError, match=r"bad\.parquet: missing column\(s\) \['caption'\]"):
        list(iter_folder(CorpusConfig(source="folder", path=str(tmp_path / "bad.parquet"))))


def _run_stage(workdir: Path, params: Path, *extra: str) -> int:
    from stages.corpus import main

    cwd = os.getcwd()
    os.chdir(workdir)
    try:
        return main(
            [
                "--params",
                str(params),
                "--out",
                "artifacts/corpus",
                "--metrics",
                "metrics/corpus.json",
                "--contact-sheet",
                "plots/sheet.png",
                *extra,
            ]
        )
    finally:
        os.chdir(cwd)


def _tree_digest(folder: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            digest.update(path.relative_to(folder).as_posix().encode() + path.read_bytes())
    return digest.hexdigest()


def test_corpus_stage_world(tmp_path: Path, tiny_params: Path) -> None:
    assert _run_stage(tmp_path, tiny_params) == 0
    table = pl.read_parquet(tmp_path / "artifacts/corpus/captions.parquet")
    assert tuple(table.columns) == (*CAPTION_COLUMNS, *OPTIONAL_CAPTION_SCHEMA)  # the tone world's true_tone columns
    assert len(table) == 3 * 40 + 10 + 6
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        images = load_images(table["image_ref"].to_list()[:5])
    finally:
        os.chdir(cwd)
    assert images.shape == (5, 16, 16, 3)
    metrics = json.loads((tmp_path / "metrics/corpus.json").read_text())
    assert metrics["n_samples"] == len(table) and len(metrics["per_occupation"]) == 3
    assert (tmp_path / "plots/sheet.png").read_bytes()[:4] == b"\x89PNG"
    assert list((tmp_path / "mlflow.db").parent.glob("mlflow.db"))

    first = _tree_digest(tmp_path / "artifacts/corpus")
    assert _run_stage(tmp_path, tiny_params) == 0
    assert _tree_digest(tmp_path / "artifacts/corpus") == first  # same seed: byte-identical
    params = yaml.safe_load(tiny_params.read_text())
    params["world"]["seed"] = 1
    tiny_params.write_text(yaml.safe_dump(params))
    assert _run_stage(tmp_path, tiny_params) == 0
    assert _tree_digest(tmp_path / "artifacts/corpus") != first


def test_corpus_stage_bad_input_leaves_nothing(tmp_path: Path, tiny_params: Path, shards: Path, capsys) -> None:
    _write_tar(shards / "00002.tar", {"000000002.png": _png((1, 2, 3)), "000000002.txt": b"again"})
    params = yaml.safe_load(tiny_params.read_text())
    params["corpus"].update(source="webdataset", path=str(shards))
    tiny_params.write_text(yaml.safe_dump(params))
    assert _run_stage(tmp_path, tiny_params) == 2
    assert "duplicate id '000000002'" in capsys.readouterr().err
    assert not (tmp_path / "artifacts" / "corpus").exists()
    assert not list((tmp_path / "artifacts").glob("*")) if (tmp_path / "artifacts").exists() else True


def test_corpus_stage_rejects_unknown_param(tmp_path: Path, tiny_params: Path, capsys) -> None:
    params = yaml.safe_load(tiny_params.read_text())
    params["world"]["sample_per_occupation"] = 3
    tiny_params.write_text(yaml.safe_dump(params))
    with pytest.raises(SystemExit) as exit_info:
        _run_stage(tmp_path, tiny_params)
    assert exit_info.value.code == 2
    assert "world.sample_per_occupation: unknown key" in capsys.readouterr().err


def test_image_refs_round_trip(tmp_path: Path) -> None:
    from biasloop.core.io import write_image_shards

    images = np.random.default_rng(0).integers(0, 255, size=(7, 4, 4, 3), dtype=np.uint8)
    refs = write_image_shards(images, tmp_path / "s", shard_size=3)
    assert len({r.split("#")[0] for r in refs}) == 3
    np.testing.assert_array_equal(load_images(refs[::-1]), images[::-1])
