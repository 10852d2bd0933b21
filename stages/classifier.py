"""classifier@N: an occupation classifier trained from scratch on generation N's dataset, scored on real held-out images.

The generations study's task (Zhang et al. 2024): accuracy overall and per perceived-gender group,
worst-group accuracy over (occupation, gender) groups with at least classifier.min_group_size images, and
Fairlearn's demographic parity and equalized odds differences of one-vs-rest occupation predictions; the
same per K-class attribute of params.yaml's attributes: (every one but gender) and per gender x attribute,
under "attributes" (the held-out images' classes: ground truth true_<name> where the corpus has it, else
the instrument's labels). Generation 0 trains on the real corpus's training split, generation N on dataset N.

Inputs:   the generation's dataset (artifacts/corpus/captions.parquet for N = 0,
          artifacts/gen{N}/mix/dataset.parquet otherwise), artifacts/corpus (held-out split),
          artifacts/instrument (genders and attribute classes, when the corpus has no ground truth)
Outputs:  artifacts/gen{N}/classifier/predictions.parquet   (id, occupation, predicted, gender, <attribute>...)
          metrics/generations/classifier_gen{N}.json
Params:   base, tracking, classifier, label, attributes

Example:
    python -m stages.classifier --generation 1 --dataset artifacts/gen1/mix/dataset.parquet \\
        --corpus artifacts/corpus/captions.parquet --instrument artifacts/instrument \\
        --out artifacts/gen1/classifier --metrics metrics/generations/classifier_gen1.json
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from biasloop.core.attributes import load_attributes
from biasloop.core.config import to_dict
from biasloop.core.io import load_images, timed, write_json, write_parquet
from biasloop.core.runtime import resolve_device
from biasloop.core.seeds import stream_seed
from biasloop.core.stage import load_configs, make_parser, runtime_facts, stage_main
from biasloop.core.tracking import stage_run
from biasloop.metrics.classification import classifier_scores, labelled_split
from biasloop.metrics.downstream_attributes import held_out_classes
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
    configs = load_configs(args.params, {"classifier": ClassifierConfig, "label": LabelConfig, "attributes": None})
    config: ClassifierConfig = configs["classifier"]
    # gender keeps the binary path; the attributes beside it are scored by class and crossed with gender
    specs = load_attributes(configs)
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
        attribute_classes = held_out_classes(test_rows, specs, args.instrument, device)
        metrics, predictions = classifier_scores(
            classifier, test_rows, test_groups, config, seed, attribute_classes=attribute_classes, specs=specs
        )
        metrics = {"generation": args.generation, **metrics, "training": training, "architecture": config.architecture}
        write_parquet(Path(args.out) / "predictions.parquet", predictions)
        write_json(args.metrics, {**metrics, **runtime_facts()})
        skipped = ("training", "accuracy_by_group", "per_occupation", "attributes")
        run.log_metrics({k: v for k, v in metrics.items() if k not in skipped})
        # per attribute and intersection, the headline numbers only (the groups stay in the JSON)
        headline = (
            "accuracy_gap",
            "worst_group_accuracy",
            "demographic_parity_difference_mean",
            "equalized_odds_difference_mean",
        )
        run.log_metrics(
            {
                f"attributes.{key}.{name}": block.get(name)
                for key, block in metrics.get("attributes", {}).items()
                for name in headline
            }
        )


if __name__ == "__main__":
    raise SystemExit(main())
