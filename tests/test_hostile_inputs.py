"""Hostile inputs: what bad params, web data, count files and model folders get.

Policy (docs/bad-input.md): a bad *record* of an ingested corpus is skipped and recorded with its
reason (``skipped.parquet``, counts in ``metrics/corpus.json``), and the stage fails only above
``corpus.max_bad_fraction``; everything else (params, a bad source, a count file, a model folder) fails
at once with exit status 2 and one line naming the file / key / record and the problem, and leaves no
output behind.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import struct
import tarfile
import zlib
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import yaml
from PIL import Image

from biasloop.data.corpus import (
    CorpusConfig,
    CorpusError,
    ingest_corpus,
    iter_folder,
    iter_webdataset,
)

# --------------------------------------------------------------------------------------------------
# helpers


def _image_bytes(image: Image.Image, fmt: str = "PNG", **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def _png(colour=(200, 30, 30), size=(20, 12)) -> bytes:
    return _image_bytes(Image.new("RGB", size, colour))


def _png_claiming(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height pixels but whose data is a few bytes (a bomb)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")
    )


def _tar(path: Path, members: list) -> Path:
    """Write a tar: ``members`` are ``(name, bytes)`` or ready ``TarInfo`` objects (links)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w") as archive:
        for member in members:
            if isinstance(member, tarfile.TarInfo):
                archive.addfile(member)
                continue
            name, data = member
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return path


def _good(key: str, caption: bytes = b"a nurse at work") -> list:
    return [(f"{key}.png", _png()), (f"{key}.txt", caption)]


def _ingest(tmp_path: Path, members: list, **overrides):
    """Ingest one shard of ``members`` (plus two good samples) with skipping always allowed."""
    folder = tmp_path / "shards"
    _tar(folder / "00000.tar", _good("good0") + members + _good("good1"))
    config = CorpusConfig(
        source="webdataset", path=str(folder), image_size=8, test_fraction=0.0, **{"max_bad_fraction": 1.0, **overrides}
    )
    report = ingest_corpus(iter_webdataset(folder, max_member_bytes=config.max_file_bytes), config, tmp_path / "out")
    captions = pl.read_parquet(tmp_path / "out" / "captions.parquet")
    skipped = pl.read_parquet(tmp_path / "out" / "skipped.parquet")
    return report, captions, skipped


def _images(captions: pl.DataFrame) -> np.ndarray:
    from biasloop.core.io import load_images

    return load_images(captions["image_ref"].to_list(), root="/")


def _assert_skipped(report, skipped: pl.DataFrame, reason: str, where: str, detail: str) -> None:
    assert report.skipped_by_reason[reason] == 1, report.to_metrics()
    (row,) = skipped.filter(pl.col("reason") == reason).iter_rows(named=True)
    assert where in row["where"] and detail in row["detail"], row
    assert report.n_kept == 2  # the good samples on either side are kept


# --------------------------------------------------------------------------------------------------
# params: fail at once, exit 2, one line naming the key


@pytest.fixture()
def params_file(tmp_path: Path) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text((Path(__file__).resolve().parents[1] / "params.yaml").read_text())
    return path


@pytest.fixture()
def stage_params(params_file: Path) -> Path:
    """The repository's params with tracking off and the packaged occupation table (no data/ needed)."""
    table = Path(__file__).resolve().parents[1] / "biasloop" / "data" / "assets" / "occupations_bls.tsv"
    _edit(params_file, lambda p: (p["tracking"].update(enabled=False), p["world"].update(occupation_table=str(table))))
    return params_file


def _edit(path: Path, edit) -> None:
    params = yaml.safe_load(path.read_text())
    edit(params)
    path.write_text(yaml.safe_dump(params, sort_keys=False))


def _load_fails(path: Path, capsys, message: str) -> None:
    from biasloop.core.stage import load_configs
    from biasloop.data.world import WorldConfig

    with pytest.raises(SystemExit) as exit_info:
        load_configs(str(path), {"occupations": None, "world": WorldConfig, "corpus": CorpusConfig})
    assert exit_info.value.code == 2
    error = capsys.readouterr().err.strip()
    assert "\n" not in error and str(path) in error and message in error, error


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda p: p["corpus"].update(max_bad_fractoin=0.1), "corpus.max_bad_fractoin: unknown key"),
        (lambda p: p["corpus"].update(shard_size="many"), "corpus.shard_size: expected an integer, found 'many'"),
        (lambda p: p["world"].update(plural_fraction=float("nan")), "world.plural_fraction: expected a finite number"),
        (
            lambda p: p["corpus"].update(max_bad_fraction=float("inf")),
            "corpus.max_bad_fraction: expected a finite number",
        ),
        (lambda p: p["corpus"].update(max_bad_fraction=1.5), "corpus.max_bad_fraction: expected in [0, 1], found 1.5"),
        (lambda p: p["corpus"].update(min_image_side=0), "corpus.min_image_side: expected at least 1, found 0"),
        (
            lambda p: p.update(generations=[0, 1, 2, 3]),
            "rounds: expected one {gen: N, prev: N-1, previous: <dataset N-1's folder>} item per generation 1..3",
        ),
        (lambda p: p.update(generations=[0, 2]), "generations: expected [0, 1, ..., G-1], found [0, 2]"),
        (lambda p: p["generator"].update(image_size=32), "generator.image_size is 32 but world.image_size is 16"),
        (lambda p: p["corpus"].update(image_size=24), "corpus.image_size is 24 but world.image_size is 16"),
        (
            lambda p: p["corpus"].update(source="webdataset", image_size=64),
            "generator.image_size is 16 but corpus.image_size is 64",
        ),
    ],
    ids=[
        "unknown-key",
        "wrong-type",
        "nan",
        "inf",
        "out-of-range-fraction",
        "out-of-range-int",
        "rounds-disagree",
        "generations-gap",
        "generator-vs-world-size",
        "corpus-vs-world-size",
        "generator-vs-ingested-size",
    ],
)
def test_bad_params_fail_naming_the_key(params_file: Path, capsys, edit, message: str) -> None:
    _edit(params_file, edit)
    _load_fails(params_file, capsys, message)


