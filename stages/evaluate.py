"""evaluate@N: amplification of generation N's images and the bias of generation N's downstream CLIP.

Inputs:   artifacts/classify_train/predictions.parquet, artifacts/gen{N}/classify/predictions.parquet,
          metrics/instrument.json (confusion rates), artifacts/models/gen{N}/downstream,
          artifacts/corpus (held-out real pairs)
Outputs:  metrics/generations/gen{N}.json
Params:   base, tracking, occupations, evaluate, classify

Example:
    python -m stages.evaluate --generation 0 --train-predictions artifacts/classify_train/predictions.parquet \\
        --generated artifacts/gen0/classify/predictions.parquet --instrument-metrics metrics/instrument.json \\
        --downstream artifacts/models/gen0/downstream --corpus artifacts/corpus/captions.parquet \\
        --out metrics/generations/gen0.json
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import polars as pl

from biasloop.core.config import to_dict
from biasloop.core.io import load_images, timed, write_json
from biasloop.core.runtime import resolve_device
from biasloop.core.stage import load_configs, make_parser, run_main, runtime_facts
from biasloop.core.tracking import stage_run
from biasloop.metrics.amplification import read_confusion
from biasloop.metrics.evaluation import (
    EvaluateConfig,
    downstream_bias,
    evaluate_generation,
    perceived_groups,
)
from biasloop.models.instrument import ClassifyConfig

log = logging.getLogger("evaluate")


def main_body(argv: Sequence[str] | None) -> None:
    parser = make_parser(__doc__, "python -m stages.evaluate")
    parser.add_argument("--generation", type=int, required=True, help="generation N")
    parser.add_argument("--train-predictions", required=True, help="classify_train predictions parquet")
    parser.add_argument("--generated", required=True, help="classify@N predictions parquet")
    parser.add_argument("--instrument-metrics", required=True, help="metrics/instrument.json (tpr, fpr)")
    parser.add_argument("--downstream", required=True, help="generation N's downstream CLIP folder")
    parser.add_argument("--corpus", required=True, help="corpus caption table (held-out split)")
    parser.add_argument("--instrument", default=None, help="instrument folder, used when the corpus has no gender labels")
    parser.add_argument("--out", required=True, help="metrics JSON to write")
    args = parser.parse_args(argv)
    configs = load_configs(args.params, {"occupations": None, "evaluate": EvaluateConfig, "classify": ClassifyConfig})
    config: EvaluateConfig = configs["evaluate"]
    occupations = list(configs["occupations"] or [])
    device = resolve_device(configs["base"].device)

    with stage_run("evaluate", configs["tracking"], {"evaluate": to_dict(config)}, generation=args.generation) as run:
        confusion = read_confusion(args.instrument_metrics)
        with timed("downstream CLIP on held-out pairs", log):
            from biasloop.models.downstream_clip import load_downstream

            test = pl.read_parquet(args.corpus).filter(pl.col("split") == "test")
            model = load_downstream(args.downstream, device)
            groups = perceived_groups(test, args.instrument, device, configs["classify"].abstain_threshold)
            downstream = downstream_bias(model, test, load_images(test["image_ref"].to_list()), groups, occupations, config)
        with timed("amplification with bootstrap intervals", log):
            metrics = evaluate_generation(
                args.generation,
                pl.read_parquet(args.train_predictions),
                pl.read_parquet(args.generated),
                confusion,
                config,
                configs["base"].seed,
                downstream,
            )
        write_json(args.out, {**metrics, **runtime_facts()})
        amplification = metrics["amplification"]
        log.info("generation %d: amplification_abs %s, noise floor %s, excess %s %s (p %s), recall@10 %s",
                 args.generation, amplification.get("amplification_abs"), amplification.get("noise_floor_abs"),
                 amplification.get("excess_abs"), amplification.get("excess_abs_ci"), amplification.get("p_value_abs"),
                 downstream["recall"].get("recall@10"))
        run.log_metrics({k: v for k, v in metrics.items() if k != "per_occupation"})


def main(argv: Sequence[str] | None = None) -> int:
    return run_main(main_body, argv, log)


if __name__ == "__main__":
    raise SystemExit(main())
