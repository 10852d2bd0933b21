"""evaluate@N: amplification of generation N's images and the bias of generation N's downstream CLIP.

Inputs:   artifacts/label_train/predictions.parquet, artifacts/gen{N}/label/predictions.parquet,
          metrics/instrument.json (confusion rates), artifacts/models/gen{N}/downstream,
          artifacts/corpus (held-out real pairs), artifacts/retrieve/matches.parquet (caption indicators,
          for the ideal learner of the decomposition), artifacts/gen{N}/label_dataset/predictions.parquet
          (labels of dataset N, the data generation N trained on: amplification_vs_training_dataset)
Outputs:  metrics/generations/gen{N}.json; every measured K-class attribute (params and instrument.json's
          ``attributes``, gender aside: e.g. tone) under ``attributes.<name>``, the same comparisons
          (:func:`biasloop.metrics.kclass.attribute.generation_attributes`)
Params:   base, tracking, occupations, evaluate, label, attributes

Example:
    python -m stages.evaluate --generation 0 --train-predictions artifacts/label_train/predictions.parquet \\
        --generated artifacts/gen0/label/predictions.parquet --instrument-metrics metrics/instrument.json \\
        --downstream artifacts/models/gen0/downstream --corpus artifacts/corpus/captions.parquet \\
        --matches artifacts/retrieve/matches.parquet \\
        --dataset-predictions artifacts/gen0/label_dataset/predictions.parquet --out metrics/generations/gen0.json
"""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Sequence
from pathlib import Path

import polars as pl

from biasloop.core.attributes import load_attributes
from biasloop.core.config import to_dict
from biasloop.core.io import load_images, timed, write_json
from biasloop.core.runtime import resolve_device
from biasloop.core.stage import load_configs, make_parser, runtime_facts, stage_main
from biasloop.core.tracking import stage_run
from biasloop.metrics.amplification import read_confusion
from biasloop.metrics.downstream_attributes import downstream_attribute_bias, held_out_classes, training_class_counts
from biasloop.metrics.evaluation import (
    EvaluateConfig,
    downstream_bias,
    encode_held_out,
    evaluate_generation,
    perceived_groups,
    training_shares,
)
from biasloop.metrics.kclass.attribute import generation_attributes
from biasloop.metrics.rows import decomposition_values, estimand_values
from biasloop.models.instrument import LabelConfig

log = logging.getLogger("evaluate")


