"""Aggregate a study's experiments over seeds: per-cell means, spreads, intervals, and trend slopes.

Input: the study's experiments (:func:`biasloop.study.experiments.parse_exp_show`), each with its
``params.yaml`` and its ``metrics/summary.json`` (one ``gen{N}`` dict of headline numbers per
generation). Output: the content of ``metrics/study.json``.

Per (ratio, generation) cell and headline metric, over the seeds whose experiment succeeded and
reported the value (``n``):

- ``mean`` = (1/n) sum_s x_s
- ``sd``   = sqrt(sum_s (x_s - mean)^2 / (n - 1)), the between-seed standard deviation (None for n < 2)
- ``ci``   = mean +- t_{0.975, n-1} * sd / sqrt(n), a 95% t interval over seeds (None for n < 2)

Trends, with seed-clustered intervals. Cells of one seed share random streams (common random numbers:
the same generation-0 models, the same sampling seeds), so they are correlated and the seeds, not the
cells, are the independent units. For each seed the ordinary least-squares slope
``b_s = sum_i (x_i - xbar)(y_i - ybar) / sum_i (x_i - xbar)^2`` is computed over that seed's cells (the
ratios at one generation, or the generations at one ratio); the trend is the mean of the ``b_s`` with
the t interval above over seeds. In a balanced grid the mean of per-seed slopes equals the pooled OLS
slope, and the interval is the cluster-robust one with n_seeds - 1 degrees of freedom: exact for
normal per-seed slopes, and unlike a cluster bootstrap it does not collapse with 3 clusters (which give
only 10 distinct bootstrap resamples). A seed enters a slope only when it has every point of the
slope's axis; the excluded seeds are listed.

Missing, failed or queued cells are listed and never averaged over; a successful experiment without
a metric for a generation is listed too.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import numpy as np

from biasloop.study.experiments import Experiment, latest_by_name
from biasloop.study.grid import RATIO_PARAM, StudyConfig, cell_name

# Headline metrics aggregated per cell: key in metrics/summary.json's gen{N} dicts -> label.
AMPLIFICATION_KEYS = ("excess_abs", "amplification_abs")  # preferred first: excess over the noise floor
METRICS: dict[str, str] = {
    "excess_abs": "excess A_abs over the noise floor",
    "amplification_abs": "A_abs (mean |F_gen - F_train|)",
    "shift_to_majority": "shift towards the majority",
    "generator_occupation_accuracy": "generator occupation accuracy",
    "recall_at_10": "downstream recall@10",
    "recall_at_10_gap": "downstream recall@10 gap",
    "max_skew_at_10": "downstream MaxSkew@10",
    "worst_group_accuracy": "downstream worst-group accuracy",
    "equalized_odds_difference": "downstream equalized-odds difference",
}
DOWNSTREAM_KEYS = ("recall_at_10", "recall_at_10_gap", "max_skew_at_10", "worst_group_accuracy")


def get_dotted(params: dict[str, Any], key: str) -> Any:
    """``params["base"]["seed"]`` for ``key = "base.seed"``; None when a part is missing."""
    value: Any = params
    for part in key.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


def flatten_params(params: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"base": {"seed": 0}}`` -> ``{"base.seed": 0}`` (lists are kept whole, as values)."""
    flat: dict[str, Any] = {}
    for key, value in params.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(flatten_params(value, f"{dotted}."))
        else:
            flat[dotted] = value
    return flat


def unflatten_params(flat: dict[str, Any]) -> dict[str, Any]:
    """Inverse of :func:`flatten_params`."""
    nested: dict[str, Any] = {}
    for dotted, value in flat.items():
        target = nested
        *parents, last = dotted.split(".")
        for part in parents:
            target = target.setdefault(part, {})
        target[last] = value
    return nested


def seed_summary(values: Iterable[float]) -> dict[str, Any]:
    """Mean, between-seed SD (ddof 1), 95% t interval and count of per-seed values (see module doc)."""
    from scipy import stats

    x = np.asarray([float(v) for v in values], dtype=float)
    n = len(x)
    if n == 0:
        return {"mean": None, "sd": None, "ci": None, "n": 0}
    mean = float(x.mean())
    if n < 2:
        return {"mean": mean, "sd": None, "ci": None, "n": 1}
    sd = float(x.std(ddof=1))
    half = float(stats.t.ppf(0.975, n - 1)) * sd / math.sqrt(n)
    return {"mean": mean, "sd": sd, "ci": [mean - half, mean + half], "n": n}


def ols_slope(xs: list[float], ys: list[float]) -> float:
    """Least-squares slope of ``ys`` on ``xs`` (needs two distinct x)."""
    x = np.asarray(xs, dtype=float)
    y = np.asarray(ys, dtype=float)
    dx = x - x.mean()
    return float((dx * (y - y.mean())).sum() / (dx**2).sum())


