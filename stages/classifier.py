"""classifier@N: an occupation classifier trained from scratch on generation N's dataset, scored on real held-out images.

The generations study's task (Zhang et al. 2024): accuracy overall and per perceived-gender group,
worst-group accuracy over (occupation, gender) groups with at least classifier.min_group_size images, and
Fairlearn's demographic parity and equalized odds differences of one-vs-rest occupation predictions.
Generation 0 trains on the real corpus's training split, generation N on dataset N.

Inputs:   the generation's dataset (artifacts/corpus/captions.parquet for N = 0,
          artifacts/gen{N}/mix/dataset.parquet otherwise), artifacts/corpus (held-out split),
          artifacts/instrument (genders, when the corpus has no ground truth)
Outputs:  artifacts/gen{N}/classifier/predictions.parquet   (id, occupation, predicted, gender)
          metrics/generations/classifier_gen{N}.json
Params:   base, tracking, classifier, label

Example:
    python -m stages.classifier --generation 1 --dataset artifacts/gen1/mix/dataset.parquet \\
        --corpus artifacts/corpus/captions.parquet --instrument artifacts/instrument \\
        --out artifacts/gen1/classifier --metrics metrics/generations/classifier_gen1.json
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from biasloop.core.config import to_dict
from biasloop.core.io import load_images, timed, write_json, write_parquet
from biasloop.core.runtime import resolve_device
from biasloop.core.seeds import stream_seed
from biasloop.core.stage import load_configs, make_parser, runtime_facts, stage_main
from biasloop.core.tracking import stage_run
from biasloop.metrics.classification import classifier_scores, labelled_split
from biasloop.metrics.evaluation import held_out, held_out_genders, training_pairs
from biasloop.models.classifier import ClassifierConfig, train_classifier
from biasloop.models.instrument import LabelConfig

log = logging.getLogger("classifier")


@stage_main(log)
def main(argv: Sequence[str] | None = None) -> None:
    parser = make_parser(__doc__, "python -m stages.classifier")
    parser.add_argument("--generation", type=int, required=True, help="generation N")
    parser.add_argument("--dataset", required=True, help="generation N's dataset (corpus captions.parquet for N = 0)")
    parser.add_argument("--corpus", required=True, help="corpus caption table (its held-out split is scored)")
    parser.add_argument(
        "--instrument", default=None, help="instrument folder, used when the corpus has no gender labels"
    )
    parser.add_argument("--out", required=True, help="output folder for predictions.parquet")
    parser.add_argument("--metrics", required=True, help="metrics JSON to write")
    args = parser.parse_args(argv)
    configs = load_configs(args.params, {"classifier": ClassifierConfig, "label": LabelConfig})
    config: ClassifierConfig = configs["classifier"]
    device = resolve_device(configs["base"].device)
    with stage_run(
        "classifier", configs["tracking"], {"classifier": to_dict(config)}, generation=args.generation
    ) as run:
        dataset, test = training_pairs(args.dataset), held_out(args.corpus)
        # its own stream per generation: seed s at generation g+1 does not replay seed s+1 at generation g
        seed = stream_seed(configs["base"].seed, "classifier", args.generation)
        groups = held_out_genders(test, args.instrument, device, configs["label"].abstain_threshold)
        train_rows, test_rows, test_groups = labelled_split(dataset, test, groups, config.label_column)
        with timed(f"occupation classifier training on {len(train_rows)} images", log):
            images = load_images(train_rows["image_ref"].to_list())
            classifier, training = train_classifier(
                images, train_rows[config.label_column].to_list(), config, seed, device
            )
        metrics, predictions = classifier_scores(classifier, test_rows, test_groups, config, seed)
        metrics = {"generation": args.generation, **metrics, "training": training, "architecture": config.architecture}
        write_parquet(Path(args.out) / "predictions.parquet", predictions)
        write_json(args.metrics, {**metrics, **runtime_facts()})
        run.log_metrics(
            {k: v for k, v in metrics.items() if k not in ("training", "accuracy_by_group", "per_occupation")}
        )


if __name__ == "__main__":
    raise SystemExit(main())
