"""Coverage of the K x K confusion correction's intervals on simulated studies
(``docs/attributes.md`` shows the results).

Each study draws a labelled held-out set (``labelled`` images per true class, labels from a known
confusion C), an observed set (``observed`` images with true classes from a known distribution q, labels
from C), and calls :func:`biasloop.metrics.kclass.correction.corrected_distribution_interval`. Reported per
setting: the share of studies whose interval of each component covers q, the mean width, the point's bias.

Usage::

    OMP_NUM_THREADS=1 python benchmarks/kclass_correction.py [--studies 300] [--draws 1000] \\
        [--out benchmarks/results/kclass_correction.json]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from biasloop.metrics.kclass.correction import Confusion, corrected_distribution_interval

REPO_ROOT = Path(__file__).resolve().parents[1]
CONFUSION = np.array([[0.85, 0.1, 0.05], [0.1, 0.8, 0.1], [0.05, 0.15, 0.8]])  # rows true, columns label
SETTINGS = [  # (true distribution, labelled per class, observed)
    ((0.5, 0.3, 0.2), 200, 300),
    ((0.5, 0.3, 0.2), 50, 100),
    ((0.5, 0.3, 0.2), 500, 2000),
    ((0.7, 0.28, 0.02), 200, 300),
    ((0.0, 0.5, 0.5), 200, 300),
]


def run_setting(truth: tuple[float, ...], labelled: int, observed: int, studies: int, draws: int, seed: int) -> dict:
    """One setting's coverage, mean width and bias over ``studies`` simulated studies."""
    q = np.asarray(truth)
    rng = np.random.default_rng(seed)
    hits, widths, points = np.zeros(len(q)), np.zeros(len(q)), np.zeros(len(q))
    for _ in range(studies):
        counts = np.stack([rng.multinomial(labelled, row) for row in CONFUSION])
        true_counts = rng.multinomial(observed, q)
        labels = sum(rng.multinomial(n, row) for n, row in zip(true_counts, CONFUSION))
        confusion = Confusion(("a", "b", "c"), counts, np.zeros(len(q), dtype=np.int64))
        result = corrected_distribution_interval(labels, confusion, draws, rng)
        hits += (result["lower"] <= q) & (q <= result["upper"])
        widths += result["upper"] - result["lower"]
        points += result["point"]
    return {
        "truth": list(truth),
        "labelled_per_class": labelled,
        "observed": observed,
        "coverage": (hits / studies).round(3).tolist(),
        "mean_width": (widths / studies).round(3).tolist(),
        "bias": (points / studies - q).round(4).tolist(),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--studies", type=int, default=300, help="simulated studies per setting")
    parser.add_argument("--draws", type=int, default=1000, help="replicates per interval")
    parser.add_argument("--seed", type=int, default=0, help="seed of the simulation")
    parser.add_argument("--out", default=str(REPO_ROOT / "benchmarks/results/kclass_correction.json"), help="JSON")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    settings = [run_setting(*s, args.studies, args.draws, args.seed + i) for i, s in enumerate(SETTINGS)]
    result = {
        "command": "OMP_NUM_THREADS=1 python benchmarks/kclass_correction.py",
        "confusion": CONFUSION.tolist(),
        "studies_per_setting": args.studies,
        "draws": args.draws,
        "seconds": round(time.perf_counter() - start, 1),
        "settings": settings,
    }
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    for s in settings:
        print(s)


if __name__ == "__main__":
    main()
