"""``biasloop amplify TRAIN.csv GEN.csv``: the amplification table from two per-occupation count files.

Results produced elsewhere (another classifier, another model) are analysed with the same code as the
pipeline: :func:`biasloop.metrics.amplification.amplification_table`.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any

import polars as pl

from biasloop.cli.class_count_files import count_file_form
from biasloop.cli.count_files import CountFileError, read_count_file, read_pair_file
from biasloop.cli.estimand_lines import estimand_lines, percent

DESCRIPTION = """\
Bias amplification of generated images against training images, from two per-occupation count files
(a binary attribute, perceived gender, or one with K classes) or from one file of pairs.

Each count file is a CSV with a header and one row per occupation (other columns are ignored):
    occupation,n_female,n_male,n_abstain
    nurse,180,20,4
    engineer,15,185,0
n_female / n_male count the images a classifier labelled as showing a woman / a man, n_abstain
(optional, 0 when absent) those it abstained on. TRAIN.csv describes training images, GEN.csv generated
images. Occupations are matched by name, ignoring case and spacing, and a plural matches its singular
by the project's plural rule ("Nurses" = "nurse", "salespeople" = "salesperson"); the table uses the
names of TRAIN.csv. A name in one file only (a misspelling, say) is an error naming it (exit status 2),
unless --allow-unmatched leaves such occupations out with a warning. One file naming an occupation twice
("Nurse" and "nurse", or "nurse" and "nurses") is an error too.

--paired PAIRS.csv instead reads one row per (training image, generated image) pair, e.g. a training
caption and the image generated from it:
    occupation,train_label,gen_label
    nurse,female,female
    nurse,female,abstain
labels female, male or abstain. Pairs are the sampling units: the bootstrap resamples whole pairs within
each occupation and the null exchanges each pair's two labels with probability 1/2.

