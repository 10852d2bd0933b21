"""Ingestion memory: peak memory of the corpus stage's ingestion against corpus size (flat is the target).

Each corpus is a folder of img2dataset-style webdataset tar shards (JPEG photos-like images of
``--source-side`` pixels, a caption and a json per sample), ingested at ``--image-size`` pixels into
image shards of ``--shard-size`` images, in a fresh subprocess per measurement, two ways:

- **streaming**: ``biasloop.data.corpus.ingest_corpus(iter_webdataset(...), config, out)``, what the
  ``corpus`` stage runs: one image shard in memory at a time;
- **in-memory baseline**: ``ingest(...)`` then ``write_corpus(...)``, which decodes the whole corpus
  into one array before writing (what the stage did before streaming).

Two peaks are recorded per run: the ``tracemalloc`` peak of the ingestion call (Python and numpy
allocations; tracing slows the run, so no time is reported from it) and the process's peak resident
set (``ru_maxrss``) minus the resident set before ingestion (imports excluded). The corpora are 1, 4
and 16 times a shard by default, and the target is a streaming peak at the largest corpus at most
1.5 times the peak at one shard (the set of seen ids for the duplicate check grows by about 130
bytes a record; everything else is bounded). Exits 1 when the target is missed. Corpora are cached
under ``benchmarks/.data/`` (git-ignored).

Usage (repository root)::

    python benchmarks/ingestion.py                     # writes benchmarks/results/ingestion.json
    python benchmarks/ingestion.py --shard-size 256 --multiples 1 4 --out /tmp/ingestion.json
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import resource
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
TARGET_RATIO = 1.5
SAMPLES_PER_TAR = 1000  # img2dataset's default is 10,000; smaller keeps the cache quick to build


def make_corpus(folder: Path, n: int, side: int, seed: int = 0) -> None:
    """Write ``n`` samples (``.jpg`` + ``.txt`` + ``.json``) into tar shards of SAMPLES_PER_TAR."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    y, x = np.mgrid[0:side, 0:side] / side
    for first in range(0, n, SAMPLES_PER_TAR):
        with tarfile.open(folder / f"{first // SAMPLES_PER_TAR:05d}.tar.tmp", "w") as archive:
            for index in range(first, min(n, first + SAMPLES_PER_TAR)):
                # smooth colour gradients plus noise: JPEG sizes close to photos' at this size
                colour = rng.random((3, 3))
                pixels = np.stack([colour[c, 0] * x + colour[c, 1] * y + colour[c, 2] for c in range(3)], axis=-1)
                pixels = np.clip(pixels / 2.5 * 255 + rng.normal(0, 12, pixels.shape), 0, 255).astype(np.uint8)
                buffer = io.BytesIO()
                Image.fromarray(pixels).save(buffer, format="JPEG", quality=90)
                key = f"{index:09d}"
                members = {
                    f"{key}.jpg": buffer.getvalue(),
                    f"{key}.txt": f"a photo of a nurse at work, number {index}".encode(),
                    f"{key}.json": json.dumps({"key": key, "url": f"http://example.invalid/{key}.jpg"}).encode(),
                }
                for name, data in members.items():
                    info = tarfile.TarInfo(name)
                    info.size = len(data)
                    archive.addfile(info, io.BytesIO(data))
        path = folder / f"{first // SAMPLES_PER_TAR:05d}.tar.tmp"
        path.rename(path.with_suffix(""))


def child(mode: str, corpus: str, image_size: int, shard_size: int) -> None:
    """Ingest ``corpus`` once and print the peaks as JSON (runs in a fresh process)."""
    import tracemalloc

    from biasloop.data.corpus import (
        CorpusConfig,
        ingest,
        ingest_corpus,
        iter_webdataset,
        write_corpus,
    )

    config = CorpusConfig(source="webdataset", path=corpus, image_size=image_size, shard_size=shard_size)
    with tempfile.TemporaryDirectory() as tmp:
        rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        tracemalloc.start()
        start = time.perf_counter()
        if mode == "streaming":
            n = ingest_corpus(iter_webdataset(corpus), config, Path(tmp) / "corpus").n_kept
        else:
            samples, images = ingest(iter_webdataset(corpus), config)
            n = len(write_corpus(samples, images, Path(tmp) / "corpus", shard_size))
        seconds = time.perf_counter() - start
        _, traced_peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        rss_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(
        json.dumps(
            {
                "n": n,
                "tracemalloc_peak_mb": round(traced_peak / 2**20, 2),
                "rss_peak_mb": round(rss_after / 1024, 1),
                "rss_growth_mb": round((rss_after - rss_before) / 1024, 1),
                "seconds_traced": round(seconds, 2),
            }
        )
    )


