"""``biasloop amplify`` on K-class count files (wide ``occupation,<class>...`` or long
``occupation,class,count``): :func:`biasloop.metrics.kclass.class_amplification_table`, printed in the
style of the binary table (percent and percentage points) or as JSON (fractions)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

import numpy as np

from biasloop.cli.class_count_files import ClassCounts, aligned_classes, read_class_count_file
from biasloop.cli.count_files import CountFileError
from biasloop.cli.estimand_lines import estimand_lines, percent


def format_class_estimands(result: dict[str, Any]) -> list[str]:
    """The shift and the gap (percentage points, 95% intervals, p-values), raw TV beside the gap."""
    estimands = result["estimands"]
    sampled = (
        f"{result['n_classes']} classes: {', '.join(result['classes'])}; {result['n_occupations']} occupations, "
        f"{result['n_boot']} null draws"
    )
    return estimand_lines(estimands, sampled, ("raw TV", estimands["tv_raw"]), "training majority class")


def format_class_table(result: dict[str, Any]) -> str:
    """The estimands, per-occupation class shares (percent, training/generated), training majority, TV
    (percentage points) and abstain rates, then directional bias amplification."""
    rows, classes = result["per_occupation"], result["classes"]
    name_width = max([len("occupation"), len("bias_amp A->T"), *(len(r["occupation"]) for r in rows)]) + 2
    headers = [f"{c} % (t/g)" for c in classes]
    widths = [max(len(h), 11) + 2 for h in headers]
    majority_width = max([len("majority (train)"), *(len("/".join(r["majority_train"])) for r in rows)]) + 2
    lines = [*format_class_estimands(result), ""]
    lines.append(
        f"{'occupation':<{name_width}}"
        + "".join(f"{h:>{w}}" for h, w in zip(headers, widths))
        + f"{'majority (train)':>{majority_width}}{'TV pp':>8}{'abstain % (train/gen)':>24}"
    )
    for row in rows:
        shares = [f"{percent(row['p_train'][c])}/{percent(row['p_gen'][c])}" for c in classes]
        abstain = f"{percent(row['abstain_rate_train'])}/{percent(row['abstain_rate_gen'])}"
        lines.append(
            f"{row['occupation']:<{name_width}}"
            + "".join(f"{s:>{w}}" for s, w in zip(shares, widths))
            + f"{'/'.join(row['majority_train']) or 'n/a':>{majority_width}}{percent(row['tv']):>8}{abstain:>24}"
        )
    if result.get("dropped"):
        lines.append(f"(left out of the aggregates, no confident image on a side: {', '.join(result['dropped'])})")
    lines += ["", f"{'aggregate':<{name_width}}{'pp':>8}   (no interval)"]
    bias_amp = result["bias_amp"] or {}
    for direction, meaning in (("A->T", "attribute -> occupation"), ("T->A", "occupation -> attribute")):
        value = bias_amp.get(direction)
        lines.append(
            f"{'bias_amp ' + direction:<{name_width}}{percent(value, True):>8}   "
            f"directional BiasAmp (Wang & Russakovsky 2021), {meaning}"
        )
    return "\n".join(lines)


def _rows(counts: ClassCounts, names: list[str], renamed: dict[str, str]) -> tuple[np.ndarray, np.ndarray]:
    """``counts``' rows for ``names`` (after renaming its occupations with ``renamed``)."""
    index = {renamed.get(name, name): i for i, name in enumerate(counts.occupations)}
    order = [index[name] for name in names]
    return counts.counts[order], counts.abstain[order]


def run_classes(args: argparse.Namespace, match_names: Any) -> int:
    """``biasloop amplify TRAIN.csv GEN.csv`` for two K-class count files; ``match_names(train_names,
    gen_names)`` matches occupations as the binary path does (None after printing an error)."""
    from biasloop.metrics.kclass import class_amplification_table

    try:
        train = read_class_count_file(args.train)
        gen = aligned_classes(train, read_class_count_file(args.gen))
    except CountFileError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    match = match_names(train.occupations, gen.occupations)
    if match is None:
        return 2
    names = sorted(match.matched)
    (train_counts, train_abstain), (gen_counts, gen_abstain) = _rows(train, names, {}), _rows(gen, names, match.renamed)
    result = class_amplification_table(
        names, train.classes, train_counts, gen_counts, train_abstain, gen_abstain, n_boot=args.n_boot, seed=args.seed
    )
    result["matched_spellings"] = match.renamed
    result["unmatched"] = {"train_only": list(match.only_ours), "gen_only": list(match.only_theirs)}
    if result["n_occupations"] == 0:
        print("error: no occupation in both files has a confident (non-abstained) image on both sides", file=sys.stderr)
        return 2
    print(json.dumps(result, indent=2) if args.json else format_class_table(result))
    return 0
