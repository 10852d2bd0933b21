"""summarize: merge every generation's metrics into the headline, the plot rows and the offline report.

Inputs:   metrics/generations/gen*.json (and captioner_gen*.json, classifier_gen*.json), metrics/paradox.json, metrics/instrument.json,
          metrics/corpus.json, plots/decomposition.png, plots/paradox_shares.png, plots/corpus_contact_sheet.png, params.yaml,
          plots/generated/gen*.png (generate@N's real-beside-generated contact sheets),
          metrics/study.json (`biasloop study collect`; with the plots/study_*.png it wrote beside it;
          committed as a placeholder until a study is collected),
          metrics/studies/<name>.json (`biasloop study collect --name NAME`, with plots/studies/<name>_*.png),
          metrics/acquisition.json (laion_filter's per-occupation acquisition table; {"enabled": false}
          when the LAION path is off)
Outputs:  metrics/headline.json    (the first columns of `dvc exp show`: the last generation's shift [95%],
                                   gap and the shift's decomposition, in pp; see HEADLINE_KEYS; then each
                                   K-class attribute's <name>_shift and <name>_gap)
          metrics/summary.json     (every number, in fractions: what `dvc metrics diff` reads in detail;
                                   the K-class attributes under `attributes`)
          plots/attributes/        (per K-class attribute: <name>.csv, its estimands per generation;
                                   <name>.png, its class distribution per occupation, generation 0)
          plots/amplification.csv, plots/shares.csv, plots/downstream.csv, plots/tasks.csv   (named plots in dvc.yaml)
          plots/generations.png    (curves across generations)
          plots/report.html        (self-contained: figures embedded, opens offline)
          docs/results.md          (the results page the README links to)
Params:   base, tracking, synthetic_ratio, generations, world.seed (the run line of the report and the results
          page); the report's params table copies params.yaml as it stands when summarize runs

Example:
    python -m stages.summarize --generations metrics/generations --paradox metrics/paradox.json \\
        --instrument-metrics metrics/instrument.json --corpus-metrics metrics/corpus.json \\
        --out metrics/summary.json --headline metrics/headline.json --plots plots --report plots/report.html --results docs/results.md \\
        --generated-sheets plots/generated --study metrics/study.json --studies metrics/studies \\
        --acquisition metrics/acquisition.json --attributes plots/attributes
"""

from __future__ import annotations

import argparse
import json
import logging
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import polars as pl

from biasloop.core.config import read_params
from biasloop.core.io import atomic_path, write_json
from biasloop.core.stage import load_configs, make_parser, stage_main
from biasloop.core.tracking import stage_run
from biasloop.report.attribute_figures import class_distribution_plot
from biasloop.report.attributes import (
    attribute_headline,
    attribute_rows,
    attribute_section,
    attribute_summary,
    distribution_rows,
    plot_rows,
)
from biasloop.report.html import render_report
from biasloop.report.markdown import results_markdown
from biasloop.report.plots import generation_curves
from biasloop.report.study_html import named_study_section
from biasloop.report.summary import TASK_COLUMNS, build_summary, load_json, share_rows, summary_row, task_row

log = logging.getLogger("summarize")

# plots/amplification.csv: per generation, the headline estimands and the shift's decomposition (fractions).
AMPLIFICATION_COLUMNS = (
    "generation",
    "shift",
    "shift_lo",
    "shift_hi",
    "gap",
    "gap_lo",
    "gap_hi",
    "a_abs_raw",
    "data",
    "generator",
    "instrument",
    "noise_floor_abs",
    "excess_abs",
)


# metrics/headline.json, in this order: the keys `dvc exp show` prints first. With the Experiment column
# (an auto-named experiment is 24 characters wide) and synthetic_ratio they fill the 120 columns
# (tests/test_exp_show.py), so the generator's accuracy and the downstream numbers stay in summary.json.
# The data term is ``data_term``: a column ``data`` would be taken by the data/ dependency's hash.
HEADLINE_KEYS = ("shift", "shift_lo", "shift_hi", "gap", "data_term", "generator", "instrument")
HEADLINE_SOURCE = {"data_term": "data"}  # headline key -> summary row key, where they differ


# logged to MLflow per generation (step = generation), fractions
SERIES_KEYS = (
    "shift",
    "shift_lo",
    "shift_hi",
    "gap",
    "data",
    "generator",
    "instrument",
    "generator_occupation_accuracy",
    "recall_at_10_gap",
    "classifier_accuracy_gap",
)


