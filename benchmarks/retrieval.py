"""Retrieval speed: the retrieve step (one streaming polars scan) against a plain pandas loop.

Both sides do the same work on the same 5-million-caption parquet, from reading the file to a table of
(occupation, caption, indicator):

- **biasloop**: ``biasloop.data.retrieval.retrieve_lazy(...).collect(engine="streaming")``, exactly what
  the ``retrieve`` stage runs (it also extracts the matched indicator terms, which the baseline does not);
- **pandas baseline**: ``pd.read_parquet``, then for each occupation one ``Series.str.contains`` with
  that occupation's whole-word pattern (same forms, case-insensitive), and on the matching rows two
  ``str.contains`` with the male and female word lists to label them.

The results are checked to be identical (counts per occupation and label) before timing is trusted.
The corpora are glyph-world style (the world's caption banks, distractors and near misses, with a random
tail so that captions are distinct, about 60 characters), one per share of captions that mention an
occupation: 0.05 (the headline: a web corpus such as LAION, which the streaming scan exists for, has far
fewer, so this is generous), 0.5, and 0.93 (the glyph world's density). The pandas loop's cost hardly
depends on the share; biasloop's grows with it (indicator tagging and the per-match steps only run on
matching captions), so the ratio falls as the share rises: all three are reported. Each corpus is
generated once and cached under ``benchmarks/.data/`` (git-ignored).

Target: biasloop at least 10x the baseline's captions per second at the headline share. Exits 1 below.

Usage (repository root)::

    python benchmarks/retrieval.py                      # writes benchmarks/results/retrieval.json
    python benchmarks/retrieval.py --rows 1000000 --repeats 1 --occupation-shares 0.5 --out /tmp/retrieval.json
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import polars as pl

from biasloop import world
from biasloop.core.io import write_json
from biasloop.data.indicators import FEMALE_REGEX, MALE_REGEX
from biasloop.data.retrieval import OccupationMatcher, retrieve_lazy

HERE = Path(__file__).resolve().parent
OCCUPATIONS = (
    "carpenter",
    "engineer",
    "chef",
    "lawyer",
    "scientist",
    "salesperson",
    "baker",
    "teacher",
    "librarian",
    "nurse",
)
PLURALS = {"salesperson": "salespeople"}
TAILS = ("stock photo", "high resolution image", "royalty free", "hd wallpaper", "photo by staff", "editorial use only")
TARGET = 10.0


def make_corpus(path: Path, rows: int, occupation_share: float, seed: int = 0) -> None:
    """Write a glyph-world-style caption parquet of ``rows`` distinct captions."""
    rng = np.random.default_rng(seed)
    banks = []
    for occupation in OCCUPATIONS:
        fill = {"a": world.article(occupation), "o": occupation, "os": world.plural(occupation)}
        templates = [*world.NEUTRAL_SINGULAR, *world.NEUTRAL_PLURAL]
        for gender in world.GENDERS:
            templates += [*world.INDICATOR_SINGULAR[gender], *world.INDICATOR_PLURAL[gender]]
        banks += [t.format(**fill) for t in templates]
    others = [*world.DISTRACTORS, *(c for o in OCCUPATIONS for c in world.NEAR_MISSES.get(o, ()))]
    mentions = rng.random(rows) < occupation_share
    base = np.where(
        mentions,
        np.array(banks, dtype=object)[rng.integers(len(banks), size=rows)],
        np.array(others, dtype=object)[rng.integers(len(others), size=rows)],
    )
    frame = pl.DataFrame(
        {
            "base": base.tolist(),
            "tail": np.array(TAILS, dtype=object)[rng.integers(len(TAILS), size=rows)].tolist(),
            "number": rng.integers(0, 10**7, size=rows),
        }
    ).select(
        id=pl.format("b{}", pl.int_range(pl.len())),
        caption=pl.format("{}, {} {}", "base", "tail", "number"),
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    ignore = path.parent / ".gitignore"
    if not ignore.exists():
        ignore.write_text("# generated benchmark data\n*\n")
    tmp = path.with_suffix(".tmp")
    frame.write_parquet(tmp, row_group_size=256_000)
    os.replace(tmp, path)


def run_biasloop(path: Path) -> pl.DataFrame:
    return retrieve_lazy(path, OCCUPATIONS, PLURALS).collect(engine="streaming")


def run_pandas(path: Path):
    import pandas as pd

    frame = pd.read_parquet(path, columns=["id", "caption"])
    matcher = OccupationMatcher.build(OCCUPATIONS, PLURALS)
    male, female = MALE_REGEX.removeprefix("(?i)"), FEMALE_REGEX.removeprefix("(?i)")
    parts = []
    for occupation in OCCUPATIONS:
        hits = frame[
            frame["caption"].str.contains(matcher.pattern(occupation).removeprefix("(?i)"), case=False, regex=True)
        ]
        has_male = hits["caption"].str.contains(male, case=False, regex=True)
        has_female = hits["caption"].str.contains(female, case=False, regex=True)
        label = np.select([has_male & has_female, has_male, has_female], ["both", "male", "female"], "none")
        parts.append(pd.DataFrame({"occupation": occupation, "id": hits["id"], "indicator": label}))
    return pd.concat(parts, ignore_index=True)


def timed(function, *args, repeats: int) -> tuple[list[float], object]:
    seconds, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = function(*args)
        seconds.append(time.perf_counter() - start)
    return seconds, result


def machine() -> dict:
    import pandas as pd
    import pyarrow as pa

    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "load_average_1m": os.getloadavg()[0],
        "python": platform.python_version(),
        "polars": pl.__version__,
        "pandas": pd.__version__,
        "pyarrow": pa.__version__,
        "pandas_string_dtype": str(pd.Series(["x"]).dtype),
    }


def measure(path: Path, repeats: int) -> dict:
    """Median captions/second of both sides on one corpus, after checking they agree."""
    rows = pl.scan_parquet(path).select(pl.len()).collect().item()
    # interleave the two sides so that load from other processes on the machine hits both alike
    polars_seconds, pandas_seconds = [], []
    for repeat in range(repeats):
        seconds, ours = timed(run_biasloop, path, repeats=1)
        polars_seconds += seconds
        seconds, theirs = timed(run_pandas, path, repeats=1)
        pandas_seconds += seconds
        print(
            f"  repeat {repeat + 1}: biasloop {polars_seconds[-1]:.2f} s, pandas {pandas_seconds[-1]:.2f} s", flush=True
        )
    ours_counts = ours.group_by("occupation", "indicator").len().sort("occupation", "indicator")
    theirs_counts = (
        pl.from_pandas(theirs[["occupation", "indicator"]])
        .group_by("occupation", "indicator")
        .len()
        .sort("occupation", "indicator")
    )
    if not ours_counts.equals(theirs_counts):
        raise SystemExit(
            f"results differ between biasloop and the pandas baseline on {path}:\n{ours_counts}\n{theirs_counts}"
        )
    polars_rate = rows / statistics.median(polars_seconds)
    pandas_rate = rows / statistics.median(pandas_seconds)
    return {
        "rows": rows,
        "matches": len(ours),
        "biasloop_seconds": [round(x, 3) for x in polars_seconds],
        "pandas_seconds": [round(x, 3) for x in pandas_seconds],
        "biasloop_captions_per_second": round(polars_rate),
        "pandas_captions_per_second": round(pandas_rate),
        "ratio": round(polars_rate / pandas_rate, 2),
        "passed": polars_rate / pandas_rate >= TARGET,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=5_000_000, help="captions per corpus (default: %(default)s)")
    parser.add_argument(
        "--occupation-shares",
        default="0.05,0.5,0.93",
        help="comma-separated shares of captions mentioning an occupation, one corpus each; the first is the "
        "headline the target applies to (default: %(default)s)",
    )
    parser.add_argument(
        "--repeats", type=int, default=3, help="timed runs per side; the median is reported (default: %(default)s)"
    )
    parser.add_argument(
        "--out", default=str(HERE / "results" / "retrieval.json"), help="result JSON (default: %(default)s)"
    )
    args = parser.parse_args(argv)

    by_share = []
    for share in (float(x) for x in args.occupation_shares.split(",")):
        path = HERE / ".data" / f"captions-{args.rows}-{share:g}.parquet"
        if not path.exists():
            print(f"generating {path} ...", flush=True)
            make_corpus(path, args.rows, share)
        print(f"occupation share {share:g}:", flush=True)
        by_share.append({"occupation_share": share, **measure(path, args.repeats)})

    headline = by_share[0]
    result = {
        "benchmark": "retrieve step: captions per second, biasloop (polars streaming) vs pandas str.contains loop",
        "occupations": len(OCCUPATIONS),
        "repeats": args.repeats,
        "target_ratio": TARGET,
        "headline_occupation_share": headline["occupation_share"],
        "biasloop_captions_per_second": headline["biasloop_captions_per_second"],
        "pandas_captions_per_second": headline["pandas_captions_per_second"],
        "ratio": headline["ratio"],
        "passed": headline["passed"],
        "by_occupation_share": by_share,
        "machine": machine(),
    }
    write_json(args.out, result)
    for entry in by_share:
        print(
            f"share {entry['occupation_share']:g}: biasloop {entry['biasloop_captions_per_second']:,}/s, "
            f"pandas {entry['pandas_captions_per_second']:,}/s, ratio {entry['ratio']}x"
        )
    print(f"headline ratio {result['ratio']}x (target {TARGET:g}x): {'PASS' if result['passed'] else 'FAIL'}")
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
