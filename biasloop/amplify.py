"""``biasloop amplify TRAIN.csv GEN.csv``: the amplification table from two per-occupation count files.

Results produced elsewhere (another classifier, another model) are analysed with the same code as the
pipeline: :func:`biasloop.metrics.amplification_table`.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import polars as pl

DESCRIPTION = """\
Compute bias amplification from two per-occupation count files.

Each file is a CSV with a header and one row per occupation:
    occupation,n_female,n_male[,n_abstain]
    nurse,180,20,4
counts of images classified as female / male (and abstained) for that occupation. TRAIN.csv describes
training images, GEN.csv generated images; occupations are matched by name.

Metrics (shares F = n_female / (n_female + n_male), fractions; the table shows percentage points):
  amplification_abs   mean over occupations of |F_gen - F_train|
  amplification_dir   mean of |F_gen - 1/2| - |F_train - 1/2|: > 0 when generated images are further from parity
  shift_to_majority   mean of sign(F_train - 1/2) * (F_gen - F_train): > 0 when they lean to the training majority
  bias_amp            BiasAmp (Zhao et al. 2017); equals shift_to_majority for two groups
  mad_train, mad_gen  mean |F - 1/2| of each side (DALL-Eval's gender MAD)
  pearson             correlation of F_train and F_gen across occupations
Every aggregate has a 95% bootstrap interval (images resampled within occupations).
"""


class CountFileError(ValueError):
    """A bad count file; the message names the file, the line and the problem."""


def read_count_file(path: str | Path) -> pl.DataFrame:
    """Read and validate a count CSV into ``occupation, n_female, n_male, n_abstain``.

    Raises:
        CountFileError: missing file, empty file, missing column, a count that is not a
            non-negative integer, or a duplicate occupation, naming the file and line.
    """
    path = Path(path)
    if not path.exists():
        raise CountFileError(f"{path}: file not found")
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        if not reader.fieldnames:
            raise CountFileError(f"{path}: empty file (expected a header: occupation,n_female,n_male[,n_abstain])")
        columns = [c.strip() for c in reader.fieldnames]
        missing = [c for c in ("occupation", "n_female", "n_male") if c not in columns]
        if missing:
            raise CountFileError(f"{path}, line 1: missing column(s) {', '.join(missing)} (header: {','.join(columns)})")
        rows: dict[str, list] = {"occupation": [], "n_female": [], "n_male": [], "n_abstain": []}
        seen: dict[str, int] = {}
        for line, raw in enumerate(reader, start=2):
            row = {k.strip(): (v or "").strip() for k, v in raw.items() if k is not None}
            occupation = row.get("occupation", "")
            if not occupation:
                raise CountFileError(f"{path}, line {line}: empty occupation")
            if occupation in seen:
                raise CountFileError(f"{path}, line {line}: duplicate occupation {occupation!r} (first on line {seen[occupation]})")
            seen[occupation] = line
            rows["occupation"].append(occupation)
            for column in ("n_female", "n_male", "n_abstain"):
                text = row.get(column, "") if column in columns else "0"
                if column == "n_abstain" and text == "":
                    text = "0"
                if not text.isdigit():
                    raise CountFileError(f"{path}, line {line}: {column} must be a non-negative integer, found {text!r}")
                rows[column].append(int(text))
    if not rows["occupation"]:
        raise CountFileError(f"{path}: no occupation rows")
    return pl.DataFrame(rows, schema={"occupation": pl.String, "n_female": pl.Int64, "n_male": pl.Int64, "n_abstain": pl.Int64})


def _pp(value: float | None) -> str:
    return "   n/a" if value is None else f"{100 * value:6.1f}"


def format_table(result: dict) -> str:
    """A readable table: per-occupation shares, then aggregates with intervals (percentage points)."""
    lines = [f"{'occupation':<22}{'train %F':>10}{'gen %F':>10}{'diff pp':>10}"]
    for row in result["per_occupation"]:
        lines.append(f"{row['occupation']:<22}{_pp(row['share_train']):>10}{_pp(row['share_gen']):>10}{_pp(row['difference']):>10}")
    lines.append("")
    lines.append(f"{'aggregate':<22}{'value pp':>10}   95% interval")
    for name in ("amplification_abs", "amplification_dir", "shift_to_majority", "bias_amp", "mad_train", "mad_gen"):
        lo, hi = result[f"{name}_ci"]
        lines.append(f"{name:<22}{_pp(result[name]):>10}   [{_pp(lo).strip()}, {_pp(hi).strip()}]")
    pearson = result["pearson"]
    lines.append(f"{'pearson':<22}{('n/a' if pearson is None else f'{pearson:.3f}'):>10}")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="biasloop amplify", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("train", help="count CSV of training images")
    parser.add_argument("gen", help="count CSV of generated images")
    parser.add_argument("--json", action="store_true", help="print the full table as JSON (fractions, not percent)")
    parser.add_argument("--n-boot", type=int, default=1000, help="bootstrap replicates (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="bootstrap seed (default: %(default)s)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command; returns the exit status (2 on bad input)."""
    from biasloop.metrics import amplification_table

    args = build_parser().parse_args(argv)
    try:
        train, gen = read_count_file(args.train), read_count_file(args.gen)
    except CountFileError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    result = amplification_table(train, gen, n_boot=args.n_boot, seed=args.seed)
    unmatched = result["unmatched"]
    if unmatched["train_only"] or unmatched["gen_only"]:
        print(f"warning: occupations only in {args.train}: {unmatched['train_only']}; "
              f"only in {args.gen}: {unmatched['gen_only']} (left out)", file=sys.stderr)
    if result["n_occupations"] == 0:
        print("error: no occupation has confident images on both sides", file=sys.stderr)
        return 2
    print(json.dumps(result, indent=2) if args.json else format_table(result))
    return 0
