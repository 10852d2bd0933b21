"""A study's estimates over seeds: levels, slopes and contrasts; primary endpoints and the Holm family.

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
"""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np

from biasloop.study.config import GENERATION, VARIANT, EndpointConfig, StudyConfig
from biasloop.study.grid import cell_label, grid_points, matches
from biasloop.study.inference import adjust_family, primary_record, t_interval


def ols_slope(xs: list[float], ys: list[float]) -> float:
    """Least-squares slope of ``ys`` on ``xs`` (needs two distinct x)."""
    x = np.asarray(xs, dtype=float)
    y = np.asarray(ys, dtype=float)
    dx = x - x.mean()
    return float((dx * (y - y.mean())).sum() / (dx**2).sum())


def _is_numeric_axis(config: StudyConfig, axis: str) -> bool:
    return axis != VARIANT and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) for v in config.axis_values(axis)
    )


class SeedValues:
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


def _endpoint_values(config: StudyConfig, values: SeedValues, endpoint: EndpointConfig):
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


def _secondary(config: StudyConfig, values: SeedValues, metrics: list[str]) -> list[dict[str, Any]]:
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


def cell_summaries(config: StudyConfig, values: SeedValues, metrics: list[str]) -> list[dict[str, Any]]:
    """Per grid point and generation: its coords and, per metric, the mean, SD, n and seeds."""
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
    return summary


def primary_endpoints(
    config: StudyConfig, values: SeedValues, metrics: list[str], metric_paths: dict[str, str | None]
) -> tuple[dict[str, dict[str, Any]], set[tuple]]:
    """The primary endpoints' records (plain intervals), by name, and what each estimates (its signature)."""
    endpoints, signatures = {}, set()
    for endpoint_name, endpoint in config.spec.endpoints.items():
        kind, per_seed, excluded, at, generation = _endpoint_values(config, values, endpoint)
        slope_vs = endpoint.slope_vs
        minus = dict(endpoint.minus) if endpoint.minus is not None else None
        signatures.add(_signature(kind, endpoint.metric, generation, at, slope_vs, minus))
        record = _record(kind, endpoint.metric, generation, at, per_seed, excluded, slope_vs=slope_vs, minus=minus)
        if endpoint.metric not in metrics:
            record["note"] = f"metric {endpoint.metric} not found in any cell"
        endpoints[endpoint_name] = {
            **record,
            "primary": True,
            "metric_path": metric_paths.get(endpoint.metric),
            **primary_record(list(per_seed.values()), config.alpha, endpoint.margin),
        }
    return endpoints, signatures


def secondary_intervals(
    config: StudyConfig,
    values: SeedValues,
    metrics: list[str],
    metric_paths: dict[str, str | None],
    primary_signatures: set[tuple],
) -> list[dict[str, Any]]:
    """Every secondary interval that does not repeat a primary endpoint, Holm-adjusted in one family."""
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
    return secondary
