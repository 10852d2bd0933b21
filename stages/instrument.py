"""instrument: obtain the perceived-gender classifier and measure it on labelled held-out images.

``instrument.backend: locked-text-clip`` trains a small image tower against the frozen Sentence-BERT
caption embeddings of the corpus's training split; ``open-clip`` loads a pretrained open_clip model.
Accuracy, abstain rate and the confusion rates (tpr, fpr for "female") come from the held-out split's
ground truth (glyph world), or from ``instrument.labelled_csv`` (``image_ref, true_gender``) for a real
corpus; without either they are reported as unknown and shares are left uncorrected.

Inputs:   artifacts/corpus (captions.parquet + image shards)
Outputs:  artifacts/instrument/ (instrument.json + weights), metrics/instrument.json
Params:   base, tracking, occupations, instrument, classify

Example:
    python -m stages.instrument --corpus artifacts/corpus/captions.parquet --out artifacts/instrument \\
        --metrics metrics/instrument.json
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import polars as pl

from biasloop.config import resolve_device, to_dict
from biasloop.instrument import (
    ClassifyConfig,
    InstrumentConfig,
    build_open_clip_instrument,
    evaluate_instrument,
    train_locked_text_clip,
)
from biasloop.io import atomic_path, load_images, timed, write_json
from biasloop.stage import load_configs, make_parser, run_main
from biasloop.tracking import stage_run

log = logging.getLogger("instrument")


def labelled_set(corpus: pl.DataFrame, config: InstrumentConfig) -> tuple[list[str], list[str], str] | None:
    """(image refs, true genders, source) to measure the instrument on, or None when there is none."""
    test = corpus.filter((pl.col("split") == "test") & pl.col("true_gender").is_in(["female", "male"]))
    if len(test):
        return test["image_ref"].to_list(), test["true_gender"].to_list(), "held-out ground truth"
    if config.labelled_csv:
        labelled = pl.read_csv(config.labelled_csv)
        missing = [c for c in ("image_ref", "true_gender") if c not in labelled.columns]
        if missing:
            raise ValueError(f"{config.labelled_csv}: missing column(s) {missing}")
        return labelled["image_ref"].to_list(), labelled["true_gender"].to_list(), config.labelled_csv
    return None


def main_body(argv: Sequence[str] | None) -> None:
    parser = make_parser(__doc__, "python -m stages.instrument")
    parser.add_argument("--corpus", default="artifacts/corpus/captions.parquet", help="corpus caption table")
    parser.add_argument("--out", default="artifacts/instrument", help="instrument folder (default: %(default)s)")
    parser.add_argument("--metrics", default="metrics/instrument.json", help="metrics JSON (default: %(default)s)")
    args = parser.parse_args(argv)
    configs = load_configs(args.params, {"occupations": None, "instrument": InstrumentConfig, "classify": ClassifyConfig})
    config: InstrumentConfig = configs["instrument"]
    classify: ClassifyConfig = configs["classify"]
    occupations = list(configs["occupations"] or [])
    device = resolve_device(configs["base"].device)
    corpus = pl.read_parquet(args.corpus)

    with stage_run("instrument", configs["tracking"], {"instrument": to_dict(config), "classify": to_dict(classify)}) as run:
        stats: dict[str, Any] = {}
        if config.backend == "locked-text-clip":
            train = corpus.filter(pl.col("split") == "train")
            with timed(f"training the locked-text CLIP image tower on {len(train)} pairs", log):
                instrument, stats = train_locked_text_clip(
                    config, load_images(train["image_ref"].to_list()), train["caption"].to_list(),
                    seed=configs["base"].seed, device=device,
                )
        else:
            instrument = build_open_clip_instrument(config, device)
        with atomic_path(args.out) as tmp:
            instrument.save(tmp)

        metrics: dict[str, Any] = {"backend": config.backend, "training_seconds": stats.get("seconds")}
        labelled = labelled_set(corpus, config)
        if labelled is None:
            log.warning("no labelled images: the instrument's accuracy is unknown and shares stay uncorrected")
            metrics.update({"status": "unknown", "accuracy": None, "tpr": None, "fpr": None})
        else:
            refs, genders, source = labelled
            images = load_images(refs)
            with timed(f"measuring the instrument on {len(refs)} labelled images ({source})", log):
                metrics.update(evaluate_instrument(instrument, images, genders, classify.abstain_threshold))
            metrics["status"] = "measured"
            metrics["labelled_source"] = source
            test = corpus.filter((pl.col("split") == "test") & pl.col("true_occupation").is_not_null())
            if len(test) and occupations:
                probs = instrument.occupation_probs(load_images(test["image_ref"].to_list()), occupations)
                predicted = np.array(occupations, dtype=object)[probs.argmax(axis=1)]
                metrics["occupation_accuracy"] = float(np.mean(predicted == np.array(test["true_occupation"].to_list(), dtype=object)))
            log.info("instrument on %s: accuracy %s on confident images, abstain rate %s, tpr %s, fpr %s", source,
                     *(f"{metrics[k]:.3f}" if metrics[k] is not None else "n/a"
                       for k in ("accuracy", "abstain_rate", "tpr", "fpr")))
        write_json(args.metrics, metrics)
        run.log_metrics(metrics)


def main(argv: Sequence[str] | None = None) -> int:
    return run_main(main_body, argv, log)


if __name__ == "__main__":
    raise SystemExit(main())