With p_train, p_gen the shares of women among confidently labelled images of an occupation and means
taken over occupations, the table leads with two estimands, each with a 95% interval and a p-value
(p < 0.001: no null draw was as extreme, the p-value is a Monte Carlo bound):
  shift               mean sign(p_train - 1/2) (p_gen - p_train): > 0 when generated images lean further
                      towards each occupation's training majority; the headline (linear, unbiased;
                      adjusted Wald interval, pair bootstrap for --paired; occupations whose training
                      majority is unclear count both ways; two-sided p-value against equal shares in
                      every occupation); for two groups BiasAmp (bias_amp, Zhao et al. 2017) equals
                      it, so it is shown once
  gap                 mean |p_gen - p_train| without sampling noise (the paper's A_abs): a debiased
                      estimate, and an interval from simultaneous per-occupation Newcombe intervals
                      (docs/estimands.md); raw A_abs, the plug-in value, is shown beside it
Then per-occupation shares and these aggregates:
  amplification_abs   raw A_abs, mean |F_gen - F_train| of the observed shares F
  amplification_dir   mean (|F_gen - 1/2| - |F_train - 1/2|): > 0 when generated images are further from
                      parity; it equals mad_gen - mad_train
  shift_to_majority   the shift above
  mad_train, mad_gen  mean |F - 1/2| of each side (DALL-Eval's gender MAD): distance from parity
  pearson             correlation of F_train and F_gen across occupations
Sampling noise alone makes amplification_abs and amplification_dir positive. As a diagnostic, the table
gives their noise floor (their mean when generated and training images share one share of women per
occupation), the excess over it with a 95% interval, and the p-value of that null (one-sided); the
excess is not an estimate of the amplification (read the gap). The other aggregates come with 95%
percentile bootstrap intervals (images, or pairs, resampled within occupations). --n-boot replicates
are drawn for all (--seed). The table shows shares in percent and differences in percentage points;
--json prints everything as fractions (keys estimands.shift, estimands.gap, estimands.a_abs_raw, and
the diagnostics noise_floor_abs, excess_abs, excess_abs_ci, p_value_abs, p_value_abs_is_bound, and the
same with _dir). Exit status 2 on a bad file, naming the file and line.

K classes (skin tone, age, gender with an "unclear" class): count files without n_female/n_male columns
are read as K-class count tables, in either of two forms (both files must name the same classes):
  wide: occupation and one column per class (every other column is a class, except an optional
        abstain or n_abstain), one row per occupation:
    occupation,light,medium,dark,abstain
    nurse,120,60,20,4
  long: occupation,class,count, one row per (occupation, class); a missing pair counts 0, the class
        abstain counts abstentions:
    occupation,class,count
    nurse,light,120
    nurse,medium,60
With p_train(o, k), p_gen(o, k) the class distributions among confident images and TV(o) =
1/2 sum_k |p_gen - p_train| their total-variation distance, the K-class table leads with
  shift   mean_o (p_gen - p_train) of the occupation's training majority class (classes tied for it
          averaged); adjusted Wald interval, occupations whose majority is unclear spanning their
          candidate classes; two-sided p-value against equal distributions in every occupation
  gap     mean_o TV(o) without sampling noise: a debiased estimate and an interval projected from
          per-class Newcombe intervals; raw TV, the plug-in, beside it (docs/attributes.md)
then per-occupation class shares (percent, training/generated), training majority, TV and abstain
rates, and directional bias amplification (Wang & Russakovsky 2021) in both directions. For two classes
the shift and the gap equal the binary table's. --json prints it all as fractions (keys estimands.shift,
estimands.gap, estimands.tv_raw, bias_amp, per_occupation).
"""


def _correlation(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def format_estimands(result: dict[str, Any]) -> list[str]:
    """The shift and the gap (percentage points, 95% intervals, p-values), raw A_abs beside the gap."""
    estimands = result["estimands"]
    sampled = f"{result['n_occupations']} occupations, {result['n_boot']} replicates"
    if result.get("paired"):
        sampled += f", {result['n_pairs']} pairs (paired)"
    return estimand_lines(estimands, sampled, ("raw A_abs", estimands["a_abs_raw"]), "training majority")


def format_table(result: dict[str, Any]) -> str:
    """The estimands (:func:`format_estimands`), per-occupation shares of women (percent) and their
    difference (percentage points), then ``amplification_abs``/``_dir`` with noise floor, excess and its
    95% interval, and p-value (diagnostics), then the other aggregates with 95% intervals (percentage
    points; Pearson's r as is), then the aliases."""
    from biasloop.metrics.estimands import format_p_value

    rows = result["per_occupation"]
    name_width = max([len("occupation"), len("shift_to_majority"), *(len(r["occupation"]) for r in rows)]) + 2
    lines = [*format_estimands(result), ""]
    lines += [f"{'occupation':<{name_width}}{'train %F':>10}{'gen %F':>10}{'diff pp':>10}{'abstain % (train/gen)':>24}"]
    for row in rows:
        abstain = f"{percent(row['abstain_rate_train'])}/{percent(row['abstain_rate_gen'])}"
        lines.append(
            f"{row['occupation']:<{name_width}}{percent(row['share_train']):>10}{percent(row['share_gen']):>10}"
            f"{percent(row['difference'], signed=True):>10}{abstain:>24}"
        )
    if result.get("dropped"):
        lines.append(f"(left out of the aggregates, no confident image on a side: {', '.join(result['dropped'])})")
    lines.append("")
    lines.append(
        f"{'diagnostic':<{name_width}}{'pp':>8}{'noise floor':>13}{'excess [95% interval]':>26}{'p':>10}"
        f"   (noise floor; the excess is not the amplification)"
    )
    for name, suffix in (("amplification_abs", "abs"), ("amplification_dir", "dir")):
        lo, hi = result[f"excess_{suffix}_ci"]
        excess = f"{percent(result[f'excess_{suffix}'], True)} [{percent(lo, True)}, {percent(hi, True)}]"
        p_value = format_p_value(result[f"p_value_{suffix}"], result[f"p_value_{suffix}_is_bound"], with_p=False)
        lines.append(
            f"{name:<{name_width}}{percent(result[name], name == 'amplification_dir'):>8}"
            f"{percent(result[f'noise_floor_{suffix}']):>13}{excess:>26}{p_value:>10}"
        )
    lines.append("")
    lines.append(f"{'aggregate':<{name_width}}{'pp':>8}   95% interval")
    for name in ("shift_to_majority", "mad_train", "mad_gen"):
        lo, hi = result[f"{name}_ci"]
        signed = name == "shift_to_majority"
        lines.append(
            f"{name:<{name_width}}{percent(result[name], signed):>8}   [{percent(lo, signed)}, {percent(hi, signed)}]"
        )
    r_lo, r_hi = result["pearson_ci"]
    lines.append(
        f"{'pearson (r)':<{name_width}}{_correlation(result['pearson']):>8}   [{_correlation(r_lo)}, {_correlation(r_hi)}]"
    )
    lines.append("")
    lines.extend(f"(not repeated: {alias} = {meaning})" for alias, meaning in result.get("aliases", {}).items())
    return "\n".join(lines)


def _replicates(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "amplify",
        help="amplification table from two per-occupation count CSVs",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("train", nargs="?", help="count CSV of training images (not with --paired)")
    parser.add_argument("gen", nargs="?", help="count CSV of generated images (not with --paired)")
    parser.add_argument(
        "--paired",
        metavar="PAIRS.csv",
        default=None,
        help="analyse pairs instead: a CSV with occupation,train_label,gen_label, one row per pair",
    )
    parser.add_argument(
        "--allow-unmatched",
        action="store_true",
        help="leave out occupations that are in one count file only (a warning), instead of failing",
    )
    parser.add_argument("--json", action="store_true", help="print the full table as JSON (fractions, not percent)")
    parser.add_argument("--n-boot", type=_replicates, default=1000, help="bootstrap replicates (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="bootstrap seed (default: %(default)s)")
    parser.set_defaults(run=run)


def main(argv: Sequence[str]) -> int:
    """``biasloop amplify ARGV``: the exit status (0 on success, 2 on bad arguments or a bad count file)."""
    from biasloop.cli import main as biasloop_main

    return biasloop_main(["amplify", *argv])


def _run_paired(args: argparse.Namespace) -> int:
    from biasloop.data.text import match_occupations
    from biasloop.metrics.paired import paired_amplification_table

    try:
        pairs = read_pair_file(args.paired)
    except CountFileError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:  # "Nurse" and "nurse" rows would be two occupations
        match_occupations(dict.fromkeys(pairs["occupation"].to_list()), [], sides=(args.paired, ""))
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    result = paired_amplification_table(pairs, n_boot=args.n_boot, seed=args.seed)
    if result["n_occupations"] == 0:
        print(
            f"error: no occupation in {args.paired} has a confident (non-abstained) label on both sides",
            file=sys.stderr,
        )
        return 2
    print(json.dumps(result, indent=2) if args.json else format_table(result))
    return 0


def _match_occupations(args: argparse.Namespace, train_names: list[str], gen_names: list[str]) -> Any:
    """Match the two files' occupations (:func:`biasloop.data.text.match_occupations`), printing the
    spellings matched and, with --allow-unmatched, those left out; None after printing an error."""
    from biasloop.data.text import match_occupations

    try:
        match = match_occupations(train_names, gen_names, sides=(args.train, args.gen))
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return None
    if match.renamed:
        print(
            "note: matched ignoring case and plurals: "
            + ", ".join(f"{theirs!r} ({args.gen}) = {ours!r}" for theirs, ours in match.renamed.items()),
            file=sys.stderr,
        )
    if not match.matched:
        print(f"error: no occupation is in both {args.train} and {args.gen}", file=sys.stderr)
        return None
    if match.only_ours or match.only_theirs:
        only = []
        for path, names, other, other_names in (
            (args.train, match.only_ours, args.gen, match.only_theirs),
            (args.gen, match.only_theirs, args.train, match.only_ours),
        ):
            if names:
                described = []
                for name in names:
                    guess = match.closest(name, other_names)
                    described.append(f"{name!r}" + (f" (did you mean {guess!r} of {other}?)" if guess else ""))
                only.append(f"only in {path}: {', '.join(described)}")
        if not args.allow_unmatched:
            print(
                f"error: occupations in one file only (names are matched ignoring case, spacing and plurals), "
                f"{'; '.join(only)}; --allow-unmatched leaves them out",
                file=sys.stderr,
            )
            return None
        print(f"warning: occupations left out (--allow-unmatched), {'; '.join(only)}", file=sys.stderr)
    return match


def run(args: argparse.Namespace) -> int:
    from biasloop.metrics.amplification import amplification_table

    if args.paired is not None:
        if args.train is not None or args.gen is not None:
            print("error: give either TRAIN.csv GEN.csv or --paired PAIRS.csv, not both", file=sys.stderr)
            return 2
        return _run_paired(args)
    if args.train is None or args.gen is None:
        print("error: give TRAIN.csv and GEN.csv (two count files), or --paired PAIRS.csv", file=sys.stderr)
        return 2
    forms = {path: count_file_form(path) for path in (args.train, args.gen)}
    if set(forms.values()) != {"binary"}:
        if "binary" in forms.values():
            described = ", ".join(
                f"{path} is {'binary (n_female, n_male)' if form == 'binary' else f'K-class ({form} form)'}"
                for path, form in forms.items()
            )
            print(f"error: {described}: give two binary or two K-class count files", file=sys.stderr)
            return 2
        from biasloop.cli.amplify_classes import run_classes

        return run_classes(args, lambda train_names, gen_names: _match_occupations(args, train_names, gen_names))
    try:
        train, gen = read_count_file(args.train), read_count_file(args.gen)
    except CountFileError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    match = _match_occupations(args, train["occupation"].to_list(), gen["occupation"].to_list())
    if match is None:
        return 2
    if match.renamed:  # the table shows TRAIN.csv's names
        gen = gen.with_columns(pl.col("occupation").replace(match.renamed))
    result = amplification_table(train, gen, n_boot=args.n_boot, seed=args.seed)
    result["matched_spellings"] = match.renamed  # a name of GEN.csv -> the TRAIN.csv name it was matched to
    if result["n_occupations"] == 0:
        reason = (
            "no occupation is in both files"
            if not result["per_occupation"]
            else ("no occupation in both files has a confident (non-abstained) image on both sides")
        )
        print(f"error: {reason}", file=sys.stderr)
        return 2
    print(json.dumps(result, indent=2) if args.json else format_table(result))
    return 0
