"""instrument: obtain the perceived-gender classifier and measure it on images none of its models saw.

``instrument.backend: locked-text-clip`` is **cross-fitted**: the training split is dealt into
``instrument.folds`` folds and one image tower per fold is trained (against the frozen Sentence-BERT
caption embeddings) on every other fold, so each training image is later labelled by the one model that
never saw it, and every other image by a fold model a seeded hash of its ref picks (see
``biasloop.models.instrument.cross_fitting``). ``open-clip`` loads one pretrained model (not trained on the corpus).
Accuracy, abstain rate and the confusion rates (tpr, fpr, "female" the positive class, over confident
images) of that labelling rule come from the held-out split's ground truth (glyph world), or from
``instrument.labelled_csv`` (``image_ref, true_gender``) for a real corpus; without either they are
written as null with ``"status": "unknown"``, and the downstream stages leave shares uncorrected.

Inputs:   artifacts/corpus (captions.parquet + image shards)
Outputs:  artifacts/instrument/ (labeller.json, folds.parquet, fold{k}/{instrument.json,image_tower.pt}),
          metrics/instrument.json (labels, folds, accuracy, abstain_rate, tpr, fpr, confusion, n, per_fold,
          out_of_fold, occupation_accuracy, training_seconds, status)
Params:   base, tracking, occupations, instrument, label

Example:
    python -m stages.instrument --corpus artifacts/corpus/captions.parquet --out artifacts/instrument \\
        --metrics metrics/instrument.json
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import polars as pl

from biasloop.core.config import to_dict
from biasloop.core.io import atomic_path, timed, write_json
from biasloop.core.runtime import resolve_device
from biasloop.core.stage import load_configs, make_parser, runtime_facts, stage_main
from biasloop.core.tracking import stage_run
from biasloop.models.instrument import (
    InstrumentConfig,
    LabelConfig,
    corpus_split,
    measure_cross_fitted,
    train_cross_fitted,
)

log = logging.getLogger("instrument")


@stage_main(log)
def main(argv: Sequence[str] | None = None) -> None:
    parser = make_parser(__doc__, "python -m stages.instrument")
    parser.add_argument("--corpus", default="artifacts/corpus/captions.parquet", help="corpus caption table")
    parser.add_argument("--out", default="artifacts/instrument", help="instrument folder (default: %(default)s)")
    parser.add_argument("--metrics", default="metrics/instrument.json", help="metrics JSON (default: %(default)s)")
    args = parser.parse_args(argv)
    configs = load_configs(args.params, {"occupations": None, "instrument": InstrumentConfig, "label": LabelConfig})
    config: InstrumentConfig = configs["instrument"]
    labelling: LabelConfig = configs["label"]
    occupations = [str(o) for o in configs["occupations"] or []]
    device = resolve_device(configs["base"].device)
    corpus = pl.read_parquet(args.corpus)

    params = {"instrument": to_dict(config), "label": to_dict(labelling), "occupations": occupations}
    with stage_run("instrument", configs["tracking"], params) as run:
        train = corpus_split(corpus, "train") if config.backend == "locked-text-clip" else None
        what = (
            f"training the locked-text CLIP, {config.folds} folds over {len(train)} pairs"
            if train is not None
            else f"loading open_clip {config.model} ({config.pretrained or 'random weights'})"
        )
        with timed(what, log):
            instrument, stats = train_cross_fitted(config, train, occupations, seed=configs["base"].seed, device=device)
        with atomic_path(args.out) as tmp:
            instrument.save(tmp)

        with timed("measuring the instrument's labels", log):
            measured = measure_cross_fitted(
                instrument, corpus, config, occupations, labelling.abstain_threshold, batch_size=labelling.batch_size
            )
        metrics = {
            "backend": config.backend,
            "labels": instrument.labels,
            "folds": instrument.folds,
            **measured,
            "training_seconds": stats.get("seconds"),
            "threshold": labelling.abstain_threshold,
        }
        if metrics["status"] == "unknown":
            log.warning(
                "no labelled images (no held-out ground truth, instrument.labelled_csv unset): the "
                "instrument's accuracy is unknown and shares stay uncorrected"
            )
        else:
            log.info(
                "instrument (%s): accuracy %s on confident images, abstain rate %s, tpr %s, fpr %s (n=%d)",
                metrics["labels"],
                _fmt(metrics["accuracy"]),
                _fmt(metrics["abstain_rate"]),
                _fmt(metrics["tpr"]),
                _fmt(metrics["fpr"]),
                metrics["n"],
            )
        if metrics["occupation_accuracy"] is not None:
            log.info(
                "zero-shot occupation accuracy %.3f (chance %.3f)",
                metrics["occupation_accuracy"],
                metrics["occupation_chance"],
            )
        write_json(args.metrics, {**metrics, **runtime_facts()})
        run.log_metrics(metrics)


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


if __name__ == "__main__":
    raise SystemExit(main())
