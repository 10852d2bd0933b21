"""Write a collected study: ``metrics/studies/<name>.json`` and ``plots/studies/<name>_*`` (CSV rows and PNG)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def interval_rows(study: dict[str, Any]) -> list[dict[str, Any]]:
    """Rows for ``<name>_intervals.csv``: one per primary endpoint, then per secondary interval."""
    rows = []
    for name, record in [*study["endpoints"].items(), *((None, r) for r in study["intervals"])]:
        ci = record.get("ci") or [None, None]
        rows.append(
            {
                "endpoint": name or "",
                "primary": record["primary"],
                "kind": record["kind"],
                "metric": record["metric"],
                "generation": record["generation"],
                "label": record["label"],
                "estimate": record["estimate"],
                "ci_lo": ci[0],
                "ci_hi": ci[1],
                "ci_level": record["ci_level"],
                "adjusted": record["adjusted"],
                "p": record["p"],
                "p_adjusted": record["p_adjusted"],
                "margin": record["margin"],
                "tost_p": record["tost_p"],
                "verdict": record["verdict"],
                "n": record["n"],
            }
        )
    return rows


def summary_rows(study: dict[str, Any]) -> list[dict[str, Any]]:
    """Rows for ``<name>_summary.csv``: cell, generation, metric, mean, sd, n (descriptive: no interval)."""
    return [
        {
            "cell": entry["cell"],
            "generation": entry["generation"],
            "metric": key,
            "mean": s["mean"],
            "sd": s["sd"],
            "n": s["n"],
        }
        for entry in study["summary"]
        for key, s in entry["metrics"].items()
    ]


def study_paths(
    name: str, out_dir: str | Path = "metrics/studies", plots_dir: str | Path = "plots/studies"
) -> dict[str, Path]:
    """Where a study's files go: ``json``, ``summary``, ``runs``, ``intervals`` (CSV) and ``figure``."""
    plots = Path(plots_dir)
    return {
        "json": Path(out_dir) / f"{name}.json",
        "summary": plots / f"{name}_summary.csv",
        "runs": plots / f"{name}_runs.csv",
        "intervals": plots / f"{name}_intervals.csv",
        "figure": plots / f"{name}_intervals.png",
    }


def write_study_outputs(
    study: dict[str, Any], out_dir: str | Path = "metrics/studies", plots_dir: str | Path = "plots/studies"
) -> list[str]:
    """Write the study's JSON, its three CSV files and its figure; returns the paths written."""
    import polars as pl

    from biasloop.core.io import atomic_path, write_json
    from biasloop.report.study_figures import study_intervals_figure

    name = study["study"]["name"]
    paths = study_paths(name, out_dir, plots_dir)
    written = []
    for key, rows in (("summary", summary_rows(study)), ("runs", study["runs"]), ("intervals", interval_rows(study))):
        paths[key].parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(paths[key]) as tmp:
            pl.DataFrame(rows, infer_schema_length=None).write_csv(tmp)
        written.append(str(paths[key]))
    study_intervals_figure(
        study, paths["figure"], f"Study '{name}': {study['n_cells_used']} of {study['n_cells_expected']} experiments"
    )
    written.append(str(paths["figure"]))
    paths["json"].parent.mkdir(parents=True, exist_ok=True)
    write_json(paths["json"], {**study, "figures": {"intervals": str(paths["figure"])}})
    written.append(str(paths["json"]))
    return written
