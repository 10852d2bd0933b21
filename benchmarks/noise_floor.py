"""How many generated images per occupation the default run needs: the noise floor against sample size.

``amplification_abs`` (A_abs) is positive under pure sampling noise. Its **noise floor** (the mean of
A_abs when generated and training images share one share of women per occupation, simulated with
:func:`biasloop.metrics.amplification.null_shares`) shrinks as more images are generated. This script
takes the per-occupation counts of a committed run (``metrics/paradox.json``: artifacts need not be
present), and for each pairing computes the floor as a function of

- ``n_gen``: generated images per occupation for the neutral-prompt pairings (= 2 neutral templates x
  ``generate.n_per_prompt``), training counts as committed;
- ``n_captions``: captions used as prompts per occupation (``generate.max_captions_per_occupation``);
  since that pairing is paired by caption id, its training side is the same ``n_captions`` images
  (capped at the keyword selection's size).

Both sides keep the committed run's abstain rates and pooled share of women per occupation. It then picks
the smallest ``n_per_prompt`` whose headline floor (``prompt_vs_keyword``) is at most a third of the
A_abs the committed run measured, and prices every choice in generation time: seconds per generated image
from the committed run's timing (about 22 s for 1,200 images per generate@N on the 2-core reference
machine, three generations in the default run; classification adds a little more, not counted).

Usage::

    python benchmarks/noise_floor.py [--paradox metrics/paradox.json] [--out benchmarks/results/noise_floor.json]
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from biasloop.metrics.amplification import amplification_abs, null_shares

SECONDS_PER_IMAGE = 22.0 / 1200  # generate@N on the reference machine (DESIGN.md, "Measured state")
GENERATIONS_IN_DEFAULT_RUN = 3
NEUTRAL_TEMPLATES = 2
N_GEN_GRID = (40, 80, 120, 160, 200, 240, 320, 400, 480)
N_CAPTIONS_GRID = (40, 80, 120, 160, 200, 240, 320)


def _counts(rows: list[dict], side: str) -> np.ndarray:
    return np.array([[r[f"n_female_{side}"], r[f"n_male_{side}"], r[f"n_abstain_{side}"]] for r in rows], dtype=float)


def _scaled(counts: np.ndarray, n: float) -> np.ndarray:
    """Counts with ``n`` images per occupation in the same female/male/abstain proportions (rounded)."""
    proportions = counts / counts.sum(axis=1, keepdims=True)
    return np.rint(proportions * n).astype(np.int64)


def noise_floor(
    train: np.ndarray,
    gen: np.ndarray,
    pooled_from: tuple[np.ndarray, np.ndarray],
    n_boot: int,
    rng: np.random.Generator,
) -> float:
    """Mean A_abs under the null for these counts, with the committed run's pooled shares."""
    # null_shares pools the two sides' counts; to keep the committed pooled share while changing the
    # sample sizes, replace the female/male split of both sides by that share.
    source_train, source_gen = pooled_from
    pooled = (source_train[:, 0] + source_gen[:, 0]) / (source_train[:, :2].sum(1) + source_gen[:, :2].sum(1))

    def with_share(counts: np.ndarray) -> np.ndarray:
        confident = counts[:, 0] + counts[:, 1]
        women = np.rint(pooled * confident).astype(np.int64)
        return np.stack([women, confident - women, counts[:, 2]], axis=1)

    null_train, null_gen = null_shares(with_share(train), with_share(gen), n_boot, rng)
    return float(np.nanmean(amplification_abs(null_train, null_gen)))


