"""label_dataset@N: perceived gender of every training image of dataset N, the data generation N trained on.

Dataset 0 is the corpus's training split; dataset N (N >= 1) is mix@N's (real images and the images
generated for it, which nothing else classifies). Each image is labelled as label_train labels
training images: a real image by the cross-fitted instrument's model that never trained on it, a
generated one by the instrument's mixture (``biasloop.models.instrument.cross_fitting``); ``label.abstain_threshold``
decides ``female``/``male``/``abstain``. evaluate@N compares generation N's images with these labels
(``amplification_vs_training_dataset``), beside the comparison with the real corpus.

Every other attribute of ``attributes:`` (e.g. ``tone``) is labelled from the same image embeddings
(``biasloop.models.instrument.kclass``): ``<name>_label`` (a class or ``abstain``), ``<name>_p_<class>``
per class, and ``true_<name>``: the source caption's (the dataset's own column when it has one, else the
corpus row ``source_id`` names; null for a corpus without it).

Inputs:   artifacts/instrument, dataset N (artifacts/corpus/captions.parquet or artifacts/gen{N}/mix/dataset.parquet),
          artifacts/corpus/captions.parquet (the sources' true_<name>)
Outputs:  artifacts/gen{N}/label_dataset/predictions.parquet
          (id, source_id, synthetic, p_female, label, instrument_fold, true_gender: the source's, and per
          K-class attribute <name>_label, <name>_p_<class>..., true_<name>)
Params:   base, tracking, label, attributes

Example:
    python -m stages.label_dataset --generation 1 --instrument artifacts/instrument \\
        --dataset artifacts/gen1/mix/dataset.parquet --out artifacts/gen1/label_dataset/predictions.parquet
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import polars as pl

from biasloop.core.attributes import load_attributes
from biasloop.core.config import to_dict
from biasloop.core.io import timed, write_parquet
from biasloop.core.runtime import resolve_device
from biasloop.core.stage import load_configs, make_parser, stage_main
from biasloop.core.tracking import stage_run
from biasloop.loop.mixing import as_dataset
from biasloop.models.instrument import (
    LabelConfig,
    label_every_attribute,
    load_cross_fitted,
)

log = logging.getLogger("label_dataset")


@stage_main(log)
def main(argv: Sequence[str] | None = None) -> None:
    parser = make_parser(__doc__, "python -m stages.label_dataset")
    parser.add_argument("--generation", type=int, required=True, help="generation N whose training dataset is labelled")
    parser.add_argument("--instrument", default="artifacts/instrument", help="instrument folder")
    parser.add_argument(
        "--dataset", required=True, help="dataset N: the corpus captions.parquet (N = 0) or mix@N's dataset.parquet"
    )
    parser.add_argument(
        "--corpus", default="artifacts/corpus/captions.parquet", help="corpus caption table (the sources' truth)"
    )
    parser.add_argument("--out", required=True, help="output parquet")
    args = parser.parse_args(argv)
    configs = load_configs(args.params, {"label": LabelConfig, "attributes": None})
    config: LabelConfig = configs["label"]
    attributes = load_attributes(configs)
    raw = pl.read_parquet(args.dataset)
    dataset = as_dataset(raw)
    if dataset.is_empty():
        raise ValueError(f"{args.dataset}: no training rows")
    truths = _source_truths(dataset, raw, args.corpus, [f"true_{name}" for name in attributes])

    with stage_run("label_dataset", configs["tracking"], {"label": to_dict(config)}, generation=args.generation) as run:
        instrument = load_cross_fitted(args.instrument, resolve_device(configs["base"].device))
        refs = dataset["image_ref"].to_list()
        with timed(f"labelling the {len(dataset)} training images of dataset {args.generation}", log):
            labels, others = label_every_attribute(
                instrument, attributes, refs, config.abstain_threshold, config.batch_size
            )
        predictions = pl.concat(
            [
                dataset.select("id", "source_id", "synthetic", "true_gender"),
                labels.select("p_female", "label", "instrument_fold"),
                others,
                truths,
            ],
            how="horizontal",
        )
        columns = ["id", "source_id", "synthetic", "p_female", "label", "instrument_fold", "true_gender"]
        for name, spec in attributes.items():
            columns += [f"{name}_label", *(f"{name}_p_{c}" for c in spec.classes), f"true_{name}"]
        predictions = predictions.select(columns)
        write_parquet(args.out, predictions)
        metrics = {"n_images": len(predictions), "n_synthetic": int(predictions["synthetic"].sum())}
        for name, rows in (
            ("real", predictions.filter(~pl.col("synthetic"))),
            ("synthetic", predictions.filter(pl.col("synthetic"))),
        ):
            if len(rows):
                metrics[f"{name}.abstain_rate"] = float((rows["label"] == "abstain").mean())
                confident = rows.filter(pl.col("label") != "abstain")
                if len(confident):
                    metrics[f"{name}.share_female"] = float((confident["label"] == "female").mean())
        log.info("dataset %d: %s", args.generation, metrics)
        run.log_metrics(metrics)


def _source_truths(dataset: pl.DataFrame, raw: pl.DataFrame, corpus_path: str, columns: list[str]) -> pl.DataFrame:
    """``columns`` (``true_<name>``) of each dataset row, row-aligned: the dataset's own column when it
    has one, else the corpus row its ``source_id`` names (a generated image's truth is its source's, as
    ``true_gender`` is); null when neither has it."""
    own = [c for c in columns if c in raw.columns]
    frame = dataset.select("id")
    if own:  # as_dataset kept the training split's rows of raw, in order
        rows = raw.filter(pl.col("split") == "train") if "split" in raw.columns else raw
        frame = frame.with_columns(rows.select(own).get_columns())
    rest = [c for c in columns if c not in own]
    if rest:
        corpus = pl.read_parquet(corpus_path)
        found = [c for c in rest if c in corpus.columns]
        sources = dataset.select("source_id").join(
            corpus.select(pl.col("id").alias("source_id"), *found), on="source_id", how="left", maintain_order="left"
        )
        frame = frame.with_columns(
            *(sources[c] for c in found), *(pl.lit(None, dtype=pl.String).alias(c) for c in rest if c not in found)
        )
    return frame.select(columns)


if __name__ == "__main__":
    raise SystemExit(main())
