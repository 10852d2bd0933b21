"""classify@N: perceived gender and occupation of the images generation N made.

No model of the cross-fitted instrument trained on a generated image: each is labelled by the fold model
a seeded hash of its ``image_ref`` picks, the rule that labelled the held-out images the confusion rates
come from (``biasloop.models.labelling``).

Inputs:   artifacts/instrument, artifacts/gen{N}/generate/manifest.parquet (+ image shards)
Outputs:  artifacts/gen{N}/classify/predictions.parquet: the manifest's columns (prompt_kind,
          occupation, prompt, seed, image_ref) plus p_female, label, p_occupation (the instrument's
          zero-shot probability of the asked occupation), predicted_occupation and instrument_fold
Params:   base, tracking, occupations, classify

Example:
    python -m stages.classify --generation 0 --instrument artifacts/instrument \\
        --manifest artifacts/gen0/generate/manifest.parquet --out artifacts/gen0/classify/predictions.parquet
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import polars as pl

from biasloop.core.config import to_dict
from biasloop.core.io import timed, write_parquet
from biasloop.core.runtime import resolve_device
from biasloop.core.stage import load_configs, make_parser, run_main
from biasloop.core.tracking import stage_run
from biasloop.models.instrument import ClassifyConfig
from biasloop.models.labelling import label_images, load_labeller

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
        labeller = load_labeller(args.instrument, resolve_device(configs["base"].device))
        with timed(f"classifying {len(manifest)} generated images ({labeller.labels})", log):
            labels = label_images(labeller, manifest["image_ref"].to_list(), config.abstain_threshold,
                                  batch_size=config.batch_size, occupations=occupations,
                                  asked=manifest["occupation"].to_list())
        predictions = pl.concat([manifest, labels.select("p_female", "label", "p_occupation", "predicted_occupation",
                                                         "instrument_fold")], how="horizontal")
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
