"""Aggregate a study's experiments over seeds: per-cell summaries, primary endpoints, Holm-adjusted intervals.

Input: the study's experiments (:func:`biasloop.study.experiments.parse_exp_show`), each with its
``params.yaml`` and its ``metrics/summary.json``. Each metric is read by a dotted key path
(``study.metrics``: ``gen{gen}.generator | headline.generator``, first the path every cell reports), so
the pipeline's key names plug in without code changes. Output: the content of
``metrics/studies/<name>.json``; its estimates (levels, slopes, contrasts over seed-level values, the
primary endpoints and the Holm-adjusted family) are :mod:`biasloop.study.estimates`'.

Missing, failed or queued cells are listed and never averaged over; a successful experiment without a
value is listed too.
"""

from __future__ import annotations

import math
from typing import Any

from biasloop.study.config import StudyConfig, lookup, same_value
from biasloop.study.estimates import SeedValues, cell_summaries, primary_endpoints, secondary_intervals
from biasloop.study.experiments import Experiment, latest_by_name
from biasloop.study.grid import Cell, cell_label, grid_points, study_cells


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
    found = _sort_cells(config, expected, by_name, swept_paths)
    common_params = _common_params(found["used"], swept_paths, found["inconsistent"])
    metric_paths, notes = _resolve_metric_paths(config, found["used"])
    metrics = [m for m in config.spec.metrics if metric_paths[m] is not None]
    values, runs, missing_values = _seed_values(config, found["used"], metrics, metric_paths)
    endpoints, primary_signatures = primary_endpoints(config, values, metrics, metric_paths)
    secondary = secondary_intervals(config, values, metrics, metric_paths, primary_signatures)
    return {
        "study": _definition(config),
        "alpha": config.alpha,
        "metric_paths": metric_paths,
        "notes": notes,
        "n_cells_expected": len(expected),
        "n_cells_used": len(found["used"]),
        "cells": found["cells"],
        "common_params": common_params,
        "summary": cell_summaries(config, values, metrics),
        "runs": runs,
        "endpoints": endpoints,
        "intervals": secondary,
        "family_size": sum(r["p"] is not None for r in secondary),
        "failed": found["failed"],
        "missing": found["missing"],
        "missing_values": missing_values,
        "inconsistent": found["inconsistent"],
    }


def _sort_cells(
    config: StudyConfig, expected: list[Cell], by_name: dict[str, Experiment], swept_paths: list[str]
) -> dict[str, list]:
    """Each expected cell's record (``cells``), sorted into ``used`` (successful, with the params of its
    cell: (experiment, cell) pairs), ``failed``, ``missing`` (absent or unfinished) and ``inconsistent``
    (successful, but its params are not its cell's)."""
    found: dict[str, list] = {"cells": [], "used": [], "failed": [], "missing": [], "inconsistent": []}
    for cell in expected:
        exp = by_name.get(cell.name)
        base = {"name": cell.name, "cell": cell.label, "seed": cell.seed}
        if exp is None:
            found["missing"].append({**base, "state": "absent"})
            continue
        found["cells"].append(
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
            found["failed"].append(
                {**base, "error": exp.error, "log": exp.log, "logs_command": f"dvc queue logs {cell.name}"}
            )
        elif exp.state != "success":
            found["missing"].append({**base, "state": exp.state})
        elif wrong := _wrong_params(config, cell, exp):
            found["inconsistent"].append(f"{cell.name}: params say {', '.join(wrong)}")
        else:
            found["used"].append((exp, cell))
    return found


def _wrong_params(config: StudyConfig, cell: Cell, exp: Experiment) -> list[str]:
    """The params of ``exp`` that differ from its cell's setting and seed (``no cell of this study``
    for an experiment whose params match no cell)."""
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
    return wrong or ([] if cell.coords else ["no cell of this study"])


def _common_params(used: list[tuple[Experiment, Cell]], swept_paths: list[str], inconsistent: list[str]) -> dict:
    """The params every used cell shares (nested), appending a line to ``inconsistent`` per unswept param
    that differs between cells and when the cells come from several baseline commits."""
    if not used:
        return {}
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
    baselines = sorted({exp.baseline_rev for exp, _ in used})
    if len(baselines) > 1:
        inconsistent.append(
            f"cells come from {len(baselines)} baseline commits ({', '.join(b[:7] for b in baselines)}): "
            "their code may differ; collect one baseline with --rev"
        )
    return unflatten_params({k: v for k, v in flats[0].items() if k not in differing})


def _seed_values(
    config: StudyConfig, used: list[tuple[Experiment, Cell]], metrics: list[str], metric_paths: dict[str, str | None]
) -> tuple[SeedValues, list[dict[str, Any]], list[dict[str, Any]]]:
    """The seed-level values of every used cell, its raw ``runs`` rows, and the ``missing_values``."""
    values = SeedValues(config)
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
    return values, runs, missing_values


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
