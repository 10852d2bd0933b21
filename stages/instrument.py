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

Every other attribute of ``attributes:`` (K classes, e.g. ``tone``) is measured the same way on the
held-out split, from the image embeddings gender's measurement computed (the tower runs once per image):
``attributes.<name>`` holds ``classes``, ``confusion`` (K x K counts, rows the true class, columns the
label, confident images only), ``abstained`` (per true class), ``accuracy`` (over confident images),
``abstain_rate``, ``threshold`` (``abstain.min_top_probability``), ``shares`` (each class's share of the
confident labels), ``n``, ``n_confident`` and ``status``; without ``true_<name>`` in the corpus only
``abstain_rate``, ``shares`` and ``n`` (``status: unknown``, no confusion).

Inputs:   artifacts/corpus (captions.parquet + image shards)
Outputs:  artifacts/instrument/ (labeller.json, folds.parquet, fold{k}/{instrument.json,image_tower.pt}),
          metrics/instrument.json (labels, folds, accuracy, abstain_rate, tpr, fpr, confusion, n, per_fold,
          out_of_fold, occupation_accuracy, training_seconds, status, attributes.<name>)
Params:   base, tracking, occupations, instrument, label, attributes

Example:
    python -m stages.instrument --corpus artifacts/corpus/captions.parquet --out artifacts/instrument \\
        --metrics metrics/instrument.json
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import numpy as np
import polars as pl

from biasloop.core.attributes import ABSTAIN, AttributeSpec, load_attributes
from biasloop.core.config import to_dict
from biasloop.core.io import atomic_path, timed, write_json
from biasloop.core.runtime import resolve_device
from biasloop.core.stage import load_configs, make_parser, runtime_facts, stage_main
from biasloop.core.tracking import stage_run
from biasloop.metrics.kclass.correction import confusion_matrix
from biasloop.models.instrument import (
    CrossFittedInstrument,
    InstrumentConfig,
    LabelConfig,
    corpus_split,
    encode_cross_fitted,
    held_out_attribute_labels,
    labelled_set,
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
    configs = load_configs(
        args.params,
        {"occupations": None, "instrument": InstrumentConfig, "label": LabelConfig, "attributes": None},
    )
    config: InstrumentConfig = configs["instrument"]
    labelling: LabelConfig = configs["label"]
    attributes = load_attributes(configs)
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
            measured, measured_attributes = _measure(instrument, corpus, config, labelling, occupations, attributes)
        metrics = {
            "backend": config.backend,
            "labels": instrument.labels,
            "folds": instrument.folds,
            **measured,
            "training_seconds": stats.get("seconds"),
            "threshold": labelling.abstain_threshold,
        }
        if measured_attributes:
            metrics["attributes"] = measured_attributes
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
        for name, entry in measured_attributes.items():
            _log_attribute(name, entry)
        write_json(args.metrics, {**metrics, **runtime_facts()})
        run.log_metrics(metrics)


def _measure(
    instrument: CrossFittedInstrument,
    corpus: pl.DataFrame,
    config: InstrumentConfig,
    labelling: LabelConfig,
    occupations: list[str],
    attributes: Mapping[str, AttributeSpec],
) -> tuple[dict, dict]:
    """Gender's measurement (:func:`measure_cross_fitted`) and each K-class attribute's entry, the
    held-out images encoded once for all."""
    labelled = labelled_set(corpus, config)
    refs = labelled[0] if labelled is not None else []
    known = (refs, encode_cross_fitted(instrument, refs, labelling.batch_size))
    measured = measure_cross_fitted(
        instrument,
        corpus,
        config,
        occupations,
        labelling.abstain_threshold,
        batch_size=labelling.batch_size,
        image_vectors=known[1] if labelled is not None else None,
    )
    per_attribute = {
        name: _attribute_metrics(
            spec, *held_out_attribute_labels(instrument, corpus, name, spec, labelling.batch_size, known)
        )
        for name, spec in attributes.items()
    }
    return measured, per_attribute


def _attribute_metrics(spec: AttributeSpec, truth: list[str] | None, labels: list[str]) -> dict:
    """One K-class attribute's entry of ``metrics/instrument.json`` from its held-out labels and truth
    (the contract in this module's docstring); counts from :func:`confusion_matrix`."""
    label = np.asarray(labels, dtype=object)
    confident = label[label != ABSTAIN]
    entry: dict = {
        "classes": list(spec.classes),
        "status": "unknown",
        "threshold": spec.abstain.min_top_probability,
        "n": len(label),
        "abstain_rate": float(np.mean(label == ABSTAIN)) if len(label) else None,
        "shares": {c: (float(np.mean(confident == c)) if len(confident) else None) for c in spec.classes},
    }
    if truth is None:
        return entry
    confusion = confusion_matrix(truth, labels, spec.classes)
    counted = confusion.to_dict()
    n = counted["n"]
    return entry | {
        "status": "measured",
        "confusion": confusion.counts.tolist(),
        "abstained": confusion.abstained.tolist(),
        "accuracy": counted["accuracy"],
        "abstain_rate": float(confusion.abstained.sum() / n) if n else None,
        "abstain_rate_per_class": counted["abstain_rate"],
        "n": n,
        "n_confident": counted["n_confident"],
    }


def _log_attribute(name: str, measured: dict) -> None:
    if measured["status"] == "unknown":
        log.warning(
            "%s: no ground truth (true_%s) in the held-out split: abstain rate %s, label shares %s (n=%d), "
            "accuracy unknown",
            name,
            name,
            _fmt(measured["abstain_rate"]),
            {c: _fmt(v) for c, v in measured["shares"].items()},
            measured["n"],
        )
        return
    log.info(
        "%s (%s): accuracy %s on confident held-out images, abstain rate %s (n=%d, %d confident), confusion %s",
        name,
        "/".join(measured["classes"]),
        _fmt(measured["accuracy"]),
        _fmt(measured["abstain_rate"]),
        measured["n"],
        measured["n_confident"],
        measured["confusion"],
    )


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


if __name__ == "__main__":
    raise SystemExit(main())
