"""Aggregate a study's experiments over seeds: per-cell summaries, primary endpoints, Holm-adjusted intervals.

Input: the study's experiments (:func:`biasloop.study.experiments.parse_exp_show`), each with its
``params.yaml`` and its ``metrics/summary.json``. Each metric is read by a dotted key path
(``study.metrics``: ``gen{gen}.generator | headline.generator``, first the path every cell reports), so
the pipeline's key names plug in without code changes. Output: the content of
``metrics/studies/<name>.json``.

Seeds are the independent units (cells of one seed share the corpus draw and random streams: common
random numbers), so every interval is a t interval over seed-level values (:mod:`biasloop.study.inference`):

- a **level**: the metric in one cell at one generation, one value per seed;
- a **slope**: per seed, the least-squares slope ``b_s = sum_i (x_i - xbar)(y_i - ybar) / sum_i (x_i -
  xbar)^2`` over the cells of a line (one axis varying, the others fixed; or the generations of a cell);
  a seed enters only with every point of the line. In a balanced grid the mean of the ``b_s`` is the
  pooled OLS slope and its t interval is the cluster-robust one with ``n_seeds - 1`` degrees of freedom;
- a **contrast**: per seed, one cell minus another (paired by seed).

The study's pre-declared primary endpoints (``studies.<name>.endpoints``) get plain ``1 - alpha``
intervals; every other interval (``secondary``: levels of every cell, slopes along every numeric axis and
across generations, contrasts of every variant or non-numeric value with the first) is Holm-adjusted in
one family. Every interval carries its estimate, interval and level, whether it is adjusted, p (and the
adjusted p), the TOST p when a margin is declared, and a verdict: ``effect``, ``equivalent within ±m``
or ``not resolved``.

Missing, failed or queued cells are listed and never averaged over; a successful experiment without a
value is listed too.
"""

from __future__ import annotations

import itertools
import math
from typing import Any

import numpy as np

from biasloop.study.config import GENERATION, VARIANT, EndpointConfig, StudyConfig, lookup, same_value
from biasloop.study.experiments import Experiment, latest_by_name
from biasloop.study.grid import Cell, cell_label, grid_points, matches, study_cells
from biasloop.study.inference import adjust_family, primary_record, t_interval


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


def ols_slope(xs: list[float], ys: list[float]) -> float:
    """Least-squares slope of ``ys`` on ``xs`` (needs two distinct x)."""
    x = np.asarray(xs, dtype=float)
    y = np.asarray(ys, dtype=float)
    dx = x - x.mean()
    return float((dx * (y - y.mean())).sum() / (dx**2).sum())


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(float(value)):
        return None
    return float(value)


def read_metric(metrics: dict[str, Any] | None, template: str, generation: int) -> float | None:
    """The number at ``template`` (``{gen}`` -> ``generation``) in a summary.json, or None.

    A path without ``{gen}`` (``headline.generator``) is generation 0's: None for later generations.
    """
    if "{gen}" not in template and generation != 0:
        return None
    return _number(lookup(metrics or {}, template.format(gen=generation)))


def _is_numeric_axis(config: StudyConfig, axis: str) -> bool:
    return axis != VARIANT and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) for v in config.axis_values(axis)
    )


class _Values:
    """Seed-level values: (cell label, generation, metric) -> {seed: value}, and each label's coords."""

    def __init__(self, config: StudyConfig) -> None:
        self.config = config
        self.by_key: dict[tuple[str, int, str], dict[int, float]] = {}

    def get(self, coords: dict[str, Any], generation: int, metric: str) -> dict[int, float]:
        return self.by_key.get((cell_label(self.config, coords), generation, metric), {})

    def level(self, coords, generation, metric) -> tuple[dict[int, float], list[int]]:
        return dict(sorted(self.get(coords, generation, metric).items())), []

    def slope(self, line: list[tuple[float, dict[str, Any], int]], metric: str) -> tuple[dict[int, float], list[int]]:
        """Per-seed slopes over ``line`` = [(x, coords, generation)]; seeds missing a point are excluded."""
        points = [self.get(coords, g, metric) for _, coords, g in line]
        seeds = sorted(set().union(*points)) if points else []
        per_seed, excluded = {}, []
        for seed in seeds:
            if len(line) < 2 or any(seed not in p for p in points):
                excluded.append(seed)
                continue
            per_seed[seed] = ols_slope([x for x, _, _ in line], [p[seed] for p in points])
        return per_seed, excluded

    def contrast(self, first, second, generation, metric) -> tuple[dict[int, float], list[int]]:
        a, b = self.get(first, generation, metric), self.get(second, generation, metric)
        both = sorted(set(a) & set(b))
        return {s: a[s] - b[s] for s in both}, sorted(set(a) ^ set(b))


