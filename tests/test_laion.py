"""LAION acquisition: selection over metadata, img2dataset download from a loopback server, face/NSFW
filter on real photos, and the whole path metadata -> selection -> download -> filter -> ingestion ->
classification in-process on tiny models. Nothing leaves the loopback range (127.0.0.0/8)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import polars as pl
import pytest
import yaml

from biasloop.data.acquisition.download import download_table, failure_reason
from biasloop.data.acquisition.filtering import (
    FilterConfig,
    decide,
    dropped_gender_shares,
    filter_table,
)
from biasloop.data.acquisition.selection import SelectConfig, scan_metadata, select_rows
from tests.laion_fixtures import photos

REPO_ROOT = Path(__file__).resolve().parents[1]
OCCUPATIONS = ["engineer", "nurse"]


@pytest.fixture(scope="session")
def face_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """BlazeFace full-range: data/ after `make data`, else extracted from the cached mediapipe wheel."""
    materialised = REPO_ROOT / "data/face_detection/face_detection_full_range_sparse.tflite"
    if materialised.exists():
        return materialised
    wheels = Path(os.environ.get("VENV_ROOT", Path.home() / ".cache/biasloop")) / "wheels"
    found = sorted(wheels.glob("mediapipe-0.10.14-*.whl"))
    if not found:
        pytest.skip("BlazeFace model not materialised: run `make data` (it downloads the mediapipe==0.10.14 wheel)")
    from biasloop.data.acquisition.filtering import extract_face_model

    return extract_face_model(found[0], tmp_path_factory.mktemp("face_detection"))


# ---------------------------------------------------------------------------------------------- selection


def _metadata(tmp_path: Path, rows: list[tuple[str, str]], split_at: int | None = None) -> list[str]:
    frame = pl.DataFrame({"url": [u for u, _ in rows], "text": [c for _, c in rows], "w": list(range(len(rows)))})
    if split_at is None:
        frame.write_parquet(tmp_path / "a.parquet")
        return [str(tmp_path / "a.parquet")]
    frame[:split_at].write_parquet(tmp_path / "a.parquet")
    frame[split_at:].write_parquet(tmp_path / "b.parquet")
    return [str(tmp_path / "a.parquet"), str(tmp_path / "b.parquet")]


ROWS = [
    ("u1", "a nurse at work"),
    ("u1", "nurse again, same url"),
    ("u2", "two nurses"),
    ("u3", "an engineer"),
    ("u4", "a nurse and an engineer"),
    ("u5", "the nursery"),
    ("u6", "engineering school"),
    ("", "a nurse, no url"),
    ("u7", "she is a nurse"),
    ("u8", "he is a nurse"),
]


def test_selection_dedupes_caps_and_merges_occupations(tmp_path: Path) -> None:
    config = SelectConfig(url_column="url", caption_column="text", keep_columns=("w",), max_per_occupation=3, seed=1)
    selection, counts = select_rows(scan_metadata(_metadata(tmp_path, ROWS), config), OCCUPATIONS, config)
    # nurse: u1 (twice), u2, u4, u7, u8 match; "nursery" and the empty URL do not
    assert counts["nurse"] == {"matched": 6, "duplicate_url": 1, "over_cap": 2, "requested": 3}
    assert counts["engineer"] == {"matched": 2, "duplicate_url": 0, "over_cap": 0, "requested": 2}
    assert selection["url"].n_unique() == len(selection)  # one row per URL
    assert set(selection.columns) == {"sample_id", "url", "caption", "occupations", "indicator", "w"}
    exploded = selection.explode("occupations")
    assert exploded.group_by("occupations").len().sort("occupations").rows() == [("engineer", 2), ("nurse", 3)]
    assert selection["sample_id"].to_list() == [f"s{i:09d}" for i in range(len(selection))]
    # u1's caption is its first occurrence's
    if "u1" in selection["url"].to_list():
        assert selection.filter(pl.col("url") == "u1")["caption"].item() == "a nurse at work"


def test_selection_does_not_depend_on_file_layout_and_follows_the_seed(tmp_path: Path) -> None:
    def urls(folder: str, seed: int, split_at: int | None = None) -> list[str]:
        (tmp_path / folder).mkdir(exist_ok=True)
        config = SelectConfig(url_column="url", caption_column="text", max_per_occupation=2, seed=seed)
        selection, _ = select_rows(
            scan_metadata(_metadata(tmp_path / folder, ROWS, split_at), config), OCCUPATIONS, config
        )
        return selection["url"].to_list()

    assert urls("one", 0) == urls("two", 0, split_at=4)
    assert len({tuple(sorted(urls("one", seed))) for seed in range(6)}) > 1  # the seed changes what the cap keeps


def test_selection_names_a_missing_column(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"a\.parquet: missing column\(s\) \['URL', 'TEXT'\]"):
        scan_metadata(_metadata(tmp_path, ROWS), SelectConfig())


def test_selection_names_a_file_that_is_not_parquet(tmp_path: Path) -> None:
    (tmp_path / "part-00000.parquet").write_bytes(b"<html>an error page saved as parquet</html>")
    with pytest.raises(ValueError, match=r"part-00000\.parquet: not a readable parquet file"):
        scan_metadata([tmp_path / "part-00000.parquet"], SelectConfig())


# ----------------------------------------------------------------------------------------------- download


@pytest.mark.parametrize(
    ("status", "message", "reason"),
    [
        ("success", None, "downloaded"),
        ("failed_to_download", "HTTP Error 404: Not Found", "http_404"),
        ("failed_to_download", "HTTP Error 503: Service Unavailable", "http_503"),
        ("failed_to_download", "timed out", "timeout"),
        ("failed_to_download", "<urlopen error timed out>", "timeout"),
        ("failed_to_download", "Use of image disallowed by X-Robots-Tag directive", "opted_out"),
        ("failed_to_download", "<urlopen error [Errno 111] Connection refused>", "connection"),
        ("failed_to_resize", "Image decoding error", "not_an_image"),
        ("failed_to_resize", "image too small", "too_small"),
        ("failed_to_download", "something new", "other"),
    ],
)
def test_failure_reason(status: str, message: str | None, reason: str) -> None:
    assert failure_reason(status, message) == reason


def test_download_table_counts_every_occupation_of_a_url() -> None:
    selection = pl.DataFrame(
        {"sample_id": ["s0", "s1", "s2"], "occupations": [["nurse", "engineer"], ["nurse"], ["engineer"]]}
    )
    status = pl.DataFrame({"sample_id": ["s0", "s1"], "reason": ["downloaded", "http_404"]})
    table = download_table(selection, status, OCCUPATIONS)
    assert table.to_dicts() == [
        {"occupation": "engineer", "requested": 2, "downloaded": 1, "failed_http_404": 0, "failed_missing": 1},
        {"occupation": "nurse", "requested": 2, "downloaded": 1, "failed_http_404": 1, "failed_missing": 0},
    ]


# ------------------------------------------------------------------------------------------------- filter


@pytest.mark.parametrize(
    ("faces", "n_faces", "nsfw", "reason"),
    [
        ("exactly_one", 1, 0.1, "kept"),
        ("exactly_one", 2, 0.1, "several_faces"),
        ("exactly_one", 0, 0.1, "no_face"),
        ("at_least_one", 2, 0.1, "kept"),
        ("off", 0, 0.1, "kept"),
        ("exactly_one", 1, 0.8, "nsfw"),
        ("exactly_one", None, None, "undecodable"),
    ],
)
def test_decide(faces: str, n_faces: int | None, nsfw: float | None, reason: str) -> None:
    assert decide(n_faces, nsfw, FilterConfig(faces=faces, nsfw_threshold=0.8)) == reason


def test_face_counter_and_nsfw_on_real_photos(face_model: Path) -> None:
    from biasloop.data.acquisition.filtering import FaceCounter, NsfwScorer

    images = photos()
    with FaceCounter(face_model, 0.5) as counter:
        counts = {name: len(counter.scores(image)) for name, image in images.items()}
    assert counts == {"astronaut.jpg": 1, "mirrored.jpg": 1, "two_astronauts.jpg": 2, "chelsea.jpg": 0}
    scorer = NsfwScorer()
    assert all(0 <= scorer.score(image) < 0.2 for image in images.values())


def test_face_model_extraction_checks_the_wheel(tmp_path: Path) -> None:
    import zipfile

    from biasloop.data.acquisition.filtering import extract_face_model

    wheel = tmp_path / "mediapipe-0.10.14-x.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr("mediapipe/modules/face_detection/face_detection_full_range_sparse.tflite", b"not a model")
        archive.writestr("mediapipe-0.10.14.dist-info/LICENSE", b"x")
    with pytest.raises(ValueError, match="face_detection_full_range_sparse.tflite has SHA-256"):
        extract_face_model(wheel, tmp_path / "out")


def test_filter_table_and_the_share_of_women_among_dropped_images() -> None:
    """Nurse: kept s0 (female), s1 (male), s2 (no indicator); dropped s3 (female, no face), s4 (female, two
    faces), s5 (male, nsfw). Kept share 1/2 over 2 gendered captions, dropped 2/3 over 3. Engineer: only s5,
    dropped, male: dropped share 0, no kept gendered caption."""
    selection = pl.DataFrame(
        {
            "sample_id": ["s0", "s1", "s2", "s3", "s4", "s5", "s6"],
            "occupations": [["nurse"], ["nurse"], ["nurse"], ["nurse"], ["nurse"], ["nurse", "engineer"], ["nurse"]],
            "indicator": ["female", "male", "none", "female", "female", "male", "female"],  # s6: never downloaded
        }
    )
    filtered = pl.DataFrame(
        {
            "sample_id": ["s0", "s1", "s2", "s3", "s4", "s5"],
            "reason": ["kept", "kept", "kept", "no_face", "several_faces", "nsfw"],
        }
    )
    assert filter_table(selection, filtered, OCCUPATIONS).to_dicts() == [
        {
            "occupation": "engineer",
            "filtered_undecodable": 0,
            "filtered_no_face": 0,
            "filtered_several_faces": 0,
            "filtered_nsfw": 1,
            "dropped": 1,
            "kept": 0,
        },
        {
            "occupation": "nurse",
            "filtered_undecodable": 0,
            "filtered_no_face": 1,
            "filtered_several_faces": 1,
            "filtered_nsfw": 1,
            "dropped": 3,
            "kept": 3,
        },
    ]
    assert dropped_gender_shares(selection, filtered, OCCUPATIONS).to_dicts() == [
        {
            "occupation": "engineer",
            "share_female_indicator_kept": None,
            "n_indicator_kept": 0,
            "share_female_indicator_dropped": 0.0,
            "n_indicator_dropped": 1,
        },
        {
            "occupation": "nurse",
            "share_female_indicator_kept": 0.5,
            "n_indicator_kept": 2,
            "share_female_indicator_dropped": 2 / 3,
            "n_indicator_dropped": 3,
        },
    ]


# ------------------------------------------------------------------------------------ the whole path


@pytest.mark.slow
def test_metadata_to_classified_faces(
    tmp_path: Path, tiny_params: Path, face_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from stages import (
        corpus,
        instrument,
        label_train,
        laion_download,
        laion_filter,
        laion_select,
        neighbours,
        retrieve,
    )
    from tests.laion_fixtures import MIRROR_NETWORK, photo_server, write_metadata

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("BIASLOOP_EMBEDDING_CACHE", str(tmp_path / "embedding-cache"))
    params = yaml.safe_load(tiny_params.read_text())
    params["occupations"] = OCCUPATIONS
    params["laion_download"].update(
        processes_count=1,
        thread_count=4,
        timeout=1,
        retries=0,
        number_sample_per_shard=4,
        local_mirror_networks=[MIRROR_NETWORK],
    )  # the loopback server stands for the web
    params["laion_filter"]["face_model"] = str(face_model)
    params["corpus"].update(source="webdataset", path="artifacts/laion_filter/kept", image_size=16, test_fraction=0.0)
    params["neighbours"].update(model="fake:32", k=5)
    # Two photos cannot train K=2 cross-fitted fold models: the pretrained-CLIP path, at tiny random weights.
    params["instrument"].update(backend="open-clip", model="biasloop-tiny-clip", pretrained=None)
    params["retrieve"]["split"] = None

    def run_download() -> int:
        return laion_download.main(
            [
                "--selection",
                "artifacts/laion_select/selection.parquet",
                "--out",
                "artifacts/laion_download",
                "--metrics",
                "metrics/laion_download.json",
            ]
        )

    with photo_server() as base:
        params["laion_select"]["metadata"] = [str(p) for p in write_metadata(base, tmp_path / "metadata")]
        Path("params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        assert (
            laion_select.main(
                ["--out", "artifacts/laion_select/selection.parquet", "--metrics", "metrics/laion_select.json"]
            )
            == 0
        )
        assert run_download() == 0
        shard_times = {p: p.stat().st_mtime_ns for p in Path("artifacts/laion_download/shards").glob("*.tar")}
        assert run_download() == 0  # resumed: every shard finished, none is fetched again
        assert {p: p.stat().st_mtime_ns for p in shard_times} == shard_times
    assert (
        laion_filter.main(
            [
                "--out",
                "artifacts/laion_filter",
                "--metrics",
                "metrics/acquisition.json",
                "--table",
                "plots/acquisition.csv",
            ]
        )
        == 0
    )

    table = json.loads(Path("metrics/acquisition.json").read_text())["occupations"]
    zero_failures = {k: 0 for k in ("failed_http_404", "failed_not_an_image", "failed_opted_out", "failed_timeout")}
    zero_filtered = {
        k: 0 for k in ("filtered_undecodable", "filtered_no_face", "filtered_several_faces", "filtered_nsfw")
    }
    shares = {
        "share_female_indicator_kept": None,
        "n_indicator_kept": 0,
        "share_female_indicator_dropped": None,
        "n_indicator_dropped": 0,
    }  # no caption of the fixture carries a gender word
    assert table["nurse"] == {
        "matched": 5,
        "duplicate_url": 1,
        "over_cap": 0,
        "requested": 4,
        "downloaded": 1,
        **zero_failures,
        "failed_not_an_image": 1,
        "failed_opted_out": 1,
        "failed_timeout": 1,
        **zero_filtered,
        "dropped": 0,
        "kept": 1,
        **shares,
    }
    assert table["engineer"] == {
        "matched": 4,
        "duplicate_url": 0,
        "over_cap": 0,
        "requested": 4,
        "downloaded": 3,
        **zero_failures,
        "failed_http_404": 1,
        **zero_filtered,
        "filtered_no_face": 1,
        "filtered_several_faces": 1,
        "dropped": 2,
        "kept": 1,
        **shares,
    }
    assert pl.read_csv("plots/acquisition.csv")["kept"].to_list() == [1, 1]

    assert (
        corpus.main(
            [
                "--out",
                "artifacts/corpus",
                "--metrics",
                "metrics/corpus.json",
                "--contact-sheet",
                "plots/corpus_contact_sheet.png",
            ]
        )
        == 0
    )
    captions = pl.read_parquet("artifacts/corpus/captions.parquet")
    assert sorted(captions["caption"].to_list()) == ["A photo of a nurse at work", "Portrait of an engineer"]
    assert (
        retrieve.main(
            [
                "--corpus",
                "artifacts/corpus/captions.parquet",
                "--out",
                "artifacts/retrieve/matches.parquet",
                "--metrics",
                "metrics/retrieve.json",
            ]
        )
        == 0
    )
    assert (
        neighbours.main(
            [
                "--matches",
                "artifacts/retrieve/matches.parquet",
                "--out",
                "artifacts/neighbours/selections.parquet",
                "--metrics",
                "metrics/neighbours.json",
            ]
        )
        == 0
    )
    assert (
        instrument.main(
            [
                "--corpus",
                "artifacts/corpus/captions.parquet",
                "--out",
                "artifacts/instrument",
                "--metrics",
                "metrics/instrument.json",
            ]
        )
        == 0
    )
    assert (
        label_train.main(
            [
                "--instrument",
                "artifacts/instrument",
                "--selections",
                "artifacts/neighbours/selections.parquet",
                "--corpus",
                "artifacts/corpus/captions.parquet",
                "--out",
                "artifacts/label_train/predictions.parquet",
            ]
        )
        == 0
    )
    predictions = pl.read_parquet("artifacts/label_train/predictions.parquet")
    keyword = predictions.filter(pl.col("selection") == "keyword").sort("occupation")
    assert keyword["occupation"].to_list() == OCCUPATIONS
    assert keyword["p_female"].is_between(0, 1).all() and keyword["label"].is_in(["female", "male", "abstain"]).all()


# ------------------------------------------------------------------ hostile URLs through img2dataset


@pytest.mark.slow  # img2dataset spawns a worker process: 10 to 30 s on a shared 2-core machine
def test_download_fetches_only_allowed_urls(tmp_path: Path, tiny_params: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Metadata mixing the mirror (127.0.0.2, let in by local_mirror_networks) with loopback in several
    spellings, file://, a bare path, ftp, data and gopher URLs, credentials, and redirects from the mirror
    to loopback and to a file: the shards hold only the mirror's images, every other URL has a refusal row,
    and the server on 127.0.0.1 (an internal service) never gets a request."""
    import base64
    import tarfile
    from urllib.parse import quote

    from stages import laion_download, laion_select
    from tests.laion_fixtures import MIRROR_NETWORK, jpeg, photo_server

    monkeypatch.chdir(tmp_path)
    secret = tmp_path / "secret.jpg"
    secret.write_bytes(jpeg(photos()["chelsea.jpg"]))  # a real image: read from disk, it would be kept
    internal_requests: list[str] = []
    with photo_server("127.0.0.1", internal_requests) as internal, photo_server() as mirror:
        port = internal.rsplit(":", 1)[1]
        rows = {
            f"{mirror}/astronaut.jpg": "downloaded",
            f"{mirror}/redirect?to={quote(mirror + '/mirrored.jpg', safe='')}": "downloaded",
            f"{mirror}/redirect?to={quote(internal + '/astronaut.jpg', safe='')}": "refused_address",
            f"{mirror}/redirect?to={quote(secret.as_uri(), safe='')}": "refused_scheme",
            f"{internal}/chelsea.jpg": "refused_address",
            f"http://2130706433:{port}/astronaut.jpg": "refused_address",
            f"http://127.1:{port}/astronaut.jpg": "refused_address",
            f"http://0x7f000001:{port}/astronaut.jpg": "refused_address",
            f"http://[::1]:{port}/astronaut.jpg": "refused_address",
            f"http://[::ffff:127.0.0.1]:{port}/astronaut.jpg": "refused_address",
            f"http://localhost:{port}/astronaut.jpg": "refused_address",
            secret.as_uri(): "refused_scheme",
            str(secret): "refused_scheme",
            f"ftp://127.0.0.1:{port}/astronaut.jpg": "refused_scheme",
            "data:image/jpeg;base64," + base64.b64encode(secret.read_bytes()).decode(): "refused_scheme",
            f"gopher://127.0.0.1:{port}/astronaut.jpg": "refused_scheme",
            f"http://user:pw@{mirror.removeprefix('http://')}/two_astronauts.jpg": "refused_url",
        }
        metadata = tmp_path / "metadata.parquet"
        pl.DataFrame({"URL": list(rows), "TEXT": [f"photo {i} of a nurse" for i in range(len(rows))]}).write_parquet(
            metadata
        )
        params = yaml.safe_load(tiny_params.read_text())
        params["occupations"] = OCCUPATIONS
        params["laion_select"]["metadata"] = [str(metadata)]
        params["laion_download"].update(
            processes_count=1, thread_count=4, timeout=2, retries=0, local_mirror_networks=[MIRROR_NETWORK]
        )
        params["laion_filter"].update(faces="off", nsfw_threshold=None)  # keep what was downloaded
        Path("params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        assert (
            laion_select.main(
                ["--out", "artifacts/laion_select/selection.parquet", "--metrics", "metrics/laion_select.json"]
            )
            == 0
        )
        assert (
            laion_download.main(
                [
                    "--selection",
                    "artifacts/laion_select/selection.parquet",
                    "--out",
                    "artifacts/laion_download",
                    "--metrics",
                    "metrics/laion_download.json",
                ]
            )
            == 0
        )
    assert internal_requests == []

    status = pl.read_parquet("artifacts/laion_download/status.parquet")
    assert len(status) == len(rows) and status["url"].n_unique() == len(rows)  # one row per URL, none dropped
    assert dict(status.select("url", "reason").iter_rows()) == rows
    refused = status.filter(pl.col("reason").str.starts_with("refused_"))
    assert all(m.startswith(r) or f"error {r}:" in m for r, m in refused.select("reason", "error_message").iter_rows())

    images, urls = [], []
    for shard in Path("artifacts/laion_download/shards").glob("*.tar"):
        with tarfile.open(shard) as archive:
            for member in archive.getmembers():
                if member.name.endswith(".jpg"):
                    images.append(member.name)
                elif member.name.endswith(".json"):
                    urls.append(json.loads(archive.extractfile(member).read())["url"])
    assert len(images) == 2
    assert sorted(urls) == sorted(u for u, r in rows.items() if r == "downloaded")

    nurse = json.loads(Path("metrics/laion_download.json").read_text())["occupations"]["nurse"]
    assert {k: v for k, v in nurse.items() if k.startswith("failed_refused")} == {
        "failed_refused_address": 8,
        "failed_refused_scheme": 6,
        "failed_refused_url": 1,
    }
    assert nurse["requested"] == len(rows) and nurse["downloaded"] == 2

    # the acquisition table (metrics/acquisition.json, plots/acquisition.csv, the report) counts them too
    from stages import laion_filter

    assert (
        laion_filter.main(
            [
                "--out",
                "artifacts/laion_filter",
                "--metrics",
                "metrics/acquisition.json",
                "--table",
                "plots/acquisition.csv",
            ]
        )
        == 0
    )
    acquisition = json.loads(Path("metrics/acquisition.json").read_text())["occupations"]["nurse"]
    assert (
        acquisition["failed_refused_address"],
        acquisition["failed_refused_scheme"],
        acquisition["failed_refused_url"],
        acquisition["kept"],
    ) == (8, 6, 1, 2)
    assert (
        pl.read_csv("plots/acquisition.csv").filter(pl.col("occupation") == "nurse")["failed_refused_scheme"].item()
        == 6
    )