def clustered_trend(points: dict[int, dict[float, float]], axis: list[float]) -> dict[str, Any]:
    """Mean of per-seed OLS slopes with a t interval over seeds.

    Args:
        points: ``{seed: {x: y}}``.
        axis: the x values every seed must have to enter (the grid's ratios or generations).

    Returns:
        ``{"slope", "sd", "ci", "n", "per_seed": {seed: slope}, "excluded_seeds": [...],
        "excludes_zero"}``; ``excludes_zero`` is True when the interval lies on one side of 0
        (None without an interval).
    """
    per_seed: dict[int, float] = {}
    excluded = []
    for seed in sorted(points):
        values = points[seed]
        if len(axis) < 2 or any(x not in values for x in axis):
            excluded.append(seed)
            continue
        per_seed[seed] = ols_slope(axis, [values[x] for x in axis])
    summary = seed_summary(per_seed.values())
    ci = summary["ci"]
    return {
        "slope": summary["mean"], "sd": summary["sd"], "ci": ci, "n": summary["n"],
        "per_seed": {str(s): b for s, b in per_seed.items()}, "excluded_seeds": excluded,
        "excludes_zero": None if ci is None else bool(ci[0] > 0 or ci[1] < 0),
    }


def _cell_record(exp: Experiment, ratio: float, seed: int, swept: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": exp.name, "ratio": ratio, "seed": seed, "state": exp.state, "rev": exp.rev,
        "baseline_rev": exp.baseline_rev, "baseline_name": exp.baseline_name, "timestamp": exp.timestamp,
        "generations": list(exp.params.get("generations") or []), "swept_params": swept,
        **({"error": exp.error, "log": exp.log} if exp.state == "failed" else {}),
    }