@stage_main(log)
def main(argv: Sequence[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    configs = load_configs(
        args.params, {"occupations": None, "evaluate": EvaluateConfig, "label": LabelConfig, "attributes": None}
    )
    config: EvaluateConfig = configs["evaluate"]
    occupations = list(configs["occupations"] or [])
    device = resolve_device(configs["base"].device)

    with stage_run("evaluate", configs["tracking"], {"evaluate": to_dict(config)}, generation=args.generation) as run:
        confusion = read_confusion(args.instrument_metrics)
        train_predictions = pl.read_parquet(args.train_predictions)
        dataset_predictions = pl.read_parquet(args.dataset_predictions) if args.dataset_predictions else None
        # MaxSkew/NDKL against what the CLIP saw: dataset N's share of women per occupation
        shares = training_shares(train_predictions, dataset_predictions) if dataset_predictions is not None else None
        with timed("downstream CLIP on held-out pairs", log):
            held_out = _held_out(args, configs, device)
            model, test, images, groups, vectors = held_out
            downstream = downstream_bias(
                model, test, images, groups, occupations, config,
                training_share_female=shares, seed=configs["base"].seed, vectors=vectors,
            )  # fmt: skip
        generated, matches = pl.read_parquet(args.generated), pl.read_parquet(args.matches)
        with timed("amplification with bootstrap intervals", log):
            metrics = evaluate_generation(
                args.generation,
                train_predictions,
                generated,
                confusion,
                config,
                configs["base"].seed,
                downstream,
                matches=matches,
                dataset_predictions=dataset_predictions,
            )
        with timed("K-class attributes' amplification", log):
            metrics.update(_attributes(args, configs, train_predictions, generated, matches, dataset_predictions))
        _attribute_downstream(metrics, configs, args, held_out, train_predictions, dataset_predictions, device)
        write_json(args.out, {**metrics, **runtime_facts()})
        row = estimand_values(metrics["amplification"])
        log.info(
            "generation %d: shift %s [%s, %s], gap %s [%s, %s], raw A_abs %s; recall@10 %s",
            args.generation,
            *(
                "n/a" if row[k] is None else f"{100 * row[k]:+.1f} pp"
                for k in ("shift", "shift_lo", "shift_hi", "gap", "gap_lo", "gap_hi", "a_abs_raw")
            ),
            downstream["recall"].get("recall@10"),
        )
        terms = metrics["decomposition"].get("prompt_vs_keyword") or {}
        if terms.get("available"):
            log.info(
                "generation %d, prompt vs keyword: shift %s",
                args.generation,
                ", ".join(
                    f"{k} {v['estimate'] * 100:+.1f} pp"
                    for k, v in terms.items()
                    if isinstance(v, dict) and "estimate" in v
                ),
            )
        run.log_metrics({k: v for k, v in metrics.items() if k not in ("per_occupation", "attributes")})
        # the headline pairing's estimands and decomposition under flat names, at step = generation
        run.log_metrics({**row, **decomposition_values(terms)})
        _log_attributes(run, metrics)


def _attributes(
    args: argparse.Namespace,
    configs: dict,
    train_predictions: pl.DataFrame,
    generated: pl.DataFrame,
    matches: pl.DataFrame,
    dataset_predictions: pl.DataFrame | None,
) -> dict:
    """``{"attributes": {name: ...}}`` for the measured K-class attributes, or {} when there is none."""
    config: EvaluateConfig = configs["evaluate"]
    attributes = generation_attributes(
        json.loads(Path(args.instrument_metrics).read_text()),
        load_attributes(configs),
        train_predictions,
        generated,
        matches,
        dataset_predictions,
        n_boot=config.n_boot,
        seed=configs["base"].seed,
        min_cell_size=config.min_group_size,
    )
    return {"attributes": attributes} if attributes else {}


def _held_out(args: argparse.Namespace, configs: dict, device: str) -> tuple:
    """The held-out rows, generation N's downstream CLIP, their images, perceived genders and
    :func:`~biasloop.metrics.evaluation.encode_held_out` vectors (encoded once, for gender and every
    attribute): ``(model, test, images, groups, vectors)``."""
    from biasloop.models.downstream_clip import load_downstream

    test = pl.read_parquet(args.corpus).filter(pl.col("split") == "test")
    model = load_downstream(args.downstream, device)
    groups = perceived_groups(test, args.instrument, device, configs["label"].abstain_threshold)
    images = load_images(test["image_ref"].to_list())
    occupations = list(configs["occupations"] or [])
    return model, test, images, groups, encode_held_out(model, test, images, occupations, configs["evaluate"])


def _attribute_downstream(
    metrics: dict,
    configs: dict,
    args: argparse.Namespace,
    held_out: tuple,
    train_predictions: pl.DataFrame,
    dataset_predictions: pl.DataFrame | None,
    device: str,
) -> None:
    """Adds each K-class attribute's downstream CLIP block (retrieval gaps, MaxSkew/NDKL, zero-shot
    fairness) and its gender x attribute block to ``metrics["attributes"][name]``."""
    specs = load_attributes(configs)
    if not specs:
        return
    model, test, images, groups, vectors = held_out
    with timed("K-class attributes' downstream CLIP", log):
        classes = held_out_classes(test, specs, args.instrument, device)
        counts = (
            None
            if dataset_predictions is None
            else training_class_counts(train_predictions, dataset_predictions, specs)
        )
        blocks = downstream_attribute_bias(
            model, test, images, groups, classes, list(configs["occupations"] or []), configs["evaluate"], specs,
            training_counts=counts, seed=configs["base"].seed, vectors=vectors,
        )  # fmt: skip
    for name in specs:
        entry = metrics.setdefault("attributes", {}).setdefault(name, {})
        entry["downstream"] = blocks.get(name)
        entry["downstream_gender_x"] = blocks.get(f"gender_x_{name}")


def _log_attributes(run, metrics: dict) -> None:
    """Each K-class attribute's headline estimands and decomposition to MLflow (step = generation)."""
    for name, entry in (metrics.get("attributes") or {}).items():
        kinds = ("amplification", "amplification_corrected", "amplification_true")
        values = {f"{name}.{kind}": estimand_values(entry[kind]) for kind in kinds if entry.get(kind)}
        terms = (entry.get("decomposition") or {}).get("prompt_vs_keyword")
        run.log_metrics({**values, name: decomposition_values(terms)})


def _parser() -> argparse.ArgumentParser:
    parser = make_parser(__doc__, "python -m stages.evaluate")
    parser.add_argument("--generation", type=int, required=True, help="generation N")
    parser.add_argument("--train-predictions", required=True, help="label_train predictions parquet")
    parser.add_argument("--generated", required=True, help="label@N predictions parquet")
    parser.add_argument("--instrument-metrics", required=True, help="metrics/instrument.json (tpr, fpr)")
    parser.add_argument("--downstream", required=True, help="generation N's downstream CLIP folder")
    parser.add_argument("--corpus", required=True, help="corpus caption table (held-out split)")
    parser.add_argument(
        "--instrument", default=None, help="instrument folder, used when the corpus has no gender labels"
    )
    parser.add_argument("--matches", required=True, help="retrieve's matches parquet (caption gender indicators)")
    parser.add_argument(
        "--dataset-predictions",
        default=None,
        help="label_dataset@N predictions (dataset N's labels); omitted: no amplification_vs_training_dataset",
    )
    parser.add_argument("--out", required=True, help="metrics JSON to write")
    return parser


if __name__ == "__main__":
    raise SystemExit(main())