# ------------------------------------------------------------ unfinished shards and a full disk


def _shard_files(folder: Path, name: str, finished: bool) -> None:
    (folder / f"{name}.tar").write_bytes(b"partial tar")
    (folder / f"{name}.parquet").write_bytes(b"partial parquet")
    if finished:
        (folder / f"{name}_stats.json").write_text("{}")


def test_unfinished_shards_are_found_and_removed(tmp_path: Path) -> None:
    from biasloop.data.acquisition.download import remove_shards, unfinished_shards

    _shard_files(tmp_path, "00000", finished=True)
    _shard_files(tmp_path, "00001", finished=False)
    assert unfinished_shards(tmp_path) == ["00001"]
    remove_shards(tmp_path, ["00001"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["00000.parquet", "00000.tar", "00000_stats.json"]


def test_download_stage_on_a_full_disk(
    tmp_path: Path, tiny_params: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    """img2dataset's workers report a full disk only as a failed shard: the stage probes the folder, fails
    with one line naming it (exit 1) and leaves no partial shard behind."""
    import errno

    from biasloop.data.acquisition import download
    from stages import laion_download

    monkeypatch.chdir(tmp_path)
    params = yaml.safe_load(tiny_params.read_text())
    params["occupations"] = OCCUPATIONS
    Path("params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    Path("artifacts/laion_select").mkdir(parents=True)
    pl.DataFrame(
        {
            "sample_id": ["s000000000"],
            "url": ["http://example.com/a.jpg"],
            "caption": ["a nurse"],
            "occupations": [["nurse"]],
            "indicator": ["none"],
        }
    ).write_parquet("artifacts/laion_select/selection.parquet")

    def run_img2dataset(input_path, shards, config):  # what a worker leaves when its disk fills: no fetch here
        _shard_files(Path(shards), "00000", finished=False)

    def fsync(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(laion_download, "run_img2dataset", run_img2dataset)
    monkeypatch.setattr(download.os, "fsync", fsync)
    assert (
        laion_download.main(
            [
                "--selection",
                "artifacts/laion_select/selection.parquet",
                "--out",
                "artifacts/laion_download",
                "--metrics",
                "metrics/laion_download.json",
            ]
        )
        == 1
    )
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert [line for line in err.splitlines() if line.startswith("error:")] == [
        next(
            line
            for line in err.splitlines()
            if line.startswith("error: disk full (ENOSPC): could not write artifacts/laion_download/shards")
        )
    ]
    left = sorted(p.name for p in Path("artifacts/laion_download/shards").iterdir())
    assert not any(name.startswith("00000") or "probe" in name for name in left), left
    assert not Path("metrics/laion_download.json").exists()
