"""label_train: perceived gender of the training images behind each retrieval selection.

Each distinct image is classified once, out of sample: by the cross-fitted instrument's model of the
image's own fold, the one that never trained on it (``biasloop.models.instrument.cross_fitting``). Every (selection,
occupation) row that includes it gets its ``p_female``, label (``female``/``male``/``abstain`` by
``label.abstain_threshold``) and ``instrument_fold``. The world's ``true_gender`` rides along for
evaluation only.

Every other attribute of ``attributes:`` (e.g. ``tone``) is labelled from the same image embeddings (each
image passes the tower once; ``biasloop.models.instrument.kclass``): ``<name>_label`` (a class or
``abstain``, by ``attributes.<name>.abstain``), ``<name>_p_<class>`` per class, and the corpus's
``true_<name>`` (null when the corpus has none).

Inputs:   artifacts/instrument, artifacts/neighbours/selections.parquet, artifacts/corpus
Outputs:  artifacts/label_train/predictions.parquet
          (selection, occupation, id, p_female, label, instrument_fold, true_gender, and per K-class
          attribute <name>_label, <name>_p_<class>..., true_<name>)
Params:   base, tracking, label, attributes

Example:
    python -m stages.label_train --instrument artifacts/instrument \\
        --selections artifacts/neighbours/selections.parquet --corpus artifacts/corpus/captions.parquet \\
        --out artifacts/label_train/predictions.parquet
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
from biasloop.models.instrument import (
    LabelConfig,
    label_every_attribute,
    load_cross_fitted,
)

log = logging.getLogger("label_train")


@stage_main(log)
def main(argv: Sequence[str] | None = None) -> None:
    parser = make_parser(__doc__, "python -m stages.label_train")
    parser.add_argument("--instrument", default="artifacts/instrument", help="instrument folder")
    parser.add_argument("--selections", default="artifacts/neighbours/selections.parquet", help="selections parquet")
    parser.add_argument("--corpus", default="artifacts/corpus/captions.parquet", help="corpus caption table")
    parser.add_argument("--out", default="artifacts/label_train/predictions.parquet", help="output parquet")
    args = parser.parse_args(argv)
    configs = load_configs(args.params, {"label": LabelConfig, "attributes": None})
    config: LabelConfig = configs["label"]
    attributes = load_attributes(configs)
    truths = ["true_gender", *(f"true_{name}" for name in attributes)]
    selections = pl.read_parquet(args.selections)
    corpus = pl.read_parquet(args.corpus)
    for truth in truths:
        if truth not in corpus.columns:  # a corpus without ground truth
            corpus = corpus.with_columns(pl.lit(None, dtype=pl.String).alias(truth))
    corpus = corpus.select("id", "image_ref", *truths)
    unknown = selections.join(corpus, on="id", how="anti")
    if len(unknown):
        raise ValueError(f"{args.selections}: {len(unknown)} ids not in {args.corpus} (first: {unknown['id'][0]!r})")
    images_needed = selections.select("id").unique().sort("id").join(corpus, on="id", how="left")

    with stage_run("label_train", configs["tracking"], {"label": to_dict(config)}) as run:
        instrument = load_cross_fitted(args.instrument, resolve_device(configs["base"].device))
        if not len(images_needed):
            log.warning("%s: no selected captions, so no images to label", args.selections)
        refs = images_needed["image_ref"].to_list()
        with timed(f"labelling {len(images_needed)} training images ({instrument.labels})", log):
            labels, others = label_every_attribute(
                instrument, attributes, refs, config.abstain_threshold, config.batch_size
            )
        per_image = pl.concat([images_needed.select("id", *truths), labels, others], how="horizontal")
        columns = ["p_female", "label", "instrument_fold", "true_gender"]
        for name, spec in attributes.items():
            columns += [f"{name}_label", *(f"{name}_p_{c}" for c in spec.classes), f"true_{name}"]
        predictions = (
            selections.select("selection", "occupation", "id")
            .join(per_image, on="id", how="left")
            .select("selection", "occupation", "id", *columns)
        )
        write_parquet(args.out, predictions)
        summary = (
            predictions.group_by("selection")
            .agg(
                pl.len().alias("n"),
                (pl.col("label") == "abstain").mean().alias("abstain_rate"),
                (pl.col("label") == "female").sum().alias("n_female"),
                (pl.col("label") == "male").sum().alias("n_male"),
            )
            .sort("selection")
        )
        for row in summary.iter_rows(named=True):
            log.info(
                "%-22s %5d images, %4d women, %4d men, abstain %.3f",
                row["selection"],
                row["n"],
                row["n_female"],
                row["n_male"],
                row["abstain_rate"],
            )
            run.log_metrics(
                {f"{row['selection']}.abstain_rate": row["abstain_rate"], f"{row['selection']}.n": row["n"]}
            )


if __name__ == "__main__":
    raise SystemExit(main())
