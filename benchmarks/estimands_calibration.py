"""Coverage of the estimands' intervals on simulated count tables (``docs/estimands.md`` shows the results).

Hundreds of tables per setting are drawn from known shares and pushed through the library functions the
amplification table uses (vectorised over tables): :func:`biasloop.metrics.estimands.gap_from_counts` for
the gap, :func:`biasloop.metrics.estimands.shift_interval` for the shift, and, for the shift's p-value and
its percentile bootstrap interval (the one paired and corrected tables report),
:func:`biasloop.metrics.amplification.summarize_aggregates` on
:func:`~biasloop.metrics.amplification.bootstrap_shares` / :func:`~biasloop.metrics.amplification.null_shares`,
for paired data :func:`biasloop.metrics.paired.bootstrap_pairs` /
:func:`~biasloop.metrics.paired.swap_null_pairs`. The noise-free truths are ``gap = mean_o |d(o)|`` and
``shift = mean_o sign(p_train(o) - 1/2) d(o)`` at the true shares.

Settings (unpaired): per-occupation true difference ``d(o) = ratio * sigma(o)`` with ``sigma(o)`` the sd of
the difference of the two observed shares (confident counts ``m = n (1 - abstain)``), ``ratio`` in
{0, 0.5, 1, 2, 4}, pointing towards the training majority where the generated share stays in [0, 1] and
towards parity elsewhere; training shares ``spread`` (0.005 to 0.995) or ``extreme`` (five at 0.005, five
at 0.995); 335 training and 80 or 400 generated images per occupation, 2% abstentions. ``headline``: the
issue's reviewer setting (generated shares pushed 17 pp towards the majority, clipped to [0.005, 0.995],
343 / 120 images). ``parity``: six training shares within 4 pp of 1/2 and four further out, generated
shares 15 pp towards each majority (335 / 80 images). Paired: 80 pairs per occupation whose two labels
correlate with phi = 0.8, under the null and with a 5 pp shift towards the majority.

The tests in ``tests/test_calibration.py`` call the same functions with fewer tables.

Usage::

    OMP_NUM_THREADS=1 python benchmarks/estimands_calibration.py [--tables 400] [--n-boot 400] \\
        [--out benchmarks/results/estimands_calibration.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from biasloop.metrics.amplification import bootstrap_shares, null_shares, shift_to_majority, summarize_aggregates
from biasloop.metrics.estimands import gap_from_counts, shift_bootstrap_interval, shift_interval, unclear_majority
from biasloop.metrics.paired import bootstrap_pairs, pair_correlation, side_counts, swap_null_pairs

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARE_SETS = {
    "spread": np.array([0.005, 0.06, 0.16, 0.25, 0.36, 0.64, 0.72, 0.79, 0.89, 0.995]),
    "extreme": np.array([0.005] * 5 + [0.995] * 5),
}
# The default world's training shares (the headline and paired settings).
DEFAULT_SHARES = np.array([0.06, 0.16, 0.25, 0.36, 0.42, 0.44, 0.64, 0.72, 0.79, 0.89])
# Training shares near parity, where the sign of the shift's majority is uncertain.
PARITY_SHARES = np.array([0.46, 0.48, 0.49, 0.51, 0.52, 0.54, 0.2, 0.3, 0.7, 0.8])
RATIOS = (0.0, 0.5, 1.0, 2.0, 4.0)
N_GENS = (80, 400)
N_TRAIN, ABSTAIN = 335, 0.02
N_PAIRS, PHI = 80, 0.8


def _sigma(p_train: np.ndarray, p_gen: np.ndarray, m_train: float, m_gen: float) -> np.ndarray:
    return np.sqrt(p_train * (1 - p_train) / m_train + p_gen * (1 - p_gen) / m_gen)


def generated_shares(p_train: np.ndarray, ratio: float, n_train: int, n_gen: int) -> np.ndarray:
    """Shares with ``|p_gen - p_train| = ratio * sigma(p_train, p_gen)`` per occupation (bisection),
    towards the training majority where that stays in [0, 1], else towards parity."""
    m_train, m_gen = n_train * (1 - ABSTAIN), n_gen * (1 - ABSTAIN)
    out = np.empty_like(p_train)
    for i, p in enumerate(p_train):
        majority = 1.0 if p > 0.5 else -1.0
        for direction in (majority, -majority):
            room = (1 - p) if direction > 0 else p
            gap = lambda x: x - ratio * _sigma(p, p + direction * x, m_train, m_gen)  # noqa: E731, B023 (used in this iteration)
            if gap(room) >= 0:
                lo, hi = 0.0, room
                for _ in range(60):
                    mid = (lo + hi) / 2
                    lo, hi = (mid, hi) if gap(mid) < 0 else (lo, mid)
                out[i] = p + direction * hi
                break
        else:
            raise ValueError(f"no share at {ratio} sigma from {p}")
    return out


def draw_counts(rng: np.random.Generator, shares: np.ndarray, n: int, n_tables: int) -> np.ndarray:
    """``(n_tables, occupations, 3)`` female/male/abstain counts with ``ABSTAIN`` abstentions."""
    probabilities = np.stack([shares * (1 - ABSTAIN), (1 - shares) * (1 - ABSTAIN), np.full_like(shares, ABSTAIN)], -1)
    return rng.multinomial(n, probabilities, size=(n_tables, len(shares)))


def draw_pair_cells(
    rng: np.random.Generator, p_train: np.ndarray, p_gen: np.ndarray, phi: float, n: int, n_tables: int
) -> np.ndarray:
    """``(n_tables, occupations, 3, 3)`` pair counts: the two confident labels correlate with ``phi``,
    each side abstains independently with probability ``ABSTAIN``."""
    both_female = p_train * p_gen + phi * np.sqrt(p_train * (1 - p_train) * p_gen * (1 - p_gen))
    both_female = np.clip(both_female, np.maximum(0, p_train + p_gen - 1), np.minimum(p_train, p_gen))
    joint = np.stack(
        [
            np.stack([both_female, p_train - both_female], -1),
            np.stack([p_gen - both_female, 1 - p_train - p_gen + both_female], -1),
        ],
        -2,
    )  # (O, 2, 2)
    keep, drop = 1 - ABSTAIN, ABSTAIN
    cells = np.zeros((len(p_train), 3, 3))
    cells[:, :2, :2] = joint * keep**2
    cells[:, :2, 2] = joint.sum(-1) * keep * drop
    cells[:, 2, :2] = joint.sum(-2) * drop * keep
    cells[:, 2, 2] = drop**2
    flat = rng.multinomial(n, cells.reshape(len(p_train), 9), size=(n_tables, len(p_train)))
    return flat.reshape(n_tables, len(p_train), 3, 3)


def _truths(p_train: np.ndarray, p_gen: np.ndarray) -> tuple[float, float]:
    return float(np.mean(np.abs(p_gen - p_train))), float(shift_to_majority(p_train, p_gen))


def _covers(lo: np.ndarray, hi: np.ndarray, truth: float) -> float:
    return float(np.mean((lo <= truth + 1e-12) & (truth - 1e-12 <= hi)))


def evaluate(
    train: np.ndarray,
    gen: np.ndarray,
    boot: tuple,
    null: tuple,
    truth_gap: float,
    truth_shift: float,
    phi: np.ndarray | None = None,
) -> dict[str, Any]:
    """Coverage, bias and width of the gap and shift over a batch of simulated tables."""
    shares = [np.asarray(c[..., 0] / (c[..., 0] + c[..., 1]), float) for c in (train, gen)]
    stats = summarize_aggregates(shares[0], shares[1], boot[0], boot[1], null[0], null[1])
    gap = gap_from_counts(train, gen, phi=phi)
    wald = shift_interval(train, gen)
    # the interval the table reports: the adjusted Wald one for independent sides, the pair bootstrap's
    # percentile interval with fixed majorities for pairs
    if phi is None:
        shift = wald
    else:
        lo, hi = shift_bootstrap_interval(shares[0], shares[1], boot[0], boot[1], unclear_majority(train))
        shift = {"estimate": stats["shift_to_majority"], "lo": lo, "hi": hi}
    return {
        "truth_gap": truth_gap,
        "truth_shift": truth_shift,
        "gap_coverage": _covers(gap["lo"], gap["hi"], truth_gap),
        "gap_bias": float(np.mean(gap["estimate"]) - truth_gap),
        "a_abs_raw_bias": float(np.mean(gap["raw"]) - truth_gap),
        "gap_width": float(np.mean(gap["hi"] - gap["lo"])),
        "gap_estimate_inside": float(np.mean((gap["lo"] <= gap["estimate"]) & (gap["estimate"] <= gap["hi"]))),
        "shift_coverage": _covers(shift["lo"], shift["hi"], truth_shift),
        "shift_bias": float(np.mean(shift["estimate"]) - truth_shift),
        "shift_width": float(np.mean(shift["hi"] - shift["lo"])),
        "shift_bootstrap_coverage": _covers(stats["shift_to_majority_lo"], stats["shift_to_majority_hi"], truth_shift),
        "shift_wald_coverage": _covers(wald["lo"], wald["hi"], truth_shift),
        "shift_rejects_at_5pct": float(np.mean(stats["p_value_shift"] < 0.05)),
        "excess_abs_coverage_of_gap": _covers(stats["excess_abs_lo"], stats["excess_abs_hi"], truth_gap),
    }


def unpaired_setting(
    seed: int, p_train: np.ndarray, p_gen: np.ndarray, n_train: int, n_gen: int, n_tables: int, n_boot: int
) -> dict[str, Any]:
    """One unpaired setting: draw ``n_tables`` pairs of count tables and evaluate the estimands."""
    rng = np.random.default_rng(seed)
    train, gen = draw_counts(rng, p_train, n_train, n_tables), draw_counts(rng, p_gen, n_gen, n_tables)
    boot = bootstrap_shares(train, n_boot, rng), bootstrap_shares(gen, n_boot, rng)
    null = null_shares(train, gen, n_boot, rng)
    return evaluate(train, gen, boot, null, *_truths(p_train, p_gen))


def paired_setting(
    seed: int,
    p_train: np.ndarray,
    p_gen: np.ndarray,
    n_tables: int,
    n_boot: int,
    phi: float = PHI,
    n_pairs: int = N_PAIRS,
) -> dict[str, Any]:
    """One paired setting: pair tables with correlated labels, pair bootstrap and swap null."""
    rng = np.random.default_rng(seed)
    cells = draw_pair_cells(rng, p_train, p_gen, phi, n_pairs, n_tables)
    boot, null = bootstrap_pairs(cells, n_boot, rng), swap_null_pairs(cells, n_boot, rng)
    train, gen = side_counts(cells)
    return evaluate(train, gen, boot, null, *_truths(p_train, p_gen), phi=pair_correlation(cells))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tables", type=int, default=400, help="simulated tables per setting (default: %(default)s)")
    parser.add_argument("--n-boot", type=int, default=400, help="bootstrap replicates (default: %(default)s)")
    parser.add_argument(
        "--out",
        type=Path,
        default=REPO_ROOT / "benchmarks/results/estimands_calibration.json",
        help="where to write the results (default: %(default)s)",
    )
    args = parser.parse_args(argv)
    started = time.perf_counter()
    rows = []
    seed = 0
    for share_set, p_train in SHARE_SETS.items():
        for n_gen in N_GENS:
            for ratio in RATIOS:
                seed += 1
                p_gen = generated_shares(p_train, ratio, N_TRAIN, n_gen)
                row = unpaired_setting(seed, p_train, p_gen, N_TRAIN, n_gen, args.tables, args.n_boot)
                rows.append({"setting": f"{share_set}, n_gen {n_gen}, d/sigma {ratio:g}", "paired": False, **row})
                print(
                    f"{rows[-1]['setting']:<32} gap {row['gap_coverage']:.3f} shift {row['shift_coverage']:.3f}",
                    file=sys.stderr,
                )
    headline_gen = np.clip(DEFAULT_SHARES + np.sign(DEFAULT_SHARES - 0.5) * 0.17, 0.005, 0.995)
    rows.append(
        {
            "setting": "headline, 343 / 120 images",
            "paired": False,
            **unpaired_setting(100, DEFAULT_SHARES, headline_gen, 343, 120, args.tables, args.n_boot),
        }
    )
    rows.append(
        {
            "setting": "parity, 335 / 80 images",
            "paired": False,
            **unpaired_setting(
                101,
                PARITY_SHARES,
                PARITY_SHARES + np.sign(PARITY_SHARES - 0.5) * 0.15,
                N_TRAIN,
                80,
                args.tables,
                args.n_boot,
            ),
        }
    )
    shifted = np.clip(DEFAULT_SHARES + np.sign(DEFAULT_SHARES - 0.5) * 0.05, 0.0, 1.0)
    for name, p_gen in (("paired null, phi 0.8", DEFAULT_SHARES), ("paired 5 pp shift, phi 0.8", shifted)):
        seed += 1
        rows.append(
            {"setting": name, "paired": True, **paired_setting(seed, DEFAULT_SHARES, p_gen, args.tables, args.n_boot)}
        )
    result = {
        "command": "OMP_NUM_THREADS=1 python benchmarks/estimands_calibration.py"
        + ("" if (args.tables, args.n_boot) == (400, 400) else f" --tables {args.tables} --n-boot {args.n_boot}"),
        "tables_per_setting": args.tables,
        "n_boot": args.n_boot,
        "n_train": N_TRAIN,
        "abstain": ABSTAIN,
        "seconds": round(time.perf_counter() - started, 1),
        "settings": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out} in {result['seconds']} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
