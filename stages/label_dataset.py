"""label_dataset@N: perceived gender of every training image of dataset N, the data generation N trained on.

Dataset 0 is the corpus's training split; dataset N (N >= 1) is mix@N's (real images and the images
generated for it, which nothing else classifies). Each image is labelled as label_train labels
training images: a real image by the cross-fitted instrument's model that never trained on it, a
generated one by the instrument's mixture (``biasloop.models.instrument.cross_fitting``); ``label.abstain_threshold``
decides ``female``/``male``/``abstain``. evaluate@N compares generation N's images with these labels
(``amplification_vs_training_dataset``), beside the comparison with the real corpus.

Inputs:   artifacts/instrument, dataset N (artifacts/corpus/captions.parquet or artifacts/gen{N}/mix/dataset.parquet)
Outputs:  artifacts/gen{N}/label_dataset/predictions.parquet
          (id, source_id, synthetic, p_female, label, instrument_fold, true_gender: the source's)
Params:   base, tracking, label

Example:
    python -m stages.label_dataset --generation 1 --instrument artifacts/instrument \\
        --dataset artifacts/gen1/mix/dataset.parquet --out artifacts/gen1/label_dataset/predictions.parquet
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import polars as pl

from biasloop.core.config import to_dict
from biasloop.core.io import timed, write_parquet
from biasloop.core.runtime import resolve_device
from biasloop.core.stage import load_configs, make_parser, stage_main
from biasloop.core.tracking import stage_run
from biasloop.loop.mixing import as_dataset
from biasloop.models.instrument import LabelConfig, label_images, load_cross_fitted

log = logging.getLogger("label_dataset")


@stage_main(log)
def main(argv: Sequence[str] | None = None) -> None:
    parser = make_parser(__doc__, "python -m stages.label_dataset")
    parser.add_argument("--generation", type=int, required=True, help="generation N whose training dataset is labelled")
    parser.add_argument("--instrument", default="artifacts/instrument", help="instrument folder")
    parser.add_argument(
        "--dataset", required=True, help="dataset N: the corpus captions.parquet (N = 0) or mix@N's dataset.parquet"
    )
    parser.add_argument("--out", required=True, help="output parquet")
    args = parser.parse_args(argv)
    configs = load_configs(args.params, {"label": LabelConfig})
    config: LabelConfig = configs["label"]
    dataset = as_dataset(pl.read_parquet(args.dataset))
    if dataset.is_empty():
        raise ValueError(f"{args.dataset}: no training rows")

    with stage_run("label_dataset", configs["tracking"], {"label": to_dict(config)}, generation=args.generation) as run:
        instrument = load_cross_fitted(args.instrument, resolve_device(configs["base"].device))
        with timed(f"labelling the {len(dataset)} training images of dataset {args.generation}", log):
            labels = label_images(
                instrument, dataset["image_ref"].to_list(), config.abstain_threshold, batch_size=config.batch_size
            )
        predictions = pl.concat(
            [
                dataset.select("id", "source_id", "synthetic", "true_gender"),
                labels.select("p_female", "label", "instrument_fold"),
            ],
            how="horizontal",
        ).select("id", "source_id", "synthetic", "p_female", "label", "instrument_fold", "true_gender")
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


if __name__ == "__main__":
    raise SystemExit(main())
