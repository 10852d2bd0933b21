"""paradox: the bias amplification paradox table for generation 0 (Seshadri et al., 2023).

Amplification of generation 0's images against the training images behind each retrieval selection:
prompt vs. keyword captions, captions-as-prompts vs. keyword, prompt vs. nearest neighbours, and prompt
vs. nearest neighbours without gender indicators; measured, corrected by the instrument's confusion
rates, and (glyph world) against ground truth. Each pairing has the number of images on each side, and
A_abs / A_dir with their noise floor, excess over it (95% interval) and null p-value; captions-as-prompts
is paired by caption id (``n_pairs``). Each pairing's measured shift is split into data (the ideal
learner: the share of women among the selection's captions without a gender indicator), generator and
instrument, with intervals (``ideal``, ``decomposition``); ``instrument_on_generated`` checks the
instrument against the hue oracle on generation 0's images (glyph world).

Every other measured attribute (``attributes`` in params and instrument.json, e.g. tone) gets the same
pairings as K-class tables under ``attributes.<name>`` (:mod:`biasloop.metrics.kclass.attribute`:
measured, corrected by the KxK confusion, truth, decomposition, gender x attribute cells with at least
``evaluate.min_group_size`` training images); gender's keys do not change.

Inputs:   artifacts/label_train/predictions.parquet, artifacts/gen0/label/predictions.parquet,
          metrics/instrument.json, artifacts/retrieve/matches.parquet (caption indicators)
Outputs:  metrics/paradox.json, plots/paradox.csv (one row per pairing and kind: shift, gap, raw A_abs, decomposition),
          plots/paradox_<name>.csv per K-class attribute in params (one row per pairing, kind, occupation and
          class: training and generated shares; a header only when the attribute is not measured),
          plots/paradox_shares.png (share of women per occupation, training vs. generated),
          plots/decomposition.png (each pairing's shift to the majority as data + generator + instrument)
Params:   base, tracking, evaluate, attributes

Example:
    python -m stages.paradox --train-predictions artifacts/label_train/predictions.parquet \\
        --generated artifacts/gen0/label/predictions.parquet --instrument-metrics metrics/instrument.json \\
        --matches artifacts/retrieve/matches.parquet \\
        --out metrics/paradox.json --table plots/paradox.csv --plot plots/paradox_shares.png \\
        --decomposition-plot plots/decomposition.png --attribute-tables plots
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import polars as pl

from biasloop.core.attributes import load_attributes
from biasloop.core.config import to_dict
from biasloop.core.io import atomic_path, write_json
from biasloop.core.stage import load_configs, make_parser, stage_main
from biasloop.core.tracking import stage_run
from biasloop.metrics.amplification import read_confusion
from biasloop.metrics.evaluation import EvaluateConfig, instrument_on_generated
from biasloop.metrics.kclass.attribute import measure_attributes, plot_rows
from biasloop.metrics.paradox import PAIRINGS, paradox_table, table_rows
from biasloop.report.plots import decomposition_figure, share_plot

log = logging.getLogger("paradox")


@stage_main(log)
def main(argv: Sequence[str] | None = None) -> None:
    parser = make_parser(__doc__, "python -m stages.paradox")
    parser.add_argument("--train-predictions", required=True, help="label_train predictions parquet")
    parser.add_argument("--generated", required=True, help="label@0 predictions parquet")
    parser.add_argument("--instrument-metrics", required=True, help="metrics/instrument.json (tpr, fpr)")
    parser.add_argument("--matches", required=True, help="retrieve's matches parquet (caption gender indicators)")
    parser.add_argument("--out", default="metrics/paradox.json", help="paradox table JSON (default: %(default)s)")
    parser.add_argument("--table", default="plots/paradox.csv", help="CSV for dvc plots (default: %(default)s)")
    parser.add_argument("--plot", default="plots/paradox_shares.png", help="share plot PNG (default: %(default)s)")
    parser.add_argument(
        "--decomposition-plot",
        default="plots/decomposition.png",
        help="decomposition figure PNG (default: %(default)s)",
    )
    parser.add_argument(
        "--attribute-tables",
        default="plots",
        help="folder of the K-class attributes' share CSVs, paradox_<name>.csv (default: %(default)s)",
    )
    args = parser.parse_args(argv)
    configs = load_configs(args.params, {"evaluate": EvaluateConfig, "attributes": None})
    config: EvaluateConfig = configs["evaluate"]
    with stage_run("paradox", configs["tracking"], {"evaluate": to_dict(config)}, generation=0) as run:
        confusion = read_confusion(args.instrument_metrics)
        generated, train, matches = (pl.read_parquet(p) for p in (args.generated, args.train_predictions, args.matches))
        paradox = paradox_table(
            train, generated, confusion, n_boot=config.n_boot, seed=configs["base"].seed, matches=matches
        )
        specs = load_attributes(configs)
        attributes = measure_attributes(
            json.loads(Path(args.instrument_metrics).read_text()), specs, train, generated, matches,
            n_boot=config.n_boot, seed=configs["base"].seed, min_cell_size=config.min_group_size,
        )  # fmt: skip
        result = {"confusion": confusion, "pairings": {k: list(v) for k, v in PAIRINGS.items()}, "table": paradox}
        result["instrument_on_generated"] = instrument_on_generated(generated)
        write_json(args.out, {**result, "attributes": attributes} if attributes else result)  # gender's keys as before
        _write_attribute_tables(args.attribute_tables, list(specs), attributes, run)
        rows = table_rows(paradox)
        with atomic_path(args.table) as tmp:
            pl.DataFrame(rows).write_csv(tmp)
        series = {}
        for name, label in (
            ("prompt_vs_keyword", "generated, neutral prompts"),
            ("captions_vs_keyword", "generated, captions as prompts"),
        ):
            measured = paradox[name].get("measured")
            if measured:
                series[label] = measured["per_occupation"]
        if series:
            share_plot(series, args.plot, "Share of women per occupation: training vs. generation 0")
        for row in rows:
            log.info(
                "%-45s shift %s [%s, %s], gap %s [%s, %s], raw A_abs %s",
                row["pairing"],
                *(
                    "n/a" if row[k] is None else f"{100 * row[k]:+.1f} pp"
                    for k in ("shift", "shift_lo", "shift_hi", "gap", "gap_lo", "gap_hi", "a_abs_raw")
                ),
            )
        run.log_metrics(
            {
                f"{r['name']}.{r['kind']}.{key}": r[key]
                for r in rows
                for key in ("shift", "gap", "a_abs_raw")
                if r[key] is not None
            }
        )
        for name, entry in paradox.items():
            terms = entry.get("decomposition") or {}
            if terms.get("available"):
                parts = {k: v["estimate"] for k, v in terms.items() if isinstance(v, dict) and "estimate" in v}
                log.info("%-28s shift %s", name, ", ".join(f"{k} {v * 100:+.1f} pp" for k, v in parts.items()))
                run.log_metrics({f"{name}.decomposition.{k}": v for k, v in parts.items()})
        decomposition_figure(
            {name: entry.get("decomposition") for name, entry in paradox.items()},
            args.decomposition_plot,
            "Generation 0: where each pairing's shift to the training majority comes from",
        )
        run.log_artifact(args.plot)
        run.log_artifact(args.decomposition_plot)


def _write_attribute_tables(folder: str, names: list[str], attributes: dict, run: Any) -> None:
    """``<folder>/paradox_<name>.csv`` per K-class attribute in params (a header only when unmeasured), and
    each measured attribute's headline gap and shift per pairing and kind logged as ``<name>.<pairing>.<kind>.*``."""
    header = {k: [] for k in ("pairing", "kind", "occupation", "class", "p_train", "p_gen")}
    for name in names:
        rows = plot_rows(attributes[name]) if name in attributes else []
        with atomic_path(str(Path(folder) / f"paradox_{name}.csv")) as tmp:
            (pl.DataFrame(rows) if rows else pl.DataFrame(header, schema=dict.fromkeys(header, pl.String))).write_csv(
                tmp
            )
    metrics = {}
    for name, result in attributes.items():
        for pairing, entry in result["pairings"].items():
            for kind in ("measured", "corrected", "truth"):
                values = (entry.get(kind) or {}).get("estimands") or {}
                for estimand in ("gap", "shift"):
                    metrics[f"{name}.{pairing}.{kind}.{estimand}"] = (values.get(estimand) or {}).get("estimate")
            log.info("%s %-28s measured gap %s", name, pairing, metrics.get(f"{name}.{pairing}.measured.gap"))
    run.log_metrics({key: value for key, value in metrics.items() if value is not None})


if __name__ == "__main__":
    raise SystemExit(main())