def analyse(paradox: dict[str, Any], n_boot: int = 2000, seed: int = 0) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    table = paradox["table"]
    measured = {name: entry["measured"]["amplification_abs"] for name, entry in table.items() if entry.get("measured")}
    out: dict[str, Any] = {"measured_amplification_abs": measured, "pairings": {}}
    for name, entry in table.items():
        rows = entry["measured"]["per_occupation"]
        train, gen = _counts(rows, "train"), _counts(rows, "gen")
        committed_n_gen = float(gen.sum(axis=1).mean())
        if name == "captions_vs_keyword":
            cap = int(train.sum(axis=1).min())
            curve = [
                {
                    "n_captions": n,
                    "noise_floor_abs": noise_floor(
                        _scaled(train, min(n, cap)), _scaled(gen, min(n, cap)), (train, gen), n_boot, rng
                    ),
                }
                for n in N_CAPTIONS_GRID
            ]
            out["pairings"][name] = {
                "varies": "n_captions (both sides, paired)",
                "committed_n": committed_n_gen,
                "keyword_images_per_occupation_min": cap,
                "curve": curve,
            }
        else:
            curve = [
                {
                    "n_gen": n,
                    "noise_floor_abs": noise_floor(train.astype(np.int64), _scaled(gen, n), (train, gen), n_boot, rng),
                }
                for n in N_GEN_GRID
            ]
            out["pairings"][name] = {
                "varies": "n_gen (generated side)",
                "committed_n": committed_n_gen,
                "training_images_per_occupation": float(train.sum(axis=1).mean()),
                "curve": curve,
            }
    headline = out["pairings"]["prompt_vs_keyword"]["curve"]
    target = measured["prompt_vs_keyword"] / 3
    chosen = next((row for row in headline if row["noise_floor_abs"] <= target), headline[-1])
    out["criterion"] = {
        "pairing": "prompt_vs_keyword",
        "noise_floor_at_most": target,
        "why": "a third of the A_abs the committed run measured for the headline pairing",
    }
    n_per_prompt = int(math.ceil(chosen["n_gen"] / NEUTRAL_TEMPLATES))
    captions = out["pairings"]["captions_vs_keyword"]["curve"]
    # The paired control is read against the other controls: its floor within 0.5 pp of the nearest-
    # neighbour pairings' floors at the chosen n_gen (paired, both of its sides have n_captions images).
    controls = max(
        next(r["noise_floor_abs"] for r in out["pairings"][name]["curve"] if r["n_gen"] == chosen["n_gen"])
        for name in ("prompt_vs_nn", "prompt_vs_nn_no_indicator")
    )
    captions_chosen = next((r for r in captions if r["noise_floor_abs"] <= controls + 0.005), captions[-1])
    n_captions = captions_chosen["n_captions"]
    out["criterion"]["captions"] = {
        "noise_floor_at_most": controls + 0.005,
        "why": "within 0.5 pp of the nearest-neighbour controls' floors at the chosen n_gen",
    }
    committed_images = 10 * (80 + 40)
    out["cost"] = [
        {
            "n_per_prompt": n // NEUTRAL_TEMPLATES,
            "max_captions_per_occupation": c,
            "images_per_generation": 10 * (n + c),
            "extra_generation_seconds_default_run": round(
                GENERATIONS_IN_DEFAULT_RUN * SECONDS_PER_IMAGE * (10 * (n + c) - committed_images), 1
            ),
        }
        for n, c in ((80, 40), (120, 40), (120, 80), (120, n_captions), (160, 120), (160, 160), (240, 160))
    ]
    out["chosen"] = {
        "n_per_prompt": n_per_prompt,
        "neutral_images_per_occupation": n_per_prompt * NEUTRAL_TEMPLATES,
        "headline_noise_floor_abs": chosen["noise_floor_abs"],
        "max_captions_per_occupation": n_captions,
        "captions_noise_floor_abs": captions_chosen["noise_floor_abs"],
        "images_per_generation": 10 * (n_per_prompt * NEUTRAL_TEMPLATES + n_captions),
        "extra_generation_seconds_default_run": round(
            GENERATIONS_IN_DEFAULT_RUN
            * SECONDS_PER_IMAGE
            * (10 * (n_per_prompt * NEUTRAL_TEMPLATES + n_captions) - committed_images),
            1,
        ),
    }
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--paradox", default="metrics/paradox.json", help="a committed paradox table (default: %(default)s)"
    )
    parser.add_argument(
        "--out", default="benchmarks/results/noise_floor.json", help="result JSON (default: %(default)s)"
    )
    parser.add_argument("--n-boot", type=int, default=2000, help="null replicates per point (default: %(default)s)")
    args = parser.parse_args(argv)
    result = analyse(json.loads(Path(args.paradox).read_text()), n_boot=args.n_boot)
    result["source"] = args.paradox
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    for name, pairing in result["pairings"].items():
        key = "n_captions" if name == "captions_vs_keyword" else "n_gen"
        curve = ", ".join(f"{row[key]}: {100 * row['noise_floor_abs']:.1f}" for row in pairing["curve"])
        print(f"{name:28s} floor (pp) by {key}: {curve}")
    print(f"criterion: {result['criterion']}")
    print(f"chosen: {result['chosen']}")
    for row in result["cost"]:
        print(row)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
