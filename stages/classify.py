"""classify@N: perceived gender and occupation of the images generation N made.

Inputs:   artifacts/instrument, artifacts/gen{N}/generate/manifest.parquet (+ image shards)
Outputs:  artifacts/gen{N}/classify/predictions.parquet: the manifest's columns (prompt_kind,
          occupation, prompt, seed, image_ref) plus p_female, label, p_occupation (the instrument's
          zero-shot probability of the asked occupation) and predicted_occupation
Params:   base, tracking, occupations, classify

Example:
    python -m stages.classify --generation 0 --instrument artifacts/instrument \\
        --manifest artifacts/gen0/generate/manifest.parquet --out artifacts/gen0/classify/predictions.parquet
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import polars as pl

from biasloop.core.config import to_dict
from biasloop.core.io import load_images, timed, write_parquet
from biasloop.core.runtime import resolve_device
from biasloop.core.stage import load_configs, make_parser, run_main
from biasloop.core.tracking import stage_run
from biasloop.metrics.amplification import label_from_p
from biasloop.models.instrument import ClassifyConfig, load_instrument

log = logging.getLogger("classify")


def main_body(argv: Sequence[str] | None) -> None:
    parser = make_parser(__doc__, "python -m stages.classify")
    parser.add_argument("--generation", type=int, required=True, help="generation N")
    parser.add_argument("--instrument", default="artifacts/instrument", help="instrument folder")
    parser.add_argument("--manifest", required=True, help="generate@N manifest parquet")
    parser.add_argument("--out", required=True, help="output parquet")
    args = parser.parse_args(argv)
    configs = load_configs(args.params, {"occupations": None, "classify": ClassifyConfig})
    config: ClassifyConfig = configs["classify"]
    occupations = list(configs["occupations"] or [])
    manifest = pl.read_parquet(args.manifest)
    stray = sorted(set(manifest["occupation"].unique().to_list()) - set(occupations))
    if stray:
        raise ValueError(f"{args.manifest}: occupations {stray} are not in params occupations")

    with stage_run("classify", configs["tracking"], {"classify": to_dict(config)}, generation=args.generation) as run:
        instrument = load_instrument(args.instrument, resolve_device(configs["base"].device))
        with timed(f"classifying {len(manifest)} generated images", log):
            images = load_images(manifest["image_ref"].to_list())
            p_female = instrument.p_female(images, batch_size=config.batch_size, progress=True)
            occupation_probs = instrument.occupation_probs(images, occupations, batch_size=config.batch_size,
                                                           progress=True)
        asked = np.array([occupations.index(o) for o in manifest["occupation"].to_list()], dtype=int)
        predictions = manifest.with_columns(
            pl.Series("p_female", p_female, dtype=pl.Float64),
            pl.Series("label", label_from_p(p_female, config.abstain_threshold).tolist(), dtype=pl.String),
            pl.Series("p_occupation", occupation_probs[np.arange(len(asked)), asked], dtype=pl.Float64),
            pl.Series("predicted_occupation", [occupations[i] for i in occupation_probs.argmax(axis=1)], dtype=pl.String),
        )
        write_parquet(args.out, predictions)
        neutral = predictions.filter(pl.col("prompt_kind") == "neutral")
        metrics = {
            "n_images": len(predictions),
            "abstain_rate": float((predictions["label"] == "abstain").mean()),
            "occupation_accuracy_neutral": float((neutral["predicted_occupation"] == neutral["occupation"]).mean())
            if len(neutral) else None,
        }
        log.info("generation %d: %s", args.generation, metrics)
        run.log_metrics(metrics)


def main(argv: Sequence[str] | None = None) -> int:
    return run_main(main_body, argv, log)


if __name__ == "__main__":
    raise SystemExit(main())