def _run_stage(module: str, workdir: Path, params: Path, *args: str) -> int:
    import importlib

    cwd = os.getcwd()
    os.chdir(workdir)
    try:
        return importlib.import_module(f"stages.{module}").main(["--params", str(params), *args])
    finally:
        os.chdir(cwd)


CORPUS_ARGS = ("--out", "artifacts/corpus", "--metrics", "metrics/corpus.json", "--contact-sheet", "plots/sheet.png")


def _assert_nothing_written(workdir: Path) -> None:
    for folder in ("artifacts", "metrics", "plots"):
        leftovers = [p for p in (workdir / folder).rglob("*")] if (workdir / folder).exists() else []
        assert not [p for p in leftovers if p.is_file()], leftovers


@pytest.mark.parametrize(
    ("occupations", "message"),
    [
        ([], "occupations: at least one occupation is needed"),
        (["nurse", "astronaut"], "occupations: ['astronaut'] not in"),
        (
            ["nurse", "Carpenter", "enginer"],
            "('Carpenter' is spelled 'carpenter' there; 'enginer': did you mean 'engineer'?)",
        ),
        (["nurses"], "('nurses' is spelled 'nurse' there)"),
    ],
    ids=["empty-occupations", "unknown-occupation", "case-and-misspelling-hints", "plural-hint"],
)
def test_bad_occupations_fail_the_corpus_stage(tmp_path, stage_params, capsys, occupations, message) -> None:
    _edit(stage_params, lambda p: p.update(occupations=occupations))
    assert _run_stage("corpus", tmp_path, stage_params, *CORPUS_ARGS) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and message in error[0], error
    _assert_nothing_written(tmp_path)


@pytest.mark.parametrize(
    ("occupations", "message"),
    [
        (["nurse", "Nurse "], "occupations: 'nurse' and 'Nurse ' name one occupation"),
        ("nurse", "occupations: expected a list of occupation names, found str 'nurse'"),
        (["nurse", ""], "occupations: expected non-empty names, found ''"),
        (["nurse", "chef\x1b[2J"], "occupations: 'chef\\x1b[2J' contains a control character"),
    ],
    ids=["case-duplicate", "a-string-not-a-list", "empty-name", "escape-sequence"],
)
def test_bad_occupation_lists_fail_naming_the_key(params_file: Path, capsys, occupations, message: str) -> None:
    _edit(params_file, lambda p: p.update(occupations=occupations))
    _load_fails(params_file, capsys, message)


# --------------------------------------------------------------------------------------------------
# web data: bad records are skipped and counted with their reason