def _describe(
    metric: str,
    generation: int | None,
    kind: str,
    at: dict[str, Any],
    slope_vs: str | None = None,
    minus: dict[str, Any] | None = None,
) -> str:
    where = ", ".join(f"{k}={v}" for k, v in at.items())
    gen = "" if generation is None else f" at generation {generation}"
    if kind == "slope":
        text = f"slope of {metric} vs {slope_vs}{gen}"
    elif kind == "contrast":
        text = f"{metric}{gen}: ({where}) minus ({', '.join(f'{k}={v}' for k, v in (minus or {}).items())})"
        return text
    else:
        text = f"{metric}{gen}"
    return f"{text} ({where})" if where else text


def _record(
    kind: str,
    metric: str,
    generation: int | None,
    at: dict[str, Any],
    per_seed: dict[int, float],
    excluded: list[int],
    *,
    slope_vs: str | None = None,
    minus: dict[str, Any] | None = None,
) -> dict[str, Any]:
    return {
        "kind": kind,
        "metric": metric,
        "generation": generation,
        "at": at,
        "slope_vs": slope_vs,
        "minus": minus,
        "seeds": sorted(per_seed),
        "excluded_seeds": excluded,
        "label": _describe(metric, generation, kind, at, slope_vs, minus),
    }


def _signature(
    kind: str,
    metric: str,
    generation: int | None,
    at: dict[str, Any],
    slope_vs: str | None,
    minus: dict[str, Any] | None,
) -> tuple:
    """What an interval estimates (secondary intervals that repeat a primary endpoint are left out)."""
    return (
        kind,
        metric,
        generation,
        slope_vs,
        tuple(sorted((k, repr(v)) for k, v in at.items())),
        tuple(sorted((k, repr(v)) for k, v in (minus or {}).items())),
    )


def _endpoint_values(config: StudyConfig, values: _Values, endpoint: EndpointConfig):
    """(kind, per-seed values, excluded seeds, at, generation) of a primary endpoint."""
    points = [p for p in grid_points(config) if matches(p, endpoint.at)]
    if endpoint.slope_vs == GENERATION:
        line = [(float(g), points[0], g) for g in range(config.generations)]
        return ("slope", *values.slope(line, endpoint.metric), dict(points[0]), None)
    if endpoint.slope_vs is not None:
        line = sorted(((float(p[endpoint.slope_vs]), p, endpoint.generation) for p in points), key=lambda t: t[0])
        at = {k: v for k, v in points[0].items() if k != endpoint.slope_vs}
        return ("slope", *values.slope(line, endpoint.metric), at, endpoint.generation)
    if endpoint.minus is not None:
        second = next(p for p in grid_points(config) if matches(p, {**endpoint.at, **endpoint.minus}))
        return (
            "contrast",
            *values.contrast(points[0], second, endpoint.generation, endpoint.metric),
            dict(points[0]),
            endpoint.generation,
        )
    return (
        "level",
        *values.level(points[0], endpoint.generation, endpoint.metric),
        dict(points[0]),
        endpoint.generation,
    )


