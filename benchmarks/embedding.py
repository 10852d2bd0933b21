"""Embedding speed: the neighbours stage's cached encoder against calling sentence-transformers directly.

On the same distinct glyph-world-style captions, with the packaged all-MiniLM-L6-v2 (offline):

- **direct**: ``SentenceTransformer.encode(captions, batch_size, normalize_embeddings=True)``;
- **cached, cold**: ``CachedTextEncoder(...).encode(captions)`` on an empty cache (hashing, dedup,
  length sorting, model calls, writing the chunk files) — what a first ``neighbours`` run pays;
- **cached, warm**: the same call again on the filled cache, in a fresh encoder object (as a rerun or
  a new experiment would see it): its time and how many captions it sent to the model.

The two cold sides alternate, each repeat with a fresh cache folder; medians are reported.
Targets: cold cached throughput at least 0.9x direct, and 0 captions re-embedded when warm.
Exits 1 when a target is missed.

Usage (repository root)::

    python benchmarks/embedding.py            # writes benchmarks/results/embedding.json
    python benchmarks/embedding.py --captions 256 --repeats 1 --out /tmp/embedding.json
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from biasloop.core.io import write_json
from biasloop.data import world
from biasloop.data.embeddings import CachedTextEncoder, load_text_encoder
from biasloop.data.text import fill_template

HERE = Path(__file__).resolve().parent
TARGET_RATIO = 0.9


def make_captions(n: int, seed: int = 0) -> list[str]:
    """``n`` distinct captions from the glyph world's banks with a numbered tail."""
    rng = np.random.default_rng(seed)
    occupations = ("nurse", "engineer", "carpenter", "librarian", "chef", "teacher")
    templates = [*world.NEUTRAL_SINGULAR, *world.INDICATOR_SINGULAR["female"], *world.INDICATOR_SINGULAR["male"]]
    captions = []
    for i in range(n):
        occupation = occupations[rng.integers(len(occupations))]
        template = templates[rng.integers(len(templates))]
        captions.append(f"{fill_template(template, occupation=occupation)}, photo {i}")
    return captions


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--captions", type=int, default=4096, help="distinct captions to embed (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=64, help="model batch size (default: %(default)s)")
    parser.add_argument(
        "--repeats", type=int, default=3, help="timed runs per side; medians reported (default: %(default)s)"
    )
    parser.add_argument(
        "--out", default=str(HERE / "results" / "embedding.json"), help="result JSON (default: %(default)s)"
    )
    args = parser.parse_args(argv)

    import torch

    captions = make_captions(args.captions)
    encoder = load_text_encoder(None)  # packaged MiniLM, hub switched off
    model = encoder.model
    model.encode(captions[:64], batch_size=args.batch_size)  # warm-up: first-call allocations

    direct_seconds, cold_seconds = [], []
    with tempfile.TemporaryDirectory() as scratch:
        for repeat in range(args.repeats):
            start = time.perf_counter()
            direct = model.encode(
                captions, batch_size=args.batch_size, convert_to_numpy=True, normalize_embeddings=True
            )
            direct_seconds.append(time.perf_counter() - start)

            cache_dir = Path(scratch) / f"cold-{repeat}"
            start = time.perf_counter()
            cached = CachedTextEncoder(encoder, cache_dir).encode(captions, batch_size=args.batch_size)
            cold_seconds.append(time.perf_counter() - start)
            print(
                f"repeat {repeat + 1}: direct {direct_seconds[-1]:.2f} s, cached cold {cold_seconds[-1]:.2f} s",
                flush=True,
            )

        max_difference = float(np.abs(np.asarray(direct, dtype=np.float32) - cached).max())
        warm_seconds, warm_embedded = [], []
        for _ in range(args.repeats):
            rerun = CachedTextEncoder(encoder, cache_dir)  # a new process would start from the disk alone
            start = time.perf_counter()
            warm = rerun.encode(captions, batch_size=args.batch_size)
            warm_seconds.append(time.perf_counter() - start)
            warm_embedded.append(rerun.stats()["embedded"])
        assert np.array_equal(warm, cached)

    direct_rate = args.captions / statistics.median(direct_seconds)
    cold_rate = args.captions / statistics.median(cold_seconds)
    ratio = cold_rate / direct_rate
    passed = ratio >= TARGET_RATIO and max(warm_embedded) == 0
    result = {
        "benchmark": "neighbours embedding: CachedTextEncoder vs SentenceTransformer.encode (all-MiniLM-L6-v2)",
        "captions": args.captions,
        "batch_size": args.batch_size,
        "repeats": args.repeats,
        "direct_seconds": [round(x, 3) for x in direct_seconds],
        "cached_cold_seconds": [round(x, 3) for x in cold_seconds],
        "direct_captions_per_second": round(direct_rate, 1),
        "cached_cold_captions_per_second": round(cold_rate, 1),
        "cold_ratio": round(ratio, 3),
        "target_cold_ratio": TARGET_RATIO,
        "warm_seconds": round(statistics.median(warm_seconds), 4),
        "warm_captions_per_second": round(args.captions / statistics.median(warm_seconds)),
        "warm_re_embedded": max(warm_embedded),
        "target_warm_re_embedded": 0,
        "max_abs_difference_direct_vs_cached": max_difference,
        "passed": passed,
        "machine": {
            "platform": platform.platform(),
            "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "load_average_1m": os.getloadavg()[0],
            "python": platform.python_version(),
            "torch": torch.__version__,
            "device": "cpu",
        },
    }
    write_json(args.out, result)
    print(
        f"direct {direct_rate:.0f}/s, cached cold {cold_rate:.0f}/s (ratio {ratio:.2f}, target {TARGET_RATIO}), "
        f"warm {result['warm_seconds']} s with {result['warm_re_embedded']} re-embedded: {'PASS' if passed else 'FAIL'}"
    )
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