def test_truncated_jpeg_is_skipped(tmp_path: Path) -> None:
    jpeg = _image_bytes(Image.new("RGB", (64, 64), (10, 200, 10)), "JPEG")
    report, _, skipped = _ingest(tmp_path, [("cut.jpg", jpeg[: len(jpeg) // 2]), ("cut.txt", b"a chef")])
    _assert_skipped(report, skipped, "unreadable_image", "sample 'cut'", "(OSError: Truncated File Read)")


def test_zero_byte_image_is_skipped(tmp_path: Path) -> None:
    report, _, skipped = _ingest(tmp_path, [("empty.png", b""), ("empty.txt", b"a chef")])
    _assert_skipped(report, skipped, "empty_file", "sample 'empty'", "0 bytes")


def test_decompression_bomb_is_skipped_not_a_traceback(tmp_path: Path) -> None:
    # 30000 x 30000 pixels claimed: PIL raises DecompressionBombError (not an OSError) on open
    report, _, skipped = _ingest(tmp_path, [("bomb.png", _png_claiming(30000, 30000)), ("bomb.txt", b"a chef")])
    _assert_skipped(report, skipped, "decompression_bomb", "sample 'bomb'", "900000000 pixels")


def test_pixel_limit_is_the_param(tmp_path: Path) -> None:
    # 40 x 40 = 1600 pixels: above a limit of 1000 but below PIL's own error at twice the limit
    report, _, skipped = _ingest(
        tmp_path, [("big.png", _png(size=(40, 40))), ("big.txt", b"a chef")], max_image_pixels=1000
    )
    _assert_skipped(
        report, skipped, "decompression_bomb", "sample 'big'", "claims 40x40 pixels (corpus.max_image_pixels 1000)"
    )


def test_cmyk_jpeg_is_converted(tmp_path: Path) -> None:
    cmyk = _image_bytes(Image.new("CMYK", (16, 16), (0, 255, 255, 0)), "JPEG", quality=95)  # red
    report, captions, _ = _ingest(tmp_path, [("cmyk.jpg", cmyk), ("cmyk.txt", b"a chef")])
    assert report.n_kept == 3
    red = _images(captions.filter(pl.col("id") == "cmyk"))[0, 4, 4]
    assert red[0] > 200 and red[1] < 60 and red[2] < 60, red


def test_16_bit_grey_png_is_scaled_not_clipped(tmp_path: Path) -> None:
    grey16 = Image.fromarray(np.full((12, 12), 32896, dtype=np.uint16))  # 32896 / 257 = 128
    assert grey16.mode.startswith("I")
    report, captions, _ = _ingest(tmp_path, [("deep.png", _image_bytes(grey16)), ("deep.txt", b"a chef")])
    assert report.n_kept == 3
    assert tuple(_images(captions.filter(pl.col("id") == "deep"))[0, 4, 4]) == (128, 128, 128)


def test_palette_png_with_transparency_is_composited_on_white(tmp_path: Path) -> None:
    palette = Image.new("P", (12, 12), 0)
    palette.putpalette([0, 0, 255] + [0, 0, 0] * 255)
    data = _image_bytes(palette, transparency=0)  # colour 0 (blue) fully transparent
    report, captions, _ = _ingest(tmp_path, [("pal.png", data), ("pal.txt", b"a chef")])
    assert report.n_kept == 3
    assert tuple(_images(captions.filter(pl.col("id") == "pal"))[0, 4, 4]) == (255, 255, 255)


def test_alpha_is_composited_on_white(tmp_path: Path) -> None:
    half = _image_bytes(Image.new("RGBA", (12, 12), (0, 0, 0, 128)))  # half-transparent black
    report, captions, _ = _ingest(tmp_path, [("alpha.png", half), ("alpha.txt", b"a chef")])
    assert report.n_kept == 3
    pixel = _images(captions.filter(pl.col("id") == "alpha"))[0, 4, 4]
    assert all(abs(int(v) - 127) <= 1 for v in pixel), pixel


def test_one_pixel_image_is_skipped(tmp_path: Path) -> None:
    report, _, skipped = _ingest(tmp_path, [("dot.png", _png(size=(1, 1))), ("dot.txt", b"a chef")])
    _assert_skipped(report, skipped, "image_too_small", "sample 'dot'", "1x1 pixels (corpus.min_image_side 8)")


def test_megabyte_caption_is_skipped(tmp_path: Path) -> None:
    report, _, skipped = _ingest(tmp_path, [("long.png", _png()), ("long.txt", b"nurse " * 200_000)])
    _assert_skipped(report, skipped, "caption_too_long", "sample 'long'", "1199999 characters")


def test_nul_and_control_characters_in_captions_become_spaces(tmp_path: Path) -> None:
    members = [
        ("nul.png", _png()),
        ("nul.txt", b"a nurse\x00at work"),
        ("esc.png", _png()),
        ("esc.txt", b"\x1b[31ma chef\x07 in\ta kitchen\r\n"),
    ]
    report, captions, skipped = _ingest(tmp_path, members)
    assert report.n_kept == 4 and len(skipped) == 0
    assert report.n_captions_cleaned == 2
    by_id = dict(captions.select("id", "caption").iter_rows())
    assert by_id["nul"] == "a nurse at work"
    assert by_id["esc"] == "[31ma chef  in a kitchen"


def test_invalid_utf8_caption_is_skipped(tmp_path: Path) -> None:
    report, _, skipped = _ingest(tmp_path, [("latin.png", _png()), ("latin.txt", b"caf\xe9 chef")])
    _assert_skipped(
        report, skipped, "caption_not_utf8", "sample 'latin'", "not UTF-8 (invalid continuation byte at byte 3)"
    )


def test_tar_member_climbing_out_is_never_read(tmp_path: Path) -> None:
    report, _, skipped = _ingest(tmp_path, [("../../evil.png", _png()), ("../../evil.txt", b"a chef")])
    assert report.skipped_by_reason["unsafe_name"] == 2 and report.n_kept == 2
    assert "member '../../evil.png'" in skipped["where"][0]
    assert not (tmp_path.parent / "evil.png").exists()


def test_tar_member_with_absolute_name_is_never_read(tmp_path: Path) -> None:
    report, _, skipped = _ingest(tmp_path, [("/etc/evil.png", _png()), ("/etc/evil.txt", b"a chef")])
    assert report.skipped_by_reason["unsafe_name"] == 2
    assert "absolute" in skipped["detail"][0]


def test_tar_symlink_and_hard_link_members_are_never_followed(tmp_path: Path) -> None:
    link = tarfile.TarInfo("link.png")
    link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
    hard = tarfile.TarInfo("hard.png")
    hard.type, hard.linkname = tarfile.LNKTYPE, "good0.png"
    report, _, skipped = _ingest(tmp_path, [link, ("link.txt", b"a chef"), hard])
    assert report.skipped_by_reason["not_a_file"] == 2
    assert set(skipped.filter(pl.col("reason") == "not_a_file")["detail"]) == {
        "member is a symlink; not read",
        "member is a hard link; not read",
    }
    # the caption left without its image is a record of its own, skipped for having no image
    assert report.skipped_by_reason["no_image"] == 1


def test_oversized_member_is_never_read(tmp_path: Path) -> None:
    report, _, skipped = _ingest(tmp_path, [("huge.png", b"\0" * 5000), ("huge.txt", b"a chef")], max_file_bytes=4000)
    _assert_skipped(report, skipped, "file_too_large", "sample 'huge'", "5000 bytes")


def test_duplicate_ids_keep_the_first(tmp_path: Path) -> None:
    # a sample between the twins: consecutive members with one key are one sample
    report, captions, skipped = _ingest(tmp_path, _good("twin", b"first") + _good("mid") + _good("twin", b"second"))
    assert captions.filter(pl.col("id") == "twin")["caption"].to_list() == ["first"]
    assert report.skipped_by_reason["duplicate_id"] == 1
    assert "duplicate id 'twin'" in skipped.filter(pl.col("reason") == "duplicate_id")["detail"][0]


def test_bad_json_member_is_skipped(tmp_path: Path) -> None:
    members = [("js.png", _png()), ("js.json", b"{not json"), ("arr.png", _png()), ("arr.json", b"[1, 2]")]
    report, _, skipped = _ingest(tmp_path, members)
    assert report.skipped_by_reason["bad_json"] == 2
    assert {w.split(", ")[-1] for w in skipped["where"]} == {"sample 'js'", "sample 'arr'"}


def test_empty_shard_is_recorded_and_loses_nothing(tmp_path: Path) -> None:
    _tar(tmp_path / "shards" / "00001.tar", [])
    report, captions, skipped = _ingest(tmp_path, [])
    assert report.n_empty_shards == 1 and report.n_skipped == 0 and len(captions) == 2
    assert skipped["reason"].to_list() == ["empty_shard"] and skipped["where"][0].endswith("00001.tar")


def test_a_file_that_is_not_a_tar_fails_naming_it(tmp_path: Path) -> None:
    folder = tmp_path / "shards"
    _tar(folder / "00000.tar", _good("a"))
    (folder / "00001.tar").write_bytes(b"<html>404 Not Found</html>" * 40)
    with pytest.raises(CorpusError, match=r"00001\.tar: not a readable tar file"):
        ingest_corpus(iter_webdataset(folder), CorpusConfig(image_size=8), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_deeply_nested_json_member_is_skipped_not_a_traceback(tmp_path: Path) -> None:
    report, _, skipped = _ingest(tmp_path, [("deep.png", _png()), ("deep.json", b"[" * 200_000)])
    _assert_skipped(report, skipped, "bad_json", "sample 'deep'", "nested too deeply")


def test_a_fifo_named_like_a_shard_fails_naming_it_without_blocking(tmp_path: Path) -> None:
    folder = tmp_path / "shards"
    _tar(folder / "00000.tar", _good("a"))
    os.mkfifo(folder / "00001.tar")  # opening it for reading would wait for a writer forever
    with pytest.raises(CorpusError, match=r"00001\.tar: not a regular file"):
        ingest_corpus(iter_webdataset(folder), CorpusConfig(image_size=8), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_laion_filter_survives_bad_json_members(tmp_path: Path, caplog) -> None:
    """Shards from elsewhere given to laion_filter: a .json member that is not JSON, nested too deeply or
    not an object is replaced by the filter's fields (a warning), the sample still filtered."""
    from biasloop.data.acquisition.filtering import FilterConfig, filter_shards

    shard = _tar(
        tmp_path / "in" / "00000.tar",
        [
            ("a.jpg", _image_bytes(Image.new("RGB", (16, 16)), "JPEG")),
            ("a.json", b'{"key": "a", "sample_id": "s1"}'),
            ("b.jpg", _image_bytes(Image.new("RGB", (16, 16)), "JPEG")),
            ("b.json", b"{not json"),
            ("c.jpg", _image_bytes(Image.new("RGB", (16, 16)), "JPEG")),
            ("c.json", b"[" * 200_000),
            ("d.jpg", _image_bytes(Image.new("RGB", (16, 16)), "JPEG")),
            ("d.json", b"[1, 2]"),
        ],
    )
    (tmp_path / "out").mkdir()
    rows = filter_shards([shard], tmp_path / "out", FilterConfig(faces="off", nsfw_threshold=None), progress=False)
    assert rows["key"].to_list() == ["a", "b", "c", "d"] and set(rows["reason"]) == {"kept"}
    assert rows["sample_id"].to_list() == ["s1", None, None, None]
    warnings = " ".join(r.getMessage() for r in caplog.records)
    assert "sample b: .json member is not readable JSON" in warnings and "nested too deeply" in warnings
    assert "sample d: .json member is a list" in warnings


# --------------------------------------------------------------------------------------------------
# folder listings


def _listing(tmp_path: Path, frame: pl.DataFrame) -> CorpusConfig:
    (tmp_path / "img").mkdir(exist_ok=True)
    (tmp_path / "img" / "a.png").write_bytes(_png())
    frame.write_parquet(tmp_path / "list.parquet")
    return CorpusConfig(source="folder", path=str(tmp_path / "list.parquet"), image_size=8, max_bad_fraction=1.0)


def test_listing_with_wrong_column_types_fails_naming_the_column(tmp_path: Path) -> None:
    config = _listing(tmp_path, pl.DataFrame({"caption": [1, 2], "image_path": ["img/a.png", "img/a.png"]}))
    with pytest.raises(CorpusError, match=r"list\.parquet: column 'caption' \(caption\) is Int64, expected text"):
        list(iter_folder(config))


def test_listing_paths_outside_the_folder_and_missing_files_are_skipped(tmp_path: Path) -> None:
    config = _listing(
        tmp_path,
        pl.DataFrame(
            {
                "caption": ["a chef", "a nurse", "a baker"],
                "image_path": ["img/a.png", "../../../etc/passwd", "img/gone.png"],
            }
        ),
    )
    report = ingest_corpus(iter_folder(config), config, tmp_path / "out")
    assert report.n_kept == 1 and dict(report.skipped_by_reason) == {"unsafe_name": 1, "missing_file": 1}
    skipped = pl.read_parquet(tmp_path / "out" / "skipped.parquet")
    assert skipped["where"].to_list()[0].startswith(f"{tmp_path / 'list.parquet'}, row 1")


def test_listing_paths_through_symlinks_out_of_the_folder_are_never_read(tmp_path: Path) -> None:
    """A listed file, or a folder on its path, that is a symbolic link to elsewhere (an extracted archive
    can hold such links): skipped as ``outside_folder``; a link that stays inside is followed."""
    secret = tmp_path / "private"
    secret.mkdir()
    (secret / "key.png").write_bytes(_png((1, 2, 3)))
    (tmp_path / "corpus").mkdir()
    config = _listing(
        tmp_path / "corpus",
        pl.DataFrame(
            {
                "caption": ["a chef", "a nurse", "a baker", "a judge", "a pilot"],
                "image_path": ["img/a.png", "img/leak.png", "linked/key.png", "img/alias.png", "img/pipe.png"],
            }
        ),
    )
    root = tmp_path / "corpus"
    (root / "img" / "leak.png").symlink_to(secret / "key.png")
    (root / "linked").symlink_to(secret, target_is_directory=True)
    (root / "img" / "alias.png").symlink_to(root / "img" / "a.png")  # inside: fine
    os.mkfifo(root / "img" / "pipe.png")  # reading it would block
    report = ingest_corpus(iter_folder(config), config, tmp_path / "out")
    assert report.n_kept == 2 and dict(report.skipped_by_reason) == {"outside_folder": 2, "not_a_file": 1}
    skipped = pl.read_parquet(tmp_path / "out" / "skipped.parquet")
    outside = skipped.filter(pl.col("reason") == "outside_folder")
    assert all(str(secret / "key.png") in detail and "not read" in detail for detail in outside["detail"])
    assert sorted(pl.read_parquet(tmp_path / "out" / "captions.parquet")["caption"]) == ["a chef", "a judge"]


# --------------------------------------------------------------------------------------------------
# the corpus stage: skip and record below the threshold, fail above it with nothing written


def _webdataset_params(params: Path, shards: Path, **corpus) -> None:
    _edit(params, lambda p: p["corpus"].update(source="webdataset", path=str(shards), image_size=16, **corpus))


def test_corpus_stage_records_skips_in_metrics(tmp_path, stage_params) -> None:
    shards = tmp_path / "shards"
    good = [m for i in range(24) for m in _good(f"{i:03d}")]
    _tar(shards / "00000.tar", good + [("bad.jpg", b"\xff\xd8\xff garbage"), ("bad.txt", b"a chef")])
    _webdataset_params(stage_params, shards)
    assert _run_stage("corpus", tmp_path, stage_params, *CORPUS_ARGS) == 0
    metrics = json.loads((tmp_path / "metrics/corpus.json").read_text())
    assert metrics["n_samples"] == 24
    assert metrics["ingestion"]["n_records"] == 25 and metrics["ingestion"]["skipped_by_reason"] == {
        "unreadable_image": 1
    }
    skipped = pl.read_parquet(tmp_path / "artifacts/corpus/skipped.parquet")
    assert skipped["id"].to_list() == ["bad"] and skipped["reason"].to_list() == ["unreadable_image"]


def test_corpus_stage_fails_above_max_bad_fraction_writing_nothing(tmp_path, stage_params, capsys) -> None:
    shards = tmp_path / "shards"
    _tar(shards / "00000.tar", _good("a") + [("b.png", b""), ("b.txt", b"x"), ("c.png", _png()), ("c.txt", b"\xff")])
    _webdataset_params(stage_params, shards, max_bad_fraction=0.5)
    assert _run_stage("corpus", tmp_path, stage_params, *CORPUS_ARGS) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1, error
    assert "corpus: 2 of 3 records skipped (66.7%), above corpus.max_bad_fraction 0.5" in error[0]
    assert "first: " in error[0] and "sample 'b': image file has 0 bytes" in error[0]
    _assert_nothing_written(tmp_path)


# --------------------------------------------------------------------------------------------------
# count files for `biasloop amplify`


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"occupation,n_female,n_male\nnurse,nan,3\n", "line 2: n_female must be a non-negative integer, found 'nan'"),
        (b"occupation,n_female,n_male\nnurse,1e3,3\n", "line 2: n_female must be a non-negative integer, found '1e3'"),
        (b"occupation,n_female,n_male\nnurse,99999999999999999999999,3\n", "line 2: n_female is too large"),
        (b"occupation,n_female,n_male\nchef,1,3\n", "no occupation is in both"),
        (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "not UTF-8"),
        (b"occupation,n_female,n_male\nnur\x00se,1,3\n", "line 2: occupation contains a control character"),
        (
            "occupation,n_female,n_male\nnurse\u202e,1,3\n".encode(),
            "line 2: occupation contains a bidirectional control character (U+202E",
        ),
        (b"occupation,n_female,n_male\n" + b"n" * 300 + b",1,3\n", "line 2: occupation is 300 characters long"),
        (b"occupation,n_female,n_male,n_female\nnurse,1,3,9\n", "line 1: column(s) n_female appear more than once"),
    ],
    ids=[
        "nan-count",
        "float-count",
        "overflowing-count",
        "no-shared-occupation",
        "binary-file",
        "nul-in-name",
        "bidi-override-in-name",
        "overlong-name",
        "repeated-column",
    ],
)
def test_bad_count_files_are_named(tmp_path: Path, capsys, content: bytes, message: str) -> None:
    from biasloop.cli import main

    bad = tmp_path / "bad.csv"
    bad.write_bytes(content)
    good = tmp_path / "good.csv"
    good.write_text("occupation,n_female,n_male\nnurse,1,1\n")
    assert main(["amplify", str(good), str(bad)]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and "bad.csv" in error[0] and message in error[0], error


def _amplify(tmp_path: Path, train: str, gen: str, *extra: str) -> tuple[int, str, str]:
    import contextlib

    from biasloop.cli import main

    (tmp_path / "train.csv").write_text(train)
    (tmp_path / "gen.csv").write_text(gen)
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = main(["amplify", str(tmp_path / "train.csv"), str(tmp_path / "gen.csv"), "--n-boot", "20", *extra])
    return status, out.getvalue(), err.getvalue()


HEADER = "occupation,n_female,n_male\n"


def test_amplify_matches_capitalised_and_plural_occupations(tmp_path: Path) -> None:
    status, out, err = _amplify(
        tmp_path,
        HEADER + "nurse,8,2\ncarpenter,1,9\nsalesperson,4,6\n",
        HEADER + "Nurses,9,1\nCarpenter,0,10\n salespeople ,5,5\n",
        "--json",
    )
    assert status == 0, err
    result = json.loads(out)
    assert [row["occupation"] for row in result["per_occupation"]] == ["carpenter", "nurse", "salesperson"]
    assert result["unmatched"] == {"train_only": [], "gen_only": []}
    assert result["matched_spellings"] == {"Nurses": "nurse", "Carpenter": "carpenter", "salespeople": "salesperson"}
    assert "'Nurses'" in err and "= 'nurse'" in err  # said, not silent


def test_amplify_fails_naming_an_unmatched_occupation(tmp_path: Path) -> None:
    train, gen = HEADER + "nurse,8,2\ncarpenter,1,9\n", HEADER + "nurse,9,1\ncarpentr,0,10\n"
    status, out, err = _amplify(tmp_path, train, gen)
    lines = err.strip().splitlines()
    assert status == 2 and out == "" and len(lines) == 1, err
    assert "only in" in lines[0] and "train.csv: 'carpenter' (did you mean 'carpentr'" in lines[0]
    assert "gen.csv: 'carpentr'" in lines[0] and "--allow-unmatched" in lines[0]
    status, out, err = _amplify(tmp_path, train, gen, "--allow-unmatched", "--json")
    assert status == 0 and "warning: occupations left out" in err and "carpentr" in err
    assert [row["occupation"] for row in json.loads(out)["per_occupation"]] == ["nurse"]


@pytest.mark.parametrize(
    ("gen", "message"),
    [
        (HEADER + "nurse,9,1\nNurse,1,1\n", "'nurse' and 'Nurse' name one occupation"),
        (HEADER + "nurse,9,1\nnurses,1,1\n", "'nurse' and 'nurses' name one occupation (singular and plural)"),
    ],
    ids=["case-duplicate", "plural-duplicate"],
)
def test_amplify_one_occupation_twice_in_a_file(tmp_path: Path, gen: str, message: str) -> None:
    status, _, err = _amplify(tmp_path, HEADER + "nurse,8,2\n", gen)
    assert status == 2 and "gen.csv" in err and message in err, err


def test_amplify_invisible_characters_do_not_split_an_occupation(tmp_path: Path) -> None:
    """A zero-width space or a soft hyphen pasted into a name (invisible in a spreadsheet) still matches."""
    status, out, err = _amplify(tmp_path, HEADER + "nurse,8,2\n", HEADER + "nur\u00adse\u200b,9,1\n", "--json")
    assert status == 0, err
    assert [row["occupation"] for row in json.loads(out)["per_occupation"]] == ["nurse"]


def test_amplify_paired_file_with_two_spellings(tmp_path: Path, capsys) -> None:
    from biasloop.cli import main

    pairs = tmp_path / "pairs.csv"
    pairs.write_text("occupation,train_label,gen_label\nnurse,female,female\nNurse,male,female\n")
    assert main(["amplify", "--paired", str(pairs), "--n-boot", "20"]) == 2
    error = capsys.readouterr().err
    assert "pairs.csv" in error and "'nurse' and 'Nurse' name one occupation" in error


@pytest.mark.parametrize("argv", [["amplify", "{train}", "{gen}", "--n-boot", "20"], ["--help"]])
def test_piping_into_head_prints_no_traceback(tmp_path: Path, argv: list[str]) -> None:
    """`biasloop amplify ... | head -1`: the reader leaves early; exit 141 (or 0) quietly, no BrokenPipeError."""
    import shlex
    import subprocess
    import sys

    (tmp_path / "t.csv").write_text(HEADER + "".join(f"job{i},{i % 7},{i % 5 + 1}\n" for i in range(3000)))
    args = [a.format(train=tmp_path / "t.csv", gen=tmp_path / "t.csv") for a in argv]
    command = f"{shlex.quote(sys.executable)} -m biasloop.cli {shlex.join(args)} | head -1; exit ${{PIPESTATUS[0]}}"
    result = subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=300)
    assert result.stdout.count("\n") == 1
    assert "Traceback" not in result.stderr and "BrokenPipe" not in result.stderr, result.stderr
    assert result.returncode in (0, 141)


# --------------------------------------------------------------------------------------------------
# model folders: missing, truncated, foreign or unsafe weight files; nothing is unpickled


class _Payload:
    """A pickle that runs code when loaded the unsafe way (it would create ``marker``)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


@pytest.fixture()
def instrument_folder(tmp_path: Path) -> Path:
    """A saved locked-text-clip instrument (untrained tower; nothing needs the text encoder)."""
    from biasloop.models.instrument.zero_shot import Instrument, InstrumentConfig, _build_tower

    instrument = Instrument(InstrumentConfig(widths=(4, 8)), "cpu")
    instrument.image_tower = _build_tower((4, 8), 16)
    folder = tmp_path / "instrument"
    instrument.save(folder)
    return folder


def _load_instrument_fails(folder: Path, error: type, message: str) -> None:
    from biasloop.models.instrument import load_instrument

    with pytest.raises(error) as info:
        load_instrument(folder)
    assert "\n" not in str(info.value) and message in str(info.value), str(info.value)


def test_saved_instrument_loads(instrument_folder: Path) -> None:
    from biasloop.models.instrument import load_instrument

    assert load_instrument(instrument_folder).image_tower is not None


def test_missing_instrument_folder(tmp_path: Path) -> None:
    _load_instrument_fails(tmp_path / "nowhere", FileNotFoundError, "instrument.json: not found")


def test_truncated_weights_file(instrument_folder: Path) -> None:
    from biasloop.models.weights import ModelFileError

    weights = instrument_folder / "image_tower.pt"
    weights.write_bytes(weights.read_bytes()[:300])
    _load_instrument_fails(instrument_folder, ModelFileError, f"{weights}: not a readable weights file")


def test_pickled_code_in_weights_file_is_never_run(instrument_folder: Path, tmp_path: Path) -> None:
    import torch

    from biasloop.models.weights import ModelFileError

    marker = tmp_path / "code-ran"
    torch.save({"weight": _Payload(marker)}, instrument_folder / "image_tower.pt")
    _load_instrument_fails(instrument_folder, ModelFileError, "image_tower.pt: not a readable weights file")
    assert not marker.exists()
    (instrument_folder / "image_tower.pt").write_bytes(pickle.dumps(_Payload(marker)))  # a bare pickle
    _load_instrument_fails(instrument_folder, ModelFileError, "image_tower.pt: not a readable weights file")
    assert not marker.exists()


def test_foreign_weights_file(instrument_folder: Path) -> None:
    import torch

    from biasloop.models.weights import ModelFileError

    torch.save({"encoder.layer.0.weight": torch.zeros(3, 3)}, instrument_folder / "image_tower.pt")
    _load_instrument_fails(instrument_folder, ModelFileError, "weights do not fit the model: ")


def test_truncated_manifest(instrument_folder: Path) -> None:
    from biasloop.models.weights import ModelFileError

    manifest = instrument_folder / "instrument.json"
    manifest.write_text(manifest.read_text()[:40])
    _load_instrument_fails(instrument_folder, ModelFileError, "instrument.json: not a readable JSON manifest")


def test_deeply_nested_manifest(instrument_folder: Path) -> None:
    from biasloop.models.weights import ModelFileError

    (instrument_folder / "instrument.json").write_text("[" * 200_000)
    _load_instrument_fails(
        instrument_folder, ModelFileError, "instrument.json: not a readable JSON manifest (nested too deeply)"
    )


def test_captions_score_files_nested_too_deeply_are_named(tmp_path: Path, capsys) -> None:
    from biasloop.cli import main

    (tmp_path / "refs.json").write_text('{"1": ["a nurse at work"]}')
    (tmp_path / "hyps.json").write_text("[" * 200_000)
    assert main(["captions-score", str(tmp_path / "refs.json"), str(tmp_path / "hyps.json")]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and "hyps.json: not valid JSON here (nested too deeply)" in error[0], error


@pytest.fixture()
def generator_folder(tmp_path: Path) -> Path:
    """A saved (untrained) tiny-diffusion generator with the hashing text encoder."""
    from biasloop.models.generators import GeneratorConfig, build_generator

    config = GeneratorConfig(text_encoder="fake:32", image_size=8, channels=(8, 16), mid_attention=False)
    folder = tmp_path / "generator"
    build_generator(config).save(folder)
    return folder


@pytest.mark.slow  # imports diffusers: 5 to 30 s on a shared 2-core machine
def test_generator_weights_as_pickle_are_refused(generator_folder: Path, tmp_path: Path) -> None:
    from biasloop.models.generators import load_generator
    from biasloop.models.weights import ModelFileError

    unet = generator_folder / "unet"
    marker = tmp_path / "code-ran"
    (unet / "diffusion_pytorch_model.safetensors").unlink()
    (unet / "diffusion_pytorch_model.bin").write_bytes(pickle.dumps(_Payload(marker)))
    with pytest.raises(ModelFileError, match=r"unet: cannot load UNet2DModel") as info:
        load_generator(generator_folder)
    assert "\n" not in str(info.value) and not marker.exists()


@pytest.mark.slow  # imports diffusers: 5 to 30 s on a shared 2-core machine
def test_truncated_safetensors(generator_folder: Path) -> None:
    from biasloop.models.generators import load_generator
    from biasloop.models.weights import ModelFileError

    conditioning = generator_folder / "conditioning.safetensors"
    conditioning.write_bytes(conditioning.read_bytes()[:100])
    with pytest.raises(ModelFileError, match=r"conditioning\.safetensors: not a readable weights file"):
        load_generator(generator_folder)


# --------------------------------------------------------------------------------------------------
# an occupation no caption mentions is named, not silently dropped


def test_occupation_without_captions_is_named_by_retrieve(tmp_path, stage_params, caplog) -> None:
    corpus = tmp_path / "captions.parquet"
    pl.DataFrame(
        {"id": ["1", "2"], "caption": ["a nurse at work", "an engineer"], "split": ["train", "train"]}
    ).write_parquet(corpus)
    _edit(stage_params, lambda p: p.update(occupations=["nurse", "engineer", "astronaut"]))
    assert (
        _run_stage(
            "retrieve",
            tmp_path,
            stage_params,
            "--corpus",
            str(corpus),
            "--out",
            "matches.parquet",
            "--metrics",
            "retrieve.json",
        )
        == 0
    )
    metrics = json.loads((tmp_path / "retrieve.json").read_text())
    assert metrics["occupations_without_matches"] == ["astronaut"] and metrics["n_occupations_with_matches"] == 2
    assert any("astronaut" in r.getMessage() and r.levelname == "WARNING" for r in caplog.records)


def test_averages_say_which_occupations_they_cover() -> None:
    from biasloop.metrics.amplification import amplification_table
    from biasloop.metrics.paradox import headline

    train = pl.DataFrame({"occupation": ["nurse", "chef"], "n_female": [8, 0], "n_male": [2, 0]})
    gen = pl.DataFrame({"occupation": ["nurse", "chef", "astronaut"], "n_female": [9, 1, 3], "n_male": [1, 1, 3]})
    table = amplification_table(train, gen, n_boot=0)
    assert table["n_occupations"] == 1 and table["occupations_left_out"] == ["astronaut", "chef"]
    summary = headline(table)
    assert summary["n_occupations"] == 1 and summary["n_occupations_left_out"] == 2


# --------------------------------------------------------------------------------------------------
# under DVC: a stage that fails on bad input leaves dvc.lock and the outputs as they were


@pytest.mark.slow
def test_failing_corpus_stage_leaves_dvc_lock_unchanged(tmp_path: Path, stage_params: Path) -> None:
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    project = tmp_path / "project"
    _tar(project / "shards" / "00000.tar", [m for i in range(10) for m in _good(f"{i:03d}")])
    (project / "params.yaml").write_text(stage_params.read_text())
    _webdataset_params(project / "params.yaml", project / "shards", max_bad_fraction=0.0)
    (project / "dvc.yaml").write_text(
        yaml.safe_dump(
            {
                "stages": {
                    "corpus": {
                        "cmd": "python -m stages.corpus " + " ".join(CORPUS_ARGS),
                        "deps": ["shards"],
                        "params": ["corpus"],
                        "outs": [
                            "artifacts/corpus",
                            {"metrics/corpus.json": {"cache": False}},
                            {"plots/sheet.png": {"cache": False}},
                        ],
                    }
                }
            }
        )
    )
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", "PYTHONPATH": str(root)}
    env.pop("DVC_ROOT", None)

    def dvc(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "dvc", *args], cwd=project, env=env, capture_output=True, text=True, timeout=300
        )

    assert dvc("init", "--no-scm", "-q").returncode == 0
    first = dvc("repro")
    assert first.returncode == 0, first.stderr[-2000:]
    lock = (project / "dvc.lock").read_bytes()

    # one undecodable record with max_bad_fraction 0: the stage fails, DVC records nothing
    _tar(project / "shards" / "00001.tar", [("bad.png", b"GIF89a broken"), ("bad.txt", b"a chef")])
    failed = dvc("repro")
    assert failed.returncode != 0
    assert "corpus: 1 of 11 records skipped (9.1%), above corpus.max_bad_fraction 0.0" in failed.stdout + failed.stderr
    assert (project / "dvc.lock").read_bytes() == lock
    assert (
        not (project / "metrics" / "corpus.json").exists()
        or json.loads((project / "metrics" / "corpus.json").read_text())["n_samples"] == 10
    )

    # a bad param: the stage exits 2 before reading anything, dvc.lock still as it was
    _edit(project / "params.yaml", lambda p: p["corpus"].update(max_bad_fraction=float("nan")))
    failed = dvc("repro")
    assert failed.returncode != 0
    assert "corpus.max_bad_fraction: expected a finite number" in failed.stdout + failed.stderr
    assert (project / "dvc.lock").read_bytes() == lock