def headline_metrics(rows: list[dict]) -> dict[str, float | None]:
    """``metrics/headline.json``: the last generation's headline pairing (neutral prompt vs. keyword
    captions) in percentage points, rounded to 0.1 pp (the intervals are about 2 pp wide).

    ``shift`` to the training majority with its 95% interval (``shift_lo``, ``shift_hi``), the noise-free
    ``gap`` (mean |p_gen - p_train|), and the shift's decomposition ``data_term + generator + instrument``
    (docs/estimands.md). A term is None when the decomposition is unavailable (no ground truth, or a
    world too small for it); summary.json keeps every number, with intervals, in fractions.
    """
    last = max(rows, key=lambda row: row["generation"]) if rows else {}
    values = {key: last.get(HEADLINE_SOURCE.get(key, key)) for key in HEADLINE_KEYS}
    return {key: None if value is None else round(100 * value, 1) for key, value in values.items()}


def _write_csv(rows: list[dict], path: Path) -> None:
    with atomic_path(path) as tmp:
        pl.DataFrame(rows, infer_schema_length=None).write_csv(tmp)


@stage_main(log)
def main(argv: Sequence[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    configs = load_configs(args.params, {})
    params = read_params(args.params)

    generation_metrics, rows = _generation_rows(Path(args.generations), params)
    paradox, instrument = load_json(args.paradox), load_json(args.instrument_metrics)
    study = load_json(args.study) if args.study else None
    studies = [json.loads(p.read_text()) for p in sorted(Path(args.studies).glob("*.json"))] if args.studies else []
    acquisition = None
    if args.acquisition:
        acquisition = load_json(args.acquisition)
        if acquisition is None:
            raise FileNotFoundError(
                f"{args.acquisition}: not found (laion_filter writes it, "
                '{"enabled": false} when the LAION path is off)'
            )

    with stage_run("summarize", configs["tracking"], {"synthetic_ratio": params.get("synthetic_ratio")}) as run:
        summary = build_summary(rows, paradox, instrument)
        by_attribute = attribute_rows(generation_metrics)
        if by_attribute:
            summary["attributes"] = attribute_summary(by_attribute, paradox, instrument)
        # the torch thread counts the numbers were computed with (one count unless base.cpu_threads is auto)
        threads = sorted({m["cpu_threads"] for m in [instrument, *generation_metrics] if m and "cpu_threads" in m})
        summary["cpu_threads"] = threads[0] if len(threads) == 1 else (threads or None)
        write_json(args.out, summary)
        headline = {**headline_metrics(rows), **attribute_headline(by_attribute)}
        write_json(args.headline, headline)
        plots = Path(args.plots)
        _write_plot_tables(rows, generation_metrics, plots)
        attribute_plots = Path(args.attributes)
        attribute_plots.mkdir(parents=True, exist_ok=True)
        for name in by_attribute:
            _write_csv(plot_rows({name: by_attribute[name]}), attribute_plots / f"{name}.csv")
        sections = {
            name: attribute_section(name, name_rows, instrument, _attribute_figure(paradox, name, attribute_plots))
            for name, name_rows in by_attribute.items()
        }
        ratio = params.get("synthetic_ratio")
        generation_curves(
            rows,
            plots / "generations.png",
            f"Across generations (synthetic_ratio = {ratio}; generation 0 trained on real data)",
        )
        render_report(
            args.report,
            rows,
            paradox,
            instrument,
            params,
            {
                "Where the amplification comes from (generation 0)": plots / "decomposition.png",
                "Share of women per occupation, training vs. generation 0": plots / "paradox_shares.png",
                "Across generations": plots / "generations.png",
                "The corpus": plots / "corpus_contact_sheet.png",
                **{
                    f"Generation {r['generation']}: real beside generated images": Path(args.generated_sheets)
                    / f"gen{r['generation']}.png"
                    for r in rows
                },
            },
            study=study,
            acquisition=acquisition,
            study_sections=[named_study_section(s) for s in studies],
            attribute_sections=sections,
        )
        with atomic_path(args.results) as tmp:
            tmp.write_text(results_markdown(paradox, rows, params, studies, by_attribute), encoding="utf-8")
        log.info("summary of %d generations -> %s; report -> %s", len(rows), args.out, args.report)
        run.log_metrics(summary)
        # curves against generation, in this run and on the pipeline's parent run (its row in `mlflow ui`)
        for row in rows:
            run.log_metrics({key: row.get(key) for key in SERIES_KEYS}, step=row["generation"], pipeline=True)
        run.log_metrics({"headline_pp": headline}, pipeline=True)
        run.log_artifact(args.out)
        run.log_artifact(args.report)


def _parser() -> argparse.ArgumentParser:
    parser = make_parser(__doc__, "python -m stages.summarize")
    parser.add_argument("--generations", default="metrics/generations", help="folder of gen{N}.json files")
    parser.add_argument("--paradox", default="metrics/paradox.json", help="paradox table JSON")
    parser.add_argument("--instrument-metrics", default="metrics/instrument.json", help="instrument metrics JSON")
    parser.add_argument("--corpus-metrics", default="metrics/corpus.json", help="corpus metrics JSON")
    parser.add_argument("--out", default="metrics/summary.json", help="summary JSON (default: %(default)s)")
    parser.add_argument(
        "--headline",
        default="metrics/headline.json",
        help="short headline JSON, the first columns of `dvc exp show` (default: %(default)s)",
    )
    parser.add_argument("--plots", default="plots", help="folder for plot CSVs and PNGs (default: %(default)s)")
    parser.add_argument("--report", default="plots/report.html", help="HTML report (default: %(default)s)")
    parser.add_argument(
        "--attributes",
        default="plots/attributes",
        help="folder for each K-class attribute's <name>.csv (per generation) and <name>.png (default: %(default)s)",
    )
    parser.add_argument(
        "--generated-sheets",
        default="plots/generated",
        help="folder of gen{N}.png contact sheets written by generate@N (default: %(default)s)",
    )
    parser.add_argument(
        "--results",
        default="docs/results.md",
        help="results page in Markdown, generated from these metrics (default: %(default)s)",
    )
    parser.add_argument("--study", help="metrics/study.json of `biasloop study collect`: adds a Study section")
    parser.add_argument(
        "--studies", help="metrics/studies of `biasloop study collect --name NAME`: a section per <name>.json"
    )
    parser.add_argument(
        "--acquisition",
        help="metrics/acquisition.json of laion_filter: adds the LAION acquisition "
        "table (one line when the LAION path is off)",
    )
    return parser


def _generation_rows(folder: Path, params: dict[str, Any]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The ``gen{N}.json`` metrics of the generations params.yaml lists, in order, and one summary row per
    generation (with its captioner and classifier metrics)."""
    files = sorted(folder.glob("gen*.json"), key=lambda p: int(re.sub(r"\D", "", p.stem) or 0))
    if not files:
        raise FileNotFoundError(f"{folder}: no gen*.json metrics files")
    # Only the generations params.yaml lists: a stale file from a longer run must not leak in.
    wanted = {int(g) for g in params.get("generations", [])}
    generation_metrics = [
        m for m in (json.loads(f.read_text()) for f in files) if not wanted or m["generation"] in wanted
    ]
    rows = [
        {
            **summary_row(m),
            **task_row(
                load_json(folder / f"captioner_gen{m['generation']}.json"),
                load_json(folder / f"classifier_gen{m['generation']}.json"),
            ),
        }
        for m in generation_metrics
    ]
    return generation_metrics, rows


def _attribute_figure(paradox: dict[str, Any] | None, name: str, plots: Path) -> Path | None:
    """``<plots>/<name>.png``: generation 0's class distribution per occupation (None without data)."""
    classes, rows = distribution_rows(paradox, name)
    if not rows:
        return None
    path = plots / f"{name}.png"
    series = [("train", "training (labels)"), ("gen", "generated (labels)")]
    if any(r["true_train"] for r in rows):
        series += [("true_train", "training (truth)"), ("oracle_gen", "generated (oracle)")]
    class_distribution_plot(
        rows,
        classes,
        path,
        f"{name.capitalize()} per occupation, generation 0 (neutral prompt vs. keyword captions)",
        series,
    )
    return path


def _write_plot_tables(rows: list[dict[str, Any]], generation_metrics: list[dict[str, Any]], plots: Path) -> None:
    """The CSVs ``dvc plots`` reads: amplification, shares, downstream and tasks per generation."""
    _write_csv([{k: r.get(k) for k in AMPLIFICATION_COLUMNS} for r in rows], plots / "amplification.csv")
    _write_csv(share_rows(generation_metrics), plots / "shares.csv")
    _write_csv(
        [
            {
                k: r.get(k)
                for k in (
                    "generation",
                    "recall_at_10",
                    "recall_at_10_gap",
                    "max_skew_vs_training",
                    "worst_group_accuracy",
                )
            }
            for r in rows
        ],
        plots / "downstream.csv",
    )
    _write_csv(
        [{"generation": r["generation"], **{key: r.get(key) for key, _, _ in TASK_COLUMNS}} for r in rows],
        plots / "tasks.csv",
    )


if __name__ == "__main__":
    raise SystemExit(main())