def collect_study(
    experiments: list[Experiment],
    config: StudyConfig,
    names: list[str] | None = None,
) -> dict[str, Any]:
    """Build ``metrics/study.json`` from the experiments of a study.

    Args:
        experiments: every experiment `dvc exp show --json` listed (others are ignored).
        config: the study; its ratios x seeds are the expected grid and its generations the expected
            generations, unless ``names`` is given.
        names: explicit experiment names forming the study (their ratio and seed are read from their
            params); None: the grid's names ``study-<name>-r<ratio>-s<seed>``.

    Returns:
        The study record: ``study`` (config), ``amplification_metric`` (+ ``amplification_note``),
        ``metrics`` (key -> label), ``cells`` (name, ratio, seed, state, git revisions, swept params),
        ``common_params`` (params.yaml shared by every cell: a cell's params are these plus its
        ``swept_params``), ``summary`` (per ratio x generation: mean, sd, ci, n, seeds per metric),
        ``runs`` (per successful cell and generation, the raw values), ``trends`` (per metric:
        ``vs_ratio`` per generation, ``vs_generation`` per ratio), ``headline``, and the problem lists
        ``failed``, ``missing``, ``missing_values``, ``inconsistent``.
    """
    by_name = latest_by_name(experiments)
    swept_keys = [RATIO_PARAM, *config.seed_params]
    if names is None:
        expected = {cell_name(config, r, s): (float(r), int(s)) for r in config.ratios for s in config.seeds}
    else:
        expected = {}
        for name in names:
            exp = by_name.get(name)
            ratio = get_dotted(exp.params, RATIO_PARAM) if exp else None
            seed = get_dotted(exp.params, config.seed_params[0]) if exp else None
            expected[name] = (None if ratio is None else float(ratio), None if seed is None else int(seed))
    generations = list(range(config.generations))

    cells, failed, missing, inconsistent = [], [], [], []
    used: list[tuple[Experiment, float, int]] = []
    for name, (ratio, seed) in expected.items():
        exp = by_name.get(name)
        if exp is None:
            missing.append({"name": name, "ratio": ratio, "seed": seed, "state": "absent"})
            continue
        swept = {key: get_dotted(exp.params, key) for key in swept_keys}
        cells.append(_cell_record(exp, ratio, seed, swept))
        if exp.state == "failed":
            failed.append({"name": name, "ratio": ratio, "seed": seed, "error": exp.error, "log": exp.log,
                           "logs_command": f"dvc queue logs {name}"})
            continue
        if exp.state != "success":
            missing.append({"name": name, "ratio": ratio, "seed": seed, "state": exp.state})
            continue
        actual_ratio, actual_seeds = swept[RATIO_PARAM], [swept[k] for k in config.seed_params]
        if ratio is None or seed is None or actual_ratio is None or float(actual_ratio) != ratio or any(
                v is None or int(v) != seed for v in actual_seeds):
            inconsistent.append(f"{name}: params say {RATIO_PARAM}={actual_ratio}, "
                                f"{', '.join(f'{k}={v}' for k, v in zip(config.seed_params, actual_seeds))}; "
                                f"the name says ratio {ratio}, seed {seed}")
            continue
        used.append((exp, ratio, seed))

    # Cells must differ only by the swept params, and come from one baseline (one code revision).
    common_params: dict[str, Any] = {}
    if used:
        # The study section configures this driver, not the pipeline: a grid extended later (more ratios
        # or seeds) keeps its earlier cells.
        flats = [{k: v for k, v in flatten_params(exp.params).items() if k not in swept_keys and not k.startswith("study.")}
                 for exp, _, _ in used]
        keys = sorted(set().union(*flats))
        differing = [k for k in keys if any(f.get(k, "<absent>") != flats[0].get(k, "<absent>") for f in flats)]
        for key in differing:
            values = sorted({repr(f.get(key, "<absent>")) for f in flats})
            inconsistent.append(f"param {key} differs between cells ({', '.join(values[:4])}); only "
                                f"{', '.join(swept_keys)} may")
        common_params = unflatten_params({k: v for k, v in flats[0].items() if k not in differing})
        baselines = sorted({exp.baseline_rev for exp, _, _ in used})
        if len(baselines) > 1:
            inconsistent.append(f"cells come from {len(baselines)} baseline commits ({', '.join(b[:7] for b in baselines)}): "
                                "their code may differ; collect one baseline with --rev")

    # Which amplification key: excess over the noise floor when every successful cell reports it.
    def has(key: str) -> bool:
        return bool(used) and all(
            key in ((exp.metrics or {}).get(f"gen{g}") or {}) for exp, _, _ in used for g in generations
            if f"gen{g}" in (exp.metrics or {}))

    amplification_key = next((k for k in AMPLIFICATION_KEYS if has(k)), AMPLIFICATION_KEYS[-1])
    note = None
    if amplification_key != AMPLIFICATION_KEYS[0]:
        note = (f"metrics/summary.json of these cells has no {AMPLIFICATION_KEYS[0]} (excess over the noise floor) "
                f"in every generation: the amplification shown is {amplification_key}, which is positive under "
                "pure sampling noise")
    metric_keys = [k for k in METRICS if k != "excess_abs" or amplification_key == "excess_abs"]

    runs, missing_values = [], []
    values: dict[tuple[float, int, str], dict[int, float]] = {}  # (ratio, generation, metric) -> {seed: x}
    for exp, ratio, seed in sorted(used, key=lambda t: (t[1], t[2])):
        for g in generations:
            row_metrics = (exp.metrics or {}).get(f"gen{g}")
            if not isinstance(row_metrics, dict):
                missing_values.append({"name": exp.name, "generation": g, "metric": "*",
                                       "reason": f"no gen{g} in metrics/summary.json"})
                continue
            run = {"name": exp.name, "ratio": ratio, "seed": seed, "generation": g}
            for key in metric_keys:
                value = row_metrics.get(key)
                run[key] = value
                if value is None or (isinstance(value, float) and math.isnan(value)):
                    missing_values.append({"name": exp.name, "generation": g, "metric": key,
                                           "reason": "absent" if key not in row_metrics else "null"})
                    continue
                values.setdefault((ratio, g, key), {})[seed] = float(value)
            runs.append(run)

    ratios = sorted({float(r) for r, _ in expected.values() if r is not None})
    seeds = sorted({int(s) for _, s in expected.values() if s is not None})
    summary = []
    for ratio in ratios:
        for g in generations:
            entry: dict[str, Any] = {"ratio": ratio, "generation": g, "metrics": {}}
            for key in metric_keys:
                by_seed = values.get((ratio, g, key), {})
                entry["metrics"][key] = {**seed_summary(by_seed.values()), "seeds": sorted(by_seed)}
            summary.append(entry)

    trends: dict[str, Any] = {}
    for key in metric_keys:
        vs_ratio = {}
        for g in generations:
            points = {s: {r: values[(r, g, key)][s] for r in ratios if s in values.get((r, g, key), {})} for s in seeds}
            vs_ratio[f"gen{g}"] = clustered_trend(points, ratios)
        vs_generation = {}
        for ratio in ratios:
            points = {s: {float(g): values[(ratio, g, key)][s] for g in generations
                          if s in values.get((ratio, g, key), {})} for s in seeds}
            vs_generation[f"{ratio:g}"] = clustered_trend(points, [float(g) for g in generations])
        trends[key] = {"vs_ratio": vs_ratio, "vs_generation": vs_generation}

    last = generations[-1]
    headline = {
        "metric": amplification_key,
        "slope_vs_ratio_at_last_generation": trends[amplification_key]["vs_ratio"][f"gen{last}"],
        "slope_vs_generation_at_highest_ratio": trends[amplification_key]["vs_generation"][f"{ratios[-1]:g}"] if ratios else None,
        "units": "change in the metric (a fraction; x100 for percentage points) per unit of synthetic_ratio "
                 "(0 -> 1), and per generation",
    }
    return {
        "study": {"name": config.name, "ratios": list(config.ratios), "seeds": list(config.seeds),
                  "seed_params": list(config.seed_params), "generations": config.generations,
                  "experiment_prefix": config.prefix if names is None else None, "names": names},
        "amplification_metric": amplification_key,
        "amplification_note": note,
        "metrics": {k: METRICS[k] for k in metric_keys},
        "n_cells_expected": len(expected),
        "n_cells_used": len(used),
        "cells": cells,
        "common_params": common_params,
        "summary": summary,
        "runs": runs,
        "trends": trends,
        "headline": headline,
        "failed": failed,
        "missing": missing,
        "missing_values": missing_values,
        "inconsistent": inconsistent,
    }


