"""``biasloop audit --images DIR --prompts FILE --reference REF``: audit images made by any model, no DVC needed.

DIR holds the images and a manifest.csv (prompt_id,file) naming the image of each row of FILE, the export
of `biasloop prompts export` (CSV or JSONL). Each image is labelled by the configured instrument
(--instrument, its label.abstain_threshold from --params; with --instrument-metrics its confusion rates
correct the shares), and the shares of women per occupation are compared with REF:

  counts.csv          occupation,n_female,n_male[,n_abstain]: e.g. the training images' counts
  bls | bls:PATH      the labour force's shares (BLS table; not corrected: not the instrument's labels)
  CORPUS_DIR          an ingested corpus (captions.parquet + image shards, e.g. artifacts/corpus): the
                      captions that mention each occupation (retrieve params), their images labelled by
                      the instrument: the keyword pairings and the decomposition
  predictions.parquet a corpus's classified selections (label_train); with --matches (retrieve's
                      matches.parquet) the captions' gender indicators: every paradox pairing and the
                      decomposition of the shift into data and generator (+ instrument)

Writes OUT/audit.json (fractions), OUT/labels.csv (one row per image), OUT/audit.html (self-contained,
offline: estimands, the per-occupation shares figure, the decomposition where the reference allows it)
and, when tracking.enabled is true in --params, an MLflow run named audit. Bad images (missing, extra,
unreadable, wrong size): an error naming them (exit status 2), or with --on-error skip a recorded skip
(audit.json's images). Details and the round trip for a hosted model or a diffusers checkpoint:
docs/audit.md.
"""

from __future__ import annotations

import argparse


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "audit",
        help="label a folder of images made elsewhere and compare with a reference (JSON + HTML)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--images", required=True, help="folder of images with manifest.csv (prompt_id,file)")
    parser.add_argument("--prompts", required=True, help="the export (biasloop prompts export): .csv or .jsonl")
    parser.add_argument(
        "--reference", required=True, help="counts .csv, bls[:PATH], a corpus folder, or predictions .parquet"
    )
    parser.add_argument("--matches", help="retrieve's matches.parquet (caption indicators; predictions reference)")
    parser.add_argument("--out", default="audit", help="output folder (default: %(default)s)")
    parser.add_argument("--params", default="params.yaml", help="params file (default: %(default)s)")
    parser.add_argument("--instrument", default="artifacts/instrument", help="instrument (default: %(default)s)")
    parser.add_argument(
        "--instrument-metrics", default="metrics/instrument.json", help="its confusion rates (default: %(default)s)"
    )
    parser.add_argument("--image-size", type=int, help="pixels per side (default: the params' generator.image_size)")
    parser.add_argument("--on-error", choices=("error", "skip"), default="error", help="bad images (default: error)")
    parser.add_argument("--n-boot", type=int, default=1000, help="bootstrap replicates (default: %(default)s)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(run=run)


def _instrument_facts(path: str) -> tuple[dict | None, dict | None]:
    """``(confusion for correction, the instrument's stated numbers)`` from its metrics file, or Nones."""
    import json
    from pathlib import Path

    from biasloop.metrics.amplification import read_confusion

    if not Path(path).is_file():
        return None, None
    facts = json.loads(Path(path).read_text())
    keys = ("backend", "accuracy", "tpr", "fpr", "abstain_rate", "n", "threshold", "labelled_source")
    return read_confusion(path), {k: facts.get(k) for k in keys}


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from biasloop.core.config import BaseConfig, TrackingConfig, load_section, read_params, to_dict
    from biasloop.core.tracking import stage_run
    from biasloop.data.retrieval import RetrieveConfig
    from biasloop.loop.export import read_prompts
    from biasloop.models.generators import GeneratorConfig
    from biasloop.models.instrument import LabelConfig, load_cross_fitted
    from biasloop.report.audit import corpus_reference, read_reference, run_audit

    params = read_params(args.params)
    base, labelling = load_section(BaseConfig, "base", params), load_section(LabelConfig, "label", params)
    tracking = load_section(TrackingConfig, "tracking", params)
    image_size = args.image_size or load_section(GeneratorConfig, "generator", params).image_size
    prompts = read_prompts(args.prompts)
    occupations = prompts["occupation"].unique().sort().to_list()
    confusion, instrument = _instrument_facts(args.instrument_metrics)
    cross_fitted = load_cross_fitted(args.instrument)
    if Path(args.reference).is_dir():
        reference = corpus_reference(
            args.reference, occupations, cross_fitted, load_section(RetrieveConfig, "retrieve", params),
            threshold=labelling.abstain_threshold, batch_size=labelling.batch_size,
        )  # fmt: skip
    else:
        reference = read_reference(args.reference, occupations, args.matches)
    logged = {"label": to_dict(labelling), "audit": {"images": args.images, "reference": args.reference}}
    with stage_run("audit", tracking, logged) as mlflow_run:
        result = run_audit(
            args.images, prompts, reference, cross_fitted, args.out, labelling=labelling, image_size=image_size,
            confusion=confusion, instrument=instrument, n_boot=args.n_boot, seed=base.seed,
            on_error=args.on_error, progress=not args.no_progress,
        )  # fmt: skip
        headline = {
            f"{name}.{key}": entry["overall"]["estimands"][key]["estimate"]
            for name, entry in result["pairings"].items()
            for key in ("shift", "gap")
        }
        mlflow_run.log_metrics({**headline, "n_labelled": result["n_labelled"]})
        for name in ("audit.json", "audit.html"):
            mlflow_run.log_artifact(f"{args.out}/{name}")
    for name, value in headline.items():
        print(f"{name}: {100 * value:+.1f} pp" if value is not None else f"{name}: undefined")
    print(f"{args.out}/audit.json, {args.out}/audit.html: {result['n_labelled']} images against {reference.kind}")
    return 0