def _secondary(config: StudyConfig, values: _Values, metrics: list[str]) -> list[dict[str, Any]]:
    """Every secondary interval's record (before the Holm adjustment), per ``studies.<name>.secondary``."""
    records = []
    axes = config.axis_names()
    generations = list(range(config.generations))
    kinds = set(config.spec.secondary)
    for metric, g in itertools.product(metrics, generations):
        margin = config.spec.margins.get(metric)
        if "levels" in kinds:
            for point in grid_points(config):
                per_seed, excluded = values.level(point, g, metric)
                records.append(
                    {**_record("level", metric, g, point, per_seed, excluded), "margin": margin, "per_seed": per_seed}
                )
        for axis in axes:
            others = [a for a in axes if a != axis]
            if len(config.axis_values(axis)) < 2:
                continue
            for fixed in itertools.product(*(config.axis_values(a) for a in others)):
                at = dict(zip(others, fixed))
                line_points = [p for p in grid_points(config) if matches(p, at)]
                if _is_numeric_axis(config, axis) and "slopes" in kinds:
                    line = sorted(((float(p[axis]), p, g) for p in line_points), key=lambda t: t[0])
                    per_seed, excluded = values.slope(line, metric)
                    records.append(
                        {
                            **_record("slope", metric, g, at, per_seed, excluded, slope_vs=axis),
                            "margin": margin,
                            "per_seed": per_seed,
                        }
                    )
                elif not _is_numeric_axis(config, axis) and "contrasts" in kinds:
                    first = line_points[0]
                    for point in line_points[1:]:
                        per_seed, excluded = values.contrast(point, first, g, metric)
                        records.append(
                            {
                                **_record("contrast", metric, g, point, per_seed, excluded, minus={axis: first[axis]}),
                                "margin": margin,
                                "per_seed": per_seed,
                            }
                        )
    if "slopes" in kinds and len(generations) > 1:
        for metric, point in itertools.product(metrics, grid_points(config)):
            line = [(float(g), point, g) for g in generations]
            per_seed, excluded = values.slope(line, metric)
            records.append(
                {
                    **_record("slope", metric, None, point, per_seed, excluded, slope_vs=GENERATION),
                    "margin": config.spec.margins.get(metric),
                    "per_seed": per_seed,
                }
            )
    return records


def _resolve_metric_paths(
    config: StudyConfig, used: list[tuple[Experiment, Cell]]
) -> tuple[dict[str, str | None], list[str]]:
    """Metric -> the key path read (the first every cell reports in every generation, else the most
    reported one), and a note per metric read from a fallback or not found."""
    chosen, notes = {}, []
    generations = range(config.generations)
    for metric in config.spec.metrics:
        candidates = config.metric_paths(metric)
        coverage = [
            sum(read_metric(exp.metrics, path, g) is not None for exp, _ in used for g in generations)
            for path in candidates
        ]
        full = len(used) * config.generations
        best = next((i for i, c in enumerate(coverage) if c == full and full), None)
        if best is None:
            best = max(range(len(candidates)), key=lambda i: (coverage[i], -i)) if any(coverage) else None
        chosen[metric] = None if best is None else candidates[best]
        if best is None:
            notes.append(f"{metric}: none of {', '.join(candidates)} is in any cell's metrics/summary.json")
        elif best > 0:
            notes.append(f"{metric}: read from {candidates[best]} ({', '.join(candidates[:best])} absent)")
    return chosen, notes


def _expected_cells(config: StudyConfig, names: list[str] | None, by_name: dict[str, Experiment]) -> list[Cell]:
    if names is None:
        return study_cells(config)
    cells = []
    for name in names:  # explicit experiments: their cell and seed are read from their params
        exp = by_name.get(name)
        params = exp.params if exp else {}
        point = next(
            (
                p
                for p in grid_points(config)
                if all(same_value(lookup(params, path), value) for path, value in _setting(config, p).items())
            ),
            None,
        )
        seed = lookup(params, config.seed_params[0])
        coords = tuple((point or {}).items())
        cells.append(
            Cell(
                name,
                cell_label(config, point) if point else "?",
                coords,
                tuple(_setting(config, point).items()) if point else (),
                -1 if seed is None else int(seed),
            )
        )
    return cells


def _setting(config: StudyConfig, point: dict[str, Any]) -> dict[str, Any]:
    from biasloop.study.grid import cell_setting

    return cell_setting(config, point)