def study_problems(study: dict[str, Any]) -> list[str]:
    """One line per failed, missing or inconsistent cell, and per missing metric value."""
    lines = [f"failed: {f['name']} (ratio {f['ratio']}, seed {f['seed']}); see `{f['logs_command']}`" for f in study["failed"]]
    lines += [f"missing: {m['name']} (ratio {m['ratio']}, seed {m['seed']}): {m['state']}" for m in study["missing"]]
    lines += [f"inconsistent: {line}" for line in study["inconsistent"]]
    lines += [f"missing value: {m['name']} gen{m['generation']} {m['metric']} ({m['reason']})" for m in study["missing_values"]]
    return lines


def summary_rows(study: dict[str, Any]) -> list[dict[str, Any]]:
    """Long rows for ``plots/study_summary.csv``: ratio, generation, metric, mean, sd, ci_lo, ci_hi, n."""
    rows = []
    for entry in study["summary"]:
        for key, s in entry["metrics"].items():
            ci = s["ci"] or [None, None]
            rows.append({"ratio": entry["ratio"], "generation": entry["generation"], "metric": key, "mean": s["mean"],
                         "sd": s["sd"], "ci_lo": ci[0], "ci_hi": ci[1], "n": s["n"]})
    return rows


def trend_rows(study: dict[str, Any]) -> list[dict[str, Any]]:
    """Rows for ``plots/study_trends.csv``: metric, axis, at, slope, sd, ci_lo, ci_hi, n."""
    rows = []
    for key, trend in study["trends"].items():
        for axis, at_key, entries in (("ratio", "generation", trend["vs_ratio"]), ("generation", "ratio", trend["vs_generation"])):
            for at, t in entries.items():
                ci = t["ci"] or [None, None]
                rows.append({"metric": key, "slope_vs": axis, "at": f"{at_key} {at.removeprefix('gen')}",
                             "slope": t["slope"], "sd": t["sd"], "ci_lo": ci[0], "ci_hi": ci[1], "n": t["n"]})
    return rows


# Files `write_study_outputs` writes under the plots folder (the report embeds the PNGs).
FIGURES = {
    "amplification": "study_amplification.png",
    "downstream": "study_downstream.png",
}


def write_study_outputs(study: dict[str, Any], out_json: str, plots_dir: str) -> list[str]:
    """Write ``metrics/study.json``, ``plots/study_{summary,runs,trends}.csv`` and the study figures.

    Returns:
        The paths written.
    """
    from pathlib import Path

    import polars as pl

    from biasloop.core.io import atomic_path, write_json
    from biasloop.report.plots import study_figure

    plots = Path(plots_dir)
    written = []
    for name, rows in (("study_summary.csv", summary_rows(study)), ("study_runs.csv", study["runs"]),
                       ("study_trends.csv", trend_rows(study))):
        path = plots / name
        with atomic_path(path) as tmp:
            pl.DataFrame(rows, infer_schema_length=None).write_csv(tmp)
        written.append(str(path))
    amplification = study["amplification_metric"]
    study_figure(study, [amplification, "shift_to_majority", "generator_occupation_accuracy"],
                 plots / FIGURES["amplification"],
                 f"Study '{study['study']['name']}': {study['metrics'][amplification]} across ratios and generations")
    study_figure(study, list(DOWNSTREAM_KEYS), plots / FIGURES["downstream"],
                 f"Study '{study['study']['name']}': the downstream CLIP retrained on each generation's dataset")
    written += [str(plots / f) for f in FIGURES.values()]
    study = {**study, "figures": {k: str(plots / f) for k, f in FIGURES.items()}}
    write_json(out_json, study)
    written.append(str(out_json))
    return written