def measure(mode: str, corpus: Path, image_size: int, shard_size: int) -> dict:
    command = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--child",
        mode,
        str(corpus),
        "--image-size",
        str(image_size),
        "--shard-size",
        str(shard_size),
    ]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}  # this checkout's biasloop
    done = subprocess.run(command, check=True, capture_output=True, text=True, cwd=ROOT, env=env)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--shard-size", type=int, default=512, help="images per output .npy shard (default: %(default)s)"
    )
    parser.add_argument(
        "--image-size", type=int, default=64, help="ingested image side in pixels (default: %(default)s)"
    )
    parser.add_argument(
        "--source-side", type=int, default=128, help="side of the JPEGs in the tars (default: %(default)s)"
    )
    parser.add_argument(
        "--multiples", type=int, nargs="+", default=[1, 4, 16], help="corpus sizes in shards (default: %(default)s)"
    )
    parser.add_argument(
        "--out", default=str(HERE / "results" / "ingestion.json"), help="result JSON (default: %(default)s)"
    )
    parser.add_argument("--child", nargs=2, metavar=("MODE", "CORPUS"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(args.child[0], args.child[1], args.image_size, args.shard_size)
        return 0

    rows = []
    for multiple in sorted(args.multiples):
        n = multiple * args.shard_size
        corpus = HERE / ".data" / f"ingestion_{n}_{args.source_side}px"
        if not corpus.exists():
            print(f"building corpus of {n} samples in {corpus} ...", flush=True)
            make_corpus(corpus.with_name(corpus.name + ".tmp"), n, args.source_side)
            corpus.with_name(corpus.name + ".tmp").rename(corpus)
        row = {
            "multiple_of_shard": multiple,
            "n_samples": n,
            "corpus_mb": round(sum(p.stat().st_size for p in corpus.glob("*.tar")) / 2**20, 1),
        }
        for mode in ("streaming", "in_memory"):
            result = measure(mode, corpus, args.image_size, args.shard_size)
            assert result["n"] == n, result
            row[mode] = {k: v for k, v in result.items() if k != "n"}
            print(
                f"{n:>7} samples  {mode:<10} tracemalloc peak {result['tracemalloc_peak_mb']:>8.1f} MB  "
                f"ru_maxrss growth {result['rss_growth_mb']:>8.1f} MB",
                flush=True,
            )
        rows.append(row)

    first, last = rows[0], rows[-1]
    ratio = last["streaming"]["tracemalloc_peak_mb"] / first["streaming"]["tracemalloc_peak_mb"]
    baseline_ratio = last["in_memory"]["tracemalloc_peak_mb"] / first["in_memory"]["tracemalloc_peak_mb"]
    result = {
        "benchmark": "corpus ingestion: peak memory against corpus size, streaming vs whole corpus in memory",
        "shard_size": args.shard_size,
        "image_size": args.image_size,
        "shard_image_mb": round(args.shard_size * args.image_size**2 * 3 / 2**20, 2),
        "source_jpeg_side": args.source_side,
        "target": f"streaming tracemalloc peak at {last['multiple_of_shard']}x a shard <= {TARGET_RATIO}x the peak at "
        f"{first['multiple_of_shard']}x",
        "streaming_peak_ratio": round(ratio, 3),
        "in_memory_peak_ratio": round(baseline_ratio, 3),
        "passed": ratio <= TARGET_RATIO,
        "by_corpus_size": rows,
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
        },
        "command": "python benchmarks/ingestion.py " + " ".join(argv if argv is not None else sys.argv[1:]),
    }
    from biasloop.core.io import write_json

    write_json(args.out, result)
    print(
        f"streaming peak ratio {ratio:.2f} (target <= {TARGET_RATIO}); in-memory {baseline_ratio:.2f}; wrote {args.out}"
    )
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