def collect_study(experiments: list[Experiment], config: StudyConfig, names: list[str] | None = None) -> dict[str, Any]:
    """Build ``metrics/studies/<name>.json`` from the experiments of a study.

    Args:
        experiments: every experiment `dvc exp show --json` listed (others are ignored).
        config: the study; its cells x seeds are the expected experiments unless ``names`` is given.
        names: explicit experiment names forming the study (cell and seed read from their params).

    Returns:
        The study record: ``study`` (its definition), ``metric_paths`` (metric -> key path read) and
        ``notes``, ``cells`` (per experiment: name, cell, seed, state, revisions), ``common_params``,
        ``summary`` (per cell and generation: coords and per metric mean, sd, n, seeds), ``runs`` (raw
        values per experiment and generation), ``endpoints`` (primary, by name), ``intervals``
        (secondary, Holm-adjusted), ``family_size``, ``alpha``, and the problem lists ``failed``,
        ``missing``, ``missing_values``, ``inconsistent``.
    """
    by_name = latest_by_name(experiments)
    expected = _expected_cells(config, names, by_name)
    swept_paths = sorted({p for c in expected for p, _ in c.setting} | set(config.seed_params))
    cells, failed, missing, inconsistent = [], [], [], []
    used: list[tuple[Experiment, Cell]] = []
    for cell in expected:
        exp = by_name.get(cell.name)
        base = {"name": cell.name, "cell": cell.label, "seed": cell.seed}
        if exp is None:
            missing.append({**base, "state": "absent"})
            continue
        cells.append(
            {
                **base,
                "coords": dict(cell.coords),
                "state": exp.state,
                "rev": exp.rev,
                "baseline_rev": exp.baseline_rev,
                "baseline_name": exp.baseline_name,
                "timestamp": exp.timestamp,
                "generations": list(exp.params.get("generations") or []),
                "swept_params": {p: lookup(exp.params, p) for p in swept_paths},
            }
        )
        if exp.state == "failed":
            failed.append({**base, "error": exp.error, "log": exp.log, "logs_command": f"dvc queue logs {cell.name}"})
            continue
        if exp.state != "success":
            missing.append({**base, "state": exp.state})
            continue
        wrong = [
            f"{p}={lookup(exp.params, p)!r} (expected {v!r})"
            for p, v in cell.setting
            if not same_value(lookup(exp.params, p), v)
        ]
        wrong += [
            f"{p}={lookup(exp.params, p)!r} (expected seed {cell.seed})"
            for p in config.seed_params
            if lookup(exp.params, p) is None or lookup(exp.params, p) != cell.seed
        ]
        if not cell.coords or wrong:
            inconsistent.append(f"{cell.name}: params say {', '.join(wrong) or 'no cell of this study'}")
            continue
        used.append((exp, cell))

    common_params: dict[str, Any] = {}
    if used:
        # The study sections configure this driver, not the pipeline: a grid extended later keeps its cells.
        flats = [
            {
                k: v
                for k, v in flatten_params(exp.params).items()
                if k not in swept_paths and not k.startswith(("study.", "studies."))
            }
            for exp, _ in used
        ]
        keys = sorted(set().union(*flats))
        differing = [k for k in keys if any(f.get(k, "<absent>") != flats[0].get(k, "<absent>") for f in flats)]
        for key in differing:
            shown = sorted({repr(f.get(key, "<absent>")) for f in flats})
            inconsistent.append(
                f"param {key} differs between cells ({', '.join(shown[:4])}); only {', '.join(swept_paths)} may"
            )
        common_params = unflatten_params({k: v for k, v in flats[0].items() if k not in differing})
        baselines = sorted({exp.baseline_rev for exp, _ in used})
        if len(baselines) > 1:
            inconsistent.append(
                f"cells come from {len(baselines)} baseline commits ({', '.join(b[:7] for b in baselines)}): "
                "their code may differ; collect one baseline with --rev"
            )

    metric_paths, notes = _resolve_metric_paths(config, used)
    metrics = [m for m in config.spec.metrics if metric_paths[m] is not None]
    values = _Values(config)
    runs, missing_values = [], []
    for exp, cell in used:
        for g in range(config.generations):
            run = {"name": exp.name, "cell": cell.label, "seed": cell.seed, "generation": g}
            for metric in metrics:
                path = metric_paths[metric].format(gen=g)
                value = read_metric(exp.metrics, metric_paths[metric], g)
                run[metric] = value
                if value is None:
                    missing_values.append({"name": exp.name, "generation": g, "metric": metric, "path": path})
                    continue
                values.by_key.setdefault((cell.label, g, metric), {})[cell.seed] = value
            runs.append(run)

    summary = []
    for point, g in itertools.product(grid_points(config), range(config.generations)):
        entry = {"cell": cell_label(config, point), "coords": point, "generation": g, "metrics": {}}
        for metric in metrics:
            by_seed = values.get(point, g, metric)
            stats = t_interval(by_seed.values(), config.alpha)
            entry["metrics"][metric] = {
                "mean": stats["estimate"],
                "sd": stats["sd"],
                "n": stats["n"],
                "seeds": sorted(by_seed),
            }
        summary.append(entry)

    endpoints, primary_signatures = {}, set()
    for endpoint_name, endpoint in config.spec.endpoints.items():
        kind, per_seed, excluded, at, generation = _endpoint_values(config, values, endpoint)
        slope_vs = endpoint.slope_vs
        minus = dict(endpoint.minus) if endpoint.minus is not None else None
        primary_signatures.add(_signature(kind, endpoint.metric, generation, at, slope_vs, minus))
        record = _record(kind, endpoint.metric, generation, at, per_seed, excluded, slope_vs=slope_vs, minus=minus)
        if endpoint.metric not in metrics:
            record["note"] = f"metric {endpoint.metric} not found in any cell"
        endpoints[endpoint_name] = {
            **record,
            "primary": True,
            "metric_path": metric_paths.get(endpoint.metric),
            **primary_record(list(per_seed.values()), config.alpha, endpoint.margin),
        }
    secondary = [
        r
        for r in _secondary(config, values, metrics)
        if _signature(r["kind"], r["metric"], r["generation"], r["at"], r["slope_vs"], r["minus"])
        not in primary_signatures
    ]
    for record in secondary:
        per_seed = record.pop("per_seed")
        record.update(t_interval(per_seed.values(), config.alpha))
        record["values"] = list(per_seed.values())
    adjust_family(secondary, config.alpha)
    for record in secondary:
        record["primary"] = False
        record["metric_path"] = metric_paths.get(record["metric"])

    return {
        "study": _definition(config),
        "alpha": config.alpha,
        "metric_paths": metric_paths,
        "notes": notes,
        "n_cells_expected": len(expected),
        "n_cells_used": len(used),
        "cells": cells,
        "common_params": common_params,
        "summary": summary,
        "runs": runs,
        "endpoints": endpoints,
        "intervals": secondary,
        "family_size": sum(r["p"] is not None for r in secondary),
        "failed": failed,
        "missing": missing,
        "missing_values": missing_values,
        "inconsistent": inconsistent,
    }


def _definition(config: StudyConfig) -> dict[str, Any]:
    from biasloop.core.config import to_dict

    spec = to_dict(config.spec)
    return {
        "name": config.name,
        **spec,
        "seed_params": list(config.seed_params),
        "alpha": config.alpha,
        "experiment_prefix": config.prefix,
        "n_cells": len(grid_points(config)),
    }


def study_problems(study: dict[str, Any]) -> list[str]:
    """One line per failed, missing or inconsistent cell, and per missing metric value."""
    lines = [
        f"failed: {f['name']} (cell {f['cell']}, seed {f['seed']}); see `{f['logs_command']}`" for f in study["failed"]
    ]
    lines += [f"missing: {m['name']} (cell {m['cell']}, seed {m['seed']}): {m['state']}" for m in study["missing"]]
    lines += [f"inconsistent: {line}" for line in study["inconsistent"]]
    lines += [
        f"missing value: {m['name']} gen{m['generation']} {m['metric']} ({m['path']})" for m in study["missing_values"]
    ]
    return lines
