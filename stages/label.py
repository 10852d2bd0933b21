"""label@N: perceived gender and occupation of the images generation N made.

No model of the cross-fitted instrument trained on a generated image: each is labelled by the fold model
a seeded hash of its ``image_ref`` picks, the rule that labelled the held-out images the confusion rates
come from (``biasloop.models.instrument.cross_fitting``). With ``label.num_processes`` above 1 the stage re-runs
itself under ``accelerate launch``; the processes share the image tower's forward passes
(``label_units``: unit u to process u mod P), the main process gathers the embeddings by row, scores
them and writes the output atomically, bit-identical to one process's (:mod:`biasloop.core.distributed`).

When the corpus is the glyph world (``corpus.source: world``), each generated image also gets the
world's ground truth read off its hue, ``oracle_label`` (``biasloop.data.hues.oracle_labels``, from
``world.hue_female`` / ``world.hue_male``): the yardstick of the instrument on generated images and of the
generator term of the decomposition. Another corpus has no oracle: the column is null.

Every other attribute of ``attributes:`` (e.g. ``tone``) is labelled from the same image embeddings
(``biasloop.models.instrument.kclass``): ``<name>_label`` (a class or ``abstain``) and ``<name>_p_<class>``
per class. With ``tone`` among them, ``oracle_tone`` is the glyph world's tone read off each image's
brightness (``biasloop.data.hues.oracle_tones`` with ``world.tone.value_*``; a class or ``abstain``), null
when the corpus is not the glyph world or its world draws no tone (``world.tone.enabled: false``).

Inputs:   artifacts/instrument, artifacts/gen{N}/generate/manifest.parquet (+ image shards)
Outputs:  artifacts/gen{N}/label/predictions.parquet: the manifest's columns (prompt_kind,
          occupation, prompt, seed, image_ref) plus p_female, label, p_occupation (the instrument's
          zero-shot probability of the asked occupation), predicted_occupation, instrument_fold and
          oracle_label (female | male | abstain; null when the corpus is not the glyph world), and per
          K-class attribute <name>_label, <name>_p_<class>... (tone: then oracle_tone)
Params:   base, tracking, occupations, label, attributes, corpus.source, world.hue_female, world.hue_male,
          world.tone.enabled, world.tone.value_light, world.tone.value_medium, world.tone.value_dark

Example:
    python -m stages.label --generation 0 --instrument artifacts/instrument \\
        --manifest artifacts/gen0/generate/manifest.parquet --out artifacts/gen0/label/predictions.parquet
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import polars as pl

from biasloop.core.attributes import AttributeSpec, load_attributes
from biasloop.core.config import to_dict
from biasloop.core.distributed import join_or_relaunch
from biasloop.core.io import load_images, timed, write_parquet
from biasloop.core.runtime import resolve_device
from biasloop.core.stage import load_configs, make_parser, stage_main
from biasloop.core.tracking import stage_run
from biasloop.data.hues import oracle_labels, oracle_tones
from biasloop.data.world import WorldConfig
from biasloop.models.instrument import (
    LabelConfig,
    attribute_columns,
    encode_units,
    label_images,
    label_units,
    load_cross_fitted,
)

log = logging.getLogger("label")


@stage_main(log)
def main(argv: Sequence[str] | None = None) -> None:
    parser = make_parser(__doc__, "python -m stages.label")
    parser.add_argument("--generation", type=int, required=True, help="generation N")
    parser.add_argument("--instrument", default="artifacts/instrument", help="instrument folder")
    parser.add_argument("--manifest", required=True, help="generate@N manifest parquet")
    parser.add_argument("--out", required=True, help="output parquet")
    args = parser.parse_args(argv)
    configs = load_configs(
        args.params,
        {"occupations": None, "label": LabelConfig, "world": WorldConfig, "corpus": None, "attributes": None},
    )
    config: LabelConfig = configs["label"]
    attributes = load_attributes(configs)
    occupations = list(configs["occupations"] or [])
    manifest = pl.read_parquet(args.manifest)
    stray = sorted(set(manifest["occupation"].unique().to_list()) - set(occupations))
    if stray:
        raise ValueError(f"{args.manifest}: occupations {stray} are not in params occupations")

    device = resolve_device(configs["base"].device)
    started = join_or_relaunch("stages.label", argv, config.num_processes, device, configs["tracking"])
    if started is None:
        return
    group, tracking = started

    with stage_run("label", tracking, {"label": to_dict(config)}, generation=args.generation) as run:
        instrument = load_cross_fitted(args.instrument, group.device(device))
        refs = manifest["image_ref"].to_list()
        # the image tower's forward passes are the same units whatever the number of processes: process r
        # encodes units r, r + P, ...; the main process scores every embedding in one call, as one process would
        units = label_units(instrument, refs, config.batch_size)
        mine = units[group.rank :: group.world]
        rows = np.concatenate(mine) if mine else np.zeros(0, dtype=np.int64)
        with timed(
            f"encoding {len(rows)} of {len(manifest)} generated images ({instrument.labels}) "
            f"in process {group.rank} of {group.world}",
            log,
        ):
            vectors = encode_units(instrument, refs, mine, config.batch_size)
        out = Path(args.out)
        vectors = group.gather(out.parent / f".{out.name}.parts", rows, vectors)
        if not group.is_main:
            return
        if len(vectors) != len(manifest):
            raise RuntimeError(f"gathered {len(vectors)} image embeddings for {len(manifest)} images")
        labels = label_images(
            instrument,
            refs,
            config.abstain_threshold,
            batch_size=config.batch_size,
            occupations=occupations,
            asked=manifest["occupation"].to_list(),
            image_vectors=vectors,
        )
        predictions = pl.concat(
            [manifest, labels.select("p_female", "label", "p_occupation", "predicted_occupation", "instrument_fold")],
            how="horizontal",
        )
        oracles = _oracles(refs, configs, attributes)
        predictions = pl.concat(
            [
                predictions.with_columns(pl.Series("oracle_label", oracles["oracle_label"], dtype=pl.String)),
                attribute_columns(instrument, attributes, refs, vectors, config.batch_size),
            ],
            how="horizontal",
        )
        if "oracle_tone" in oracles:
            predictions = predictions.with_columns(pl.Series("oracle_tone", oracles["oracle_tone"], dtype=pl.String))
        write_parquet(args.out, predictions)
        metrics = _metrics(predictions, attributes) | {"num_processes": group.world}
        log.info("generation %d: %s", args.generation, metrics)
        run.log_metrics(metrics)


def _oracles(refs: list[str], configs: dict, attributes: Mapping[str, AttributeSpec]) -> dict[str, list]:
    """The glyph world's ground truth of each image: ``oracle_label`` (hue) and, with a ``tone``
    attribute, ``oracle_tone`` (brightness, when the world draws tone); nulls for another corpus."""
    world: WorldConfig = configs["world"]
    glyph_world = (configs["corpus"] or {}).get("source", "world") == "world"
    images = load_images(refs) if glyph_world and refs else None
    if images is None:
        log.info("corpus.source is not the glyph world: no oracle labels for generated images")
    nulls = [None] * len(refs)
    oracles = {
        "oracle_label": oracle_labels(images, world.hue_female, world.hue_male).tolist()
        if images is not None
        else nulls
    }
    if "tone" in attributes:
        drawn = images is not None and world.tone.enabled
        oracles["oracle_tone"] = oracle_tones(images, world.tone.values).tolist() if drawn else nulls
    return oracles


def _metrics(predictions: pl.DataFrame, attributes: Mapping[str, AttributeSpec]) -> dict:
    """The MLflow metrics of label@N: abstain rates, zero-shot occupation accuracy, agreement with the oracles."""
    neutral = predictions.filter(pl.col("prompt_kind") == "neutral")
    oracle = predictions["oracle_label"].is_not_null().any()
    metrics = {
        "n_images": len(predictions),
        "abstain_rate": float((predictions["label"] == "abstain").mean()),
        "occupation_accuracy_neutral": float((neutral["predicted_occupation"] == neutral["occupation"]).mean())
        if len(neutral)
        else None,
        "oracle_abstain_rate": float((predictions["oracle_label"] == "abstain").mean()) if oracle else None,
        "oracle_agreement": float((predictions["oracle_label"] == predictions["label"]).mean()) if oracle else None,
    }
    for name in attributes:
        metrics[f"{name}.abstain_rate"] = float((predictions[f"{name}_label"] == "abstain").mean())
    if "oracle_tone" in predictions.columns and predictions["oracle_tone"].is_not_null().any():
        metrics["tone.oracle_agreement"] = float((predictions["oracle_tone"] == predictions["tone_label"]).mean())
    return metrics


if __name__ == "__main__":
    raise SystemExit(main())
