"""instrument: obtain the perceived-gender classifier and measure it on labelled held-out images.

``instrument.backend: locked-text-clip`` trains a small image tower against the frozen Sentence-BERT
caption embeddings of the corpus's training split; ``open-clip`` loads a pretrained open_clip model.
Accuracy, abstain rate and the confusion rates (tpr, fpr, "female" the positive class, over confident
images) come from the held-out split's ground truth (glyph world), or from ``instrument.labelled_csv``
(``image_ref, true_gender``) for a real corpus; without either they are written as null with
``"status": "unknown"``, and the downstream stages leave shares uncorrected.

Inputs:   artifacts/corpus (captions.parquet + image shards)
Outputs:  artifacts/instrument/ (instrument.json + image_tower.pt), metrics/instrument.json
          (accuracy, abstain_rate, tpr, fpr, confusion, occupation_accuracy, n, training_seconds, status)
Params:   base, tracking, occupations, instrument, classify

Example:
    python -m stages.instrument --corpus artifacts/corpus/captions.parquet --out artifacts/instrument \\
        --metrics metrics/instrument.json
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import polars as pl

from biasloop.core.config import to_dict
from biasloop.core.io import atomic_path, load_images, timed, write_json
from biasloop.core.runtime import resolve_device
from biasloop.core.stage import load_configs, make_parser, run_main
from biasloop.core.tracking import stage_run
from biasloop.models.instrument import (
    ClassifyConfig,
    InstrumentConfig,
    corpus_split,
    evaluate_instrument,
    labelled_set,
    occupation_accuracy,
    train_or_load_instrument,
)

log = logging.getLogger("instrument")


def main_body(argv: Sequence[str] | None) -> None:
    parser = make_parser(__doc__, "python -m stages.instrument")
    parser.add_argument("--corpus", default="artifacts/corpus/captions.parquet", help="corpus caption table")
    parser.add_argument("--out", default="artifacts/instrument", help="instrument folder (default: %(default)s)")
    parser.add_argument("--metrics", default="metrics/instrument.json", help="metrics JSON (default: %(default)s)")
    args = parser.parse_args(argv)
    configs = load_configs(
        args.params, {"occupations": None, "instrument": InstrumentConfig, "classify": ClassifyConfig}
    )
    config: InstrumentConfig = configs["instrument"]
    classify: ClassifyConfig = configs["classify"]
    occupations = [str(o) for o in configs["occupations"] or []]
    device = resolve_device(configs["base"].device)
    corpus = pl.read_parquet(args.corpus)

    params = {"instrument": to_dict(config), "classify": to_dict(classify), "occupations": occupations}
    with stage_run("instrument", configs["tracking"], params) as run:
        images = captions = None
        if config.backend == "locked-text-clip":
            train = corpus_split(corpus, "train")
            if len(train) < 2:
                raise ValueError(f"{args.corpus}: the locked-text CLIP needs training pairs (split == 'train')")
            images, captions = load_images(train["image_ref"].to_list()), train["caption"].to_list()
        what = (f"training the locked-text CLIP on {len(captions)} pairs" if captions is not None
                else f"loading open_clip {config.model} ({config.pretrained or 'random weights'})")
        with timed(what, log):
            instrument, stats = train_or_load_instrument(config, images, captions, occupations,
                                                         seed=configs["base"].seed, device=device)
        with atomic_path(args.out) as tmp:
            instrument.save(tmp)

        metrics: dict[str, Any] = {"backend": config.backend, "status": "unknown", "accuracy": None,
                                   "abstain_rate": None, "tpr": None, "fpr": None, "confusion": None, "n": 0,
                                   "occupation_accuracy": None, "training_seconds": stats.get("seconds"),
                                   "threshold": classify.abstain_threshold}
        labelled = labelled_set(corpus, config)
        if labelled is None:
            log.warning("no labelled images (no held-out ground truth, instrument.labelled_csv unset): the "
                        "instrument's accuracy is unknown and shares stay uncorrected")
        else:
            refs, genders, source = labelled
            with timed(f"measuring the instrument on {len(refs)} labelled images ({source})", log):
                measured = evaluate_instrument(instrument, load_images(refs), genders, classify.abstain_threshold,
                                               batch_size=classify.batch_size)
            metrics.update(measured, status="measured", labelled_source=source)
            log.info("instrument: accuracy %s on confident images, abstain rate %s, tpr %s, fpr %s (n=%d)",
                     _fmt(metrics["accuracy"]), _fmt(metrics["abstain_rate"]), _fmt(metrics["tpr"]),
                     _fmt(metrics["fpr"]), metrics["n"])
        metrics["occupation_accuracy"] = occupation_accuracy(instrument, corpus, occupations, classify.batch_size)
        if metrics["occupation_accuracy"] is not None:
            metrics["occupation_chance"] = 1.0 / len(occupations)
            log.info("zero-shot occupation accuracy %.3f (chance %.3f)", metrics["occupation_accuracy"],
                     metrics["occupation_chance"])
        write_json(args.metrics, metrics)
        run.log_metrics(metrics)


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def main(argv: Sequence[str] | None = None) -> int:
    return run_main(main_body, argv, log)


if __name__ == "__main__":
    raise SystemExit(main())
